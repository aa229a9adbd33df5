"""Log output in vLLM's format, written the way vLLM writes it.

vLLM's logger: `{LEVEL} {mm-dd HH:MM:SS} [{file}:{line}] {message}`; a message with newlines
becomes one record whose lines are joined by `\\r\\n` + the header again. Until 0.30 every line a
process writes, log or raw traceback, starts with its `({name} pid={pid}) ` prefix (ANSI cyan
before v0.16); from 0.31 the prefix is part of the log format only, so uvicorn's lines, tqdm bars
and raw tracebacks come without it (`raw_prefix=False`). Logs go to stdout, tracebacks and
uvicorn's own lines to stderr.

Writes go straight to the file descriptor, one `os.write` per record and unbuffered, so lines
from several processes sharing a pipe stay whole, and a closed pipe (an orphaned EngineCore
whose reader is gone) is ignored instead of killing the process.
"""

from __future__ import annotations

import errno
import os
import time

STDOUT = 1
STDERR = 2


class Log:
    """One process's log writer."""

    def __init__(self, name: str | None, ansi: bool = False, pid: int | None = None, raw_prefix: bool = True) -> None:
        self.pid = pid or os.getpid()
        self.name = name
        self.ansi = ansi
        self.raw_prefix = raw_prefix
        self.dead: set[int] = set()

    @property
    def stream_prefix(self) -> str:
        """The prefix of lines written outside logging (tracebacks, tqdm, uvicorn)."""
        return self.prefix if self.raw_prefix else ""

    @property
    def prefix(self) -> str:
        if not self.name:
            return ""
        text = f"({self.name} pid={self.pid})"
        return f"\033[1;36m{text}\033[0;0m " if self.ansi else text + " "

    # ------------------------------------------------------------ writing

    def write(self, fd: int, data: str) -> None:
        if fd in self.dead:
            return
        raw = data.encode("utf-8", "replace")
        try:
            while raw:
                n = os.write(fd, raw)
                raw = raw[n:]
        except OSError as exc:  # EPIPE, EBADF, EIO: the reader is gone; keep running
            if exc.errno in (errno.EPIPE, errno.EBADF, errno.EIO, errno.ECONNRESET, errno.EINVAL):
                self.dead.add(fd)
            else:
                raise

    def record(self, level: str, src: str, message: str, fd: int = STDOUT) -> None:
        """One logging record; newlines in `message` become `\\r\\n` + header as in vLLM."""
        header = f"{self.prefix}{level} {time.strftime('%m-%d %H:%M:%S')} [{src}] "
        lines = message.split("\n")
        self.write(fd, "\r\n".join(header + line for line in lines) + "\n")

    def info(self, src: str, message: str) -> None:
        self.record("INFO", src, message)

    def warning(self, src: str, message: str) -> None:
        self.record("WARNING", src, message)

    def error(self, src: str, message: str) -> None:
        self.record("ERROR", src, message)

    def raw(self, text: str, fd: int = STDERR) -> None:
        """Lines written to a stream outside logging (tracebacks, tqdm): each gets the prefix."""
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        self.write(fd, "".join(self.stream_prefix + line + "\n" for line in lines))

    def bare(self, text: str, fd: int = STDERR) -> None:
        """Output that never had vLLM's prefix (C++ warnings, the resource tracker)."""
        self.write(fd, text if text.endswith("\n") else text + "\n")

    def uvicorn(self, message: str, fd: int = STDERR, level: str = "INFO") -> None:
        """uvicorn's `%(levelprefix)s %(message)s` ("INFO:     ...")."""
        self.write(fd, f"{self.stream_prefix}{(level + ':').ljust(9)} {message}\n")


def traceback_text(frames: list[tuple[str, int, str, str]], final: str, carets: bool = True) -> str:
    """A Python traceback: frames are (file, line, function, source line)."""
    out = ["Traceback (most recent call last):"]
    for path, line, func, code in frames:
        out.append(f'  File "{path}", line {line}, in {func}')
        if code:
            out.append(f"    {code}")
            # Python 3.11+ underlines the failing expression unless it is the whole line
            if carets and " = " in code:
                lhs, rhs = code.split(" = ", 1)
                out.append(" " * (4 + len(lhs) + 3) + "^" * len(rhs))
            elif carets and code.startswith("return "):
                out.append(" " * 11 + "^" * (len(code) - 7))
    out.append(final)
    return "\n".join(out)
