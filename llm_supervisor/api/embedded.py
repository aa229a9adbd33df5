"""uvicorn inside the daemon's event loop, on sockets bound here: the REST API and the front door
both run this way.

Binding here makes a busy port, a host that is not ours or a name that does not resolve one clear
line at start (uvicorn itself would `sys.exit`). The server takes no signals (the daemon owns
SIGTERM/SIGINT/SIGHUP, as vLLM does with its own no-op `capture_signals`) and never exits the
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from llm_supervisor.errors import BadInput, RuntimeFailure

log = logging.getLogger("llm_supervisor")


class BindError(RuntimeFailure):
    """An address that cannot be served: in use, or no permission."""


@dataclass(frozen=True)
class Address:
    """What to bind, and how to name it in an error: the setting or profile keys behind it."""

    host: str
    port: int
    what: str      # "API", "front door"
    host_key: str  # "LLM_SUPERVISOR_API_HOST", "vllm.host"
    port_key: str  # "LLM_SUPERVISOR_API_PORT", "vllm.port"


def plain_host(host: str) -> str:
    """`[::1]` → `::1`, without an IPv6 zone id."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.split("%", 1)[0]


def bind(address: Address, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address the host resolves to (both families for "localhost")."""
    host, port = address.host, address.port
    try:
        infos = socket.getaddrinfo(plain_host(host) or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        line = f"{address.host_key}={host}: cannot resolve this address ({exc.strerror})"
        raise BadInput(line, [line]) from None
    sockets: list[socket.socket] = []
    skipped: list[OSError] = []
    seen: set[tuple[int, Any]] = set()
    bound_port = port
    for family, kind, proto, _name, sockaddr in infos:
        if (family, sockaddr) in seen:
            continue
        seen.add((family, sockaddr))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((sockaddr[0], bound_port, *sockaddr[2:]))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and (sockets or family == socket.AF_INET6):
                skipped.append(exc)  # "localhost" -> ::1 on a host without IPv6
                continue
            for other in sockets:
                other.close()
            raise _bind_error(address, exc) from None
        sockets.append(sock)
        bound_port = sock.getsockname()[1]
    if not sockets:
        raise _bind_error(address, skipped[0] if skipped else OSError(errno.EADDRNOTAVAIL, "no usable address"))
    return sockets


def _bind_error(address: Address, exc: OSError) -> RuntimeFailure | BadInput:
    what, port, where = address.what, address.port, f"{address.host}:{address.port}"
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"{what} port {port} is in use",
                         [f"{address.port_key}={port}: {what} port {port} is in use on {address.host} (another "
                          "vLLM or supervisor on it? `supervisor doctor` names it); stop it or choose another port"])
    if exc.errno == errno.EACCES:
        return BindError(f"{what} port {port}: permission denied",
                         [f"{address.port_key}={port}: permission denied binding {where} (ports below 1024 need "
                          "privileges)"])
    if exc.errno == errno.EADDRNOTAVAIL:
        line = f"{address.host_key}={address.host}: not an address of this machine"
        return BadInput(line, [line])
    return BindError(f"cannot serve the {address.what} on {where}: {exc.strerror or exc}")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29 called this from serve()
        return None


class EmbeddedServer:
    """An ASGI app served by uvicorn as a task of the running loop, on sockets bound here."""

    def __init__(self, app: Any, address: Address, *, backlog: int = 128, **config: Any) -> None:
        self.address = address
        self.backlog = backlog
        self.config = uvicorn.Config(
            app, ws="none", lifespan="off",  # nothing to start; a lifespan failure would sys.exit
            log_config=None,                 # leave the daemon's logging configuration alone
            access_log=False, server_header=False, backlog=backlog, **config)
        self.server = _Server(self.config)
        self.sockets: list[socket.socket] = []
        self.task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why serving ended early, if it did
        self.port: int | None = None     # the port bound (useful with port 0), kept after stop

    async def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve; return once it is listening. Raises BindError/BadInput instead of exiting."""
        self.sockets = bind(self.address, self.backlog)
        self.port = int(self.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._serve(), name=f"llm-supervisor-{self.address.what}")
        deadline = loop.time() + timeout_s
        where = f"{self.address.host}:{self.address.port}"
        while not self.server.started:
            if self.task.done():
                raise RuntimeFailure(self.failure or f"the {self.address.what} on {where} stopped before listening")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeFailure(f"the {self.address.what} on {where} did not start within {timeout_s:g} s")
            await asyncio.sleep(0.005)

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=self.sockets)
        except SystemExit as exc:  # uvicorn still calls sys.exit on some startup failures
            self.failure = f"the {self.address.what} stopped during startup (exit {exc.code})"
            log.error("%s", self.failure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = f"the {self.address.what} failed: {exc}"
            log.exception("%s failed", self.address.what)
        finally:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful first, then forced; never raises for a server already gone."""
        task = self.task
        self.server.should_exit = True
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except asyncio.TimeoutError:
            self.server.force_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        except Exception:  # _serve already recorded and logged why serving ended
            pass
