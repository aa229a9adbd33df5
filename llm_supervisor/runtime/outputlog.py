"""The engine's output on disk, without ever holding the engine up.

vLLM blocks on its stdout once the pipe is full, so the daemon must drain it whatever the disk
does. `EngineLog.write` only queues (it never touches the disk and never raises); one writer
thread redacts, writes and rotates (launcher.RotatingLog). While the writer is behind but moving
(a flood faster than the disk), `room()` paces the reader, so output is slowed as a direct write
would slow it, not lost, and memory stays bounded; a writer that finished nothing for STUCK_S is
not waited for. When a write fails (a full disk, an I/O
error, a log folder that was removed and cannot be made again) the output is dropped and counted,
the failure is reported once through `on_change` and `status()`, and writing is tried again every
`retry_s`; when it works again that is reported once too, with what was dropped meanwhile. A writer
that falls behind (a slow disk) drops what does not fit in `max_pending` bytes the same way.

Secrets are masked on the way (config/redaction.py): the last few bytes of each chunk wait for the
next one, so a secret split across two reads is still found whole.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_supervisor.config.redaction import Redactor
from llm_supervisor.errors import RuntimeFailure, SettingsError
from llm_supervisor.runtime.launcher import RotatingLog
from llm_supervisor.vllm import framing

log = logging.getLogger("llm_supervisor")

MAX_PENDING_BYTES = 32 * 1024 * 1024
HIGH_WATER_BYTES = 4 * 1024 * 1024  # above this the reader is paced (while the writer makes progress)
STUCK_S = 2.0  # a writer that finished nothing for this long is stuck: no more pacing, only dropping
RETRY_S = 5.0
CHECK_REMOVED_S = 2.0
# kind ("failed", "resumed", "reopened") and a sentence that says what happened
ChangeCallback = Callable[[str, str], None]
# (inode, size) of the file just after `data` reached it, and the data (`supervisor logs -f`)
WrittenCallback = Callable[[tuple[int, int], bytes], None]


def _problem(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


class EngineLog:
    def __init__(self, path: Path, max_bytes: int, backups: int, *, redactor: Redactor | None = None,
                 on_change: ChangeCallback | None = None, on_written: WrittenCallback | None = None,
                 opener: Callable[..., Any] = RotatingLog, max_pending: int = MAX_PENDING_BYTES,
                 retry_s: float = RETRY_S) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.redactor = redactor or Redactor()
        self.on_change = on_change
        self.on_written = on_written
        self.opener = opener
        self.max_pending = max_pending
        self.retry_s = retry_s
        self.error: str | None = None
        self.failing_since: float | None = None
        self.dropped_bytes = 0
        self.written_bytes = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._file: Any = None
        self._tail = b""
        self._progress_at = time.monotonic()
        self.high_water = HIGH_WATER_BYTES
        self._retry_at = 0.0
        self._checked_at = 0.0
        self._dropped_since_failure = 0

    # ------------------------------------------------------------ any thread
    def write(self, data: bytes) -> None:
        """Queue `data`; never blocks, never raises. Dropped (and counted) when closed or when the
        writer is `max_pending` bytes behind."""
        if not data:
            return
        with self._cond:
            if self._closing or self._pending + len(data) > self.max_pending:
                self.dropped_bytes += len(data)
                self._dropped_since_failure += len(data)
                if not self._closing and self.error is None:
                    self._fail_locked(f"the disk is too slow: more than {self.max_pending // 1024 // 1024} MiB "
                                      "of engine output waiting")
                return
            self._queue.append(data)
            self._pending += len(data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="engine-log", daemon=True)
                self._thread.start()
            self._cond.notify()

    def backlogged(self) -> bool:
        return self._pending > self.high_water

    async def room(self) -> None:
        """Until the writer is below its high water, as long as it keeps making progress."""
        while self._pending > self.high_water and not self._closing:
            if time.monotonic() - self._progress_at > STUCK_S:
                return  # a stuck disk: the engine is not held up, write() drops
            await asyncio.sleep(0.005)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most `timeout` s: a hung disk is abandoned), then close."""
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)
        else:
            self._close_file()

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), "ok": self.error is None, "error": self.error,
                "failing_since": self.failing_since, "dropped_bytes": self.dropped_bytes}

    # ------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(CHECK_REMOVED_S)
                    if not self._queue and not self._closing:
                        break  # idle: look whether the file is still there
                chunks = list(self._queue)
                self._queue.clear()
                self._pending = 0
                closing = self._closing
            data = b"".join(chunks)
            self._progress_at = time.monotonic()
            if closing:
                data, self._tail = self._tail + data, b""
                self._put(self.redactor.bytes(data) if self.redactor else data)
                self._close_file()
                return
            self._put(self._redact(data))
            self._progress_at = time.monotonic()

    def _redact(self, data: bytes) -> bytes:
        """Mask secrets; keep back the bytes that could be the start of a secret the next chunk
        completes (none when the chunk ends a line: secrets have no newline)."""
        if not self.redactor:
            return data
        data = self.redactor.bytes(self._tail + data)
        keep = self.redactor.longest - 1
        if keep <= 0 or data.endswith(b"\n"):
            self._tail = b""
            return data
        self._tail = data[-keep:]
        return data[:-keep]

    def _put(self, data: bytes) -> None:
        now = time.monotonic()
        if self._file is not None and now - self._checked_at >= CHECK_REMOVED_S:
            self._checked_at = now
            self._check_removed()
        if not data:
            return
        if self._file is None:
            if self.error is not None and now < self._retry_at:
                self._drop(len(data))
                return
            try:
                self._file = self.opener(self.path, self.max_bytes, self.backups)
            except OSError as exc:
                self._failed(f"cannot open {self.path}: {_problem(exc)}", len(data))
                return
        try:
            self._file.write(data)
        except (OSError, ValueError) as exc:
            self._close_file()
            self._failed(f"cannot write {self.path}: {_problem(exc) if isinstance(exc, OSError) else exc}",
                         len(data))
            return
        self.written_bytes += len(data)
        if self.on_written is not None:
            position = getattr(self._file, "position", None)
            with contextlib.suppress(Exception):
                self.on_written(position() if position is not None else (-1, 0), data)
        if self.error is not None:
            with self._cond:
                dropped, since = self._dropped_since_failure, self.failing_since
                self.error = self.failing_since = None
                self._dropped_since_failure = 0
            took = f" after {time.time() - since:.0f} s" if since else ""
            self._tell("resumed", f"engine log {self.path} writable again{took}; {dropped:,} bytes of engine output "
                                  "were dropped meanwhile")

    def _check_removed(self) -> None:
        """A log file (or its folder) removed under us: writes would go to a file nobody can see."""
        try:
            ours = os.fstat(self._file.fileno())
        except (OSError, AttributeError, ValueError):
            return  # nothing to compare with (not a file of ours)
        try:
            same = os.path.samestat(os.stat(self.path), ours)
        except OSError:
            same = False
        if not same:
            self._close_file()
            self._tell("reopened", f"engine log {self.path} was removed or replaced; writing it anew")

    def _drop(self, size: int) -> None:
        with self._cond:
            self.dropped_bytes += size
            self._dropped_since_failure += size

    def _failed(self, problem: str, size: int) -> None:
        self._retry_at = time.monotonic() + self.retry_s
        with self._cond:
            self.dropped_bytes += size
            self._dropped_since_failure += size
            if self.error is not None:
                return  # said once
            self._fail_locked(problem)

    def _fail_locked(self, problem: str) -> None:
        self.error = problem
        self.failing_since = time.time()
        self._retry_at = time.monotonic() + self.retry_s
        self._tell("failed", f"{problem}; engine output is dropped (and counted) until it works again, "
                             f"tried every {self.retry_s:g} s; the engine is not held up")

    def _tell(self, kind: str, text: str) -> None:
        if self.on_change is None:
            (log.error if kind == "failed" else log.warning)("%s", text)
            return
        with contextlib.suppress(Exception):
            self.on_change(kind, text)

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


