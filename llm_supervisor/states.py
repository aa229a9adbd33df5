"""Daemon states and the transitions allowed between them. Stdlib only: a leaf module."""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    STARTING = "starting"      # engine launched, waiting for /health and a first token
    READY = "ready"            # engine answered a real request
    DEGRADED = "degraded"      # engine up but unhealthy (hang, /health failing)
    RESTARTING = "restarting"  # stopping the engine to relaunch it (admin or recovery)
    BACKOFF = "backoff"        # waiting before the next launch
    STOPPING = "stopping"      # staged stop of the engine tree in progress
    STOPPED = "stopped"        # no engine; daemon about to exit or idle after `stop`
    FAILED = "failed"          # gave up: a reason a relaunch cannot fix, or attempts spent

    def __str__(self) -> str:
        return self.value


ALLOWED: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.READY, State.BACKOFF, State.RESTARTING, State.STOPPING, State.FAILED}),
    State.READY: frozenset({State.DEGRADED, State.BACKOFF, State.RESTARTING, State.STOPPING, State.FAILED}),
    State.DEGRADED: frozenset({State.READY, State.BACKOFF, State.RESTARTING, State.STOPPING, State.FAILED}),
    State.RESTARTING: frozenset({State.STARTING, State.BACKOFF, State.STOPPING, State.FAILED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset({State.STARTING}),
    State.FAILED: frozenset({State.STARTING, State.STOPPING, State.STOPPED}),
}

# States in which an engine process tree may exist.
ENGINE_STATES = frozenset({State.STARTING, State.READY, State.DEGRADED, State.RESTARTING, State.STOPPING})


class IllegalTransition(RuntimeError):
    def __init__(self, current: State, wanted: State) -> None:
        allowed = ", ".join(sorted(s.value for s in ALLOWED[current])) or "nothing"
        super().__init__(f"cannot go from {current.value} to {wanted.value} (allowed: {allowed})")
        self.current = current
        self.wanted = wanted


def check_transition(current: State, wanted: State) -> None:
    """Raise IllegalTransition unless `current -> wanted` is an allowed edge."""
    if wanted not in ALLOWED[current]:
        raise IllegalTransition(current, wanted)
