"""Shared by the benchmark scripts: machine facts, free ports, and a daemon under test.

Every script prints exactly one JSON line on stdout (progress goes to stderr), so
`run_all.py` and other tools can collect the figures without parsing prose.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

PROFILE = "4090d-qwen3-4b"


def log(*parts: object) -> None:
    """Progress for a person watching; never on stdout."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """The script's one JSON line."""
    print(json.dumps(result, default=str), flush=True)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on the port (a connect is refused)."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) != 0


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment isolated from the machine's: own state dir, own simulated GPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_SUPERVISOR_")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["LLM_SUPERVISOR_STATE_DIR"] = str(tmp / "state")
    env["LLM_SUPERVISOR_SIM_GPU_DIR"] = str(tmp / "simgpu")
    env.setdefault("LLM_SUPERVISOR_SIM_STARTUP_S", "1")
    env.update(extra)
    return env


def tree_pids(pid: int) -> set[int]:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        return {pid, *(c.pid for c in proc.children(recursive=True))}
    return set()


def alive(pids: set[int]) -> set[int]:
    """The pids still running (zombies count as gone)."""
    out = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
    return out


class Daemon:
    """`python -m llm_supervisor up …` in a process group of its own, with ports and folders of its own."""

    def __init__(self, tmp: Path, profile: str = PROFILE, sets: list[str] | None = None,
                 simulate: bool = True, env: dict[str, str] | None = None,
                 entry: list[str] | None = None) -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.engine_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.engine_url = f"http://127.0.0.1:{self.engine_port}"
        self.argv = [*(entry or [sys.executable, "-m", "llm_supervisor"]), "up", "--profile", profile,
                     "--set", f"vllm.port={self.engine_port}", *(a for s in (sets or []) for a in ("--set", s))]
        if simulate:
            self.argv.append("--simulate")
        self.env = base_env(tmp, LLM_SUPERVISOR_API_PORT=str(self.api_port), **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.log_path = tmp / "daemon.out"
        self._known: set[int] = set()

    def start(self) -> "Daemon":
        self.tmp.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        try:
            resp = httpx.get(self.url + "/status", timeout=timeout)
            return resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def wait_state(self, wanted: tuple[str, ...] = ("ready",), timeout: float = 120.0,
                   fail: tuple[str, ...] = ("failed", "stopped")) -> dict[str, Any]:
        """Poll /status until the state is one of `wanted`; raise with the daemon's output if not."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")
            snap = self.status()
            if snap:
                last = snap
                self._known |= tree_pids(self.pid)
                if snap.get("state") in wanted:
                    return snap
                # "stopped" with no history is the daemon before its first launch
                if snap.get("state") in fail and (snap.get("state") != "stopped" or snap.get("history")):
                    raise RuntimeError(f"daemon state {snap.get('state')}: {json.dumps(snap.get('history'))}\n{self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"daemon not {wanted} after {timeout:.0f} s (last {last and last.get('state')}):\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait, then SIGKILL whatever of the tree is left (our own processes only)."""
        if self.proc is None:
            return
        self._known |= tree_pids(self.pid)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for pid in alive(self._known):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def tmpdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"llm-supervisor-bench-{prefix}-") as name:
        yield Path(name)


def daemon_available() -> str | None:
    """None when the daemon module exists, else why the daemon benchmarks cannot run."""
    if not (REPO / "llm_supervisor" / "runtime" / "daemon.py").is_file():
        return "llm_supervisor/runtime/daemon.py does not exist yet"
    if not (REPO / "llm_supervisor" / "simulator").is_dir():
        return "llm_supervisor/simulator does not exist yet"
    return None
