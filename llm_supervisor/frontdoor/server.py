"""uvicorn embedded in the daemon's event loop, on sockets bound here.

Binding here makes a busy port a clear error at `start()` (uvicorn would `sys.exit`), and the
server takes no signals: the daemon owns SIGTERM/SIGINT/SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from llm_supervisor.errors import RuntimeFailure
from llm_supervisor.frontdoor.proxy import CUT_ON_PURPOSE

log = logging.getLogger("llm_supervisor.frontdoor")

BACKLOG = 2048  # as vLLM's uvicorn: a burst of clients while the engine restarts must not be refused


class FrontDoorBindError(RuntimeFailure):
    """The public address cannot be served (in use, not ours, no permission)."""


class QuietCutFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" for a response the front door cut
    on purpose (it logs its own warning); every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (CUT_ON_PURPOSE.get() and "without completing response" in str(record.msg))


_QUIET = QuietCutFilter()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        return None


class Listener:
    """The public address, served by uvicorn as a task of the running loop."""

    def __init__(self, app: Any, *, keepalive_s: float, graceful_s: float = 5.0) -> None:
        self.config = uvicorn.Config(
            app,
            http="auto",             # httptools when installed, else h11
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,         # leave the daemon's logging alone
            log_level=None,
            access_log=False,        # requests are counted, never logged (no bodies, no keys)
            proxy_headers=False,     # X-Forwarded-* are passed on to the engine, not trusted here
            server_header=False,     # the engine's own Server and Date headers are passed on
            date_header=False,
            backlog=BACKLOG,
            timeout_keep_alive=keepalive_s,  # type: ignore[arg-type]  # a float works
            timeout_graceful_shutdown=graceful_s,  # type: ignore[arg-type]
        )
        self.server = _Server(self.config)
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _QUIET not in uvicorn_log.filters:
            uvicorn_log.addFilter(_QUIET)
        self.sockets: list[socket.socket] = []
        self.task: asyncio.Task[None] | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self.sockets = bind(host, port)
        self.port = self.sockets[0].getsockname()[1]
        self.task = asyncio.get_running_loop().create_task(self._serve(), name="llm-supervisor-frontdoor")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.server.started:
            if self.task.done():
                raise RuntimeFailure(f"the front door on {host}:{port} stopped before listening")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeFailure(f"the front door on {host}:{port} did not start within {timeout_s:g} s")
            await asyncio.sleep(0.005)

    async def _serve(self) -> None:
        try:
            await self.server.serve(sockets=self.sockets)
        except SystemExit as exc:  # uvicorn still exits on some startup failures
            log.error("front door: the HTTP server stopped during startup (exit %s)", exc.code)
        finally:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    async def stop(self, timeout_s: float = 10.0) -> None:
        task = self.task
        self.server.should_exit = True
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except asyncio.TimeoutError:
            self.server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (both families for "localhost")."""
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FrontDoorBindError(f"cannot resolve the front door's host {host}",
                                 [f"vllm.host={host}: cannot resolve this address ({exc.strerror})"]) from None
    sockets: list[socket.socket] = []
    skipped: list[OSError] = []
    seen: set[tuple[int, Any]] = set()
    bound_port = port
    for family, kind, proto, _name, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], bound_port, *address[2:]))
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and family == socket.AF_INET6:
                skipped.append(exc)  # "localhost" -> ::1 on a host without IPv6
                continue
            for other in sockets:
                other.close()
            raise _bind_error(host, port, exc) from None
        sockets.append(sock)
        bound_port = sock.getsockname()[1]
    if not sockets:
        raise _bind_error(host, port, skipped[0] if skipped else OSError(errno.EADDRNOTAVAIL, "no usable address"))
    return sockets


def _bind_error(host: str, port: int, exc: OSError) -> FrontDoorBindError:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return FrontDoorBindError(f"the front door's port {port} is in use",
                                  [(f"vllm.port={port}: {where} is in use (another vLLM or supervisor on it?); "
                                    "stop it or choose another port")])
    if exc.errno == errno.EACCES:
        return FrontDoorBindError(f"the front door's port {port}: permission denied",
                                  [(f"vllm.port={port}: permission denied binding {where} (ports below 1024 "
                                    "need privileges)")])
    if exc.errno == errno.EADDRNOTAVAIL:
        return FrontDoorBindError(f"the front door's host {host} is not an address of this machine",
                                  [f"vllm.host={host}: not an address of this machine"])
    return FrontDoorBindError(f"cannot serve the front door on {where}: {exc.strerror or exc}")
