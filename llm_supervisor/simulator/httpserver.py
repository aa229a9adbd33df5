"""A small HTTP/1.1 server on asyncio streams: what the simulator's API needs (keep-alive,
Content-Length and chunked bodies, chunked streaming responses) and nothing more. It starts in
milliseconds, where importing FastAPI and uvicorn costs most of a simulated startup.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Awaitable, Callable

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
    413: "Request Entity Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}
MAX_HEADER = 64 * 1024
MAX_BODY = 64 * 1024 * 1024


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8") or "null")

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "1.0":
            return conn == "keep-alive"
        return conn != "close"


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> "Response":
        return cls(status, json.dumps(data, separators=(", ", ": ")).encode())


class BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader, peer: tuple[str, int]) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, proto = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("malformed request line") from None
    if not proto.startswith("HTTP/"):
        raise BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            total += size
            if total > MAX_BODY:
                raise BadRequest("body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise BadRequest("bad content-length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest("bad content-length")
        body = await reader.readexactly(length)
    return Request(method.upper(), target, proto[5:], headers, body, peer)


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    out = [f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}",
           f"date: {formatdate(usegmt=True)}", "server: uvicorn"]
    out += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


class Stream:
    """A chunked streaming response (server-sent events)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def send(self, data: bytes) -> None:
        if not data:
            return
        self.writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


Handler = Callable[[Request, "Exchange"], Awaitable[None]]


class Exchange:
    """One request's response side; the handler calls `respond` or `stream` once."""

    def __init__(self, req: Request, writer: asyncio.StreamWriter, on_start: Callable[[Request, int], None]) -> None:
        self.req = req
        self.writer = writer
        self.on_start = on_start
        self.status: int | None = None
        self.keep_alive = req.keep_alive

    async def respond(self, resp: Response) -> None:
        headers = [("content-length", str(len(resp.body)))]
        if resp.content_type:
            headers.append(("content-type", resp.content_type))
        headers += list(resp.headers.items())
        if not self.keep_alive:
            headers.append(("connection", "close"))
        self.status = resp.status
        self.on_start(self.req, resp.status)
        self.writer.write(_head(resp.status, headers) + resp.body)
        await self.writer.drain()

    async def stream(self, content_type: str = "text/event-stream; charset=utf-8") -> Stream:
        headers = [("content-type", content_type), ("transfer-encoding", "chunked")]
        if not self.keep_alive:
            headers.append(("connection", "close"))
        self.status = 200
        self.on_start(self.req, 200)
        self.writer.write(_head(200, headers))
        await self.writer.drain()
        return Stream(self.writer)


class HttpServer:
    def __init__(self, handler: Handler, on_start: Callable[[Request, int], None]) -> None:
        self.handler = handler
        self.on_start = on_start
        self.connections: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, sock: Any) -> None:
        self.server = await asyncio.start_server(self._serve, sock=sock, limit=MAX_HEADER, backlog=2048)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("unknown", 0)
        if not isinstance(peer, tuple):
            peer = (str(peer), 0)
        self.connections.add(writer)
        try:
            while True:
                try:
                    req = await read_request(reader, (peer[0], peer[1]))
                except BadRequest:
                    writer.write(_head(400, [("content-length", "11"), ("connection", "close")]) + b"Bad Request")
                    await writer.drain()
                    break
                if req is None:
                    break
                ex = Exchange(req, writer, self.on_start)
                await self.handler(req, ex)
                if not ex.keep_alive or ex.status is None:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            pass
        finally:
            self.connections.discard(writer)
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.connections):
            try:
                w.close()
            except Exception:  # noqa: BLE001
                pass
