"""What a person at a terminal sees of `supervisor up`: one live status line (the phase, the time
since launch, what is known so far), a line per launch, one readable line per recovery decision,
the ready summary, and the daemon's warnings and errors in colour.

It is an observer of the daemon's events (runtime/events.py) plus a logging handler; the daemon
does not know it exists. On anything that is not a terminal (systemd, Docker, a pipe) the CLI
does not use it: the daemon's own log lines, one per phase, say the same with timestamps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from llm_supervisor.runtime.events import (DaemonEvent, Decided, Exiting, GaveUp, Launched, Progress, Ready,
                                           StateChanged)

LEVEL_STYLE = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}


def _elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def facts_text(facts: dict[str, Any]) -> str:
    """'weights 7.56 GiB · KV 99,088 tokens · 2.42x at 40,960' (what is known so far)."""
    parts = []
    if facts.get("weights_gib") is not None:
        parts.append(f"weights {facts['weights_gib']:.2f} GiB")
    if facts.get("kv_cache_tokens"):
        parts.append(f"KV {facts['kv_cache_tokens']:,} tokens")
    elif facts.get("available_kv_cache_gib") is not None:
        parts.append(f"KV {facts['available_kv_cache_gib']:.2f} GiB")
    if facts.get("max_concurrency"):
        at = f" at {facts['context']:,}" if facts.get("context") else ""
        parts.append(f"{facts['max_concurrency']:.2f}x{at}")
    return " · ".join(parts)


class TerminalProgress:
    """Draws the daemon's events on a rich console. Use as a context manager around the daemon's
    run (it starts and stops the live line), register `__call__` as the daemon's observer and
    `handler()` as the logging handler."""

    def __init__(self, console: Console, *, now: Callable[[], float] = time.monotonic,
                 clock: Callable[[], float] = time.time, live: bool = True) -> None:
        self.console = console
        self.now = now                # the daemon's monotonic clock (events carry its readings)
        self.clock = clock            # wall time, for the line prefixes
        self.state = "starting"
        self.attempt = 0
        self.phase_text = "planning"
        self.facts: dict[str, Any] = {}
        self.since = now()            # when the current state or attempt began
        self.ready_summary = ""
        self.until: float | None = None  # backoff or linger deadline
        self._spinner = Spinner("dots", style="cyan")
        self._live = Live(get_renderable=self.render, console=console, refresh_per_second=4, transient=True,
                          redirect_stdout=False, redirect_stderr=False) if live else None

    # ------------------------------------------------------------ lines above the live one
    def line(self, text: str | Text, style: str = "") -> None:
        stamp = Text(time.strftime("%H:%M:%S ", time.localtime(self.clock())), style="dim")
        body = text if isinstance(text, Text) else Text(text, style=style)
        self.console.print(Text.assemble(stamp, body), soft_wrap=True, highlight=False)

    def handler(self) -> logging.Handler:
        """The daemon's log records on the console: warnings in yellow, errors in red, the rest dim;
        records that an event also carries (tagged `event`) are drawn from the event instead."""
        view = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if getattr(record, "event", False):
                    return
                try:
                    message = record.getMessage()
                except Exception:  # noqa: BLE001 - a bad format string must not end the daemon
                    message = str(record.msg)
                view.line(message, LEVEL_STYLE.get(record.levelno, "dim"))

        return _Handler()

    # ------------------------------------------------------------ events
    def __call__(self, event: DaemonEvent) -> None:
        if isinstance(event, Launched):
            self.attempt, self.since, self.facts, self.phase_text = event.attempt, event.at, {}, "launching"
            self.line(f"attempt {event.attempt}: {event.command}", "dim")
        elif isinstance(event, Progress):
            self.phase_text, self.facts = event.text, dict(event.facts)
        elif isinstance(event, Decided):
            self.line(Text.assemble(("↻ ", "bold yellow"), (f"attempt {event.attempt} failed: ", "yellow"),
                                    (event.line, "")))
            self.until = event.at + event.delay_s if event.delay_s > 0 else None
        elif isinstance(event, Ready):
            self.ready_summary = event.summary
            self.line(Text.assemble(("✓ ", "bold green"), (event.summary, "bold"),
                                    (f" (attempt {event.attempt}, {event.seconds:.1f} s after launch)", "dim")))
        elif isinstance(event, GaveUp):
            self.line(Text.assemble(("✗ ", "bold red"), ("giving up: ", "bold red"), (event.line, "red")))
            self.until = event.at + event.linger_s if event.linger_s > 0 else None
        elif isinstance(event, StateChanged):
            self.state, self.since = event.state, event.at
            if event.state not in ("backoff", "failed"):
                self.until = None
        elif isinstance(event, Exiting):
            self.line(event.line, "bold red" if event.code else "dim")

    # ------------------------------------------------------------ the live line
    def render(self) -> Table:
        now = self.now()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        state = self.state
        facts = facts_text(self.facts)
        if state == "starting":
            text = Text.assemble((f"attempt {self.attempt} · " if self.attempt else "", "bold cyan"),
                                 (self.phase_text, "bold"), " · ", (_elapsed(now - self.since), "cyan"))
            if facts:
                text.append(f" · {facts}")
            grid.add_row(self._spinner, text)
        elif state in ("ready", "degraded"):
            style = "bold green" if state == "ready" else "bold yellow"
            text = Text.assemble((state, style), " · ", (f"attempt {self.attempt}", ""), " · up ",
                                 (_elapsed(now - self.since), ""))
            if facts:
                text.append(f" · {facts}")
            grid.add_row(Text("●", style=style), text)
        elif state in ("backoff", "failed") and self.until is not None:
            left = _elapsed(self.until - now)
            what = f"relaunch in {left}" if state == "backoff" else f"exiting in {left} (`supervisor restart` tries again)"
            grid.add_row(Text("◌" if state == "backoff" else "✗", style="bold yellow" if state == "backoff" else "bold red"),
                         Text.assemble((state, "bold"), " · ", what))
        else:
            grid.add_row(self._spinner, Text(state, style="bold"))
        return grid

    def __enter__(self) -> "TerminalProgress":
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
