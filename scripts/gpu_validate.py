"""GPU validation: the supervisor against real vLLM on one GPU, every scenario in one run.

Runs the scenarios of docs/validation.md against real `vllm serve` (or, with --simulate, against
the bundled simulator on a simulated GPU, to shake out this script without spending GPU time):

  1  ready at a 24 GB budget; /status KV tokens and concurrency vs vLLM's log and /metrics; a chat
  8  `supervisor bench --users 16` against that engine
  5  kill -9 of VLLM::EngineCore while ready: the daemon restarts it
  10 kill -9 of the API server itself while ready, 16 clients through the front door: the old
     tree gone, the failure worded (SIGKILL), no client refused, `logs -n 5` of that attempt
  11 the same with the engine's guard killed instead ("lost its guard")
  6  kill -9 of the daemon while ready: no engine process left, GPU memory freed (timed);
     SIGTERM at the end of scenarios 2-4: clean stop (timed)
  2  full 40960 context at a budget where it cannot fit, plan_first_launch off: one relaunch
  3  another process holds GPU memory before start: utilization lowered from free memory
  4  another process takes GPU memory while vLLM compiles/profiles: real CUDA OOM, recovered
  7  the planner's prediction before each launch next to what vLLM printed (+ --calibrate-from)

Each scenario has a hard timeout (SIGALRM) and cleans up every process it started. Logs go to
OUT/<scenario>/; the summary (Markdown table, then JSON) is printed last and saved as
OUT/summary.md and OUT/summary.json.

usage: python scripts/gpu_validate.py [--simulate] [--out DIR] [--model PATH] [--only 1,8,5,9,10,11,6,2,3,4]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "scripts" / "profiles" / "h100-qwen3-4b.yaml"
HOG = Path(__file__).resolve()  # this file, run with --hog, is the GPU memory holder
SERVED = "qwen3-4b"
GIB = 1024**3

# Hard limits per daemon lifetime (seconds): generous for real vLLM (55-75 s a start).
LIMITS = {"A": 560, "B": 330, "C": 300, "D": 300}
# GPU memory budgets (GiB) as on the measured H100 (79.18 GiB): util 0.27, 0.12, 0.30.
BUDGET_24GB = 21.38
BUDGET_TOO_SMALL = 9.5
BUDGET_FREE_SHORT = 23.75
FREE_LEFT_GIB = 19.2  # scenario 3: what the other process leaves free (60 GiB held on an H100)
READY_TIMEOUT = 240.0
STOP_WATCH_S = 60.0
MEM_TOLERANCE_MIB = 300

RE_KV = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
RE_CONC = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
RE_AVAIL = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
RE_WEIGHTS = re.compile(r"Model loading took ([\d.]+) GiB")
RE_EST = re.compile(r"estimated maximum model length is (\d+)")
RE_INIT = re.compile(r"init engine \(.*?\) took ([\d.]+) s")
RE_ATTEMPT = re.compile(r"^===== llm-supervisor attempt (\d+)", re.M)


class ScenarioTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise ScenarioTimeout("hard timeout reached")


def _term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now() -> float:
    return time.monotonic()


# ---------------------------------------------------------------- the run's context


@dataclass
class Ctx:
    out: Path
    simulate: bool
    model: str
    python: str
    ignore_hw: bool
    env: dict[str, str]
    total_gib: float = 79.18  # the GPU's memory as torch (and so vLLM) sees it
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: list[dict[str, Any]] = field(default_factory=list)
    first_log: Path | None = None

    def sup_env(self, state: Path, api_port: int) -> dict[str, str]:
        env = dict(self.env)
        env.update({
            "LLM_SUPERVISOR_STATE_DIR": str(state),
            "LLM_SUPERVISOR_LOG_DIR": str(state / "logs"),
            "LLM_SUPERVISOR_API_PORT": str(api_port),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def util(self, budget_gib: float) -> float:
        """The utilization that gives vLLM `budget_gib` on this GPU (on an H100 80GB, 79.18 GiB:
        21.38 → 0.27, the 0.9 × 24 GB of a 4090 D)."""
        return round(budget_gib / self.total_gib, 2)

    def cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "llm_supervisor", *args]

    def profile_args(self, sets: list[str]) -> list[str]:
        out = ["--profile", str(PROFILE), "--model", self.model]
        for s in sets:
            out += ["--set", s]
        if self.simulate:
            out.append("--simulate")
        if self.ignore_hw:
            out.append("--ignore-hardware-mismatch")
        return out


def build_ctx(args: argparse.Namespace) -> Ctx:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cache = Path(args.cache).resolve() if args.cache else out / "cache"
    # One compile cache for every scenario: the first start is cold, later ones warm.
    env.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
    env.setdefault("HF_HOME", str(cache / "huggingface"))
    model = args.model
    if args.simulate:
        env.update({
            "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H100 80GB HBM3",
            "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": "81559",
            "LLM_SUPERVISOR_SIM_GPU_DIR": str(out / "simgpu"),
            "LLM_SUPERVISOR_SIM_STARTUP_S": env.get("LLM_SUPERVISOR_SIM_STARTUP_S", "8"),
            # the GPU machine's vLLM: scenario 3 needs 0.26's free-memory check (0.34 starts anyway)
            "LLM_SUPERVISOR_SIM_VLLM_VERSION": env.get("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.26.0"),
        })
        if not Path(model).joinpath("config.json").is_file():
            folder = out / "models" / "qwen3-4b"
            folder.mkdir(parents=True, exist_ok=True)
            from llm_supervisor.host.modelfiles import bundled_config_path
            shutil.copy(bundled_config_path("Qwen/Qwen3-4B"), folder / "config.json")
            model = str(folder)
    elif "LLM_SUPERVISOR_ENGINE_COMMAND" not in env and not shutil.which("vllm"):
        env["LLM_SUPERVISOR_ENGINE_COMMAND"] = f"{sys.executable} -m vllm.entrypoints.cli.main serve"
    return Ctx(out=out, simulate=args.simulate, model=model, python=sys.executable,
               ignore_hw=args.ignore_hardware_mismatch, env=env)


# ---------------------------------------------------------------- GPU memory and processes


def gpu_used_mib(ctx: Ctx) -> int | None:
    if ctx.simulate:
        from llm_supervisor.host import simgpu

        cfg = simgpu.load_config(ctx.env)
        return simgpu.gpus(cfg)[0].used_mib
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                           capture_output=True, text=True, timeout=10)
        return int(r.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def torch_total_gib(env: dict[str, str], fallback: float) -> float:
    """GPU 0's total memory as torch (and so vLLM's utilization) sees it, in GiB: a budget in GB
    becomes a utilization of this card, whichever card the machine has; `fallback` if torch cannot
    say (no GPU, no torch in `env`)."""
    try:
        r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.mem_get_info(0)[1] / 2**30)"],
                           capture_output=True, text=True, timeout=300, env=env)
        return float(r.stdout.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return fallback


# What the device machine brings back is a handful of files: a run's logs travel as one archive.
ARCHIVE_SUFFIXES = (".log", ".json", ".txt", ".md", ".yaml", ".out", ".svg")
ARCHIVE_MAX_FILE_BYTES = 20 * 2**20


def archive_logs(folders: list[Path], dest: Path) -> int:
    """Packs the logs, summaries and profiles under `folders` into the tar.gz `dest` (compile
    caches, lock files and files over 20 MiB left out), each under its folder's name; returns how
    many files it holds."""
    import tarfile

    count = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = dest.resolve()
    with tarfile.open(dest, "w:gz") as tar:
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(folder)
                if (not path.is_file() or path.resolve() == target or "cache" in rel.parts
                        or path.suffix not in ARCHIVE_SUFFIXES or path.stat().st_size > ARCHIVE_MAX_FILE_BYTES):
                    continue
                tar.add(path, arcname=str(Path(folder.name) / rel))
                count += 1
    return count


def add_archive_option(ap: argparse.ArgumentParser) -> None:
    """`--archive FILE.tar.gz`, the same in every GPU script."""
    ap.add_argument("--archive", default="", help="also pack the run's logs and summaries into this tar.gz (the"
                    " device machine brings back only a few files: point it into $OUT and --out elsewhere)")


def archive_if_asked(dest: str, folders: list[Path]) -> None:
    """What `--archive` asked for, said on stdout; nothing without it."""
    if dest:
        print(f"archived {archive_logs(folders, Path(dest))} files in {dest}", flush=True)


def procs_anywhere(match: Callable[[list[str], str], bool]) -> list[str]:
    """Live processes of this machine (this one aside) that `match(argv, name)` picks, as
    "PID command line"."""
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
                continue
            argv, name = list(p.info["cmdline"] or []), p.info["name"] or ""
        except (psutil.Error, TypeError):
            continue
        if match(argv, name):
            found.append(f"{p.pid} {(' '.join(argv) or name)[:120]}")
    return found


def engine_procs_anywhere() -> list[str]:
    """Real runs only: any vLLM process on this machine (nothing else runs vLLM here). Judged by
    the program and its arguments one by one, so a shell whose command line merely mentions vLLM
    (this script's own caller) is not taken for an engine."""
    def is_engine(argv: list[str], name: str) -> bool:
        if (argv[:1] or [name])[0].startswith("VLLM::") or name.startswith("VLLM::"):
            return True  # vLLM's process titles: VLLM::EngineCore, VLLM::Worker_TP0 …
        # `python -m vllm.entrypoints…`, `python -m llm_supervisor.runtime.guard`
        modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
        if any(m.startswith("vllm.entrypoints") or m == "llm_supervisor.runtime.guard" for m in modules):
            return True
        # `vllm serve …` or `python …/bin/vllm serve …`
        return any(Path(a).name == "vllm" and argv[i + 1:i + 2] == ["serve"] for i, a in enumerate(argv[:2]))

    return procs_anywhere(is_engine)


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:100] or p.name()}"
    except psutil.Error:
        return str(p.pid)


