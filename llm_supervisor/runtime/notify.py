"""sd_notify(3) for the daemon: tell systemd when the engine is really ready, what it is doing,
and that the main loop is alive. Standard library only.

Why our own and not `python-systemd`: that needs libsystemd headers to build, and the protocol is
one datagram of `KEY=VALUE` lines on an AF_UNIX socket (systemd's `notify-selfcontained-example.py`,
gunicorn's `systemd.py`). Like those:

* without `NOTIFY_SOCKET` every call does nothing, so the same code runs under a shell, Docker or
  `Type=simple`;
* `@name` is an abstract socket (`\\0name`); anything but `/…` or `@…` is ignored;
* the socket is `SOCK_CLOEXEC`, so the engine never inherits it;
* nothing here raises: a notification that cannot be sent is logged at debug and the daemon goes on.

With `NotifyAccess=main` systemd accepts datagrams only from the main PID, so call these from the
daemon process itself (any thread), never from a child.

What the daemon sends, and when: `ready()` once the engine answered a real request (systemd then
marks the unit started; `TimeoutStartSec` stops counting); `status()` for each phase (shown by
`systemctl status`); `extend_timeout()` while a slow start is still progressing; `watchdog()` from the
main loop tick at `watchdog_interval_s()`; `stopping()` on SIGTERM.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping

log = logging.getLogger(__name__)

# The service manager's variables. They belong to the daemon (the main PID) alone and must not
# reach the engine: a child that pings the watchdog or sends READY=1 would lie about the daemon.
# engine.DAEMON_ONLY_ENV holds the same names (plus socket activation's); this module stays a leaf.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def strip_notify_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` without the service manager's notify and watchdog variables."""
    return {k: v for k, v in env.items() if k not in NOTIFY_ENV}


def _socket_address(value: str | None) -> str | None:
    """NOTIFY_SOCKET as an AF_UNIX address, or None when absent or not one we can use."""
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    # `vsock:…` (systemd in a VM) and relative paths: not for a host daemon.
    log.debug("NOTIFY_SOCKET=%r is not an absolute path or @abstract name; notifications off", value)
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number > 0 else None


def _one_line(text: str) -> str:
    """The protocol is newline-separated: a value must not contain one."""
    return " ".join(str(text).splitlines()).strip()


class Notifier:
    """Sends sd_notify messages to systemd; a silent no-op when not run by systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_status: str | None = None
        # Masks secrets in what goes to systemd (STATUS= lines carry failure messages).
        self.redact: Callable[[str], str] | None = None

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | Mapping[str, str] = os.environ, *, unset: bool = False) -> "Notifier":
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. With `unset=True` (and a mutable
        mapping such as os.environ) remove them, so that nothing this process starts inherits them."""
        notifier = cls(
            _socket_address(env.get("NOTIFY_SOCKET")),
            watchdog_usec=_positive_int(env.get("WATCHDOG_USEC")),
            watchdog_pid=_positive_int(env.get("WATCHDOG_PID")),
        )
        if unset and isinstance(env, MutableMapping):
            for name in NOTIFY_ENV:
                env.pop(name, None)
        return notifier

    @classmethod
    def disabled(cls) -> "Notifier":
        """A notifier that never sends (for runs outside systemd and for tests)."""
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def __repr__(self) -> str:
        where = "off" if self._address is None else repr(self._address.replace("\0", "@", 1))
        return f"Notifier({where}, watchdog={self.watchdog_interval_s()})"

    # -- the protocol -------------------------------------------------------------------------

    def send(self, *lines: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines. True when it went out; never raises."""
        if self._address is None or not lines:
            return False
        try:
            if self.redact is not None:
                lines = tuple(self.redact(line) for line in lines)
            payload = "\n".join(_one_line(line) for line in lines).encode("utf-8", "replace")
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                try:
                    self._sock.sendto(payload, self._address)
                except OSError:
                    # The socket may be stale (systemd re-executed); start afresh next time.
                    self._sock.close()
                    self._sock = None
                    raise
            return True
        except Exception as exc:  # noqa: BLE001 - a notification must never take the daemon down
            log.debug("sd_notify %s failed: %s", [line.split("=", 1)[0] for line in lines], exc)
            return False

    def _send_with_status(self, line: str, status: str | None) -> bool:
        lines = [line]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        sent = self.send(*lines)
        if sent and status is not None:
            self._last_status = _one_line(status)
        return sent

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the engine answers; systemd marks the unit started."""
        return self._send_with_status("READY=1", status)

    def status(self, text: str) -> bool:
        """STATUS=…, the line `systemctl status` shows. A repeat of the last one is not sent."""
        line = _one_line(text)
        if line == self._last_status:
            return False
        sent = self.send(f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def watchdog(self) -> bool:
        """WATCHDOG=1: the daemon's loop is alive (send it from the loop, not from a timer thread)."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self._send_with_status("STOPPING=1", status)

    def reloading(self) -> bool:
        """RELOADING=1 with the monotonic timestamp that `Type=notify-reload` expects; send
        `ready()` again when done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=…: the start (or stop) is still progressing; give it `seconds` more
        from now. Only takes effect while systemd is waiting for READY=1 or for the stop."""
        if not math.isfinite(seconds) or seconds <= 0:
            log.debug("extend_timeout(%r) ignored: not a positive number of seconds", seconds)
            return False
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
        advises. None when no watchdog is asked of this process (unset, meant for another PID,
        or no socket to send to)."""
        if self._address is None or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
