"""The engine behind the front door: its address and a keep-alive connection pool to it.

One Upstream per engine generation, so no connection to a dead engine is ever reused for its
successor (which may listen on the same port).
"""

from __future__ import annotations

from typing import Any

import httpx

# Idle pooled connections are dropped before vLLM's uvicorn drops them (its keep-alive is 5 s), so
# a request is never written to a connection the engine is closing at that moment.
POOL_IDLE_S = 4.0
POOL_IDLE_MAX = 256


def parse_address(url: str) -> tuple[str, str | None]:
    """(base URL, Unix socket path or None) for `http://127.0.0.1:41231` or `unix:/run/x.sock`."""
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        path = path.removeprefix("//")
        if not path.startswith("/"):
            raise ValueError(f"engine address {url!r}: a Unix socket needs an absolute path (unix:/run/engine.sock)")
        return "http://localhost", path
    parsed = httpx.URL(url)
    if parsed.scheme != "http" or not parsed.host:
        raise ValueError(f"engine address {url!r}: expected http://HOST:PORT or unix:/PATH")
    if parsed.path not in ("", "/") or parsed.query:
        raise ValueError(f"engine address {url!r}: give the server's base address, without a path")
    return f"http://{parsed.netloc.decode('ascii')}", None


class Upstream:
    """Where requests of one engine generation go."""

    def __init__(self, url: str, *, connect_timeout_s: float,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        base, uds = parse_address(url)
        self.address = url
        self.base = httpx.URL(base)
        self.owns_transport = transport is None
        self.transport: httpx.AsyncBaseTransport = transport or httpx.AsyncHTTPTransport(
            uds=uds,
            retries=0,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=POOL_IDLE_MAX,
                                keepalive_expiry=POOL_IDLE_S),
        )
        # no read, write or pool timeout: a long generation (or a slow client) is legitimate
        self.extensions: dict[str, Any] = {
            "timeout": {"connect": connect_timeout_s, "read": None, "write": None, "pool": None}}

    def url(self, raw_target: bytes) -> httpx.URL:
        return self.base.copy_with(raw_path=raw_target)

    async def aclose(self) -> None:
        if self.owns_transport:
            await self.transport.aclose()
