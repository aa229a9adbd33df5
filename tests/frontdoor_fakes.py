"""Test doubles for the front door: a fake clock, a scriptable fake engine behind
httpx.MockTransport, a front door running in the test's loop, and polling helpers.

Waiting is always polling against a generous deadline; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from llm_supervisor.frontdoor import FrontDoor, FrontDoorConfig

DEADLINE_S = 30.0
ENGINE_DEAD = ("EngineCore encountered an issue. See stack trace (above) for the root cause.")


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Monotonic time that moves only when the test says so; timers fire on `advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _when, _seq, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()


async def until(predicate: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition") -> Any:
    """Poll `predicate` (sync) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def run(coro: Awaitable[Any], timeout: float = 4 * DEADLINE_S) -> Any:
    """Run a test scenario; a scenario stuck past `timeout` fails instead of hanging the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------- a fake engine


Behaviour = Callable[[httpx.Request], Awaitable[httpx.Response]]


class FakeEngine:
    """Stands in for every engine behind the front door (MockTransport). Each engine address
    (http://HOST:PORT) gets a behaviour; unknown addresses refuse connections. Requests are
    recorded with the address they reached."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.seen: list[tuple[str, httpx.Request, bytes]] = []
        self.cancelled: list[str] = []   # requests whose response stream the front door abandoned

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        address = f"http://{request.url.host}:{request.url.port}"
        self.seen.append((address, request, request.content))
        behaviour = self.behaviours.get(address)
        if behaviour is None:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await behaviour(request)

    def paths(self, address: str | None = None) -> list[str]:
        return [r.url.path for a, r, _b in self.seen if address is None or a == address]


def answer_json(data: Any = None, status: int = 200) -> Behaviour:
    async def behaviour(request: httpx.Request) -> httpx.Response:
        body = data if data is not None else {"object": "list", "path": request.url.path}
        return httpx.Response(status, json=body, headers={"server": "fake-engine"})
    return behaviour


def engine_dead_500() -> Behaviour:
    """What vLLM answers a non-streamed request when its EngineCore died."""
    async def behaviour(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": ENGINE_DEAD, "type": "InternalServerError", "param": None, "code": 500}}
        return httpx.Response(500, json=body)
    return behaviour


def refuse() -> Behaviour:
    async def behaviour(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
    return behaviour


def close_without_answer(then: Behaviour) -> Behaviour:
    """The first request's connection is closed before any answer; later ones get `then`."""
    calls = {"n": 0}

    async def behaviour(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return await then(request)
    return behaviour


class Scripted:
    """A response whose body chunks the test feeds: `await feed(b"...")`; `feed(exc)` breaks the
    connection; `end()` completes it. `cancelled` is set when the front door abandons it."""

    def __init__(self, engine: FakeEngine, status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.engine = engine
        self.status = status
        self.headers = headers if headers is not None else {"content-type": "text/event-stream; charset=utf-8"}
        self.queues: list[asyncio.Queue[Any]] = []
        self.started = asyncio.Event()
        self.cancelled = False

    async def behaviour(self, request: httpx.Request) -> httpx.Response:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self.queues.append(queue)
        self.started.set()
        return httpx.Response(self.status, headers=self.headers, content=self._body(queue))

    async def _body(self, queue: asyncio.Queue[Any]) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        except asyncio.CancelledError:
            self.cancelled = True
            self.engine.cancelled.append("stream")
            raise

    def feed(self, item: Any, which: int = -1) -> None:
        self.queues[which].put_nowait(item)

    def end(self, which: int = -1) -> None:
        self.queues[which].put_nowait(None)


class Pending:
    """A non-streamed answer that arrives only when the test calls `answer()`."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self._go: list[asyncio.Future[httpx.Response]] = []

    async def behaviour(self, request: httpx.Request) -> httpx.Response:
        future: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()
        self._go.append(future)
        self.arrived.set()
        return await future

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._go if not f.done())

    def answer(self, data: Any = None, status: int = 200) -> None:
        for future in self._go:
            if not future.done():
                future.set_result(httpx.Response(status, json=data if data is not None else {"ok": True}))
                return
        raise AssertionError("no request is waiting for an answer")


# ---------------------------------------------------------------------- a front door in the test's loop


@contextlib.asynccontextmanager
async def door_running(config: FrontDoorConfig | None = None, *, engine: FakeEngine | None = None,
                       clock: Any = None, transport: httpx.AsyncBaseTransport | None = None,
                       ) -> AsyncIterator[tuple[FrontDoor, str]]:
    if transport is None and engine is not None:
        transport = engine.transport()
    door = FrontDoor(config or FrontDoorConfig(), clock=clock, transport=transport)
    await door.start("127.0.0.1", 0)
    try:
        yield door, f"http://127.0.0.1:{door.port}"
    finally:
        await door.stop()


def client(**kw: Any) -> httpx.AsyncClient:
    kw.setdefault("timeout", httpx.Timeout(DEADLINE_S, connect=5.0))
    return httpx.AsyncClient(trust_env=False, **kw)


def chat(stream: bool = False, max_tokens: int = 8, model: str = "qwen3-4b") -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello"}]}


def sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


def events(raw: bytes) -> list[bytes]:
    """The data payloads of an event stream, in order."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: "):
                out.append(line[6:])
    return out
