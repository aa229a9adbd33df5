"""Readers of the engine's log while the engine writes it: `GET /logs` and `supervisor logs -f`.

A reader gets an attempt's part of the log file (host/logfiles.py), then, when it follows, what
the log's writer thread puts in the file next. Each follower has a queue of
((inode, size after), bytes), subscribed before the file is read with no await in between, so a
byte is either in the file as of the snapshot or comes through the queue marked with the file's
size after it: read once, never twice, never lost. A follower that falls FOLLOW_CHUNKS chunks
behind is cut off, never waited for (the engine's output is not held up by a slow reader): it
reads what it was given, then one line that says it fell behind, and its stream ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from llm_supervisor.config.redaction import Redactor
from llm_supervisor.host.logfiles import attempt_section, read_ranges, tail_ranges
from llm_supervisor.vllm import framing

FOLLOW_CHUNKS = 1024  # output chunks a `supervisor logs -f` may fall behind before it is cut off

Position = tuple[int, int]  # (inode, file size after the chunk)
Item = tuple[Position, bytes]


class LogFollowers:
    """The live readers of one log file; `written` is called from the writer thread."""

    def __init__(self, path: Path, redactor: Redactor, chunks: int = FOLLOW_CHUNKS) -> None:
        self.path = path
        self.redactor = redactor
        self.chunks = chunks
        self.loop: asyncio.AbstractEventLoop | None = None  # set by the daemon's loop when it starts
        self._queues: set[asyncio.Queue[Item | None]] = set()

    def __len__(self) -> int:
        return len(self._queues)

    def written(self, position: Position, data: bytes) -> None:
        """From the log's writer thread, after `data` reached the file: to every follower."""
        loop = self.loop
        if self._queues and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, position, data)

    def _deliver(self, position: Position, data: bytes) -> None:
        for queue in list(self._queues):
            if queue.qsize() < self.chunks:
                queue.put_nowait((position, data))
            else:  # a follower that cannot keep up is cut off, not waited for: what it was given, then why
                self._queues.discard(queue)
                queue.put_nowait(((-1, 0), framing.behind_line().encode()))
                queue.put_nowait(None)

    def end(self) -> None:
        """The daemon stops: every follower ends after what it has been given."""
        for queue in list(self._queues):
            queue.put_nowait(None)
        self._queues.clear()

    async def open(self, attempt: int | None, current_attempt: int, follow: bool,
                   lines: int | None = None) -> AsyncIterator[bytes]:
        """Attempt N (the newest when None) from the file (its last `lines` lines when given),
        then, with `follow` and while it is the current attempt, what is written next. Raises
        BadInput (before anything is sent) when there is no such attempt."""
        queue: asyncio.Queue[Item | None] | None = None
        current = None
        if follow:
            # no await between subscribing and the snapshot (see the module's docstring)
            queue = asyncio.Queue()  # bounded by `_deliver` (at `chunks`), so the end always fits
            self._queues.add(queue)
            try:
                st = os.stat(self.path)
                current = (st.st_ino, st.st_size)
            except OSError:
                current = (-1, 0)
        try:
            number, ranges = await asyncio.to_thread(attempt_section, self.path, attempt, current=current)
            if lines is not None:
                ranges = await asyncio.to_thread(tail_ranges, ranges, lines)
        except BaseException:
            if queue is not None:
                self._queues.discard(queue)
            raise
        if queue is not None and attempt is not None and number != current_attempt:
            self._queues.discard(queue)  # an earlier attempt has ended: nothing to follow
            queue = None
        return self._stream(ranges, queue, current)

    async def _stream(self, ranges: list[Any], queue: asyncio.Queue[Item | None] | None,
                      snapshot: Position | None) -> AsyncIterator[bytes]:
        redactor = self.redactor
        pending = b""

        def clean(data: bytes, final: bool = False) -> bytes:
            nonlocal pending
            data = pending + data
            cut = len(data) if final else data.rfind(b"\n") + 1
            pending = data[cut:]
            return redactor.bytes(data[:cut])  # the file is masked already; older files may not be

        chunks = read_ranges(ranges)
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                if out := clean(chunk):
                    yield out
            while queue is not None:
                item = await queue.get()
                if item is None:
                    break
                (inode, end), chunk = item
                if snapshot is not None and inode == snapshot[0] and end <= snapshot[1]:
                    continue  # already read from the file
                if out := clean(chunk):
                    yield out
            if out := clean(b"", final=True):
                yield out
        finally:
            if queue is not None:
                self._queues.discard(queue)
