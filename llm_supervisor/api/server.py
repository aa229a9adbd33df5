"""The daemon's REST API: status, health, Prometheus metrics, and the admin actions.

The daemon owns every piece of state. The app only READS a ready-made snapshot dict through
`status_source()` and ENQUEUES admin commands through `command_sink(action)`; it never awaits the
engine, NVML or the disk. Handlers are `async def` on purpose: they run on the daemon's own event
loop thread, so the daemon's snapshot and its (non thread-safe) asyncio queue are only touched from
that thread, and no worker thread pool is involved.

The server runs inside the daemon's loop (api/embedded.py): it takes no signals and never calls
`sys.exit`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Optional, Union

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import to_json

from llm_supervisor import __version__
from llm_supervisor.api.embedded import Address, EmbeddedServer, plain_host
from llm_supervisor.api.page import render_page
from llm_supervisor.errors import SettingsError, SupervisorError
from llm_supervisor.states import State

__all__ = [
    "ACTIONS",
    "MAX_BODY_BYTES",
    "GpuStatus",
    "HistoryEntry",
    "StatusResponse",
    "check_bind_allowed",
    "create_app",
    "is_loopback_host",
    "start_api",
    "stop_api",
]

log = logging.getLogger("llm_supervisor.api.server")

StatusSource = Callable[[], dict]
CommandSink = Callable[[str], None]
SeriesSource = Callable[[], dict]
# (attempt or None, follow) -> an async iterator of the engine's output; raises SupervisorError
# (answered 404) when there is no such attempt.
LogsSource = Callable[[Optional[int], bool, Optional[int]], Awaitable[AsyncIterator[bytes]]]

ACTIONS = ("restart", "stop")
# No endpoint takes a body; anything larger than this is refused before it is read.
MAX_BODY_BYTES = 64 * 1024
# The classic exposition format: every Prometheus (2.x and 3.x) scraper accepts it.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ACTION_DETAIL = {
    "restart": "restart requested: the engine will be stopped and relaunched with the same arguments",
    "stop": "stop requested: the engine will be stopped and the daemon will exit",
}


# --------------------------------------------------------------------------- response models

Number = Union[int, float]


class GpuStatus(BaseModel):
    """One GPU as the daemon last read it (physical NVML index)."""

    model_config = ConfigDict(extra="allow")

    index: int
    name: Optional[str] = None
    memory_used_mib: Optional[Number] = None
    memory_total_mib: Optional[Number] = None


class HistoryEntry(BaseModel):
    """One recorded event: a launch, a failure and the recovery decision taken for it."""

    model_config = ConfigDict(extra="allow")

    at: Union[float, str, None] = Field(default=None, description="when (epoch seconds or ISO 8601)")
    event: Optional[str] = Field(default=None, description="what happened (launch, ready, exit, relaunch, give_up, …)")
    failure: Union[str, dict[str, Any], None] = Field(default=None, description="failure kind, or {kind, message, values}")
    change: Union[dict[str, Any], str, None] = Field(default=None, description="argument changes made for the next launch")


class StatusResponse(BaseModel):
    """`GET /status`: the fields the contract fixes. The daemon may add more; they pass through."""

    model_config = ConfigDict(extra="allow")

    state: State
    profile: Optional[str] = None
    pid: Optional[int] = Field(default=None, description="the engine's pid (None when no engine runs)")
    uptime_s: Optional[float] = Field(default=None, description="seconds since the engine was launched")
    argv: Optional[list[str]] = Field(default=None, description="the engine's argv, secrets redacted")
    attempt: Optional[int] = None
    restarts: Optional[int] = None
    kv_cache_tokens: Optional[int] = None
    max_concurrency: Optional[float] = None
    max_model_len: Optional[int] = None
    gpu_memory_utilization: Optional[float] = None
    gpus: list[GpuStatus] = Field(default_factory=list)
    cpus: Optional[list[int]] = None
    history: list[HistoryEntry] = Field(default_factory=list)


class Detail(BaseModel):
    detail: str


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str
    state: Optional[str] = None


# --------------------------------------------------------------------------- addresses


def is_loopback_host(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x). Anything else is not loopback,
    including 0.0.0.0, ::, the empty host (all interfaces) and names we would have to resolve."""
    if not host:
        return False
    plain = plain_host(host)
    if plain.lower().rstrip(".") in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        addr = ipaddress.ip_address(plain)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def _secret(token: str | SecretStr | None) -> str | None:
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    return token or None


