"""Where the engine should run: the CPUs and NUMA memory local to its GPUs.

`plan_placement` is pure: topology (host/topology.py reads it) + GPUs + profile → `Placement`
(a CPU set, a memory policy, and why). Applying it happens in the engine's
process just before exec (see numa.py), so every thread and child inherits it.

Resolution of a GPU's node, best first: sysfs numa_node (if ≥0 and the node has CPUs), the
node NVML's memory affinity names that has CPUs, the node of the first CPU in NVML's CPU
affinity, else unknown. Pinning is for isolation and jitter; the gains in speed are small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_supervisor.errors import ProfileError
from llm_supervisor.host.gpus import Gpu
from llm_supervisor.cpulist import format_cpulist
from llm_supervisor.host.topology import Core, Topology
from llm_supervisor.config.profile import Affinity


# ---------------------------------------------------------------- the plan


@dataclass
class Placement:
    mode: str  # the profile's affinity.mode: auto | explicit | none
    pinned: bool  # whether the engine's CPUs are set (False: it runs on every allowed CPU)
    cpus: list[int]  # the CPUs the engine runs on (pinned set, or the allowed set when not pinned)
    nodes: list[int] = field(default_factory=list)  # the GPUs' NUMA nodes (memory policy target)
    memory_policy: str = "none"  # none | preferred | bind
    per_gpu: list[dict[str, Any]] = field(default_factory=list)  # {index, uuid, bus_id, node, source}
    layout: dict[str, Any] = field(default_factory=dict)  # suggested split per vLLM process (informational)
    applied: list[str] = field(default_factory=list)  # what applying it did (numa.apply_placement's result)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numa_balancing: int | None = None
    allowed_cpus: list[int] = field(default_factory=list)
    cpu_quota: float | None = None

    def apply_args(self) -> tuple[list[int] | None, list[int] | None, str]:
        """Arguments for numa.apply_placement in the child (None: leave that part alone)."""
        cpus = list(self.cpus) if self.pinned else None
        if self.memory_policy == "none" or not self.nodes:
            return cpus, None, "none"
        return cpus, list(self.nodes), self.memory_policy

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "pinned": self.pinned, "cpus": list(self.cpus), "cpulist": format_cpulist(self.cpus),
            "memory_policy": self.memory_policy, "nodes": list(self.nodes), "per_gpu": [dict(g) for g in self.per_gpu],
            "layout": dict(self.layout), "applied": list(self.applied), "warnings": list(self.warnings),
            "notes": list(self.notes), "numa_balancing": self.numa_balancing,
            "allowed_cpus": format_cpulist(self.allowed_cpus), "cpu_quota": self.cpu_quota,
        }


def resolve_gpu_node(gpu: Gpu, topo: Topology) -> dict[str, Any]:
    """The GPU's node and where that came from (sysfs, nvml-memory-affinity, nvml-cpu-affinity, unknown)."""
    entry: dict[str, Any] = {"index": gpu.index, "uuid": gpu.uuid, "bus_id": gpu.sysfs_bus_id, "node": None, "source": "unknown"}
    dev = topo.pci.get(gpu.sysfs_bus_id)
    if dev is not None:
        entry["sysfs_numa_node"] = dev.numa_node
    if dev is not None and dev.numa_node is not None and dev.numa_node >= 0 and topo.nodes.get(dev.numa_node):
        entry.update(node=dev.numa_node, source="sysfs")
        return entry
    for node in gpu.memory_nodes or []:
        if topo.nodes.get(node):
            entry.update(node=node, source="nvml-memory-affinity")
            return entry
    if gpu.cpu_affinity:
        node = topo.node_of(min(gpu.cpu_affinity))
        if node is not None:
            entry.update(node=node, source="nvml-cpu-affinity")
    return entry


def _flatten(cores: list[Core]) -> list[int]:
    return sorted(c for core in cores for c in core)


