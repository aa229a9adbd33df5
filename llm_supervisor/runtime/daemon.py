"""The arbiter: the restart loop of the engine. It launches vLLM, reads its output, declares it
ready once it answered a real request, watches it, asks the recovery policy what a failure means,
relaunches with computed arguments, and talks to systemd.

Everything the daemon touches outside itself is an argument (the seams): the launcher (real
processes under the guard, or a fake), the clock, the engine's HTTP client, the notifier, the
state and calibration stores, the GPU inventory. `serve()` is the daemon without process-level
I/O (tests drive it in-process); `run()` adds the signals and the REST API.

Signal handlers and API routes only record commands; the dispatcher and the loop act. Every
state change goes through `enter`. The REST app reads `status()` (a dict built from plain
attributes, no awaiting).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from llm_supervisor.config.profile import ALL_INTERFACES, Profile, VllmArgs, client_url, listen_url
from llm_supervisor.config.redaction import Redactor
from llm_supervisor.config.settings import Settings
from llm_supervisor.errors import EXIT_GAVE_UP, EXIT_OK, BadInput, RuntimeFailure, SupervisorError
from llm_supervisor.host import gpus as host_gpus
from llm_supervisor.frontdoor import FrontDoor
from llm_supervisor.host.tenants import Tenant, describe, gpu_tenants, port_holder
from llm_supervisor.planning.launch import (RECOVERABLE_KEYS, LaunchPlan, build_plan, free_loopback_port,
                                            supervisor_ports)
from llm_supervisor.runtime import launcher as launching
from llm_supervisor.clock import Clock, SystemClock, iso
from llm_supervisor.runtime.commands import Command, Inbox
from llm_supervisor.runtime.engine_client import EngineClient
from llm_supervisor.runtime.logfollow import LogFollowers
from llm_supervisor.runtime.events import (SHOWN, DaemonEvent, Decided, Exiting, GaveUp, Launched, Observer,
                                           Progress, Ready, StateChanged)
from llm_supervisor.runtime.notify import Notifier
from llm_supervisor.runtime.outputlog import EngineLog, check_log_dir, check_log_path
from llm_supervisor.runtime.series import Series, sample
from llm_supervisor.runtime.service import (daemon_process, keep_watchdog, log_placement, poll_gpus, run_daemon_loop,
                                            served)
from llm_supervisor.states import State
from llm_supervisor.runtime.supervision import Outcome, RestartLoop
from llm_supervisor.store.calibration import Calibration
from llm_supervisor.store.state import StateStore, host_key
from llm_supervisor.vllm import framing
from llm_supervisor.vllm.brief import change_brief, decision_brief, failure_brief
from llm_supervisor.vllm.calibration import learn_from_facts
from llm_supervisor.vllm.engine_args import keeps_dead_engine_serving, redact_argv
from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind, guard_lost_failure
from llm_supervisor.vllm.logparse import LogParser
from llm_supervisor.vllm.memory import block_size_for, extensible_sizing_from_log
from llm_supervisor.vllm.recovery import Attempt, GiveUp, Relaunch, decide

log = logging.getLogger("llm_supervisor")

PHASE_STATUS = {
    "loading_weights": "loading weights",
    "compiling": "compiling (torch.compile)",
    "profiling": "profiling memory",
    "kv_cache": "allocating KV cache",
    "capturing_graphs": "capturing CUDA graphs",
    "starting_server": "starting the API server",
}
RING_LINES = 500
ATTEMPTS_KEPT = 200  # what recovery sees of earlier launches (its streaks are far shorter)
RING_LINE_CHARS = 2000  # a line kept for /status's log_tail; the log file keeps it whole
# The engine's access-log lines for the daemon's own probes and Prometheus scrapes: in the log
# file, not in /status's log_tail, where they would push out everything the engine said.
PROBE_LINES = ('"GET /health HTTP/1.1"', '"GET /metrics HTTP/1.1"')
FACTS_SHOWN = ("model_weights_gib", "kv_cache_tokens", "max_concurrency", "available_kv_cache_gib")


@dataclass(frozen=True)
class Timing:
    """How often the daemon looks (seconds)."""

    health_interval_s: float = 5.0
    health_failures_for_degraded: int = 3
    metrics_interval_s: float = 15.0
    gpu_poll_s: float = 5.0
    ready_poll_s: float = 0.5
    startup_tick_s: float = 1.0
    tenants_poll_s: float = 10.0


def _task_failure(task: asyncio.Task, what: str) -> Failure | None:
    """A supervising task that raised is a bug of ours, not the engine's: log it with its traceback
    and end the attempt as an unknown failure (recovery backs off and relaunches), rather than let
    it take the daemon and the engine down."""
    exc = task.exception()
    if exc is None:
        return None
    log.error("internal error in the %s: %s", what, exc, exc_info=exc)
    return Failure(FailureKind.UNKNOWN, f"internal error in the supervisor's {what}: {exc!r}", {})



class Daemon(RestartLoop):
    def __init__(self, settings: Settings, profile: Profile, plan: LaunchPlan, *,
                 launcher: launching.Launcher | None = None, clock: Clock | None = None,
                 engine_client: EngineClient | None = None, notifier: Notifier | None = None,
                 store: StateStore | None = None, calibration: Calibration | None = None,
                 gpus: host_gpus.GpuInventory | None = None, timing: Timing | None = None,
                 door: FrontDoor | None = None, observers: Sequence[Observer] = (), redactor: Redactor | None = None,
                 engine_log: EngineLog | None = None, end_foreign_engines: bool = False) -> None:
        super().__init__(clock or SystemClock(), Inbox())
        self.observers: list[Observer] = list(observers)
        self.settings = settings
        self.profile = profile
        self.plan = plan
        self.fit = plan.fit
        # What every output of the daemon passes through: its log, the engine's log file, the
        # state file, /status (and what is built from it), sd_notify.
        self.redactor = redactor or Redactor.from_inputs(settings, profile, os.environ)
        self.launcher = launcher or launching.GuardLauncher()
        self.notifier = notifier or Notifier.from_env()
        if isinstance(self.notifier, Notifier):
            self.notifier.redact = self.redactor.text
        # run_daemon's store, when given: a second load would find a corrupt file already set
        # aside and lose the warning that says so
        self.store = store or StateStore(settings.state_dir, self.redactor)
        if not self.store.redactor:
            self.store.redactor = self.redactor
        self.calibration = calibration or Calibration.in_state_dir(settings.state_dir)
        self.key = host_key(profile.name, [g.name for g in plan.chosen])
        if gpus is None and plan.chosen:
            gpus = host_gpus.inventory(plan.simulate, plan.sim_config)
        self.inventory = gpus
        self.timing = timing or Timing()
        self.args: VllmArgs = plan.args
        # The front door owns the profile's address; the engine listens privately behind it.
        self.door = door or (FrontDoor(profile.frontdoor) if plan.frontdoor else None)
        self.engine_port = plan.engine_port
        self.engine_client = engine_client or EngineClient(self.engine_url, profile.served_name, self.args.api_key)
        self.ready_seconds: float | None = None  # the last launch's time to ready: the front door's estimate

        self.started_at = self.clock.time()
        self.attempt = 0
        self.restarts = 0
        self.restarts_by_reason: collections.Counter[str] = collections.Counter()
        self.history: list[dict[str, Any]] = []
        self.attempts: list[Attempt] = []
        self.engine: launching.EngineHandle | None = None
        self.engine_started_at: float | None = None
        self.ready_at: float | None = None
        self.ready_count = 0
        self.parser = LogParser()
        self.classifier = FailureClassifier()
        self.ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self.last_output = self.clock.monotonic()
        self.gpus: list[dict[str, Any]] = []
        self._gpus_changed = asyncio.Event()
        self._death_reported = asyncio.Event()  # per launch: vLLM said its engine died after ready
        self._end_dead_engine = True
        self.message = ""
        self.metrics_kv_tokens: int | None = None
        self.capacity: dict[str, Any] | None = self.store.capacity(profile.name)
        self.placement_applied: str | None = None
        self.backstop: str | None = None
        # Who else holds the GPUs, and their health: read before each launch, after each failure
        # and every Timing.tenants_poll_s; a fault counts when it is newer than the GPU's last
        # proof of health (an engine that became ready: `_health_baseline`, `_faults_since`).
        self.end_foreign = end_foreign_engines or profile.recovery.end_foreign_engines
        self.tenants: list[dict[str, Any]] = []
        self.gpu_health: list[dict[str, Any]] = []
        self._health_baseline: dict[str, host_gpus.GpuHealth] = {}
        self._faults_since = 0.0
        self._foreign_said: frozenset[tuple[int, float | None]] = frozenset()
        self.seen_vllm_version: str | None = None
        self.exit_code = EXIT_OK
        self.gave_up_line = ""
        self._launched_at = 0.0
        self._kv_said: tuple[Any, ...] | None = None  # the KV figures last logged, per attempt
        self.series = Series(settings.series_interval_s)
        self.followers = LogFollowers(self.log_path, self.redactor)  # `GET /logs`, `supervisor logs -f`
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log = engine_log
        if engine_log is not None:
            engine_log.on_change = self._log_changed_elsewhere
            engine_log.on_written = self.followers.written
            engine_log.redactor = self.redactor

    # ------------------------------------------------------------ records
    def _emit(self, event: DaemonEvent) -> None:
        """Tell every observer; one that raises is dropped (a view must not stop the loop)."""
        for observer in list(self.observers):
            try:
                observer(event)
            except Exception as exc:  # noqa: BLE001
                self.observers.remove(observer)
                log.warning("dropped a progress observer that failed: %r", exc)

    def enter(self, new: State, why: str = "") -> None:
        before = self.state
        super().enter(new, why)
        if self.state is not before:
            self._emit(StateChanged(self.clock.monotonic(), new.value, why))
            self._gpus_changed.set()  # the GPU poll reads memory now: it changes with the state

    def _event(self, event: str, failure: Failure | None = None, change: dict[str, Any] | None = None,
               reason: str = "") -> None:
        shown = None
        if failure is not None:
            # the whole message stays; `brief` is the line with its numbers that people read;
            # `supervisor_kind` names what CONTRACT's `kind` calls unknown (multi_gpu_comm, bad_arguments)
            shown = failure.to_json() | {"brief": failure_brief(str(failure.kind), failure.values, failure.message),
                                         "supervisor_kind": str(failure.kind)}
        entry = {"at": iso(self.clock.time()), "event": event, "attempt": self.attempt,
                 "failure": shown, "change": change or None, "reason": reason}
        self.history.append(entry)
        del self.history[:-100]
        self.store.record(self.key, entry)
        self.store.save_soon()  # on disk now (in a thread), not only at the next ready or stop

    @property
    def engine_url(self) -> str:
        """Where the engine answers (behind the front door: its private address)."""
        listen = self.plan.listen_args(self.args, self.engine_port)
        return client_url(listen.host, listen.port)

    def _time_to_ready(self) -> float | None:
        """What the front door tells clients to wait for: the last launch's time to ready here."""
        if self.ready_seconds is not None:
            return self.ready_seconds
        last = (self.plan.last_good or {}).get("ready_seconds")
        return float(last) if isinstance(last, (int, float)) and last > 0 else None

    def status(self) -> dict[str, Any]:
        """The snapshot the REST API serves: plain attributes only, never awaits anything."""
        f = self.parser.facts
        now = self.clock.time()
        running = self.engine is not None and self.engine.running
        return self.redactor.value({
            "state": self.state.value,
            "ready": self.state is State.READY,
            "profile": self.profile.name,
            "model": self.profile.model.id,
            "served_model_name": self.profile.served_name,
            "simulated": self.plan.simulate,
            "pid": self.engine.engine_pid if running and self.engine else None,
            "guard_pid": self.engine.guard_pid if running and self.engine else None,
            "daemon_pid": os.getpid(),
            "uptime_s": round(now - self.ready_at, 1) if self.ready_at and self.state is State.READY else 0.0,
            "daemon_uptime_s": round(now - self.started_at, 1),
            "argv": redact_argv(self.plan.argv_for(self.args, self.engine_port)),
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
            "url": listen_url(self.args.host, self.args.port),
            "frontdoor": {"enabled": True, **self.door.stats()} if self.door else {"enabled": False},
            "gpus": self.gpus,
            "cpus": list(self.plan.placement.cpus),
            "placement": {**self.plan.placement.to_json(), "applied": self.placement_applied},
            "facts": f.contract() | {"vllm_version": f.vllm_version, "compile_cached": f.compile_cached},
            "vllm": self._vllm_status(),
            "phase": self._phase(),
            "target": self.profile.target.model_dump() if self.profile.target else None,
            "capacity": capacity_summary(self.capacity),
            "message": self.message,
            "history": list(self.history[-50:]),
            "log_tail": list(self.ring)[-20:],
            "log_path": str(self.log_path),
            "engine_log": self._log.status() if self._log is not None else None,
            "backstop": self.backstop,
            "gpu_tenants": self.tenants,
            "gpu_health": self.gpu_health,
        })

    def _phase(self) -> str | None:
        """vLLM's startup phase while it starts; `ready` once it serves; nothing between launches."""
        if self.state is State.STARTING:
            return self.parser.phase or "launching"
        if self.state in (State.READY, State.DEGRADED):
            return "ready"
        return None

    @property
    def log_path(self) -> Any:
        """The engine's output, all attempts (rotated): `supervisor logs` reads it."""
        return self.settings.logs / f"{self.profile.name}.log"

    def _vllm_status(self) -> dict[str, Any]:
        """Which vLLM: what the plan expected, what the engine printed, the accounting in use."""
        printed = self.parser.facts.vllm_version or self.seen_vllm_version
        version = printed or self.plan.vllm_version
        return {"version": version, "printed": printed, "planned": self.plan.vllm_version,
                "planned_source": self.plan.engine_version.source,
                "accounting": str(self.plan.accounting_of(version, self.args))}

    def _note_version(self, printed: str) -> None:
        """The engine printed its version: recovery reasons about that one from now on."""
        self.seen_vllm_version = printed
        if self.fit is not None and self.fit.vllm_version != printed:
            if self.fit.version.split("+")[0] != printed.split("+")[0]:
                log.warning("the engine runs vLLM %s; the plan was made for %s: recovery reasons with %s from now on",
                            printed, self.fit.version, printed)
            self.fit = self.fit.with_version(printed)

    def command(self, name: str) -> None:
        """What the REST API's admin routes call."""
        self.inbox.submit(name)

    def starting_reason(self) -> str:
        return f"attempt {self.attempt + 1}"

    # ------------------------------------------------------------ commands
    def handle_reload(self) -> None:
        """`systemctl reload` (SIGHUP): RELOADING=1 now, READY=1 again once the engine answers."""
        self.notifier.reloading()
        self.handle_restart()

    # ------------------------------------------------------------ output
    def _engine_log(self) -> EngineLog:
        if self._log is None:
            self._log = EngineLog(self.log_path, self.settings.log_max_bytes, self.settings.log_backups,
                                  redactor=self.redactor, on_change=self._log_changed_elsewhere,
                                  on_written=self.followers.written)
        return self._log

    def _log_changed_elsewhere(self, kind: str, text: str) -> None:
        """From the log's writer thread: hop to the loop, which records it."""
        loop = self._loop
        if loop is None or loop.is_closed():
            log.warning("%s", text)
            return
        loop.call_soon_threadsafe(self._log_changed, kind, text)

    def _log_changed(self, kind: str, text: str) -> None:
        """The engine log failed, works again, or was written anew: said once each, in the log,
        the history (so the state file) and /status's `engine_log`."""
        (log.error if kind == "failed" else log.warning)("%s", text)
        self._event(f"engine_log_{kind}", reason=text)

    def _on_output(self, raw: bytes, lines: list[str]) -> Awaitable[None] | None:
        if raw and self._log is not None:
            self._log.write(raw)
        paced = self._log.room() if self._log is not None and self._log.backlogged() else None
        if not lines:
            return paced
        self.last_output = self.clock.monotonic()
        # A multi-megabyte line arrives as 64 KiB pieces: kept whole, 20 of them would make
        # every /status a megabyte and the ring 30 MB.
        self.ring.extend(line if len(line) <= RING_LINE_CHARS else line[:RING_LINE_CHARS] + " […]"
                         for line in lines[-RING_LINES:] if not any(p in line for p in PROBE_LINES))
        feed = self.parser.feed
        for line in lines:
            for event in feed(line):
                self._on_event(event.kind, event.data)
        if self.ready_at is not None and self.classifier.engine_death_reported:
            self._death_reported.set()
        return paced

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        f = self.parser.facts
        if kind == "phase":
            text = PHASE_STATUS.get(data.get("phase", ""), data.get("phase", ""))
            if data.get("phase") == "kv_cache" and f.kv_cache_tokens:
                text = f"KV cache: {f.kv_cache_tokens:,} tokens"
            self.message = text
            log.info("attempt %d: %s", self.attempt, text, extra=SHOWN)
            self.notifier.status(f"attempt {self.attempt}: {text}")
            self.notifier.extend_timeout(300)
            self._progress(text)
        elif kind == "fact" and data.get("name") == "vllm_version":
            self._note_version(str(data.get("value")))
        elif kind == "fact" and data.get("name") in FACTS_SHOWN:
            ctx = f.max_concurrency_context or self.args.max_model_len
            said = (f.kv_cache_tokens, f.max_concurrency, ctx)
            # one line per figure pair: vLLM 0.28+ prints both on one line, which gives two facts
            if data.get("name") in ("kv_cache_tokens", "max_concurrency") and f.kv_cache_tokens and f.max_concurrency \
                    and said != self._kv_said:
                self._kv_said = said
                self.message = f"KV cache: {f.kv_cache_tokens:,} tokens, {f.max_concurrency:.2f}x at {ctx:,}"
                log.info("vLLM reports %s KV-cache tokens, max concurrency %.2fx at %s tokens",
                         f"{f.kv_cache_tokens:,}", f.max_concurrency, f"{ctx:,}", extra=SHOWN)
                self.notifier.status(self.message)
            self._progress(PHASE_STATUS.get(self.parser.phase or "", self.parser.phase or "starting"))

    def _progress(self, text: str) -> None:
        f = self.parser.facts
        facts = {"weights_gib": f.model_weights_gib, "available_kv_cache_gib": f.available_kv_cache_gib,
                 "kv_cache_tokens": f.kv_cache_tokens, "max_concurrency": f.max_concurrency,
                 "context": f.max_concurrency_context or self.args.max_model_len}
        self._emit(Progress(self.attempt, self.clock.monotonic(), self.parser.phase, text,
                            {k: v for k, v in facts.items() if v is not None}))

    # ------------------------------------------------------------ readiness and watching
    async def _wait_ready(self) -> None:
        """Poll /health until 200, then the smoke request; then READY."""
        client = self.engine_client
        while not (await client.health() and await client.probe()):
            await self.clock.sleep(self.timing.ready_poll_s)
        # The engine works, so the GPUs do: their health now is the baseline a later failure is
        # judged against, taken before /status shows `ready` so that no fault after it is missed.
        await self._gpus_proved_usable()
        # Everything that marks this launch ready happens here without an await in between, so
        # /status never shows `ready` with the history, message or remembered args of before.
        self.enter(State.READY, "the engine answered a real request")
        self.ready_count += 1
        self.ready_at = self.clock.time()
        f = self.parser.facts
        ctx = f.max_concurrency_context or self.args.max_model_len
        summary = (f"ready: {f.kv_cache_tokens:,} KV tokens, {f.max_concurrency:.2f}x concurrency at {ctx:,} tokens"
                   if f.kv_cache_tokens and f.max_concurrency and ctx else "ready")
        if self.plan.simulate:
            summary += " (SIMULATED)"
        self.message = summary
        started = self.engine_started_at if self.engine_started_at is not None else self.clock.monotonic()
        self.ready_seconds = round(self.clock.monotonic() - started, 1)
        if self.door is not None:
            self.door.engine_ready(self.engine_url)
        log.info("%s (attempt %d, %.1f s after launch)", summary, self.attempt, self.ready_seconds, extra=SHOWN)
        self._emit(Ready(self.attempt, self.clock.monotonic(), summary, self.ready_seconds))
        self.notifier.ready(summary)
        self._event("ready", reason=summary)
        self.store.remember_ready(self.key, {k: getattr(self.profile.vllm, k) for k in RECOVERABLE_KEYS},
                                  {k: getattr(self.args, k) for k in RECOVERABLE_KEYS}, f.contract(),
                                  ready_seconds=self.ready_seconds)
        self._target_check()
        self._device_bound_check()
        self.store.save_soon()
        await self._learn_overhead()
        metrics = await client.metrics()
        tokens = metrics.kv_cache_tokens if metrics else None
        self.metrics_kv_tokens = tokens
        if tokens is not None and f.kv_cache_tokens is not None and tokens != f.kv_cache_tokens:
            log.warning("KV tokens differ: the log says %s, /metrics says %s", f.kv_cache_tokens, tokens)

    async def _learn_overhead(self) -> None:
        """Teach the planner this host's overhead from this boot's log, ready or failed: any
        start that printed its weights and its available KV memory says what the rest took. The
        fit context the recovery policy uses learns it too."""
        f = self.parser.facts
        if f.available_kv_cache_gib is None or f.model_weights_gib is None or not self.plan.gpu_name:
            return
        try:
            obs = learn_from_facts(
                f, model=self.profile.model.id, gpu_name=self.plan.gpu_name, gpu_total_gib=self.plan.gpu_total_gib,
                tensor_parallel=self.args.tensor_parallel_size, gpu_memory_utilization=self.args.gpu_memory_utilization,
                max_num_batched_tokens=self.args.max_num_batched_tokens, max_num_seqs=self.args.max_num_seqs,
                now=self.clock.time())
            if self.args.cpu_offload_gb:
                obs.weights_gib = None  # only part of the weights was on the GPU: not the model's size
            entry = await asyncio.to_thread(self.calibration.record, obs)
        except (SupervisorError, OSError, ValueError, TypeError) as exc:
            log.debug("no calibration from this boot: %s", exc)
            return
        if self.fit is not None and entry.tensor_parallel == self.args.tensor_parallel_size:
            self.fit = self.fit.with_calibration(entry)

    def _device_bound_check(self) -> None:
        """vLLM 0.34 starts when other processes hold memory and sizes a smaller cache: say so."""
        f = self.parser.facts
        if not (f.kv_measured_after_warmup and f.free_gpu_gib is not None and f.free_after_warmup_gib is not None
                and f.requested_gib is not None):
            return
        sizing = extensible_sizing_from_log(f.free_gpu_gib, f.free_after_warmup_gib, f.kv_committed_gib or 0.0,
                                            f.requested_gib, f.transient_gib or 0.0)
        if sizing.bound == "device" and sizing.by_budget_gib - sizing.by_device_gib >= 0.5:
            text = (f"KV cache limited by free GPU memory, not by gpu_memory_utilization: "
                    f"{sizing.by_budget_gib - sizing.by_device_gib:.2f} GiB less than the utilization allows "
                    f"({f.free_gpu_gib:.2f} GiB was free at start; other processes hold memory)")
            log.warning(text)
            self.message += f"; {text}"

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
        timing = self.timing
        next_metrics = self.clock.monotonic() + timing.metrics_interval_s
        stall_limit = self.profile.recovery.stall_timeout_s
        while True:
            await self.clock.sleep(timing.health_interval_s)
            if await self.engine_client.health():
                bad = 0
                if self.state is State.DEGRADED:
                    self.enter(State.READY, "/health answers again")
            else:
                bad += 1
                if bad >= timing.health_failures_for_degraded and self.state is State.READY:
                    self.enter(State.DEGRADED, f"/health failed {bad} times in a row")
                    self.notifier.status("degraded: /health failing")
            now = self.clock.monotonic()
            if now >= next_metrics:
                next_metrics = now + timing.metrics_interval_s
                # `bench --find-capacity` (another process) keeps its result in the state file
                self.capacity = await asyncio.to_thread(self.store.read_capacity, self.profile.name)
                metrics = await self.engine_client.metrics()
                waiting = (metrics.waiting if metrics else None) or 0.0
                tokens = (metrics.generation_tokens_total if metrics else None) or 0.0
                if waiting > 0 and tokens <= last_tokens:
                    stalled_since = stalled_since or now
                    if now - stalled_since >= stall_limit:
                        return Failure(FailureKind.ENGINE_DEAD, f"engine hung: {waiting:g} requests waiting and no "
                                       f"tokens generated for {stall_limit:g} s", {"hang": 1})
                else:
                    stalled_since = None
                last_tokens = tokens

    async def _watch_startup(self) -> Failure:
        """Before ready: a stalled log or a start that takes too long counts as a failure."""
        rec = self.profile.recovery
        deadline = self.clock.monotonic() + rec.startup_timeout_s
        while True:
            await self.clock.sleep(self.timing.startup_tick_s)
            now = self.clock.monotonic()
            if now - self.last_output > rec.stall_timeout_s:
                return Failure(FailureKind.ENGINE_DEAD, f"engine hung during startup: no output for "
                               f"{rec.stall_timeout_s:g} s (last phase: {self.parser.phase or 'none'})", {"hang": 1})
            if now > deadline:
                return Failure(FailureKind.ENGINE_DEAD, f"engine not ready after {rec.startup_timeout_s:g} s "
                               "(recovery.startup_timeout_s)", {"hang": 1})

    # ------------------------------------------------------------ one attempt
    # ------------------------------------------------------------ who holds the GPU, and its health
    def _read_gpus(self) -> tuple[list[Tenant], list[host_gpus.GpuHealth]]:
        """The GPUs' processes (named) and health. Blocking: NVML and /proc; run it in a thread."""
        if self.inventory is None or not self.plan.chosen:
            return [], []
        indexes = {g.index for g in self.plan.chosen}
        guard = self.engine.guard_pid if self.engine is not None and self.engine.running else None
        ours = set(launching.session_members(guard)) if guard else set()
        try:
            tenants = gpu_tenants(self.inventory, indexes, ours, os.getpid())
        except Exception as exc:  # noqa: BLE001 - NVML hiccups must not stop a launch
            log.debug("cannot list the GPUs' processes: %s", exc)
            tenants = []
        health_of = getattr(self.inventory, "health", None)
        try:
            health = [h for h in health_of() if h.index in indexes] if callable(health_of) else []
        except Exception as exc:  # noqa: BLE001
            log.debug("cannot read the GPUs' health: %s", exc)
            health = []
        return tenants, health

    def _publish_tenants(self, tenants: list[Tenant], health: list[host_gpus.GpuHealth]) -> None:
        self.tenants = [t.to_json() for t in tenants]
        self.gpu_health = [h.to_json() for h in health]

    async def _watch_tenants(self) -> None:
        while True:
            await self.clock.sleep(self.timing.tenants_poll_s)
            self._publish_tenants(*await asyncio.to_thread(self._read_gpus))

    def _faults(self, health: list[host_gpus.GpuHealth]) -> list[str]:
        return [f for h in health for f in h.faults_since(self._health_baseline.get(h.uuid), self._faults_since)]

    async def _gpus_proved_usable(self) -> None:
        """An engine became ready (or a person said to try again): what the GPUs report now is
        their usable state; only faults newer than this count against the next failure (the time
        is taken before the read, so an Xid raised while it runs counts)."""
        since = time.time()
        tenants, health = await asyncio.to_thread(self._read_gpus)
        self._publish_tenants(tenants, health)
        self._health_baseline = {h.uuid: h for h in health}
        self._faults_since = since

    async def _before_launch(self) -> None:
        """Who holds the GPUs before a launch: leftover vLLM engines that are not ours are named
        (once per set) and ended only when the profile or `up --end-foreign-engines` says so;
        other programs are named."""
        tenants, health = await asyncio.to_thread(self._read_gpus)
        self._publish_tenants(tenants, health)
        foreign = [t for t in tenants if t.foreign_engine]
        others = [t for t in tenants if not t.ours and not t.foreign_engine]  # programs, other supervisors' engines
        said = frozenset((t.pid, t.started) for t in foreign + others)
        if foreign and self.end_foreign:
            text = describe(foreign)
            log.warning("ending leftover vLLM engine processes that are not ours (recovery.end_foreign_engines): %s",
                        text)
            left = await asyncio.to_thread(launching.end_foreign, foreign, self.settings.stop_timeout_s)
            self._event("foreign_engines_ended", reason=f"ended {text}" + (f"; still there: {left}" if left else ""))
            said = frozenset((t.pid, t.started) for t in others)
        elif foreign and said != self._foreign_said:
            text = describe(foreign)
            log.warning("leftover vLLM engine processes that are not ours hold GPU memory: %s; end them, or set "
                        "recovery.end_foreign_engines: true (or `up --end-foreign-engines`) to have them ended "
                        "before each launch", text)
            self._event("foreign_engines", reason=text)
        if others and said != self._foreign_said:
            log.info("other processes on the GPU: %s", describe(others))
        self._foreign_said = said

    async def _launch(self) -> launching.EngineHandle:
        await self._before_launch()
        self.attempt += 1
        self.parser = LogParser(sink=FailureClassifier(),
                                block_size=block_size_for(self.args.block_size, self.plan.vllm_version))
        self.classifier = self.parser.sink  # type: ignore[assignment]
        self.ready_at = None
        self.metrics_kv_tokens = None
        self._kv_said = None
        self.last_output = self.clock.monotonic()
        self._launched_at = self.clock.time()
        if self.door is not None:
            # A fresh private port at each launch, the first included: never one an engine of before
            # may still hold, and chosen as late as can be (a head may wait minutes for its Ray
            # nodes after planning, while their processes bind ports of their own).
            self.engine_port = free_loopback_port({*supervisor_ports(self.settings, self.profile), self.engine_port})
            self.engine_client.retarget(self.engine_url)
            self.door.engine_starting(self._time_to_ready())
        argv = self.plan.argv_for(self.args, self.engine_port)
        self.message = f"attempt {self.attempt}: launching"
        log.info("launch attempt %d: %s", self.attempt, " ".join(redact_argv(argv)), extra=SHOWN)
        self._event("launch", reason=" ".join(redact_argv(argv[len(self.plan.command):])))
        cpus, mems, policy = self.plan.placement.apply_args()
        spec = launching.LaunchSpec(argv=argv, env=self.plan.env_for(self.args), cpus=cpus, mems=mems,
                                    mempolicy=policy, stop_timeout=self.settings.stop_timeout_s)
        self._engine_log().write(framing.attempt_line(self.attempt, iso(self.clock.time()),
                                                      " ".join(redact_argv(argv))).encode())
        self.engine_started_at = self.clock.monotonic()
        self._death_reported.clear()
        self._end_dead_engine = not keeps_dead_engine_serving(spec.env)
        self._emit(Launched(self.attempt, self.engine_started_at, " ".join(redact_argv(argv[len(self.plan.command):])),
                            str(self.log_path)))
        self.engine = engine = await self.launcher.start(spec, self._on_output)
        if engine.placement:
            self.placement_applied = engine.placement
            if engine.placement != "none":
                log.info("placement: %s", engine.placement)
        backstop = getattr(engine, "backstop", None)
        if backstop and backstop != self.backstop:
            self.backstop = backstop
            log.info("orphan backstop for the engine tree: %s", backstop)
        self.notifier.status(f"attempt {self.attempt}: starting vLLM (pid {engine.engine_pid})")
        return engine

    async def run_attempt(self) -> Outcome:
        engine = await self._launch()
        exit_task = asyncio.create_task(engine.wait(), name="engine-wait")
        command_task = asyncio.create_task(self.wait_for_command(), name="command")
        ready_task: asyncio.Task | None = asyncio.create_task(self._wait_ready(), name="readiness")
        watch_task = asyncio.create_task(self._watch_startup(), name="startup-watch")
        death_task: asyncio.Task | None = None
        requested: Command | None = None
        failure: Failure | None = None
        reported_dead = False
        try:
            while True:
                waiting = {exit_task, command_task, watch_task}
                if ready_task is not None:
                    waiting.add(ready_task)
                if death_task is not None:
                    waiting.add(death_task)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if ready_task in done:
                    failure = _task_failure(ready_task, "readiness probe")
                    if failure is not None:
                        break
                    ready_task = None
                    watch_task.cancel()
                    watch_task = asyncio.create_task(self._monitor_ready(), name="ready-monitor")
                    if self._end_dead_engine:
                        death_task = asyncio.create_task(self._death_reported.wait(), name="engine-death")
                    continue
                if exit_task in done:
                    break
                if death_task in done:
                    reported_dead = True
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
            for task in (command_task, watch_task, ready_task, death_task):
                if task is not None and not task.done():
                    task.cancel()
        reached_ready = self.ready_at is not None
        if requested or failure is not None:
            self.message = ("stopping" if requested is Command.STOP else f"restarting: {requested} requested" if requested
                            else f"restarting: {failure.kind}")  # type: ignore[union-attr]
            if requested:
                self.enter(State.STOPPING if requested is Command.STOP else State.RESTARTING, f"{requested} requested")
            self.notifier.status("stopping vLLM" if requested is Command.STOP
                                 else f"restarting: {requested or failure.message}")  # type: ignore[union-attr]
            planned = requested is Command.RESTART or (failure is not None and bool(failure.values.get("hang")))
            if self.door is not None and planned and reached_ready:
                # a planned restart: what the engine is answering may finish; new requests wait
                drained = await self.door.drain()
                log.info("front door drained before the restart %s", drained)
            asked_at = self.clock.monotonic()
            exit_info = await self.stop_tree(engine, self.settings.stop_timeout_s)
            waited = self.clock.monotonic() - asked_at
        elif reported_dead:
            # vLLM's API server outlives its dead engine until a watchdog (up to 5 s) ends it; nothing
            # it serves meanwhile can answer: clients wait for the next engine, the tree ends now
            log.info("attempt %d: vLLM reports its engine dead; ending the engine's processes now rather than "
                     "waiting for its API server to exit", self.attempt)
            self._engine_gone()
            exit_info = await self.stop_tree(engine, self.settings.stop_timeout_s)
            waited = 0.0
        else:
            exit_info = await exit_task
            waited = 0.0
        described, level = exit_info.description, logging.INFO
        if reported_dead:
            described += " (ended by the supervisor after vLLM reported its engine dead)"
        elif self.hurried and exit_info.signal == signal.SIGKILL:
            described = "killed with SIGKILL on a second stop signal"
        if (requested or failure is not None) and waited >= 0.9 * self.settings.stop_timeout_s and (
                exit_info.signal == signal.SIGKILL or exit_info.code == 128 + signal.SIGKILL):
            # our own deadline, not the OOM killer the plain description would suggest
            described = (f"ignored SIGTERM for {self.settings.stop_timeout_s:g} s "
                         "(LLM_SUPERVISOR_STOP_TIMEOUT_S) and was killed")
            level = logging.WARNING
        if self._log is not None:
            self._log.write(framing.exit_line(described).encode())
        unexpected = failure is None and not requested
        if unexpected and exit_info.guard_lost:
            failure = guard_lost_failure(exit_info.description, reached_ready)
        elif unexpected:
            failure = self.classifier.classify(exit_info.code, reached_ready) or Failure(
                FailureKind.UNKNOWN, f"vLLM {exit_info.description} without a recognised error", {})
        if unexpected and not reported_dead:
            self._engine_gone()
        # The kind only: the decision line that follows says it with its numbers, the history keeps
        # vLLM's whole message.
        log.log(level, "attempt %d: engine %s%s", self.attempt, described, f" ({failure.kind})" if failure else "",
                extra=SHOWN if level == logging.INFO else None)
        if requested is not Command.STOP and not self.stop_requested:
            del self.attempts[:-ATTEMPTS_KEPT]
            self.attempts.append(Attempt(at=self._launched_at, args=self.args,
                                         failure=failure.kind if failure else None,
                                         reached_ready=reached_ready, ended_at=self.clock.time()))
        return Outcome(exit_info, failure, reached_ready, requested)

    def _engine_gone(self) -> None:
        """Clients see the engine is gone; what it had not answered waits for the next one."""
        if self.door is not None:
            self.door.engine_down("the model server stopped unexpectedly and is being restarted", self._time_to_ready())

    # ------------------------------------------------------------ what next
    def _gpu_memory(self) -> tuple[float | None, float | None]:
        if self.inventory is None or not self.plan.chosen:
            return None, None
        try:
            uuid = self.plan.chosen[0].uuid
            gpu = next((g for g in self.inventory.gpus() if g.uuid == uuid), None)
        except Exception:  # noqa: BLE001
            return None, None
        return (gpu.memory_free_mib, gpu.cuda_total_mib) if gpu else (None, None)

    async def decide(self, outcome: Outcome) -> Relaunch | GiveUp:
        failure = outcome.failure
        assert failure is not None
        self._event("exit", failure=failure, reason=outcome.exit.description if outcome.exit else "")
        if not outcome.reached_ready:
            await self._learn_overhead()
        (free, total), (tenants, health) = await asyncio.to_thread(lambda: (self._gpu_memory(), self._read_gpus()))
        self._publish_tenants(tenants, health)
        return decide(failure, self.args, self.profile, self.attempts, self.parser.facts,
                      gpu_free_mib=free, gpu_total_mib=total, fit=self.fit, gpu_faults=self._faults(health),
                      gpu_tenants=[t.describe() for t in tenants if not t.ours],
                      engine_port=self.engine_port)  # None without the front door

    def on_restart_requested(self, outcome: Outcome) -> None:
        self.restarts += 1
        self.restarts_by_reason["admin"] += 1
        self.message = "restarting: requested"
        self._event("restart", reason="restart requested through the API")

    def decision_text(self, decision: Relaunch | GiveUp) -> str:  # type: ignore[override]
        """The state line's reason: what changes, not the policy's whole reasoning again."""
        if isinstance(decision, Relaunch):
            return f"relaunch with {change_brief(decision.change) or 'the same arguments'}"
        return _first_sentence(decision.reason.removeprefix("giving up: "))

    def on_relaunch(self, outcome: Outcome, decision: Relaunch) -> None:  # type: ignore[override]
        failure = outcome.failure
        self.attempts[-1].change = decision.change
        self.attempts[-1].reason = decision.reason
        self.restarts += 1
        self.restarts_by_reason[str(failure.kind)] += 1
        self._event("relaunch", failure=failure, change=decision.change, reason=decision.reason)
        line = decision_brief(str(failure.kind), failure.values, failure.message, decision.change, decision.delay_s)
        self.history[-1]["summary"] = line
        log.warning("attempt %d failed: %s", self.attempt, line, extra=SHOWN)
        self._emit(Decided(self.attempt, self.clock.monotonic(), line, decision.delay_s))
        self.args = decision.args
        if decision.delay_s > 0:
            self.message = f"backoff {decision.delay_s:g} s after {line}"
        else:
            self.message = f"relaunching after {line}"
        self.notifier.status(self.message[:200])

    def on_give_up(self, outcome: Outcome, decision: GiveUp) -> None:
        if self.door is not None:
            self.door.engine_failed(f"the model server failed to start and is not being restarted "
                                    f"({FailureKind(outcome.failure.kind).value if outcome.failure else 'stopped'}); "
                                    "ask its operator")
        self.message = f"failed: {decision.reason}"
        failure = outcome.failure
        line = _first_sentence(decision.reason.removeprefix("giving up: "))
        if failure is not None and str(failure.kind) not in line:
            brief = failure_brief(str(failure.kind), failure.values, failure.message)
            line = f"{failure.kind}: {line}" if brief.rstrip(".") in line else f"{failure.kind}: {brief}; {line}"
        log.error("giving up: %s", line, extra=SHOWN)
        self.notifier.status(f"failed: {line}"[:200])
        self._event("give_up", failure=failure, reason=decision.reason)
        self.history[-1]["summary"] = line
        self.gave_up_line = line
        self.exit_code = EXIT_GAVE_UP
        linger = self.settings.failed_linger_s
        if linger <= 0 or (self.notifier.enabled and self.ready_count == 0):
            linger = 0.0
        self._emit(GaveUp(self.attempt, self.clock.monotonic(), line, linger))

    async def linger(self) -> bool:
        """Stay in `failed` for LLM_SUPERVISOR_FAILED_LINGER_S so status, /metrics and a person see
        why; a restart in that window tries again from the planned arguments (True). A stop, a
        signal or the window closing ends the daemon with exit 3 (False). Under systemd, a unit
        that never became ready does not linger: its start job would only wait longer."""
        linger = self.settings.failed_linger_s
        if linger <= 0 or (self.notifier.enabled and self.ready_count == 0):
            return False
        log.info("staying in failed for %g s (LLM_SUPERVISOR_FAILED_LINGER_S), then exiting with code %d; "
                 "`supervisor restart` tries again", linger, EXIT_GAVE_UP)
        if await self.pause(linger) is not Command.RESTART:
            return False
        self.attempts.clear()
        self.args = self.plan.args
        await self._gpus_proved_usable()  # a person looked and said to try again
        self.restarts += 1
        self.restarts_by_reason["admin"] += 1
        self.exit_code = EXIT_OK
        self._event("restart", reason="restart requested after giving up: trying again from the planned arguments")
        return True

    # ------------------------------------------------------------ the daemon
    async def serve(self) -> int:
        """The loop and its background tasks, until a stop or a give-up; then a staged stop of the
        engine. No signals, no REST API: `run()` adds those."""
        self._loop = self.followers.loop = asyncio.get_running_loop()
        for warning in self.store.warnings:
            log.warning("%s", warning)
        if self.door is not None:
            await self.door.start(self.args.host, self.args.port)
        if self._log is None:  # the engine log takes a write, or one line says why (before any launch)
            await asyncio.to_thread(check_log_dir, self.settings.logs / f"{self.profile.name}.log",
                                    "LLM_SUPERVISOR_LOG_DIR" if self.settings.log_dir else "LLM_SUPERVISOR_STATE_DIR")
        background = [asyncio.create_task(poll_gpus(self.inventory, self.clock, self.timing.gpu_poll_s,
                                                    self._publish_gpus, self._gpus_changed), name="gpu-poll"),
                      asyncio.create_task(keep_watchdog(self.notifier, self.clock), name="watchdog"),
                      asyncio.create_task(self._watch_tenants(), name="gpu-tenants"),
                      asyncio.create_task(self.dispatch_commands(), name="commands"),
                      asyncio.create_task(sample(self.series, self.clock, lambda: self.gpus, self.engine_client.metrics,
                                                 lambda: self.state in (State.READY, State.DEGRADED)), name="series")]
        code = EXIT_OK
        try:
            code = await self.supervise()
        finally:
            self.inbox.closed = True
            self.notifier.stopping("stopping")
            if self.engine is not None and self.engine.running:
                if self.state is not State.STOPPING:
                    self.enter(State.STOPPING, "daemon stopping")
                await self.stop_tree(self.engine, self.settings.stop_timeout_s)
            if self.state not in (State.FAILED, State.STOPPED):  # STOPPED: stopped before a launch
                if self.state is not State.STOPPING:
                    self.enter(State.STOPPING, "daemon stopping")
                self.enter(State.STOPPED, "engine stopped")
            if self.door is not None:
                await self.door.stop()
            self._event("stop", reason=f"daemon exiting with code {code}")
            line = (f"daemon exiting with code {code}, gave up: {self.gave_up_line}"
                    if code == EXIT_GAVE_UP and self.gave_up_line else f"daemon exiting with code {code}")
            (log.error if code else log.info)("%s", line, extra=SHOWN)
            self._emit(Exiting(self.clock.monotonic(), code, line))
            for task in background:
                task.cancel()
            await asyncio.to_thread(self.store.flush, 10.0)
            await self.engine_client.aclose()
            if self._log is not None:
                await asyncio.to_thread(self._log.close, 2.0)
            await asyncio.sleep(0)  # the log's last writes reach the followers first
            self.followers.end()
        return code

    def _publish_gpus(self, gpus: list[dict[str, Any]]) -> None:
        self.gpus = gpus

    def _on_signal(self, sig: signal.Signals) -> None:
        """Signal handlers only record: SIGHUP reloads, SIGTERM/SIGINT stop. A second stop signal
        (Ctrl-C again) does not wait out the staged stop: the engine's tree is SIGKILLed now."""
        if sig == signal.SIGHUP:
            self.inbox.put(Command.RELOAD)
            return
        self.stop_signal(sig, "vLLM", self.settings.stop_timeout_s, self.engine is not None and self.engine.running,
                         lambda: self.hurry_tree(self.engine))

    async def run(self) -> int:
        """`supervisor up`: signals, the REST API, and the loop."""
        collectors = [self.door.collector()] if self.door is not None else []
        async with served(self.settings, self.status, self.command, self._on_signal, collectors,
                          series=self.series.to_json, logs=self.open_logs):
            return await self.serve()

    # ------------------------------------------------------------ the engine's log, for the API
    async def open_logs(self, attempt: int | None, follow: bool, lines: int | None = None) -> AsyncIterator[bytes]:
        """`GET /logs`: attempt N of this run (the newest when None), then, with `follow`, what the
        engine writes next, until the daemon stops (runtime/logfollow.py)."""
        return await self.followers.open(attempt, self.attempt, follow, lines)


