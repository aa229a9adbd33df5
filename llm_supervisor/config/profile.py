"""Hardware profiles: the schema a profile YAML file is validated into (config/loader.py reads the
files). Pure: no processes, no GPUs, no files.

A profile names the hardware it was written for, the model, vLLM's arguments, where to pin
the engine, how far recovery may move the arguments, and an optional service target.

Every number, string and list is bounded (no infinities, no NaN, no billion-CPU ranges), so a
typo is refused with one line instead of costing memory or time.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from llm_supervisor.config.cluster import ClusterConfig, cluster_problems
from llm_supervisor.config.frontdoor import FrontDoorConfig
from llm_supervisor.cpulist import MAX_CPU_ID, MAX_NODE_ID, parse_cpulist


MAX_CONTEXT = 10_000_000  # tokens: above the longest context any model offers
# RFC 1123 labels, with `_` allowed as container runtimes' service names use it
_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                          r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")

CpuId = Annotated[int, Field(ge=0, le=MAX_CPU_ID)]
NodeId = Annotated[int, Field(ge=0, le=MAX_NODE_ID)]


ALL_INTERFACES = ("0.0.0.0", "::", "")  # listening hosts that mean every interface of the machine


def listen_url(host: str, port: int) -> str:
    """The http:// form of the address a server listens on, as written (0.0.0.0 stays; empty, which
    also means every interface, is written 0.0.0.0): an IPv6 address goes in brackets."""
    host = host or "0.0.0.0"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_url(host: str, port: int) -> str:
    """The http:// base a client on this machine uses for a server that listens on host:port:
    every interface is reached on loopback."""
    return listen_url("127.0.0.1" if host in ALL_INTERFACES else host, port)


def check_host(value: str) -> str:
    """A listening address: an IP address (brackets around IPv6 taken off), a host name, or empty
    (all interfaces)."""
    plain = value.strip()
    if plain.startswith("[") and plain.endswith("]"):
        plain = plain[1:-1]
    if not plain:
        return plain
    try:
        return str(ipaddress.ip_address(plain.split("%", 1)[0])) + (("%" + plain.split("%", 1)[1]) if "%" in plain else "")
    except ValueError:
        pass
    if _HOSTNAME_RE.match(plain):
        return plain
    raise ValueError("not an IP address or host name (allowed: 127.0.0.1, 0.0.0.0, ::1, a name such as gpu-box.lan)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, str_max_length=65536)


class Hardware(_Strict):
    gpu_name: str = Field(max_length=256, description="case-insensitive regular expression matched against NVML's GPU name")
    gpu_count: int = Field(ge=1, le=64)
    gpu_memory_gib: float = Field(gt=0, le=1024, description="memory per GPU as sold (24 for a 4090 D)")

    @field_validator("gpu_name")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        return value


class Model(_Strict):
    id: str = Field(min_length=1, max_length=4096, description="Hugging Face id or local folder")
    served_name: str | None = Field(default=None, min_length=1, max_length=256)
    revision: str | None = Field(default=None, max_length=256)
    trust_remote_code: bool = False

    @field_validator("id", "served_name")
    @classmethod
    def _no_blank(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value != value.strip()):
            raise ValueError("must not be blank or begin or end with spaces")
        return value


class VllmArgs(_Strict):
    """vLLM's arguments: typed for the ones the supervisor reasons about, the rest in extra_args."""

    host: str = Field(default="127.0.0.1", max_length=255)
    port: int = Field(default=8000, ge=1, le=65535)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=16, le=MAX_CONTEXT, description="None: the model's own limit")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    data_parallel_size: int = Field(default=1, ge=1, le=64)
    max_num_seqs: int | None = Field(default=None, ge=1, le=1_000_000)
    max_num_batched_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT)
    block_size: int | None = Field(default=None, ge=1, le=1024)
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"] = "auto"
    quantization: str | None = Field(default=None, max_length=64)
    load_format: str | None = Field(default=None, max_length=64)
    disable_custom_all_reduce: bool = False
    cpu_offload_gb: float | None = Field(default=None, ge=0, le=4096,
                                         description="GiB of weights per GPU kept in CPU memory, read over PCIe every step")
    swap_space: float | None = Field(default=None, ge=0, le=1024,
                                     description="GiB of CPU memory per GPU vLLM reserves for swapped KV blocks (its default: 4)")
    api_key: SecretStr | None = Field(default=None, max_length=4096)
    extra_args: list[Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=list, max_length=256, description="passed to vllm serve as they are")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("extra_args")
    @classmethod
    def _no_typed_duplicates(cls, value: list[str]) -> list[str]:
        typed = {"--" + name.replace("_", "-") for name in cls.model_fields if name != "extra_args"}
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in typed:
                raise ValueError(f"{flag} has its own key (vllm.{flag[2:].replace('-', '_')}); set it there")
        return value


