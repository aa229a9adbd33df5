"""An OpenAI-compatible streaming engine for the bench's tests, scheduled as vLLM schedules: every
step decodes one token for each running request (at most `max_seqs` run; the rest wait in arrival
order and are admitted when a step ends) and takes `step_s + per_seq_s × running` on its clock.

Two doors to the one engine: `transport` (httpx, in the test's own loop; with tests/fakes.py's
VirtualClock every figure a bench measures is exact, however busy the machine) and `serve()`
(uvicorn on a real port, the machine's clock; for the CLI, which takes a URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from daemon_harness import free_port
from llm_supervisor.clock import Clock, SystemClock

GENERATE = ("/v1/completions", "/v1/chat/completions")
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}
BROKEN = object()  # the engine died mid-stream

__all__ = ["SteppedEngine", "asgi_body", "free_port"]


async def asgi_body(receive: Any) -> bytes:
    """The whole body of an ASGI request."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


@dataclass
class _Request:
    number: int
    path: str
    body: dict[str, Any]
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    generated: int = 0

    @property
    def max_tokens(self) -> int:
        return int(self.body["max_tokens"])

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        data: dict[str, Any] = {"id": f"cmpl-{self.number}", "object": "chat.completion.chunk",
                                "model": self.body["model"], "choices": choices}
        if usage is not None:
            data["usage"] = usage
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    def token(self) -> bytes:
        i = self.generated - 1
        choice = ({"index": 0, "text": f"t{i} "} if self.path == "/v1/completions"
                  else {"index": 0, "delta": {"content": f"t{i} "}})
        return self.chunk([choice])

    def end(self) -> list[bytes]:
        usage = {"prompt_tokens": 12, "completion_tokens": self.generated, "total_tokens": self.generated + 12}
        return [self.chunk([], usage), b"data: [DONE]\n\n"]


class SteppedEngine:
    """`fail_500` and `broken` name requests by arrival number (from 1): the first answer HTTP 500,
    the second stop half-way (the connection drops, as when vLLM dies)."""

    def __init__(self, clock: Clock | None = None, *, step_s: float = 0.025, per_seq_s: float = 0.0,
                 max_seqs: int = 2, fail_500: set[int] = frozenset(), broken: set[int] = frozenset(),
                 api_key: str | None = None, status: dict[str, Any] | None = None,
                 kv_max_concurrency: str | None = "11.0464") -> None:
        self.clock = clock or SystemClock()
        self.step_s, self.per_seq_s, self.max_seqs = step_s, per_seq_s, max_seqs
        self.fail_500, self.broken, self.api_key = set(fail_500), set(broken), api_key
        self.status, self.kv_max_concurrency = status, kv_max_concurrency
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.arrivals = 0
        self.max_running = 0
        self.steps = 0
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # (path, body) of every generation request
        self.transport = httpx.MockTransport(self.handle)
        self.url = "http://engine.test"
        self._stepper: asyncio.Task | None = None

    # ------------------------------------------------------------ the scheduler

    async def _run_steps(self) -> None:
        while self.waiting or self.running:
            while self.waiting and len(self.running) < self.max_seqs:
                self.running.append(self.waiting.popleft())
            self.max_running = max(self.max_running, len(self.running))
            await self.clock.sleep(self.step_s + self.per_seq_s * len(self.running))
            self.steps += 1
            for req in list(self.running):
                req.generated += 1
                if req.number in self.broken and req.generated > req.max_tokens // 2:
                    self.running.remove(req)
                    req.out.put_nowait(BROKEN)
                    continue
                req.out.put_nowait(req.token())
                if req.generated >= req.max_tokens:
                    self.running.remove(req)
                    for item in (*req.end(), None):
                        req.out.put_nowait(item)

    def _abort(self, req: _Request) -> None:
        """The client went away: vLLM aborts the request."""
        if req in self.running:
            self.running.remove(req)
        if req in self.waiting:
            self.waiting.remove(req)

    async def _stream(self, req: _Request) -> AsyncIterator[bytes]:
        try:
            yield req.chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            while True:
                item = await req.out.get()
                if item is None:
                    return
                if item is BROKEN:
                    raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
                yield item
        finally:
            self._abort(req)

    # ------------------------------------------------------------ HTTP

    def _authorized(self, request: httpx.Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    def _metrics(self) -> str:
        lines = [f'vllm:num_requests_running{{engine="0",model_name="fake-model"}} {float(len(self.running))}',
                 f'vllm:num_requests_waiting{{engine="0",model_name="fake-model"}} {float(len(self.waiting))}']
        if self.kv_max_concurrency:
            lines.append('vllm:cache_config_info{block_size="16",engine="0",kv_cache_max_concurrency="'
                         f'{self.kv_max_concurrency}",kv_cache_size_tokens="110464"}} 1.0')
        return "\n".join(lines) + "\n"

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/metrics":
            return httpx.Response(200, text=self._metrics())
        if path == "/status":
            return httpx.Response(200, json=self.status) if self.status is not None else httpx.Response(404)
        if not self._authorized(request):
            return httpx.Response(401, json={"error": "unauthorized"})
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        if path not in GENERATE or request.method != "POST":
            return httpx.Response(404)
        body = json.loads(request.content)
        self.bodies.append((path, body))
        self.arrivals += 1
        if self.arrivals in self.fail_500:
            return httpx.Response(500, json={"error": "boom"})
        if body.get("stream") is not True or body.get("stream_options") != STREAM_OPTIONS:
            return httpx.Response(400, json={"error": "the bench streams with usage on every chunk"})
        req = _Request(self.arrivals, path, body)
        self.waiting.append(req)
        if self._stepper is None or self._stepper.done():
            self._stepper = asyncio.get_running_loop().create_task(self._run_steps())
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=self._stream(req))

    # ------------------------------------------------------------ a real port

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await asgi_body(receive)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        response = await self.handle(httpx.Request(scope["method"], self.url + scope["path"], headers=headers,
                                                   content=body))
        framing = ("transfer-encoding", "content-length") if "content-length" not in response.headers else ()
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [(k.encode(), v.encode()) for k, v in response.headers.items() if k not in framing]})

        async def pump() -> None:
            try:
                data = response.content  # an answer made whole
            except httpx.ResponseNotRead:  # a stream
                async for data in response.aiter_raw():
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                data = b""
            await send({"type": "http.response.body", "body": data})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        pumping, listening = asyncio.ensure_future(pump()), asyncio.ensure_future(gone())
        await asyncio.wait((pumping, listening), return_when=asyncio.FIRST_COMPLETED)
        for task in (pumping, listening):
            task.cancel()
        await asyncio.gather(pumping, listening, return_exceptions=True)
        await response.aclose()
        if not pumping.cancelled() and pumping.exception() is not None:
            raise pumping.exception()  # uvicorn drops the connection mid-body, as a dying vLLM does

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on 127.0.0.1 (a thread running uvicorn) until the block ends; yields the URL."""
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(self._asgi, host="127.0.0.1", port=port, log_level="critical",
                                               lifespan="off", interface="asgi3"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the fake engine did not start")
            time.sleep(0.02)
        self.url, self.port = f"http://127.0.0.1:{port}", port
        try:
            yield self.url
        finally:
            server.should_exit = True
            thread.join(timeout=10)
