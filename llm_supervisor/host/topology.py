"""This machine's CPU and memory topology, read from sysfs and procfs under a root folder (so
tests build fake trees in a temporary folder): NUMA nodes and their CPUs, SMT siblings, the CPUs
and memory nodes this process may use, PCI devices' NUMA nodes, cgroup limits, and the kernel's
NUMA balancing. The only I/O of placement; `placement.plan_placement` is pure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from llm_supervisor.cpulist import parse_cpulist

Core = tuple[int, ...]


@dataclass
class PciDevice:
    numa_node: int | None  # -1: the kernel does not know (VMs, firmware without SRAT/_PXM)
    local_cpus: list[int] | None


@dataclass
class Topology:
    nodes: dict[int, list[int]]  # node → its CPUs ([] for a memory-only node such as GB200 HBM)
    siblings: dict[int, list[int]] = field(default_factory=dict)  # CPU → the CPUs of its physical core
    allowed_cpus: list[int] = field(default_factory=list)  # Cpus_allowed_list ∩ sched_getaffinity
    mems_allowed: list[int] | None = None
    pci: dict[str, PciDevice] = field(default_factory=dict)  # sysfs bus id → device
    node_mem_kib: dict[int, int] = field(default_factory=dict)
    cgroup_version: int | None = None
    cgroup_cpus: list[int] | None = None  # the cpuset's effective CPUs
    cpu_quota: float | None = None  # cpu.max (or cfs quota) in CPUs' worth, the tightest up the tree
    numa_balancing: int | None = None

    @property
    def allowed(self) -> list[int]:
        """CPUs this process may run on: affinity, cut by the cgroup cpuset when known."""
        if self.cgroup_cpus is None:
            return list(self.allowed_cpus)
        return sorted(set(self.allowed_cpus) & set(self.cgroup_cpus))

    def cpu_nodes(self) -> list[int]:
        """Nodes that have CPUs."""
        return sorted(n for n, cpus in self.nodes.items() if cpus)

    def node_of(self, cpu: int) -> int | None:
        for node, cpus in self.nodes.items():
            if cpu in cpus:
                return node
        return None

    def cores(self, cpus: list[int]) -> list[Core]:
        """Group CPUs into physical cores (siblings as the kernel lists them; never computed)."""
        wanted = set(cpus)
        seen: set[int] = set()
        out: list[Core] = []
        for cpu in sorted(wanted):
            if cpu in seen:
                continue
            core = tuple(sorted(c for c in self.siblings.get(cpu, [cpu]) if c in wanted) or [cpu])
            seen.update(core)
            out.append(core)
        return out

    @classmethod
    def read(cls, root: Path = Path("/"), pid: int | str = "self", bus_ids: list[str] | None = None) -> "Topology":
        """Read the host (or a fake tree under `root`). `bus_ids` limits the PCI devices read."""
        root = Path(root)
        sys_cpu = root / "sys/devices/system/cpu"
        online = _cpulist(sys_cpu / "online")
        nodes: dict[int, list[int]] = {}
        node_mem: dict[int, int] = {}
        node_dir = root / "sys/devices/system/node"
        for entry in _listdir(node_dir):
            m = re.fullmatch(r"node(\d+)", entry)
            if not m:
                continue
            node = int(m.group(1))
            nodes[node] = _cpulist(node_dir / entry / "cpulist") or []
            mem = _read(node_dir / entry / "meminfo")
            if mem:
                mm = re.search(r"MemTotal:\s+(\d+)\s*kB", mem)
                if mm:
                    node_mem[node] = int(mm.group(1))
        siblings: dict[int, list[int]] = {}
        for entry in _listdir(sys_cpu):
            m = re.fullmatch(r"cpu(\d+)", entry)
            if not m:
                continue
            topo = sys_cpu / entry / "topology"
            sib = _cpulist(topo / "core_cpus_list") or _cpulist(topo / "thread_siblings_list")
            if sib:
                siblings[int(m.group(1))] = sib
        all_cpus = online or sorted(siblings) or sorted({c for cpus in nodes.values() for c in cpus})
        if not nodes:  # a kernel without NUMA: one node with every CPU
            nodes = {0: list(all_cpus)}

        proc = root / "proc" / str(pid)
        status = _read(proc / "status") or ""
        allowed = _status_list(status, "Cpus_allowed_list")
        if allowed is None:
            allowed = list(all_cpus)
        if root == Path("/") and str(pid) in ("self", str(os.getpid())):
            live = os.sched_getaffinity(0)
            allowed = sorted(set(allowed) & live) if allowed else sorted(live)
        mems = _status_list(status, "Mems_allowed_list")

        pci: dict[str, PciDevice] = {}
        pci_dir = root / "sys/bus/pci/devices"
        for bus_id in (bus_ids if bus_ids is not None else _listdir(pci_dir)):
            dev = pci_dir / bus_id
            numa = _read(dev / "numa_node")
            local = _cpulist(dev / "local_cpulist")
            if numa is None and local is None:
                continue
            pci[bus_id] = PciDevice(numa_node=_int(numa), local_cpus=local)

        version, cg_cpus, quota = _read_cgroup(root, _read(proc / "cgroup") or "")
        return cls(
            nodes=nodes, siblings=siblings, allowed_cpus=allowed, mems_allowed=mems, pci=pci,
            node_mem_kib=node_mem, cgroup_version=version, cgroup_cpus=cg_cpus, cpu_quota=quota,
            numa_balancing=_int(_read(root / "proc/sys/kernel/numa_balancing")),
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _cpulist(path: Path) -> list[int] | None:
    """A kernel list file; None when missing or unreadable, [] when empty."""
    text = _read(path)
    if text is None:
        return None
    try:
        return parse_cpulist(text.strip())
    except ValueError:
        return None


def _status_list(status: str, key: str) -> list[int] | None:
    m = re.search(rf"^{key}:\s*(\S*)\s*$", status, re.MULTILINE)
    if not m:
        return None
    try:
        return parse_cpulist(m.group(1))
    except ValueError:
        return None


def _cgroup_dirs(base: Path, rel: str) -> list[Path]:
    """The process's cgroup folder and its ancestors up to the mount root (leaf first). Inside a
    container the path from /proc may not exist under the mount: then the mount root alone."""
    rel = rel.strip().lstrip("/")
    leaf = base / rel if rel else base
    if not leaf.is_dir():
        return [base]
    dirs = [leaf]
    while dirs[-1] != base:
        dirs.append(dirs[-1].parent)
    return dirs


def _read_cgroup(root: Path, cgroup_text: str) -> tuple[int | None, list[int] | None, float | None]:
    """(version, cpuset CPUs, quota in CPUs) from cgroup v2, else v1."""
    fs = root / "sys/fs/cgroup"
    v1: dict[str, str] = {}
    v2_path: str | None = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2_path = path
        for ctrl in controllers.split(","):
            if ctrl:
                v1[ctrl] = path
    if v2_path is not None and (fs / "cgroup.controllers").is_file():
        dirs = _cgroup_dirs(fs, v2_path)
        cpus = next((c for c in (_cpulist(d / "cpuset.cpus.effective") for d in dirs) if c), None)
        quotas = []
        for d in dirs:
            text = (_read(d / "cpu.max") or "").split()
            if len(text) == 2 and text[0] != "max":
                try:
                    quotas.append(int(text[0]) / int(text[1]))
                except (ValueError, ZeroDivisionError):
                    pass
        return 2, cpus, min(quotas) if quotas else None
    if not v1:
        return None, None, None
    cpus = None
    if "cpuset" in v1:
        for d in _cgroup_dirs(fs / "cpuset", v1["cpuset"]):
            cpus = _cpulist(d / "cpuset.effective_cpus") or _cpulist(d / "cpuset.cpus")
            if cpus:
                break
    quotas = []
    if "cpu" in v1:
        for mount in ("cpu,cpuacct", "cpu"):
            if not (fs / mount).is_dir():
                continue
            for d in _cgroup_dirs(fs / mount, v1["cpu"]):
                q, period = _int(_read(d / "cpu.cfs_quota_us")), _int(_read(d / "cpu.cfs_period_us"))
                if q is not None and q > 0 and period:
                    quotas.append(q / period)
            break
    return 1, cpus, min(quotas) if quotas else None
