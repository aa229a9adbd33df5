"""Real vLLM 0.26.0 on an H200: an engine death ended on vLLM's own report, not on its API server's
exit (`scripts/gpu_validate.py --only 1,5,9`: the EngineCore `kill -9`ed under 16 streaming clients;
`scripts/gpu_multi.py --only mp1` and `--only ray1`: the one worker process of Qwen3-8B, or its Ray
actor, `kill -9`ed, no load; `mp1` again on vLLM 0.34.0).

vLLM's API server outlives its dead engine until a watchdog ends it (4 s in the earlier real logs,
tests/fixtures/vllm-0.26.0/h200-8b-mp1-worker-killed.log). Here the daemon ended the tree in the
same second as vLLM's ERROR line, and the engine log's closing line says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_gpu_fixtures import runs

from llm_supervisor.vllm.failures import FailureClassifier, FailureKind
from llm_supervisor.vllm.framing import read_frame

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
FIXTURES_0_34 = FIXTURES.parent / "vllm-0.34.0-h200"
CASES = {
    (FIXTURES, "h200-4b-enginecore-killed-ended-on-report"): "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered",
    (FIXTURES, "h200-8b-mp1-worker-killed-ended-on-report"): "Worker proc VllmWorker-0 died unexpectedly (exit code: None)",
    (FIXTURES, "h200-8b-ray1-actor-killed-ended-on-report"): "RayWorkerProc rank=[0] died unexpectedly, shutting down executor.",
    (FIXTURES_0_34, "h200-8b-mp1-worker-killed-ended-on-report"): "Worker proc VllmWorker-0 died unexpectedly (exit code: None)",
}
CLOCK = re.compile(r"\d\d:\d\d:\d\d")


# Where vLLM reported the death: here, and in the earlier real logs, where the daemon still waited
# for the API server's exit (0.26 with a worker process, 0.34 with its EngineCore killed).
REPORTED = [*CASES] + [
    (FIXTURES, "h200-8b-mp1-worker-killed"),
    (FIXTURES, "h200-8b-ray1-actor-killed"),
    (FIXTURES.parent / "vllm-0.34.0-h200", "ready-enginecore-killed-daemon-killed"),
]


@pytest.mark.parametrize("folder, name", REPORTED)
def test_the_report_comes_before_the_api_servers_shutdown(folder: Path, name: str) -> None:
    classifier = FailureClassifier()
    reported_at = shutdown_at = None
    for i, line in enumerate(runs(name, folder)[0].text.splitlines()):
        classifier.feed(line)
        if classifier.engine_death_reported and reported_at is None:
            reported_at = i
        if "Shutting down" in line and shutdown_at is None:
            shutdown_at = i
    assert reported_at is not None and shutdown_at is not None and reported_at < shutdown_at


@pytest.mark.parametrize("folder, name", CASES)
def test_the_failure_names_the_cause(folder: Path, name: str) -> None:
    failure = runs(name, folder)[0].failure()
    assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD and failure.stage == "runtime"
    assert failure.message.startswith(CASES[folder, name])


@pytest.mark.parametrize("folder, name", CASES)
def test_the_daemon_acted_in_the_second_vllm_reported_the_death(folder: Path, name: str) -> None:
    engine_log = (folder / f"{name}.log").read_text()
    daemon = (folder / f"{name}.daemon.log").read_text().splitlines()
    death_line = next(line for line in engine_log.splitlines()
                      if " ERROR " in line and ("EngineDeadError" in line or "died unexpectedly" in line))
    report = next(i for i, line in enumerate(daemon) if "vLLM reports its engine dead" in line)
    down = next(i for i, line in enumerate(daemon) if "front door: ready -> down" in line)
    exited = next(i for i, line in enumerate(daemon) if "attempt 1: engine exited" in line)
    assert report < down < exited  # clients are held before the old tree has even ended
    assert CLOCK.search(daemon[report]).group() == CLOCK.search(death_line).group()
    assert "(ended by the supervisor after vLLM reported its engine dead) (engine_dead)" in daemon[exited]
    assert any(line.startswith("2026-12-04") and "ready: " in line and "(attempt 2," in line for line in daemon)


@pytest.mark.parametrize("folder, name", CASES)
def test_the_closing_line_reads_as_the_api_servers_exit_status(folder: Path, name: str) -> None:
    closing = next(line for line in (folder / f"{name}.log").read_text().splitlines()
                   if line.startswith("===== engine "))
    frame = read_frame(closing)
    assert frame is not None and frame.kind == "exit" and frame.exit_code == 0 and not frame.guard_lost
    assert frame.description == "exited with code 0 (ended by the supervisor after vLLM reported its engine dead)"