def _first_sentence(text: str, limit: int = 200) -> str:
    """A policy reason's first sentence (they go on with the numbers' derivation)."""
    head = text.split("; ", 1)[0].split(". ", 1)[0].strip()
    return head if len(head) <= limit else head[: limit - 1] + "…"


def capacity_summary(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """What /status shows of the last `bench --find-capacity` result (the state file has it all)."""
    if not isinstance(result, dict) or "capacity_users" not in result:
        return None
    best = result.get("capacity") if isinstance(result.get("capacity"), dict) else {}
    slo = result.get("slo") if isinstance(result.get("slo"), dict) else {}
    sat = result.get("saturation") if isinstance(result.get("saturation"), dict) else {}
    return {
        "users": result.get("capacity_users"),
        "slo": slo.get("text"),
        "workload": result.get("workload"),
        "requests_per_s": best.get("requests_per_s"),
        "tokens_per_s": best.get("tokens_per_s"),
        "ttft_p95_s": (best.get("ttft_s") or {}).get("p95"),
        "tpot_p95_s": (best.get("tpot_s") or {}).get("p95"),
        "saturated_at_users": sat.get("users"),
        "saturation": sat.get("cause"),
        "measured_at": iso(result["measured_at"]) if isinstance(result.get("measured_at"), (int, float)) else None,
        "plot": result.get("plot"),
    }


def check_engine_port(args: VllmArgs) -> None:
    """Can the engine listen where the profile says? A port in use is a runtime failure (exit 1);
    a host that is no address of this machine, or no name at all, is bad input (exit 2)."""
    host = "127.0.0.1" if args.host in ALL_INTERFACES else args.host
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, args.port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise BadInput("engine host", [f"vllm.host {host}: cannot resolve it ({getattr(exc, 'strerror', None) or exc}) "
                                       "(allowed: an address of this machine, 0.0.0.0, or a name that resolves "
                                       "to one)"]) from None
    with socket.socket(family, kind, proto) as sock:
        # As vLLM's server binds: connections of a just-stopped engine linger in TIME_WAIT on
        # this port for a minute; without SO_REUSEADDR they would look like another server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                raise BadInput("engine host", [f"vllm.host {host}: not an address of this machine "
                                               "(allowed: 127.0.0.1, 0.0.0.0, ::1, or one of this host's "
                                               "addresses)"]) from None
            if exc.errno == errno.EACCES:
                raise RuntimeFailure(f"engine port {args.port} on {host}: permission denied (ports below 1024 need "
                                     "root or CAP_NET_BIND_SERVICE); set --set vllm.port=…") from None
            holder = port_holder(args.port)
            who = f"{holder[1]} pid {holder[0]} listens there" if holder else "another vLLM?"
            raise RuntimeFailure(f"engine port {args.port} on {host} is in use ({exc.strerror}): {who}; "
                                 "stop it or set --set vllm.port=…") from None


