"""A worker host of a multi-node vLLM deployment on Ray (`supervisor up --role worker`): `ray start
--address HEAD --block` under a guard (cluster/process.py) with the host's CPU/NUMA placement, so
Ray's raylet and every Ray worker process are its descendants and die with the daemon. When
`ray start` exits (the head went away, the node crashed), it waits until the head's GCS port
answers again and rejoins, with backoff. The worker serves the same REST API (state `ready` once
joined) and speaks sd_notify.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any

from llm_supervisor.cluster.process import ProcessLoop
from llm_supervisor.cluster.spec import RAY_READY_MARKER, gpus_per_node, ray_env, ray_start_argv
from llm_supervisor.config.profile import Profile
from llm_supervisor.config.settings import Settings
from llm_supervisor.errors import EXIT_GAVE_UP, EXIT_OK
from llm_supervisor.host import gpus as hardware
from llm_supervisor.planning.launch import LaunchPlan
from llm_supervisor.clock import Clock, SystemClock, iso
from llm_supervisor.runtime.commands import Command
from llm_supervisor.runtime.launcher import Launcher
from llm_supervisor.runtime.notify import Notifier
from llm_supervisor.runtime.service import keep_watchdog, poll_gpus, served
from llm_supervisor.states import State

log = logging.getLogger("llm_supervisor")

GPU_POLL_S = 5.0



class WorkerNode:
    """A worker host: `ray start --address … --block` under a guard, the REST API, systemd."""

    def __init__(self, settings: Settings, profile: Profile, plan: LaunchPlan, node_ip: str | None,
                 notifier: Notifier | None = None, *, clock: Clock | None = None,
                 launcher: Launcher | None = None) -> None:
        cfg = profile.cluster
        assert cfg is not None
        self.settings = settings
        self.profile = profile
        self.plan = plan
        self.cfg = cfg
        self.node_ip = node_ip
        self.notifier = notifier or Notifier.from_env()
        self.per_node = gpus_per_node(profile)
        self.started_at = time.time()
        self.history: list[dict[str, Any]] = []
        self.gpus: list[dict[str, Any]] = []
        self.clock = clock or SystemClock()
        self.inventory = hardware.inventory(plan.simulate, plan.sim_config) if plan.chosen else None
        self.ray = ProcessLoop(
            "ray worker", ray_start_argv(cfg, "worker", self.per_node, node_ip),
            ray_env(plan.env_for(plan.args), cfg, node_ip), placement=plan.placement.apply_args(),
            log_path=settings.logs / f"{profile.name}-ray-worker.log", log_max_bytes=settings.log_max_bytes,
            ready_marker=RAY_READY_MARKER, wait_for=(cfg.gcs_host, cfg.gcs_port),
            backoff=(cfg.restart_backoff_initial_s, cfg.restart_backoff_max_s),
            max_failures=profile.recovery.max_attempts, on_state=self._on_ray_state, clock=self.clock,
            launcher=launcher)

    @property
    def state(self) -> State:
        return self.ray.state

    def _on_ray_state(self, state: State, reason: str) -> None:
        (log.warning if state in (State.BACKOFF, State.FAILED) else log.info)("ray worker: %s", reason)
        self.history.append({"at": iso(time.time(), "seconds"), "event": f"ray_{state.value}", "attempt": self.ray.starts,
                             "failure": None, "change": None, "reason": reason})
        del self.history[:-100]
        if state is State.READY:
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
        """The REST API's admin actions go straight to the Ray loop's inbox."""
        self.ray.inbox.submit(name)

    def _on_signal(self, sig: signal.Signals) -> None:
        """SIGHUP restarts Ray; SIGTERM/SIGINT stop it, and a second one ends it now."""
        if sig == signal.SIGHUP:
            self.ray.inbox.put(Command.RESTART)
            return
        self.ray.stop_signal(sig, "Ray", self.ray.stop_timeout, self.ray.pid is not None, self.ray.hurry)

    def _publish_gpus(self, gpus: list[dict[str, Any]]) -> None:
        self.gpus = gpus

    async def run(self) -> int:
        async with served(self.settings, self.status, self.command, self._on_signal):
            background = [asyncio.create_task(poll_gpus(self.inventory, self.clock, GPU_POLL_S, self._publish_gpus)),
                          asyncio.create_task(keep_watchdog(self.notifier, self.clock))]
            try:
                await self.ray.start()
            finally:
                self.notifier.stopping("stopping")
                await self.ray.stop()
                for task in background:
                    task.cancel()
        if self.ray.failed:
            log.error("giving up: %s", self.ray.reason)
            return EXIT_GAVE_UP
        return EXIT_OK
