"""What `/status` and `supervisor status` say between and after launches: no stale "ready" line
while restarting, the phase while ready, a log tail that is the engine's and not our probes, no
"engine up 0s" when nothing runs, and failure text in the history that keeps its numbers."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from rich.console import Console

from fakes import FakeVllm, Harness, harnesses
from llm_supervisor.api.client import format_status
from llm_supervisor.clock import iso
from llm_supervisor.runtime.commands import Command
from llm_supervisor.states import State


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (5, 5))


def render(status: dict[str, Any], width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    with console.capture() as cap:
        console.print(format_status(status))
    return cap.get()


def test_restarting_never_shows_the_last_ready_line_and_the_phase_says_ready(make) -> None:
    seen: list[tuple[str, str, str | None]] = []

    async def scenario() -> None:
        h = make()
        h.daemon.on_state = lambda state, why: seen.append((state.value, h.daemon.status()["message"],
                                                            h.daemon.status()["phase"]))
        h.start()
        ready = await h.ready()
        assert ready["phase"] == "ready" and ready["message"].startswith("ready: ")
        h.daemon.command("restart")
        await h.until(lambda: h.daemon.state is State.STARTING and h.daemon.attempt == 2, what="the relaunch")
        starting = h.daemon.status()
        assert not starting["message"].startswith("ready") and starting["phase"] in ("launching", "loading_weights")
        h.engine.die()  # attempt 2 dies before ready
        await h.until(lambda: h.daemon.state is State.BACKOFF, what="backoff")
        backoff = h.daemon.status()
        assert backoff["phase"] is None and not backoff["message"].startswith("ready")
        assert "backoff 5 s after" in backoff["message"]
        await h.ready(attempt=3)
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()

    asyncio.run(scenario())
    restarting = [m for state, m, _ in seen if state == "restarting"]
    assert restarting and not any(m.startswith("ready") for m in restarting), seen


def test_the_log_tail_is_the_engines_output_not_our_probes(make) -> None:
    async def scenario() -> dict[str, Any]:
        h = make()
        h.start()
        await h.ready()
        engine = h.engine
        for _ in range(40):  # what vLLM's access log prints for every probe and scrape
            engine._print('(APIServer pid=100) INFO:     127.0.0.1:50000 - "GET /health HTTP/1.1" 200 OK',
                          '(APIServer pid=100) INFO:     127.0.0.1:50000 - "GET /metrics HTTP/1.1" 200 OK')
        engine._print('(APIServer pid=100) INFO:     127.0.0.1:50001 - "POST /v1/chat/completions HTTP/1.1" 200 OK')
        status = h.daemon.status()
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()
        return status

    status = asyncio.run(scenario())
    tail = status["log_tail"]
    assert not any("GET /health" in line or "GET /metrics" in line for line in tail)
    assert any("Starting vLLM server" in line for line in tail) and "POST /v1/chat/completions" in tail[-1]


def test_failed_status_has_no_uptime_and_the_history_keeps_the_numbers(make) -> None:
    async def scenario() -> dict[str, Any]:
        h = make(FakeVllm(fault="oom_at_load"), sets=["recovery.max_attempts=2"], failed_linger_s=60)
        h.start()
        await h.until(lambda: h.daemon.state is State.FAILED, what="failed")
        status = h.daemon.status()
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()
        return status

    status = asyncio.run(scenario())
    text = render(status)
    engine = next(line for line in text.splitlines() if line.startswith("engine"))
    assert " up " not in engine and "0s" not in engine
    relaunch = next(h for h in status["history"] if h["event"] == "relaunch")
    assert relaunch["failure"]["brief"] == "CUDA out of memory allocating 304 MiB (120 MiB free of 23.99 GiB)"
    assert len(relaunch["failure"]["message"]) > 100  # vLLM's whole message is kept
    # the history column folds, it does not cut: the numbers are on the screen
    flat = " ".join(text.split())
    assert "cuda_oom: CUDA out of memory allocating 304 MiB (120 MiB free of 23.99 GiB)" in flat
    assert "gpu_memory_utilization 0.9→0.85" in flat


def test_history_from_before_the_brief_still_shows_its_numbers() -> None:
    message = ("ValueError: To serve at least one request with the model's max seq len (40960), (5.62 GiB KV cache "
               "is needed, which is larger than the available KV cache memory (1.61 GiB). Based on the available "
               "memory, the estimated maximum model length is 11744. Try increasing `gpu_memory_utilization`.")
    status = {"state": "ready", "history": [{"at": "2026-12-03T10:00:00+00:00", "event": "relaunch", "failure": {
        "kind": "kv_cache_too_small", "message": message,
        "values": {"needed_gib": 5.62, "available_gib": 1.61, "max_model_len": 40960, "estimated_max_model_len": 11744}},
        "change": {"max_model_len": [40960, 11744]}}]}
    flat = " ".join(render(status, width=300).split())
    assert "needed_gib 5.62, available_gib 1.61, max_model_len 40,960, estimated_max_model_len 11,744" in flat


def test_a_relaunch_row_does_not_repeat_the_exit_just_above() -> None:
    dead = {"kind": "engine_dead", "brief": "vLLM was killed by SIGKILL after it was ready (exit code 137)", "message": "m"}
    small = {"kind": "kv_cache_too_small", "brief": "5.62 GiB of KV cache needed, 0.49 GiB available", "message": "m"}
    # recent times: the table shows a time of today as one column word (older ones get a date too)
    start = time.time() - 180
    history = [
        {"at": iso(start), "event": "exit", "failure": dead},
        {"at": iso(start), "event": "relaunch", "failure": dead, "change": None},
        {"at": iso(start + 60), "event": "exit", "failure": small},
        {"at": iso(start + 60), "event": "relaunch", "failure": small, "change": {"max_model_len": [40960, 3520]}},
        {"at": iso(start + 120), "event": "relaunch", "failure": dead, "change": None},  # no exit row kept
    ]
    text = render({"state": "ready", "history": history}, width=300)
    rows = [" ".join(line.split()[1:]) for line in text.splitlines() if line.split()[1:2] in (["exit"], ["relaunch"])]
    assert rows[1] == "relaunch same arguments" and "SIGKILL" in rows[0]
    assert rows[3] == "relaunch max_model_len 40960→3520"
    assert text.count("5.62 GiB of KV cache needed") == 1
    assert "SIGKILL" in rows[4]  # a decision with no exit just above still says why
