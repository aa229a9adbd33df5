"""How fast the daemon reacts: engine death → relaunch, and SIGTERM → tree gone, port free.

1. relaunch: with the simulated engine ready (backoff set to 0 so the figure is the daemon's
   own reaction, not policy), SIGKILL the simulator's EngineCore. Like real vLLM, the API
   server then notices and exits; the daemon must notice that exit and begin a relaunch.
   Measured: kill → API server gone (the engine's own reaction), API server gone → first new
   process of the relaunch (the daemon's reaction), and → the relaunch event in /status history.
2. shutdown: SIGTERM to the daemon while ready → every process of its tree gone and the
   engine's port free. Compared with the engine's own SIGTERM shutdown time, measured on the
   same simulator launched bare.

    python benchmarks/detection.py [--repeats 3]

Prints one JSON line. CONTRACT targets: relaunch begun within 1 s of the child's exit (plus
backoff); tree gone and port free within the engine's shutdown time + 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Daemon, alive, base_env, daemon_available, emit, free_port, log, machine_info, port_free, tmpdir, tree_pids  # noqa: E402

import httpx  # noqa: E402
import psutil  # noqa: E402

TARGET_RELAUNCH_S = 1.0
TARGET_SHUTDOWN_MARGIN_S = 2.0
POLL_S = 0.002


def _when(value: object) -> float | None:
    """A history timestamp (epoch seconds or ISO 8601) as epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.timezone.utc)
            return parsed.timestamp()
    return None


def _cmdline(pid: int) -> str:
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(pid)
        return " ".join(p.cmdline()) + " " + p.name()
    return ""


def find_engine_core(daemon_pid: int, api_pid: int | None) -> int | None:
    """The simulated EngineCore in the daemon's tree (by its title), if the engine has one."""
    for pid in sorted(tree_pids(daemon_pid)):
        if pid not in (daemon_pid, api_pid) and "EngineCore" in _cmdline(pid):
            return pid
    return None


def engine_api_pid(daemon: Daemon, snap: dict) -> int | None:
    pid = snap.get("pid")
    if isinstance(pid, int) and psutil.pid_exists(pid):
        return pid
    return None


def one_relaunch(daemon: Daemon) -> dict:
    snap = daemon.wait_state(("ready",), timeout=180)
    api_pid = engine_api_pid(daemon, snap)
    guard_pid = snap.get("guard_pid") if isinstance(snap.get("guard_pid"), int) else None
    core = find_engine_core(daemon.pid, api_pid)
    before = tree_pids(daemon.pid)
    history_len = len(snap.get("history") or [])
    victim = core or api_pid
    if victim is None:
        raise RuntimeError(f"no engine process found in the daemon's tree: {snap}")
    t_kill = time.time()
    os.kill(victim, signal.SIGKILL)
    t_api_gone = t_new = t_guard_gone = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (t_api_gone is None or t_new is None):
        now = time.time()
        if t_api_gone is None and api_pid and not alive({api_pid}):
            t_api_gone = now
        if t_guard_gone is None and guard_pid and not alive({guard_pid}):
            t_guard_gone = now
        if t_new is None:
            fresh = tree_pids(daemon.pid) - before
            if fresh:
                t_new = now
        time.sleep(POLL_S)
    # the daemon's own record: its "exit" and "relaunch" history events (timestamps as it prints them)
    events: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "relaunch" not in events:
        hist = (daemon.status() or {}).get("history") or []
        for entry in hist[history_len:]:
            at = _when(entry.get("at"))
            if at is not None and entry.get("event") in ("exit", "relaunch"):
                events.setdefault(entry["event"], at)
        time.sleep(0.05)
    snap2 = daemon.wait_state(("ready",), timeout=180)
    t_ready = time.time()
    return {
        "killed": "EngineCore" if core else "api_server",
        "engine_exit_after_kill_s": _d(t_api_gone, t_kill),
        "relaunch_after_exit_s": _d(t_new, t_api_gone if t_api_gone else t_kill),
        "guard_done_after_exit_s": _d(t_guard_gone, t_api_gone),
        "relaunch_after_guard_done_s": _d(t_new, t_guard_gone),
        "relaunch_after_kill_s": _d(t_new, t_kill),
        "history_exit_after_kill_s": _d(events.get("exit"), t_kill),
        "history_relaunch_after_kill_s": _d(events.get("relaunch"), t_kill),
        "ready_again_after_kill_s": _d(t_ready, t_kill),
        "restarts": snap2.get("restarts"),
    }


