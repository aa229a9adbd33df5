"""REST API, embedded server and client, against a scripted fake daemon snapshot."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from llm_supervisor.api.embedded import EmbeddedServer
from llm_supervisor.api.server import (
    check_bind_allowed,
    create_app,
    is_loopback_host,
    start_api,
    stop_api,
)
from llm_supervisor.api.client import format_status, get_status, post_action
from llm_supervisor.errors import BadInput, DaemonUnreachable, RuntimeFailure
from llm_supervisor.states import State

LOCAL = ("127.0.0.1", 50000)
REMOTE = ("10.1.2.3", 1234)
TOKEN = "s3cret-token-value"

CONTRACT_KEYS = {
    "state", "profile", "pid", "uptime_s", "argv", "attempt", "restarts", "kv_cache_tokens",
    "max_concurrency", "max_model_len", "gpu_memory_utilization", "gpus", "cpus", "history",
}

BASE: dict[str, Any] = {
    "state": "starting",
    "ready": False,
    "profile": "4090d-qwen3-4b",
    "model": "Qwen/Qwen3-4B",
    "served_model_name": "qwen3-4b",
    "simulated": True,
    "engine_url": "http://127.0.0.1:8000",
    "pid": 4242,
    "uptime_s": 1.5,
    "argv": ["vllm", "serve", "Qwen/Qwen3-4B", "--max-model-len", "40960", "--api-key", "***"],
    "attempt": 1,
    "restarts": 0,
    "restarts_by_reason": {},
    "kv_cache_tokens": None,
    "max_concurrency": None,
    "max_concurrency_context": None,
    "max_model_len": 40960,
    "gpu_memory_utilization": 0.9,
    "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090 D", "memory_used_mib": 1200, "memory_total_mib": 24564}],
    "cpus": [0, 1, 2, 3, 8, 9],
    "history": [{"at": 1_760_000_000.0, "event": "launch", "failure": None, "change": None}],
}


def _cycle() -> list[dict[str, Any]]:
    """starting -> ready -> backoff (kv cache too small) -> restarting -> ready -> stopping -> stopped."""
    s0 = copy.deepcopy(BASE)
    s1 = {**copy.deepcopy(s0), "state": "ready", "ready": True, "uptime_s": 60.0, "kv_cache_tokens": 50_000,
          "max_concurrency": 1.22, "max_concurrency_context": 40960,
          "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090 D", "memory_used_mib": 20876, "memory_total_mib": 24564}]}
    s2 = {**copy.deepcopy(s1), "state": "backoff", "ready": False, "pid": None, "uptime_s": None,
          "message": "kv_cache_too_small: relaunching in 2 s with max_model_len 10000",
          "history": s1["history"] + [{
              "at": 1_760_000_100.0, "event": "exit",
              "failure": {"kind": "kv_cache_too_small", "message": "5.62 GiB KV cache is needed", "values": {"needed_gib": 5.62}},
              "change": {"max_model_len": [40960, 10000]}}]}
    s3 = {**copy.deepcopy(s2), "state": "restarting", "attempt": 2, "restarts": 1,
          "restarts_by_reason": {"kv_cache_too_small": 1}, "max_model_len": 10000}
    s4 = {**copy.deepcopy(s3), "state": "ready", "ready": True, "pid": 4343, "uptime_s": 55.0, "message": None,
          "kv_cache_tokens": 110_592, "max_concurrency": 11.05, "max_concurrency_context": 10000,
          "history": s3["history"] + [{"at": 1_760_000_160.0, "event": "ready", "failure": None, "change": None}]}
    s5 = {**copy.deepcopy(s4), "state": "stopping", "ready": False}
    s6 = {**copy.deepcopy(s5), "state": "stopped", "pid": None, "uptime_s": None}
    return [s0, s1, s2, s3, s4, s5, s6]


class FakeDaemon:
    """Holds the current snapshot and records enqueued commands, like the daemon would."""

    def __init__(self, snap: dict[str, Any] | None = None) -> None:
        self.snap = snap or copy.deepcopy(BASE)
        self.commands: list[str] = []
        self.reads = 0

    def status(self) -> dict[str, Any]:
        self.reads += 1
        return self.snap

    def sink(self, action: str) -> None:
        self.commands.append(action)


def call(app: Any, method: str, path: str, *, client: tuple[str, int] = LOCAL,
         headers: dict[str, str] | None = None, content: bytes | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, path, headers=headers, content=content)

    return asyncio.run(go())


def metrics(app: Any) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}, parsed with prometheus-client's own parser."""
    resp = call(app, "GET", "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- endpoints


def test_every_endpoint_through_a_scripted_cycle() -> None:
    daemon = FakeDaemon()
    app = create_app(daemon.status, daemon.sink, None)
    for snap in _cycle():
        daemon.snap = snap
        state = snap["state"]

        status = call(app, "GET", "/status")
        assert status.status_code == 200
        body = status.json()
        assert CONTRACT_KEYS <= body.keys()
        assert body["state"] == state
        assert body["pid"] == snap["pid"]
        assert body["attempt"] == snap["attempt"] and body["restarts"] == snap["restarts"]
        assert body["kv_cache_tokens"] == snap["kv_cache_tokens"]
        assert body["max_model_len"] == snap["max_model_len"]
        assert body["gpus"] == snap["gpus"]
        assert body["cpus"] == snap["cpus"]
        assert body["argv"][-1] == "***"
        assert [h["event"] for h in body["history"]] == [h["event"] for h in snap["history"]]
        # extras pass through untouched
        assert body["simulated"] is True and body["engine_url"] == "http://127.0.0.1:8000"
        assert body["restarts_by_reason"] == snap["restarts_by_reason"]

        health = call(app, "GET", "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"

        ready = call(app, "GET", "/readyz")
        assert ready.status_code == (200 if state == "ready" else 503), state
        assert ready.json()["state"] == state

        m = metrics(app)
        states = {dict(k)["state"]: v for k, v in m["llm_supervisor_state"].items()}
        assert states == {s.value: (1.0 if s.value == state else 0.0) for s in State}
        assert m["llm_supervisor_ready"][()] == (1.0 if state == "ready" else 0.0)
        assert m["llm_supervisor_attempt"][()] == snap["attempt"]
        if snap["kv_cache_tokens"] is not None:
            assert m["llm_supervisor_kv_cache_tokens"][()] == snap["kv_cache_tokens"]
            assert m["llm_supervisor_max_concurrency"][()] == pytest.approx(snap["max_concurrency"])
        else:
            assert "llm_supervisor_kv_cache_tokens" not in m  # unknown is absent, not 0
        restarts = {dict(k)["reason"]: v for k, v in m.get("llm_supervisor_restarts_total", {}).items()}
        assert restarts == {k: float(v) for k, v in snap["restarts_by_reason"].items()}

    # the failure that caused the relaunch is visible in history at the end
    final = call(app, "GET", "/status").json()
    assert final["history"][1]["failure"]["kind"] == "kv_cache_too_small"
    assert final["history"][1]["change"] == {"max_model_len": [40960, 10000]}


def test_status_fills_missing_contract_keys_with_null() -> None:
    daemon = FakeDaemon({"state": "starting", "extra_key": {"nested": 1}})
    body = call(create_app(daemon.status, daemon.sink, None), "GET", "/status").json()
    assert CONTRACT_KEYS <= body.keys()
    assert body["pid"] is None and body["gpus"] == [] and body["history"] == []
    assert body["extra_key"] == {"nested": 1}


def test_status_with_state_enum_and_malformed_snapshot() -> None:
    daemon = FakeDaemon({**copy.deepcopy(BASE), "state": State.DEGRADED})
    app = create_app(daemon.status, daemon.sink, None)
    assert call(app, "GET", "/status").json()["state"] == "degraded"
    # a snapshot that breaks the schema is still served (a daemon bug must not blind the operator)
    daemon.snap = {**copy.deepcopy(BASE), "gpus": "not a list"}
    resp = call(app, "GET", "/status")
    assert resp.status_code == 200 and resp.json()["gpus"] == "not a list"


def test_readyz_needs_the_ready_flag_too() -> None:
    daemon = FakeDaemon({**copy.deepcopy(BASE), "state": "ready", "ready": False, "message": "waiting for first token"})
    app = create_app(daemon.status, daemon.sink, None)
    resp = call(app, "GET", "/readyz")
    assert resp.status_code == 503
    assert resp.json() == {"status": "not ready", "state": "ready", "message": "waiting for first token"}
    daemon.snap["ready"] = True
    assert call(app, "GET", "/readyz").status_code == 200


def test_status_source_failure_is_503_but_healthz_stays_up() -> None:
    def broken() -> dict:
        raise RuntimeError("boom")

    app = create_app(broken, lambda a: None, None)
    assert call(app, "GET", "/status").status_code == 503
    assert call(app, "GET", "/readyz").status_code == 503
    assert call(app, "GET", "/metrics").status_code == 503
    assert call(app, "GET", "/healthz").status_code == 200


def test_metrics_extras_and_unknown_restart_reason() -> None:
    snap = {**_cycle()[4], "restarts": 3, "restarts_by_reason": {"kv_cache_too_small": 1, "engine_dead": 1}}
    m = metrics(create_app(FakeDaemon(snap).status, lambda a: None, None))
    restarts = {dict(k)["reason"]: v for k, v in m["llm_supervisor_restarts_total"].items()}
    assert restarts == {"kv_cache_too_small": 1.0, "engine_dead": 1.0, "unknown": 1.0}
    gpu = m["llm_supervisor_gpu_memory_used_bytes"]
    assert gpu[(("gpu", "0"), ("name", "NVIDIA GeForce RTX 4090 D"))] == 20876 * 1024 * 1024
    assert m["llm_supervisor_uptime_seconds"][()] == 55.0
    assert m["llm_supervisor_max_model_len"][()] == 10000
    assert m["llm_supervisor_simulated"][()] == 1.0
    info = next(iter(m["llm_supervisor_info"]))
    assert ("model", "Qwen/Qwen3-4B") in info and ("profile", "4090d-qwen3-4b") in info


# --------------------------------------------------------------------------- admin + auth


def test_token_auth() -> None:
    daemon = FakeDaemon()
    app = create_app(daemon.status, daemon.sink, TOKEN)

    missing = call(app, "POST", "/restart")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    basic = call(app, "POST", "/restart", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    wrong = call(app, "POST", "/stop", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert daemon.commands == []

    ok = call(app, "POST", "/restart", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 202 and "restart" in ok.json()["detail"]
    # with a token, the client's address does not matter
    ok2 = call(app, "POST", "/stop", client=REMOTE, headers={"authorization": f"bearer {TOKEN}"})
    assert ok2.status_code == 202
    assert daemon.commands == ["restart", "stop"]

    for resp in (missing, basic, wrong, ok, ok2):
        assert TOKEN not in resp.text and "nope" not in resp.text


@pytest.mark.parametrize("client,allowed", [
    (("127.0.0.1", 1), True),
    (("127.8.9.10", 1), True),
    (("::1", 1), True),
    (("::ffff:127.0.0.1", 1), True),
    (REMOTE, False),
    (("192.168.1.20", 1), False),
    (("2001:db8::1", 1), False),
    (("testclient", 1), False),
])
def test_without_token_only_loopback_may_act(client: tuple[str, int], allowed: bool) -> None:
    daemon = FakeDaemon()
    app = create_app(daemon.status, daemon.sink, None)
    resp = call(app, "POST", "/stop", client=client)
    assert resp.status_code == (202 if allowed else 403)
    assert daemon.commands == (["stop"] if allowed else [])
    # reading is open to everyone who can reach the port
    assert call(app, "GET", "/status", client=client).status_code == 200


def test_command_sink_refusal_and_breakage() -> None:
    def refuse(action: str) -> None:
        raise RuntimeFailure("already stopping")

    def broken(action: str) -> None:
        raise RuntimeError("queue closed")

    refused = call(create_app(FakeDaemon().status, refuse, None), "POST", "/restart")
    assert refused.status_code == 409 and "already stopping" in refused.json()["detail"]
    assert call(create_app(FakeDaemon().status, broken, None), "POST", "/restart").status_code == 503


def test_methods_bodies_and_docs() -> None:
    daemon = FakeDaemon()
    app = create_app(daemon.status, daemon.sink, None)
    assert call(app, "DELETE", "/status").status_code == 405
    assert call(app, "GET", "/restart").status_code == 405
    assert call(app, "PUT", "/stop").status_code == 405
    assert call(app, "GET", "/nope").status_code == 404

    big = call(app, "POST", "/restart", content=b"x" * (1024 * 1024))
    assert big.status_code == 413
    assert daemon.commands == []
    assert call(app, "POST", "/restart", content=b"{}").status_code == 202

    assert call(app, "GET", "/docs").status_code == 200
    schema = call(app, "GET", "/openapi.json").json()
    status_schema = schema["components"]["schemas"]["StatusResponse"]
    assert CONTRACT_KEYS <= status_schema["properties"].keys()
    assert {"/status", "/healthz", "/readyz", "/metrics", "/restart", "/stop"} <= schema["paths"].keys()


@pytest.mark.parametrize("host,token,ok", [
    ("127.0.0.1", None, True),
    ("127.1.2.3", None, True),
    ("localhost", None, True),
    ("::1", None, True),
    ("[::1]", None, True),
    ("0.0.0.0", None, False),
    ("::", None, False),
    ("", None, False),
    ("203.0.113.7", None, False),
    ("10.0.0.5", "", False),
    ("myhost.example", None, False),
    ("0.0.0.0", TOKEN, True),
    ("203.0.113.7", TOKEN, True),
])
def test_check_bind_allowed(host: str, token: str | None, ok: bool) -> None:
    if ok:
        check_bind_allowed(host, token)
        return
    with pytest.raises(BadInput) as info:
        check_bind_allowed(host, token)
    (line,) = info.value.lines()
    assert line == (f"LLM_SUPERVISOR_API_HOST={host}: refusing to serve the admin API on a non-loopback "
                    "address without LLM_SUPERVISOR_API_TOKEN")


def test_is_loopback_host() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("LOCALHOST")
    assert not is_loopback_host(None) and not is_loopback_host("0.0.0.0") and not is_loopback_host("8.8.8.8")


# --------------------------------------------------------------------------- embedded server + client


def test_embedded_server_serves_in_the_callers_loop_and_leaves_signals_alone() -> None:
    daemon = FakeDaemon(_cycle()[4])
    app = create_app(daemon.status, daemon.sink, TOKEN)
    port = free_port()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[str] = []
        loop.add_signal_handler(signal.SIGTERM, got.append, "term")
        loop.add_signal_handler(signal.SIGINT, got.append, "int")
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server = await start_api(app, "127.0.0.1", port)
            try:
                assert isinstance(server, EmbeddedServer) and server.server.started and server.port == port
                # uvicorn did not replace the loop's handlers
                assert {sig: signal.getsignal(sig) for sig in before} == before
                url = f"http://127.0.0.1:{port}"

                status = await asyncio.to_thread(get_status, url)
                assert status["state"] == "ready" and status["kv_cache_tokens"] == 110_592

                # SIGTERM reaches the daemon's handler, not uvicorn's
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 5
                while not got and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert got == ["term"]
                assert not server.server.should_exit
                assert (await asyncio.to_thread(get_status, url))["state"] == "ready"

                result = await asyncio.to_thread(post_action, url, "restart", TOKEN)
                assert result["action"] == "restart" and daemon.commands == ["restart"]
                with pytest.raises(RuntimeFailure, match="token missing/wrong") as wrong:
                    await asyncio.to_thread(post_action, url, "stop", "bad-token")
                assert "bad-token" not in str(wrong.value)
                with pytest.raises(RuntimeFailure, match="token missing/wrong"):
                    await asyncio.to_thread(post_action, url, "stop", None)
                assert daemon.commands == ["restart"]

                # a second server on the same port is a clear error, and the loop survives it
                with pytest.raises(RuntimeFailure, match=f"API port {port} is in use"):
                    await start_api(app, "127.0.0.1", port)
                assert (await asyncio.to_thread(get_status, url))["state"] == "ready"
            finally:
                await stop_api(server)
            assert server.task is not None and server.task.done()
            assert {sig: signal.getsignal(sig) for sig in before} == before
            with pytest.raises(DaemonUnreachable):
                await asyncio.to_thread(get_status, f"http://127.0.0.1:{port}", 2)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)

    asyncio.run(main())


def test_start_api_port_taken_by_another_listener() -> None:
    app = create_app(FakeDaemon().status, lambda a: None, None)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        async def main() -> None:
            with pytest.raises(RuntimeFailure) as info:
                await start_api(app, "127.0.0.1", port)
            assert info.value.message == f"API port {port} is in use"

        asyncio.run(main())


def test_client_when_nothing_listens() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(DaemonUnreachable) as info:
        get_status(url, timeout=2)
    assert info.value.message == (
        f"no daemon answering at {url} (is `supervisor up` running? set --url or LLM_SUPERVISOR_API_PORT)"
    )
    with pytest.raises(DaemonUnreachable):
        post_action(f"127.0.0.1:{port}", "stop", TOKEN, timeout=2)


def test_client_http_errors_through_mock_transport() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status":
            return httpx.Response(200, text="<html>not json</html>")
        return httpx.Response(409, json={"detail": "restart refused: already stopping"})

    transport = httpx.MockTransport(handler)
    with pytest.raises(RuntimeFailure, match="JSON"):
        get_status("http://127.0.0.1:1", transport=transport)
    with pytest.raises(RuntimeFailure, match="already stopping"):
        post_action("http://127.0.0.1:1", "restart", None, transport=transport)
    with pytest.raises(BadInput):
        post_action("http://127.0.0.1:1", "reboot", None, transport=transport)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(DaemonUnreachable, match="did not answer within 5 s"):
        get_status("http://127.0.0.1:1", transport=httpx.MockTransport(slow))


# --------------------------------------------------------------------------- rendering


def test_format_status_shows_the_key_facts() -> None:
    snap = {**_cycle()[4], "facts": {"model_weights_gib": 7.55, "available_kv_cache_gib": 15.19}}
    console = Console(record=True, width=120, color_system=None)
    console.print(format_status(snap))
    text = console.export_text()
    for needle in (
        "READY", "Qwen/Qwen3-4B", "qwen3-4b", "SIMULATED", "110,592 tokens", "11.05× at 10,000 tokens",
        "0.9 of GPU memory", "20,876 / 24,564 MiB", "0-3,8-9", "pid 4343", "attempt 2", "restarts 1",
        "kv_cache_too_small", "max_model_len 40960→10000", "http://127.0.0.1:8000", "weights 7.55 GiB",
    ):
        assert needle in text, needle
    assert len(text.splitlines()) <= 30  # one screen


def test_format_status_says_where_the_engine_runs_and_why_it_is_not_pinned() -> None:
    def placement_row(placement: dict) -> str:
        console = Console(record=True, width=200, color_system=None)
        console.print(format_status({**_cycle()[4], "placement": placement}))
        (line,) = [ln for ln in console.export_text().splitlines() if ln.startswith("placement")]
        return line.removeprefix("placement").strip()

    assert placement_row({"pinned": True, "memory_policy": "bind", "applied": "cpus 0-7, mempolicy bind:0"}) == \
        "cpus 0-7, mempolicy bind:0"
    assert placement_row({"pinned": False, "memory_policy": "none", "applied": "none",
                          "warnings": ["only 2 physical cores are allowed (0-1): not pinning"]}) == \
        "not pinned, memory policy none (only 2 physical cores are allowed (0-1): not pinning)"
    assert placement_row({"pinned": True, "memory_policy": "preferred", "applied": None}) == \
        "pinned, memory policy preferred"  # planned; the engine not launched yet


def test_format_status_leads_with_the_address_clients_use() -> None:
    def rows(snap: dict) -> dict[str, str]:
        console = Console(record=True, width=200, color_system=None)
        console.print(format_status({**_cycle()[4], **snap}))
        return {ln.split()[0]: ln.split(None, 1)[1].strip() for ln in console.export_text().splitlines()
                if ln.startswith(("serving", "engine "))}

    door = {"url": "http://127.0.0.1:8000", "engine_url": "http://127.0.0.1:41234",
            "frontdoor": {"enabled": True, "state": "holding", "in_flight": 0, "held": 3, "queued": 0}}
    got = rows(door)
    assert got["serving"] == "http://127.0.0.1:8000 (front door holding: 0 in flight, 3 held, 0 queued)"
    assert got["engine"].endswith("http://127.0.0.1:41234 (behind the front door)")
    plain = rows({"url": "http://127.0.0.1:8000", "engine_url": "http://127.0.0.1:8000", "frontdoor": {"enabled": False}})
    assert plain["serving"] == "http://127.0.0.1:8000" and plain["engine"].endswith("http://127.0.0.1:8000")


def test_format_status_copes_with_a_sparse_snapshot() -> None:
    console = Console(record=True, width=80, color_system=None)
    console.print(format_status({"state": "failed", "message": "model_not_found: gave up after 1 attempt"}))
    text = console.export_text()
    assert "FAILED" in text and "model_not_found" in text and "SIMULATED" not in text
