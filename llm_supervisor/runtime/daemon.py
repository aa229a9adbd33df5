"""The arbiter: one asyncio loop that launches the engine, reads its output, decides what a
failure means, relaunches with computed arguments, serves the REST API and talks to systemd.

Signal handlers only record; the loop acts. Every state change goes through `_enter`, which
checks the edge against state.ALLOWED and logs it. The REST app reads `status()` (a dict built
from plain attributes, no awaiting) and sends commands into a queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Iterator
from typing import Any

import httpx

from llm_supervisor.host import gpus as hardware
from llm_supervisor.runtime import launcher
from llm_supervisor.vllm import planner, refit
from llm_supervisor.api.server import check_bind_allowed, create_app, start_api, stop_api
from llm_supervisor.vllm.engine_args import redact_argv
from llm_supervisor.errors import EXIT_GAVE_UP, EXIT_OK, RuntimeFailure, SupervisorError
from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind
from llm_supervisor.vllm.logparse import LogParser
from llm_supervisor.runtime.notify import Notifier
from llm_supervisor.planning.launch import RECOVERABLE_KEYS, LaunchPlan, build_plan
from llm_supervisor.config.profile import Profile, VllmArgs
from llm_supervisor.vllm.recovery import Attempt, GiveUp, Relaunch, decide
from llm_supervisor.config.settings import Settings
from llm_supervisor.runtime.states import State, check_transition
from llm_supervisor.store.state import DaemonLock, StateStore, host_key

log = logging.getLogger("llm_supervisor")

PHASE_STATUS = {
    "loading_weights": "loading weights",
    "compiling": "compiling (torch.compile)",
    "profiling": "profiling memory",
    "kv_cache": "allocating KV cache",
    "capturing_graphs": "capturing CUDA graphs",
    "starting_server": "starting the API server",
}
HEALTH_INTERVAL_S = 5.0
HEALTH_FAILURES_FOR_DEGRADED = 3
METRICS_INTERVAL_S = 15.0
GPU_POLL_S = 5.0
RING_LINES = 500
ATTEMPTS_KEPT = 200  # what recovery sees of earlier launches (its streaks are far shorter)
RING_LINE_CHARS = 2000  # a line kept for /status's log_tail; the log file keeps it whole


@dataclass
class AttemptOutcome:
    """How one launch ended."""

    exit: launcher.ExitInfo | None
    failure: Failure | None
    reached_ready: bool
    requested: str | None = None  # "restart" | "stop" when we ended it on purpose


def _task_failure(task: asyncio.Task, what: str) -> Failure | None:
    """A supervising task that raised is a bug of ours, not the engine's: log it with its traceback
    and end the attempt as an unknown failure (recovery backs off and relaunches), rather than let
    it take the daemon and the engine down."""
    exc = task.exception()
    if exc is None:
        return None
    log.error("internal error in the %s: %s", what, exc, exc_info=exc)
    return Failure(FailureKind.UNKNOWN, f"internal error in the supervisor's {what}: {exc!r}", {})


def enqueue_command(queue: asyncio.Queue[str], name: str, *, stopping: bool) -> None:
    """What the REST API's admin routes call: refuse what cannot be done, queue the rest."""
    if name not in ("restart", "stop"):
        raise RuntimeFailure(f"unknown command {name!r}")
    if stopping:
        raise RuntimeFailure("the daemon is already stopping")
    queue.put_nowait(name)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


