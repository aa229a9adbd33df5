"""A vLLM deployment across several hosts on Ray: the profile's `cluster` section and the pure
helpers around it. No processes, no sockets opened for traffic, no Ray import.

The same profile runs on every host: `supervisor up --role head` on the host that serves HTTP
(it runs `ray start --head` and `vllm serve … --distributed-executor-backend ray`) and
`supervisor up --role worker` on the others (they run `ray start --address HEAD --block`).
vLLM splits the model with pipeline parallel across hosts and tensor parallel within one, so
`tensor_parallel_size × pipeline_parallel_size` must equal `nodes × gpus_per_node` and one
tensor-parallel group must fit on one host.

What the head waits for (`readiness`): at least `nodes` live Ray nodes that each declare
`gpus_per_node` GPUs. The cluster's view comes from Ray's GCS (see rayprobe.py) or, as a
fallback, from `ray status` text (`parse_ray_status`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # profiles imports this module; only types flow back
    from llm_supervisor.config.profile import Profile

Role = Literal["head", "worker"]
DEFAULT_GCS_PORT = 6379
RAY_BACKEND_FLAG = "--distributed-executor-backend"


class ClusterConfig(BaseModel):
    """The profile's `cluster:` section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    nodes: int = Field(ge=1, le=256, description="hosts in the deployment, the head included")
    gpus_per_node: int | None = Field(default=None, ge=1, le=64,
                                      description="GPUs each host gives Ray (default: hardware.gpu_count)")
    head_address: str = Field(description="the head's Ray GCS address, host or host:port (port 6379 when left out)")
    role: Role = Field(default="head", description="this host's role unless --role or LLM_SUPERVISOR_ROLE say")
    node_ip: str | None = Field(default=None, description="this host's IP for Ray and NCCL (VLLM_HOST_IP); set it "
                                "per host with --set cluster.node_ip=…; default: the interface's address, else Ray's choice")
    interface: str | None = Field(default=None, description="network interface for NCCL and Gloo "
                                  "(NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME), e.g. eth1")
    ray_command: str = Field(default="ray", min_length=1, description="the `ray` executable")
    num_cpus: int | None = Field(default=None, ge=0, le=4096, description="CPUs this host gives Ray (default: Ray's count)")
    object_store_memory_bytes: int | None = Field(default=None, ge=78643200,
                                                  description="Ray's object store per host (default: Ray's 30% of RAM)")
    resources: dict[str, float] = Field(default_factory=dict, description="extra custom Ray resources of this host")
    include_dashboard: bool = Field(default=False, description="start Ray's dashboard on the head")
    temp_dir: str | None = Field(default=None, description="Ray's temp/session folder on the head (default /tmp/ray); "
                                 "keep it short: Ray's sockets live below it")
    node_manager_port: int | None = Field(default=None, ge=1, le=65535, description="fixed raylet port (firewalls)")
    object_manager_port: int | None = Field(default=None, ge=1, le=65535, description="fixed object manager port")
    min_worker_port: int | None = Field(default=None, ge=1, le=65535)
    max_worker_port: int | None = Field(default=None, ge=1, le=65535)
    ray_args: list[str] = Field(default_factory=list, description="more `ray start` arguments, as they are")
    join_timeout_s: float = Field(default=600.0, gt=0, le=86400,
                                  description="how long the head waits for the expected GPUs, at start and after "
                                  "losing a node, before it gives up")
    poll_interval_s: float = Field(default=2.0, ge=0.2, le=60, description="how often the head reads the cluster state")
    restart_backoff_initial_s: float = Field(default=2.0, ge=0, le=3600,
                                             description="first wait before restarting a dead `ray start`")
    restart_backoff_max_s: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("head_address")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value.strip()

    @field_validator("node_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(f"not an IP address: {value!r}") from None
        return value.strip()

    @field_validator("interface")
    @classmethod
    def _ifname(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", value):
            raise ValueError(f"not a network interface name: {value!r}")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if key in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"{key} is one of Ray's own resources; use num_cpus / gpus_per_node instead")
        return value

    @property
    def gcs_host(self) -> str:
        return parse_address(self.head_address)[0]

    @property
    def gcs_port(self) -> int:
        return parse_address(self.head_address)[1]

    @property
    def ray_address(self) -> str:
        """RAY_ADDRESS for the engine and `--address` for workers."""
        host, port = parse_address(self.head_address)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` → (host, port); ValueError when malformed."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}: expected [ipv6]:port")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if not host or not re.fullmatch(r"[A-Za-z0-9_.:%-]+", host):
        raise ValueError(f"bad host in {text!r}")
    if port_text == "":
        return host, DEFAULT_GCS_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r} (1-65535)")
    return host, int(port_text)


# ---------------------------------------------------------------- profile checks


def gpus_per_node(profile: "Profile") -> int:
    cfg = profile.cluster
    assert cfg is not None
    return cfg.gpus_per_node or profile.hardware.gpu_count


def total_gpus(profile: "Profile") -> int:
    cfg = profile.cluster
    assert cfg is not None
    return cfg.nodes * gpus_per_node(profile)


def profile_problems(profile: "Profile") -> list[str]:
    """Why this cluster layout cannot work (empty: it can). One line each, keys named."""
    cfg = profile.cluster
    if cfg is None:
        return []
    v = profile.vllm
    per_node = gpus_per_node(profile)
    problems = []
    if cfg.gpus_per_node is not None and cfg.gpus_per_node > profile.hardware.gpu_count:
        problems.append(f"cluster.gpus_per_node ({cfg.gpus_per_node}) is more than hardware.gpu_count "
                        f"({profile.hardware.gpu_count}), the GPUs of one host")
    if v.data_parallel_size != 1:
        problems.append("vllm.data_parallel_size must be 1 with a cluster section (one engine spans the hosts)")
    world = v.tensor_parallel_size * v.pipeline_parallel_size
    if world != cfg.nodes * per_node:
        problems.append(f"tensor_parallel_size × pipeline_parallel_size = {world}, but cluster.nodes × gpus_per_node "
                        f"= {cfg.nodes} × {per_node} = {cfg.nodes * per_node}: they must be equal")
    if v.tensor_parallel_size > per_node:
        problems.append(f"tensor_parallel_size {v.tensor_parallel_size} is more than the {per_node} GPUs of one host: "
                        "tensor parallel stays within a host, pipeline parallel spans hosts")
    elif per_node % v.tensor_parallel_size:
        problems.append(f"tensor_parallel_size {v.tensor_parallel_size} does not divide gpus_per_node {per_node}: "
                        "a tensor-parallel group would straddle two hosts")
    if cfg.min_worker_port and cfg.max_worker_port and cfg.min_worker_port > cfg.max_worker_port:
        problems.append("cluster.min_worker_port is above cluster.max_worker_port")
    flag = [a for a in v.extra_args if a.split("=", 1)[0] == RAY_BACKEND_FLAG]
    for arg in flag:
        value = arg.split("=", 1)[1] if "=" in arg else None
        if value is None:
            idx = v.extra_args.index(arg)
            value = v.extra_args[idx + 1] if idx + 1 < len(v.extra_args) else None
        if value != "ray":
            problems.append(f"vllm.extra_args sets {RAY_BACKEND_FLAG} {value}; a cluster needs ray (or leave it out)")
    return problems


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


def ray_start_argv(cfg: ClusterConfig, role: Role, num_gpus: int, node_ip: str | None) -> list[str]:
    """`ray start … --block` for this host. --block keeps Ray's daemons children of this one
    process, so the guard that runs it can end them all."""
    import shlex

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


def engine_profile(profile: "Profile", node_ip: str | None = None) -> "Profile":
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


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    gpus: float = 0.0
    cpus: float = 0.0
    is_head: bool = False
    hostname: str = ""
    death_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.node_id, "address": self.address,
                               "state": "alive" if self.alive else "dead", "gpus": _num(self.gpus),
                               "cpus": _num(self.cpus), "is_head": self.is_head}
        if self.hostname:
            out["hostname"] = self.hostname
        if self.death_reason:
            out["death_reason"] = self.death_reason
        return out


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


@dataclass(frozen=True)
class ClusterView:
    """One reading of the cluster: every node Ray knows, alive or dead."""

    nodes: tuple[NodeInfo, ...] = ()
    per_node_gpus: bool = True  # False when read from `ray status` (totals only)
    total_gpus_alive: float | None = None  # set when per-node GPUs are unknown

    @property
    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.alive]

    @property
    def alive_gpus(self) -> float:
        if self.total_gpus_alive is not None:
            return self.total_gpus_alive
        return sum(n.gpus for n in self.alive)

    def to_json(self) -> list[dict[str, Any]]:
        return [n.to_json() for n in sorted(self.nodes, key=lambda n: (not n.alive, not n.is_head, n.address))]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    gpu_nodes: int
    nodes_needed: int
    gpus: float
    gpus_needed: int
    reason: str


def readiness(view: ClusterView | None, nodes: int, per_node: int) -> Readiness:
    """Whether the cluster can host the engine: `nodes` live nodes with `per_node` GPUs each."""
    needed = nodes * per_node
    if view is None:
        return Readiness(False, 0, nodes, 0.0, needed, "no reading of the Ray cluster yet")
    if view.per_node_gpus:
        full = [n for n in view.alive if n.gpus >= per_node]
        count = len(full)
    else:
        count = len(view.alive)
    gpus = view.alive_gpus
    ready = count >= nodes and gpus >= needed
    text = (f"{count} of {nodes} node(s) with {per_node} GPU(s), {_num(gpus)} of {needed} GPU(s) in the Ray cluster")
    return Readiness(ready, count, nodes, gpus, needed, text)


def lost_nodes(before: ClusterView | None, now: ClusterView | None) -> list[NodeInfo]:
    """Nodes alive in `before` that are dead or gone in `now` (a restarted node has a new id)."""
    if before is None or now is None:
        return []
    alive_now = {n.node_id for n in now.alive}
    return [n for n in before.alive if n.node_id not in alive_now]


def describe(nodes: list[NodeInfo]) -> str:
    return ", ".join(f"{n.address} ({_num(n.gpus)} GPU{'s' if n.gpus != 1 else ''}"
                     f"{', head' if n.is_head else ''})" for n in nodes) or "none"


def view_from_json(data: dict[str, Any]) -> ClusterView | None:
    """rayprobe's JSON line → ClusterView (None for an error line)."""
    if not data.get("ok"):
        return None
    nodes = []
    for raw in data.get("nodes") or []:
        nodes.append(NodeInfo(
            node_id=str(raw.get("node_id", "")), address=str(raw.get("address", "")),
            alive=str(raw.get("state", "")).lower() == "alive", gpus=float(raw.get("gpus") or 0),
            cpus=float(raw.get("cpus") or 0), is_head=bool(raw.get("is_head")),
            hostname=str(raw.get("hostname") or ""), death_reason=str(raw.get("death_reason") or "")))
    total = data.get("total_gpus_alive")
    return ClusterView(tuple(nodes), per_node_gpus=bool(data.get("per_node_gpus", True)),
                       total_gpus_alive=float(total) if total is not None else None)


_NODE_LINE = re.compile(r"^\s*(?:\d+\s+)?(node_[0-9a-f]+)\s*(?:\((?P<ip>[^)]+)\))?\s*$")
_USAGE_LINE = re.compile(r"^\s*(?P<used>[\d.]+)/(?P<total>[\d.]+)\s+(?P<name>\S+)\s*$")


def parse_ray_status(text: str) -> ClusterView:
    """`ray status` text → the live nodes and the cluster's GPU total. `ray status` has no
    per-node resources, so readiness falls back to counting live nodes and total GPUs."""
    section = ""
    alive: list[str] = []
    dead: list[str] = []
    total_gpus = 0.0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and not stripped.startswith("("):
            section = stripped[:-1].lower()
            continue
        m = _NODE_LINE.match(line)
        if m and section in ("active", "idle"):
            alive.append(m.group(1))
        elif m and section == "recent failures":
            dead.append(m.group(1))
        elif section == "total usage":
            u = _USAGE_LINE.match(line)
            if u and u.group("name") == "GPU":
                total_gpus = float(u.group("total"))
    nodes = [NodeInfo(node_id=n.removeprefix("node_"), address="", alive=True) for n in alive]
    nodes += [NodeInfo(node_id=n.removeprefix("node_"), address="", alive=False) for n in dead]
    return ClusterView(tuple(nodes), per_node_gpus=False, total_gpus_alive=total_gpus)


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


def layout(profile: "Profile", layers_per_stage: list[int] | None = None,
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


def plan_section(profile: "Profile", hf_home: str | None = None) -> dict[str, Any]:
    """`plan`'s `cluster` key: roles, the `ray start` command of each role, and which layers
    each host holds (pipeline stages across hosts, tensor parallel within one)."""
    cfg = profile.cluster
    assert cfg is not None
    per_node = gpus_per_node(profile)
    v = profile.vllm
    node_ip = resolve_node_ip(cfg)
    layers = weights = None
    try:
        from llm_supervisor.vllm import modelshape as modelinfo

        shape = modelinfo.load_shape(profile.model.id, hf_home)
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
