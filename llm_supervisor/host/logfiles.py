"""Saved vLLM logs on disk: their lines, split as vLLM wrote them, fed to the one log parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from llm_supervisor.errors import BadInput
from llm_supervisor.vllm.diagnosis import diagnose_lines
from llm_supervisor.vllm.logparse import LineSink, LogParser

_SNIFF_BYTES = 65536


def _bad(line: str) -> BadInput:
    return BadInput(line, [line])


def iter_log_lines(path: str | Path) -> Iterable[str]:
    """Lines of a saved log, split on `\\n` only (vLLM's multi-line records use `\\r\\n`, tqdm bare `\\r`)."""
    with open(path, "rb") as fh:
        for raw in fh:
            yield raw.decode("utf-8", errors="replace")


def parse_log_file(path: str | Path, sink: LineSink | None = None) -> LogParser:
    """Parse a whole saved log file."""
    parser = LogParser(sink=sink)
    for line in iter_log_lines(path):
        parser.feed(line)
    return parser


def read_log(path: str | Path) -> Iterator[str]:
    """The lines of a file that should be a log, or BadInput saying why it cannot be one
    (missing, a directory, unreadable, empty, binary)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise _bad(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _bad(f"{path}: is a directory, not a log file") from None
    except PermissionError:
        raise _bad(f"{path}: permission denied") from None
    except OSError as exc:
        raise _bad(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise _bad(f"{path}: empty file; does not look like a vLLM log")
    if b"\x00" in head:
        raise _bad(f"{path}: binary data; does not look like a vLLM log")
    try:
        yield from iter_log_lines(path)
    except OSError as exc:
        raise _bad(f"{path}: cannot read ({exc.strerror or exc})") from None


def diagnose_file(path: str | Path) -> dict[str, Any]:
    """`supervisor diagnose LOGFILE`: a saved vLLM log, diagnosed (vllm/diagnosis.py)."""
    return diagnose_lines(read_log(path), str(path))
