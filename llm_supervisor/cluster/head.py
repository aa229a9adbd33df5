"""The head of a multi-node vLLM deployment on Ray: the single-host Daemon, plus `ray start --head
--block` and a small probe process (cluster/probe.py) that reads the cluster from Ray's GCS, both
under guards (cluster/process.py). Before each launch it waits until the cluster shows the expected
GPUs; then it launches `vllm serve … --distributed-executor-backend ray` (RAY_ADDRESS set) and
supervises it as on one host (facts, readiness, recovery). When a node the engine runs on leaves
the cluster it reports `degraded`, stops the engine (a pipeline missing a stage cannot serve, and
vLLM does not always notice an idle dead actor), waits for the node to come back and relaunches;
after `cluster.join_timeout_s` without it, it fails with the reason. `/status` gains `nodes` (every
Ray node: address, GPUs, state) and `cluster`.

Stopping: the engine first (its Ray driver leaves, Ray ends its actors), then the probe, then
Ray itself; each is a guarded tree, so nothing survives the daemon, even a SIGKILLed one.
`ray stop` is never used: it would end every Ray process of the user on the host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from typing import Any

from llm_supervisor.cluster.process import ProcessLoop
from llm_supervisor.cluster.spec import ENGINE_ONLY_ENV, RAY_READY_MARKER, gpus_per_node, ray_env, ray_start_argv, resolve_node_ip
from llm_supervisor.cluster.view import ClusterView, NodeInfo, describe, lost_nodes, readiness, view_from_json
from llm_supervisor.config.profile import Profile
from llm_supervisor.config.settings import Settings
from llm_supervisor.errors import EXIT_GAVE_UP, BadInput
from llm_supervisor.planning.launch import LaunchPlan
from llm_supervisor.clock import iso
from llm_supervisor.runtime.commands import Command
from llm_supervisor.runtime.daemon import Daemon
from llm_supervisor.states import State
from llm_supervisor.runtime.supervision import Outcome
from llm_supervisor.vllm.failures import Failure, FailureKind

log = logging.getLogger("llm_supervisor")




def dedupe_nodes(view: ClusterView | None) -> list[dict[str, Any]]:
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


class HeadDaemon(Daemon):
    """The single-host Daemon plus the Ray head, the cluster probe and node-loss handling."""

    def __init__(self, settings: Settings, profile: Profile, plan: LaunchPlan, **kwargs: Any) -> None:
        super().__init__(settings, profile, plan, **kwargs)
        cfg = profile.cluster
        if cfg is None:
            raise BadInput("no cluster section", [f"profile {profile.name}: the head needs a cluster section"])
        self.cluster_cfg = cfg
        self.per_node = gpus_per_node(profile)
        self.node_ip = resolve_node_ip(cfg)
        base = plan.env_for(plan.args)
        self.ray = ProcessLoop(
            "ray head", ray_start_argv(cfg, "head", self.per_node, self.node_ip),
            ray_env(base, cfg, self.node_ip), placement=plan.placement.apply_args(),
            log_path=settings.logs / f"{profile.name}-ray-head.log", log_max_bytes=settings.log_max_bytes,
            ready_marker=RAY_READY_MARKER, max_failures=profile.recovery.max_attempts,
            backoff=(cfg.restart_backoff_initial_s, cfg.restart_backoff_max_s), on_state=self._on_ray_state)
        probe_env = {k: v for k, v in base.items() if k not in ENGINE_ONLY_ENV}
        probe_env["LLM_SUPERVISOR_RAY_COMMAND"] = cfg.ray_command
        self.probe = ProcessLoop(
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
        r = readiness(self.view, cfg.nodes, self.per_node)
        out["role"] = "head"
        out["nodes"] = dedupe_nodes(self.view)
        out["cluster"] = {
            "head_address": cfg.ray_address, "node_ip": self.node_ip, "nodes_expected": cfg.nodes,
            "gpus_per_node": self.per_node, "gpus_expected": cfg.nodes * self.per_node,
            "gpu_nodes_alive": r.gpu_nodes, "gpus_alive": r.gpus, "complete": r.ready, "summary": r.reason,
            "read_at": iso(self.view_at, "seconds") if self.view_at else None, "read_error": self.view_error,
            "ray": self.ray.to_json(),
        }
        return out

    # ------------------------------------------------------------ Ray head and probe
    def _on_signal(self, sig: signal.Signals) -> None:
        """As the daemon's; a second stop signal also ends the Ray head and the probe at once."""
        super()._on_signal(sig)
        if self.hurried:
            self.ray.hurry()
            self.probe.hurry()

    def _on_ray_state(self, state: State, reason: str) -> None:
        if state in (State.READY, State.BACKOFF, State.FAILED):
            (log.warning if state is not State.READY else log.info)("ray head: %s", reason)
            self._event(f"ray_{state.value}", reason=reason)
        if state in (State.BACKOFF, State.FAILED) and self._launch_view is not None and self._lost_reason is None:
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
        view = view_from_json(data)
        if view is None:
            return
        self.view_error = None
        before = self.view
        self.view, self.view_at = view, self.clock.time()
        self._log_changes(before, view)
        self._check_engine_nodes(view)

    def _log_changes(self, before: ClusterView | None, now: ClusterView) -> None:
        old = {n.node_id for n in before.alive} if before is not None else set()
        joined = [n for n in now.alive if n.node_id not in old]
        left = lost_nodes(before, now)
        if joined:
            text = f"Ray node(s) joined: {describe(joined)}"
            log.info("cluster: %s", text)
            self._event("node_joined", reason=text)
        if left:
            log.warning("cluster: Ray node(s) left: %s", describe(left))

    def _check_engine_nodes(self, view: ClusterView) -> None:
        """A node the running engine was launched on is gone: degraded, stop the engine."""
        if self._launch_view is None or self._lost_reason is not None:
            return
        lost = lost_nodes(self._launch_view, view)
        if lost:
            self._node_lost(lost)

    def _node_lost(self, lost: list[NodeInfo]) -> None:
        self._cluster_broken(f"Ray node(s) left the cluster: {describe(lost)}", "node_lost")

    def _cluster_broken(self, text: str, event: str) -> None:
        """The engine lost part of its cluster: report degraded and stop it (relaunched once the
        cluster is whole again)."""
        self._lost_reason = f"{text}; the engine cannot run on part of its cluster"
        self._missing = text
        log.warning("%s: stopping the engine, relaunching it when the cluster is whole again", text)
        self._event(event, reason=text)
        if self.state is State.READY:
            self.enter(State.DEGRADED, text)
        self.message = f"degraded: {text}"
        self.notifier.status(self.message[:200])
        if self.engine is not None and self.engine.running:
            self._stopper = asyncio.get_running_loop().create_task(self.engine.stop(self.settings.stop_timeout_s))

    def _complete(self) -> bool:
        """Whole, as of a successful reading: a cluster that cannot be read is not complete."""
        return self.view_error is None and readiness(self.view, self.cluster_cfg.nodes, self.per_node).ready

    async def _fresh_view(self, after: float, timeout: float) -> None:
        """Wait (bounded) for a cluster reading taken after `after`."""
        deadline = self.clock.monotonic() + timeout
        while (self.view_at is None or self.view_at < after) and self.clock.monotonic() < deadline \
                and self._lost_reason is None:
            await self.clock.sleep(0.2)

    # ------------------------------------------------------------ the launch loop
    def _give_up(self, reason: str) -> Outcome:
        if self.state is not State.FAILED:
            self.enter(State.FAILED, reason)
        self.message = f"failed: {reason}"
        log.error("giving up: %s", reason)
        self.notifier.status(self.message[:200])
        self._event("give_up", reason=reason)
        self.exit_code = EXIT_GAVE_UP
        return Outcome(None, None, False, Command.STOP)

    async def _wait_for_cluster(self, degraded: bool) -> Outcome | None:
        """Until the cluster shows the expected GPUs: None to go on, or an outcome that ends the
        loop (a stop came in, or the cluster stayed short for `join_timeout_s`)."""
        cfg = self.cluster_cfg
        if self._complete():
            self._incomplete_since = None
            return None
        since = self._incomplete_since = self._incomplete_since or self.clock.monotonic()
        if degraded and self.state is State.READY:
            self.enter(State.DEGRADED, "a Ray node is missing")
        degraded = self.state is State.DEGRADED  # lost during startup: still `starting`
        said = ""
        while True:
            r = readiness(self.view, cfg.nodes, self.per_node)
            if r.ready and self.view_error is None:
                self._incomplete_since = self._missing = None
                log.info("cluster: %s", r.reason)
                self._event("cluster_complete", reason=r.reason)
                return None
            if self.ray.failed:
                return self._give_up(f"the Ray head does not start: {self.ray.reason}")
            waited = self.clock.monotonic() - since
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
            command = self.take_command()
            if self.stop_requested or command is Command.STOP:
                return Outcome(None, None, False, Command.STOP)
            if command is not None:
                log.info("restart requested while waiting for the cluster: the engine starts once it is complete")
            await self.clock.sleep(0.5)

    @property
    def _lost(self) -> list[NodeInfo]:
        return lost_nodes(self._launch_view, self.view) if self._launch_view is not None else []

    async def run_attempt(self) -> Outcome:
        waited = await self._wait_for_cluster(degraded=False)
        if waited is not None:
            return waited
        self._launch_view = self.view
        self._lost_reason = None
        try:
            outcome = await super().run_attempt()
            if outcome.requested:
                return outcome
            if self._lost_reason is None:  # the engine went first: is a node gone?
                await self._fresh_view(self.clock.time(), self.cluster_cfg.poll_interval_s * 3 + 2)
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