class Daemon:
    def __init__(self, settings: Settings, profile: Profile, plan: LaunchPlan, *,
                 notifier: Notifier | None = None, store: StateStore | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.plan = plan
        self.notifier = notifier or Notifier.from_env()
        # run_daemon's store, when given: a second load would find a corrupt file already set
        # aside and lose the warning that says so
        self.store = store or StateStore(settings.state_dir)
        self.key = host_key(profile.name, [g.name for g in plan.chosen])
        self.inventory = hardware.inventory(plan.simulate, plan.sim_config) if plan.chosen else None
        self.calibration = planner.Calibration.in_state_dir(settings.state_dir)

        self.state = State.STOPPED
        self.started_at = time.time()
        self.attempt = 0
        self.restarts = 0
        self.restarts_by_reason: collections.Counter[str] = collections.Counter()
        self.history: list[dict[str, Any]] = []
        self.attempts: list[Attempt] = []
        self.args: VllmArgs = plan.args
        self.engine: launcher.EngineProcess | None = None
        self.engine_started_at: float | None = None
        self.ready_at: float | None = None
        self.ready_count = 0
        self.parser = LogParser()
        self.classifier = FailureClassifier()
        self.ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self.last_output = time.monotonic()
        self.gpus: list[dict[str, Any]] = []
        self.message = ""
        self.metrics_kv_tokens: int | None = None
        self.placement_applied: str | None = None
        self.exit_code = EXIT_OK
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self.stop_requested = False
        self._log: launcher.RotatingLog | None = None
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0), trust_env=False)

    # ------------------------------------------------------------ state
    def _enter(self, new: State, why: str = "") -> None:
        if new is self.state:
            return
        check_transition(self.state, new)
        log.info("state %s -> %s%s", self.state.value, new.value, f": {why}" if why else "")
        self.state = new

    def _event(self, event: str, failure: Failure | None = None, change: dict[str, Any] | None = None,
               reason: str = "") -> None:
        entry = {"at": _iso(time.time()), "event": event, "attempt": self.attempt,
                 "failure": failure.to_json() if failure else None, "change": change or None, "reason": reason}
        self.history.append(entry)
        del self.history[:-100]
        self.store.record(self.key, entry)

    @property
    def engine_url(self) -> str:
        host = self.args.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.args.port}"

    def _headers(self) -> dict[str, str]:
        key = self.args.api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}

    def status(self) -> dict[str, Any]:
        """The snapshot the REST API serves: plain attributes only, never awaits anything."""
        f = self.parser.facts
        now = time.time()
        return {
            "state": self.state.value,
            "ready": self.state is State.READY,
            "profile": self.profile.name,
            "model": self.profile.model.id,
            "served_model_name": self.profile.served_name,
            "simulated": self.plan.simulate,
            "pid": self.engine.engine_pid if self.engine and self.engine.running else None,
            "guard_pid": self.engine.guard_pid if self.engine and self.engine.running else None,
            "daemon_pid": os.getpid(),
            "uptime_s": round(now - self.ready_at, 1) if self.ready_at and self.state is State.READY else 0.0,
            "daemon_uptime_s": round(now - self.started_at, 1),
            "argv": redact_argv(self.plan.argv_for(self.args)),
            "attempt": self.attempt,
            "restarts": self.restarts,
            "restarts_by_reason": dict(self.restarts_by_reason),
            "kv_cache_tokens": f.kv_cache_tokens,
            "kv_cache_tokens_metrics": self.metrics_kv_tokens,
            "max_concurrency": f.max_concurrency,
            "max_concurrency_context": f.max_concurrency_context,
            "max_model_len": self.args.max_model_len or f.max_model_len,
            "gpu_memory_utilization": self.args.gpu_memory_utilization,
            "engine_url": self.engine_url,
            "gpus": self.gpus,
            "cpus": list(self.plan.placement.cpus),
            "placement": {**self.plan.placement.to_json(), "applied": self.placement_applied},
            "facts": f.contract() | {"vllm_version": f.vllm_version, "compile_cached": f.compile_cached},
            "phase": self.parser.phase,
            "target": self.profile.target.model_dump() if self.profile.target else None,
            "message": self.message,
            "history": list(self.history[-50:]),
            "log_tail": list(self.ring)[-20:],
        }

    def command(self, name: str) -> None:
        enqueue_command(self.commands, name, stopping=self.stop_requested)

    # ------------------------------------------------------------ output
    def _on_output(self, raw: bytes, lines: list[str]) -> None:
        if raw and self._log is not None:
            self._log.write(raw)
        if not lines:
            return
        self.last_output = time.monotonic()
        # A multi-megabyte line arrives as 64 KiB pieces: kept whole, 20 of them would make
        # every /status a megabyte and the ring 30 MB.
        self.ring.extend(line if len(line) <= RING_LINE_CHARS else line[:RING_LINE_CHARS] + " […]"
                         for line in lines[-RING_LINES:])
        feed = self.parser.feed
        for line in lines:
            for event in feed(line):
                self._on_event(event.kind, event.data)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        f = self.parser.facts
        if kind == "phase":
            text = PHASE_STATUS.get(data.get("phase", ""), data.get("phase", ""))
            if data.get("phase") == "kv_cache" and f.kv_cache_tokens:
                text = f"KV cache: {f.kv_cache_tokens:,} tokens"
            self.message = text
            self.notifier.status(f"attempt {self.attempt}: {text}")
            self.notifier.extend_timeout(300)
        elif kind == "fact" and data.get("name") in ("kv_cache_tokens", "max_concurrency"):
            if f.kv_cache_tokens and f.max_concurrency:
                ctx = f.max_concurrency_context or self.args.max_model_len
                self.message = f"KV cache: {f.kv_cache_tokens:,} tokens, {f.max_concurrency:.2f}x at {ctx:,}"
                log.info("vLLM reports %s KV-cache tokens, max concurrency %.2fx at %s tokens",
                         f"{f.kv_cache_tokens:,}", f.max_concurrency, f"{ctx:,}")
                self.notifier.status(self.message)

    # ------------------------------------------------------------ background tasks
    async def _poll_gpus(self) -> None:
        while True:
            if self.inventory is not None:
                try:
                    self.gpus = await asyncio.to_thread(hardware.gpu_memory, self.inventory)
                except Exception as exc:  # noqa: BLE001 - NVML hiccups must not kill the daemon
                    log.debug("gpu poll failed: %s", exc)
            await asyncio.sleep(GPU_POLL_S)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s()
        if not interval:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # ------------------------------------------------------------ engine I/O
    async def _get(self, path: str) -> httpx.Response | None:
        try:
            return await self._http.get(self.engine_url + path, headers=self._headers())
        except httpx.HTTPError:
            return None

    async def _smoke_request(self) -> bool:
        """One real 1-token request: the engine is ready only when it can generate."""
        body = {"model": self.profile.served_name, "max_tokens": 1,
                "messages": [{"role": "user", "content": "Hi"}]}
        try:
            r = await self._http.post(self.engine_url + "/v1/chat/completions", json=body,
                                      headers=self._headers(), timeout=60)
            if r.status_code == 200:
                return True
            if r.status_code in (400, 404, 422):  # no chat template: plain completion
                r = await self._http.post(self.engine_url + "/v1/completions", headers=self._headers(),
                                          json={"model": self.profile.served_name, "prompt": "Hi", "max_tokens": 1},
                                          timeout=60)
                return r.status_code == 200
            log.warning("smoke request answered %s: %s", r.status_code, r.text[:200])
        except httpx.HTTPError as exc:
            log.warning("smoke request failed: %s", exc)
        return False

    async def _metrics_tokens(self) -> tuple[int | None, dict[str, float]]:
        r = await self._get("/metrics")
        if r is None or r.status_code != 200:
            return None, {}
        tokens = None
        values: dict[str, float] = {}
        for line in r.text.splitlines():
            if line.startswith("vllm:cache_config_info"):
                marker = 'kv_cache_size_tokens="'
                at = line.find(marker)
                if at >= 0:
                    raw = line[at + len(marker):].split('"', 1)[0]
                    if raw.isdigit():
                        tokens = int(raw)
            elif line.startswith(("vllm:num_requests_waiting", "vllm:num_requests_running",
                                  "vllm:generation_tokens_total")):
                name = line.split("{", 1)[0].split(" ", 1)[0]
                with contextlib.suppress(ValueError):
                    values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return tokens, values

    async def _wait_ready(self) -> None:
        """Poll /health until 200, then the smoke request; then READY."""
        while True:
            r = await self._get("/health")
            if r is not None and r.status_code == 200 and await self._smoke_request():
                break
            await asyncio.sleep(0.5)
        # Everything that marks this launch ready happens here without an await in between, so
        # /status never shows `ready` with the history, message or remembered args of before.
        self._enter(State.READY, "the engine answered a real request")
        self.ready_count += 1
        self.ready_at = time.time()
        f = self.parser.facts
        ctx = f.max_concurrency_context or self.args.max_model_len
        summary = (f"ready: {f.kv_cache_tokens:,} KV tokens, {f.max_concurrency:.2f}x concurrency at {ctx:,} tokens"
                   if f.kv_cache_tokens and f.max_concurrency and ctx else "ready")
        if self.plan.simulate:
            summary += " (SIMULATED)"
        self.message = summary
        log.info("%s (attempt %d, %.1f s after launch)", summary, self.attempt,
                 time.monotonic() - (self.engine_started_at or time.monotonic()))
        self.notifier.ready(summary)
        self._event("ready", reason=summary)
        self._remember_ready()
        self._target_check()
        tokens, _ = await self._metrics_tokens()
        self.metrics_kv_tokens = tokens
        if tokens is not None and f.kv_cache_tokens is not None and tokens != f.kv_cache_tokens:
            log.warning("KV tokens differ: the log says %s, /metrics says %s", f.kv_cache_tokens, tokens)

    def _remember_ready(self) -> None:
        requested = {k: getattr(self.profile.vllm, k) for k in RECOVERABLE_KEYS}
        args = {k: getattr(self.args, k) for k in RECOVERABLE_KEYS}
        self.store.remember_ready(self.key, requested, args, self.parser.facts.contract())
        self._learn_overhead()

    def _learn_overhead(self) -> None:
        """Teach the planner this host's overhead from this boot's log, ready or failed: any
        start that printed its weights and its available KV memory says what the rest took."""
        f = self.parser.facts
        if f.available_kv_cache_gib is not None and f.model_weights_gib is not None and self.plan.gpu_name:
            try:
                self.calibration.record(planner.learn_from_facts(
                    f, model=self.profile.model.id, gpu_name=self.plan.gpu_name,
                    gpu_total_gib=self.plan.gpu_total_gib, tensor_parallel=self.args.tensor_parallel_size,
                    gpu_memory_utilization=self.args.gpu_memory_utilization))
                self.calibration.save()
            except (SupervisorError, OSError, ValueError, TypeError) as exc:
                log.debug("no calibration from this boot: %s", exc)

    def _target_check(self) -> None:
        target = self.profile.target
        f = self.parser.facts
        if target is None or not f.kv_cache_tokens:
            return
        have = f.kv_cache_tokens / target.context
        if have + 1e-9 < target.min_concurrency:
            text = (f"service target NOT met: {have:.2f} requests of {target.context:,} tokens fit, "
                    f"the profile wants {target.min_concurrency:g}")
            log.warning(text)
            self.message += f"; {text}"

    async def _monitor_ready(self) -> Failure | None:
        """After ready: /health for liveness, /metrics for requests waiting with no progress."""
        bad = 0
        stalled_since: float | None = None
        last_tokens = -1.0
        next_metrics = time.monotonic() + METRICS_INTERVAL_S
        stall_limit = self.profile.recovery.stall_timeout_s
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            r = await self._get("/health")
            if r is not None and r.status_code == 200:
                bad = 0
                if self.state is State.DEGRADED:
                    self._enter(State.READY, "/health answers again")
            else:
                bad += 1
                if bad >= HEALTH_FAILURES_FOR_DEGRADED and self.state is State.READY:
                    self._enter(State.DEGRADED, f"/health failed {bad} times in a row")
                    self.notifier.status("degraded: /health failing")
            if time.monotonic() >= next_metrics:
                next_metrics = time.monotonic() + METRICS_INTERVAL_S
                _, values = await self._metrics_tokens()
                waiting = values.get("vllm:num_requests_waiting", 0.0)
                tokens = values.get("vllm:generation_tokens_total", 0.0)
                if waiting > 0 and tokens <= last_tokens:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since >= stall_limit:
                        return Failure(FailureKind.ENGINE_DEAD, f"engine hung: {waiting:g} requests waiting and no "
                                       f"tokens generated for {stall_limit:g} s", {"hang": 1})
                else:
                    stalled_since = None
                last_tokens = tokens

    async def _watch_startup(self) -> Failure:
        """Before ready: a stalled log or a start that takes too long counts as a failure."""
        rec = self.profile.recovery
        deadline = time.monotonic() + rec.startup_timeout_s
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if now - self.last_output > rec.stall_timeout_s:
                return Failure(FailureKind.ENGINE_DEAD, f"engine hung during startup: no output for "
                               f"{rec.stall_timeout_s:g} s (last phase: {self.parser.phase or 'none'})", {"hang": 1})
            if now > deadline:
                return Failure(FailureKind.ENGINE_DEAD, f"engine not ready after {rec.startup_timeout_s:g} s "
                               "(recovery.startup_timeout_s)", {"hang": 1})

    # ------------------------------------------------------------ one attempt
    async def _run_attempt(self) -> AttemptOutcome:
        self.attempt += 1
        self.parser = LogParser(sink=FailureClassifier(), block_size=self.args.effective_block_size)
        self.classifier = self.parser.sink  # type: ignore[assignment]
        self.ready_at = None
        self.metrics_kv_tokens = None
        self.last_output = time.monotonic()
        argv = self.plan.argv_for(self.args)
        log.info("launch attempt %d: %s", self.attempt, " ".join(redact_argv(argv)))
        self._event("launch", reason=" ".join(redact_argv(argv[len(self.plan.command):])))
        cpus, mems, policy = self.plan.placement.apply_args()
        spec = launcher.LaunchSpec(argv=argv, env=self.plan.env_for(self.args), cpus=cpus, mems=mems,
                                   mempolicy=policy, stop_timeout=self.settings.stop_timeout_s)
        self._log = launcher.RotatingLog(self.settings.logs / f"{self.profile.name}.log",
                                         self.settings.log_max_bytes, self.settings.log_backups)
        self._log.write(f"\n===== llm-supervisor attempt {self.attempt} at {_iso(time.time())}: "
                        f"{' '.join(redact_argv(argv))}\n".encode())
        self.engine_started_at = time.monotonic()
        self.engine = engine = await launcher.start(spec, self._on_output)
        if engine.placement:
            self.placement_applied = engine.placement
            log.info("placement: %s", engine.placement)
        self.notifier.status(f"attempt {self.attempt}: starting vLLM (pid {engine.engine_pid})")

        exit_task = asyncio.create_task(engine.wait(), name="engine-wait")
        command_task = asyncio.create_task(self.commands.get(), name="command")
        ready_task: asyncio.Task | None = asyncio.create_task(self._wait_ready(), name="readiness")
        watch_task = asyncio.create_task(self._watch_startup(), name="startup-watch")
        requested: str | None = None
        failure: Failure | None = None
        try:
            while True:
                waiting = {exit_task, command_task, watch_task}
                if ready_task is not None:
                    waiting.add(ready_task)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if ready_task in done:
                    failure = _task_failure(ready_task, "readiness probe")
                    if failure is not None:
                        break
                    ready_task = None
                    watch_task.cancel()
                    watch_task = asyncio.create_task(self._monitor_ready(), name="ready-monitor")
                    continue
                if exit_task in done:
                    break
                if command_task in done:
                    requested = command_task.result()
                    break
                if watch_task in done:
                    failure = _task_failure(watch_task, "engine watch") or watch_task.result()
                    if failure is None:
                        watch_task = asyncio.create_task(asyncio.Event().wait())
                        continue
                    log.error("%s", failure.message)
                    break
        finally:
            for task in (command_task, watch_task, ready_task):
                if task is not None and not task.done():
                    task.cancel()
        if self.engine_started_at is not None and self._log is not None:
            self._log.flush()
        reached_ready = self.ready_at is not None
        if requested or failure is not None:
            if requested:
                self._enter(State.STOPPING if requested == "stop" else State.RESTARTING, f"{requested} requested")
            self.notifier.status("stopping vLLM" if requested == "stop" else f"restarting: {requested or failure.message}")
            asked_at = time.monotonic()
            exit_info = await engine.stop(self.settings.stop_timeout_s)
            waited = time.monotonic() - asked_at
        else:
            exit_info = await exit_task
            waited = 0.0
        described, level = exit_info.description, logging.INFO
        if (requested or failure is not None) and waited >= 0.9 * self.settings.stop_timeout_s and (
                exit_info.signal == signal.SIGKILL or exit_info.code == 128 + signal.SIGKILL):
            # our own deadline, not the OOM killer the plain description would suggest
            described = (f"ignored SIGTERM for {self.settings.stop_timeout_s:g} s "
                         "(LLM_SUPERVISOR_STOP_TIMEOUT_S) and was killed")
            level = logging.WARNING
        if self._log is not None:
            self._log.write(f"===== engine {described}\n".encode())
            self._log.close()
        if failure is None and not requested:
            failure = self.classifier.classify(exit_info.code, reached_ready) or Failure(
                FailureKind.UNKNOWN, f"vLLM {exit_info.description} without a recognised error", {})
        log.log(level, "engine %s%s", described, f": {failure.kind} — {failure.message}" if failure else "")
        return AttemptOutcome(exit_info, failure, reached_ready, requested)

    # ------------------------------------------------------------ the loop
    def _gpu_memory(self) -> tuple[float | None, float | None]:
        if self.inventory is None or not self.plan.chosen:
            return None, None
        try:
            uuid = self.plan.chosen[0].uuid
            gpu = next((g for g in self.inventory.gpus() if g.uuid == uuid), None)
        except Exception:  # noqa: BLE001
            return None, None
        return (gpu.memory_free_mib, gpu.cuda_total_mib) if gpu else (None, None)

    async def _supervise(self) -> int:
        while not self.stop_requested:
            self._enter(State.STARTING, f"attempt {self.attempt + 1}")
            launched_at = time.time()
            outcome = await self._run_attempt()
            if outcome.requested == "stop" or self.stop_requested:
                break
            del self.attempts[:-ATTEMPTS_KEPT]
            self.attempts.append(Attempt(at=launched_at, args=self.args,
                                         failure=outcome.failure.kind if outcome.failure else None,
                                         reached_ready=outcome.reached_ready, ended_at=time.time()))
            if outcome.requested == "restart":
                self.restarts += 1
                self.restarts_by_reason["admin"] += 1
                self._event("restart", reason="restart requested through the API")
                continue
            failure = outcome.failure
            assert failure is not None
            self._event("exit", failure=failure, reason=outcome.exit.description if outcome.exit else "")
            if not outcome.reached_ready:
                self._learn_overhead()
            free, total = await asyncio.to_thread(self._gpu_memory)
            decision = decide(failure, self.args, self.profile, self.attempts, self.parser.facts,
                              gpu_free_mib=free, gpu_total_mib=total)
            if isinstance(decision, Relaunch):
                decision = self._refine(failure, decision)
            if isinstance(decision, GiveUp):
                if self.state is not State.FAILED:
                    self._enter(State.FAILED, decision.reason)
                self.message = f"failed: {decision.reason}"
                log.error("giving up: %s", decision.reason)
                self.notifier.status(f"failed: {decision.reason}"[:200])
                self._event("give_up", failure=failure, reason=decision.reason)
                self.exit_code = EXIT_GAVE_UP
                if await self._linger_failed():
                    continue
                return EXIT_GAVE_UP
            self.attempts[-1].change = decision.change
            self.attempts[-1].reason = decision.reason
            self.restarts += 1
            self.restarts_by_reason[str(failure.kind)] += 1
            self._event("relaunch", failure=failure, change=decision.change, reason=decision.reason)
            log.warning("relaunching: %s", decision.reason)
            self.args = decision.args
            if decision.delay_s > 0:
                self._enter(State.BACKOFF, f"waiting {decision.delay_s:g} s")
                self.message = f"backoff {decision.delay_s:g} s after {failure.kind}: {decision.reason}"
                self.notifier.status(self.message[:200])
                if await self._sleep_or_command(decision.delay_s):
                    break
            else:
                self._enter(State.RESTARTING, decision.reason)
                self.notifier.status(f"restarting after {failure.kind}: {decision.reason}"[:200])
        return EXIT_OK

    def _refine(self, failure: Failure, decision: Relaunch) -> Relaunch:
        return refit.refine(failure, decision, self.parser.facts, self.profile, self.calibration,
                            gpu_total_gib=self.plan.gpu_total_gib, gpu_count=self.plan.gpu_count,
                            gpu_name=self.plan.gpu_name, hf_home=self.plan.hf_home or None)

    async def _linger_failed(self) -> bool:
        """Stay in `failed` for LLM_SUPERVISOR_FAILED_LINGER_S so status, /metrics and a person see
        why; a restart in that window tries again from the profile's arguments (True). A stop, a
        signal or the window closing ends the daemon with exit 3 (False). Under systemd, a unit
        that never became ready does not linger: its start job would only wait longer."""
        linger = self.settings.failed_linger_s
        if linger <= 0 or (self.notifier.enabled and self.ready_count == 0):
            return False
        log.info("staying in failed for %g s (LLM_SUPERVISOR_FAILED_LINGER_S); `supervisor restart` tries again",
                 linger)
        try:
            name = await asyncio.wait_for(self.commands.get(), linger)
        except asyncio.TimeoutError:
            return False
        if name != "restart":
            return False
        self.attempts.clear()
        self.args = self.plan.args
        self.restarts += 1
        self.restarts_by_reason["admin"] += 1
        self.exit_code = EXIT_OK
        self._event("restart", reason="restart requested after giving up: trying again from the planned arguments")
        return True

    async def _sleep_or_command(self, delay: float) -> bool:
        """Wait out a backoff; True when a stop came in meanwhile (a restart skips the wait)."""
        try:
            name = await asyncio.wait_for(self.commands.get(), delay)
        except asyncio.TimeoutError:
            return False
        return name == "stop"

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            # `systemctl reload`: RELOADING=1 now, READY=1 again once the engine answers.
            self.notifier.reloading()
            self.commands.put_nowait("restart")
            return
        if not self.stop_requested:
            self.stop_requested = True
            self.commands.put_nowait("stop")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        for warning in self.store.warnings:
            log.warning("%s", warning)
        token = self.settings.api_token.get_secret_value() if self.settings.api_token else None
        api = await start_api(create_app(self.status, self.command, token), self.settings.api_host, self.settings.api_port)
        log.info("REST API on %s (status: %s/status)", self.settings.url, self.settings.url)
        background = [asyncio.create_task(self._poll_gpus()), asyncio.create_task(self._watchdog())]
        code = EXIT_OK
        try:
            code = await self._supervise()
        finally:
            self.notifier.stopping("stopping")
            if self.engine is not None and self.engine.running:
                if self.state not in (State.STOPPING,):
                    with contextlib.suppress(Exception):
                        self._enter(State.STOPPING, "daemon stopping")
                await self.engine.stop(self.settings.stop_timeout_s)
            if self.state is not State.FAILED:
                with contextlib.suppress(Exception):
                    if self.state is not State.STOPPING:
                        self._enter(State.STOPPING, "daemon stopping")
                    self._enter(State.STOPPED, "engine stopped")
            self._event("stop", reason=f"daemon exiting with code {code}")
            self.store.save()
            for task in background:
                task.cancel()
            await stop_api(api)
            await self._http.aclose()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return code