def check_bind_allowed(host: str, token: str | SecretStr | None) -> None:
    """Refuse to expose the admin API beyond this machine without a token (raises SettingsError,
    a BadInput)."""
    if _secret(token) is None and not is_loopback_host(host):
        raise SettingsError(
            "refusing a non-loopback API address without a token",
            [
                f"LLM_SUPERVISOR_API_HOST={host}: refusing to serve the admin API on a non-loopback "
                "address without LLM_SUPERVISOR_API_TOKEN"
            ],
        )


# --------------------------------------------------------------------------- metrics


class StatusCollector:
    """Prometheus collector reading the daemon's snapshot at scrape time (no state of its own)."""

    def __init__(self, status_source: StatusSource) -> None:
        self._source = status_source

    def describe(self) -> list[Metric]:
        return []  # registering must not call the source

    def collect(self) -> Iterator[Metric]:
        snap = self._source() or {}
        current = str(snap.get("state") or "")

        state = GaugeMetricFamily("llm_supervisor_state", "1 for the daemon's current state, 0 for the others", labels=["state"])
        for s in State:
            state.add_metric([s.value], 1.0 if s.value == current else 0.0)
        yield state

        yield GaugeMetricFamily("llm_supervisor_ready", "1 when the engine answers requests", value=1.0 if _is_ready(snap) else 0.0)

        restarts = CounterMetricFamily("llm_supervisor_restarts", "engine relaunches, by the reason that caused them", labels=["reason"])
        by_reason = snap.get("restarts_by_reason")
        if not isinstance(by_reason, dict):  # a malformed snapshot must not cost the whole scrape
            by_reason = {}
        counted = 0.0
        for reason, n in sorted(by_reason.items(), key=lambda item: str(item[0])):
            if _num(n) is not None:
                restarts.add_metric([str(reason)], float(n))
                counted += float(n)
        total = _num(snap.get("restarts"))
        if total is not None and total > counted:
            restarts.add_metric(["unknown"], float(total - counted))
        yield restarts

        for name, key, doc in (
            ("llm_supervisor_kv_cache_tokens", "kv_cache_tokens", "GPU KV cache size in tokens, as the engine reported it"),
            ("llm_supervisor_max_concurrency", "max_concurrency", "requests of max_model_len tokens that fit in the KV cache at once"),
            ("llm_supervisor_max_model_len", "max_model_len", "context length the engine runs with"),
            ("llm_supervisor_gpu_memory_utilization", "gpu_memory_utilization", "fraction of GPU memory the engine may use"),
            ("llm_supervisor_attempt", "attempt", "launch attempt number of the current engine"),
            ("llm_supervisor_uptime_seconds", "uptime_s", "seconds since the current engine was launched"),
        ):
            value = _num(snap.get(key))
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))

        cpus = snap.get("cpus")
        if isinstance(cpus, (list, tuple)):
            yield GaugeMetricFamily("llm_supervisor_cpus", "CPUs the engine tree is pinned to", value=float(len(cpus)))
        if "simulated" in snap:
            yield GaugeMetricFamily("llm_supervisor_simulated", "1 when the engine is the bundled simulator", value=1.0 if snap.get("simulated") else 0.0)

        used = GaugeMetricFamily("llm_supervisor_gpu_memory_used_bytes", "GPU memory in use (whole device)", labels=["gpu", "name"])
        total_b = GaugeMetricFamily("llm_supervisor_gpu_memory_total_bytes", "GPU memory size", labels=["gpu", "name"])
        gpus = snap.get("gpus")
        for gpu in gpus if isinstance(gpus, list) else []:
            if not isinstance(gpu, dict):
                continue
            labels = [str(gpu.get("index", "")), str(gpu.get("name") or "")]
            if _num(gpu.get("memory_used_mib")) is not None:
                used.add_metric(labels, float(gpu["memory_used_mib"]) * 1024 * 1024)
            if _num(gpu.get("memory_total_mib")) is not None:
                total_b.add_metric(labels, float(gpu["memory_total_mib"]) * 1024 * 1024)
        yield used
        yield total_b

        info = {k: str(snap[k]) for k in ("profile", "model", "served_model_name") if snap.get(k) is not None}
        info["version"] = __version__
        yield InfoMetricFamily("llm_supervisor", "what the daemon serves", value=info)


