"""No orphan by any path: the guard's death is seen at once and its tree ended; with the guard and
the daemon both killed, the kernel ends the engine's group (PR_SET_PDEATHSIG on the engine's main
process, the hangup of the guard's controlling terminal for the rest); a `kill -9` during
recovery leaves nothing and keeps the decisions already made.

Real processes: the guard run by hand, and the daemon over the simulator or tests/fake_engine.py.
The long random trials are benchmarks/reliability_trials.py; these are the representative ones.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_harness import DaemonRun, free_port, port_free
from hardening_utils import FAKE_ENGINE, REPO, FakeEngineRun, alive, poll

CLEAN_DEADLINE_S = 20.0


def assert_clean(run: DaemonRun, what: str) -> None:
    deadline = time.monotonic() + CLEAN_DEADLINE_S
    while time.monotonic() < deadline:
        if not run.tree() and port_free(run.engine_port) and run.held_mib() == 0:
            return
        time.sleep(0.05)
    left = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in run.tree()]
    raise AssertionError(f"{what}: left behind: {left}, port free {port_free(run.engine_port)}, "
                         f"simulated MiB held {run.held_mib()}")


def pids_from(pidfile: Path) -> tuple[list[int], list[int]]:
    """(engine pids, child pids) a fake engine wrote."""
    engines, children = [], []
    if pidfile.exists():
        for line in pidfile.read_text().splitlines():
            if line.startswith("child "):
                children.append(int(line.split()[1]))
            elif line.strip():
                engines.append(int(line))
    return engines, children


def saved_events(run: DaemonRun) -> list[str]:
    return [str(h.get("event")) for h in run.state_history()]


def test_kernel_backstops_end_the_engine_when_guard_and_daemon_are_gone(tmp_path: Path) -> None:
    """The guard as the daemon starts it (own session, control socket, the engine's own output
    pipe), with nobody left to act after its kill -9: the engine's main process dies of
    PR_SET_PDEATHSIG, its child (which holds a copy of every descriptor it was given, like an
    EngineCore would) of the terminal's hangup, and the output pipe reaches end of file."""
    pidfile = tmp_path / "pids"
    ours, theirs = socket.socketpair()
    out_r, out_w = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_ENGINE_CHILD": "1", "FAKE_ENGINE_PIDFILE": str(pidfile)}
    argv = [sys.executable, "-m", "llm_supervisor.runtime.guard", "--control-fd", str(theirs.fileno()),
            "--output-fd", str(out_w), "--", sys.executable, str(FAKE_ENGINE), "fake", "--port", str(free_port())]
    guard = subprocess.Popen(argv, pass_fds=(theirs.fileno(), out_w), start_new_session=True, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    theirs.close()
    os.close(out_w)
    try:
        engines, children = poll(lambda: (lambda e, c: (e, c) if e and c else None)(*pids_from(pidfile)), 20,
                                 what="the engine and its child started")
        lines = ours.recv(4096).decode()
        assert "backstop pdeathsig and hangup" in lines, lines
        guard.kill()
        guard.wait(10)
        ours.close()  # the daemon is gone too
        poll(lambda: not alive(engines + children), 10, what="the engine and its child gone")
        os.set_blocking(out_r, True)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # EOF: nothing kept a descriptor of the pipe
            chunk = os.read(out_r, 65536)
            if not chunk:
                break
            data += chunk
        else:
            raise AssertionError("the engine's output pipe never reached end of file")
    finally:
        os.close(out_r)
        for pid in alive(pids_from(pidfile)[0] + pids_from(pidfile)[1]):
            os.kill(pid, signal.SIGKILL)


def test_kill9_of_the_guard_is_seen_at_once_and_the_engine_relaunched(daemons) -> None:
    run: DaemonRun = daemons(startup_s=0.3).start()
    first = run.wait_ready()
    old = [p.pid for p in run.engine_processes()]
    assert old
    os.kill(first["guard_pid"], signal.SIGKILL)
    t0 = time.monotonic()
    second = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, what="relaunched after the guard")
    took = time.monotonic() - t0
    assert not alive(old)
    assert second["guard_pid"] != first["guard_pid"] and second["pid"] != first["pid"]
    exits = [h for h in second["history"] if h["event"] == "exit"]
    assert exits and exits[-1]["failure"]["kind"] == "engine_dead"
    assert f"lost its guard (pid {first['guard_pid']}, killed by SIGKILL)" in exits[-1]["failure"]["message"]
    # the decision is on disk as soon as it is made, not only at the next ready or stop
    assert "relaunch" in saved_events(run)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    assert_clean(run, "SIGTERM after a guard kill")
    print(f"guard kill -9 → ready again in {took:.2f} s")