# ---------------------------------------------------------------- the GPU memory holder


def hog_main(argv: list[str]) -> int:
    """`--hog torch|sim`: hold GPU memory on command (stdin lines), answer on stdout.

    grab MIB | grab_all LEAVE_MIB | release | quit. Real: torch allocations (cudaMalloc);
    simulated: a holder file in the simulated GPU's folder."""
    backend = argv[0]
    held: list[Any] = []
    sim_cfg = None
    if backend == "torch":
        import torch

        torch.cuda.init()
        torch.empty(1, device="cuda")
    else:
        from llm_supervisor.host import simgpu

        sim_cfg = simgpu.load_config()
    total_held = 0

    def say(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def grab(mib: int) -> int:
        nonlocal total_held
        if backend == "torch":
            import torch

            left = mib
            for chunk in (1024, 64, 2):
                while left >= chunk:
                    try:
                        held.append(torch.empty(chunk * 1024 * 1024, dtype=torch.uint8, device="cuda"))
                    except torch.cuda.OutOfMemoryError:
                        break
                    left -= chunk
                    total_held += chunk
        else:
            from llm_supervisor.host import simgpu

            free = simgpu.gpus(sim_cfg)[0].free_mib
            take = min(mib, free)
            total_held += take
            simgpu.hold(sim_cfg, 0, total_held)
        return total_held

    def free_now() -> int:
        if backend == "torch":
            import torch

            return torch.cuda.mem_get_info()[0] // (1024 * 1024)
        from llm_supervisor.host import simgpu

        return simgpu.gpus(sim_cfg)[0].free_mib

    say(f"armed free={free_now()}")
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        t0 = time.monotonic()
        if cmd == "grab":
            grab(int(arg))
        elif cmd == "grab_all":
            grab(max(0, free_now() - int(arg or 0)))
            if backend == "torch" and not arg.strip("0 "):
                grab(1 << 30)  # the rest, down to the last 2 MiB the allocator will give
        elif cmd == "release":
            held.clear()
            total_held = 0
            if backend == "torch":
                import torch

                torch.cuda.empty_cache()
            else:
                from llm_supervisor.host import simgpu

                simgpu.hold(sim_cfg, 0, 0)
        elif cmd == "quit":
            say("bye")
            return 0
        say(f"ok held={total_held} free={free_now()} took={time.monotonic() - t0:.3f}")
    return 0


class Hog:
    """The memory holder as a child process (started before vLLM, so its CUDA context is in
    place and a grab takes milliseconds)."""

    def __init__(self, ctx: Ctx, log: Path) -> None:
        self.ctx = ctx
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [ctx.python, str(HOG), "--hog", "sim" if ctx.simulate else "torch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=ctx.env,
            start_new_session=True,
        )
        self.first = self._read(120)

    def _read(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError("the memory holder did not answer")
        line = self.proc.stdout.readline().strip()
        self.log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        self.log.flush()
        if not line:
            raise RuntimeError("the memory holder exited")
        return line

    def send(self, cmd: str, timeout: float = 60) -> str:
        assert self.proc.stdin is not None
        self.log.write(f"{time.strftime('%H:%M:%S')} > {cmd}\n")
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("quit", 10)
        with contextlib.suppress(Exception):
            self.proc.wait(10)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()


# ---------------------------------------------------------------- clients through the front door


class Load:
    """`n` clients, each streaming one chat completion after another at the profile's address
    (the front door), in a thread; every request's start, end and outcome kept: ok, refused,
    connect, http_<status>, error_event, cut."""

    BODY = json.dumps({"model": SERVED, "stream": True, "max_tokens": 32,
                       "messages": [{"role": "user", "content": "Count to twenty."}]}).encode()

    def __init__(self, url: str, n: int) -> None:
        import threading

        self.url = url
        self.n = n
        self.outcomes: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import asyncio

        async def one(http: httpx.AsyncClient) -> None:
            start = now()
            try:
                async with http.stream("POST", self.url + "/v1/chat/completions", content=self.BODY,
                                       headers={"content-type": "application/json"}) as resp:
                    data = b"".join([c async for c in resp.aiter_bytes()])
                    kind = (f"http_{resp.status_code}" if resp.status_code != 200 else
                            "error_event" if b'data: {"error"' in data else "ok" if b"data: [DONE]" in data else "cut")
            except httpx.ConnectError as exc:
                kind = "refused" if "refused" in str(exc).lower() else "connect"
            except httpx.HTTPError:
                kind = "cut"
            self.outcomes.append((start, now(), kind))

        async def client() -> None:
            async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5), trust_env=False) as http:
                while not self._stop.is_set():
                    await one(http)

        async def main() -> None:
            await asyncio.gather(*(client() for _ in range(self.n)))

        asyncio.run(main())

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(300)

    def window(self, t0: float, t1: float | None = None) -> dict[str, Any]:
        """Requests that ended after t0 (and started before t1): counts by outcome, and how many
        of those that started after t0 failed (had not started when the engine went away)."""
        chosen = [o for o in self.outcomes if o[1] >= t0 and (t1 is None or o[0] < t1)]
        kinds: dict[str, int] = {}
        for _s, _e, k in chosen:
            kinds[k] = kinds.get(k, 0) + 1
        started_after = [o for o in chosen if o[0] > t0 + 0.05]
        waits = [o[1] - o[0] for o in started_after if o[2] == "ok"]
        return {"requests": len(chosen), "by_outcome": kinds,
                "failed_not_started": sum(o[2] != "ok" for o in started_after),
                "longest_held_request_s": round(max(waits), 1) if waits else None}


