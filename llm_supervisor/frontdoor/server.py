"""The front door's public address: its ASGI app served by uvicorn inside the daemon's loop
(api/embedded.py: sockets bound here, no signals taken, no sys.exit).
"""

from __future__ import annotations

import logging
from typing import Any

from llm_supervisor.api.embedded import Address, EmbeddedServer
from llm_supervisor.frontdoor.proxy import CUT_ON_PURPOSE

log = logging.getLogger("llm_supervisor.frontdoor")

BACKLOG = 2048  # as vLLM's uvicorn: a burst of clients while the engine restarts must not be refused




class QuietCutFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" for a response the front door cut
    on purpose (it logs its own warning); every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (CUT_ON_PURPOSE.get() and "without completing response" in str(record.msg))


_QUIET = QuietCutFilter()


class Listener:
    """The public address, served by uvicorn as a task of the running loop."""

    def __init__(self, app: Any, *, keepalive_s: float, graceful_s: float = 5.0) -> None:
        self.app = app
        self.keepalive_s = keepalive_s
        self.graceful_s = graceful_s
        self.server: EmbeddedServer | None = None
        uvicorn_log = logging.getLogger("uvicorn.error")
        if _QUIET not in uvicorn_log.filters:
            uvicorn_log.addFilter(_QUIET)

    @property
    def port(self) -> int | None:
        return self.server.port if self.server else None

    async def start(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self.server = EmbeddedServer(
            self.app, Address(host, port, "front door", "vllm.host", "vllm.port"), backlog=BACKLOG,
            http="auto",                   # httptools when installed, else h11
            interface="asgi3",
            log_level=None,
            proxy_headers=False,           # X-Forwarded-* are passed on to the engine, not trusted here
            date_header=False,             # the engine's own Server and Date headers are passed on
            timeout_keep_alive=self.keepalive_s,
            timeout_graceful_shutdown=self.graceful_s)
        await self.server.start(timeout_s)

    async def stop(self, timeout_s: float = 10.0) -> None:
        if self.server is not None:
            await self.server.stop(timeout_s)