def _gpu_warnings(p: Placement, gpus: list[Gpu], topo: Topology) -> None:
    multi = len(topo.cpu_nodes()) > 1
    for gpu, entry in zip(gpus, p.per_gpu):
        if entry.get("sysfs_numa_node") == -1:
            msg = (f"GPU {gpu.index} ({gpu.sysfs_bus_id}): PCI numa_node is -1 (a VM or firmware without "
                   f"SRAT/_PXM); node from {entry['source']}")
            (p.warnings if multi else p.notes).append(msg)
        if gpu.numa_node is not None and not topo.nodes.get(gpu.numa_node):
            p.notes.append(f"GPU {gpu.index}'s memory is NUMA node {gpu.numa_node} (no CPUs); "
                           f"placing by its CPU-side node {entry['node']}")
        if entry["source"] == "sysfs" and gpu.cpu_affinity:
            nvml_node = topo.node_of(min(gpu.cpu_affinity))
            if nvml_node is not None and nvml_node != entry["node"] and multi:
                p.warnings.append(f"GPU {gpu.index}: sysfs says node {entry['node']} but NVML's CPU affinity "
                                  f"starts on node {nvml_node}; using sysfs")


def plan_placement(
    affinity_cfg: Affinity,
    gpus: list[Gpu],
    topo: Topology,
    tensor_parallel: int = 1,
    data_parallel: int = 1,
    pipeline_parallel: int = 1,
) -> Placement:
    """The CPU set and memory policy for the engine's whole process tree (affinity.md §6)."""
    allowed = topo.allowed
    workers = max(1, tensor_parallel * pipeline_parallel * data_parallel)
    used = list(gpus[:workers])
    p = Placement(mode=affinity_cfg.mode, pinned=False, cpus=list(allowed), numa_balancing=topo.numa_balancing,
                  allowed_cpus=list(allowed), cpu_quota=topo.cpu_quota)
    p.per_gpu = [resolve_gpu_node(g, topo) for g in used]
    _gpu_warnings(p, used, topo)
    if affinity_cfg.mode == "none":
        p.notes.append("affinity mode none: the engine runs on every allowed CPU, no memory policy")
    elif affinity_cfg.mode == "explicit":
        _explicit(p, affinity_cfg, topo)
    else:
        _auto(p, affinity_cfg, topo, workers, data_parallel, tensor_parallel)
    if topo.cpu_quota is not None:
        p.warnings.append(f"cgroup CPU quota is {topo.cpu_quota:g} CPUs (cpu.max): affinity cannot give the engine "
                          f"more than that, whatever the CPU set ({len(p.cpus)} CPUs)")
    if p.memory_policy != "none" and topo.numa_balancing == 1:
        p.warnings.append("kernel.numa_balancing is 1: it migrates pages of bound work; the kernel docs advise "
                          "0 for NUMA-bound workloads (sysctl kernel.numa_balancing=0, host-wide, as root)")
    return p


def _policy_nodes(p: Placement, policy: str, nodes: list[int], topo: Topology, explicit: bool) -> None:
    """Set the memory policy, never naming a node outside Mems_allowed."""
    p.nodes = sorted(nodes)
    if policy == "none" or not nodes:
        p.memory_policy = "none"
        return
    outside = [n for n in nodes if topo.mems_allowed is not None and n not in topo.mems_allowed]
    if outside:
        allowed = format_cpulist(topo.mems_allowed or [])
        if explicit:
            raise ProfileError("affinity", [f"affinity.numa_nodes: node(s) {format_cpulist(outside)} are outside "
                                            f"this process's Mems_allowed (allowed nodes: {allowed or 'none'})"])
        p.memory_policy = "none"
        p.warnings.append(f"node(s) {format_cpulist(outside)} are outside Mems_allowed ({allowed}): no memory policy")
        return
    p.memory_policy = policy
    if policy == "bind":
        sizes = [f"node {n}: {topo.node_mem_kib[n] / 1024 / 1024:.0f} GiB" for n in nodes if n in topo.node_mem_kib]
        p.notes.append("memory bind is strict: when the node's RAM is full, allocations fail instead of spilling"
                       + (f" ({', '.join(sizes)})" if sizes else ""))