def run_daemon(settings: Settings, profile: Profile, *, simulate: bool, ignore_hardware: bool = False,
               daemon_class: type[Daemon] | None = None, progress: Any = None, redactor: Redactor | None = None,
               end_foreign_engines: bool = False) -> int:
    """`supervisor up`: plan, lock the state dir, run the loop until SIGTERM/SIGINT or give-up.
    `progress` (runtime/progress.TerminalProgress, on a terminal) draws the events and the log."""
    redactor = redactor or Redactor.from_inputs(settings, profile, os.environ)
    check_log_path(settings.logs / f"{profile.name}.log",  # bad input first, before the daemon says anything
                   "LLM_SUPERVISOR_LOG_DIR" if settings.log_dir else "LLM_SUPERVISOR_STATE_DIR")
    with daemon_process(settings, redactor):
        if progress is not None:
            logging.getLogger("llm_supervisor").handlers[:] = [progress.handler()]
        store = StateStore(settings.state_dir, redactor)
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
        if not plan.frontdoor:  # with the front door, binding the public address says it (at start)
            check_engine_port(plan.args)
        daemon = (daemon_class or Daemon)(settings, profile, plan, store=store,  # cluster.head.HeadDaemon on a head
                                          redactor=redactor, end_foreign_engines=end_foreign_engines)
        log.info("engine output: %s (`supervisor logs -f` follows it)", daemon.log_path)
        if progress is None:
            return run_daemon_loop(daemon.run)
        daemon.observers.append(progress)
        with progress:
            return run_daemon_loop(daemon.run)
