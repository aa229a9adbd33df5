"""`supervisor up` for a profile with a cluster section: this host's role (head or worker) and the
daemon that plays it (cluster/head.py, cluster/worker.py).
"""

from __future__ import annotations

import logging

from llm_supervisor.cluster.head import HeadDaemon
from llm_supervisor.cluster.spec import engine_profile, gpus_per_node, resolve_node_ip
from llm_supervisor.cluster.worker import WorkerNode
from llm_supervisor.config.cluster import Role
from llm_supervisor.config.profile import Profile
from llm_supervisor.config.settings import Settings
from llm_supervisor.errors import BadInput
from llm_supervisor.planning.launch import build_plan
from llm_supervisor.runtime.daemon import run_daemon
from llm_supervisor.runtime.service import daemon_process, log_placement, run_daemon_loop

log = logging.getLogger("llm_supervisor")


def run_worker(settings: Settings, profile: Profile, *, simulate: bool, ignore_hardware: bool,
               node_ip: str | None) -> int:
    with daemon_process(settings):
        plan = build_plan(settings, profile, simulate=simulate, ignore_hardware=ignore_hardware, for_launch=True)
        if simulate:
            log.warning("SIMULATED: Ray declares %d simulated GPU(s) on this host; no GPU is used",
                        gpus_per_node(profile))
        log_placement(plan.placement, "placement of the Ray node")
        for warning in plan.warnings + plan.placement.warnings:
            log.warning("plan: %s", warning)
        settings.logs.mkdir(parents=True, exist_ok=True)
        return run_daemon_loop(WorkerNode(settings, profile, plan, node_ip).run)


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
    node_ip = resolve_node_ip(cfg)
    if cfg.interface and not node_ip:
        raise BadInput("no such interface", [
            f"cluster.interface {cfg.interface}: no interface of that name with an IP address on this host"])
    if chosen == "head":
        return run_daemon(settings, engine_profile(profile, node_ip), simulate=simulate,
                          ignore_hardware=ignore_hardware, daemon_class=HeadDaemon)
    return run_worker(settings, profile, simulate=simulate, ignore_hardware=ignore_hardware, node_ip=node_ip)