def _explicit(p: Placement, cfg: Affinity, topo: Topology) -> None:
    allowed = set(p.allowed_cpus)
    if cfg.numa_nodes:
        missing = [n for n in cfg.numa_nodes if n not in topo.nodes]
        if missing:
            raise ProfileError("affinity", [f"affinity.numa_nodes: no node {format_cpulist(missing)} on this host "
                                            f"(nodes: {format_cpulist(sorted(topo.nodes))})"])
    base = list(cfg.cpus) if cfg.cpus else sorted({c for n in cfg.numa_nodes or [] for c in topo.nodes[n]})
    cpus = sorted(set(base) & allowed)
    key = "affinity.cpus" if cfg.cpus else "affinity.numa_nodes"
    if not cpus:
        raise ProfileError("affinity", [f"{key}: none of CPUs {format_cpulist(base) or 'none'} may be used here "
                                        f"(allowed CPUs: {format_cpulist(p.allowed_cpus)})"])
    dropped = sorted(set(base) - allowed)
    if dropped:
        p.warnings.append(f"{key}: CPUs {format_cpulist(dropped)} are outside the allowed set "
                          f"{format_cpulist(p.allowed_cpus)}; left out")
    if not cfg.smt:
        cpus = [core[0] for core in topo.cores(cpus)]
    p.cpus, p.pinned = cpus, True
    if cfg.numa_nodes:
        _policy_nodes(p, cfg.memory_policy, list(cfg.numa_nodes), topo, explicit=True)
        return
    nodes = sorted({n for n in (topo.node_of(c) for c in cpus) if n is not None})
    if len(nodes) == 1:
        _policy_nodes(p, cfg.memory_policy, nodes, topo, explicit=False)
    else:
        p.nodes = nodes
        if cfg.memory_policy != "none" and len(nodes) > 1:
            p.notes.append(f"the CPUs span nodes {format_cpulist(nodes)}: no memory policy (set affinity.numa_nodes to choose)")