# ---------------------------------------------------------------- the daemon under test


class Daemon:
    def __init__(self, ctx: Ctx, name: str, sets: list[str]) -> None:
        self.ctx = ctx
        self.dir = ctx.out / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = self.dir / "state"
        self.api_port = free_port()
        self.engine_port = free_port()
        self.sets = [*sets, f"vllm.port={self.engine_port}"]
        self.env = ctx.sup_env(self.state, self.api_port)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self.known: dict[int, psutil.Process] = {}
        self.timeline: list[dict[str, Any]] = []
        self._last: tuple[Any, ...] | None = None
        self.http = httpx.Client(timeout=httpx.Timeout(3.0, connect=1.0), trust_env=False)

    def plan(self, extra: list[str] | None = None, sets: list[str] | None = None, state: Path | None = None,
             tag: str = "plan") -> dict[str, Any] | None:
        """`supervisor plan --json` with this lifetime's settings (or others), saved as <tag>.json."""
        env = self.env if state is None else self.ctx.sup_env(state, self.api_port)
        cmd = self.ctx.cli("plan", *self.ctx.profile_args(sets if sets is not None else self.sets), "--json",
                           *(extra or []))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        except subprocess.TimeoutExpired:
            return None
        (self.dir / f"{tag}.out").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
        if r.returncode != 0:
            return None
        with contextlib.suppress(ValueError):
            data = json.loads(r.stdout)
            (self.dir / f"{tag}.json").write_text(json.dumps(data, indent=1))
            return data
        return None

    def start(self, *extra: str) -> None:
        cmd = self.ctx.cli("up", *self.ctx.profile_args(self.sets), *extra)
        (self.dir / "command.txt").write_text(" ".join(cmd) + "\n")
        self.logf = (self.dir / "daemon.log").open("ab")
        self.t0 = now()
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any] | None:
        try:
            r = self.http.get(self.url + "/status")
            data = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            data = None
        self._track(data)
        return data

    def _track(self, st: dict[str, Any] | None) -> None:
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):
                for p in psutil.Process(self.pid).children(recursive=True):
                    self.known.setdefault(p.pid, p)
        if st is None:
            return
        key = (st.get("state"), st.get("attempt"), st.get("phase"))
        if key != self._last:
            self._last = key
            self.timeline.append({"t": round(now() - self.t0, 2), "state": st.get("state"), "attempt": st.get("attempt"),
                                  "phase": st.get("phase"), "message": (st.get("message") or "")[:160]})

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float, interval: float = 0.25,
             what: str = "") -> dict[str, Any]:
        deadline = now() + timeout
        st: dict[str, Any] | None = None
        while now() < deadline:
            st = self.status()
            if st is not None and pred(st):
                return st
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with code {self.proc.returncode} while waiting for {what}"
                                   f" (last state {st and st.get('state')})")
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what} (last state "
                           f"{st and st.get('state')}, attempt {st and st.get('attempt')})")

    def wait_ready(self, attempt: int | None = None, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        def ok(st: dict[str, Any]) -> bool:
            if st.get("state") == "failed":
                raise RuntimeError(f"the daemon gave up: {st.get('message')}")
            return st.get("state") == "ready" and (attempt is None or st.get("attempt", 0) >= attempt)
        return self.wait(ok, timeout, what=f"ready{'' if attempt is None else f' (attempt {attempt})'}")

    def engine_url(self, st: dict[str, Any]) -> str:
        return st.get("engine_url") or f"http://127.0.0.1:{self.engine_port}"

    def tree(self) -> list[psutil.Process]:
        self._track(None)
        return [p for p in self.known.values() if p.pid != self.pid]

    def save(self, name: str, data: Any) -> None:
        (self.dir / name).write_text(json.dumps(data, indent=1, default=str))

    def measure_stop(self, sig: int, baseline_mib: int | None) -> dict[str, Any]:
        """Send `sig` to the daemon; time until it exits, until no process of its tree is left, and
        until the GPU memory is back at the baseline taken before the daemon started."""
        tree = alive(self.tree())
        used_before = gpu_used_mib(self.ctx)
        t0 = now()
        os.kill(self.pid, sig)
        t_exit = t_procs = t_mem = None
        while now() - t0 < STOP_WATCH_S:
            t = now() - t0
            if t_exit is None and self.proc is not None and self.proc.poll() is not None:
                t_exit = t
            if t_procs is None and not alive(tree):
                t_procs = t
            if t_mem is None:
                used = gpu_used_mib(self.ctx)
                if used is not None and baseline_mib is not None and used <= baseline_mib + MEM_TOLERANCE_MIB:
                    t_mem = now() - t0
            if t_procs is not None and t_mem is not None and (t_exit is not None or sig == signal.SIGKILL):
                break
            time.sleep(0.05)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        left = [describe(p) for p in alive(tree)]
        anywhere = [] if self.ctx.simulate else engine_procs_anywhere()
        return {
            "signal": signal.Signals(sig).name,
            "engine_tree_before": [describe(p) for p in tree],
            "daemon_exit_s": None if t_exit is None else round(t_exit, 2),
            "daemon_exit_code": self.proc.returncode if self.proc else None,
            "no_engine_process_s": None if t_procs is None else round(t_procs, 2),
            "gpu_memory_freed_s": None if t_mem is None else round(t_mem, 2),
            "gpu_used_mib_before_signal": used_before,
            "gpu_baseline_mib": baseline_mib,
            "gpu_used_mib_after": gpu_used_mib(self.ctx),
            "left_over": left,
            "vllm_processes_anywhere": anywhere,
        }

    def cleanup(self) -> None:
        """Whatever happened: nothing this lifetime started survives it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        left = alive(self.tree())
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if left:
            (self.dir / "cleanup.txt").write_text("killed by cleanup:\n" + "\n".join(describe(p) for p in left) + "\n")
        self.http.close()
        with contextlib.suppress(Exception):
            self.logf.close()
        # the engine logs the daemon wrote, next to the daemon's own log
        logs = self.state / "logs"
        if logs.is_dir():
            for f in sorted(logs.iterdir()):
                shutil.copy(f, self.dir / f"engine-{f.name}")
        self.save("timeline.json", self.timeline)


# ---------------------------------------------------------------- reading what vLLM printed


def engine_log(d: Daemon) -> str:
    path = d.state / "logs" / "h100-qwen3-4b.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def attempts_in(text: str) -> list[str]:
    """The engine log split at the daemon's `===== llm-supervisor attempt N` markers."""
    marks = list(RE_ATTEMPT.finditer(text))
    return [text[m.start(): marks[i + 1].start() if i + 1 < len(marks) else len(text)] for i, m in enumerate(marks)]


def printed(segment: str) -> dict[str, Any]:
    """vLLM's own lines, read with plain regexes (independent of the parser under test)."""
    out: dict[str, Any] = {}
    if m := RE_KV.search(segment):
        out["kv_cache_tokens"] = int(m.group(1).replace(",", ""))
    if m := RE_CONC.search(segment):
        out["max_concurrency_context"] = int(m.group(1).replace(",", ""))
        out["max_concurrency"] = float(m.group(2))
    if m := RE_AVAIL.search(segment):
        out["available_kv_cache_gib"] = float(m.group(1))
    if m := RE_WEIGHTS.search(segment):
        out["model_weights_gib"] = float(m.group(1))
    if m := RE_EST.search(segment):
        out["estimated_max_model_len"] = int(m.group(1))
    if m := RE_INIT.search(segment):
        out["engine_init_seconds"] = float(m.group(1))
    for needle, kind in (("KV cache is needed", "kv_cache_too_small"), ("Free memory on device", None),
                         ("CUDA out of memory", "cuda_oom"), ("OutOfMemoryError", "cuda_oom"),
                         ("No available memory for the cache blocks", "no_kv_cache_memory"),
                         ("EngineDeadError", "engine_dead")):
        if kind and needle in segment:
            out.setdefault("error_seen", kind)
    if "is less than desired GPU memory utilization" in segment:
        out["error_seen"] = "insufficient_free_memory"
    err = [ln for ln in segment.splitlines() if re.search(r"(Error|error)[:]", ln) and "Traceback" not in ln]
    if err:
        out["error_lines"] = [e[-300:] for e in err[-3:]]
    return out


def metrics_cache_info(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            return {k: labels.get(k) for k in ("kv_cache_size_tokens", "kv_cache_max_concurrency", "num_gpu_blocks",
                                                "gpu_memory_utilization", "block_size")}
    return {}


def predicted(plan: dict[str, Any] | None) -> dict[str, Any]:
    p = (plan or {}).get("predicted") or {}
    return {k: p.get(k) for k in ("weights_gib", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency",
                                  "max_model_len", "largest_context", "calibrated", "compile_cold", "gpu_total_gib")}


def history_events(st: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [h for h in st.get("history") or [] if h.get("event") == event]


def ready_times(d: Daemon) -> list[float]:
    """Seconds from each launch to ready, from the timeline (attempt → first 'starting' and 'ready')."""
    starts: dict[int, float] = {}
    out = []
    for e in d.timeline:
        a = e.get("attempt") or 0
        if e["state"] == "starting" and a not in starts:
            starts[a] = e["t"]
        if e["state"] == "ready" and a in starts:
            out.append(round(e["t"] - starts.pop(a), 1))
    return out


RE_HEADER = re.compile(r"^===== llm-supervisor attempt (\d+) at \S+: (.*)$", re.M)


def segment_sets(segment: str) -> tuple[int, list[str]]:
    """The attempt number and the --set overrides that reproduce its vLLM arguments."""
    m = RE_HEADER.search(segment)
    if not m:
        return 0, []
    argv = m.group(2).split()
    sets = []
    for flag, key in (("--gpu-memory-utilization", "vllm.gpu_memory_utilization"), ("--max-model-len", "vllm.max_model_len"),
                      ("--max-num-seqs", "vllm.max_num_seqs")):
        if flag in argv:
            sets.append(f"{key}={argv[argv.index(flag) + 1]}")
    sets.append(f"vllm.enforce_eager={'true' if '--enforce-eager' in argv else 'false'}")
    return int(m.group(1)), sets


def planner_rows(ctx: Ctx, d: Daemon, scenario: str, segments: list[str]) -> None:
    """For every launch that printed its KV cache: the planner's prediction for exactly those
    arguments (uncalibrated, and calibrated from scenario 1's log) next to what vLLM printed."""
    for seg in segments:
        seen = printed(seg)
        if "available_kv_cache_gib" not in seen:
            continue
        attempt, sets = segment_sets(seg)
        sets = [*sets, "recovery.plan_first_launch=false", f"vllm.port={d.engine_port}"]
        raw = d.plan(sets=sets, state=d.dir / "plan-raw-state", tag=f"plan-attempt{attempt}")
        cal = None
        if ctx.first_log is not None and ctx.first_log.is_file():
            cal = d.plan(sets=sets, state=d.dir / f"plan-cal{attempt}-state", tag=f"plan-attempt{attempt}-calibrated",
                         extra=["--calibrate-from", str(ctx.first_log)])
        ctx.plans.append({"scenario": scenario, "attempt": attempt, "args": [x for x in sets if x.startswith("vllm.")
                                                                             and "port" not in x],
                          "compile_cached": "Directly load the compiled graph" in seg,
                          "eager": "--enforce-eager" in (RE_HEADER.search(seg).group(2) if RE_HEADER.search(seg) else ""),
                          "predicted": predicted(raw), "predicted_calibrated": predicted(cal) if cal else None,
                          "vllm_printed": seen})


def launch_args(st: dict[str, Any] | None) -> dict[str, Any]:
    argv = (st or {}).get("argv") or []
    out = {}
    for flag, key in (("--gpu-memory-utilization", "gpu_memory_utilization"), ("--max-model-len", "max_model_len")):
        if flag in argv:
            out[key] = argv[argv.index(flag) + 1]
    return out


# ---------------------------------------------------------------- scenarios


def lifetime_a(ctx: Ctx, only: set[str]) -> None:
    """1 ready → 8 bench → 5 EngineCore kill -9 → 6 daemon kill -9, in one daemon lifetime."""
    d = Daemon(ctx, "A-ready-bench-enginedeath-kill9", [f"vllm.gpu_memory_utilization={ctx.util(BUDGET_24GB)}"])
    r1 = ctx.results["1"] = {"scenario": "1 ready at a 24 GB budget", "ok": False, "notes": []}
    baseline = gpu_used_mib(ctx)
    plan = d.plan()
    st = None
    try:
        d.start()
        st = d.wait_ready(timeout=READY_TIMEOUT + 60)
        d.save("status-ready-1.json", st)
        eng = d.engine_url(st)
        metrics = httpx.get(eng + "/metrics", timeout=10).text
        (d.dir / "metrics-ready.txt").write_text(metrics)
        chat = httpx.post(eng + "/v1/chat/completions", timeout=60, json={
            "model": SERVED, "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]})
        chat_json = chat.json() if chat.headers.get("content-type", "").startswith("application/json") else {}
        d.save("chat.json", {"status": chat.status_code, "body": chat_json or chat.text[:2000]})
        info = metrics_cache_info(metrics)
        r1.update({
            "attempts": st.get("attempt"),
            "status_kv_cache_tokens": st.get("kv_cache_tokens"),
            "status_kv_cache_tokens_metrics": st.get("kv_cache_tokens_metrics"),
            "status_max_concurrency": st.get("max_concurrency"),
            "status_max_concurrency_context": st.get("max_concurrency_context"),
            "metrics_kv_cache_size_tokens": info.get("kv_cache_size_tokens"),
            "metrics_kv_cache_max_concurrency": info.get("kv_cache_max_concurrency"),
            "chat_status": chat.status_code,
            "chat_completion_tokens": (chat_json.get("usage") or {}).get("completion_tokens"),
            "gpu_used_mib_ready": gpu_used_mib(ctx), "gpu_baseline_mib": baseline,
            "argv_args": launch_args(st),
        })
        tm = ready_times(d)
        r1["time_to_ready_s"] = tm[0] if tm else None
        r1["ok"] = chat.status_code == 200 and st.get("kv_cache_tokens") is not None
        m_tokens = info.get("kv_cache_size_tokens")
        if m_tokens is not None and int(m_tokens) != st.get("kv_cache_tokens"):
            r1["ok"] = False
            r1["notes"].append(f"/status KV tokens {st.get('kv_cache_tokens')} != /metrics {m_tokens}")

        if "8" in only:
            r8 = ctx.results["8"] = {"scenario": "8 bench, 16 users", "ok": False, "notes": []}
            try:
                cmd = ctx.cli("bench", "--users", "16", "--requests", "64", "--max-tokens", "64", "--json")
                t = now()
                b = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=d.env, cwd=REPO)
                (d.dir / "bench.out").write_text(b.stdout + "\n--- stderr ---\n" + b.stderr[-4000:])
                rep = json.loads(b.stdout) if b.returncode == 0 else None
                if rep is None:
                    r8["notes"].append(f"bench exited {b.returncode}: {b.stderr.strip().splitlines()[-1:]}")
                else:
                    d.save("bench.json", rep)
                    r8.update({k: rep.get(k) for k in ("users", "requests", "succeeded", "failed", "success_rate",
                                                      "tokens_per_s", "per_user_tokens_per_s", "ttft_s", "latency_s",
                                                      "peak_concurrency_observed", "engine_running_peak",
                                                      "engine_max_concurrency", "comparison")})
                    r8["wall_s"] = round(now() - t, 1)
                    r8["ok"] = rep.get("success_rate") == 1.0
            except Exception as exc:  # noqa: BLE001 - bench is someone else's work in progress
                r8["notes"].append(f"bench could not run: {exc!r}")

        if "5" in only:
            r5 = ctx.results["5"] = {"scenario": "5 kill -9 of VLLM::EngineCore while ready", "ok": False, "notes": []}
            core = [p for p in alive(d.tree()) if "EngineCore" in describe(p)]
            if not core:
                r5["notes"].append("no VLLM::EngineCore process found in the daemon's tree: "
                                   + "; ".join(describe(p) for p in d.tree()))
            else:
                before = st.get("attempt", 1)
                load = Load(f"http://127.0.0.1:{d.engine_port}", 16).start() if "9" in only else None
                if load is not None:  # a steady load through the front door before the kill
                    d.wait(lambda s: len(load.outcomes) >= 32, 120, 0.5, "the load to run")
                t = now()
                core[0].kill()
                st2 = d.wait(lambda s: s.get("state") != "ready" or s.get("attempt", 0) > before, 60, 0.1,
                             "the daemon to notice")
                noticed = now() - t
                d.wait(lambda s: s.get("attempt", 0) > before, 90, 0.1, "a relaunch")
                relaunch = now() - t
                st4 = d.wait_ready(attempt=before + 1, timeout=READY_TIMEOUT)
                d.save("status-ready-2.json", st4)
                exits = history_events(st4, "exit") + history_events(st4, "relaunch")
                tm = ready_times(d)
                r5.update({
                    "killed": describe(core[0]), "noticed_s": round(noticed, 2), "relaunch_s": round(relaunch, 2),
                    "ready_again_s": round(now() - t, 1), "time_to_ready_warm_s": tm[1] if len(tm) > 1 else None,
                    "failure_kind": next((e["failure"]["kind"] for e in exits if e.get("failure")), None),
                    "restarts": st4.get("restarts"), "kv_cache_tokens": st4.get("kv_cache_tokens"),
                    "state_seen_after_kill": st2.get("state"),
                    # the daemon acted on vLLM's own report of the death, not on its API server's exit
                    "ended_on_report": "reports its engine dead" in (d.dir / "daemon.log").read_text(errors="replace"),
                })
                r5["ok"] = st4.get("state") == "ready"
                st = st4
                if load is not None:
                    r9 = ctx.results["9"] = {"scenario": "9 front door: 16 clients across an EngineCore kill and a "
                                                         "restart", "ok": False, "notes": []}
                    killed_at = t
                    time.sleep(10)  # the load on the relaunched engine
                    restart_at = now()
                    httpx.post(d.url + "/restart", timeout=10)
                    st5 = d.wait_ready(attempt=before + 2, timeout=READY_TIMEOUT)
                    restart_ready_s = round(now() - restart_at, 1)
                    time.sleep(10)
                    load.stop()
                    d.save("status-ready-3.json", st5)
                    kill = load.window(killed_at, restart_at)
                    restart = load.window(restart_at)
                    r9.update({"engine_killed": kill, "restart": restart, "restart_ready_s": restart_ready_s,
                               "outage_s": r5.get("ready_again_s"), "frontdoor": st5.get("frontdoor")})
                    d.save("load-outcomes.json", load.outcomes)
                    bad = {"refused", "connect"}
                    r9["ok"] = (kill["failed_not_started"] == 0 and not set(kill["by_outcome"]) & bad
                                and restart["by_outcome"].keys() <= {"ok"} and restart["requests"] > 0)
                    st = st5

        for key in ("10", "11"):
            if key in only:
                st = scenario_kill(ctx, d, d.status() or st, key)

        if "6" in only:
            r6 = ctx.results.setdefault("6", {"scenario": "6 no orphans: kill -9 / SIGTERM of the daemon",
                                              "ok": True, "notes": [], "sigterm": []})
            st = d.status() or st
            res = d.measure_stop(signal.SIGKILL, baseline)
            res["gpu_used_mib_ready"] = (st or {}).get("gpus")
            r6["kill9"] = res
            d.save("stop-kill9.json", res)
            r6["ok"] = r6["ok"] and res["no_engine_process_s"] is not None and res["gpu_memory_freed_s"] is not None \
                and not res["vllm_processes_anywhere"]
    finally:
        d.cleanup()
        text = engine_log(d)
        segs = attempts_in(text)
        ctx.first_log = d.dir / "engine-h100-qwen3-4b.log"
        if segs:
            first = printed(segs[0])
            r1["vllm_printed"] = first
            r1["predicted_before_launch"] = predicted(plan)
            with contextlib.suppress(Exception):
                planner_rows(ctx, d, "1/5", segs)
            if r1.get("status_kv_cache_tokens") is not None and first.get("kv_cache_tokens") is not None:
                same = (first["kv_cache_tokens"] == r1["status_kv_cache_tokens"]
                        and abs(first.get("max_concurrency", -1) - (r1["status_max_concurrency"] or -2)) < 0.005)
                r1["status_equals_log"] = same
                if not same:
                    r1["ok"] = False
                    r1["notes"].append("/status differs from vLLM's log lines")
        r1["engine_log_attempts"] = len(segs)
        if "5" in ctx.results and len(segs) < 2:
            ctx.results["5"]["notes"].append(f"the engine log holds {len(segs)} attempt(s) after the daemon's kill -9")


KILLS = {  # scenario: (what is killed, its pid in /status, what the failure must say)
    "10": ("the API server", "pid", "SIGKILL"),
    "11": ("the guard", "guard_pid", "lost its guard"),
}


def scenario_kill(ctx: Ctx, d: Daemon, st: dict[str, Any], key: str) -> dict[str, Any]:
    """kill -9 of the API server itself (the `vllm serve` process; 10) or of its guard (11) while
    ready, 16 clients streaming through the front door: what of the tree outlives it, the failure
    as the daemon words it, the clients' outcomes, and `supervisor logs -n 5` of that attempt."""
    what, pid_key, says = KILLS[key]
    r = ctx.results[key] = {"scenario": f"{key} kill -9 of {what} while ready, 16 clients through the front door",
                            "ok": False, "notes": []}
    before = int(st.get("attempt") or 1)
    try:
        victim = psutil.Process(int(st[pid_key]))
        tree = alive(d.tree())
    except (KeyError, TypeError, ValueError, psutil.Error) as exc:
        r["notes"].append(f"no {what} to kill: {exc!r}")
        return st
    r["killed"] = describe(victim)
    others = [p for p in tree if p.pid != victim.pid]  # the rest of the engine's tree
    r["tree_before"] = [describe(p) for p in others]
    load = Load(f"http://127.0.0.1:{d.engine_port}", 16).start()
    try:
        d.wait(lambda s: len(load.outcomes) >= 32, 120, 0.5, "the load to run")
        # The clients run in step (equal requests end together): a kill right after a wave ended
        # finds every request before its first byte. 0.12 s later most are streaming.
        time.sleep(0.12)
        t = now()
        victim.kill()
        d.wait(lambda s: s.get("state") != "ready" or s.get("attempt", 0) > before, 60, 0.1, "the daemon to notice")
        r["noticed_s"] = round(now() - t, 2)
        deadline = now() + 30
        while alive(others) and now() < deadline:
            time.sleep(0.05)
        r["old_tree_left_after_s"] = None if alive(others) else round(now() - t, 2)
        st = d.wait_ready(attempt=before + 1, timeout=READY_TIMEOUT)
        r["ready_again_s"] = round(now() - t, 1)
        time.sleep(5)  # the load on the relaunched engine
    finally:
        load.stop()
    d.save(f"status-ready-after-kill-{key}.json", st)
    exits = [e for e in history_events(st, "exit") if e.get("attempt", before) == before] or history_events(st, "exit")
    failure = (exits[-1].get("failure") if exits else None) or {}
    r["failure_kind"], r["failure_message"] = failure.get("kind"), failure.get("message")
    r["clients"] = load.window(t)
    logs = subprocess.run(ctx.cli("logs", "--attempt", str(before), "-n", "5"), capture_output=True, text=True,
                          timeout=60, env=d.env, cwd=REPO)
    (d.dir / f"logs-n5-{key}.out").write_text(logs.stdout + "\n--- stderr ---\n" + logs.stderr[-2000:])
    r["logs_n5_lines"] = logs.stdout.count("\n")
    r["ok"] = (st.get("state") == "ready" and r["failure_kind"] == "engine_dead"
               and says in str(r["failure_message"]) and r["old_tree_left_after_s"] is not None
               and r["clients"]["failed_not_started"] == 0
               and not set(r["clients"]["by_outcome"]) & {"refused", "connect"} and r["logs_n5_lines"] == 5)
    return st


def sigterm_at_end(ctx: Ctx, d: Daemon, baseline: int | None, scenario: str) -> None:
    r6 = ctx.results.setdefault("6", {"scenario": "6 no orphans: kill -9 / SIGTERM of the daemon", "ok": True,
                                      "notes": [], "sigterm": []})
    res = d.measure_stop(signal.SIGTERM, baseline)
    res["after_scenario"] = scenario
    d.save("stop-sigterm.json", res)
    r6.setdefault("sigterm", []).append(res)
    good = (res["no_engine_process_s"] is not None and res["gpu_memory_freed_s"] is not None
            and res["daemon_exit_code"] == 0 and not res["vllm_processes_anywhere"])
    r6["ok"] = r6.get("ok", True) and good


def calibrated_plan(ctx: Ctx, d: Daemon, tag: str) -> dict[str, Any] | None:
    if ctx.first_log is None or not ctx.first_log.is_file():
        return None
    scratch = d.dir / f"{tag}-state"
    return d.plan(extra=["--calibrate-from", str(ctx.first_log)], state=scratch, tag=tag)


def lifetime_recovery(ctx: Ctx, key: str, name: str, title: str, sets: list[str],
                      before: Callable[[Daemon], Any] | None = None,
                      during: Callable[[Daemon, Any], None] | None = None,
                      check: Callable[[Daemon, dict[str, Any], dict[str, Any], list[dict[str, Any]]], None] | None = None,
                      after: Callable[[Any], None] | None = None) -> None:
    """One failing first launch that the daemon must recover from, then SIGTERM (scenario 6)."""
    d = Daemon(ctx, name, sets)
    r = ctx.results[key] = {"scenario": title, "ok": False, "notes": []}
    helper = None
    st: dict[str, Any] | None = None
    baseline = None
    plan = cal = None
    try:
        helper = before(d) if before else None
        baseline = gpu_used_mib(ctx)
        plan = d.plan()
        cal = calibrated_plan(ctx, d, "plan-calibrated")
        d.start()
        if during:
            during(d, helper)
        st = d.wait_ready(attempt=2, timeout=READY_TIMEOUT * 2)
        d.save("status-ready.json", st)
        tm = ready_times(d)
        relaunches = history_events(st, "relaunch")
        r.update({
            "attempts": st.get("attempt"), "restarts": st.get("restarts"),
            "time_to_ready_s": tm[0] if tm else None,
            "time_to_ready_total_s": d.timeline[-1]["t"] if d.timeline else None,
            "failure_kind": relaunches[0]["failure"]["kind"] if relaunches and relaunches[0].get("failure") else None,
            "failure_values": relaunches[0]["failure"].get("values") if relaunches and relaunches[0].get("failure") else None,
            "change": relaunches[0].get("change") if relaunches else None,
            "reason": relaunches[0].get("reason") if relaunches else None,
            "kv_cache_tokens": st.get("kv_cache_tokens"), "max_concurrency": st.get("max_concurrency"),
            "max_model_len": st.get("max_model_len"), "gpu_memory_utilization": st.get("gpu_memory_utilization"),
            "argv_args": launch_args(st),
        })
        r["ok"] = st.get("state") == "ready" and st.get("attempt") == 2
        if st.get("attempt") != 2:
            r["notes"].append(f"ready at attempt {st.get('attempt')}, not after one relaunch")
        if baseline is not None:
            sigterm_at_end(ctx, d, baseline, key)
    finally:
        d.cleanup()
        if after:
            with contextlib.suppress(Exception):
                after(helper)
        segs = attempts_in(engine_log(d))
        seen = [printed(s) for s in segs]
        r["vllm_printed"] = seen
        r["engine_log_attempts"] = len(segs)
        if check and st is not None:
            try:
                check(d, st, r, seen)
            except Exception as exc:  # noqa: BLE001
                r["ok"] = False
                r["notes"].append(f"check failed: {exc!r}")
        r["predicted_before_launch"] = predicted(plan)
        r["predicted_before_launch_calibrated"] = predicted(cal) if cal else None
        with contextlib.suppress(Exception):
            planner_rows(ctx, d, key, segs)


def scenario_2(ctx: Ctx) -> None:
    sets = [f"vllm.gpu_memory_utilization={ctx.util(BUDGET_TOO_SMALL)}", "vllm.max_model_len=40960",
            "recovery.plan_first_launch=false"]

    def check(d: Daemon, st: dict[str, Any], r: dict[str, Any], seen: list[dict[str, Any]]) -> None:
        est = seen[0].get("estimated_max_model_len") if seen else None
        r["vllm_estimate"] = est
        r["recovered_max_model_len"] = st.get("max_model_len")
        # vLLM's estimate comes from the failed launch; what fits on the relaunch is its KV size
        # (a relaunch with another max_model_len compiles cold, which costs activation memory)
        r["kv_tokens_at_ready"] = st.get("kv_cache_tokens")
        if st.get("kv_cache_tokens"):
            r["recovered_vs_fit_at_ready"] = round(st.get("max_model_len") / st["kv_cache_tokens"], 4)
        if est:
            r["recovered_vs_estimate"] = round(st.get("max_model_len") / est, 4)
        first_warm = bool(seen) and "Directly load the compiled graph" in attempts_in(engine_log(d))[0]
        r["first_launch_compile"] = "warm" if first_warm else "cold"
        # The largest context that fits is what the relaunch's KV cache holds; vLLM's estimate is
        # that only when the failed launch compiled cold too (the relaunch always does).
        fit = st.get("kv_cache_tokens") if first_warm else est
        if fit:
            ratio = st.get("max_model_len") / fit
            r["recovered_vs_largest_fit"] = round(ratio, 4)
            if ratio < 0.95 or st.get("max_model_len") > (st.get("kv_cache_tokens") or 0):
                r["ok"] = False
                r["notes"].append(f"recovered context is {ratio:.1%} of the largest that fits ({fit})")
        # what the planner would have launched with had plan_first_launch been on
        p = d.plan(sets=[s for s in d.sets if "plan_first_launch" not in s], tag="plan-first-launch-on")
        r["planner_first_launch_max_model_len"] = ((p or {}).get("predicted") or {}).get("max_model_len")
        r["planner_largest_context"] = ((p or {}).get("predicted") or {}).get("largest_context")

    lifetime_recovery(ctx, "2", "B-context-too-long", f"2 context too long (util {ctx.util(BUDGET_TOO_SMALL)}, 40960)", sets, check=check)


def scenario_3(ctx: Ctx) -> None:
    sets = [f"vllm.gpu_memory_utilization={ctx.util(BUDGET_FREE_SHORT)}", "vllm.max_model_len=10000"]
    hold_mib = int(os.environ.get("VALIDATE_HOG_MIB", str(int((ctx.total_gib - FREE_LEFT_GIB) * 1024))))

    def before(d: Daemon) -> Hog:
        hog = Hog(ctx, d.dir / "hog.log")
        d.hog_answer = hog.send(f"grab {hold_mib}", 120)  # type: ignore[attr-defined]
        return hog

    def check(d: Daemon, st: dict[str, Any], r: dict[str, Any], seen: list[dict[str, Any]]) -> None:
        r["held_by_other_process"] = getattr(d, "hog_answer", None)
        if r.get("failure_kind") != "insufficient_free_memory":
            r["notes"].append(f"first failure was {r.get('failure_kind')}, expected insufficient_free_memory")

    lifetime_recovery(ctx, "3", "C-free-memory-short", f"3 free memory short ({hold_mib / 1024:.0f} GiB held, util {ctx.util(BUDGET_FREE_SHORT)})",
                      sets, before=before, check=check, after=lambda hog: hog and hog.close())


def scenario_4(ctx: Ctx) -> None:
    sets = [f"vllm.gpu_memory_utilization={ctx.util(BUDGET_24GB)}"]
    info: dict[str, Any] = {}

    def before(d: Daemon) -> Hog:
        return Hog(ctx, d.dir / "hog.log")

    def during(d: Daemon, hog: Hog) -> None:
        # Grab when vLLM compiles (the profiling run comes right after); give back once the
        # OOM shows, as a process that bursts and goes away would.
        st = d.wait(lambda s: s.get("phase") in ("compiling", "profiling", "kv_cache") or s.get("attempt", 1) > 1
                    or s.get("state") not in ("starting", "stopped"), READY_TIMEOUT, 0.05, "the compile phase")
        info["grab_at_phase"] = st.get("phase")
        info["grab_at_s"] = round(now() - d.t0, 2)
        info["grab"] = hog.send("grab_all 0", 60)
        st = d.wait(lambda s: any("out of memory" in ln.lower() or "outofmemory" in ln.lower()
                                  for ln in s.get("log_tail") or [])
                    or s.get("attempt", 1) > 1 or s.get("state") not in ("starting",), 180, 0.05, "the OOM")
        info["release_at_s"] = round(now() - d.t0, 2)
        info["release_when"] = {"state": st.get("state"), "attempt": st.get("attempt"), "phase": st.get("phase")}
        info["release"] = hog.send("release", 60)

    def check(d: Daemon, st: dict[str, Any], r: dict[str, Any], seen: list[dict[str, Any]]) -> None:
        r.update(info)
        if r.get("failure_kind") != "cuda_oom":
            r["notes"].append(f"first failure was {r.get('failure_kind')} (vLLM printed {seen[0].get('error_seen') if seen else None})")

    lifetime_recovery(ctx, "4", "D-cuda-oom-while-profiling", "4 CUDA OOM while vLLM compiles/profiles", sets,
                      before=before, during=during, check=check, after=lambda hog: hog and hog.close())


# ---------------------------------------------------------------- summary


def versions(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "simulated": ctx.simulate, "python": sys.version.split()[0]}
    if ctx.simulate:
        out["gpu"] = "simulated " + ctx.env.get("LLM_SUPERVISOR_SIM_GPU_NAME", "")
        return out
    with contextlib.suppress(Exception):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        out["gpu"] = r.stdout.strip()
    with contextlib.suppress(Exception):
        r = subprocess.run([ctx.python, "-c", "import torch, vllm; print(torch.__version__, torch.version.cuda, "
                            "vllm.__version__); print(torch.cuda.mem_get_info()[1]/2**30)"],
                           capture_output=True, text=True, timeout=180, env=ctx.env)
        parts = r.stdout.split()
        out.update({"torch": parts[0], "cuda": parts[1], "vllm": parts[2], "torch_total_gib": round(float(parts[3]), 2)})
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def summary_table(ctx: Ctx) -> str:
    R = ctx.results
    rows = []

    def row(key: str, figures: str) -> None:
        r = R.get(key)
        if r is None:
            rows.append(f"| {key} | not run | | |")
            return
        res = "PASS" if r.get("ok") else ("SKIP" if r.get("skipped") else "FAIL")
        notes = "; ".join(r.get("notes") or [])
        rows.append(f"| {r['scenario']} | {res} | {figures} | {notes} |")

    r = R.get("1", {})
    row("1", f"ready in {fmt(r.get('time_to_ready_s'))} s (cold), attempts {fmt(r.get('attempts'))}; KV tokens "
             f"status {fmt(r.get('status_kv_cache_tokens'))} / log {fmt((r.get('vllm_printed') or {}).get('kv_cache_tokens'))}"
             f" / metrics {fmt(r.get('metrics_kv_cache_size_tokens'))}; concurrency status "
             f"{fmt(r.get('status_max_concurrency'))} / log {fmt((r.get('vllm_printed') or {}).get('max_concurrency'))} / "
             f"metrics {fmt(r.get('metrics_kv_cache_max_concurrency'))}; chat {fmt(r.get('chat_status'))}")
    r = R.get("8", {})
    lat = r.get("latency_s") or {}
    ttft = r.get("ttft_s") or {}
    row("8", f"{fmt(r.get('succeeded'))}/{fmt(r.get('requests'))} ok, {fmt(r.get('tokens_per_s'))} tok/s, "
             f"{fmt(r.get('per_user_tokens_per_s'))} tok/s per user, TTFT p50 {fmt(ttft.get('p50'))} s, latency p95 "
             f"{fmt(lat.get('p95'))} s, engine running peak {fmt(r.get('engine_running_peak'))}")
    r = R.get("5", {})
    row("5", f"noticed {fmt(r.get('noticed_s'))} s, relaunch {fmt(r.get('relaunch_s'))} s, ready again "
             f"{fmt(r.get('ready_again_s'))} s after the kill (warm start {fmt(r.get('time_to_ready_warm_s'))} s), "
             f"kind {fmt(r.get('failure_kind'))}, ended on vLLM's report {fmt(r.get('ended_on_report'))}")
    r = R.get("9", {})
    k, rs = r.get("engine_killed") or {}, r.get("restart") or {}
    row("9", f"EngineCore killed: {fmt(k.get('requests'))} requests, {fmt(k.get('by_outcome'))}, "
             f"{fmt(k.get('failed_not_started'))} failures of requests not yet started, longest held "
             f"{fmt(k.get('longest_held_request_s'))} s; restart: {fmt(rs.get('requests'))} requests, "
             f"{fmt(rs.get('by_outcome'))} (ready again {fmt(r.get('restart_ready_s'))} s)")
    for key in ("10", "11"):
        r = R.get(key, {})
        c = r.get("clients") or {}
        row(key, f"noticed {fmt(r.get('noticed_s'))} s, old tree gone {fmt(r.get('old_tree_left_after_s'))} s, ready "
                 f"again {fmt(r.get('ready_again_s'))} s; {fmt(r.get('failure_kind'))}: {fmt(r.get('failure_message'))}; "
                 f"clients {fmt(c.get('requests'))} requests, {fmt(c.get('by_outcome'))}, "
                 f"{fmt(c.get('failed_not_started'))} failures not yet started; logs -n 5: {fmt(r.get('logs_n5_lines'))} lines")
    r = R.get("6", {})
    k9 = r.get("kill9") or {}
    terms = r.get("sigterm") or []
    tt = ", ".join(f"{fmt(t.get('daemon_exit_s'))}/{fmt(t.get('no_engine_process_s'))}/{fmt(t.get('gpu_memory_freed_s'))} s"
                   for t in terms)
    row("6", f"kill -9: no engine process after {fmt(k9.get('no_engine_process_s'))} s, memory freed after "
             f"{fmt(k9.get('gpu_memory_freed_s'))} s; SIGTERM (daemon exit/no process/memory freed): {tt or '–'}")
    r = R.get("2", {})
    row("2", f"attempts {fmt(r.get('attempts'))}, first {fmt(r.get('failure_kind'))}, change {fmt(r.get('change'))}; "
             f"vLLM estimate {fmt(r.get('vllm_estimate'))}, recovered {fmt(r.get('recovered_max_model_len'))} "
             f"({fmt(r.get('recovered_vs_estimate'))} of it; first launch compiled {fmt(r.get('first_launch_compile'))}), "
             f"{fmt(r.get('recovered_vs_largest_fit'))} of the largest that fits; ready after {fmt(r.get('time_to_ready_total_s'))} s in all")
    r = R.get("3", {})
    row("3", f"attempts {fmt(r.get('attempts'))}, first {fmt(r.get('failure_kind'))}, change {fmt(r.get('change'))}; "
             f"KV tokens {fmt(r.get('kv_cache_tokens'))}; ready after {fmt(r.get('time_to_ready_total_s'))} s in all")
    r = R.get("4", {})
    row("4", f"grab at {fmt(r.get('grab_at_phase'))} ({fmt(r.get('grab_at_s'))} s), attempts {fmt(r.get('attempts'))}, "
             f"first {fmt(r.get('failure_kind'))}, change {fmt(r.get('change'))}; ready after "
             f"{fmt(r.get('time_to_ready_total_s'))} s in all")
    lines = ["| scenario | result | measured | notes |", "|---|---|---|---|", *rows]
    if ctx.plans:
        lines += ["", "Planner (7): the prediction for each launch's arguments vs what vLLM printed on it", "",
                  "| scenario / attempt | arguments | compile | predicted KV GiB / tokens | calibrated KV GiB / tokens "
                  "| vLLM KV GiB / tokens / concurrency |",
                  "|---|---|---|---|---|---|"]
        for p in ctx.plans:
            a, c, v = p["predicted"], p.get("predicted_calibrated") or {}, p["vllm_printed"]
            args = " ".join(x.removeprefix("vllm.") for x in p["args"])
            lines.append(f"| {p['scenario']} / {p['attempt']} | {args} | {'eager' if p.get('eager') else 'warm' if p['compile_cached'] else 'cold'} | "
                         f"{fmt(a.get('available_kv_cache_gib'))} / {fmt(a.get('kv_cache_tokens'))} | "
                         f"{fmt(c.get('available_kv_cache_gib'))} / {fmt(c.get('kv_cache_tokens'))} | "
                         f"{fmt(v.get('available_kv_cache_gib'))} / {fmt(v.get('kv_cache_tokens'))} / "
                         f"{fmt(v.get('max_concurrency'))} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate", action="store_true", help="the bundled simulator on a simulated H100")
    ap.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu-validate-out"))
    ap.add_argument("--cache", default=None, help="compile cache folder shared by all scenarios")
    ap.add_argument("--model", default="/tmp/models/qwen3-4b")
    ap.add_argument("--only", default="1,8,5,9,6,2,3,4")
    ap.add_argument("--ignore-hardware-mismatch", action="store_true")
    add_archive_option(ap)
    ap.add_argument("--hog", nargs=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hog:
        return hog_main(args.hog)
    ctx = build_ctx(args)
    only = set(args.only.split(","))
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, _term)
    info = versions(ctx)
    if ctx.simulate:
        ctx.total_gib = round(int(ctx.env["LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB"]) / 1024, 2)
    elif info.get("torch_total_gib"):
        ctx.total_gib = info["torch_total_gib"]
    info["validate_total_gib"] = ctx.total_gib
    if not ctx.simulate and "H100" not in str(info.get("gpu", "")) and not ctx.ignore_hw:
        ctx.ignore_hw = True  # the profile names an H100; budgets are in GiB, so any large GPU works
        info["note"] = "not an H100: launching with --ignore-hardware-mismatch"
    (ctx.out / "versions.json").write_text(json.dumps(info, indent=1))
    print("versions:", json.dumps(info), flush=True)
    plan_steps: list[tuple[str, Callable[[], None], int]] = []
    if only & {"1", "8", "5", "6"} and "1" in only:
        plan_steps.append(("A", lambda: lifetime_a(ctx, only), LIMITS["A"]))
    if "2" in only:
        plan_steps.append(("B", lambda: scenario_2(ctx), LIMITS["B"]))
    if "3" in only:
        plan_steps.append(("C", lambda: scenario_3(ctx), LIMITS["C"]))
    if "4" in only:
        plan_steps.append(("D", lambda: scenario_4(ctx), LIMITS["D"]))
    t_all = now()
    shown: set[str] = set()
    try:
        for name, step, limit in plan_steps:
            t = now()
            print(f"--- lifetime {name} (hard limit {limit} s) at {now() - t_all:.0f} s", flush=True)
            signal.alarm(limit)
            try:
                step()
            except (Exception, ScenarioTimeout) as exc:  # noqa: BLE001 - record and go on
                text = "".join(traceback.format_exception(exc))
                (ctx.out / f"error-{name}.txt").write_text(text)
                print(f"lifetime {name} failed: {exc!r}", flush=True)
                key = {"A": "1", "B": "2", "C": "3", "D": "4"}[name]
                ctx.results.setdefault(key, {"scenario": key, "ok": False, "notes": []})
                ctx.results[key]["notes"].append(f"error: {exc!r}"[:300])
                ctx.results[key]["ok"] = False
            finally:
                signal.alarm(0)
            print(f"--- lifetime {name} done in {now() - t:.0f} s", flush=True)
            for key, r in ctx.results.items():
                if key in shown:
                    continue
                shown.add(key)
                print(f"    {key}: {'PASS' if r.get('ok') else 'FAIL'} {'; '.join(r.get('notes') or [])}"[:300], flush=True)
            (ctx.out / "results.json").write_text(json.dumps(ctx.results, indent=1, default=str))
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", flush=True)
    finally:
        if ctx.plans or "7" in only:
            ctx.results["7"] = {"scenario": "7 planner predictions vs vLLM", "ok": bool(ctx.plans), "notes": [],
                                "rows": ctx.plans}
        summary = {"versions": info, "wall_s": round(now() - t_all, 1), "results": ctx.results}
        (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        table = summary_table(ctx)
        (ctx.out / "summary.md").write_text(table + "\n")
        archive_if_asked(args.archive, [ctx.out])
        print("\n===== summary =====")
        print(table)
        print(json.dumps({k: {"ok": v.get("ok"), "notes": v.get("notes")} for k, v in ctx.results.items()}))
    return 0 if all(r.get("ok") for r in ctx.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
