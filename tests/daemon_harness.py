"""Run the real daemon (`python -m llm_supervisor up --simulate`) as a subprocess for tests.

Each `DaemonRun` gets its own state dir, simulated-GPU dir, API port and engine port, runs in a
session of its own, and is torn down with everything it started: the daemon's process tree plus
any process whose environment or command line names the run's tmp dir (an orphaned simulated
EngineCore renames itself, but its environment still carries LLM_SUPERVISOR_SIM_GPU_DIR). So a
failing test never leaks processes or simulated GPU memory.

Waiting is always polling against a deadline (time.monotonic()); the machine may be loaded, so
the default deadlines are generous.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import psutil

from llm_supervisor.host import simgpu

REPO = Path(__file__).resolve().parent.parent
PROFILE = "4090d-qwen3-4b"
# Fast simulated starts and short backoffs keep each run a few seconds long.
FAST_SETS = ["recovery.backoff_initial_s=0.2", "recovery.backoff_max_s=1"]
DEADLINE_S = 45.0


def free_port() -> int:
    """A TCP port nobody listens on now (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server can bind `port` again, as vLLM's does (SO_REUSEADDR: connections of a
    stopped server may linger in TIME_WAIT; a live listener still makes the bind fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(predicate: Callable[[], Any], timeout: float = DEADLINE_S, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; return it, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def _mentions(proc: psutil.Process, marker: str) -> bool:
    try:
        if any(marker in part for part in proc.cmdline()):
            return True
        return any(marker in value for value in proc.environ().values())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def processes_mentioning(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes, other than this one, whose argv or environment contain `marker`."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if _mentions(proc, marker):
            found.append(proc)
    return found


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie holds no memory, port or CPU; its reaper may be slow)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(procs: Iterable[psutil.Process], timeout: float = 5.0) -> None:
    """SIGKILL each process and wait until none is alive (zombies count as gone)."""
    procs = list(procs)
    for proc in procs:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)


class DaemonRun:
    """One daemon subprocess with its own dirs and ports. Use as a context manager or call
    `cleanup()`; `start()` launches it."""

    def __init__(self, tmp: Path, *, profile: str = PROFILE, sets: Iterable[str] = (),
                 args: Iterable[str] = (), env: dict[str, str] | None = None,
                 startup_s: float = 0.3, api_port: int | None = None, engine_port: int | None = None,
                 fast: bool = True) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.state_dir = tmp / "state"
        self.gpu_dir = tmp / "simgpu"
        self.api_port = api_port or free_port()
        self.engine_port = engine_port or free_port()
        self.profile = profile
        self.sets = [*(FAST_SETS if fast else []), f"vllm.port={self.engine_port}", *sets]
        self.args = list(args)
        self.env = self._env(startup_s, env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = tmp / f"daemon-{self.api_port}.err"
        self.stdout_path = tmp / f"daemon-{self.api_port}.out"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.started_at = 0.0
        self._http = httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), trust_env=False)

    def _env(self, startup_s: float, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LLM_SUPERVISOR_", "VLLM_"))
               and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CUDA_VISIBLE_DEVICES")}
        env.update({
            "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
            "LLM_SUPERVISOR_STATE_DIR": str(self.state_dir),
            "LLM_SUPERVISOR_API_HOST": "127.0.0.1",
            "LLM_SUPERVISOR_API_PORT": str(self.api_port),
            "LLM_SUPERVISOR_SIM_GPU_DIR": str(self.gpu_dir),
            "LLM_SUPERVISOR_SIM_STARTUP_S": f"{startup_s:g}",
            "LLM_SUPERVISOR_SIM_DEATH_GRACE_S": "0.3",
            "LLM_SUPERVISOR_STOP_TIMEOUT_S": "10",
            "LLM_SUPERVISOR_FAILED_LINGER_S": "0",  # give-up exits at once; the linger has its own test
            "VLLM_CACHE_ROOT": str(self.tmp / "vllm-cache"),
            "HF_HOME": str(self.tmp / "hf"),
        })
        env.update(extra)
        return env

    # ------------------------------------------------------------ lifecycle
    @property
    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "llm_supervisor", "up", "--profile", self.profile, "--simulate"]
        for item in self.sets:
            argv += ["--set", item]
        return argv + self.args

    def start(self) -> "DaemonRun":
        assert self.proc is None, "already started"
        self.started_at = time.monotonic()
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(REPO), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)
        return self

    def restart_process(self) -> "DaemonRun":
        """Start a new daemon with the same dirs, ports and arguments (after this one exited)."""
        assert self.proc is not None and self.proc.poll() is not None, "the previous daemon still runs"
        self.proc = None
        return self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout:g} s\n{self.stderr_tail()}") from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])

    def state_history(self) -> list[dict[str, Any]]:
        """The history the daemon saved in its state file (it outlives the daemon)."""
        try:
            data = json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError):
            return []
        entries = [h for key, prof in data.get("profiles", {}).items() if key.startswith(self.profile + "@")
                   for h in prof.get("history", [])]
        return entries

    def engine_log(self) -> str:
        path = self.state_dir / "logs" / f"{self.profile}.log"
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ REST
    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._http.get(self.url + path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self._http.post(self.url + path, **kw)

    def status(self) -> dict[str, Any] | None:
        """GET /status, or None when the daemon does not answer (yet, or any more)."""
        try:
            r = self._http.get(self.url + "/status")
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def wait_status(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = DEADLINE_S,
                    what: str = "status") -> dict[str, Any]:
        """Poll /status until `predicate(status)`; fail early if the daemon exits."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            snap = self.status()
            if snap is not None:
                last = snap
                if predicate(snap):
                    return snap
            elif self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode} while waiting for {what}\n"
                                     f"{self.stderr_tail()}")
            time.sleep(0.1)
        brief = {k: last.get(k) for k in ("state", "attempt", "restarts", "message")} if last else None
        history = [(h.get("event"), (h.get("failure") or {}).get("kind")) for h in (last or {}).get("history", [])]
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last {brief} {history}\n"
                             f"{self.stderr_tail()}")

    def wait_state(self, state: str, timeout: float = DEADLINE_S) -> dict[str, Any]:
        return self.wait_status(lambda s: s.get("state") == state, timeout, f"state {state!r}")

    def wait_ready(self, timeout: float = DEADLINE_S) -> dict[str, Any]:
        return self.wait_state("ready", timeout)

    # ------------------------------------------------------------ processes
    def tree(self) -> list[psutil.Process]:
        """The daemon and every live descendant, plus strays that name this run's tmp dir."""
        found: dict[int, psutil.Process] = {}
        if self.proc is not None:
            try:
                root = psutil.Process(self.proc.pid)
                if root.status() != psutil.STATUS_ZOMBIE:
                    found[root.pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        for proc in processes_mentioning(str(self.tmp) + os.sep):
            found.setdefault(proc.pid, proc)
        return [proc for proc in found.values() if alive(proc)]

    def engine_processes(self) -> list[psutil.Process]:
        """Simulator processes of this run (API server, EngineCore, workers), wherever they are."""
        out = []
        for proc in self.tree():
            try:
                cmd = " ".join(proc.cmdline())
                env = proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if "llm_supervisor.runtime.guard" in cmd or (self.proc is not None and proc.pid == self.proc.pid):
                continue
            if ("llm_supervisor.simulator" in cmd or cmd.startswith("VLLM::")
                    or env.get("LLM_SUPERVISOR_SIM_GPU_DIR") == str(self.gpu_dir)):
                out.append(proc)
        return out

    def engine_core(self) -> psutil.Process | None:
        for proc in self.engine_processes():
            try:
                if proc.name().startswith("VLLM::EngineCore") or "VLLM::EngineCore" in " ".join(proc.cmdline()):
                    return proc
            except psutil.NoSuchProcess:
                continue
        return None

    def held_mib(self, gpu: int = 0) -> int:
        """Simulated GPU memory that live simulated engine processes hold on `gpu`."""
        config = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(self.gpu_dir)})
        return simgpu.held_mib(config, gpu)

    def cleanup(self) -> None:
        """Kill whatever is left: the daemon's session, its tree, strays naming the tmp dir."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for _ in range(3):
            left = self.tree()
            if not left:
                break
            kill_all(left)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._http.close()

    def __enter__(self) -> "DaemonRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def history_events(status: dict[str, Any]) -> list[str]:
    return [str(h.get("event")) for h in status.get("history") or []]


def failure_kinds(status: dict[str, Any]) -> list[str]:
    return [h["failure"]["kind"] for h in status.get("history") or [] if h.get("event") == "exit" and h.get("failure")]


def relaunches(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for h in status.get("history") or [] if h.get("event") == "relaunch"]


KV_LOG_RE = re.compile(r"vLLM reports ([\d,]+) KV-cache tokens, max concurrency ([\d.]+)x at ([\d,]+) tokens")


def parsed_from_log(stderr: str) -> tuple[int, float, int] | None:
    """(KV tokens, max concurrency, context) from the daemon's own log line, the last one printed."""
    matches = KV_LOG_RE.findall(stderr)
    if not matches:
        return None
    tokens, conc, ctx = matches[-1]
    return int(tokens.replace(",", "")), float(conc), int(ctx.replace(",", ""))


