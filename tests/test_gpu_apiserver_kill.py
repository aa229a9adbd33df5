"""Real vLLM 0.26.0 on an H200 with its API server `kill -9`ed while 16 clients streamed through the
front door (`scripts/gpu_validate.py --only 1,10,6`, tests/fixtures/vllm-0.26.0/h200-4b-apiserver-killed*).

The EngineCore it leaves behind logs a signal-triggered shutdown ("trigger received signal=SIGTERM")
as the guard ends it; the engine's own exit was a SIGKILL, and the failure says so. `supervisor logs
-n 5` of that attempt printed exactly the section's last five lines."""

from __future__ import annotations

import json
from pathlib import Path

from test_gpu_fixtures import runs

from llm_supervisor.host.logfiles import attempt_section, read_ranges, tail_ranges
from llm_supervisor.vllm.diagnosis import diagnose_lines
from llm_supervisor.vllm.failures import FailureKind

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
NAME = "h200-4b-apiserver-killed"
SUMMARY = json.loads((FIXTURES / f"{NAME}-summary.json").read_text())


def test_the_killed_api_server_is_worded_as_a_sigkill_not_a_shutdown() -> None:
    first, second = runs(NAME)
    assert first.facts.kv_cache_tokens == 91_552 and second.facts.kv_cache_tokens == 91_552
    assert "trigger received signal=SIGTERM" in first.text and first.classifier.shutdown_requested
    failure = first.classifier.classify(137, True)  # the guard's report: 128 + SIGKILL
    assert failure.kind is FailureKind.ENGINE_DEAD and failure.stage == "runtime"
    assert failure.message.startswith("vLLM was killed by SIGKILL after it was ready (exit code 137")
    status = json.loads((FIXTURES / f"{NAME}.status.json").read_text())
    exit_event = next(h for h in status["history"] if h["event"] == "exit")
    assert exit_event["failure"]["message"] == failure.message  # what the daemon recorded then


def test_logs_n_is_the_sections_last_lines() -> None:
    _, ranges = attempt_section(FIXTURES / f"{NAME}.log", 1)
    tail = b"".join(read_ranges(tail_ranges(ranges, 5))).decode()
    assert tail.splitlines() == [
        "(EngineCore pid=1810) INFO 12-04 06:01:11 [core.py:1326] [shutdown] EngineCore: exiting busy loop",
        "/usr/lib/python3.12/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There appear to be "
        "1 leaked semaphore objects to clean up at shutdown",
        "  warnings.warn('resource_tracker: There appear to be %d '",
        "===== engine killed by SIGKILL (perhaps out of memory?)",
        "",
    ]
    assert SUMMARY["scenarios"]["10"]["logs_n5_lines"] == 5


def test_no_client_saw_the_outage() -> None:
    for record in (SUMMARY["scenarios"]["10"], SUMMARY["first_run_10"]):
        clients = record["clients"]
        assert clients["by_outcome"] == {"ok": clients["requests"]} and clients["failed_not_started"] == 0
        assert record["old_tree_left_after_s"] is not None and record["ok"] is True


def _section(attempt: int) -> list[str]:
    _, ranges = attempt_section(FIXTURES / f"{NAME}.log", attempt)
    return b"".join(read_ranges(ranges)).decode().splitlines(keepends=True)


def test_diagnose_reads_the_daemons_closing_line_and_never_takes_it_for_vllms() -> None:
    # "===== engine killed by SIGKILL (perhaps out of memory?)" is the supervisor's: once it was
    # read as vLLM's and `diagnose` said cuda_oom
    got = diagnose_lines(_section(1), "attempt 1")
    assert got["outcome"] == "failed" and got["failure"]["kind"] == "engine_dead"
    assert got["failure"]["values"] == {"exit_code": 137} and "SIGKILL" in got["failure"]["message"]
    stopped = [line.replace("killed by SIGKILL (perhaps out of memory?)", "exited with code 0") for line in _section(1)
               if "[shutdown]" not in line]  # as after a stop the daemon asked for
    assert diagnose_lines(stopped, "stopped")["outcome"] == "ready"
    whole = diagnose_lines((FIXTURES / f"{NAME}.log").read_text().splitlines(keepends=True), "file")
    assert whole["outcome"] == "ready" and whole["facts"]["kv_cache_tokens"] == 91_552  # the last launch counts


# ------------------------------------------------------------ the same, then the guard killed

BOTH = "h200-4b-apiserver-then-guard-killed"
BOTH_SUMMARY = json.loads((FIXTURES / f"{BOTH}-summary.json").read_text())["scenarios"]


def test_a_lost_guard_diagnosed_from_the_engine_log() -> None:
    # the guard `kill -9`ed: the engine tree dies with it (PDEATHSIG) and vLLM prints nothing more;
    # only the daemon's closing line says what happened
    _, ranges = attempt_section(FIXTURES / f"{BOTH}.log", 2)
    section = b"".join(read_ranges(ranges)).decode().splitlines(keepends=True)
    assert section[-2].startswith("===== engine lost its guard (pid 1255, killed by SIGKILL)")
    got = diagnose_lines(section, "attempt 2")
    assert got["outcome"] == "failed" and got["failure"]["kind"] == "engine_dead"
    assert got["failure"]["values"] == {"guard_lost": 1}
    assert got["failure"]["message"].startswith("the engine lost its guard (pid 1255, killed by SIGKILL)")
    first = diagnose_lines(b"".join(read_ranges(attempt_section(FIXTURES / f"{BOTH}.log", 1)[1])).decode()
                           .splitlines(keepends=True), "attempt 1")
    assert first["failure"]["values"] == {"exit_code": 137}


def test_clients_across_both_kills() -> None:
    api, guard = BOTH_SUMMARY["10"], BOTH_SUMMARY["11"]
    assert api["failure_message"].startswith("vLLM was killed by SIGKILL after it was ready")
    assert guard["failure_message"].startswith("the engine lost its guard")
    for record in (api, guard):
        assert record["ok"] and record["clients"]["failed_not_started"] == 0
        assert set(record["clients"]["by_outcome"]) <= {"ok", "error_event"}  # never refused, never cut bare
    # streams under way when the guard died ended with an error event in the stream
    assert guard["clients"]["by_outcome"].get("error_event") == 16
