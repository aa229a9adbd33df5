"""What `supervisor up` shows a person: the live line advancing through vLLM's phases with what is
known so far, one readable line per recovery decision, the ready summary, a last line when the
daemon gives up. In-process with the fakes (tests/fakes.py), and once in a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from rich.console import Console

from fakes import FakeVllm, Harness, harnesses
from llm_supervisor.runtime.commands import Command
from llm_supervisor.runtime.events import Decided, Exiting, GaveUp, Launched, Progress, Ready
from llm_supervisor.runtime.progress import TerminalProgress

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (1, 2))


class Screen:
    """A TerminalProgress on a string console, and every live line it drew after each event."""

    def __init__(self, h: Harness) -> None:
        self.buffer = io.StringIO()
        console = Console(file=self.buffer, force_terminal=True, color_system=None, width=400)
        self.view = TerminalProgress(console, now=h.clock.monotonic, clock=h.clock.time, live=False)
        self.events: list[Any] = []
        self.live: list[str] = []
        self.serving = ""
        self._console = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=400)
        h.daemon.observers.append(self.observe)
        self.h = h

    def observe(self, event: Any) -> None:
        self.view(event)
        self.events.append(event)
        self.live.append(self.draw())

    def draw(self) -> str:
        with self._console.capture() as cap:
            self._console.print(self.view.render())
        return cap.get().strip()

    def lines(self) -> list[str]:
        return [ln for ln in self.buffer.getvalue().splitlines() if ln.strip()]


def test_the_live_line_follows_the_phases_and_the_ready_summary_shows(make) -> None:
    async def scenario() -> Screen:
        h = make()
        screen = Screen(h)
        h.start()
        await h.ready()
        await h.until(lambda: h.clock.monotonic() > 90, what="a minute and a half of serving")
        screen.serving = screen.draw()
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        return screen

    screen = asyncio.run(scenario())
    phases = [e.text for e in screen.events if isinstance(e, Progress)]
    # the phases the fake vLLM's lines announce (the simulator in tmux below prints them all)
    order = ["loading weights", "compiling (torch.compile)", "allocating KV cache", "starting the API server"]
    seen = [p for p in dict.fromkeys(phases) if p in order]
    assert seen == order  # the phases advance, in vLLM's order
    starting = [ln for ln in screen.live if ln.startswith(("⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"))
                or "attempt 1 ·" in ln and "ready" not in ln]
    assert any("attempt 1 · loading weights" in ln for ln in starting), starting
    graphs = next(ln for ln in screen.live if "starting the API server" in ln)
    # what is known so far: the weights, then the KV cache and the concurrency
    assert re.search(r"weights 7\.56 GiB · KV [\d,]+ tokens · \d+\.\d\dx at 40,960", graphs), graphs
    elapsed = [int(m.group(1)) for ln in starting if (m := re.search(r" · (\d+)s", ln))]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 1  # the time since launch moves on
    tokens = screen.h.daemon.parser.facts.kv_cache_tokens
    lines = screen.lines()
    ready = [ln for ln in lines if "✓ ready:" in ln]
    assert len(ready) == 1 and f"{tokens:,} KV tokens" in ready[0] and "(SIMULATED)" in ready[0]
    assert re.match(r"^\d\d:\d\d:\d\d ✓ ready", ready[0])
    assert screen.serving.startswith("● ready · attempt 1 · up 1m") and f"KV {tokens:,} tokens" in screen.serving
    assert lines[-1].endswith("daemon exiting with code 0")


def test_a_relaunch_is_one_readable_decision_line(make) -> None:
    async def scenario() -> Screen:
        h = make(sets=["vllm.gpu_memory_utilization=0.4", "recovery.min_gpu_memory_utilization=0.3",
                       "recovery.plan_first_launch=false"])
        screen = Screen(h)
        h.start()
        await h.ready(attempt=2)
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()
        return screen

    screen = asyncio.run(scenario())
    estimate = screen.h.relaunches()[0]["change"]["max_model_len"][1]
    decided = [ln for ln in screen.lines() if "failed:" in ln]
    assert len(decided) == 1
    line = decided[0]
    assert line.count("\n") == 0 and len(line) < 220, line
    assert "attempt 1 failed: kv_cache_too_small: one 40,960-token request needs 5.62 GiB of KV cache, " in line
    assert f"→ max_model_len 40,960 → {estimate:,}" in line
    # the policy's whole reasoning stays in the history (and the state file), not on the terminal
    reason = screen.h.relaunches()[0]["reason"]
    assert len(reason) > len(line) - 40 and reason not in screen.buffer.getvalue()
    assert screen.h.relaunches()[0]["summary"] in line
    # then the new progress: a second launch, its phases, ready
    launched = [e.attempt for e in screen.events if isinstance(e, Launched)]
    assert launched == [1, 2]
    after = screen.events[[i for i, e in enumerate(screen.events) if isinstance(e, Decided)][0]:]
    assert any(isinstance(e, Progress) and e.attempt == 2 for e in after)
    assert isinstance(next(e for e in after if isinstance(e, Ready)), Ready)


def test_giving_up_says_why_counts_down_and_ends_with_a_last_line(make) -> None:
    async def scenario() -> Screen:
        h = make(FakeVllm(fault="oom_at_load"), sets=["recovery.max_attempts=2"], failed_linger_s=20)
        screen = Screen(h)
        h.start()
        await h.until(lambda: h.daemon.state.value == "failed", what="failed")
        await h.until(lambda: h.clock.monotonic() > screen.events[-1].at + 5, what="5 s of failed")
        screen.serving = screen.draw()
        assert await h.exit_code() == 3
        return screen

    screen = asyncio.run(scenario())
    gave_up = next(e for e in screen.events if isinstance(e, GaveUp))
    assert gave_up.linger_s == 20 and gave_up.line.startswith("cuda_oom: CUDA out of memory allocating")
    assert "recovery.max_attempts" in gave_up.line and "giving up: giving up" not in screen.buffer.getvalue()
    assert re.search(r"✗ failed · exiting in 1[45]s", screen.serving), screen.serving
    last = screen.lines()[-1]
    assert isinstance(screen.events[-1], Exiting) and screen.events[-1].code == 3
    assert "daemon exiting with code 3, gave up: cuda_oom" in last


def test_log_records_on_the_terminal_skip_what_the_events_draw() -> None:
    buffer = io.StringIO()
    view = TerminalProgress(Console(file=buffer, force_terminal=True, color_system="standard", width=200), live=False)
    logger = logging.getLogger("llm_supervisor.test_progress")
    logger.propagate = False
    logger.handlers[:] = [view.handler()]
    logger.setLevel(logging.INFO)
    logger.warning("plan: only 2 cores")
    logger.error("state starting -> failed", extra={"event": True})
    logger.info("REST API on http://127.0.0.1:8900")
    text = buffer.getvalue()
    assert "plan: only 2 cores" in text and "\x1b[33m" in text  # yellow
    assert "REST API" in text and "state starting" not in text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (Debian package tmux; .ci/run installs it)")
def test_up_in_a_real_terminal_shows_the_phases_advance_and_the_ready_summary(tmp_path: Path) -> None:
    session = f"llmsup-{os.getpid()}"
    env = {"PYTHONPATH": str(ROOT), "LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state"),
           "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"), "LLM_SUPERVISOR_API_PORT": "0",
           "LLM_SUPERVISOR_SIM_STARTUP_S": "6", "HOME": str(tmp_path)}
    port = _free_port()
    command = " ".join(f"{k}={v}" for k, v in env.items()) + (
        f" {sys.executable} -m llm_supervisor up --profile 4090d-qwen3-4b --simulate --set vllm.port={port}"
        f"; echo EXIT=$?; sleep 60")
    subprocess.run(["tmux", "-L", session, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", command],
                   check=True, cwd=ROOT)
    try:
        screens: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "-L", session, "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True).stdout
            screens.append(screen)
            # the live line's "●" depends on the terminal's locale; its words do not
            if "✓ ready:" in screen and "ready · attempt 1 · up" in screen:
                break
            time.sleep(0.1)
        final = screens[-1]
        assert "✓ ready:" in final, final
        live = [ln.strip() for s in screens for ln in s.splitlines() if "attempt 1 ·" in ln]
        phases = list(dict.fromkeys(m.group(1) for ln in live if (m := re.search(r"attempt 1 · ([a-zA-Z ()._]+?) · \d", ln))))
        assert len(phases) >= 3 and "loading weights" in phases and phases.index("loading weights") < len(phases) - 1, phases
        ready_line = next(ln for ln in final.splitlines() if "✓ ready:" in ln)
        assert re.search(r"ready: [\d,]+ KV tokens, \d+\.\d\dx concurrency at 40,960 tokens \(SIMULATED\)", ready_line)
        assert "engine output:" in final and "4090d-qwen3-4b.log" in final
        subprocess.run(["tmux", "-L", session, "send-keys", "-t", session, "C-c"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "-L", session, "capture-pane", "-p", "-t", session],
                                    capture_output=True, text=True).stdout
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
        assert "EXIT=0" in screen, screen
        assert "daemon exiting with code 0" in screen
    finally:
        subprocess.run(["tmux", "-L", session, "kill-server"], capture_output=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