def check_log_path(path: Path, setting: str) -> None:
    """The engine log's path can be a log file: no part of it is a file where a folder must be,
    and it is not a folder itself (SettingsError, exit 2). Touches nothing."""
    folder = path.parent
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = f"{folder} is a file" if part == folder else f"{part} (in {folder}) is a file"
                raise SettingsError("log dir is not a folder", [f"settings: {setting}: {where}, not a folder"])
            break
    if path.is_dir():
        raise SettingsError("engine log is a folder", [f"settings: {setting}: {path} is a folder, not a log file"])


def check_log_dir(path: Path, setting: str) -> None:
    """Before `up` launches anything: the engine log's folder exists (or can be made) and takes a
    write. A bad path is bad input (SettingsError, exit 2); a full or read-only disk a runtime
    failure (exit 1); each one line."""
    check_log_path(path, setting)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SettingsError("log dir is not a folder",
                            [f"settings: {setting}: {folder}: a part of this path is a file, not a folder"]) from None
    except OSError as exc:
        raise RuntimeFailure(f"log dir {folder}: cannot create it ({_problem(exc)}); fix it or set {setting}") from None
    try:
        with open(path, "ab") as fh:
            fh.write(framing.daemon_start_line(os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%S")).encode())
            fh.flush()
            try:
                os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a device or pipe given as the log: nothing to sync
                    raise
    except OSError as exc:
        raise RuntimeFailure(f"engine log {path}: cannot write ({_problem(exc)}): free space there or set "
                             f"{setting}") from None
