"""Time as the daemon, the front door and the bench see it: a seam, so behaviour over minutes is
tested in milliseconds. A leaf (stdlib only).

`SystemClock` is the real one. Tests pass a virtual clock (tests/fakes.py, whose `sleep` returns
when virtual time has advanced that far; tests/frontdoor_fakes.py, whose timers fire when the test
moves time); nothing in the runtime, the front door or the bench reads `time` or sleeps directly.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Awaitable, Protocol, TypeVar

T = TypeVar("T")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, only ever increasing."""
        ...

    def time(self) -> float:
        """Wall time, epoch seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `monotonic()` reaches `when` (from the running event loop)."""
        ...


class SystemClock:
    """The machine's clocks, asyncio's sleep and the running loop's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(0.0, when - time.monotonic()), callback)


async def first_of(clock: Clock, awaitable: Awaitable[T], seconds: float) -> tuple[bool, T | None]:
    """Wait for `awaitable` at most `seconds` on `clock`: (True, its result) or (False, None); the
    awaitable is cancelled when the time runs out first."""
    task = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    return False, None


def iso(ts: float, timespec: str = "milliseconds") -> str:
    """Epoch seconds as ISO 8601 in UTC (history entries, /status)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec=timespec)
