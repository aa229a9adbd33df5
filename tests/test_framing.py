"""The supervisor's own lines in the engine log: written and read in one place, never taken for
vLLM's output."""

from __future__ import annotations

import pytest

from llm_supervisor.vllm import framing
from llm_supervisor.vllm.failures import FailureClassifier
from llm_supervisor.vllm.logparse import LogParser


@pytest.mark.parametrize(("line", "kind", "attempt", "code"), [
    (framing.attempt_line(3, "2026-12-04T06:01:12.925+00:00", "vllm serve m --max-model-len 4096").strip(), "attempt", 3, None),
    (framing.exit_line("exited with code 1").strip(), "exit", None, 1),
    (framing.exit_line("exited with code 0").strip(), "exit", None, 0),
    (framing.exit_line("killed by SIGKILL (perhaps out of memory?)").strip(), "exit", None, 137),
    (framing.exit_line("killed by SIGTERM").strip(), "exit", None, 143),
    (framing.exit_line("lost its guard (pid 7, killed by SIGKILL) without an exit report; no engine process was left").strip(),
     "exit", None, None),
    (framing.exit_line("ignored SIGTERM for 15 s (LLM_SUPERVISOR_STOP_TIMEOUT_S) and was killed").strip(), "exit", None, None),
    (framing.daemon_start_line(12, "2026-12-04T06:00:00").strip(), "other", None, None),
    (framing.behind_line().strip(), "other", None, None),
])
def test_each_frame_is_read_back(line: str, kind: str, attempt: int | None, code: int | None) -> None:
    frame = framing.read_frame(line)
    assert frame is not None and (frame.kind, frame.attempt, frame.exit_code) == (kind, attempt, code)


@pytest.mark.parametrize("line", ["===== Profiling results =====", "INFO 12-04 06:00:00 [core.py:1] ===== engine up",
                                  "(EngineCore pid=3) ===== engine killed by SIGKILL (perhaps out of memory?)"])
def test_lines_of_the_engine_are_not_frames(line: str) -> None:
    from llm_supervisor.vllm.logparse import split_line

    assert not framing.is_frame(*split_line(line))


def test_the_parser_and_the_classifier_skip_frames() -> None:
    classifier = FailureClassifier()
    parser = LogParser(sink=classifier)
    parser.feed(framing.attempt_line(1, "t", "vllm serve m --max-num-seqs 1").lstrip("\n"))
    parser.feed(framing.exit_line("killed by SIGKILL (perhaps out of memory?)"))
    assert not parser.facts.processes
    assert classifier.failure is None and classifier.classify(None, False) is None


def test_a_lost_guard_is_named_by_its_closing_line() -> None:
    lost = framing.read_frame(framing.exit_line("lost its guard (pid 7, killed by SIGKILL) without an exit report; "
                                                "ended the 2 engine process(es) it left").strip())
    killed = framing.read_frame(framing.exit_line("killed by SIGKILL (perhaps out of memory?)").strip())
    assert lost is not None and lost.guard_lost and lost.exit_code is None
    assert killed is not None and not killed.guard_lost


def test_every_signal_the_launcher_can_name_is_read_back() -> None:
    """A crash by SIGBUS or SIGILL (a driver fault, a bad kernel) keeps its exit status 128 + N."""
    import signal

    from llm_supervisor.runtime.launcher import ExitInfo

    for sig in (s for s in signal.Signals if s.value < 32):
        description = ExitInfo(code=-sig.value, signal=sig.value).description
        frame = framing.read_frame(framing.exit_line(description).strip())
        assert frame is not None and frame.exit_code == 128 + sig.value, (sig.name, description)