def _auto(p: Placement, cfg: Affinity, topo: Topology, workers: int, dp: int, tp: int) -> None:
    allowed_cores = topo.cores(p.allowed_cpus)
    # API server + EngineCore per DP rank + one per GPU worker (+ the DP coordinator): affinity.md §4.
    need = 1 + dp + workers + (1 if dp > 1 else 0)
    reserve = cfg.reserve_cores
    if len(allowed_cores) < need + reserve:
        p.warnings.append(
            f"only {len(allowed_cores)} physical cores are allowed ({format_cpulist(p.allowed_cpus)}); vLLM with "
            f"{workers} GPU worker(s) wants {need} plus {reserve} reserved: not pinning")
        return
    cpu_nodes = topo.cpu_nodes()
    known = sorted({e["node"] for e in p.per_gpu if e["node"] is not None})
    unknown = [e["index"] for e in p.per_gpu if e["node"] is None]
    if len(cpu_nodes) <= 1 or not known:
        chosen_nodes = cpu_nodes
        policy = "none"
        if len(cpu_nodes) <= 1:
            p.notes.append("one NUMA node with CPUs: pinning CPUs only; no memory policy is needed")
        else:
            p.notes.append("the GPUs' NUMA nodes are unknown: pinning CPUs only, no memory policy")
    else:
        chosen_nodes = known
        policy = cfg.memory_policy if len(known) == 1 else "none"
        if unknown:
            p.warnings.append(f"GPU(s) {', '.join(map(str, unknown))}: NUMA node unknown; placing by the others")
        if len(known) > 1:
            p.notes.append(
                f"the GPUs span nodes {format_cpulist(known)}: pinned to the union with no memory policy "
                "(first touch keeps memory mostly local); tensor-parallel all-reduce crosses sockets")
            size = max(1, len(p.per_gpu) // dp)
            if dp > 1 and all(len({e["node"] for e in p.per_gpu[r * size:(r + 1) * size]}) == 1 for r in range(dp)):
                p.notes.append("each data-parallel replica's GPUs sit on one node; binding each replica to its own "
                               "node needs vLLM's --numa-bind (the supervisor pins the tree as a whole)")
            elif dp == 1 and tp % len(known) == 0 and tp > 1:
                p.notes.append(f"tensor_parallel_size={tp // len(known)} × data_parallel_size={len(known)} keeps each "
                               "replica socket-local, if the model fits (--set vllm.tensor_parallel_size="
                               f"{tp // len(known)} --set vllm.data_parallel_size={len(known)})")
    on_nodes = [c for c in allowed_cores if topo.node_of(c[0]) in chosen_nodes]
    outside = [c for c in allowed_cores if c not in on_nodes]
    # The OS, IRQs and this daemon need `reserve` cores of their own: cores on other nodes count;
    # the rest come from ours, CPU 0's core first (it takes most IRQs and housekeeping).
    carve = max(0, reserve - len(outside))
    if reserve and not carve and any(0 in c for c in on_nodes) and len(on_nodes) > need:
        carve = 1  # keep off CPU 0 while the GPUs' nodes have cores to spare
    ordered = sorted(on_nodes, key=lambda c: (0 not in c, c))
    reserved, cores = ordered[:carve], sorted(ordered[carve:])
    if len(cores) < need:
        borrow = outside[: need - len(cores)]
        p.warnings.append(
            f"only {len(cores)} allowed core(s) on node(s) {format_cpulist(chosen_nodes)} for {need} needed: "
            f"adding CPUs {format_cpulist(_flatten(borrow))} from other nodes (cgroup shortfall)")
        cores = sorted(cores + borrow)
    for core in cores:
        left_out = sorted(set(topo.siblings.get(core[0], core)) - set(core))
        if left_out:
            p.warnings.append(f"CPU {format_cpulist(list(core))} shares its core with CPU {format_cpulist(left_out)}, "
                              "which this process may not use (another workload may run there)")
    p.cpus = [core[0] for core in cores] if not cfg.smt else _flatten(cores)
    if not cfg.smt:
        p.notes.append(f"smt off: one thread per core ({len(p.cpus)} CPUs)")
    p.pinned = True
    _policy_nodes(p, policy, chosen_nodes, topo, explicit=False)
    p.layout = _layout(cores, reserved, p.per_gpu, topo, dp, cfg.smt)


def _layout(cores: list[Core], reserved: list[Core], per_gpu: list[dict[str, Any]], topo: Topology,
            dp: int, smt: bool) -> dict[str, Any]:
    """One core per worker on its GPU's node, one per EngineCore, the rest to the API server.
    Informational: the tree is pinned as a whole at its root; vLLM's --numa-bind can split it."""
    pools: dict[int | None, list[Core]] = {}
    for core in cores:
        pools.setdefault(topo.node_of(core[0]), []).append(core)
    known = [e["node"] for e in per_gpu if e["node"] is not None]
    primary = known[0] if known else next(iter(pools), None)

    def take(node: int | None) -> Core | None:
        pool = pools.get(node) or max(pools.values(), key=len, default=[])
        return pool.pop() if pool else None

    def show(core: Core | None) -> str:
        return format_cpulist(list(core if smt else core[:1])) if core else ""

    def node(entry: dict[str, Any] | None) -> int | None:
        return entry["node"] if entry and entry["node"] is not None else primary

    workers = [{"gpu": e["index"], "cpus": show(take(node(e)))} for e in per_gpu]
    per_rank = max(1, len(per_gpu) // dp)  # each DP rank's EngineCore sits with its first GPU
    engines = [show(take(node(per_gpu[r * per_rank] if r * per_rank < len(per_gpu) else None))) for r in range(dp)]
    frontend = _flatten([c if smt else c[:1] for pool in pools.values() for c in pool])
    return {"frontend": format_cpulist(frontend), "engine_core": engines, "workers": workers,
            "reserved": format_cpulist(_flatten(reserved))}