def _d(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def daemon_shutdown(daemon: Daemon) -> dict:
    daemon.wait_state(("ready",), timeout=180)
    pids = tree_pids(daemon.pid)
    t0 = time.time()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    t_tree = t_port = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (t_tree is None or t_port is None):
        now = time.time()
        if t_tree is None and not alive(pids):
            t_tree = now
        if t_port is None and port_free(daemon.engine_port):
            t_port = now
        time.sleep(POLL_S)
    code = daemon.proc.wait(30)
    return {
        "processes": len(pids),
        "tree_gone_s": _d(t_tree, t0),
        "engine_port_free_s": _d(t_port, t0),
        "api_port_free": port_free(daemon.api_port),
        "daemon_exit_code": code,
        "left_alive": sorted(alive(pids)),
    }


def engine_own_shutdown(tmp: Path) -> dict:
    """The simulator alone: SIGTERM to its API server → its process group gone, port free."""
    from llm_supervisor.planning.launch import SIMULATOR_COMMAND

    port = free_port()
    argv = [*SIMULATOR_COMMAND, "Qwen/Qwen3-4B", "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", "qwen3-4b", "--gpu-memory-utilization", "0.9", "--max-model-len", "10000"]
    env = base_env(tmp)
    with open(tmp / "engine.out", "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"simulator exited {proc.returncode}: {(tmp / 'engine.out').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        pids = tree_pids(proc.pid)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        t_tree = t_port = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (t_tree is None or t_port is None):
            now = time.time()
            if t_tree is None and not alive(pids):
                t_tree = now
            if t_port is None and port_free(port):
                t_port = now
            time.sleep(POLL_S)
        return {"processes": len(pids), "tree_gone_s": _d(t_tree, t0), "port_free_s": _d(t_port, t0)}
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6, help="engine kills per run")
    args = ap.parse_args()
    result: dict = {"benchmark": "detection", "machine": machine_info(),
                    "targets": {"relaunch_after_exit_s": TARGET_RELAUNCH_S, "shutdown_margin_s": TARGET_SHUTDOWN_MARGIN_S}}
    missing = daemon_available()
    if missing:
        emit({**result, "error": missing})
        return
    sets = ["recovery.backoff_initial_s=0", "recovery.max_attempts=20"]
    with tmpdir("detection") as tmp:
        runs = []
        with Daemon(tmp / "relaunch", sets=sets) as daemon:
            for i in range(args.repeats):
                log(f"detection: kill {i + 1}/{args.repeats}")
                runs.append(one_relaunch(daemon))
        result["relaunch_runs"] = runs
        vals = [r["relaunch_after_exit_s"] for r in runs if r["relaunch_after_exit_s"] is not None]
        result["relaunch_after_exit_s_median"] = round(statistics.median(vals), 4) if vals else None
        result["relaunch_after_exit_s_max"] = max(vals) if vals else None
        log("detection: engine's own SIGTERM shutdown")
        result["engine_shutdown"] = engine_own_shutdown(tmp)
        log("detection: SIGTERM to the daemon")
        with Daemon(tmp / "shutdown") as daemon:
            result["daemon_shutdown"] = daemon_shutdown(daemon)
    own = result["engine_shutdown"]
    ds = result["daemon_shutdown"]
    worst = max(x for x in (ds["tree_gone_s"], ds["engine_port_free_s"]) if x is not None) if ds["tree_gone_s"] else None
    own_worst = max(x for x in (own["tree_gone_s"], own["port_free_s"]) if x is not None) if own["tree_gone_s"] else None
    result["shutdown_margin_s"] = _d(worst, own_worst)
    result["meets_target"] = {
        "relaunch": result["relaunch_after_exit_s_max"] is not None and result["relaunch_after_exit_s_max"] <= TARGET_RELAUNCH_S,
        "shutdown": result["shutdown_margin_s"] is not None and result["shutdown_margin_s"] <= TARGET_SHUTDOWN_MARGIN_S
        and not ds["left_alive"],
    }
    emit(result)


if __name__ == "__main__":
    main()
