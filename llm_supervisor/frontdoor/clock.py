"""Time for the front door, behind a seam: the real monotonic clock, or a test's fake one.

Deadlines (hold timeouts, the drain grace) are timers on this clock, so a test can move time
forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, only ever increasing."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `monotonic()` reaches `when` (from the running event loop)."""
        ...


class MonotonicClock:
    """time.monotonic and the running loop's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), callback)
