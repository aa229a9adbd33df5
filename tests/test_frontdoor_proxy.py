"""The front door over real sockets in the test's own loop, with fake engines behind it
(httpx.MockTransport, or small uvicorn apps for the raw-bytes and Unix-socket cases)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from bench_fakes import asgi_body
from frontdoor_fakes import (
    ENGINE_DEAD,
    FakeClock,
    FakeEngine,
    Pending,
    Scripted,
    answer_json,
    chat,
    client,
    close_without_answer,
    door_running,
    engine_dead_500,
    events,
    refuse,
    run,
    sse,
    until,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from llm_supervisor.api.embedded import BindError
from llm_supervisor.frontdoor import FrontDoor, FrontDoorConfig
from llm_supervisor.frontdoor.proxy import events_end

A = "http://engine-a:8000"
B = "http://engine-b:8000"


async def open_stream(c: httpx.AsyncClient, url: str, body: Any = None) -> httpx.Response:
    """Send a request and return once the status line arrived, the body still to read. The front
    door passes the engine's status line on with the first body bytes, so a test feeds those
    before awaiting this."""
    request = c.build_request("POST" if body is not None else "GET", url, json=body)
    return await c.send(request, stream=True)


@contextlib.asynccontextmanager
async def response_of(head: asyncio.Future[httpx.Response]) -> AsyncIterator[httpx.Response]:
    response = await head
    try:
        yield response
    finally:
        await response.aclose()


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status
    return body["error"]


# ---------------------------------------------------------------------- holding


def test_requests_wait_for_the_first_start() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        engine.behaviours[A] = answer_json({"data": [{"id": "qwen3-4b"}]})
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_starting(eta_s=60)
            pending = [asyncio.ensure_future(c.get(url + "/v1/models")) for _ in range(3)]
            await until(lambda: door.stats()["held"] == 3, what="3 held requests")
            assert engine.seen == []
            door.engine_ready(A)
            for resp in await asyncio.gather(*pending):
                assert resp.status_code == 200 and resp.json()["data"][0]["id"] == "qwen3-4b"
            assert door.stats()["held"] == 0 and door.stats()["completed"] == 3
    run(scenario())


def test_past_the_hold_deadline_a_503_with_retry_after() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        async with door_running(FrontDoorConfig(hold_timeout_s=20), engine=FakeEngine(), clock=clock) as (door, url), \
                client() as c:
            door.engine_starting(eta_s=120)
            pending = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["held"] == 1, what="a held request")
            clock.advance(21)
            resp = await pending
            error = assert_openai_error(resp, 503)
            assert resp.headers["retry-after"] == "99"  # expected ready in 120 - 21 s
            assert "not ready" in error["message"]
            assert door.stats()["rejected"]["hold_timeout"] == 1
    run(scenario())


def test_hold_bound_and_probes_answer_at_once() -> None:
    async def scenario() -> None:
        async with door_running(FrontDoorConfig(max_held=1), engine=FakeEngine()) as (door, url), client() as c:
            door.engine_starting(eta_s=40)
            first = asyncio.ensure_future(c.post(url + "/v1/completions", json={"prompt": "x"}))
            await until(lambda: door.stats()["held"] == 1)
            resp = await c.post(url + "/v1/completions", json={"prompt": "y"})
            assert_openai_error(resp, 503)
            assert 1 <= int(resp.headers["retry-after"]) <= 40
            health = await c.get(url + "/health")
            assert health.status_code == 503 and "retry-after" in health.headers
            assert door.stats()["rejected"]["hold_full"] == 1 and door.stats()["rejected"]["not_ready"] == 1
            first.cancel()
    run(scenario())


def test_failed_is_a_503_with_the_reason_and_no_retry_after() -> None:
    async def scenario() -> None:
        async with door_running(engine=FakeEngine()) as (door, url), client() as c:
            door.engine_starting(eta_s=10)
            held = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["held"] == 1)
            door.engine_failed("the model Qwen/Qwen3-4B was not found")
            for resp in (await held, await c.get(url + "/v1/models")):
                error = assert_openai_error(resp, 503)
                assert "Qwen/Qwen3-4B was not found" in error["message"]
                assert "retry-after" not in resp.headers
            assert door.stats()["rejected"]["failed"] == 2
    run(scenario())


def test_the_door_says_the_base_url_clients_use(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> None:
        for host, shown in (("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "<this host>")):
            door = FrontDoor(FrontDoorConfig(), transport=FakeEngine().transport())
            await door.start(host, 0)
            await door.stop()
            assert (f"front door listening on {host}:{door.port} (OpenAI base URL for clients: "
                    f"http://{shown}:{door.port}/v1)") in caplog.messages
    run(scenario())


def test_stop_answers_what_waits() -> None:
    async def scenario() -> None:
        door = FrontDoor(FrontDoorConfig(), transport=FakeEngine().transport())
        await door.start("127.0.0.1", 0)
        async with client() as c:
            held = asyncio.ensure_future(c.get(f"http://127.0.0.1:{door.port}/v1/models"))
            await until(lambda: door.stats()["held"] == 1)
            await door.stop()
            resp = await held
            assert_openai_error(resp, 503)
            assert door.stats()["rejected"]["stopping"] == 1
    run(scenario())


# ---------------------------------------------------------------------- admission control


def test_queue_full_is_a_429_with_retry_after() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        slow = Pending()
        engine.behaviours[A] = slow.behaviour
        config = FrontDoorConfig(max_in_flight=1, max_queued=1)
        async with door_running(config, engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            first = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: slow.waiting == 1)
            second = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["queued"] == 1)
            third = await c.post(url + "/v1/chat/completions", json=chat())
            assert_openai_error(third, 429)
            assert int(third.headers["retry-after"]) >= 1
            slow.answer({"n": 1})
            assert (await first).json() == {"n": 1}
            await until(lambda: slow.waiting == 1, what="the queued request at the engine")
            slow.answer({"n": 2})
            assert (await second).json() == {"n": 2}
            stats = door.stats()
            assert stats["rejected"]["queue_full"] == 1 and stats["queued"] == 0 and stats["in_flight"] == 0
    run(scenario())


# ---------------------------------------------------------------------- re-sending


def test_a_request_the_dying_engine_never_answered_is_resent() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        engine.behaviours[A] = engine_dead_500()
        engine.behaviours[B] = answer_json({"answered_by": "b"})
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            pending = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["held"] == 1, what="the failed request held for the next engine")
            door.engine_down("engine died (exit -9)", eta_s=30)
            door.engine_starting(eta_s=30)
            door.engine_ready(B)
            resp = await pending
            assert resp.status_code == 200 and resp.json() == {"answered_by": "b"}
            assert door.stats()["retried"] == 1
            bodies = [b for _a, _r, b in engine.seen]
            assert len(bodies) == 2 and bodies[0] == bodies[1] and json.loads(bodies[0]) == chat()
    run(scenario())


def test_refused_connections_are_held_for_the_relaunch() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        engine.behaviours[A] = refuse()
        engine.behaviours[B] = answer_json({"ok": True})
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            pending = asyncio.ensure_future(c.post(url + "/v1/completions", json={"prompt": "hi"}))
            await until(lambda: door.stats()["held"] == 1)
            door.engine_ready(B)  # the daemon may go straight to the new engine
            assert (await pending).json() == {"ok": True}
    run(scenario())


def test_a_connection_closed_without_an_answer_is_tried_once_more_at_once() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        engine.behaviours[A] = close_without_answer(answer_json({"second": "try"}))
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            resp = await c.get(url + "/v1/models")
            assert resp.json() == {"second": "try"}
            assert door.stats()["retried"] == 0 and len(engine.seen) == 2
    run(scenario())


def test_resends_are_limited() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        engine.behaviours[A] = engine_dead_500()
        engine.behaviours[B] = engine_dead_500()
        async with door_running(FrontDoorConfig(max_retries=1), engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            pending = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["held"] == 1)
            door.engine_ready(B)
            resp = await pending
            assert resp.status_code == 500 and ENGINE_DEAD in resp.text, "the engine's own answer, passed on"
            stats = door.stats()
            assert stats["retried"] == 1 and stats["rejected"]["engine_lost"] == 1
    run(scenario())


def test_a_large_body_streams_through_and_is_not_resent() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        engine.behaviours[A] = engine_dead_500()
        engine.behaviours[B] = answer_json({"from": "b"})
        config = FrontDoorConfig(retry_body_limit_bytes=1024)
        async with door_running(config, engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            big = b"x" * 10_000
            resp = await c.post(url + "/v1/completions", content=big)
            assert resp.status_code == 500 and ENGINE_DEAD in resp.text, "the engine's answer, not re-sent"
            assert engine.seen[0][2] == big
            assert door.stats()["retried"] == 0
            small = asyncio.ensure_future(c.post(url + "/v1/completions", content=b"y" * 1024))
            await until(lambda: door.stats()["held"] == 1, what="the small body held for a re-send")
            door.engine_ready(B)
            assert (await small).json() == {"from": "b"}
            assert engine.seen[-1][2] == b"y" * 1024
    run(scenario())


# ---------------------------------------------------------------------- streams


def test_a_stream_the_engine_breaks_off_ends_with_an_error_event() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        stream = Scripted(engine)
        engine.behaviours[A] = stream.behaviour
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            head = asyncio.ensure_future(open_stream(c, url + "/v1/chat/completions", chat(stream=True)))
            await stream.started.wait()
            stream.feed(sse({"n": 1}))
            stream.feed(sse({"n": 2}) + b'data: {"n": 3, "tru')
            stream.feed(httpx.ReadError("connection reset"))
            async with response_of(head) as resp:
                raw = b"".join([chunk async for chunk in resp.aiter_raw()])
            got = events(raw)
            assert got[:2] == [b'{"n": 1}', b'{"n": 2}']
            error = json.loads(got[2])["error"]
            assert set(error) == {"message", "type", "param", "code"} and "incomplete" in error["message"]
            assert got[3:] == [b"[DONE]"] and b'"n": 3' not in raw, "the broken event is dropped"
            assert door.stats()["cut_streams"] == 1
    run(scenario())


def test_engine_down_ends_streams_under_way() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        stream = Scripted(engine)
        engine.behaviours[A] = stream.behaviour
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            head = asyncio.ensure_future(open_stream(c, url + "/v1/chat/completions", chat(stream=True)))
            await stream.started.wait()
            stream.feed(sse({"n": 1}))
            async with response_of(head) as resp:
                chunks = resp.aiter_raw()
                assert events(await chunks.__anext__()) == [b'{"n": 1}']
                door.engine_down("engine died (exit -9)", eta_s=60)
                rest = b"".join([chunk async for chunk in chunks])
            got = events(rest)
            assert b"error" in got[0] and got[-1] == b"[DONE]"
            assert stream.cancelled
    run(scenario())


def test_a_plain_body_cut_midway_closes_the_connection() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        body = Scripted(engine, headers={"content-type": "application/json", "content-length": "100"})
        engine.behaviours[A] = body.behaviour
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            head = asyncio.ensure_future(open_stream(c, url + "/v1/models"))
            await body.started.wait()
            body.feed(b"{" + b" " * 40)
            async with response_of(head) as resp:
                body.feed(httpx.ReadError("connection reset"))
                with pytest.raises(httpx.RemoteProtocolError):
                    await resp.aread()
            await until(lambda: door.stats()["cut_responses"] == 1)
    run(scenario())


def test_a_client_that_leaves_cancels_the_engine_request() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        stream = Scripted(engine)
        engine.behaviours[A] = stream.behaviour
        async with door_running(engine=engine) as (door, url):
            door.engine_ready(A)
            async with client() as c:
                head = asyncio.ensure_future(open_stream(c, url + "/v1/chat/completions", chat(stream=True)))
                await stream.started.wait()
                stream.feed(sse({"n": 1}))
                async with response_of(head) as resp:
                    await resp.aiter_raw().__anext__()
            # the client is gone (its connection closed); the engine's stream must be abandoned
            await until(lambda: stream.cancelled, what="the engine request to be cancelled")
            await until(lambda: door.stats()["client_disconnects"] == 1 and door.stats()["in_flight"] == 0)
    run(scenario())


def test_a_client_that_leaves_while_held_is_forgotten() -> None:
    async def scenario() -> None:
        async with door_running(engine=FakeEngine()) as (door, url):
            async with client() as c:
                held = asyncio.ensure_future(c.get(url + "/v1/models"))
                await until(lambda: door.stats()["held"] == 1)
                held.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await held
            await until(lambda: door.stats()["held"] == 0, what="the held request to be dropped")
            assert door.stats()["client_disconnects"] == 1
    run(scenario())


# ---------------------------------------------------------------------- drain


def test_drain_lets_requests_finish_and_holds_new_ones() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        slow = Pending()
        engine.behaviours[A] = slow.behaviour
        engine.behaviours[B] = answer_json({"from": "b"})
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            at_engine = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: slow.waiting == 1)
            drain = asyncio.ensure_future(door.drain(grace_s=30))
            await until(lambda: door.stats()["state"] == "draining")
            newcomer = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["held"] == 1)
            assert not drain.done()
            slow.answer({"from": "a"})
            result = await drain
            assert (await at_engine).json() == {"from": "a"}
            assert result.completed == 1 and result.cut == 0 and result.still_at_engine == 0
            assert result.held == 1
            assert str(result).endswith("s of 30 s grace: 1 at the engine, 1 completed, 1 held for the next engine")
            door.engine_starting(eta_s=5)
            door.engine_ready(B)
            assert (await newcomer).json() == {"from": "b"}
    run(scenario())


def test_drain_past_its_grace_resends_what_was_not_answered() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        engine = FakeEngine()
        stuck = Pending()
        stream = Scripted(engine)
        engine.behaviours[A] = stuck.behaviour
        engine.behaviours[B] = answer_json({"from": "b"})
        async with door_running(engine=engine, clock=clock) as (door, url), client() as c:
            door.engine_ready(A)
            unanswered = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: stuck.waiting == 1)
            engine.behaviours[A] = stream.behaviour
            head = asyncio.ensure_future(open_stream(c, url + "/v1/chat/completions", chat(stream=True)))
            await stream.started.wait()
            stream.feed(sse({"n": 1}))
            async with response_of(head) as streaming:
                chunks = streaming.aiter_raw()
                await chunks.__anext__()
                drain = asyncio.ensure_future(door.drain(grace_s=10))
                await until(lambda: door.stats()["state"] == "draining")
                clock.advance(10)
                result = await drain
                rest = b"".join([chunk async for chunk in chunks])
            assert result.cut == 2 and result.requeued == 1 and result.cut_streams == 1
            assert str(result) == (
                f"in {result.waited_s:g} s of 10 s grace: 2 at the engine, 0 completed, 2 cut at the end of the grace "
                "(1 to be re-sent, 1 stream(s) ended with an error event, 0 response(s) cut), 1 held for the next engine")
            assert events(rest)[-1] == b"[DONE]" and b"error" in rest
            door.engine_starting(eta_s=5)
            door.engine_ready(B)
            assert (await unanswered).json() == {"from": "b"}, "the unanswered request was re-sent"
    run(scenario())


# ---------------------------------------------------------------------- headers


def test_headers_are_handled_as_a_proxy_must() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        captured: dict[str, Any] = {}

        async def behaviour(request: httpx.Request) -> httpx.Response:
            captured["headers"] = request.headers
            return httpx.Response(200, content=b"{}", headers=[
                ("content-type", "application/json"), ("server", "uvicorn"), ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
                ("connection", "x-private, keep-alive"), ("x-private", "1"), ("keep-alive", "timeout=5"),
                ("x-request-id", "abc")])

        engine.behaviours[A] = behaviour
        async with door_running(engine=engine) as (door, url), client() as c:
            door.engine_ready(A)
            resp = await c.post(url + "/v1/chat/completions", content=b"{}", headers={
                "authorization": "Bearer sk-secret", "host": "llm.example:8000", "x-forwarded-for": "203.0.113.9",
                "connection": "x-hop, keep-alive", "x-hop": "1", "te": "trailers", "proxy-authorization": "Basic x",
                "upgrade": "h2c", "x-custom": "kept"})
            sent = captured["headers"]
            assert sent["authorization"] == "Bearer sk-secret"
            assert sent["host"] == "llm.example:8000"
            assert sent["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
            assert sent["x-forwarded-proto"] == "http"
            assert sent["via"] == "1.1 llm-supervisor"
            assert sent["x-custom"] == "kept" and sent["content-length"] == "2"
            for gone in ("x-hop", "te", "proxy-authorization", "upgrade", "connection", "keep-alive"):
                assert gone not in sent, gone
            assert resp.headers["server"] == "uvicorn" and resp.headers["date"].startswith("Thu, 01 Jan 2026")
            assert resp.headers["x-request-id"] == "abc"
            assert "x-private" not in resp.headers and "keep-alive" not in resp.headers
            # the door's own stats never carry header values
            assert "sk-secret" not in json.dumps(door.stats())
    run(scenario())


# ---------------------------------------------------------------------- real engine connections


class FixedEngine:
    """An ASGI engine that answers with fixed bytes in awkward pieces (events split mid-way)."""

    PIECES = (b'data: {"a":', b' 1}\n\ndata: {"b": 2}\n', b"\ndata: [DONE]\n\n")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await asgi_body(receive)
        if scope["path"] == "/echo-size":
            data = json.dumps({"size": len(body)}).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for piece in self.PIECES:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serve_engine(app: Any, *, uds: str | None = None) -> Any:
    sock = None
    if uds is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, uds=uds, log_config=None, lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve(sockets=[sock] if sock else None))
    await until(lambda: server.started, what="the fake engine to listen")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}" if sock else f"unix:{uds}"
    finally:
        server.should_exit = True
        await task


def test_stream_bytes_pass_through_unchanged() -> None:
    async def scenario() -> None:
        async with serve_engine(FixedEngine()) as engine_url, door_running() as (door, url), client() as c:
            door.engine_ready(engine_url)
            direct = (await c.post(engine_url + "/v1/chat/completions", content=b"{}")).content
            through = (await c.post(url + "/v1/chat/completions", content=b"{}")).content
            assert direct == b"".join(FixedEngine.PIECES)
            assert through == direct
    run(scenario())


def test_unix_socket_engine_and_large_upload(tmp_path: Path) -> None:
    async def scenario() -> None:
        sock = str(tmp_path / "engine.sock")
        config = FrontDoorConfig(retry_body_limit_bytes=64 * 1024)
        async with serve_engine(FixedEngine(), uds=sock) as engine_url, door_running(config) as (door, url), \
                client() as c:
            door.engine_ready(engine_url)
            big = b"z" * (3 * 1024 * 1024 + 7)

            async def upload() -> Any:
                for i in range(0, len(big), 256 * 1024):
                    yield big[i:i + 256 * 1024]

            for content in (big, upload()):  # Content-Length, then chunked
                resp = await c.post(url + "/echo-size", content=content)
                assert resp.json() == {"size": len(big)}
            assert door.stats()["completed"] == 2
    run(scenario())


def test_an_engine_that_is_not_there_is_waited_for() -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
            async with serve_engine(FixedEngine()) as live, door_running() as (door, url), client() as c:
                door.engine_ready(dead)
                pending = asyncio.ensure_future(c.post(url + "/echo-size", content=b"abc"))
                await until(lambda: door.stats()["held"] == 1, what="the refused request to be held")
                door.engine_ready(live)
                assert (await pending).json() == {"size": 3}
    run(scenario())


# ---------------------------------------------------------------------- odds and ends


def test_a_busy_port_is_a_clear_error() -> None:
    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            door = FrontDoor(FrontDoorConfig())
            with pytest.raises(BindError) as info:
                await door.start("127.0.0.1", port)
            assert f"{port}" in info.value.lines()[0] and "in use" in info.value.lines()[0]
    run(scenario())


def test_bad_engine_addresses_are_refused() -> None:
    door = FrontDoor(FrontDoorConfig())
    for bad in ("127.0.0.1:8000", "https://127.0.0.1:8000", "http://127.0.0.1:8000/v1", "unix:relative.sock"):
        with pytest.raises(ValueError):
            door.engine_ready(bad)


def test_prometheus_families() -> None:
    door = FrontDoor(FrontDoorConfig())
    registry = CollectorRegistry()
    registry.register(door.collector())
    from prometheus_client import generate_latest

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for name in ("held", "in_flight", "queued", "state"):
        assert families["llm_supervisor_frontdoor_" + name].type == "gauge"
    for name in ("requests", "completed", "retried", "rejected", "cut_streams", "cut_responses",
                 "client_disconnects"):
        family = families["llm_supervisor_frontdoor_" + name]
        assert family.type == "counter" and family.samples[0].name.endswith("_total")
    reasons = {s.labels["reason"] for s in families["llm_supervisor_frontdoor_rejected"].samples}
    assert {"hold_timeout", "hold_full", "queue_full", "failed"} <= reasons
    state = {s.labels["state"]: s.value for s in families["llm_supervisor_frontdoor_state"].samples}
    assert state["starting"] == 1.0 and state["ready"] == 0.0


@pytest.mark.parametrize(("data", "end"), [
    (b"data: 1\n\n", 9), (b"data: 1\n\ndata: 2", 9), (b"data: 1", 0), (b"data: 1\r\n\r\ndata", 11),
    (b"data: 1\r\rx", 9), (b"", 0)])
def test_event_boundaries(data: bytes, end: int) -> None:
    assert events_end(data) == end
