"""Hardware profiles: the schema a profile YAML file is validated into (config/loader.py reads the
files). Pure: no processes, no GPUs, no files.

A profile names the hardware it was written for, the model, vLLM's arguments, where to pin
the engine, how far recovery may move the arguments, and an optional service target.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from llm_supervisor.config.cluster import ClusterConfig, cluster_problems
from llm_supervisor.config.frontdoor import FrontDoorConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Hardware(_Strict):
    gpu_name: str = Field(description="case-insensitive regular expression matched against NVML's GPU name")
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
    id: str = Field(min_length=1, description="Hugging Face id or local folder")
    served_name: str | None = Field(default=None, min_length=1)
    revision: str | None = None
    trust_remote_code: bool = False


class VllmArgs(_Strict):
    """vLLM's arguments: typed for the ones the supervisor reasons about, the rest in extra_args."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=16, description="None: the model's own limit")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    data_parallel_size: int = Field(default=1, ge=1, le=64)
    max_num_seqs: int | None = Field(default=None, ge=1)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    block_size: int | None = Field(default=None, ge=1, le=1024)
    enforce_eager: bool = False
    enable_prefix_caching: bool | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"] = "auto"
    quantization: str | None = None
    load_format: str | None = None
    disable_custom_all_reduce: bool = False
    cpu_offload_gb: float | None = Field(default=None, ge=0, le=4096,
                                         description="GiB of weights per GPU kept in CPU memory, read over PCIe every step")
    swap_space: float | None = Field(default=None, ge=0, le=1024,
                                     description="GiB of CPU memory per GPU vLLM reserves for swapped KV blocks (its default: 4)")
    api_key: SecretStr | None = None
    extra_args: list[str] = Field(default_factory=list, description="passed to vllm serve as they are")

    @field_validator("extra_args")
    @classmethod
    def _no_typed_duplicates(cls, value: list[str]) -> list[str]:
        typed = {"--" + name.replace("_", "-") for name in cls.model_fields if name != "extra_args"}
        for arg in value:
            flag = arg.split("=", 1)[0]
            if flag in typed:
                raise ValueError(f"{flag} has its own key (vllm.{flag[2:].replace('-', '_')}); set it there")
        return value

    @property
    def effective_block_size(self) -> int:
        return self.block_size or 16


class Affinity(_Strict):
    mode: Literal["auto", "explicit", "none"] = "auto"
    cpus: list[int] | None = Field(default=None, description="explicit CPU list (mode: explicit)")
    numa_nodes: list[int] | None = Field(default=None, description="explicit NUMA nodes (mode: explicit)")
    memory_policy: Literal["preferred", "bind", "none"] = "preferred"
    smt: bool = True
    reserve_cores: int = Field(default=1, ge=0, le=64, description="cores left for the OS and the daemon")

    @field_validator("cpus", "numa_nodes", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_cpulist(value)
        if isinstance(value, int):
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
    min_max_model_len: int = Field(default=2048, ge=16)
    max_max_model_len: int | None = Field(default=None, ge=16)
    min_gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    max_gpu_memory_utilization: float = Field(default=0.95, gt=0, le=1)
    max_attempts: int = Field(default=5, ge=1, le=100, description="launches per failure streak")
    backoff_initial_s: float = Field(default=2.0, ge=0, le=3600)
    backoff_max_s: float = Field(default=60.0, ge=0, le=86400)
    startup_timeout_s: float = Field(default=1200.0, gt=0, description="launch to ready, at most")
    stall_timeout_s: float = Field(default=300.0, gt=0, description="startup with no output, at most")
    allow_long_context: bool = Field(default=False, description="allow max_model_len above the model's limit")
    plan_first_launch: bool = Field(default=True, description="shorten the first launch's max_model_len to what "
                                    "the planner predicts fits, instead of letting vLLM fail first")
    max_cpu_offload_gb: float = Field(default=0.0, ge=0, le=4096, description="the most weights (GiB per GPU) the "
                                      "planner and recovery may move to CPU memory when the model does not fit; 0 = never")

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
    context: int = Field(ge=16)


class Profile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
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
                f"tensor_parallel_size × pipeline_parallel_size × data_parallel_size = "
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


def parse_cpulist(text: str) -> list[int]:
    """Parse the kernel's list format ("0-3,8,10-11") into sorted CPU numbers."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if int(lo) > int(hi):
                raise ValueError(f"range {part} runs backwards")
            cpus.update(range(int(lo), int(hi) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


