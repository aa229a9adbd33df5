"""Placement on fake sysfs/procfs trees: desktops, a 2-socket 8×A10 server, a VM, a cgroup-limited
container, a GB200-style host with memory-only nodes, and the real machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_supervisor.host.placement import plan_placement, resolve_gpu_node
from llm_supervisor.host.topology import Topology
from llm_supervisor.errors import BadInput
from llm_supervisor.host.gpus import Gpu
from llm_supervisor.cpulist import format_cpulist
from llm_supervisor.config.profile import Affinity
from llm_supervisor.cpulist import parse_cpulist


def rng(text: str) -> list[int]:
    return parse_cpulist(text)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build_tree(
    root: Path,
    *,
    nodes: dict[int, str],
    siblings: dict[int, list[int]] | None = None,
    pci: dict[str, tuple[int, str]] | None = None,
    allowed: str | None = None,
    mems: str | None = None,
    cgroup: str = "0::/\n",
    cgroup_files: dict[str, str] | None = None,
    numa_balancing: int | None = 0,
    sibling_file: str = "core_cpus_list",
    mem_gib: dict[int, int] | None = None,
) -> Path:
    """Write the files Topology.read looks at, the way the kernel lays them out."""
    every = sorted({c for text in nodes.values() for c in rng(text)})
    write(root / "sys/devices/system/cpu/online", format_cpulist(every) + "\n")
    for cpu in every:
        sib = (siblings or {}).get(cpu, [cpu])
        write(root / f"sys/devices/system/cpu/cpu{cpu}/topology/{sibling_file}", format_cpulist(sib) + "\n")
    for node, text in nodes.items():
        write(root / f"sys/devices/system/node/node{node}/cpulist", text + "\n")
        if mem_gib and node in mem_gib:
            write(root / f"sys/devices/system/node/node{node}/meminfo",
                  f"Node {node} MemTotal:       {mem_gib[node] * 1024 * 1024} kB\nNode {node} MemFree: 1 kB\n")
    for bdf, (numa, local) in (pci or {}).items():
        write(root / f"sys/bus/pci/devices/{bdf}/numa_node", f"{numa}\n")
        write(root / f"sys/bus/pci/devices/{bdf}/local_cpulist", local + "\n")
    node_ids = ",".join(str(n) for n in sorted(nodes))
    write(root / "proc/self/status",
          f"Name:\tpython\nCpus_allowed_list:\t{allowed or format_cpulist(every)}\n"
          f"Mems_allowed_list:\t{mems if mems is not None else node_ids}\n")
    write(root / "proc/self/cgroup", cgroup)
    for rel, text in (cgroup_files or {}).items():
        write(root / "sys/fs/cgroup" / rel, text)
    if numa_balancing is not None:
        write(root / "proc/sys/kernel/numa_balancing", f"{numa_balancing}\n")
    return root


def gpu(index: int, bdf: str, name: str = "NVIDIA A10", mib: int = 23028, **kw) -> Gpu:
    domain, bus, rest = bdf.split(":")
    return Gpu(index=index, uuid=f"GPU-{index:08x}-0000-0000-0000-000000000000", name=name,
               bus_id=f"0000{domain}:{bus.upper()}:{rest.upper()}", sysfs_bus_id=bdf,
               memory_total_mib=mib, memory_used_mib=0, memory_free_mib=mib, **kw)


def plus_n(cores: int) -> dict[int, list[int]]:
    """Siblings numbered 0..n-1 then n..2n-1 (thread i and i+n share a core)."""
    return {c: sorted({c % cores, c % cores + cores}) for c in range(2 * cores)}


# ---------------------------------------------------------------- (a) 1-socket RTX 4090 D desktop


@pytest.fixture
def desktop_4090d(tmp_path):
    root = build_tree(tmp_path, nodes={0: "0-31"}, siblings=plus_n(16), pci={"0000:01:00.0": (0, "0-31")})
    return Topology.read(root), [gpu(0, "0000:01:00.0", "NVIDIA GeForce RTX 4090 D", 24564)]


def test_4090d_desktop_pins_cpus_only_off_cpu0(desktop_4090d):
    topo, gpus = desktop_4090d
    assert topo.nodes == {0: rng("0-31")}
    assert topo.siblings[3] == [3, 19]
    p = plan_placement(Affinity(), gpus, topo, 1, 1)
    assert p.pinned
    assert p.cpus == rng("1-15,17-31")  # CPU 0 and its sibling 16 stay for the OS and the daemon
    assert p.memory_policy == "none"
    assert p.nodes == [0]
    assert p.per_gpu == [{"index": 0, "uuid": gpus[0].uuid, "bus_id": "0000:01:00.0", "node": 0,
                          "source": "sysfs", "sysfs_numa_node": 0}]
    assert any("one NUMA node" in n for n in p.notes)
    assert p.warnings == []
    assert p.apply_args() == (rng("1-15,17-31"), None, "none")
    assert p.layout["reserved"] == "0,16"
    assert len(p.layout["workers"]) == 1 and p.layout["workers"][0]["gpu"] == 0


def test_4090d_smt_off_takes_first_sibling(desktop_4090d):
    topo, gpus = desktop_4090d
    p = plan_placement(Affinity(smt=False), gpus, topo, 1, 1)
    assert p.cpus == rng("1-15")


def test_4090d_explicit_cpus_single_node_gets_preferred(desktop_4090d):
    topo, gpus = desktop_4090d
    p = plan_placement(Affinity(mode="explicit", cpus="4-7"), gpus, topo, 1, 1)
    assert (p.cpus, p.memory_policy, p.nodes) == ([4, 5, 6, 7], "preferred", [0])
    assert p.apply_args() == ([4, 5, 6, 7], [0], "preferred")


def test_mode_none_does_not_pin(desktop_4090d):
    topo, gpus = desktop_4090d
    p = plan_placement(Affinity(mode="none"), gpus, topo, 1, 1)
    assert not p.pinned and p.cpus == rng("0-31") and p.memory_policy == "none"
    assert p.apply_args() == (None, None, "none")


# ---------------------------------------------------------------- (b) 2× RTX 3080 desktop


def test_3080x2_desktop_numa_minus_one_on_one_node_is_only_a_note(tmp_path):
    root = build_tree(tmp_path, nodes={0: "0-15"}, siblings=plus_n(8),
                      pci={"0000:01:00.0": (-1, "0-15"), "0000:02:00.0": (-1, "0-15")})
    topo = Topology.read(root)
    gpus = [gpu(0, "0000:01:00.0", "NVIDIA GeForce RTX 3080", 20480), gpu(1, "0000:02:00.0", "NVIDIA GeForce RTX 3080", 20480)]
    p = plan_placement(Affinity(), gpus, topo, 2, 1)
    assert p.cpus == rng("1-7,9-15")
    assert p.memory_policy == "none"
    assert [e["source"] for e in p.per_gpu] == ["unknown", "unknown"]
    assert p.warnings == []
    assert any("numa_node is -1" in n for n in p.notes)
    assert [w["gpu"] for w in p.layout["workers"]] == [0, 1]


# ---------------------------------------------------------------- (c) 2-socket 8× A10 server


def a10_server(root: Path, interleaved: bool, **kw) -> tuple[Topology, list[Gpu]]:
    """32 cores, 64 threads, 2 nodes; GPUs 0-3 on node 0, 4-7 on node 1."""
    if interleaved:  # node 0 even CPUs, node 1 odd; thread i and i+32 share a core
        nodes = {0: format_cpulist(range(0, 64, 2)), 1: format_cpulist(range(1, 64, 2))}
        siblings = {c: sorted({c % 32, c % 32 + 32}) for c in range(64)}
    else:  # node 0: 0-15 + 32-47, node 1: 16-31 + 48-63
        nodes = {0: "0-15,32-47", 1: "16-31,48-63"}
        siblings = plus_n(32)
    buses = [f"0000:{b:02x}:00.0" for b in (0x17, 0x31, 0x4b, 0x65, 0x98, 0xb1, 0xca, 0xe3)]
    pci = {bdf: (0 if i < 4 else 1, nodes[0 if i < 4 else 1]) for i, bdf in enumerate(buses)}
    build_tree(root, nodes=nodes, siblings=siblings, pci=pci, mem_gib={0: 256, 1: 256}, **kw)
    return Topology.read(root), [gpu(i, bdf) for i, bdf in enumerate(buses)]


@pytest.mark.parametrize("interleaved", [False, True])
def test_a10_tp8_spans_both_sockets(tmp_path, interleaved):
    topo, gpus = a10_server(tmp_path, interleaved)
    p = plan_placement(Affinity(reserve_cores=2), gpus, topo, 8, 1)
    assert [e["node"] for e in p.per_gpu] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {e["source"] for e in p.per_gpu} == {"sysfs"}
    # every core of both nodes except two reserved: CPU 0's core and the next lowest
    assert p.cpus == rng("2-31,34-63")
    assert p.layout["reserved"] == "0-1,32-33"
    assert p.memory_policy == "none" and p.nodes == [0, 1]
    assert any("crosses sockets" in n for n in p.notes)
    assert any("tensor_parallel_size=4 × data_parallel_size=2" in n for n in p.notes)
    assert p.apply_args() == (rng("2-31,34-63"), None, "none")


def test_a10_tp4_on_node0_prefers_node0_and_skips_cpu0(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    p = plan_placement(Affinity(reserve_cores=2), gpus[:4], topo, 4, 1)
    assert p.cpus == rng("1-15,33-47")
    assert (p.memory_policy, p.nodes) == ("preferred", [0])
    assert p.apply_args() == (rng("1-15,33-47"), [0], "preferred")


def test_a10_interleaved_tp4_on_node1(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=True)
    p = plan_placement(Affinity(), gpus[4:], topo, 4, 1)
    assert p.cpus == list(range(1, 64, 2))  # node 1 is every odd CPU; CPU 0 is not there
    assert (p.memory_policy, p.nodes) == ("preferred", [1])


def test_a10_tp4_dp2_notes_socket_local_replicas(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    p = plan_placement(Affinity(reserve_cores=2), gpus, topo, 4, 2)
    assert p.memory_policy == "none" and p.nodes == [0, 1]
    assert any("replica's GPUs sit on one node" in n for n in p.notes)
    assert len(p.layout["engine_core"]) == 2


def test_a10_bind_on_request_reports_node_size(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    p = plan_placement(Affinity(memory_policy="bind"), gpus[4:], topo, 4, 1)
    assert (p.memory_policy, p.nodes) == ("bind", [1])
    assert any("strict" in n and "256 GiB" in n for n in p.notes)


def test_bind_with_numa_balancing_on_warns(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False, numa_balancing=1)
    assert topo.numa_balancing == 1
    p = plan_placement(Affinity(memory_policy="bind"), gpus[:1], topo, 1, 1)
    assert p.memory_policy == "bind"
    assert any("numa_balancing is 1" in w for w in p.warnings)


def test_node_outside_mems_allowed_drops_the_policy(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False, mems="0")
    p = plan_placement(Affinity(memory_policy="bind"), gpus[4:5], topo, 1, 1)
    assert p.pinned and p.cpus == rng("16-31,48-63")
    assert p.memory_policy == "none"
    assert any("outside Mems_allowed" in w for w in p.warnings)
    with pytest.raises(BadInput) as exc:
        plan_placement(Affinity(mode="explicit", numa_nodes=[1]), gpus, topo, 1, 1)
    assert "allowed nodes: 0" in exc.value.lines()[0]


def test_explicit_numa_nodes(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    p = plan_placement(Affinity(mode="explicit", numa_nodes=[1], memory_policy="bind"), gpus, topo, 8, 1)
    assert (p.cpus, p.memory_policy, p.nodes) == (rng("16-31,48-63"), "bind", [1])
    with pytest.raises(BadInput) as exc:
        plan_placement(Affinity(mode="explicit", numa_nodes=[3]), gpus, topo, 8, 1)
    assert "no node 3" in exc.value.lines()[0]


def test_explicit_cpus_spanning_nodes_get_no_policy(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    p = plan_placement(Affinity(mode="explicit", cpus="14-17"), gpus, topo, 8, 1)
    assert (p.cpus, p.memory_policy, p.nodes) == ([14, 15, 16, 17], "none", [0, 1])


# ---------------------------------------------------------------- NVML fallbacks


def test_nvml_memory_affinity_then_cpu_affinity_when_sysfs_says_minus_one(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    for bdf in list(topo.pci):
        topo.pci[bdf].numa_node = -1
    g_mem = gpu(0, gpus[5].sysfs_bus_id, memory_nodes=[1], cpu_affinity=rng("0-15"))
    g_cpu = gpu(1, gpus[6].sysfs_bus_id, cpu_affinity=rng("16-31,48-63"))
    g_none = gpu(2, "0000:ff:00.0")
    assert resolve_gpu_node(g_mem, topo)["source"] == "nvml-memory-affinity"
    assert resolve_gpu_node(g_mem, topo)["node"] == 1
    assert (resolve_gpu_node(g_cpu, topo)["node"], resolve_gpu_node(g_cpu, topo)["source"]) == (1, "nvml-cpu-affinity")
    assert (resolve_gpu_node(g_none, topo)["node"], resolve_gpu_node(g_none, topo)["source"]) == (None, "unknown")
    p = plan_placement(Affinity(), [g_mem, g_cpu], topo, 2, 1)
    assert (p.cpus, p.memory_policy, p.nodes) == (rng("16-31,48-63"), "preferred", [1])
    assert sum("numa_node is -1" in w for w in p.warnings) == 2


def test_sysfs_and_nvml_disagree_warns(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False)
    g = gpu(0, gpus[0].sysfs_bus_id, cpu_affinity=rng("16-31"))
    p = plan_placement(Affinity(), [g], topo, 1, 1)
    assert p.nodes == [0]
    assert any("sysfs says node 0 but NVML" in w for w in p.warnings)


# ---------------------------------------------------------------- (d) VM


def test_vm_two_nodes_unknown_gpu_node_pins_cpus_only(tmp_path):
    root = build_tree(tmp_path, nodes={0: "0-7", 1: "8-15"}, pci={"0000:00:05.0": (-1, "0-15")})
    topo = Topology.read(root)
    assert topo.siblings[9] == [9]  # a VM: no SMT siblings
    p = plan_placement(Affinity(), [gpu(0, "0000:00:05.0", "NVIDIA H100 80GB HBM3", 81559)], topo, 1, 1)
    assert p.per_gpu[0]["source"] == "unknown"
    assert p.cpus == rng("1-15")
    assert p.memory_policy == "none" and p.nodes == [0, 1]
    assert any("numa_node is -1" in w for w in p.warnings)
    assert any("unknown" in n for n in p.notes)


def test_vm_one_node_like_the_h200_cloud_vm(tmp_path):
    # [V] H200 VM: 1 node, numa_node -1, NVML CPU mask 0xffffffff and memory mask 0x1.
    root = build_tree(tmp_path, nodes={0: "0-31"}, pci={"0000:00:06.0": (-1, "0-31")},
                      cgroup="0::/\n", cgroup_files={"cgroup.controllers": "cpuset cpu\n",
                                                     "cpuset.cpus.effective": "0-31\n", "cpu.max": "max 100000\n"})
    topo = Topology.read(root)
    assert topo.cgroup_version == 2 and topo.cgroup_cpus == rng("0-31") and topo.cpu_quota is None
    g = gpu(0, "0000:00:06.0", "NVIDIA H200", 143771, cpu_affinity=rng("0-31"), memory_nodes=[0])
    p = plan_placement(Affinity(), [g], topo, 1, 1)
    assert p.per_gpu[0]["source"] == "nvml-memory-affinity"
    assert (p.cpus, p.memory_policy) == (rng("1-31"), "none")
    assert p.warnings == []


# ---------------------------------------------------------------- (e) cgroup limited to part of a node


def test_cgroup_v2_part_of_a_node_with_quota(tmp_path):
    topo, gpus = a10_server(
        tmp_path, interleaved=False, allowed="20-23,52-55",
        cgroup="0::/system.slice/llm.service\n",
        cgroup_files={"cgroup.controllers": "cpuset cpu\n",
                      "system.slice/llm.service/cpuset.cpus.effective": "20-23,52-55\n",
                      "system.slice/llm.service/cpu.max": "max 100000\n",
                      "system.slice/cpu.max": "200000 100000\n"})
    assert topo.cgroup_cpus == rng("20-23,52-55")
    assert topo.cpu_quota == 2.0  # the parent's quota binds
    p = plan_placement(Affinity(), gpus[4:5], topo, 1, 1)
    # 4 cores allowed = 3 needed + 1 reserved; the lowest (20,52) is the reserve
    assert p.cpus == rng("21-23,53-55")
    assert (p.memory_policy, p.nodes) == ("preferred", [1])
    assert any("quota is 2 CPUs" in w for w in p.warnings)


def test_cgroup_v1_cpuset_and_cfs_quota(tmp_path):
    topo, gpus = a10_server(
        tmp_path, interleaved=False, allowed="0-63",
        cgroup="12:cpuset:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        cgroup_files={"cpuset/docker/abc/cpuset.effective_cpus": "16-23,48-55\n",
                      "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
                      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
                      "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert topo.cgroup_version == 1
    assert topo.allowed == rng("16-23,48-55")
    assert topo.cpu_quota == 4.0
    p = plan_placement(Affinity(), gpus[4:6], topo, 2, 1)
    assert p.cpus == rng("17-23,49-55")


def test_cgroup_shortfall_on_the_gpu_node_borrows_and_warns(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False, allowed="8-16,40-48")
    p = plan_placement(Affinity(), gpus[4:5], topo, 1, 1)
    assert p.cpus == rng("8-9,16,40-41,48")
    assert (p.memory_policy, p.nodes) == ("preferred", [1])
    assert any("cgroup shortfall" in w for w in p.warnings)


def test_half_a_core_allowed_warns_shared_smt(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False, allowed="16-23")
    p = plan_placement(Affinity(), gpus[4:5], topo, 1, 1)
    assert p.cpus == rng("17-23")
    assert any("shares its core with CPU 49" in w for w in p.warnings)


def test_too_few_cores_does_not_pin(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False, allowed="16-18,48-50")
    p = plan_placement(Affinity(reserve_cores=2), gpus[4:6], topo, 2, 1)
    assert not p.pinned and p.cpus == rng("16-18,48-50") and p.memory_policy == "none"
    assert any("not pinning" in w for w in p.warnings)


def test_explicit_cpus_outside_the_cgroup_is_bad_input(tmp_path):
    topo, gpus = a10_server(tmp_path, interleaved=False, allowed="20-23,52-55")
    with pytest.raises(BadInput) as exc:
        plan_placement(Affinity(mode="explicit", cpus="0-3"), gpus, topo, 1, 1)
    assert exc.value.lines() == ["affinity.cpus: none of CPUs 0-3 may be used here (allowed CPUs: 20-23,52-55)"]
    p = plan_placement(Affinity(mode="explicit", cpus="18-21"), gpus, topo, 1, 1)
    assert p.cpus == [20, 21]
    assert any("18-19 are outside" in w for w in p.warnings)


# ---------------------------------------------------------------- (f) GB200-style memory-only nodes


def test_gb200_memory_only_nodes_are_never_bound(tmp_path):
    # two Grace CPUs (nodes 0, 1; no SMT) and GPU memory as CPU-less nodes 2-9
    nodes = {0: "0-71", 1: "72-143", **{n: "" for n in range(2, 10)}}
    root = build_tree(tmp_path, nodes=nodes, pci={"0008:01:00.0": (2, ""), "0009:01:00.0": (3, "")},
                      sibling_file="thread_siblings_list")
    topo = Topology.read(root)
    assert topo.nodes[4] == [] and topo.cpu_nodes() == [0, 1]
    g0 = gpu(0, "0008:01:00.0", "NVIDIA GB200", 189471, memory_nodes=[0, 2], numa_node=2)
    g1 = gpu(1, "0009:01:00.0", "NVIDIA GB200", 189471, memory_nodes=[1, 3], numa_node=3)
    p = plan_placement(Affinity(), [g0], topo, 1, 1)
    assert p.per_gpu[0]["node"] == 0 and p.per_gpu[0]["source"] == "nvml-memory-affinity"
    assert (p.cpus, p.memory_policy, p.nodes) == (rng("1-71"), "preferred", [0])
    assert any("memory is NUMA node 2" in n for n in p.notes)
    p2 = plan_placement(Affinity(), [g0, g1], topo, 2, 1)
    assert (p2.cpus, p2.memory_policy, p2.nodes) == (rng("1-143"), "none", [0, 1])


# ---------------------------------------------------------------- reading and the real machine


def test_read_without_numa_or_cgroup_files(tmp_path):
    write(tmp_path / "sys/devices/system/cpu/online", "0-3\n")
    topo = Topology.read(tmp_path)
    assert topo.nodes == {0: [0, 1, 2, 3]}
    assert topo.allowed == [0, 1, 2, 3]
    assert topo.cgroup_version is None and topo.cpu_quota is None and topo.numa_balancing is None
    assert topo.mems_allowed is None


def test_real_machine_topology_and_plan():
    topo = Topology.read()
    assert topo.allowed == sorted(os.sched_getaffinity(0))
    assert topo.nodes and all(isinstance(c, int) for cs in topo.nodes.values() for c in cs)
    p = plan_placement(Affinity(), [], topo, 1, 1)
    assert set(p.cpus) <= set(topo.allowed)
    if len(topo.cores(topo.allowed)) < 4:  # 3 cores needed + 1 reserved
        assert not p.pinned and any("not pinning" in w for w in p.warnings)
    data = p.to_json()
    assert data["cpus"] == p.cpus and data["memory_policy"] in ("none", "preferred", "bind")