def _check_engine_port(args: VllmArgs) -> None:
    host = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As vLLM's server binds: connections of a just-stopped engine linger in TIME_WAIT on
        # this port for a minute; without SO_REUSEADDR they would look like another server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, args.port))
        except OSError as exc:
            raise RuntimeFailure(f"engine port {args.port} on {host} is in use ({exc.strerror}): another vLLM? "
                                 "stop it or set --set vllm.port=…") from None


def configure_logging() -> None:
    level = os.environ.get("LLM_SUPERVISOR_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler()
    fmt = "%(levelname)s %(message)s" if os.environ.get("INVOCATION_ID") else "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger("llm_supervisor")
    root.handlers[:] = [handler]
    root.setLevel(level if level in logging._nameToLevel else "INFO")
    root.propagate = False


@contextlib.contextmanager
def daemon_process(settings: Settings) -> Iterator[None]:
    """What every long-running role does first: logging, the bind check for the admin API, and
    the lock that keeps one daemon per state dir (held until the block ends)."""
    configure_logging()
    token = settings.api_token.get_secret_value() if settings.api_token else None
    check_bind_allowed(settings.api_host, token)
    lock = DaemonLock(settings.state_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def log_placement(placement: Any, what: str = "placement") -> None:
    log.info("%s: %s CPUs %s, memory policy %s%s", what, "pinned to" if placement.pinned else "not pinned;",
             placement.to_json()["cpulist"], placement.memory_policy,
             f" {placement.nodes}" if placement.nodes else "")


def run_daemon(settings: Settings, profile: Profile, *, simulate: bool, ignore_hardware: bool = False,
               daemon_class: type[Daemon] | None = None) -> int:
    """`supervisor up`: plan, lock the state dir, run the loop until SIGTERM/SIGINT or give-up."""
    with daemon_process(settings):
        store = StateStore(settings.state_dir)
        plan = build_plan(settings, profile, simulate=simulate, ignore_hardware=ignore_hardware,
                          store=store, for_launch=True)
        if simulate:
            log.warning("SIMULATED engine: the bundled vLLM simulator on a simulated %s; no GPU is used",
                        plan.gpu_name)
        for note in plan.notes:
            log.info("plan: %s", note)
        for warning in plan.warnings + plan.placement.warnings:
            log.warning("plan: %s", warning)
        log_placement(plan.placement)
        _check_engine_port(plan.args)
        settings.logs.mkdir(parents=True, exist_ok=True)
        daemon = (daemon_class or Daemon)(settings, profile, plan, store=store)  # raynode.HeadDaemon for a cluster head
        return asyncio.run(daemon.run())
