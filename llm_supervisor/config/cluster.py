"""The profile's `cluster:` section: a vLLM deployment across several hosts on Ray. Schema and
checks only; what each host runs is in llm_supervisor.cluster.

The same profile runs on every host: `supervisor up --role head` on the host that serves HTTP
(it runs `ray start --head` and `vllm serve … --distributed-executor-backend ray`) and
`supervisor up --role worker` on the others (they run `ray start --address HEAD --block`).
vLLM splits the model with pipeline parallel across hosts and tensor parallel within one, so
`tensor_parallel_size × pipeline_parallel_size` must equal `nodes × gpus_per_node` and one
tensor-parallel group must fit on one host.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


def cluster_problems(cfg: ClusterConfig, vllm: Any, gpu_count: int) -> list[str]:
    """Why this cluster layout cannot work (empty: it can). One line each, keys named.

    `vllm` is the profile's vLLM arguments, `gpu_count` its hardware.gpu_count (the GPUs of one
    host): this module knows the cluster section only, so the profile schema can use it."""
    v = vllm
    per_node = cfg.gpus_per_node or gpu_count
    problems = []
    if cfg.gpus_per_node is not None and cfg.gpus_per_node > gpu_count:
        problems.append(f"cluster.gpus_per_node ({cfg.gpus_per_node}) is more than hardware.gpu_count "
                        f"({gpu_count}), the GPUs of one host")
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
