"""Saved vLLM logs on disk: their lines, split as vLLM wrote them, fed to the one log parser; and
the daemon's engine log read by attempt (`supervisor logs`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from llm_supervisor.errors import BadInput
from llm_supervisor.vllm import framing
from llm_supervisor.vllm.diagnosis import diagnose_lines
from llm_supervisor.vllm.logparse import LineSink, LogParser

_SNIFF_BYTES = 65536


def _bad(line: str) -> BadInput:
    return BadInput(line, [line])


def _decoded_lines(fh: BinaryIO) -> Iterator[str]:
    """Lines split on `\\n` only (vLLM's multi-line records use `\\r\\n`, tqdm bare `\\r`)."""
    for raw in fh:
        yield raw.decode("utf-8", errors="replace")


def iter_log_lines(path: str | Path) -> Iterable[str]:
    """Lines of a saved log."""
    with open(path, "rb") as fh:
        yield from _decoded_lines(fh)


def parse_log_file(path: str | Path, sink: LineSink | None = None, *, checked: bool = False) -> LogParser:
    """Parse a whole saved log file. `checked`: a file a person named, which may be no log at all
    (BadInput saying why: missing, a directory, empty, binary; see read_log)."""
    parser = LogParser(sink=sink)
    for line in read_log(path) if checked else iter_log_lines(path):
        parser.feed(line)
    return parser


def log_name(path: str | Path) -> str:
    """How a log a person named is called in messages: `-` is stdin."""
    return "stdin" if str(path) == "-" else str(path)


def read_log(path: str | Path) -> Iterator[str]:
    """The lines of a file that should be a log, or BadInput saying why it cannot be one
    (missing, a directory, unreadable, empty, binary). Opened once and read in one pass, so a
    pipe works as well as a file: `journalctl … | supervisor diagnose -` (`-` is stdin),
    `diagnose <(kubectl logs …)`."""
    name = log_name(path)
    try:
        fh = os.fdopen(os.dup(0), "rb", buffering=_SNIFF_BYTES) if str(path) == "-" else \
            open(path, "rb", buffering=_SNIFF_BYTES)
    except FileNotFoundError:
        raise _bad(f"{name}: no such file") from None
    except IsADirectoryError:
        raise _bad(f"{name}: is a directory, not a log file") from None
    except PermissionError:
        raise _bad(f"{name}: permission denied") from None
    except OSError as exc:  # EBADF: stdin closed
        raise _bad(f"{name}: cannot read ({exc.strerror or exc})") from None
    with fh:
        try:
            head = fh.peek(_SNIFF_BYTES)  # what the first read brought in, not consumed
            if not head:
                raise _bad(f"{name}: empty file; does not look like a vLLM log")
            if b"\x00" in head:
                raise _bad(f"{name}: binary data; does not look like a vLLM log")
            yield from _decoded_lines(fh)
        except IsADirectoryError:
            raise _bad(f"{name}: is a directory, not a log file") from None
        except OSError as exc:
            raise _bad(f"{name}: cannot read ({exc.strerror or exc})") from None


def diagnose_file(path: str | Path) -> dict[str, Any]:
    """`supervisor diagnose LOGFILE`: a saved vLLM log, diagnosed (vllm/diagnosis.py)."""
    return diagnose_lines(read_log(path), log_name(path))


# ---------------------------------------------------------------- the engine's log, by attempt
#
# The daemon writes every launch's output to <LOG_DIR>/<profile>.log (rotated to .1 … .N), each
# launch after a line `===== llm-supervisor attempt N at <time>: <argv>` (vllm/framing.py). Attempt numbers start
# at 1 again with every `supervisor up`: "attempt N" means the N-th launch of the newest run.

_MARK_RE = re.compile(framing.ATTEMPT_PATTERN.encode())
_FRAME_PREFIX = framing.PREFIX.encode()
READ_CHUNK = 64 * 1024


def engine_log_files(path: Path) -> list[Path]:
    """The log and its rotated copies that exist, oldest first (`x.log.5` … `x.log.1`, `x.log`)."""
    backups = []
    for candidate in path.parent.glob(f"{path.name}.*"):
        suffix = candidate.name[len(path.name) + 1:]
        if suffix.isdigit():
            backups.append((int(suffix), candidate))
    return [p for _, p in sorted(backups, reverse=True)] + ([path] if path.exists() else [])


def _marks(files: list[Path], limits: dict[int, int]) -> list[tuple[int, int, int]]:
    """(attempt, file index, byte offset) of every attempt line, in order."""
    marks = []
    for index, file in enumerate(files):
        limit = limits.get(index)
        offset = 0
        with file.open("rb") as fh:
            for line in fh:
                if limit is not None and offset >= limit:
                    break
                if line.startswith(_FRAME_PREFIX):
                    m = _MARK_RE.match(line)
                    if m:
                        marks.append((int(m.group(1)), index, offset))
                offset += len(line)
    return marks


def attempt_section(path: Path, attempt: int | None = None, *, current: tuple[int, int] | None = None
                    ) -> tuple[int, list[tuple[Path, int, int | None]]]:
    """Which bytes hold `attempt` of the newest run (the newest attempt when None): its number
    and (file, start, end) ranges. `current` = (inode, size) of the live file when the caller
    saw it: nothing after that is included (a follower gets the rest as it is written), even
    when the file was rotated in between. BadInput when there is no such attempt."""
    files = engine_log_files(path)
    limits: dict[int, int] = {}
    if current is not None:
        inode, size = current
        for index, file in enumerate(files):
            try:
                if file.stat().st_ino == inode:
                    limits[index] = size
                    files = files[: index + 1]  # what came after the snapshot is the follower's
                    break
            except OSError:
                continue
    if not files:
        raise _bad(f"{path}: no engine log yet (the daemon writes it from the first launch)")
    marks = _marks(files, limits)
    if not marks:
        raise _bad(f"{path}: no launch recorded in the engine log")
    run_start = max(i for i, m in enumerate(marks) if m[0] == 1) if any(m[0] == 1 for m in marks) else 0
    run = marks[run_start:]
    if attempt is None:
        chosen = len(run) - 1
    else:
        found = [i for i, m in enumerate(run) if m[0] == attempt]
        if not found:
            have = f"attempts {run[0][0]}–{run[-1][0]}" if len(run) > 1 else f"attempt {run[0][0]}"
            raise _bad(f"--attempt {attempt}: not in the engine log (the newest run has {have})")
        chosen = found[-1]
    number, first, start = run[chosen]
    if chosen + 1 < len(run):
        _, last, end = run[chosen + 1]
    else:
        last, end = len(files) - 1, limits.get(len(files) - 1)
    ranges: list[tuple[Path, int, int | None]] = []
    for index in range(first, last + 1):
        ranges.append((files[index], start if index == first else 0,
                       end if index == last else limits.get(index)))
    return number, ranges


def read_ranges(ranges: list[tuple[Path, int, int | None]]) -> Iterator[bytes]:
    """The bytes of `attempt_section`'s ranges, in chunks."""
    for file, start, end in ranges:
        try:
            fh = file.open("rb")
        except FileNotFoundError:  # rotated away meanwhile: what it held is gone
            continue
        with fh:
            fh.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                chunk = fh.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk


def tail_ranges(ranges: list[tuple[Path, int, int | None]], lines: int) -> list[tuple[Path, int, int | None]]:
    """The part of `attempt_section`'s ranges that holds their last `lines` lines (`tail -n`): read
    backwards from the end, a block at a time, whatever the size of what comes before."""
    if lines < 0:
        raise ValueError("lines must be 0 or more")
    if lines == 0:
        return []
    sized: list[tuple[Path, int, int]] = []
    for file, start, end in ranges:
        try:
            size = file.stat().st_size if end is None else end
        except OSError:  # rotated away meanwhile: what it held is gone
            continue
        if size > start:
            sized.append((file, start, size))
    newlines = 0
    first = True
    for index in range(len(sized) - 1, -1, -1):
        file, start, end = sized[index]
        try:
            fh = file.open("rb")
        except OSError:
            continue
        with fh:
            position = end
            while position > start:
                block_start = max(start, position - READ_CHUNK)
                fh.seek(block_start)
                block = fh.read(position - block_start)
                if first:  # a final newline ends the last line; it does not begin another
                    first = False
                    if block.endswith(b"\n"):
                        block = block[:-1]
                        position -= 1
                cut = len(block)
                while True:
                    cut = block.rfind(b"\n", 0, cut)
                    if cut < 0:
                        break
                    newlines += 1
                    if newlines >= lines:
                        return [(file, block_start + cut + 1, end), *[(f, s, e) for f, s, e in sized[index + 1:]]]
                position = block_start
    return [(f, s, e) for f, s, e in sized]


def follow_file(path: Path, poll_s: float = 0.5) -> Iterator[bytes]:
    """What is appended to `path` from now on (`tail -f`), across rotations; forever."""
    import time

    def identity() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size

    seen = identity()
    inode, offset = seen if seen else (None, 0)
    while True:
        now = identity()
        if now is not None:
            if now[0] != inode:  # rotated or recreated: the new file from its start
                inode, offset = now[0], 0
            if now[1] < offset:  # truncated
                offset = 0
            if now[1] > offset:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read(now[1] - offset)
                offset += len(chunk)
                yield chunk
                continue
        time.sleep(poll_s)
