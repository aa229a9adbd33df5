"""Keep-alive HTTP/1.1 connections to the engine: asyncio protocols, parsed by h11.

Why not httpx: its connection pool looks at every pooled connection for every request (and asks
each socket whether it is readable), which made the front door spend most of its CPU in the pool
with 64 streams; the streamed body also passes through anyio and three iterator layers per chunk.
Here a chunk costs one h11 event: the engine's bytes are parsed by h11 (no parsing by hand), and
the pool is a stack of idle connections.

Flow control both ways: reading from the engine pauses when the proxy falls behind (a slow client
slows the engine's connection, not the front door's memory), and writing a streamed request body
waits while the engine's socket is full.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator

import h11

# Stop reading from the engine when this much arrived that the proxy has not asked for yet.
READ_HIGH_WATER = 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024


class EngineUnreachable(Exception):
    """No connection to the engine could be made: nothing was sent."""


class EngineConnectionLost(Exception):
    """The connection to the engine broke (closed, reset, or a protocol error)."""


class Connection(asyncio.Protocol):
    """One connection to the engine, used by one request at a time."""

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._unread = 0

    # asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
        except RuntimeError:  # data after the engine closed its side: nothing to do with it
            return
        self._unread += len(data)
        if self._unread > READ_HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        try:
            self.h11.receive_data(b"")
        except RuntimeError:
            pass
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # used by the pool and the response ---------------------------------------------

    @property
    def reusable(self) -> bool:
        return not self.closed and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def write(self, event: h11.Event) -> None:
        if self.closed or self.transport is None:
            raise EngineConnectionLost("the engine closed the connection")
        data = self.h11.send(event)
        if data:
            self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain
        if self.closed:
            raise EngineConnectionLost("the engine closed the connection")

    async def next_event(self) -> h11.Event:
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise EngineConnectionLost(f"the engine broke the HTTP exchange ({exc})") from None
            if event is h11.NEED_DATA:
                if self.closed or conn.their_state is h11.CLOSED:
                    raise EngineConnectionLost("the engine closed the connection")
                self._unread = 0
                if self._read_paused and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            if isinstance(event, h11.ConnectionClosed):
                raise EngineConnectionLost("the engine closed the connection")
            return event  # type: ignore[return-value]

    def abort(self) -> None:
        """Close at once (a request given up: vLLM sees the disconnect and aborts it)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """The engine's answer: status, headers, then the body as an async iterator of chunks.
    `aclose()` gives a finished connection back to the pool, and closes an unfinished one."""

    __slots__ = ("_conn", "_done", "_pool", "headers", "status")

    def __init__(self, pool: Pool, conn: Connection, head: h11.Response) -> None:
        self._pool = pool
        self._conn = conn
        self._done = False
        self.status: int = head.status_code
        self.headers: list[tuple[bytes, bytes]] = list(head.headers.raw_items())

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        event = await self._conn.next_event()
        if type(event) is h11.Data:
            return bytes(event.data)
        if type(event) is h11.EndOfMessage:
            self._done = True
            self._pool.checkin(self._conn)
            raise StopAsyncIteration
        raise EngineConnectionLost(f"unexpected {type(event).__name__} from the engine")

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._conn.abort()


class Pool:
    """Connections to one engine (TCP host:port or a Unix socket)."""

    def __init__(self, host: str, port: int, uds: str | None, *, connect_timeout_s: float,
                 idle_s: float, max_idle: int) -> None:
        self.host, self.port, self.uds = host, port, uds
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._idle: list[Connection] = []
        self._closed = False

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes] | None) -> Response:
        """Send a request; returns once the engine's status line and headers arrived. Raises
        EngineUnreachable (nothing sent) or EngineConnectionLost."""
        conn = self._checkout() or await self._connect()
        try:
            try:
                conn.write(h11.Request(method=method, target=target, headers=headers))
            except h11.LocalProtocolError as exc:
                raise EngineConnectionLost(f"cannot send this request to the engine ({exc})") from None
            if isinstance(body, bytes):
                if body:
                    conn.write(h11.Data(data=body))
            elif body is not None:
                async for chunk in body:
                    conn.write(h11.Data(data=chunk))
                    await conn.drain()
            conn.write(h11.EndOfMessage())
            while True:
                event = await conn.next_event()
                if type(event) is h11.Response:
                    return Response(self, conn, event)
                if type(event) is not h11.InformationalResponse:
                    raise EngineConnectionLost(f"unexpected {type(event).__name__} from the engine")
        except BaseException:
            conn.abort()
            raise

    def _checkout(self) -> Connection | None:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_s:
                return conn
            conn.abort()
        return None

    def checkin(self, conn: Connection) -> None:
        if self._closed or not conn.reusable or len(self._idle) >= self.max_idle:
            conn.abort()
            return
        conn.h11.start_next_cycle()
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.uds is not None:
                connect = loop.create_unix_connection(Connection, self.uds)
            else:
                connect = loop.create_connection(Connection, self.host, self.port)
            _transport, conn = await asyncio.wait_for(connect, self.connect_timeout_s)
        except asyncio.TimeoutError:
            raise EngineUnreachable(f"connecting to the engine timed out ({self.connect_timeout_s:g} s)") from None
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise EngineUnreachable("the engine refused the connection") from None
            raise EngineUnreachable(f"cannot connect to the engine ({exc.strerror or exc})") from None
        return conn

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
