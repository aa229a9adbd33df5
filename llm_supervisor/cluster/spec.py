"""What each host of a Ray deployment runs: `ray start` for its role, the environment NCCL and Gloo
need, the profile the head launches vLLM with, and which pipeline stages land on which host (for
`plan`). No processes, no Ray import.
"""

from __future__ import annotations

import json
import shlex
import socket
from dataclasses import dataclass, field
from typing import Any

from llm_supervisor.config.cluster import RAY_BACKEND_FLAG, ClusterConfig, Role
from llm_supervisor.config.profile import Profile
from llm_supervisor.host.modelfiles import load_shape


# ---------------------------------------------------------------- GPUs per host


def gpus_per_node(profile: Profile) -> int:
    cfg = profile.cluster
    assert cfg is not None
    return cfg.gpus_per_node or profile.hardware.gpu_count


def total_gpus(profile: Profile) -> int:
    cfg = profile.cluster
    assert cfg is not None
    return cfg.nodes * gpus_per_node(profile)


# ---------------------------------------------------------------- this node


def resolve_node_ip(cfg: ClusterConfig, interfaces: dict[str, list[str]] | None = None) -> str | None:
    """This host's IP for Ray and NCCL: `node_ip`, else the IPv4 address of `interface`, else
    None (Ray and vLLM then pick the address of the default route themselves, which agree)."""
    if cfg.node_ip:
        return cfg.node_ip
    if cfg.interface:
        if interfaces is None:
            interfaces = local_interfaces()
        addrs = interfaces.get(cfg.interface) or []
        v4 = [a for a in addrs if ":" not in a]
        return (v4 or addrs or [None])[0]
    return None


def local_interfaces() -> dict[str, list[str]]:
    """Interface name → its IP addresses (psutil; empty when unavailable)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return {}
    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.setdefault(name, []).append(a.address.split("%", 1)[0])
    return out


def node_env(cfg: ClusterConfig, node_ip: str | None) -> dict[str, str]:
    """Environment for `ray start` and `vllm serve` on this host. Ray workers inherit the
    raylet's environment, so NCCL/Gloo settings must be there before `ray start`."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_USAGE_STATS": "1"}
    if node_ip:
        env["VLLM_HOST_IP"] = node_ip
    if cfg.interface:
        env["NCCL_SOCKET_IFNAME"] = cfg.interface
        env["GLOO_SOCKET_IFNAME"] = cfg.interface
    return env


# What `ray start --block` prints once its node is up.
RAY_READY_MARKER = "Ray runtime started"
# Variables the engine needs but Ray's own processes must not inherit.
ENGINE_ONLY_ENV = ("RAY_ADDRESS", "VLLM_API_KEY")


def ray_env(base: dict[str, str], cfg: ClusterConfig, node_ip: str | None) -> dict[str, str]:
    """The environment of `ray start` on this host: the engine's, less what only the engine needs,
    plus NCCL/Gloo settings."""
    env = {k: v for k, v in base.items() if k not in ENGINE_ONLY_ENV}
    env.update(node_env(cfg, node_ip))
    return env


def ray_start_argv(cfg: ClusterConfig, role: Role, num_gpus: int, node_ip: str | None) -> list[str]:
    """`ray start … --block` for this host. --block keeps Ray's daemons children of this one
    process, so the guard that runs it can end them all."""
    argv = [*shlex.split(cfg.ray_command), "start", "--block", "--disable-usage-stats",
            "--num-gpus", str(num_gpus), "--log-style", "record", "--log-color", "false"]
    if role == "head":
        argv += ["--head", "--port", str(cfg.gcs_port),
                 "--include-dashboard", "true" if cfg.include_dashboard else "false"]
        if cfg.temp_dir:
            argv += ["--temp-dir", cfg.temp_dir]
    else:
        argv += ["--address", cfg.ray_address]
    if node_ip:
        argv += ["--node-ip-address", node_ip]
    if cfg.num_cpus is not None:
        argv += ["--num-cpus", str(cfg.num_cpus)]
    if cfg.object_store_memory_bytes is not None:
        argv += ["--object-store-memory", str(cfg.object_store_memory_bytes)]
    if cfg.resources:
        argv += ["--resources", json.dumps(cfg.resources, separators=(",", ":"))]
    for name in ("node_manager_port", "object_manager_port", "min_worker_port", "max_worker_port"):
        value = getattr(cfg, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv + list(cfg.ray_args)


def engine_profile(profile: Profile, node_ip: str | None = None) -> Profile:
    """The profile the head launches vLLM with: the Ray executor, RAY_ADDRESS, and this host's
    NCCL/Gloo settings. A profile without a cluster section comes back unchanged."""
    cfg = profile.cluster
    if cfg is None:
        return profile
    extra = list(profile.vllm.extra_args)
    if not any(a.split("=", 1)[0] == RAY_BACKEND_FLAG for a in extra):
        extra += [RAY_BACKEND_FLAG, "ray"]
    env = dict(profile.env)
    env.setdefault("RAY_ADDRESS", cfg.ray_address)
    for key, value in node_env(cfg, node_ip).items():
        env.setdefault(key, value)
    vllm = profile.vllm.model_copy(update={"extra_args": extra})
    return profile.model_copy(update={"vllm": vllm, "env": env})


# ---------------------------------------------------------------- the cluster as Ray sees it


# ---------------------------------------------------------------- the layout (for `plan`)


@dataclass
class StagePlacement:
    pp_rank: int
    node: int
    layers: int
    first_layer: int
    weights_gib_per_gpu: float | None = None


@dataclass
class NodePlan:
    index: int
    role: Role
    gpus: int
    stages: list[StagePlacement] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.index, "role": self.role, "gpus": self.gpus,
                "stages": [{"pp_rank": s.pp_rank, "layers": s.layers,
                            "layer_range": [s.first_layer, s.first_layer + s.layers - 1],
                            "weights_gib_per_gpu": None if s.weights_gib_per_gpu is None
                            else round(s.weights_gib_per_gpu, 2)} for s in self.stages]}


