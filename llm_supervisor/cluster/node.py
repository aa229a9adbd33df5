"""One host of a multi-node vLLM deployment on Ray: the process side of cluster.py.

* Worker hosts (`supervisor up --role worker`): run `ray start --address HEAD --block` under a
  guard (launcher.start), with the host's CPU/NUMA placement, so Ray's raylet and every Ray
  worker process are its descendants and die with the daemon. When `ray start` exits (the head
  went away, the node crashed), wait until the head's GCS port answers again and rejoin, with
  backoff. The worker serves the same REST API (state `ready` once joined).
* The head (`--role head`): the single-host Daemon, subclassed. It also runs `ray start --head
  --block` under a guard and a small probe process (rayprobe.py) that reads the cluster from
  Ray's GCS. Before each launch it waits until the cluster shows the expected GPUs; then it
  launches `vllm serve … --distributed-executor-backend ray` (RAY_ADDRESS set) and supervises it
  as on one host (facts, readiness, recovery). When a node the engine runs on leaves the
  cluster it reports `degraded`, stops the engine (a pipeline missing a stage cannot serve, and
  vLLM does not always notice an idle dead actor), waits for the node to come back and
  relaunches; after `cluster.join_timeout_s` without it, it fails with the reason. `/status`
  gains `nodes` (every Ray node: address, GPUs, state) and `cluster`.

Stopping: the engine first (its Ray driver leaves, Ray ends its actors), then the probe, then
Ray itself; each is a guarded tree, so nothing survives the daemon, even a SIGKILLed one.
`ray stop` is never used: it would end every Ray process of the user on the host.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_supervisor.cluster import spec as cluster
from llm_supervisor.host import gpus as hardware
from llm_supervisor.runtime import launcher
from llm_supervisor.api.server import create_app, start_api, stop_api
from llm_supervisor.cluster.spec import ClusterView, Role
from llm_supervisor.runtime.daemon import AttemptOutcome, Daemon, daemon_process, enqueue_command, log_placement, run_daemon
from llm_supervisor.errors import EXIT_GAVE_UP, EXIT_OK, BadInput
from llm_supervisor.vllm.failures import Failure, FailureKind
from llm_supervisor.runtime.notify import Notifier
from llm_supervisor.planning.launch import LaunchPlan, build_plan
from llm_supervisor.config.profile import Profile
from llm_supervisor.cluster.probe import port_open
from llm_supervisor.config.settings import Settings
from llm_supervisor.runtime.states import State

log = logging.getLogger("llm_supervisor")

RAY_READY_MARKER = "Ray runtime started"
RAY_STOP_TIMEOUT_S = 5.0  # Ray keeps nothing worth a longer grace; `ray stop --force` does not wait at all
RING_LINES = 40
# Variables the engine needs but Ray's own processes must not inherit.
ENGINE_ONLY_ENV = ("RAY_ADDRESS", "VLLM_API_KEY")


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class Supervised:
    """One command under a guard, restarted with backoff when it exits on its own.

    `ready_marker`: an output line that means the process is up (`ray start` prints "Ray runtime
    started"); exits before it count as failed starts, and `max_failures` of those in a row end
    the loop in state `failed`. `wait_for`: (host, port) that must accept TCP connections before
    each start (a worker waits for the head's GCS)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *,
                 placement: tuple[list[int] | None, list[int] | None, str] = (None, None, "none"),
                 log_path: Path | None = None, log_max_bytes: int = 20 * 1024 * 1024, log_backups: int = 3,
                 ready_marker: str | None = None, wait_for: tuple[str, int] | None = None,
                 backoff: tuple[float, float] = (2.0, 30.0), max_failures: int | None = None,
                 stop_timeout: float = RAY_STOP_TIMEOUT_S,
                 on_line: Callable[[str], None] | None = None,
                 on_state: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.placement = placement
        self.log_path = log_path
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.ready_marker = ready_marker
        self.wait_for = wait_for
        self.backoff = backoff
        self.max_failures = max_failures
        self.stop_timeout = stop_timeout
        self.on_line = on_line
        self.on_state = on_state
        self.state = "stopped"
        self.reason = ""
        self.ready = False
        self.proc: launcher.EngineProcess | None = None
        self.starts = 0
        self.restarts = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.last_exit: str | None = None
        self.placement_applied: str | None = None
        self.ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self._stop = asyncio.Event()
        self._restart = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._log: launcher.RotatingLog | None = None

    # ------------------------------------------------------------ control
    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self.run(), name=f"supervise-{self.name}")
        return self._task

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout + 20)
        elif self.proc is not None and self.proc.running:
            await self.proc.stop(self.stop_timeout)

    def restart(self) -> None:
        """End the running process (staged stop) and start it again at once."""
        self._restart.set()

    @property
    def pid(self) -> int | None:
        return self.proc.engine_pid if self.proc is not None and self.proc.running else None

    @property
    def failed(self) -> bool:
        return self.state == "failed"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "pid": self.pid,
                "guard_pid": self.proc.guard_pid if self.proc is not None and self.proc.running else None,
                "argv": list(self.argv), "starts": self.starts, "restarts": self.restarts,
                "last_exit": self.last_exit, "up_since": _iso(self.ready_at) if self.ready_at and self.ready else None,
                "placement": self.placement_applied, "log_tail": list(self.ring)[-10:]}

    # ------------------------------------------------------------ internals
    def _set(self, state: str, reason: str = "") -> None:
        changed = state != self.state or reason != self.reason
        self.state, self.reason = state, reason
        if changed and self.on_state is not None:
            self.on_state(state, reason)

    def _on_output(self, raw: bytes, lines: list[str]) -> None:
        if raw and self._log is not None:
            self._log.write(raw)
        for line in lines:
            if self.on_line is not None:
                self.on_line(line)
            if line.strip():
                self.ring.append(line)
            if not self.ready and self.ready_marker and self.ready_marker in line:
                self.ready = True
                self.ready_at = time.time()
                self._set("running", f"{self.name} is up (pid {self.pid})")

    async def _sleep(self, seconds: float) -> bool:
        """Wait; True when a stop came in (a restart request cuts the wait short)."""
        stop = asyncio.create_task(self._stop.wait())
        again = asyncio.create_task(self._restart.wait())
        try:
            await asyncio.wait({stop, again}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            again.cancel()
        self._restart.clear()
        return self._stop.is_set()

    async def _wait_for_port(self) -> bool:
        if self.wait_for is None:
            return False
        host, port = self.wait_for
        said = False
        while not await asyncio.to_thread(port_open, host, port, 1.0):
            if not said:
                self._set("waiting", f"waiting for {host}:{port} to accept connections")
                said = True
            if await self._sleep(1.0):
                return True
        return self._stop.is_set()

    async def run(self) -> None:
        streak = 0
        if self.log_path is not None:
            self._log = launcher.RotatingLog(self.log_path, self.log_max_bytes, self.log_backups)
        try:
            while not self._stop.is_set():
                if await self._wait_for_port():
                    break
                self.ready = False
                self.starts += 1
                self.started_at = time.time()
                self._set("starting", f"starting {self.name}")
                if self._log is not None:
                    self._log.write(f"\n===== llm-supervisor start {self.starts} at {_iso(time.time())}: "
                                    f"{' '.join(self.argv)}\n".encode())
                cpus, mems, policy = self.placement
                spec = launcher.LaunchSpec(argv=self.argv, env=self.env, cpus=cpus, mems=mems, mempolicy=policy,
                                           stop_timeout=self.stop_timeout)
                self.proc = proc = await launcher.start(spec, self._on_output)
                self.placement_applied = proc.placement
                if self.ready_marker is None:
                    self.ready = True
                    self.ready_at = time.time()
                    self._set("running", f"{self.name} is running (pid {proc.engine_pid})")
                waiter = asyncio.create_task(proc.wait())
                stopper = asyncio.create_task(self._stop.wait())
                again = asyncio.create_task(self._restart.wait())
                await asyncio.wait({waiter, stopper, again}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                again.cancel()
                if not waiter.done():  # stop or restart asked for
                    self._set("stopping", f"stopping {self.name}")
                    info = await proc.stop(self.stop_timeout)
                    self.last_exit = info.description
                    if self._stop.is_set():
                        break
                    self._restart.clear()
                    self.restarts += 1
                    streak = 0
                    continue
                info = waiter.result()
                self.last_exit = info.description
                streak = 0 if self.ready else streak + 1
                tail = next((ln.strip() for ln in reversed(self.ring) if ln.strip()), "")
                what = f"{self.name} {info.description}" + (f" (last output: {tail[-300:]})" if tail else "")
                if self.max_failures and streak >= self.max_failures:
                    self._set("failed", f"{what}; {streak} starts in a row failed")
                    return
                delay = min(self.backoff[1], self.backoff[0] * 2 ** max(0, streak - 1))
                self.restarts += 1
                self._set("backoff", f"{what}; starting it again in {delay:g} s")
                if await self._sleep(delay):
                    break
        finally:
            if self.proc is not None and self.proc.running:
                with contextlib.suppress(Exception):
                    await self.proc.stop(self.stop_timeout)
            if self.state != "failed":
                self._set("stopped", f"{self.name} stopped")
            if self._log is not None:
                self._log.close()


def _ray_env(base: dict[str, str], cfg: cluster.ClusterConfig, node_ip: str | None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in ENGINE_ONLY_ENV}
    env.update(cluster.node_env(cfg, node_ip))
    return env


def _dedupe_nodes(view: ClusterView | None) -> list[dict[str, Any]]:
    """Every live node, and the dead ones whose address has no live node (Ray keeps a dead entry
    per node id, and a rejoined host gets a new id)."""
    if view is None:
        return []
    alive_addresses = {n.address for n in view.alive}
    seen: set[str] = set()
    out = []
    for entry in view.to_json():
        if entry["state"] == "dead":
            if entry["address"] in alive_addresses or entry["address"] in seen:
                continue
            seen.add(entry["address"])
        out.append(entry)
    return out


# ---------------------------------------------------------------- the head


class HeadDaemon(Daemon):
    """The single-host Daemon plus the Ray head, the cluster probe and node-loss handling."""

    def __init__(self, settings: Settings, profile: Profile, plan: LaunchPlan, **kwargs: Any) -> None:
        super().__init__(settings, profile, plan, **kwargs)
        cfg = profile.cluster
        if cfg is None:
            raise BadInput("no cluster section", [f"profile {profile.name}: the head needs a cluster section"])
        self.cluster_cfg = cfg
        self.per_node = cluster.gpus_per_node(profile)
        self.node_ip = cluster.resolve_node_ip(cfg)
        base = plan.env_for(plan.args)
        self.ray = Supervised(
            "ray head", cluster.ray_start_argv(cfg, "head", self.per_node, self.node_ip),
            _ray_env(base, cfg, self.node_ip), placement=plan.placement.apply_args(),
            log_path=settings.logs / f"{profile.name}-ray-head.log", log_max_bytes=settings.log_max_bytes,
            ready_marker=RAY_READY_MARKER, max_failures=profile.recovery.max_attempts,
            backoff=(cfg.restart_backoff_initial_s, cfg.restart_backoff_max_s), on_state=self._on_ray_state)
        probe_env = {k: v for k, v in base.items() if k not in ENGINE_ONLY_ENV}
        probe_env["LLM_SUPERVISOR_RAY_COMMAND"] = cfg.ray_command
        self.probe = Supervised(
            "ray probe", [sys.executable, "-m", "llm_supervisor.cluster.probe", "--address", cfg.ray_address,
                          "--interval", f"{cfg.poll_interval_s:g}"],
            probe_env, backoff=(1.0, 5.0), stop_timeout=3.0, on_line=self._on_probe_line)
        self.view: ClusterView | None = None
        self.view_at: float | None = None
        self.view_error: str | None = None
        self._launch_view: ClusterView | None = None
        self._lost_reason: str | None = None
        self._missing: str | None = None  # the nodes lost, until the cluster is whole again
        self._incomplete_since: float | None = None
        self._stopper: asyncio.Task | None = None

    # ------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        out = super().status()
        cfg = self.cluster_cfg
        r = cluster.readiness(self.view, cfg.nodes, self.per_node)
        out["role"] = "head"
        out["nodes"] = _dedupe_nodes(self.view)
        out["cluster"] = {
            "head_address": cfg.ray_address, "node_ip": self.node_ip, "nodes_expected": cfg.nodes,
            "gpus_per_node": self.per_node, "gpus_expected": cfg.nodes * self.per_node,
            "gpu_nodes_alive": r.gpu_nodes, "gpus_alive": r.gpus, "complete": r.ready, "summary": r.reason,
            "read_at": _iso(self.view_at) if self.view_at else None, "read_error": self.view_error,
            "ray": self.ray.to_json(),
        }
        return out

    # ------------------------------------------------------------ Ray head and probe
    def _on_ray_state(self, state: str, reason: str) -> None:
        if state in ("running", "backoff", "failed"):
            (log.warning if state != "running" else log.info)("ray head: %s", reason)
            self._event(f"ray_{state}", reason=reason)
        if state in ("backoff", "failed") and self._launch_view is not None and self._lost_reason is None:
            # the engine's cluster is gone with it (every node must rejoin a new head)
            self._cluster_broken(f"the Ray head exited ({self.ray.last_exit})", "ray_head_lost")

    def _on_probe_line(self, line: str) -> None:
        line = line.strip()
        if not line.startswith("{"):
            return
        try:
            data = json.loads(line)
        except ValueError:
            return
        if not data.get("ok"):
            if self.view_error is None:
                log.info("cluster: no reading (%s)", data.get("error"))
            self.view_error = str(data.get("error") or "unknown")
            return
        view = cluster.view_from_json(data)
        if view is None:
            return
        self.view_error = None
        before = self.view
        self.view, self.view_at = view, time.time()
        self._log_changes(before, view)
        self._check_engine_nodes(view)

    def _log_changes(self, before: ClusterView | None, now: ClusterView) -> None:
        old = {n.node_id for n in before.alive} if before is not None else set()
        joined = [n for n in now.alive if n.node_id not in old]
        left = cluster.lost_nodes(before, now)
        if joined:
            text = f"Ray node(s) joined: {cluster.describe(joined)}"
            log.info("cluster: %s", text)
            self._event("node_joined", reason=text)
        if left:
            log.warning("cluster: Ray node(s) left: %s", cluster.describe(left))

    def _check_engine_nodes(self, view: ClusterView) -> None:
        """A node the running engine was launched on is gone: degraded, stop the engine."""
        if self._launch_view is None or self._lost_reason is not None:
            return
        lost = cluster.lost_nodes(self._launch_view, view)
        if lost:
            self._node_lost(lost)

    def _node_lost(self, lost: list[cluster.NodeInfo]) -> None:
        self._cluster_broken(f"Ray node(s) left the cluster: {cluster.describe(lost)}", "node_lost")

    def _cluster_broken(self, text: str, event: str) -> None:
        """The engine lost part of its cluster: report degraded and stop it (relaunched once the
        cluster is whole again)."""
        self._lost_reason = f"{text}; the engine cannot run on part of its cluster"
        self._missing = text
        log.warning("%s: stopping the engine, relaunching it when the cluster is whole again", text)
        self._event(event, reason=text)
        if self.state is State.READY:
            self._enter(State.DEGRADED, text)
        self.message = f"degraded: {text}"
        self.notifier.status(self.message[:200])
        if self.engine is not None and self.engine.running:
            self._stopper = asyncio.get_running_loop().create_task(self.engine.stop(self.settings.stop_timeout_s))

    def _complete(self) -> bool:
        """Whole, as of a successful reading: a cluster that cannot be read is not complete."""
        return self.view_error is None and cluster.readiness(self.view, self.cluster_cfg.nodes, self.per_node).ready

    async def _fresh_view(self, after: float, timeout: float) -> None:
        """Wait (bounded) for a cluster reading taken after `after`."""
        deadline = time.monotonic() + timeout
        while (self.view_at is None or self.view_at < after) and time.monotonic() < deadline \
                and self._lost_reason is None:
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------ the launch loop
    def _give_up(self, reason: str) -> AttemptOutcome:
        if self.state is not State.FAILED:
            self._enter(State.FAILED, reason)
        self.message = f"failed: {reason}"
        log.error("giving up: %s", reason)
        self.notifier.status(self.message[:200])
        self._event("give_up", reason=reason)
        self.exit_code = EXIT_GAVE_UP
        return AttemptOutcome(None, None, False, requested="stop")

    async def _wait_for_cluster(self, degraded: bool) -> AttemptOutcome | None:
        """Until the cluster shows the expected GPUs: None to go on, or an outcome that ends the
        loop (a stop came in, or the cluster stayed short for `join_timeout_s`)."""
        cfg = self.cluster_cfg
        if self._complete():
            self._incomplete_since = None
            return None
        since = self._incomplete_since = self._incomplete_since or time.monotonic()
        if degraded and self.state is State.READY:
            self._enter(State.DEGRADED, "a Ray node is missing")
        degraded = self.state is State.DEGRADED  # lost during startup: still `starting`
        said = ""
        while True:
            r = cluster.readiness(self.view, cfg.nodes, self.per_node)
            if r.ready and self.view_error is None:
                self._incomplete_since = self._missing = None
                log.info("cluster: %s", r.reason)
                self._event("cluster_complete", reason=r.reason)
                return None
            if self.ray.failed:
                return self._give_up(f"the Ray head does not start: {self.ray.reason}")
            waited = time.monotonic() - since
            if waited > cfg.join_timeout_s:
                return self._give_up(f"the Ray cluster stayed short for {waited:.0f} s (cluster.join_timeout_s = "
                                     f"{cfg.join_timeout_s:g}): {r.reason}"
                                     + (f"; {self._missing}" if self._missing else "")
                                     + (f"; last error: {self.view_error}" if self.view_error else ""))
            text = ((f"degraded: {self._missing}; " if degraded and self._missing else "degraded: " if degraded else "")
                    + f"waiting for the Ray cluster at {cfg.ray_address}: {r.reason}"
                    + (f" (no reading: {self.view_error})" if self.view_error else ""))
            self.message = text
            if text != said:
                log.info("%s", text)
                self.notifier.status(text[:200])
                said = text
            if self.stop_requested:
                return AttemptOutcome(None, None, False, requested="stop")
            with contextlib.suppress(asyncio.QueueEmpty):
                name = self.commands.get_nowait()
                if name == "stop":
                    return AttemptOutcome(None, None, False, requested="stop")
                log.info("restart requested while waiting for the cluster: the engine starts once it is complete")
            await asyncio.sleep(0.5)

    @property
    def _lost(self) -> list[cluster.NodeInfo]:
        return cluster.lost_nodes(self._launch_view, self.view) if self._launch_view is not None else []

    async def _run_attempt(self) -> AttemptOutcome:
        waited = await self._wait_for_cluster(degraded=False)
        if waited is not None:
            return waited
        self._launch_view = self.view
        self._lost_reason = None
        try:
            outcome = await super()._run_attempt()
            if outcome.requested:
                return outcome
            if self._lost_reason is None:  # the engine went first: is a node gone?
                await self._fresh_view(time.time(), self.cluster_cfg.poll_interval_s * 3 + 2)
                lost = self._lost
                if lost and self._lost_reason is None:
                    self._node_lost(lost)
            if self._lost_reason is not None:
                outcome.failure = Failure(FailureKind.ENGINE_DEAD, self._lost_reason, {"node_lost": 1})
        finally:
            self._launch_view = None
        if outcome.failure is not None and not self._complete():
            waited = await self._wait_for_cluster(degraded=True)
            if waited is not None:
                return waited
        return outcome

    async def run(self) -> int:
        self.ray.start()
        self.probe.start()
        try:
            code = await super().run()
        finally:
            await self.probe.stop()
            await self.ray.stop()
        return EXIT_GAVE_UP if self.state is State.FAILED else code


# ---------------------------------------------------------------- a worker


class WorkerNode:
    """A worker host: `ray start --address … --block` under a guard, the REST API, systemd."""

    def __init__(self, settings: Settings, profile: Profile, plan: LaunchPlan, node_ip: str | None,
                 notifier: Notifier | None = None) -> None:
        cfg = profile.cluster
        assert cfg is not None
        self.settings = settings
        self.profile = profile
        self.plan = plan
        self.cfg = cfg
        self.node_ip = node_ip
        self.notifier = notifier or Notifier.from_env()
        self.per_node = cluster.gpus_per_node(profile)
        self.started_at = time.time()
        self.history: list[dict[str, Any]] = []
        self.gpus: list[dict[str, Any]] = []
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self.stop_requested = False
        self.inventory = hardware.inventory(plan.simulate, plan.sim_config) if plan.chosen else None
        self.ray = Supervised(
            "ray worker", cluster.ray_start_argv(cfg, "worker", self.per_node, node_ip),
            _ray_env(plan.env_for(plan.args), cfg, node_ip), placement=plan.placement.apply_args(),
            log_path=settings.logs / f"{profile.name}-ray-worker.log", log_max_bytes=settings.log_max_bytes,
            ready_marker=RAY_READY_MARKER, wait_for=(cfg.gcs_host, cfg.gcs_port),
            backoff=(cfg.restart_backoff_initial_s, cfg.restart_backoff_max_s),
            max_failures=profile.recovery.max_attempts, on_state=self._on_ray_state)

    @property
    def state(self) -> State:
        return {"waiting": State.STARTING, "starting": State.STARTING, "running": State.READY,
                "backoff": State.BACKOFF, "stopping": State.STOPPING, "failed": State.FAILED}.get(
                    self.ray.state, State.STOPPED)

    def _on_ray_state(self, state: str, reason: str) -> None:
        (log.warning if state in ("backoff", "failed") else log.info)("ray worker: %s", reason)
        self.history.append({"at": _iso(time.time()), "event": f"ray_{state}", "attempt": self.ray.starts,
                             "failure": None, "change": None, "reason": reason})
        del self.history[:-100]
        if state == "running":
            self.notifier.ready(f"joined the Ray cluster at {self.cfg.ray_address}")
        else:
            self.notifier.status(reason[:200])

    def status(self) -> dict[str, Any]:
        ray = self.ray
        now = time.time()
        return {
            "state": self.state.value, "ready": self.state is State.READY, "role": "worker",
            "profile": self.profile.name, "model": self.profile.model.id, "simulated": self.plan.simulate,
            "pid": ray.pid, "guard_pid": ray.to_json()["guard_pid"], "daemon_pid": os.getpid(),
            "uptime_s": round(now - ray.ready_at, 1) if ray.ready and ray.ready_at else 0.0,
            "daemon_uptime_s": round(now - self.started_at, 1), "argv": list(ray.argv),
            "attempt": ray.starts, "restarts": ray.restarts, "restarts_by_reason": {"ray_exit": ray.restarts},
            "gpus": self.gpus, "cpus": list(self.plan.placement.cpus),
            "placement": {**self.plan.placement.to_json(), "applied": ray.placement_applied},
            "message": ray.reason, "history": list(self.history[-50:]), "log_tail": list(ray.ring)[-20:],
            "cluster": {"head_address": self.cfg.ray_address, "node_ip": self.node_ip, "gpus": self.per_node,
                        "ray": ray.to_json()},
        }

    def command(self, name: str) -> None:
        enqueue_command(self.commands, name, stopping=self.stop_requested)

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGHUP:
            self.commands.put_nowait("restart")
        elif not self.stop_requested:
            self.stop_requested = True
            self.commands.put_nowait("stop")

    async def _poll_gpus(self) -> None:
        while True:
            if self.inventory is not None:
                with contextlib.suppress(Exception):
                    self.gpus = await asyncio.to_thread(hardware.gpu_memory, self.inventory)
            await asyncio.sleep(5.0)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval_s()
        while interval:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        token = self.settings.api_token.get_secret_value() if self.settings.api_token else None
        api = await start_api(create_app(self.status, self.command, token), self.settings.api_host,
                              self.settings.api_port)
        log.info("REST API on %s (status: %s/status)", self.settings.url, self.settings.url)
        background = [asyncio.create_task(self._poll_gpus()), asyncio.create_task(self._watchdog())]
        ray_task = self.ray.start()
        code = EXIT_OK
        try:
            while True:
                getter = asyncio.create_task(self.commands.get())
                done, _ = await asyncio.wait({getter, ray_task}, return_when=asyncio.FIRST_COMPLETED)
                if ray_task in done:
                    getter.cancel()
                    if self.ray.failed:
                        log.error("giving up: %s", self.ray.reason)
                        code = EXIT_GAVE_UP
                    break
                if getter.result() == "stop":
                    break
                log.info("restarting the Ray node (requested)")
                self.ray.restart()
        finally:
            self.stop_requested = True
            self.notifier.stopping("stopping")
            await self.ray.stop()
            for task in background:
                task.cancel()
            await stop_api(api)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return code


def run_worker(settings: Settings, profile: Profile, *, simulate: bool, ignore_hardware: bool,
               node_ip: str | None) -> int:
    with daemon_process(settings):
        plan = build_plan(settings, profile, simulate=simulate, ignore_hardware=ignore_hardware, for_launch=True)
        if simulate:
            log.warning("SIMULATED: Ray declares %d simulated GPU(s) on this host; no GPU is used",
                        cluster.gpus_per_node(profile))
        log_placement(plan.placement, "placement of the Ray node")
        for warning in plan.warnings + plan.placement.warnings:
            log.warning("plan: %s", warning)
        settings.logs.mkdir(parents=True, exist_ok=True)
        return asyncio.run(WorkerNode(settings, profile, plan, node_ip).run())


def resolve_role(profile: Profile, role: str | None, settings: Settings) -> Role:
    cfg = profile.cluster
    if cfg is None:
        raise BadInput("--role without a cluster", [
            f"--role {role}: profile {profile.name} has no cluster section (see docs/multinode.md)"])
    chosen = role or settings.role or cfg.role
    if chosen not in ("head", "worker"):
        raise BadInput("bad role", [f"--role {chosen}: must be head or worker"])
    return chosen  # type: ignore[return-value]


def run_node(settings: Settings, profile: Profile, *, role: str | None, simulate: bool,
             ignore_hardware: bool = False) -> int:
    """`supervisor up` for a profile with a cluster section: the head or a worker."""
    chosen = resolve_role(profile, role, settings)
    cfg = profile.cluster
    assert cfg is not None
    node_ip = cluster.resolve_node_ip(cfg)
    if cfg.interface and not node_ip:
        raise BadInput("no such interface", [
            f"cluster.interface {cfg.interface}: no interface of that name with an IP address on this host"])
    if chosen == "head":
        return run_daemon(settings, cluster.engine_profile(profile, node_ip), simulate=simulate,
                          ignore_hardware=ignore_hardware, daemon_class=HeadDaemon)
    return run_worker(settings, profile, simulate=simulate, ignore_hardware=ignore_hardware, node_ip=node_ip)
