"""The simulated `vllm serve` API-server process.

Order of events, as in vLLM 0.26: banner and arguments → bind the port (not yet listening, so
connects are refused) → model config → fork EngineCore(s) → wait for their handshake → routes and
uvicorn's startup lines → listen. It then serves the OpenAI API, feeding requests to EngineCore
and streaming the tokens EngineCore produces at the configured rate.

Signals and deaths:
- SIGTERM/SIGINT while serving: the 0.26 "[shutdown]" lines, EngineCore(s) get SIGTERM (SIGKILL
  after 5 s), exit 0.
- SIGTERM/SIGINT during startup: KeyboardInterrupt("terminated") as vLLM raises it; the engines
  are stopped, the traceback printed, and the process dies by SIGINT (CPython's exit for an
  uncaught KeyboardInterrupt).
- EngineCore dies while serving: EngineDeadError logged, /health 503 for DEATH_GRACE_S, exit 0.
- The API server is SIGKILLed: nothing here runs; EngineCore lives on (see engine.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import select
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from llm_supervisor.simulator import metrics as prom
from llm_supervisor.simulator import openai
from llm_supervisor.simulator import tracebacks as tb
from llm_supervisor.simulator.config import Faults, SimConfig, StartupError, env_float, resolve
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.simulator.enginecore import spawn_engine
from llm_supervisor.simulator.httpserver import Exchange, HttpServer, Request, Response
from llm_supervisor.simulator.logs import STDOUT, Log, traceback_text
from llm_supervisor.simulator.proc import Channel, sleep

SIMULATED_WARNING = "SIMULATED vLLM: no GPU is used; numbers come from the simulator's memory model"
LOGO = ("\n"
        "       █     █     █▄   ▄█\n"
        " ▄▄ ▄█ █     █     █ ▀▄▀ █  version {version}\n"
        "  █▄█▀ █     █     █     █  model   {model}\n"
        "   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n")
ROUTES = [
    ("/openapi.json", "HEAD, GET"), ("/docs", "HEAD, GET"), ("/docs/oauth2-redirect", "HEAD, GET"),
    ("/redoc", "HEAD, GET"), ("/load", "GET"), ("/version", "GET"), ("/health", "GET"), ("/metrics", "GET"),
    ("/tokenize", "POST"), ("/detokenize", "POST"), ("/v1/models", "GET"), ("/ping", "GET"), ("/ping", "POST"),
    ("/invocations", "POST"), ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"),
]
ENGINE_DEAD_MSG = "EngineCore encountered an issue. See stack trace (above) for the root cause."
DEAD = object()


@dataclass
class EngineHandle:
    dp_rank: int
    pid: int
    sock: socket.socket
    label: str
    facts: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    writer: asyncio.StreamWriter | None = None
    requests: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)
    stats: prom.EngineStats = field(default_factory=prom.EngineStats)

    def reap(self, block: bool = False) -> bool:
        """True once the process has exited (recording its code)."""
        if self.exit_code is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.exit_code = self.exit_code if self.exit_code is not None else 0
            return True
        if pid == 0:
            return False
        self.exit_code = os.waitstatus_to_exitcode(status)
        return True

    def send(self, msg: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")


class ApiServer:
    def __init__(self, ns: Any, shown: dict[str, Any], dialect: Dialect) -> None:
        self.ns = ns
        self.shown = shown
        self.d = dialect
        self.log = Log(dialect.api_name, ansi=dialect.ansi_prefix, raw_prefix=not dialect.unprefixed_raw)
        self.faults = Faults.from_env()
        self.engines: list[EngineHandle] = []
        self.sock: socket.socket | None = None
        self.cfg: SimConfig | None = None
        self.dead = False
        self.stopping = False
        self.in_flight = 0
        self.exit_code: asyncio.Future[int] | None = None
        self.http: HttpServer | None = None
        self.grace_s = env_float("DEATH_GRACE_S", 3.0)
        self.access_log = not ns.disable_uvicorn_access_log

    # ------------------------------------------------------------ entry

    def run(self) -> int:
        try:
            return self._run()
        except KeyboardInterrupt as exc:
            return self._interrupted(exc)

    def _run(self) -> int:
        d, log = self.d, self.log
        if "ignore_sigterm" in self.faults:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, _raise_terminated)
        log.warning(d.src("simulated"), SIMULATED_WARNING)
        if d.logo:
            log.info(d.src("logo"), LOGO.format(version=d.version, model=self.ns.model))
        else:
            log.info(d.src("version"), f"vLLM API server version {d.version}")
        if d.non_default_args:
            log.info(d.src("args"), f"non-default args: {self.shown}")
        else:
            log.info(d.src("args"), f"args: Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self._safe_ns()).items())})")
        for item in self.faults.unknown:
            log.warning(d.src("simulated"), f"unknown LLM_SUPERVISOR_SIM_FAULT entry ignored: {item!r}")
        try:
            self._bind()
            self.cfg = cfg = resolve(self.ns, d)
        except StartupError as exc:
            self.log.raw(traceback_text(exc.frames, exc.final, carets=True))
            return 1
        if d.at_least(0, 10):
            log.info(d.src("arch"), f"Resolved architecture: {cfg.architecture}")
        log.info(d.src("max_len"), f"Using max model len {cfg.max_model_len if cfg.max_model_len != -1 else cfg.derived_max_model_len}")
        log.info(d.src("chunked"), f"Chunked prefill is enabled with max_num_batched_tokens={cfg.max_num_batched_tokens}.")
        if d.v2_runner_line:
            log.info(d.src("async_sched"), "Asynchronous scheduling is enabled.")
        sleep(cfg.timing.phase("api_pre"))
        for dp_rank in range(cfg.dp):
            pid, sock = spawn_engine(cfg, dp_rank)
            self.engines.append(EngineHandle(dp_rank, pid, sock, d.engine_proc_label(dp_rank)))
        if not self._wait_ready(cfg):
            return 1
        sleep(cfg.timing.phase("api_ready"))
        if d.at_least(0, 10):
            log.info(d.src("tasks"), "Supported tasks: ['generate']")
        log.info(d.src("starting"), d.starting_server(cfg.host or "", cfg.port))
        log.info(d.src("routes"), "Available routes are:")
        for path, methods in ROUTES:
            log.info(d.src("route"), f"Route: {path}, Methods: {methods}")
        return asyncio.run(self._serve())

    def _safe_ns(self) -> Any:
        import argparse

        values = dict(vars(self.ns))
        if values.get("api_key"):
            values["api_key"] = ["***"]
        return argparse.Namespace(**values)

    # ------------------------------------------------------------ startup steps

    def _bind(self) -> None:
        host = self.ns.host or ""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, so that asyncio turns Nagle's algorithm off on each accepted connection (it
        # does only for sockets that name the protocol). With it on, a streamed answer's first
        # chunk waited for the client's delayed ACK of the headers on a reused keep-alive
        # connection: ~30 ms added to the first token behind the front door (whose connections to
        # the engine are kept alive), which real vLLM does not show (Qwen3-4B shape on an H200:
        # 23 ms through the front door, 22 ms direct).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.d.so_reuseport and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, self.ns.port))
        except OSError as exc:
            sock.close()
            final = f"OSError: [Errno {exc.errno}] {exc.strerror}"
            if isinstance(exc, socket.gaierror):
                final = f"socket.gaierror: [Errno {exc.errno}] {exc.strerror}"
            raise StartupError(final, tb.API_SERVER_STARTUP + tb.API_BIND) from None
        sock.set_inheritable(False)
        self.sock = sock

    def _wait_ready(self, cfg: SimConfig) -> bool:
        timeout = float(os.environ.get("VLLM_ENGINE_READY_TIMEOUT_S", "600") or 600)
        deadline = time.monotonic() + timeout
        chans = {e.sock.fileno(): (e, Channel(e.sock)) for e in self.engines}
        pending = dict(chans)
        while pending:
            ready, _, _ = select.select(list(pending), [], [], 0.05)
            for fd in ready:
                engine, chan = pending[fd]
                try:
                    msg = chan.recv(timeout=5)
                except TimeoutError:
                    continue
                if msg is None:
                    engine.reap(block=True)
                    return self._startup_failed()
                if msg.get("op") == "ready":
                    engine.facts = msg
                    del pending[fd]
            for fd, (engine, _chan) in list(pending.items()):
                if engine.reap():
                    return self._startup_failed()
            if time.monotonic() > deadline:
                self._stop_engines_sync()
                final = ("TimeoutError: Timed out waiting for engine core processes to start. This is often caused by "
                         f"slow weight loading for large models. Waited {int(timeout)}s (configured by "
                         "VLLM_ENGINE_READY_TIMEOUT_S). To increase the timeout, set the environment variable: "
                         "VLLM_ENGINE_READY_TIMEOUT_S=<seconds>")
                self.log.raw(traceback_text(tb.API_SERVER_STARTUP + tb.API_ENGINE_CLIENT + tb.API_ENGINE_TIMEOUT, final))
                return False
        for engine, chan in chans.values():
            engine.sock.setblocking(False)
            if chan.buf:  # never expected: nothing is sent before the API asks
                chan.buf = b""
        return True

    def _startup_failed(self) -> bool:
        failed = {}
        for e in self.engines:
            if e.reap():
                failed[e.label] = e.exit_code if e.exit_code is not None else 1
        self._stop_engines_sync()
        final = "RuntimeError: " + self.d.engine_init_failed(failed)
        self.log.raw(traceback_text(tb.API_SERVER_STARTUP + tb.API_ENGINE_CLIENT + tb.API_ENGINE_START, final))
        return False

    def _stop_engines_sync(self, grace: float = 5.0) -> None:
        for e in self.engines:
            if not e.reap():
                try:
                    os.kill(e.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while any(not e.reap() for e in self.engines) and time.monotonic() < deadline:
            time.sleep(0.01)
        for e in self.engines:
            if not e.reap():
                try:
                    os.kill(e.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                e.reap(block=True)

    def _interrupted(self, exc: KeyboardInterrupt) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._stop_engines_sync()
        final = "KeyboardInterrupt" + (f": {exc}" if str(exc) else "")
        self.log.raw(traceback_text(tb.API_SERVER_STARTUP + tb.API_ENGINE_CLIENT + tb.API_ENGINE_START[:6], final))
        # CPython exits an uncaught KeyboardInterrupt by re-raising SIGINT with the default action
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130

    # ------------------------------------------------------------ serving

    async def _serve(self) -> int:
        loop = asyncio.get_running_loop()
        self.exit_code = loop.create_future()
        # until add_signal_handler takes over, SIGTERM still raises KeyboardInterrupt (handled in run)
        if "ignore_sigterm" not in self.faults:
            loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)
        for e in self.engines:
            reader, writer = await asyncio.open_connection(sock=e.sock)
            e.writer = writer
            loop.create_task(self._engine_reader(e, reader))
        self.http = HttpServer(self._handle, self._access)
        self.log.uvicorn(f"Started server process [{os.getpid()}]")
        self.log.uvicorn("Waiting for application startup.")
        self.log.uvicorn("Application startup complete.")
        await self.http.start(self.sock)
        stats_task = loop.create_task(self._stats_logger())
        code = await self.exit_code
        stats_task.cancel()
        return code

    def _on_signal(self, signum: int) -> None:
        if self.stopping:
            return
        self.stopping = True
        asyncio.get_running_loop().create_task(self._shutdown())

    async def _stop_engines(self, grace: float = 5.0) -> None:
        """The same staged stop, off the event loop so /health keeps answering meanwhile."""
        await asyncio.to_thread(self._stop_engines_sync, grace)

    async def _shutdown(self) -> None:
        d, log = self.d, self.log
        if d.shutdown_lines:
            log.info(d.src("sd_triggered"), "[shutdown] API server: shutdown triggered")
            log.info(d.src("sd_stopping"), "[shutdown] API server: stopping engine client mode=abort timeout=0s")
            if not self.dead:
                log.info(d.src("mp_start"), "[shutdown] MPClient: start timeout=0s")
                log.info(d.src("mp_stopping"), "[shutdown] MPClient: stopping engine manager")
                alive = sum(1 for e in self.engines if not e.reap())
                log.warning(d.src("force_kill"), f"[shutdown] Process manager: force killing remaining processes count={alive}")
        self._fail_requests()
        await self._stop_engines()
        if d.shutdown_lines:
            if not self.dead:
                log.info(d.src("mp_stopped"), "[shutdown] MPClient: engine manager stopped")
                log.info(d.src("mp_cleanup"), "[shutdown] MPClient: cleaning up background resources")
                log.info(d.src("mp_complete"), "[shutdown] MPClient: complete")
            log.info(d.src("client_stopped"), "[shutdown] API server: engine client stopped")
            log.info(d.src("signal_http"), "[shutdown] API server: signalling HTTP server shutdown")
            log.info(d.src("shutdown_http"), "[shutdown] API server: shutting down FastAPI HTTP server")
        await self._close_http(finished_line=not d.shutdown_lines)
        self._resource_tracker_warning()
        if self.exit_code is not None and not self.exit_code.done():
            self.exit_code.set_result(0)

    async def _close_http(self, finished_line: bool) -> None:
        self.log.uvicorn("Shutting down")
        if self.http is not None:
            await self.http.close()
        self.log.uvicorn("Waiting for application shutdown.")
        self.log.uvicorn("Application shutdown complete.")
        if finished_line:
            self.log.uvicorn(f"Finished server process [{os.getpid()}]")

    def _resource_tracker_warning(self) -> None:
        if self.d.at_least(0, 9):
            self.log.bare("/usr/lib/python3.12/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: "
                          "There appear to be 1 leaked semaphore objects to clean up at shutdown\n"
                          "  warnings.warn('resource_tracker: There appear to be %d '")

    def _fail_requests(self) -> None:
        for e in self.engines:
            for q in e.requests.values():
                q.put_nowait(DEAD)

    # ------------------------------------------------------------ engine channel

    async def _engine_reader(self, e: EngineHandle, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ConnectionError, ValueError):
                line = b""
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("op") != "step":
                continue
            s = e.stats
            s.running, s.waiting, s.kv_usage = int(msg["run"]), int(msg["wait"]), float(msg["kv"])
            for rid, n in msg["out"].items():
                q = e.requests.get(rid)
                if q is not None:
                    q.put_nowait(int(n))
        if not self.stopping:
            await self._engine_died(e)

    async def _engine_died(self, e: EngineHandle) -> None:
        if self.dead:
            return
        self.dead = True
        d, log = self.d, self.log
        if d.shutdown_lines:
            log.warning(d.src("dead_client"), "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup")
            log.info(d.src("mp_start"), "[shutdown] MPClient: start timeout=default")
            log.info(d.src("mp_stopping"), "[shutdown] MPClient: stopping engine manager")
        else:
            log.error(d.src("proc_died"), f"Engine core proc {e.label} died unexpectedly, shutting down client.")
        await self._stop_engines(grace=2.0)
        if d.shutdown_lines:
            log.info(d.src("mp_stopped"), "[shutdown] MPClient: engine manager stopped")
            log.info(d.src("mp_cleanup"), "[shutdown] MPClient: cleaning up background resources")
            log.info(d.src("mp_complete"), "[shutdown] MPClient: complete")
        log.error(d.src("output_handler"), "AsyncLLM output_handler failed.\n"
                  + traceback_text(tb.API_OUTPUT_HANDLER, tb.ENGINE_DEAD))
        self._fail_requests()
        if os.environ.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH") == "1":
            return
        await asyncio.sleep(self.grace_s)
        if self.stopping:
            return
        self.stopping = True
        await self._close_http(finished_line=True)
        if self.d.shutdown_lines:
            self._resource_tracker_warning()
        if self.exit_code is not None and not self.exit_code.done():
            self.exit_code.set_result(0)

    # ------------------------------------------------------------ HTTP

    def _access(self, req: Request, status: int) -> None:
        if not self.access_log:
            return
        from llm_supervisor.simulator.httpserver import REASONS

        host, port = req.peer
        self.log.uvicorn(f'{host}:{port} - "{req.method} {req.target} HTTP/{req.version}" {status} '
                         f'{REASONS.get(status, "")}', fd=STDOUT)

    def _authorized(self, req: Request) -> bool:
        assert self.cfg is not None
        if not self.cfg.api_keys or not req.path.startswith("/v1"):
            return True
        header = req.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        return any(hmac.compare_digest(given.encode(), k.encode()) for k in self.cfg.api_keys)

    async def _handle(self, req: Request, ex: Exchange) -> None:
        path, method = req.path, req.method
        try:
            if not self._authorized(req):
                await ex.respond(Response.json({"error": "Unauthorized"}, 401))
                return
            if (path == "/health" and method == "GET") or (path == "/ping" and method in ("GET", "POST")):
                status = self.d.dead_engine_health_status if self.dead else 200
                await ex.respond(Response(status, b"", None))
            elif path == "/version" and method == "GET":
                await ex.respond(Response.json({"version": self.d.version, "simulated": True}))
            elif path == "/v1/models" and method == "GET":
                await ex.respond(Response.json(self._models()))
            elif path == "/metrics" and method == "GET":
                await ex.respond(Response(200, self._metrics().encode(), "text/plain; version=0.0.4; charset=utf-8"))
            elif path == "/load" and method == "GET":
                await ex.respond(Response.json({"server_load": self.in_flight}))
            elif path == "/tokenize" and method == "POST":
                body = _json_body(req)
                if not isinstance(body, dict):
                    raise openai.ApiError(400, "Expected a JSON object as the request body.")
                text = body.get("prompt") or " ".join(str(m.get("content", "")) for m in body.get("messages") or []
                                                      if isinstance(m, dict))
                n = openai.count_text_tokens(str(text))
                await ex.respond(Response.json({"count": n, "max_model_len": self._max_len(), "tokens": list(range(n)),
                                                "token_strs": None}))
            elif path == "/v1/chat/completions" and method == "POST":
                await self._generate(req, ex, "chat")
            elif path == "/v1/completions" and method == "POST":
                await self._generate(req, ex, "completion")
            elif path in {p for p, _m in ROUTES}:
                await ex.respond(Response.json({"detail": "Method Not Allowed"}, 405))
            else:
                await ex.respond(Response.json({"detail": "Not Found"}, 404))
        except openai.ApiError as err:
            if ex.status is None:
                await ex.respond(Response.json(err.body(), err.status))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:  # noqa: BLE001 - an HTTP handler answers 500, never dies
            if ex.status is None:
                await ex.respond(Response.json({"error": {"message": str(err), "type": "InternalServerError",
                                                          "param": None, "code": 500}}, 500))

    def _max_len(self) -> int:
        return int(self.engines[0].facts.get("max_model_len", 0)) if self.engines else 0

    def _models(self) -> dict[str, Any]:
        assert self.cfg is not None
        created = int(time.time())
        data = []
        for name in self.cfg.served_names:
            data.append({"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": self.cfg.model,
                         "parent": None, "max_model_len": self._max_len(),
                         "permission": [{"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                                         "created": created, "allow_create_engine": False, "allow_sampling": True,
                                         "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                                         "allow_fine_tuning": False, "organization": "*", "group": None,
                                         "is_blocking": False}]})
        return {"object": "list", "data": data}

    def _metrics(self) -> str:
        assert self.cfg is not None
        cfg, d = self.cfg, self.d
        labels = []
        for e in self.engines:
            f = e.facts
            labels.append(prom.cache_config_labels(
                d.cache_info_has_kv_size, d.cache_info_has_blocks, e.dp_rank, cfg.block_size, cfg.util,
                int(f.get("num_gpu_blocks", 0)), int(f.get("kv_tokens", 0)), float(f.get("concurrency", 0.0)),
                cfg.kv_cache_dtype, cfg.enable_prefix_caching, cfg.num_gpu_blocks_override, cfg.cpu_offload_gb,
                cfg.swap_space))
        return prom.render(cfg.served_names[0], [e.stats for e in self.engines], labels, d.kv_usage_metric)

    def _pick_engine(self) -> EngineHandle:
        return min(self.engines, key=lambda e: e.stats.running + e.stats.waiting + len(e.requests))

    async def _generate(self, req: Request, ex: Exchange, kind: str) -> None:
        assert self.cfg is not None
        if self.dead or self.stopping:
            raise openai.ApiError(500, ENGINE_DEAD_MSG, "InternalServerError")
        g = openai.parse(kind, _json_body(req), self.cfg.served_names, self._max_len(), self.cfg.response_tokens)
        e = self._pick_engine()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        e.requests[g.request_id] = queue
        e.send({"op": "add", "id": g.request_id, "prompt": g.prompt_tokens, "gen": g.planned})
        self.in_flight += 1
        start = time.monotonic()
        generated = 0
        finished = False
        try:
            stream = await ex.stream() if g.stream else None
            if stream is not None:
                await stream.send(openai.first_chunk(g))
            while generated < g.planned:
                item = await queue.get()
                if item is DEAD:
                    if stream is not None:
                        await stream.send(openai.error_chunk(ENGINE_DEAD_MSG))
                        await stream.send(openai.DONE)
                        await stream.end()
                        return
                    raise openai.ApiError(500, ENGINE_DEAD_MSG, "InternalServerError")
                if generated == 0:
                    e.stats.prompt_tokens += g.prompt_tokens
                    e.stats.ttft.observe(time.monotonic() - start)
                chunks = []
                for _ in range(int(item)):
                    if generated >= g.planned:
                        break
                    last = generated + 1 == g.planned
                    if stream is not None:
                        chunks.append(openai.token_chunk(g, generated, g.finish_reason if last else None))
                    generated += 1
                    e.stats.generation_tokens += 1
                if stream is not None and chunks:
                    await stream.send(b"".join(chunks))
            finished = True
            e.stats.success[g.finish_reason] += 1
            e.stats.e2e.observe(time.monotonic() - start)
            if stream is not None:
                if g.include_usage:
                    await stream.send(openai.usage_chunk(g, generated))
                await stream.send(openai.DONE)
                await stream.end()
            else:
                await ex.respond(Response.json(openai.full_response(g, generated, g.finish_reason)))
        except (ConnectionError, asyncio.CancelledError):
            ex.keep_alive = False
            raise
        finally:
            self.in_flight -= 1
            openai.forget(g)
            e.requests.pop(g.request_id, None)
            if not finished and not self.dead:
                e.send({"op": "abort", "id": g.request_id})
                e.stats.success["abort"] += 1

    async def _stats_logger(self) -> None:
        """vLLM's periodic "Engine 000: Avg prompt throughput …" line while there is activity."""
        interval = float(os.environ.get("VLLM_LOG_STATS_INTERVAL", "10") or 10)
        if self.ns.disable_log_stats or interval <= 0:
            return
        last = [(e.stats.prompt_tokens, e.stats.generation_tokens) for e in self.engines]
        was_busy = [False] * len(self.engines)
        src = "loggers.py:259" if self.d.at_least(0, 22) else "loggers.py:123"
        while True:
            await asyncio.sleep(interval)
            if self.dead or self.stopping:
                return
            for i, e in enumerate(self.engines):
                s = e.stats
                p = (s.prompt_tokens - last[i][0]) / interval
                gtp = (s.generation_tokens - last[i][1]) / interval
                last[i] = (s.prompt_tokens, s.generation_tokens)
                busy = bool(p or gtp or s.running or s.waiting)
                if busy or was_busy[i]:
                    self.log.info(src, f"Engine {i:03d}: Avg prompt throughput: {p:.1f} tokens/s, Avg generation "
                                  f"throughput: {gtp:.1f} tokens/s, Running: {s.running} reqs, Waiting: {s.waiting} "
                                  f"reqs, GPU KV cache usage: {s.kv_usage * 100:.1f}%, Prefix cache hit rate: 0.0%")
                was_busy[i] = busy


def _json_body(req: Request) -> Any:
    try:
        return req.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise openai.ApiError(400, f"JSON decode error: {exc}") from None


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt("terminated")


def run(ns: Any, shown: dict[str, Any], dialect: Dialect) -> int:
    code = ApiServer(ns, shown, dialect).run()
    sys.stdout.flush()
    return code
