"""An engine whose output misbehaves, through the real daemon (tests/fake_engine.py stands in for
vLLM): it closes stdout and stderr but keeps running; it prints a line of megabytes; it floods
a million lines. The daemon keeps working, its memory and its /status stay small, and it still
notices the engine's exit."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil

import pytest

from hardening_utils import FakeEngineRun, alive, poll

RSS_BOUND_MB = 100  # CONTRACT: <= 80 MB in steady state; a little room for a burst being parsed


def _fake(tmp_path: Path, mode: str, **env: str) -> FakeEngineRun:
    return FakeEngineRun(tmp_path / mode, mode, env={"FAKE_ENGINE_PIDFILE": str(tmp_path / f"{mode}.pids"), **env})


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def test_engine_that_closes_stdout_is_still_watched(tmp_path: Path) -> None:
    with _fake(tmp_path, "close_stdout") as run:
        run.start()
        first = run.wait_ready()
        assert any("closing stdout and stderr" in line for line in first["log_tail"])
        # output is gone for good; the engine is alive and the daemon still calls it ready
        later = first["daemon_uptime_s"] + 1.0
        snap = run.wait_status(lambda s: s["daemon_uptime_s"] >= later, 30, "a second more of uptime")
        assert snap["state"] == "ready" and alive([first["pid"]]) == [first["pid"]]
        # its death is still noticed, through the guard (benchmarks/detection.py times it)
        psutil.Process(first["pid"]).kill()
        run.wait_status(lambda s: s["state"] != "ready", 30, "the exit noticed")
        second = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, what="relaunched")
        assert second["pid"] != first["pid"] and second["restarts"] == 1
        assert [h for h in second["history"] if h["event"] == "exit"][-1]["failure"]["kind"] == "engine_dead"
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0
        assert run.tree() == []


def test_a_line_of_megabytes_is_cut_and_the_daemon_goes_on(tmp_path: Path) -> None:
    with _fake(tmp_path, "big_line", FAKE_ENGINE_BIG_MB="5") as run:
        run.start()
        snap = run.wait_ready()
        # the lines after the 5 MB one were read and parsed: the daemon is not stuck in it
        tail = snap["log_tail"]
        assert any("vLLM API server version 0.0.0-fake" in line for line in tail), tail[-3:]
        assert any(line.startswith("x" * 100) and line.endswith(" […]") for line in tail)
        # /status stays small although the tail holds pieces of the giant line
        r = run.get("/status")
        assert r.status_code == 200 and len(r.content) < 100_000, len(r.content)
        assert max(len(line) for line in r.json()["log_tail"]) <= 2100
        # the raw log keeps every byte
        log = run.state_dir / "logs" / f"{run.profile}.log"
        assert log.stat().st_size >= 5 * (1 << 20)
        assert _rss_mb(run.pid) < RSS_BOUND_MB, _rss_mb(run.pid)
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0


@pytest.mark.slow  # a million lines through a real daemon: minutes on a loaded 2-core machine
def test_a_flood_of_output_leaves_the_api_responsive(tmp_path: Path) -> None:
    max_bytes, backups = 5 * 1024 * 1024, 2
    with _fake(tmp_path, "flood", FAKE_ENGINE_LINES="1e6", LLM_SUPERVISOR_LOG_MAX_BYTES=str(max_bytes),
               LLM_SUPERVISOR_LOG_BACKUPS=str(backups)) as run:
        run.start()
        run.wait_ready()
        answered = 0
        rss: list[float] = []
        deadline = time.monotonic() + 600
        done = False
        while time.monotonic() < deadline and not done:
            r = run.get("/status")
            answered += 1
            assert r.status_code == 200
            snap = r.json()
            assert snap["state"] == "ready", snap["state"]
            done = any("flood done" in line for line in snap["log_tail"])
            rss.append(_rss_mb(run.pid))
            time.sleep(0.02)
        assert done, "the flood never ended"
        # the API answered all along (its latency under a flood: benchmarks/overhead.py)
        assert answered >= 5
        assert max(rss) < RSS_BOUND_MB, max(rss)
        # the log rotated and its size on disk stayed bounded
        logs = sorted((run.state_dir / "logs").glob(f"{run.profile}.log*"))
        assert len(logs) == backups + 1, logs
        assert sum(p.stat().st_size for p in logs) <= (backups + 1) * (max_bytes + 300_000)
        # and the engine is still the same one, still watched
        assert run.status()["attempt"] == 1
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0
        poll(lambda: run.tree() == [], 10, what="nothing left")
