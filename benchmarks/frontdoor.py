"""What the front door costs and what it saves.

1. passthrough: N concurrent streaming chat clients (default 64) straight at the simulated engine,
   then through the front door, alternating rounds. Figures: tokens/s each way and their ratio,
   TTFT p50 each way and the difference, and the front door's own CPU seconds per streamed token
   (its process's CPU time over the tokens it streamed).
2. failover: M clients (default 16) streaming at the profile's address of a real daemon
   (`supervisor up --simulate`) while the simulated EngineCore is SIGKILLed, and then while
   `supervisor restart` runs; once with `frontdoor.enabled: false` (vLLM alone on the address) and
   once with the front door. Figures per window: requests that failed, by kind (refused
   connections, 5xx, error events, cut streams), and how many of them had not started when the
   engine went away. Goals: 0 failures of requests that had not started; 0 on a planned restart.

    python benchmarks/frontdoor.py [--clients 64] [--seconds 20] [--rounds 2] [--failover-clients 16]

Prints one JSON line. Goals: tokens/s through the door >= 0.97x direct, TTFT p50 + <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Daemon, emit, free_port, log, machine_info, tmpdir  # noqa: E402
from _streamload import run_clients, summarize  # noqa: E402

import httpx  # noqa: E402
import psutil  # noqa: E402

MODEL = "qwen3-4b"
GOAL_RATIO = 0.97
GOAL_ADDED_TTFT_MS = 2.0


class Engine:
    """One simulated `vllm serve` in a session of its own."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "llm_supervisor.simulator", "serve", "Qwen/Qwen3-4B", "--port", str(port),
                "--served-model-name", MODEL, "--disable-uvicorn-access-log", "--disable-log-stats"]
        with open(tmp / f"engine-{port}-{time.monotonic_ns()}.log", "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine on {self.port} exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"engine on {self.port} not ready after {timeout:.0f} s")

    def engine_core(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                        return child
        return None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class Door:
    """benchmarks/_frontdoor_runner.py: a front door in its own process, driven over stdin."""

    def __init__(self, env: dict[str, str], sets: list[str] | None = None) -> None:
        argv = [sys.executable, str(REPO / "benchmarks" / "_frontdoor_runner.py"), "--port", "0"]
        for item in sets or []:
            argv += ["--set", item]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1)
        self.port = int(self._answer()["port"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.ps = psutil.Process(self.proc.pid)

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"front door runner exited ({self.proc.poll()})")
        return json.loads(line)

    def call(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop")
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def sim_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_SUPERVISOR_", "VLLM_"))}
    env.update({
        "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "PYTHONUNBUFFERED": "1",
        "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp / "simgpu"),
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
        "HF_HOME": str(tmp / "hf"),
    })
    env.update(extra)
    return env


def load(url: str, clients: int, seconds: float, max_tokens: int) -> list[Any]:
    return asyncio.run(run_clients(url, clients=clients, duration_s=seconds, model=MODEL, max_tokens=max_tokens))


# ---------------------------------------------------------------- 1. passthrough


def passthrough(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = sim_env(tmp, LLM_SUPERVISOR_SIM_STARTUP_S="0.5", LLM_SUPERVISOR_SIM_TOKENS_PER_S=str(args.tokens_per_s))
    engine = Engine(tmp, free_port(), env)
    door: Door | None = None
    try:
        engine.wait_ready()
        door = Door(env)
        door.call("starting 1")
        door.call(f"ready {engine.url}")
        log(f"frontdoor: warming up ({args.clients} clients)")
        load(engine.url, args.clients, 2, args.max_tokens)
        load(door.url, args.clients, 2, args.max_tokens)
        direct: list[Any] = []
        through: list[Any] = []
        cpu = 0.0
        idle_cpu = 0.0
        direct_s = 0.0
        for i in range(args.rounds):
            log(f"frontdoor: round {i + 1}/{args.rounds}: direct")
            c0, t0 = door.cpu_s(), time.monotonic()
            direct += [summarize(load(engine.url, args.clients, args.seconds, args.max_tokens))]
            idle_cpu += door.cpu_s() - c0
            direct_s += time.monotonic() - t0
            log(f"frontdoor: round {i + 1}/{args.rounds}: through the front door")
            c0 = door.cpu_s()
            through += [summarize(load(door.url, args.clients, args.seconds, args.max_tokens))]
            cpu += door.cpu_s() - c0
        stats = door.call("stats")
    finally:
        if door is not None:
            door.stop()
        engine.stop()

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    tps_direct, tps_door = mean(direct, "tokens_per_s"), mean(through, "tokens_per_s")
    ttft_direct, ttft_door = mean(direct, "ttft_p50_ms"), mean(through, "ttft_p50_ms")
    tokens_door = sum(r["tokens"] for r in through)
    ratio = tps_door / tps_direct if tps_direct else None
    added = ttft_door - ttft_direct
    return {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "engine_tokens_per_s_per_request": args.tokens_per_s,
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "direct": direct,
        "through_door": through,
        "tokens_per_s_direct": round(tps_direct, 1),
        "tokens_per_s_door": round(tps_door, 1),
        "tokens_per_s_ratio": round(ratio, 4) if ratio else None,
        "ttft_p50_ms_direct": round(ttft_direct, 2),
        "ttft_p50_ms_door": round(ttft_door, 2),
        "ttft_p50_added_ms": round(added, 2),
        "door_cpu_s": round(cpu, 3),
        "door_cpu_us_per_token": round(cpu / tokens_door * 1e6, 2) if tokens_door else None,
        "door_cpu_percent_while_streaming": round(100 * cpu / (args.rounds * args.seconds), 1),
        "door_cpu_percent_while_idle": round(100 * idle_cpu / direct_s, 2) if direct_s else None,
        "door_failures": sum(r["failed"] for r in through),
        "door_stats": {k: stats[k] for k in ("requests", "completed", "retried", "cut_streams", "rejected")},
        "meets_goal": {"tokens_per_s": bool(ratio and ratio >= GOAL_RATIO), "ttft": added <= GOAL_ADDED_TTFT_MS},
    }


# ---------------------------------------------------------------- 2. failover


async def _failover_run(tmp: Path, args: argparse.Namespace, door: bool) -> dict[str, Any]:
    """The real daemon (`supervisor up --simulate`), `--failover-clients` streaming at the profile's
    address: the EngineCore is SIGKILLed, then (once the engine is back) `supervisor restart`."""
    sets = ["recovery.backoff_initial_s=0.5", "recovery.backoff_max_s=1"]
    if not door:
        sets.append("frontdoor.enabled=false")
    env = {"LLM_SUPERVISOR_SIM_STARTUP_S": str(args.relaunch_s),
           "LLM_SUPERVISOR_SIM_TOKENS_PER_S": str(args.tokens_per_s)}
    timeline: dict[str, float] = {}
    with Daemon(tmp, sets=sets, env=env) as daemon:
        await asyncio.to_thread(daemon.wait_state, ("ready",), 120)
        stop = asyncio.Event()
        t0 = time.monotonic()
        clients = asyncio.ensure_future(run_clients(daemon.engine_url, clients=args.failover_clients,
                                                    duration_s=3600, model=MODEL, max_tokens=args.max_tokens,
                                                    pause_after_failure_s=args.retry_pause_s, stop=stop))
        await asyncio.sleep(args.kill_after_s)
        core = next((p for p in psutil.Process(daemon.pid).children(recursive=True)
                     if "EngineCore" in " ".join(p.cmdline())), None)
        if core is None:
            raise RuntimeError("no EngineCore process to kill")
        core.kill()
        timeline["killed"] = time.monotonic() - t0
        await asyncio.to_thread(_wait_attempt, daemon, 2)
        timeline["ready_again"] = time.monotonic() - t0
        await asyncio.sleep(args.kill_after_s)
        timeline["restart_requested"] = time.monotonic() - t0
        await asyncio.to_thread(httpx.post, daemon.url + "/restart", timeout=5)
        await asyncio.to_thread(_wait_attempt, daemon, 3)
        timeline["ready_after_restart"] = time.monotonic() - t0
        await asyncio.sleep(args.kill_after_s)
        stop.set()
        results = await clients
        status = daemon.status() or {}
    killed, restart = t0 + timeline["killed"], t0 + timeline["restart_requested"]
    windows = {"engine_killed": [r for r in results if killed <= r.end and r.start < restart],
               "restart": [r for r in results if r.end >= restart]}
    out: dict[str, Any] = {"clients": args.failover_clients, "timeline_s": {k: round(v, 2) for k, v in timeline.items()}}
    for name, chosen in windows.items():
        summary = summarize(chosen)
        not_started = [r for r in chosen if r.start > (killed if name == "engine_killed" else restart) + 0.05]
        out[name] = {**{k: summary[k] for k in ("requests", "ok", "failed", "failures")},
                     "failed_not_started": sum(not r.ok for r in not_started)}
    if door:
        out["door_stats"] = {k: (status.get("frontdoor") or {}).get(k)
                             for k in ("retried", "cut_streams", "cut_responses", "rejected", "completed", "drains")}
    return out


def _wait_attempt(daemon: Daemon, attempt: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        snap = daemon.status()
        if snap and snap.get("state") == "ready" and snap.get("attempt") == attempt:
            return
        time.sleep(0.1)
    raise RuntimeError(f"daemon not ready at attempt {attempt}:\n{daemon.tail()}")


def failover(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    log(f"frontdoor: the daemon without the front door, {args.failover_clients} clients, EngineCore killed, restart")
    direct = asyncio.run(_failover_run(tmp / "direct", args, door=False))
    log(f"frontdoor: the daemon with the front door, {args.failover_clients} clients, EngineCore killed, restart")
    through = asyncio.run(_failover_run(tmp / "door", args, door=True))
    return {"relaunch_s": args.relaunch_s, "retry_pause_s": args.retry_pause_s, "direct": direct,
            "through_door": through}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="each timed window")
    parser.add_argument("--rounds", type=int, default=2, help="direct/door window pairs")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--tokens-per-s", type=float, default=50.0, help="the simulated engine's speed per request")
    parser.add_argument("--failover-clients", type=int, default=16)
    parser.add_argument("--failover-s", type=float, default=15.0)
    parser.add_argument("--kill-after-s", type=float, default=3.0)
    parser.add_argument("--relaunch-s", type=float, default=4.0, help="the relaunched engine's start time")
    parser.add_argument("--retry-pause-s", type=float, default=0.5,
                        help="failover: a client waits this long after a failed request before the next")
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--skip-passthrough", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "frontdoor", "machine": machine_info()}
    with tmpdir("frontdoor") as tmp:
        (tmp / "direct").mkdir()
        (tmp / "door").mkdir()
        if not args.skip_passthrough:
            result["passthrough"] = p = passthrough(tmp, args)
            log(f"frontdoor: tokens/s {p['tokens_per_s_direct']} direct, {p['tokens_per_s_door']} through the door "
                f"({p['tokens_per_s_ratio']}x); TTFT p50 +{p['ttft_p50_added_ms']} ms; "
                f"{p['door_cpu_us_per_token']} us CPU per token")
        if not args.skip_failover:
            result["failover"] = failover(tmp, args)
    emit(result)


if __name__ == "__main__":
    main()
