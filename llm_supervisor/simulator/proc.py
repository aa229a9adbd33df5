"""Process plumbing shared by the simulator's processes: titles, forking, JSON-line channels."""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import time
from typing import Any, Callable

PR_SET_NAME = 15


def set_title(title: str) -> None:
    """Make `ps`/psutil show `title` as vLLM's setproctitle does ("VLLM::EngineCore").

    Uses setproctitle when installed; otherwise rewrites this process's argv area through
    /proc/self/mem (ending it with a non-NUL byte so the kernel reports the title alone) and
    sets the 15-character comm name with prctl. Failing both, the caller's argv stays."""
    try:
        import setproctitle  # type: ignore[import-not-found]

        setproctitle.setproctitle(title)
        return
    except ImportError:
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48/49 of stat(5)
        size = arg_end - arg_start
        if size < len(title) + 2:
            return
        raw = title.encode() + b"\0"
        raw += b"\0" * (size - len(raw) - 1) + b" "
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(arg_start)
            mem.write(raw)
    except (OSError, ValueError, IndexError):
        pass


def fork_child(target: Callable[[], int], keep_fds: list[int]) -> int:
    """Fork; the child closes every inherited descriptor but stdio and `keep_fds` (so it never
    holds the API server's socket or a sibling's channel), runs `target` and exits with its code."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        keep = sorted(set(keep_fds) | {0, 1, 2})
        low = 3
        for fd in keep:
            if fd >= low:
                os.closerange(low, fd)
                low = fd + 1
        os.closerange(low, 65536)
        code = target()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
        code = 1
    finally:
        os._exit(code)


class Channel:
    """Newline-delimited JSON over a blocking socket (one end of a socketpair)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any]) -> bool:
        if self.closed:
            return False
        try:
            self.sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
            return True
        except OSError:
            self.closed = True
            return False

    def read_available(self) -> list[dict[str, Any]] | None:
        """Messages readable now without blocking; None at EOF."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return None
        self.buf += data
        out = []
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                out.append(json.loads(line))
        return out

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """One message, blocking up to `timeout`; None at EOF; raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                raise TimeoutError
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return None
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def sleep(seconds: float) -> None:
    """time.sleep that finishes its time even when a signal handler interrupts it."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(left)