def layout(profile: Profile, layers_per_stage: list[int] | None = None,
           weight_bytes_per_stage: list[int] | None = None) -> list[NodePlan]:
    """Which pipeline stages land on which host. Ray packs the engine's GPU bundles in rank order
    (rank = pp_rank × TP + tp_rank) and pins the first to the head, so stage s sits on host
    s × TP // gpus_per_node."""
    cfg = profile.cluster
    assert cfg is not None
    per_node = gpus_per_node(profile)
    tp, pp = profile.vllm.tensor_parallel_size, profile.vllm.pipeline_parallel_size
    plans = [NodePlan(i, "head" if i == 0 else "worker", per_node) for i in range(cfg.nodes)]
    first = 0
    for s in range(pp):
        node = min(cfg.nodes - 1, s * tp // per_node)
        layers = layers_per_stage[s] if layers_per_stage else 0
        weights = weight_bytes_per_stage[s] / 1024**3 if weight_bytes_per_stage else None
        plans[node].stages.append(StagePlacement(s, node, layers, first, weights))
        first += layers
    return plans


def plan_section(profile: Profile, hf_home: str | None = None) -> dict[str, Any]:
    """`plan`'s `cluster` key: roles, the `ray start` command of each role, and which layers
    each host holds (pipeline stages across hosts, tensor parallel within one)."""
    cfg = profile.cluster
    assert cfg is not None
    per_node = gpus_per_node(profile)
    v = profile.vllm
    node_ip = resolve_node_ip(cfg)
    layers = weights = None
    try:
        shape = load_shape(profile.model.id, hf_home)
        layers = shape.layers_per_stage(v.pipeline_parallel_size)
        weights = shape.weight_bytes_per_stage(v.tensor_parallel_size, v.pipeline_parallel_size, v.dtype,
                                               v.quantization)
    except Exception:  # noqa: BLE001 - no config.json here: the layout without layer counts
        pass
    return {
        "nodes": cfg.nodes, "gpus_per_node": per_node, "total_gpus": cfg.nodes * per_node,
        "tensor_parallel_size": v.tensor_parallel_size, "pipeline_parallel_size": v.pipeline_parallel_size,
        "head_address": cfg.ray_address, "node_ip": node_ip, "default_role": cfg.role,
        "ray_start": {"head": ray_start_argv(cfg, "head", per_node, node_ip),
                      "worker": ray_start_argv(cfg, "worker", per_node, node_ip)},
        "env": node_env(cfg, node_ip),
        "layout": [n.to_json() for n in layout(profile, layers, weights)],
        "warnings": ([f"cluster.interface {cfg.interface}: no such interface with an address on this host; "
                      "`up` refuses to start here"] if cfg.interface and not node_ip else []),
    }


def format_plan_section(section: dict[str, Any]) -> str:
    lines = [f"cluster   {section['nodes']} hosts × {section['gpus_per_node']} GPU(s): TP "
             f"{section['tensor_parallel_size']} within a host, PP {section['pipeline_parallel_size']} across; "
             f"Ray head {section['head_address']}"]
    for node in section["layout"]:
        stages = "; ".join(
            f"stage {s['pp_rank']}: layers {s['layer_range'][0]}-{s['layer_range'][1]}"
            + (f", {s['weights_gib_per_gpu']:.2f} GiB weights/GPU" if s["weights_gib_per_gpu"] is not None else "")
            for s in node["stages"]) or "no stage"
        lines.append(f"  host {node['node']} ({node['role']}, {node['gpus']} GPU): {stages}")
    lines.append("  head:   " + " ".join(section["ray_start"]["head"]))
    lines.append("  worker: " + " ".join(section["ray_start"]["worker"]))
    lines += [f"warning   {w}" for w in section.get("warnings", [])]
    return "\n".join(lines)