class Affinity(_Strict):
    mode: Literal["auto", "explicit", "none"] = "auto"
    cpus: list[CpuId] | None = Field(default=None, max_length=MAX_CPU_ID + 1, description="explicit CPU list (mode: explicit)")
    numa_nodes: list[NodeId] | None = Field(default=None, max_length=MAX_NODE_ID + 1,
                                            description="explicit NUMA nodes (mode: explicit)")
    memory_policy: Literal["preferred", "bind", "none"] = "preferred"
    smt: bool = True
    reserve_cores: int = Field(default=1, ge=0, le=64, description="cores left for the OS and the daemon")

    @field_validator("cpus", "numa_nodes", mode="before")
    @classmethod
    def _parse_list(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return parse_cpulist(value, MAX_CPU_ID if info.field_name == "cpus" else MAX_NODE_ID)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        return value

    @field_validator("cpus", "numa_nodes")
    @classmethod
    def _only_explicit(cls, value: Any, info: ValidationInfo) -> Any:
        mode = info.data.get("mode")
        if value is not None and mode in ("auto", "none"):
            raise ValueError(f"used only with affinity.mode: explicit (mode is {mode}); set affinity.mode: "
                             f"explicit (--set affinity.mode=explicit) or drop {info.field_name}")
        return value

    @model_validator(mode="after")
    def _explicit_needs_cpus(self) -> "Affinity":
        if self.mode == "explicit" and not self.cpus and not self.numa_nodes:
            raise ValueError("mode explicit needs cpus or numa_nodes")
        return self


class Recovery(_Strict):
    min_max_model_len: int = Field(default=2048, ge=16, le=MAX_CONTEXT)
    max_max_model_len: int | None = Field(default=None, ge=16, le=MAX_CONTEXT)
    min_gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    max_gpu_memory_utilization: float = Field(default=0.95, gt=0, le=1)
    max_attempts: int = Field(default=5, ge=1, le=100, description="launches per failure streak")
    backoff_initial_s: float = Field(default=2.0, ge=0, le=3600)
    backoff_max_s: float = Field(default=60.0, ge=0, le=86400)
    startup_timeout_s: float = Field(default=1200.0, gt=0, le=7 * 86400, description="launch to ready, at most")
    stall_timeout_s: float = Field(default=300.0, gt=0, le=86400, description="startup with no output, at most")
    allow_long_context: bool = Field(default=False, description="allow max_model_len above the model's limit")
    plan_first_launch: bool = Field(default=True, description="shorten the first launch's max_model_len to what "
                                    "the planner predicts fits, instead of letting vLLM fail first")
    max_cpu_offload_gb: float = Field(default=0.0, ge=0, le=4096, description="the most weights (GiB per GPU) the "
                                      "planner and recovery may move to CPU memory when the model does not fit; 0 = never")
    end_foreign_engines: bool = Field(default=False, description="before a launch, end vLLM engine processes that "
                                      "are not this supervisor's but hold memory on its GPUs (default: report them)")

    @model_validator(mode="after")
    def _ordered(self) -> "Recovery":
        if self.min_gpu_memory_utilization > self.max_gpu_memory_utilization:
            raise ValueError("min_gpu_memory_utilization is above max_gpu_memory_utilization")
        if self.max_max_model_len is not None and self.min_max_model_len > self.max_max_model_len:
            raise ValueError("min_max_model_len is above max_max_model_len")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s is above backoff_max_s")
        return self


class Target(_Strict):
    """A service target: at least `min_concurrency` requests of `context` tokens at once."""

    min_concurrency: float = Field(gt=0, le=100000)
    context: int = Field(ge=16, le=MAX_CONTEXT)


class Profile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    description: str = Field(default="", max_length=4096)
    hardware: Hardware
    model: Model
    vllm: VllmArgs = Field(default_factory=VllmArgs)
    affinity: Affinity = Field(default_factory=Affinity)
    recovery: Recovery = Field(default_factory=Recovery)
    target: Target | None = None
    env: dict[str, str] = Field(default_factory=dict)
    cluster: ClusterConfig | None = Field(default=None, description="a deployment across hosts on Ray (cluster/)")
    frontdoor: FrontDoorConfig = Field(default_factory=FrontDoorConfig,
                                       description="the served address: clients reach the engine through it")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 256:
            raise ValueError(f"{len(value)} variables (at most 256)")
        for key in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Profile":
        v, r = self.vllm, self.recovery
        if self.cluster is not None:  # TP × PP spans the hosts: checked against the cluster instead
            problems = cluster_problems(self.cluster, self.vllm, self.hardware.gpu_count)
            if problems:
                raise ValueError("; ".join(problems))
        elif v.tensor_parallel_size * v.pipeline_parallel_size * v.data_parallel_size > self.hardware.gpu_count:
            raise ValueError(
                f"vllm.tensor_parallel_size × vllm.pipeline_parallel_size × vllm.data_parallel_size = "
                f"{v.tensor_parallel_size * v.pipeline_parallel_size * v.data_parallel_size} "
                f"needs more GPUs than hardware.gpu_count ({self.hardware.gpu_count})"
            )
        if v.max_model_len is not None and v.max_model_len < r.min_max_model_len:
            raise ValueError(f"vllm.max_model_len ({v.max_model_len}) is below recovery.min_max_model_len ({r.min_max_model_len})")
        return self

    @property
    def served_name(self) -> str:
        return self.model.served_name or self.model.id


# ---------------------------------------------------------------- loading




