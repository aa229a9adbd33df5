"""The REST API under load while the engine restarts: HARDENING_LOAD_RPS (default 500) requests
per second for HARDENING_LOAD_S seconds (default 20 for CI; the reliability runs use 60), open
loop (tests/hardening_load.py), 90% GET /status and the rest /metrics, /readyz, /healthz, with a
POST /restart every fifth of the run. No errors, every request answered, every restart carried
out, and the daemon's RSS flat. (The latency figure, /status p99 at 200 requests/s, is measured by
benchmarks/status_latency.py, not asserted here.)"""

from __future__ import annotations

import pytest

import json
import os
import signal

import psutil

from daemon_harness import DaemonRun
from hardening_load import run_load

RPS = float(os.environ.get("HARDENING_LOAD_RPS", "500"))
SECONDS = float(os.environ.get("HARDENING_LOAD_S", "20"))
RSS_GROWTH_MB = float(os.environ.get("HARDENING_LOAD_RSS_MB", "5"))
TOKEN = "tok-load-test-0123456789"


@pytest.mark.slow
def test_rest_api_under_load_while_the_engine_restarts(daemons) -> None:
    run: DaemonRun = daemons(startup_s=1.0, env={"LLM_SUPERVISOR_API_TOKEN": TOKEN}).start()
    run.wait_ready()
    daemon = psutil.Process(run.pid)
    # a short warm-up, so one-time allocations (first requests, imports on first use) are not
    # counted as growth
    run_load(run.url, rps=RPS, seconds=2, token=TOKEN)
    before = daemon.memory_info().rss / 1e6
    cpu_before = sum(daemon.cpu_times()[:2])

    result = run_load(run.url, rps=RPS, seconds=SECONDS, token=TOKEN, restart_every=SECONDS / 5,
                      sample=lambda: daemon.memory_info().rss / 1e6)

    after = daemon.memory_info().rss / 1e6
    cpu = sum(daemon.cpu_times()[:2]) - cpu_before
    summary = result.summary()
    summary.update(rss_before_mb=round(before, 1), rss_after_mb=round(after, 1), daemon_cpu_s=round(cpu, 1),
                   rss_samples_mb=[round(v, 1) for _, v in result.samples])
    print(json.dumps(summary, indent=1))

    assert result.errors == [], result.errors[:10]
    assert result.sent >= RPS * SECONDS * 0.99
    answered = sum(len(v) for v in result.latencies.values())
    assert answered == result.sent
    assert result.restarts and all(code == 202 for code in result.restarts)
    status = run.wait_status(lambda s: s["state"] == "ready" and s["restarts"] == len(result.restarts),
                             what="every restart carried out")
    assert status["restarts_by_reason"] == {"admin": len(result.restarts)}
    # while restarting, /readyz said so: 503 some of the time, never an error
    assert set(result.statuses["/readyz"]) <= {200, 503} and set(result.statuses["/status"]) == {200}
    assert after - before <= RSS_GROWTH_MB, f"RSS grew {after - before:.1f} MB ({before:.1f} → {after:.1f})"

    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
