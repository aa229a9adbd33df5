"""What the front door costs and what it saves.

1. passthrough: N concurrent streaming chat clients (default 64) straight at the simulated engine,
   then through the front door, alternating rounds. Figures: tokens/s each way and their ratio,
   TTFT p50 each way and the difference, and the front door's own CPU seconds per streamed token
   (its process's CPU time over the tokens it streamed).
2. failover: M clients (default 16) while the simulated EngineCore is SIGKILLed and the engine
   relaunched, once straight at the engine (relaunched on the same port, as the daemon does without
   a front door) and once through the front door (this script plays the daemon: engine_down when the
   dead engine's API server exits, engine_ready once the new engine answers /health). Figure:
   requests that failed, by kind (refused connections, 5xx, error events, cut streams).

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
from _common import REPO, emit, free_port, log, machine_info, tmpdir  # noqa: E402
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


async def _failover_run(tmp: Path, args: argparse.Namespace, through_door: bool) -> dict[str, Any]:
    env = sim_env(tmp, LLM_SUPERVISOR_SIM_STARTUP_S=str(args.relaunch_s),
                  LLM_SUPERVISOR_SIM_TOKENS_PER_S=str(args.tokens_per_s))
    port = free_port()
    engine = Engine(tmp, port, env)
    engines = [engine]
    door: Door | None = None
    timeline: dict[str, float] = {}
    try:
        await asyncio.to_thread(engine.wait_ready)
        if through_door:
            door = Door(env)
            door.call(f"ready {engine.url}")
            url = door.url
        else:
            url = engine.url
        t0 = time.monotonic()
        clients = asyncio.ensure_future(run_clients(url, clients=args.failover_clients, duration_s=args.failover_s,
                                                    model=MODEL, max_tokens=args.max_tokens,
                                                    pause_after_failure_s=args.retry_pause_s))
        await asyncio.sleep(args.kill_after_s)
        core = engine.engine_core()
        if core is None:
            raise RuntimeError("no EngineCore process to kill")
        core.kill()
        timeline["killed"] = time.monotonic() - t0
        # the daemon's part: notice the API server's exit, then relaunch
        await asyncio.to_thread(engine.proc.wait, 60)
        timeline["api_server_exited"] = time.monotonic() - t0
        if door is not None:
            await asyncio.to_thread(door.call, f"down engine died; starting {args.relaunch_s:g}")
        new_port = free_port() if through_door else port
        engine = Engine(tmp, new_port, env)
        engines.append(engine)
        await asyncio.to_thread(engine.wait_ready)
        timeline["relaunched_ready"] = time.monotonic() - t0
        if door is not None:
            await asyncio.to_thread(door.call, f"ready {engine.url}")
        results = await clients
        stats = door.call("stats") if door is not None else None
    finally:
        if door is not None:
            door.stop()
        for e in engines:
            e.stop()
    summary = summarize(results)
    out: dict[str, Any] = {"clients": args.failover_clients, "timeline_s": {k: round(v, 2) for k, v in timeline.items()},
                           **{k: summary[k] for k in ("requests", "ok", "failed", "failures", "success_rate")}}
    if stats is not None:
        out["door_stats"] = {k: stats[k] for k in ("retried", "cut_streams", "cut_responses", "rejected", "completed")}
    return out


def failover(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    log(f"frontdoor: failover without the front door ({args.failover_clients} clients)")
    direct = asyncio.run(_failover_run(tmp / "direct", args, through_door=False))
    log(f"frontdoor: failover through the front door ({args.failover_clients} clients)")
    through = asyncio.run(_failover_run(tmp / "door", args, through_door=True))
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
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "frontdoor", "machine": machine_info()}
    with tmpdir("frontdoor") as tmp:
        (tmp / "direct").mkdir()
        (tmp / "door").mkdir()
        result["passthrough"] = passthrough(tmp, args)
        p = result["passthrough"]
        log(f"frontdoor: tokens/s {p['tokens_per_s_direct']} direct, {p['tokens_per_s_door']} through the door "
            f"({p['tokens_per_s_ratio']}x); TTFT p50 +{p['ttft_p50_added_ms']} ms; "
            f"{p['door_cpu_us_per_token']} us CPU per token")
        if not args.skip_failover:
            result["failover"] = failover(tmp, args)
    emit(result)


if __name__ == "__main__":
    main()