def _host_name(host: str) -> str:
    """'127.0.0.1:8900' → '127.0.0.1', '[::1]:8900' → '::1'."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _origin_of(request: Request) -> str:
    """The origin a page served by this daemon would send: scheme://Host."""
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _num(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _is_ready(snap: dict) -> bool:
    return str(snap.get("state") or "") == State.READY.value and bool(snap.get("ready", True))


# --------------------------------------------------------------------------- body limit


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while streaming."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    await self._refuse(send, 400, "bad Content-Length")
                    return
                if too_big:
                    await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")
                    return
        if any(name == b"transfer-encoding" for name, _ in scope.get("headers") or []):
            await self._buffered(scope, receive, send)
            return

        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")

    async def _buffered(self, scope: dict, receive: Callable, send: Callable) -> None:
        """A streamed body of unannounced size: read it (at most max_bytes) before the app runs, so
        a route that never reads its body cannot act on an oversized request."""
        messages: list[dict] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                await self._refuse(send, 413, f"request body over {self.max_bytes} bytes")
                return
            if not message.get("more_body"):
                break
        pending = list(reversed(messages))

        async def replay() -> dict:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Callable, status: int, detail: str) -> None:
        body = JSONResponse({"detail": detail}).body
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app


def create_app(status_source: StatusSource, command_sink: CommandSink, token: str | SecretStr | None,
               collectors: Iterable[Any] = (), *, series_source: SeriesSource | None = None,
               logs_source: LogsSource | None = None) -> FastAPI:
    """Build the REST app over the daemon's snapshot reader and command queue.

    `status_source()` must be cheap and non-blocking (it returns the daemon's current snapshot).
    `command_sink(action)` must only enqueue; it may raise a SupervisorError to refuse the action
    (answered 409 with its message) or anything else when it cannot take commands (503).
    `series_source()` (the last hour, for the status page) is as cheap; `logs_source(attempt,
    follow, lines)` streams the engine's output (`GET /logs`, which takes the admin actions' rule).
    """
    secret = _secret(token)
    secret_bytes = secret.encode("utf-8") if secret else None

    app = FastAPI(
        title="llm-supervisor",
        version=__version__,
        description="Status, health, metrics and admin actions of the vLLM supervisor daemon.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_source))
    for collector in collectors:  # the front door's, for one
        registry.register(collector)

    def snapshot() -> dict:
        try:
            snap = status_source()
        except Exception:
            log.exception("status source failed")
            raise HTTPException(503, "status is not available right now") from None
        if not isinstance(snap, dict):
            raise HTTPException(503, "status is not available right now")
        return snap

    def authorize(request: Request) -> None:
        # A web page elsewhere must not act through the visitor's browser (a cross-site form
        # POST to 127.0.0.1, or a name rebound to it): browsers send Origin on such requests.
        origin = request.headers.get("origin")
        if origin is not None and origin != _origin_of(request):
            raise HTTPException(403, f"refused: a request from the web page {origin[:100]!r} (cross-origin)")
        if secret_bytes is None:
            # ...nor through a name of its own rebound to 127.0.0.1: a browser's request (it says
            # Origin or Sec-Fetch-Site) must name this machine in its Host.
            browser = origin is not None or request.headers.get("sec-fetch-site") is not None
            if browser and not is_loopback_host(_host_name(request.headers.get("host", ""))):
                raise HTTPException(403, "refused: a browser request for another host name without LLM_SUPERVISOR_API_TOKEN")
            host = request.client.host if request.client else None
            if not is_loopback_host(host):
                raise HTTPException(
                    403,
                    f"admin actions from {host or 'an unknown client'} refused: without LLM_SUPERVISOR_API_TOKEN "
                    "only loopback clients may restart or stop",
                )
            return
        header = request.headers.get("authorization")
        if not header:
            raise HTTPException(401, "missing token: send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise HTTPException(401, "expected Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.strip().encode("utf-8"), secret_bytes):
            raise HTTPException(403, "wrong token")

    def enqueue(action: str, request: Request) -> JSONResponse:
        authorize(request)
        try:
            command_sink(action)
        except SupervisorError as exc:
            raise HTTPException(409, f"{action} refused: {exc.message}") from None
        except Exception:
            log.exception("command sink failed for %s", action)
            raise HTTPException(503, f"{action} could not be queued: the daemon is not taking commands") from None
        client = request.client.host if request.client else "unknown"
        log.info("admin %s requested by %s", action, client)
        return JSONResponse({"detail": _ACTION_DETAIL[action], "action": action}, status_code=202)

    @app.get("/status", response_model=StatusResponse, summary="Daemon and engine status", tags=["status"])
    async def get_status() -> Response:
        snap = snapshot()
        try:
            model = StatusResponse.model_validate(snap)
        except ValidationError as exc:
            # A malformed snapshot is a daemon bug; still answer with what there is.
            log.warning("status snapshot does not match the schema: %s", exc.errors()[:3])
            try:
                body = to_json(snap, fallback=str, inf_nan_mode="null")
            except Exception:
                log.exception("status snapshot cannot be serialized")
                raise HTTPException(503, "status is not available right now") from None
            return Response(body, media_type="application/json")
        # Straight to JSON bytes: faster than dump + json.dumps, and a stray inf/NaN becomes null
        # instead of a 500 (JSON has no such numbers).
        return Response(model.model_dump_json(), media_type="application/json")

    @app.get("/status/series", summary="The last hour, sampled by the daemon (for the status page)", tags=["status"],
             responses={404: {"model": Detail, "description": "this daemon keeps no series"},
                        503: {"model": Detail, "description": "the series is not available right now"}})
    async def get_series() -> Response:
        if series_source is None:
            raise HTTPException(404, "this daemon keeps no series")
        try:
            body = to_json(series_source(), fallback=str, inf_nan_mode="null")
        except Exception:
            log.exception("series source failed")
            raise HTTPException(503, "the series is not available right now") from None
        return Response(body, media_type="application/json")

    @app.get("/", response_class=HTMLResponse, summary="The status page", tags=["status"],
             responses={503: {"model": Detail, "description": "status is not available right now"}})
    async def page(request: Request) -> Response:
        snap = snapshot()
        series = None
        if series_source is not None:
            with contextlib.suppress(Exception):
                series = series_source()
        client = request.client.host if request.client else None
        admin = "token" if secret_bytes is not None else ("loopback" if is_loopback_host(client) else "none")
        html, nonce = render_page(snap, series, admin=admin)
        return HTMLResponse(html, headers={
            # everything comes from this daemon; scripts only with this response's nonce
            "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                                       "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                       "form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        })

    @app.get(
        "/logs",
        summary="The engine's output (admin rule: the token, or loopback without one)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "the engine's output, as it wrote it"},
                   401: {"model": Detail, "description": "token required (Authorization: Bearer <token>)"},
                   403: {"model": Detail, "description": "wrong token, a non-loopback client while no token is set, "
                                                         "or a request from another web page"},
                   404: {"model": Detail, "description": "no such attempt, or no engine log yet"}},
        tags=["admin"],
    )
    async def logs(request: Request,
                   attempt: Optional[int] = Query(None, ge=1, le=1_000_000, description="launch N of this run (default: the newest)"),
                   follow: bool = Query(False, description="keep streaming what the engine writes next"),
                   lines: Optional[int] = Query(None, ge=0, le=1_000_000,
                                                description="only the attempt's last N lines (then, with follow, what comes next)"),
                   ) -> Response:
        authorize(request)
        if logs_source is None:
            raise HTTPException(404, "this daemon serves no engine log")
        try:
            stream = await logs_source(attempt, follow, lines)
        except SupervisorError as exc:
            raise HTTPException(404, exc.message) from None
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", response_model=Health, summary="The daemon is alive", tags=["status"])
    async def healthz() -> dict:
        body: dict[str, Any] = {"status": "ok"}
        with contextlib.suppress(Exception):
            body["state"] = str(status_source().get("state"))
        return body

    @app.get(
        "/readyz",
        response_model=Health,
        summary="200 only when the engine is ready",
        responses={503: {"model": Health, "description": "engine not ready"}},
        tags=["status"],
    )
    async def readyz() -> JSONResponse:
        snap = snapshot()
        state = str(snap.get("state") or "unknown")
        if _is_ready(snap):
            return JSONResponse({"status": "ready", "state": state})
        body: dict[str, Any] = {"status": "not ready", "state": state}
        if snap.get("message"):
            body["message"] = str(snap["message"])
        return JSONResponse(body, status_code=503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
        tags=["status"],
    )
    async def metrics() -> Response:
        try:
            payload = generate_latest(registry)
        except Exception:
            log.exception("metrics collection failed")
            raise HTTPException(503, "metrics are not available right now") from None
        return Response(payload, media_type=METRICS_CONTENT_TYPE)

    # Declares the bearer scheme in the OpenAPI document (/docs can send it, fuzzers check it);
    # it never refuses anything itself: authorize() does, with the messages above.
    admin_deps = [Depends(HTTPBearer(auto_error=False, description="LLM_SUPERVISOR_API_TOKEN"))] if secret_bytes else []
    admin_responses: dict[int | str, dict[str, Any]] = {
        401: {"model": Detail, "description": "token required (Authorization: Bearer <token>)"},
        403: {"model": Detail, "description": "wrong token, or a non-loopback client while no token is set"},
        409: {"model": Detail, "description": "the daemon refused the action in its current state"},
    }

    @app.post("/restart", status_code=202, response_model=Detail, responses=admin_responses, summary="Restart the engine",
              tags=["admin"], dependencies=admin_deps)
    async def restart(request: Request) -> JSONResponse:
        return enqueue("restart", request)

    @app.post("/stop", status_code=202, response_model=Detail, responses=admin_responses,
              summary="Stop the engine and the daemon", tags=["admin"], dependencies=admin_deps)
    async def stop(request: Request) -> JSONResponse:
        return enqueue("stop", request)

    return app


# --------------------------------------------------------------------------- embedded server


async def start_api(app: Any, host: str, port: int, *, startup_timeout_s: float = 10.0) -> EmbeddedServer:
    """Serve `app` as a task in the running loop; return once it is listening. Raises
    RuntimeFailure ("API port 8900 is in use", …) or BadInput instead of exiting. The returned
    server's `.task` is the serving task and `.port` the bound port."""
    server = EmbeddedServer(app, Address(host, port, "API", "LLM_SUPERVISOR_API_HOST", "LLM_SUPERVISOR_API_PORT"),
                            log_level="warning", timeout_graceful_shutdown=3)
    await server.start(startup_timeout_s)
    return server


async def stop_api(server: EmbeddedServer, timeout_s: float = 5.0) -> None:
    """Stop serving: graceful first, then forced; never raises for a server already gone."""
    await server.stop(timeout_s)
