"""The daemon's HTTP client to the engine: readiness probes and /metrics, against an engine in
the test's process (httpx.MockTransport) answering as vLLM does."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Callable

import httpx
import pytest
from pydantic import SecretStr

from llm_supervisor.config.profile import client_url, listen_url
from llm_supervisor.runtime.engine_client import EngineClient

REAL_METRICS = (Path(__file__).parent / "fixtures" / "vllm-0.26.0" / "metrics-ready-util0.27.txt").read_text()
# what vLLM answers a chat request for a model without a chat template
NO_TEMPLATE = {"error": {"message": "As of transformers v4.44, default chat template is no longer allowed, so you "
                                    "must provide a chat template if the tokenizer does not define one.",
                         "type": "BadRequestError", "param": None, "code": 400}}


class Engine:
    """Records every request; `answer(request)` says what it returns."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.seen: list[httpx.Request] = []

    def client(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None) -> EngineClient:
        def handle(request: httpx.Request) -> httpx.Response:
            self.seen.append(request)
            return self.answer(request)
        key = SecretStr(api_key) if api_key is not None else None
        return EngineClient(base_url, "qwen3-4b", key, transport=httpx.MockTransport(handle))

    def paths(self) -> list[str]:
        return [r.url.path for r in self.seen]


def call(client: EngineClient, name: str):
    async def go():
        try:
            return await getattr(client, name)()
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_the_probe_is_one_real_token_of_chat_with_the_served_name_and_the_key() -> None:
    engine = Engine(lambda r: httpx.Response(200, json={"choices": [{"message": {"content": "Hello"}}]}))
    assert call(engine.client(api_key="sk-engine-key"), "probe") is True
    (request,) = engine.seen
    assert request.url.path == "/v1/chat/completions"
    body = json.loads(request.content)
    assert body["model"] == "qwen3-4b" and body["max_tokens"] == 1 and body["messages"][0]["role"] == "user"
    assert request.headers["authorization"] == "Bearer sk-engine-key"


def test_a_model_without_a_chat_template_is_probed_with_a_plain_completion() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/chat/completions":
            return httpx.Response(400, json=NO_TEMPLATE)
        return httpx.Response(200, json={"choices": [{"text": " there"}]})
    engine = Engine(answer)
    assert call(engine.client(), "probe") is True
    assert engine.paths() == ["/v1/chat/completions", "/v1/completions"]
    body = json.loads(engine.seen[1].content)
    assert body == {"model": "qwen3-4b", "prompt": "Hi", "max_tokens": 1}


@pytest.mark.parametrize("status", [500, 503])
def test_an_engine_that_cannot_generate_is_not_ready_and_the_answer_is_logged(
        status: int, caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(lambda r: httpx.Response(status, text="EngineCore encountered an issue"))
    with caplog.at_level(logging.WARNING, logger="llm_supervisor"):
        assert call(engine.client(), "probe") is False
    assert engine.paths() == ["/v1/chat/completions"], "no second try: the engine answered"
    assert f"smoke request answered {status}: EngineCore encountered an issue" in caplog.text


def test_a_refused_or_timed_out_probe_is_not_ready() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)
    assert call(Engine(refuse).client(), "probe") is False
    assert call(Engine(slow).client(), "probe") is False
    assert call(Engine(refuse).client(), "health") is False


def test_health_is_200_only() -> None:
    assert call(Engine(lambda r: httpx.Response(200)).client(), "health") is True
    assert call(Engine(lambda r: httpx.Response(503)).client(), "health") is False


def test_metrics_are_read_from_real_vllm_output_and_none_when_the_engine_does_not_answer() -> None:
    metrics = call(Engine(lambda r: httpx.Response(200, text=REAL_METRICS)).client(), "metrics")
    assert metrics is not None
    assert metrics.kv_cache_tokens == 93168 and metrics.max_concurrency == pytest.approx(2.274609375)
    assert metrics.running == 0 and metrics.waiting == 0
    assert call(Engine(lambda r: httpx.Response(500)).client(), "metrics") is None

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    assert call(Engine(refuse).client(), "metrics") is None


def test_a_retargeted_client_asks_the_new_engine() -> None:
    engine = Engine(lambda r: httpx.Response(200))
    client = engine.client("http://127.0.0.1:41001")

    async def go() -> None:
        await client.health()
        client.retarget("http://127.0.0.1:41002")
        await client.health()
        await client.aclose()
    asyncio.run(go())
    assert [r.url.port for r in engine.seen] == [41001, 41002]


@pytest.mark.parametrize("host, client, listening", [
    ("0.0.0.0", "http://127.0.0.1:8000", "http://0.0.0.0:8000"),
    ("::", "http://127.0.0.1:8000", "http://[::]:8000"),
    ("", "http://127.0.0.1:8000", "http://0.0.0.0:8000"),
    ("127.0.0.1", "http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("::1", "http://[::1]:8000", "http://[::1]:8000"),
    ("gpu-node-3", "http://gpu-node-3:8000", "http://gpu-node-3:8000"),
])
def test_the_engine_is_reached_on_loopback_when_it_listens_everywhere(host: str, client: str, listening: str) -> None:
    """Clients go to loopback for a wildcard host; the status names the address as it listens."""
    assert client_url(host, 8000) == client
    assert listen_url(host, 8000) == listening
