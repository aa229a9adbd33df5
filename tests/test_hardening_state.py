"""State safety: a writer killed at random points while it rewrites state.json never leaves a torn
file; a corrupt state or calibration file costs a warning, not the start; a second daemon on
the same state dir, API port or engine port refuses clearly and disturbs nothing."""

from __future__ import annotations

import pytest

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon_harness import DaemonRun
from hardening_utils import REPO, poll

SEED = int(os.environ.get("HARDENING_SEED") or random.SystemRandom().randrange(1 << 30))

WRITER = """
import json, sys
from pathlib import Path
from llm_supervisor.store.state import atomic_write
path = Path(sys.argv[1])
seq = json.loads(path.read_text())["seq"] if path.exists() else 0
sizes = [10, 1000, 100_000, 1_500_000]
print("go", flush=True)
while True:
    seq += 1
    atomic_write(path, json.dumps({"seq": seq, "pad": "x" * sizes[seq % len(sizes)], "end": seq}))
"""


@pytest.mark.slow
def test_kill9_during_state_writes_never_tears_the_file(tmp_path: Path) -> None:
    """30 writers, each SIGKILLed at a random moment of its rewrite loop (payloads from 10 B to
    1.5 MB, so many kills land mid-write): the file always parses, is whole (its two copies of the
    sequence number agree) and never goes back in time."""
    r = random.Random(SEED)
    print(f"HARDENING_SEED={SEED}")
    path = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last = 0
    kills = 30
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"go"
        time.sleep(r.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if not path.exists():
            continue
        data = json.loads(path.read_text())  # never torn: old or new, whole
        assert data["seq"] == data["end"] and data["seq"] >= last
        last = data["seq"]
    assert last > kills  # the writers did write, many times
    # no temporary files pile up: the next store load sweeps what killed writers left
    from llm_supervisor.store.state import StateStore

    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "profiles": {}}))
    StateStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_daemon_starts_past_a_corrupt_state_and_calibration(daemons) -> None:
    run: DaemonRun = daemons()
    run.state_dir.mkdir(parents=True)
    (run.state_dir / "state.json").write_bytes(b'{"version": 1, "profiles": {"x": {"last_good": {"args"')
    (run.state_dir / "calibration.json").write_bytes(b"\x00\xff not json")
    run.start()
    run.wait_ready()
    log = run.stderr()
    assert f"{run.state_dir / 'state.json'}: corrupt" in log and "WARNING" in log
    assert "calibration" in log and "Traceback" not in log
    aside = list(run.state_dir.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b'{"version": 1, "profiles": {"x"')
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    saved = json.loads((run.state_dir / "state.json").read_text())  # written afresh, whole
    assert any(entry.get("last_good") for entry in saved["profiles"].values())


def _second(tmp: Path, first: DaemonRun, **kw: object) -> DaemonRun:
    return DaemonRun(tmp, **kw)  # type: ignore[arg-type]


def _refuses(second: DaemonRun, first: DaemonRun, *needles: str) -> str:
    second.start()
    code = second.wait_exit(60)
    err = second.stderr()
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 1, (code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert second.tree() == []  # it launched nothing
    # the first daemon did not notice
    snap = first.status()
    assert snap is not None and snap["state"] == "ready" and snap["attempt"] == 1 and snap["restarts"] == 0
    return lines[0]


def test_second_daemon_on_the_same_state_dir_refuses(daemons, tmp_path: Path) -> None:
    first: DaemonRun = daemons().start()
    first.wait_ready()
    second = daemons()
    second.state_dir = first.state_dir
    second.env["LLM_SUPERVISOR_STATE_DIR"] = str(first.state_dir)
    line = _refuses(second, first, str(first.state_dir), f"pid {first.pid}")
    print(line)


def test_second_daemon_on_the_same_api_port_refuses(daemons) -> None:
    first: DaemonRun = daemons().start()
    first.wait_ready()
    second = daemons(api_port=first.api_port)
    line = _refuses(second, first, f"API port {first.api_port} is in use")
    print(line)
    # and its own state dir holds no lock any more: a daemon on a free port starts there
    third = daemons()
    third.state_dir = second.state_dir
    third.env["LLM_SUPERVISOR_STATE_DIR"] = str(second.state_dir)
    third.start()
    assert third.wait_ready()["state"] == "ready"


def test_second_daemon_on_the_same_engine_port_refuses(daemons) -> None:
    first: DaemonRun = daemons().start()
    first.wait_ready()
    second = daemons(engine_port=first.engine_port)
    line = _refuses(second, first, f"vllm.port={first.engine_port}", "in use")
    print(line)
    poll(lambda: first.status()["state"] == "ready", 5, what="the first still ready")
