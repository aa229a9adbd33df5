"""The front door's ASGI app: one client request forwarded to the engine, its answer passed back.

The life of one request (an Exchange):
1. Its body is read and kept when it is no larger than `retry_body_limit_bytes` (so the request
   can be sent again); a larger body is streamed to the engine as it arrives and never re-sent.
2. It asks the Gate for a ticket: sent now, held (engine not ready), queued (no free slot), or
   answered by the front door itself (503/429 with an OpenAI-shaped error body).
3. It goes to the engine over a pooled keep-alive connection. The engine's status line and headers
   are passed on only together with the first body bytes, so a request whose engine fails before
   answering has sent the client nothing: it is held and re-sent to the relaunched engine.
4. The body is passed through chunk by chunk, never buffered whole. Server-sent events are passed
   on whole events at a time, so a stream the engine breaks off ends with a clean error event and
   `data: [DONE]`, as vLLM ends a failed stream. A plain body broken off mid-way can only be cut:
   the client connection is closed.
5. A watcher on `receive()` notices the client leaving and cancels the request: closing the
   connection to the engine makes vLLM abort it.

Nothing here logs headers or bodies (the Authorization header is passed through untouched).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from llm_supervisor.clock import Clock
from llm_supervisor.config.frontdoor import FrontDoorConfig
from llm_supervisor.frontdoor.connection import EngineConnectionLost, EngineUnreachable
from llm_supervisor.frontdoor.gate import EngineState, Gate, Rejected, Ticket
from llm_supervisor.frontdoor.upstream import EngineResponse

log = logging.getLogger("llm_supervisor.frontdoor")

# Set in a request's task when the front door leaves a response unfinished on purpose (the engine
# broke it off): uvicorn then closes the connection and logs a generic error, which
# server.QuietCutFilter drops in favour of the front door's own warning.
CUT_ON_PURPOSE: contextvars.ContextVar[bool] = contextvars.ContextVar("frontdoor_cut_on_purpose", default=False)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded (plus the names the
# Connection header lists). Proxy-* are for a proxy, not for the engine or the client.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
# Also rebuilt for the engine: the body framing, the forwarding trail, and Expect (the client's
# 100-continue was answered here already).
REQUEST_REBUILT = HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for", b"via"}
VIA = b"1.1 llm-supervisor"

# How vLLM says that its engine died (V1 EngineDeadError since 0.8; V0 AsyncEngineDeadError).
ENGINE_DEAD_MARKERS = (b"EngineCore encountered an issue", b"EngineDeadError", b"AsyncEngineDeadError",
                       b"Background loop has errored already")
ERROR_PEEK_BYTES = 64 * 1024
SSE_ERROR_PREFIX = b'data: {"error"'
DONE_EVENT = b"data: [DONE]\n\n"
# An event-stream body with no event boundary in this many bytes is passed on as it is.
SSE_MAX_PENDING = 1024 * 1024

ERROR_TYPES = {429: "RateLimitError", 502: "BadGatewayError", 503: "ServiceUnavailableError"}


def error_body(message: str, status: int) -> bytes:
    """An OpenAI-shaped error, as vLLM writes its own: {"error": {message, type, param, code}}."""
    kind = ERROR_TYPES.get(status, "ServiceUnavailableError")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def sse_error_event(message: str, status: int = 503) -> bytes:
    """The event vLLM sends when a stream fails (`data: {"error": …}`), to be followed by [DONE]."""
    return b"data: " + error_body(message, status) + b"\n\n"


def events_end(data: bytes) -> int:
    """Length of the prefix of `data` made of complete server-sent events (0: none complete)."""
    if data.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")):
        return len(data)
    best = 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = data.rfind(sep)
        if i >= 0:
            best = max(best, i + len(sep))
    return best


def engine_dead(body: bytes) -> bool:
    return any(marker in body for marker in ENGINE_DEAD_MARKERS)


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The engine's response headers as the client gets them, and whether the body is an event stream."""
    out: list[tuple[bytes, bytes]] = []
    listed: set[bytes] = set()
    sse = False
    for name, value in raw:
        name = name.lower()
        if name in HOP_BY_HOP:
            if name == b"connection":
                listed.update(t.strip().lower() for t in value.split(b","))
            continue
        if name == b"content-type" and value[:17].lower() == b"text/event-stream":
            sse = True
        out.append((name, value))
    if listed:
        out = [h for h in out if h[0] not in listed]
    return out, sse


class ClientGone(Exception):
    """The client disconnected while its request body was being read."""


