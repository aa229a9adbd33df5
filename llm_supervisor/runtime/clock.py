"""Time as the daemon sees it: a seam, so its behaviour over minutes is tested in milliseconds.

`SystemClock` is the real one. Tests pass a virtual clock (tests/fakes.py) whose `sleep`
returns when virtual time has advanced that far; nothing in the runtime reads `time` or calls
`asyncio.sleep` directly.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Awaitable, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The machine's clocks and asyncio's sleep."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


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
