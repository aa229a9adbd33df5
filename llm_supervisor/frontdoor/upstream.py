"""The engine behind the front door: its address and a keep-alive connection pool to it.

One Upstream per engine generation, so no connection to a dead engine is ever reused for its
successor (which may listen on the same port). `HttpxUpstream` is the test seam: any httpx
transport (MockTransport, …) stands in for the engine, behind the same small interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import httpx

from llm_supervisor.frontdoor.connection import (
    EngineConnectionLost,
    EngineUnreachable,
    Pool,
)

# Idle pooled connections are dropped before vLLM's uvicorn drops them (its keep-alive is 5 s), so
# a request is never written to a connection the engine is closing at that moment.
POOL_IDLE_S = 4.0
POOL_IDLE_MAX = 256


class EngineResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


def parse_address(url: str) -> tuple[str, int, str | None]:
    """(host, port, Unix socket path or None) for `http://127.0.0.1:41231` or `unix:/run/x.sock`."""
    if url.startswith("unix:"):
        path = url[len("unix:"):].removeprefix("//")
        if not path.startswith("/"):
            raise ValueError(f"engine address {url!r}: a Unix socket needs an absolute path (unix:/run/engine.sock)")
        return "localhost", 80, path
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"engine address {url!r}: {exc}") from None
    if parsed.scheme != "http" or not parsed.host:
        raise ValueError(f"engine address {url!r}: expected http://HOST:PORT or unix:/PATH")
    if parsed.raw_path not in (b"", b"/") or parsed.query:
        raise ValueError(f"engine address {url!r}: give the server's base address, without a path")
    return parsed.host, parsed.port or 80, None


class Upstream:
    """Where the requests of one engine generation go."""

    def __init__(self, address: str, *, connect_timeout_s: float) -> None:
        host, port, uds = parse_address(address)
        self.address = address
        self.pool = Pool(host, port, uds, connect_timeout_s=connect_timeout_s, idle_s=POOL_IDLE_S,
                         max_idle=POOL_IDLE_MAX)

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes] | None) -> EngineResponse:
        return await self.pool.request(method, target, headers, body)

    async def aclose(self) -> None:
        await self.pool.aclose()


class HttpxUpstream:
    """The same interface over an httpx transport (for tests: the transport is not closed here)."""

    def __init__(self, address: str, transport: httpx.AsyncBaseTransport, *, connect_timeout_s: float) -> None:
        host, port, uds = parse_address(address)
        self.address = address
        self.base = httpx.URL("http://localhost") if uds else httpx.URL(scheme="http", host=host, port=port)
        self.transport = transport
        self.extensions = {"timeout": {"connect": connect_timeout_s, "read": None, "write": None, "pool": None}}

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes] | None) -> EngineResponse:
        request = httpx.Request(method.decode("ascii"), self.base.copy_with(raw_path=target), headers=headers,
                                content=body, extensions=self.extensions)
        try:
            response = await self.transport.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise EngineUnreachable(str(exc) or "the engine refused the connection") from None
        except httpx.TransportError as exc:
            raise EngineConnectionLost(str(exc) or "the engine closed the connection") from None
        return _HttpxResponse(response)

    async def aclose(self) -> None:
        return None


class _HttpxResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.stream.__aiter__()  # type: ignore[union-attr]
        self.status = response.status_code
        self.headers = list(response.headers.raw)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except httpx.TransportError as exc:
            raise EngineConnectionLost(str(exc) or "the engine closed the connection") from None

    async def aclose(self) -> None:
        await self._response.aclose()