@pytest.mark.slow
def test_a_child_that_ignores_sighup_is_ended_by_the_daemon(tmp_path: Path) -> None:
    """What the kernel backstop cannot end (a process that ignores SIGHUP) the daemon ends when
    it sees its guard die: every process of the guard's session."""
    pidfile = tmp_path / "pids"
    run = FakeEngineRun(tmp_path / "run", "normal", env={"FAKE_ENGINE_CHILD": "1", "FAKE_ENGINE_CHILD_IGNORES_HUP": "1",
                                                         "FAKE_ENGINE_PIDFILE": str(pidfile)})
    with run:
        first = run.start().wait_ready()
        engines, children = pids_from(pidfile)
        assert len(engines) == 1 and len(children) == 1 and alive(children)
        os.kill(first["guard_pid"], signal.SIGKILL)
        second = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, what="relaunched")
        assert not alive(engines + children)
        message = [h for h in second["history"] if h["event"] == "exit"][-1]["failure"]["message"]
        # The child (it ignores SIGHUP) is always among the processes the daemon ends; the engine's
        # main process dies of PR_SET_PDEATHSIG on its own, and on a loaded machine may still be
        # in the session when the daemon sweeps it, so the count is 1 or 2.
        ended = re.search(r"ended the (\d+) engine process\(es\) it left", message)
        assert ended and int(ended.group(1)) in (1, 2), message
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0
        assert not alive(pids_from(pidfile)[0] + pids_from(pidfile)[1])


@pytest.mark.parametrize("delay_s", [0.0, pytest.param(0.3, marks=pytest.mark.slow)])
def test_kill9_of_the_guard_then_the_daemon_leaves_nothing(daemons, delay_s: float) -> None:
    run: DaemonRun = daemons(startup_s=0.3).start()
    status = run.wait_ready()
    os.kill(status["guard_pid"], signal.SIGKILL)
    time.sleep(delay_s)
    run.signal(signal.SIGKILL)
    assert run.wait_exit(10) == -signal.SIGKILL
    assert_clean(run, f"kill -9 of the guard, then {delay_s:g} s later of the daemon")


def test_kill9_during_recovery_leaves_nothing_and_keeps_the_decision(daemons) -> None:
    """A start that cannot fit (utilization 0.4 for 40,960 tokens, no planning) fails with
    kv_cache_too_small; the daemon decides a shorter context and relaunches. `kill -9` of the
    daemon right after the decision: nothing is left, and state.json already has the decision."""
    r = random.Random(os.environ.get("HARDENING_SEED", "recovery"))
    run: DaemonRun = daemons(startup_s=4, sets=["vllm.gpu_memory_utilization=0.4",
                                                 "recovery.min_gpu_memory_utilization=0.3",
                                                 "recovery.plan_first_launch=false"]).start()
    poll(lambda: "relaunch" in saved_events(run), 60, 0.01, "the relaunch decision in state.json")
    time.sleep(r.uniform(0, 0.5))  # somewhere in the relaunch
    status = run.status() or {}
    assert status.get("attempt") == 2 and status.get("state") != "ready", status.get("state")  # not saved by a ready
    run.signal(signal.SIGKILL)
    assert run.wait_exit(10) == -signal.SIGKILL
    assert_clean(run, "kill -9 of the daemon during recovery")
    data = json.loads((run.state_dir / "state.json").read_text())
    relaunch = [h for prof in data["profiles"].values() for h in prof["history"] if h["event"] == "relaunch"]
    assert relaunch and relaunch[0]["failure"]["kind"] == "kv_cache_too_small"
    assert relaunch[0]["change"]["max_model_len"][0] == 40960