class _Failed:
    """An attempt that sent the client nothing: why, and the engine's own answer when it gave one."""

    __slots__ = ("detail", "kind", "response")

    def __init__(self, kind: str, detail: str,
                 response: tuple[int, list[tuple[bytes, bytes]], bytes] | None = None) -> None:
        self.kind = kind          # refused | closed | cut | engine_error
        self.detail = detail
        self.response = response


def _uncancel() -> None:
    """After handling a cancellation we asked for ourselves (Python 3.11+ counts them)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


class FrontDoorApp:
    """The ASGI application (HTTP only: lifespan is off and WebSocket is not served)."""

    def __init__(self, gate: Gate, config: FrontDoorConfig, clock: Clock) -> None:
        self.gate = gate
        self.config = config
        self.clock = clock
        self.probe_paths = frozenset(config.probe_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await Exchange(self, scope, receive, send).run()


class Exchange:
    """One client request and its answer."""

    __slots__ = (
        "app",
        "body",
        "body_done",
        "body_touched",
        "client_gone",
        "cut_requested",
        "finished",
        "gate",
        "gone_counted",
        "headers",
        "last_sent",
        "length",
        "method",
        "no_body",
        "outcome",
        "prefix",
        "probe",
        "receive",
        "scope",
        "send",
        "sse",
        "started",
        "target",
        "ticket",
        "watcher",
        "work",
    )

    def __init__(self, app: FrontDoorApp, scope: Scope, receive: Receive, send: Send) -> None:
        self.app = app
        self.gate = app.gate
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: bytes = scope["method"].encode("ascii")
        self.probe = scope["path"] in app.probe_paths
        self.body: bytes | None = b""       # kept body; None when it is streamed
        self.length: int | None = None       # the client's Content-Length (None: none, or chunked)
        self.prefix: list[bytes] = []        # what was read of a streamed body before it grew too large
        self.no_body = False
        self.body_done = True
        self.body_touched = False            # a streamed body has been (partly) sent: no re-send
        self.work: asyncio.Task[None] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.client_gone = False
        self.gone_counted = False
        self.finished = False                # the answer is complete (or given up): ignore cuts
        self.started = False                 # the client has the status line
        self.sse = False
        self.last_sent = b""
        self.ticket: Ticket | None = None
        self.cut_requested = False
        self.outcome = "retry"

    # ------------------------------------------------------------------ the request

    async def run(self) -> None:
        self.gate.counters.requests += 1
        length = self._prepare()
        try:
            await self._read_body(length)
        except ClientGone:
            self._count_gone()
            return
        self.work = asyncio.get_running_loop().create_task(self._attempts())
        if self.body_done:
            self._watch()
        try:
            await self.work
        finally:
            if self.watcher is not None:
                self.watcher.cancel()
        if self.outcome == "cut_response":
            CUT_ON_PURPOSE.set(True)  # in uvicorn's task, which logs once this returns

    def _prepare(self) -> int | None:
        """The request head for the engine; returns the body's Content-Length (None: unknown)."""
        scope = self.scope
        out: list[tuple[bytes, bytes]] = []
        listed: set[bytes] = set()
        length: int | None = None
        chunked = False
        forwarded_for: list[bytes] = []
        via: list[bytes] = []
        proto = False
        host = False
        for name, value in scope["headers"]:
            if name in REQUEST_REBUILT or name[:6] == b"proxy-":
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"connection":
                    listed.update(t.strip().lower() for t in value.split(b","))
                elif name == b"x-forwarded-for":
                    forwarded_for.append(value)
                elif name == b"via":
                    via.append(value)
                continue
            if name == b"x-forwarded-proto":
                proto = True
            elif name == b"host":
                host = True
            out.append((name, value))
        if listed:
            out = [h for h in out if h[0] not in listed]
        client = scope.get("client")
        if client:
            forwarded_for.append(str(client[0]).encode("latin-1"))
        if forwarded_for:
            out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        if not proto:
            out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("latin-1")))
        out.append((b"via", b", ".join([*via, VIA])))
        if not host:  # an HTTP/1.0 client may send none; HTTP/1.1 to the engine needs one
            server = scope.get("server")
            out.append((b"host", f"{server[0]}:{server[1]}".encode("latin-1") if server else b"localhost"))
        if chunked:
            length = None
        elif length is None:
            self.no_body = True
        self.length = length
        self.headers = out
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string")
        self.target = raw_path + b"?" + query if query else raw_path
        return length

    async def _read_body(self, length: int | None) -> None:
        """Keep a body up to the retry limit; leave a larger one to stream (`body` None). Then
        frame it for the engine: Content-Length when known, else chunked."""
        if self.no_body:
            return
        if length == 0:
            self.headers.append((b"content-length", b"0"))
            return
        limit = self.app.config.retry_body_limit_bytes
        if length is not None and length > limit:
            self.body, self.body_done = None, False
            self.headers.append((b"content-length", str(length).encode()))
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                parts.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False):
                self.body = b"".join(parts)
                self.headers.append((b"content-length", str(size).encode()))
                return
            if size > limit:
                self.body, self.prefix, self.body_done = None, parts, False
                self.headers.append((b"content-length", str(length).encode()) if length is not None
                                    else (b"transfer-encoding", b"chunked"))
                return

    async def _body_stream(self) -> AsyncIterator[bytes]:
        self.body_touched = True
        prefix, self.prefix = self.prefix, []
        for part in prefix:
            yield part
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self.body_done = True
        self._watch()

    def _watch(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if self.finished:
            return  # uvicorn says "disconnect" once the response is complete, too
        self.client_gone = True
        if self.work is not None and not self.work.done():
            self.work.cancel()

    def _count_gone(self) -> None:
        if not self.gone_counted:
            self.gone_counted = True
            self.gate.counters.outcomes["client_gone"] += 1

    # ------------------------------------------------------------------ attempts

    async def _attempts(self) -> None:
        try:
            await self._attempt_loop()
        except asyncio.CancelledError:
            if not self.client_gone:
                raise
            self._count_gone()
        except ClientGone:
            self._count_gone()

    async def _attempt_loop(self) -> None:
        gate, config = self.gate, self.app.config
        resends = 0
        min_generation = 0
        retry = False
        same_engine_retry = True
        while True:
            try:
                ticket = gate.try_admit(probe=self.probe, min_generation=min_generation, retry=retry)
                if ticket is None:
                    ticket = await gate.wait_admit(min_generation=min_generation, retry=retry)
            except Rejected as rejected:
                await self._answer_error(rejected.status, rejected.message, rejected.retry_after_s)
                return
            failed = await self._forward(ticket)
            if failed is None:
                return
            if self.client_gone:
                self._count_gone()
                return
            why = self._not_resendable(resends)
            if why is None and failed.kind == "closed" and same_engine_retry \
                    and gate.state is EngineState.READY and gate.generation == ticket.generation:
                # closed without an answer, the engine still up: a keep-alive race, or the engine
                # dying; one more try at the same engine tells which (not counted as a re-send)
                same_engine_retry = False
                min_generation, retry = ticket.generation, True
                continue
            if why is None and resends < config.max_retries:
                resends += 1
                gate.counters.retried += 1
                min_generation, retry = ticket.generation + 1, True
                continue
            why = why or f"it was re-sent {resends} time(s) already (max_retries)"
            if self.probe:
                gate.count_rejected("not_ready")
                await self._answer_error(503, f"The model is not ready: {failed.detail}.", gate.retry_after_hint())
                return
            gate.count_rejected("engine_lost")
            if failed.response is not None:
                await self._answer_buffered(*failed.response)
            else:
                await self._answer_error(503, f"The model server failed before answering this request "
                                         f"({failed.detail}); it was not re-sent: {why}.", gate.retry_after_hint())
            return

    def _not_resendable(self, resends: int) -> str | None:
        if self.probe:
            return "a probe is answered at once"
        if self.body is None and self.body_touched:
            return "its body was larger than retry_body_limit_bytes and was streamed to the engine"
        return None

    # ------------------------------------------------------------------ one attempt

    def _on_cut(self, ticket: Ticket) -> None:
        if self.ticket is ticket and not self.finished and self.work is not None and not self.work.done():
            self.cut_requested = True
            self.work.cancel()

    async def _forward(self, ticket: Ticket) -> _Failed | None:
        """One attempt at the engine of `ticket`; None when the client has its answer (or left)."""
        self.ticket = ticket
        self.outcome = "retry"
        self.cut_requested = False
        ticket.on_cut = lambda _reason: self._on_cut(ticket)
        started_at = self.app.clock.monotonic()
        response: EngineResponse | None = None
        try:
            if ticket.cut_reason is not None:
                return _Failed("cut", ticket.cut_reason)
            try:
                body = None if self.no_body else self.body if self.body is not None else self._body_stream()
                response = await ticket.upstream.request(self.method, self.target, self.headers, body)
                return await self._relay(response)
            except asyncio.CancelledError:
                if self.client_gone or not self.cut_requested:
                    if self.client_gone:
                        self.outcome = "client_gone"
                        self.gone_counted = True
                    raise
                _uncancel()
                self.cut_requested = False
                return await self._broken(ticket.cut_reason or "cut", cut=True)
            except ClientGone:
                self.outcome = "client_gone"
                self.gone_counted = True
                return None
            except EngineUnreachable as exc:
                return await self._broken(str(exc), refused=True)
            except EngineConnectionLost as exc:
                return await self._broken(str(exc))
        finally:
            self.ticket = None
            if response is not None:
                await self._close(response)
            self.gate.release(ticket, self.outcome, self.app.clock.monotonic() - started_at)

    async def _close(self, response: EngineResponse) -> None:
        try:
            await response.aclose()
        except asyncio.CancelledError:
            if self.client_gone or not self.cut_requested:
                raise
            _uncancel()
        except Exception as exc:  # noqa: BLE001 - closing a connection the engine already broke
            log.debug("front door: closing an engine response: %r", exc)

    async def _relay(self, response: EngineResponse) -> _Failed | None:
        status = response.status
        headers, sse = response_headers(response.headers)
        self.sse = sse
        chunks = response.__aiter__()
        first = await _next(chunks)
        ended = first is None
        if (status >= 500 or (sse and first is not None and first.startswith(SSE_ERROR_PREFIX))) \
                and self._not_resendable(0) is None:
            # an error before any byte reached the client: if it is the engine saying it died, re-send
            parts = [first] if first else []
            size = len(first or b"")
            while not sse and not ended and size <= ERROR_PEEK_BYTES:
                chunk = await _next(chunks)
                if chunk is None:
                    ended = True
                else:
                    parts.append(chunk)
                    size += len(chunk)
            first = b"".join(parts) if parts else None
            if first is not None and (ended or sse) and engine_dead(first):
                return _Failed("engine_error", "the engine reported that it died", (status, headers, first))
        send = self.send
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self.started = True
        if ended:
            self.finished = True
            await response.aclose()
            self.outcome = "completed"
            await send({"type": "http.response.body", "body": first or b"", "more_body": False})
            return None
        if sse:
            await self._pump_events(chunks, first or b"")
        else:
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.finished = True
        await response.aclose()
        self.outcome = "completed"
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return None

    async def _pump_events(self, chunks: AsyncIterator[bytes], first: bytes) -> None:
        """Pass an event stream on, whole events at a time (what is left over waits for the rest)."""
        send = self.send
        pending = b""
        chunk: bytes | None = first
        while chunk is not None:
            if pending:
                chunk = pending + chunk
                pending = b""
            end = events_end(chunk)
            if end < len(chunk) and len(chunk) < SSE_MAX_PENDING:
                chunk, pending = chunk[:end], chunk[end:]
            if chunk:
                self.last_sent = chunk
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await _next(chunks)
        if pending:  # the engine ended the stream inside an event: pass it on as it is
            self.last_sent = pending
            await send({"type": "http.response.body", "body": pending, "more_body": True})

    async def _broken(self, why: str, *, refused: bool = False, cut: bool = False) -> _Failed | None:
        """The engine connection failed (or was cut): re-send if nothing reached the client yet,
        else end the answer as cleanly as its kind allows."""
        if not self.started:
            self.outcome = "retry"
            return _Failed("refused" if refused else ("cut" if cut else "closed"), why)
        self.finished = True
        if not self.sse:
            # a plain body cut mid-way: returning without completing it makes uvicorn close the
            # connection, so the client sees a truncated response, never a short "complete" one
            self.outcome = "cut_response"
            log.warning("front door: the engine broke off a response mid-body (%s); closed the client's "
                        "connection", why)
            return None
        if self.last_sent.endswith(DONE_EVENT):
            self.outcome = "completed"
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
            return None
        self.outcome = "cut_stream"
        event = sse_error_event(f"The model server stopped while streaming this response ({why}); "
                                "the response is incomplete.")
        await self.send({"type": "http.response.body", "body": event + DONE_EVENT, "more_body": False})
        return None

    # ------------------------------------------------------------------ answers of our own

    async def _answer_error(self, status: int, message: str, retry_after_s: int | None) -> None:
        body = error_body(message, status)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after_s is not None:
            headers.append((b"retry-after", str(retry_after_s).encode()))
        self.finished = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _answer_buffered(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.finished = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
