"""What the daemon tells its observers as an engine starts, fails, recovers and serves.

The daemon knows nothing of terminals: it calls each observer with these events (runtime/
progress.py draws them as a live line on a terminal). An observer that raises is logged and
dropped, never allowed to stop the loop. Each event carries `at`, the daemon's monotonic clock.

Log records that an event also carries are tagged `extra=SHOWN` (the record has `event`), so a
view that draws the events can leave those records out instead of printing the same thing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

SHOWN = {"event": True}


@dataclass(frozen=True)
class Launched:
    attempt: int
    at: float
    command: str         # the engine's arguments, secrets redacted
    log_path: str        # where its output goes


@dataclass(frozen=True)
class Progress:
    """A phase began or a startup fact became known."""

    attempt: int
    at: float
    phase: str | None    # vLLM's startup phase (loading_weights, compiling, …)
    text: str            # the phase in words
    facts: dict[str, Any] = field(default_factory=dict)  # weights_gib, kv_cache_tokens, max_concurrency, context


@dataclass(frozen=True)
class Decided:
    """An attempt failed and the policy chose the next launch."""

    attempt: int
    at: float
    line: str            # failure → change, with the numbers
    delay_s: float


@dataclass(frozen=True)
class Ready:
    attempt: int
    at: float
    summary: str         # "ready: 99,088 KV tokens, 2.42x concurrency at 40,960 tokens"
    seconds: float       # from launch to ready


@dataclass(frozen=True)
class GaveUp:
    attempt: int
    at: float
    line: str            # why, in one line
    linger_s: float      # how long `failed` stays before the daemon exits


@dataclass(frozen=True)
class StateChanged:
    at: float
    state: str
    why: str


@dataclass(frozen=True)
class Exiting:
    at: float
    code: int
    line: str


DaemonEvent = Union[Launched, Progress, Decided, Ready, GaveUp, StateChanged, Exiting]
Observer = Callable[[DaemonEvent], None]
