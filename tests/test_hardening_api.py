"""The REST API under fuzzing: schemathesis over the app's own OpenAPI document, hypothesis over
snapshots and Authorization headers, and raw odd requests against the real embedded uvicorn
server. No 5xx, the token rules hold for every mutating route (found in the OpenAPI document, so
a new one is covered without editing this file), oversized and malformed requests are refused
cleanly and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import checks
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_supervisor.api.server import MAX_BODY_BYTES, create_app, start_api, stop_api
from llm_supervisor.errors import RuntimeFailure
from llm_supervisor.states import State

TOKEN = "tok-fuzz-0123456789"
SNAPSHOT: dict[str, Any] = {
    "state": "ready", "ready": True, "profile": "p", "model": "m", "pid": 123, "uptime_s": 1.5,
    "argv": ["vllm", "serve", "m", "--api-key", "***"], "attempt": 1, "restarts": 2,
    "restarts_by_reason": {"admin": 1, "cuda_oom": 1}, "kv_cache_tokens": 1000, "max_concurrency": 2.5,
    "max_model_len": 4096, "gpu_memory_utilization": 0.9, "cpus": [0, 1],
    "gpus": [{"index": 0, "name": "GPU", "memory_used_mib": 10, "memory_total_mib": 100}],
    "history": [{"at": "2026-01-01T00:00:00+00:00", "event": "launch", "failure": None, "change": None}],
}
COMMANDS: list[str] = []
FUZZ_APP = create_app(lambda: SNAPSHOT, COMMANDS.append, TOKEN)
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", FUZZ_APP)
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))


@SCHEMA.parametrize()
@FUZZ
def test_schemathesis_generated_credentials(case: Any) -> None:
    """Anything the schema allows, with whatever credentials schemathesis makes up (none, or a
    generated bearer token): no 5xx, responses match the schema, no admin command is queued."""
    before = len(COMMANDS)
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
    if case.operation.method.upper() == case.method.upper() == "POST":
        sent = (case.headers or {}).get("Authorization")
        assert response.status_code == (403 if sent and sent.startswith("Bearer ") and sent[7:].strip() else 401), \
            (case.path, sent, response.status_code)
        assert len(COMMANDS) == before
    case.validate_response(response)


@SCHEMA.parametrize()
@FUZZ
def test_schemathesis_with_token(case: Any) -> None:
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
    if case.operation.method.upper() == case.method.upper() == "POST":
        assert response.status_code == 202
    # the auth-negative checks expect a refusal, which the right token rightly does not get
    case.validate_response(response, excluded_checks=[checks.ignored_auth, checks.missing_required_header])


# ------------------------------------------------------------------ auth on every mutating route


def mutating_routes(app: Any) -> list[tuple[str, str]]:
    spec = app.openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
            if method.lower() in ("post", "put", "patch", "delete")]


def test_every_mutating_route_needs_the_token() -> None:
    queued: list[str] = []
    client = TestClient(create_app(lambda: SNAPSHOT, queued.append, TOKEN))
    routes = mutating_routes(client.app)
    assert ("POST", "/restart") in routes and ("POST", "/stop") in routes
    for done, (method, path) in enumerate(routes):
        r = client.request(method, path)
        assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer", (path, r.text)
        for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", TOKEN, f"Token {TOKEN}"):
            assert client.request(method, path, headers={"Authorization": header}).status_code == 401, (path, header)
        for wrong in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "x" * 4096, f"{TOKEN} {TOKEN}"):
            r = client.request(method, path, headers={"Authorization": f"Bearer {wrong}"})
            assert r.status_code == 403 and TOKEN not in r.text, (path, wrong[:20])
        assert len(queued) == done
        r = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 202, r.text
    assert len(queued) == len(routes)
    # the OpenAPI document says so, too
    spec = client.app.openapi()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path in routes:
        assert spec["paths"][path][method.lower()].get("security"), path
    # and the read-only routes need nothing
    for path in ("/status", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_without_a_token_only_loopback_clients_may_act() -> None:
    queued: list[str] = []
    remote = TestClient(create_app(lambda: SNAPSHOT, queued.append, None), client=("192.0.2.7", 5000))
    local = TestClient(create_app(lambda: SNAPSHOT, queued.append, None), client=("127.0.0.1", 5000))
    for method, path in mutating_routes(remote.app):
        r = remote.request(method, path, headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403 and "192.0.2.7" in r.text
        assert local.request(method, path).status_code == 202
    assert len(queued) == len(mutating_routes(remote.app))


header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                      max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(header_text, header_text.map(lambda t: "Bearer " + t), st.just(f"Bearer {TOKEN}")),
       st.sampled_from(["/restart", "/stop"]))
def test_random_authorization_headers(header: str, path: str) -> None:
    queued: list[str] = []
    client = TestClient(create_app(lambda: SNAPSHOT, queued.append, TOKEN))
    r = client.post(path, headers={"Authorization": header.encode("latin-1")})
    ok = header.strip().partition(" ")[0].lower() == "bearer" and header.strip().partition(" ")[2].strip() == TOKEN
    assert r.status_code == (202 if ok else r.status_code) and r.status_code in (202, 401, 403)
    assert (r.status_code == 202) == ok and len(queued) == (1 if ok else 0)
    assert TOKEN not in r.text


# ------------------------------------------------------------------ whatever the daemon's snapshot holds

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.floats(allow_nan=False), st.text(max_size=10))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=8)
snapshots = st.fixed_dictionaries(
    {"state": st.one_of(st.sampled_from([s.value for s in State]), json_leaf)},
    optional={k: json_any for k in ("ready", "profile", "pid", "uptime_s", "argv", "attempt", "restarts",
                                    "restarts_by_reason", "kv_cache_tokens", "max_concurrency", "max_model_len",
                                    "gpu_memory_utilization", "gpus", "cpus", "history", "message", "simulated")},
)


CURRENT: dict[str, Any] = {}
SNAP_CLIENT = TestClient(create_app(lambda: CURRENT["snap"], lambda _: None, TOKEN))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(snapshots)
def test_any_snapshot_is_served_without_5xx(snap: dict[str, Any]) -> None:
    """Whatever the daemon's snapshot holds (its types are the daemon's business), every read
    route answers: /status falls back to the raw snapshot, /metrics skips what is not a number."""
    CURRENT["snap"] = snap
    client = SNAP_CLIENT
    for path in ("/status", "/healthz", "/metrics"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert client.get("/status").json()["state"] == json.loads(json.dumps(snap, default=str))["state"] \
        or isinstance(snap["state"], float)
    r = client.get("/readyz")
    assert r.status_code in (200, 503) and r.json()["status"] in ("ready", "not ready")


def test_broken_status_source_is_503_not_500() -> None:
    def boom() -> dict:
        raise RuntimeError("snapshot bug")

    client = TestClient(create_app(boom, lambda _: None, TOKEN), raise_server_exceptions=False)
    assert client.get("/status").status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 503

    def refuse(action: str) -> None:
        raise RuntimeFailure("the daemon is already stopping")

    client = TestClient(create_app(lambda: SNAPSHOT, refuse, TOKEN))
    r = client.post("/stop", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 409 and "already stopping" in r.text


# ------------------------------------------------------------------ the real server: odd requests


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    """The real embedded uvicorn server on a free port, in a thread of its own."""
    queued: list[str] = []
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        srv = await start_api(create_app(lambda: SNAPSHOT, queued.append, TOKEN), "127.0.0.1", 0)
        state["port"], state["loop"], state["stop"] = srv.port, asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await stop_api(srv)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(20)
    yield state["port"], queued
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(15)


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 0:
                    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), None)
                    if length is not None and len(body) >= length:
                        break
        except (socket.timeout, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def test_oversized_and_odd_requests_are_refused_cleanly(server: tuple[int, list[str]]) -> None:
    port, queued = server
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    big = MAX_BODY_BYTES + 1
    cases: list[tuple[str, bytes, set[int]]] = [
        ("declared oversized body", b"POST /restart HTTP/1.1\r\nHost: x\r\n" + auth
         + f"Content-Length: {big}\r\n\r\n".encode() + b"x" * 1024, {413}),
        ("chunked oversized body", b"POST /stop HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
         + b"".join(f"{8192:x}\r\n".encode() + b"y" * 8192 + b"\r\n" for _ in range(big // 8192 + 2)) + b"0\r\n\r\n",
         {413}),
        ("oversized body on a GET", b"GET /status HTTP/1.1\r\nHost: x\r\n" + f"Content-Length: {10**9}\r\n\r\n".encode(), {413}),
        ("bad Content-Length", b"POST /restart HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: abc\r\n\r\n", {400}),
        ("garbage request line", b"\x00\x01GARBAGE\r\n\r\n", {400}),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400, 404, 505}),
        ("huge header", b"GET /status HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 200_000 + b"\r\n\r\n", {400, 431}),
        ("huge path", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404, 414, 431}),
        ("unknown method", b"BREW /status HTTP/1.1\r\nHost: x\r\n\r\n", {400, 405}),
        ("wrong method", b"DELETE /restart HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", {405}),
        ("path traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
        ("bad percent-encoding", b"GET /status%zz%00?%%=%ff HTTP/1.1\r\nHost: x\r\n\r\n", {400, 404}),
        ("non-UTF-8 token", b"POST /restart HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 0\r\n\r\n", {403}),
        ("JSON body nobody reads", b"POST /restart HTTP/1.1\r\nHost: x\r\n" + auth
         + b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\": [1", {202}),
    ]
    for label, data, allowed in cases:
        code = status_of(raw(port, data))
        assert code in allowed, (label, code)
    # only the one well-formed, authorised request queued anything
    assert queued == ["restart"]
    # a client that sends half a request and vanishes costs nothing
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"POST /restart HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    # the server still answers, promptly
    t0 = time.monotonic()
    r = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5, trust_env=False)
    assert r.status_code == 200 and r.json()["state"] == "ready" and time.monotonic() - t0 < 2
    assert queued == ["restart"]