def engine_metrics_cache_info(port: int) -> dict[str, str]:
    """The labels of `vllm:cache_config_info` from the engine's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    for family in text_string_to_metric_families(text):
        if family.name.startswith("vllm:cache_config"):
            for sample in family.samples:
                return dict(sample.labels)
    raise AssertionError("no vllm:cache_config_info in the engine's /metrics")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m llm_supervisor ARGS` with this env; text output."""
    return subprocess.run([sys.executable, "-m", "llm_supervisor", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def dump(status: dict[str, Any] | None) -> str:
    return json.dumps(status, indent=1, default=str)[:4000]


# ------------------------------------------------------------ pytest glue
import pytest  # noqa: E402


@pytest.fixture
def daemons(tmp_path: Path) -> Iterable[Callable[..., DaemonRun]]:
    """A factory of DaemonRun objects under tmp_path; every one is cleaned up after the test."""
    runs: list[DaemonRun] = []

    def make(**kw: Any) -> DaemonRun:
        run = DaemonRun(tmp_path / f"run{len(runs)}", **kw)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.cleanup()


class StateRecorder:
    """Polls /status and /readyz in a thread, so short states (backoff, restarting, stopping)
    are seen. Each sample is (state, attempt, readyz status code); a sample is kept only when
    /status gave the same state before and after the /readyz call, so the pair is consistent."""

    def __init__(self, run: DaemonRun, interval: float = 0.02) -> None:
        import threading

        self.run = run
        self.interval = interval
        self.samples: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._client = httpx.Client(timeout=httpx.Timeout(3.0, connect=1.0), trust_env=False)

    def _loop(self) -> None:
        url = self.run.url
        while not self._stop.is_set():
            try:
                before = self._client.get(url + "/status").json()
                ready = self._client.get(url + "/readyz").status_code
                after = self._client.get(url + "/status").json()
            except (httpx.HTTPError, ValueError):
                time.sleep(self.interval)
                continue
            if before["state"] == after["state"]:
                self.samples.append((after["state"], int(after["attempt"]), ready))
            time.sleep(self.interval)

    def __enter__(self) -> "StateRecorder":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()

    def wait_seen(self, state: str, attempt: int, timeout: float = 15.0) -> None:
        """Wait until the recorder itself has a sample of `state` at `attempt` (call it before
        ending a short state on purpose, so the recorder cannot miss it)."""
        wait_until(lambda: any(s == state and a == attempt for s, a, _c in list(self.samples)), timeout, 0.01,
                   f"the recorder to see {state} at attempt {attempt}")

    def states(self) -> list[str]:
        """The states seen, consecutive repeats collapsed."""
        out: list[str] = []
        for state, _attempt, _code in self.samples:
            if not out or out[-1] != state:
                out.append(state)
        return out


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)
