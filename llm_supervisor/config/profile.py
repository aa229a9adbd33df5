"""Hardware profiles: YAML files validated into pydantic models. Pure: no processes, no GPUs.

A profile names the hardware it was written for, the model, vLLM's arguments, where to pin
the engine, how far recovery may move the arguments, and an optional service target.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from llm_supervisor.cluster.spec import ClusterConfig, profile_problems
from llm_supervisor.errors import ProfileError


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
    cluster: ClusterConfig | None = Field(default=None, description="a deployment across hosts on Ray (cluster.py)")

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
            problems = profile_problems(self)
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


SHOWN_INPUT_CHARS = 80


def _shown(value: Any) -> str:
    """The offending value for an error line: repr (one line), cut short."""
    text = repr(value)
    return text if len(text) <= SHOWN_INPUT_CHARS else text[:SHOWN_INPUT_CHARS] + "…"


def _is_secret_loc(loc: str) -> bool:
    return "api_key" in loc or (loc.startswith("env.") and _is_secret_name(loc[4:]))


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"))


def _render_errors(source: str, exc: ValidationError, set_keys: list[str] | tuple[str, ...] = ()) -> list[str]:
    """One line per problem: "FILE: key: what is wrong", or "--set KEY: what is wrong" when the
    offending value came from a `--set` override (the longest override that covers the key)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(err["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else ""
            msg = f"unknown key (allowed: {allowed})" if allowed else "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be")
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            shown = "***" if _is_secret_loc(loc) else _shown(err["input"])
            msg = f"{msg} (got {shown})"
        msg = " ".join(msg.removeprefix("Value error, ").split())
        covering = [k for k in set_keys if loc == k or loc.startswith(k + ".")]
        if covering:
            key = max(covering, key=len)
            lines.append(f"--set {key}: {msg}" if loc == key else f"--set {key}: {loc}: {msg}")
        else:
            lines.append(f"{source}: {loc}: {msg}")
    return lines


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Profile
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return None
        model = nxt
    return model


def resolve_profile_path(name_or_path: str, profiles_dir: Path) -> Path:
    """A shipped name (`4090d-qwen3-4b`) or a path to a YAML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if candidate.is_dir():
            raise ProfileError("profile is a directory", [f"{name_or_path}: is a directory, not a profile file"])
        if candidate.exists() and not candidate.is_file():
            # a FIFO or a device would block or never end; only regular files are profiles
            raise ProfileError("profile is not a file", [f"{name_or_path}: not a regular file"])
        if not candidate.is_file():
            raise ProfileError("profile not found", [f"{name_or_path}: no such profile file"])
        return candidate
    for suffix in (".yaml", ".yml"):
        path = profiles_dir / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    known = ", ".join(list_profile_names(profiles_dir)) or "none"
    raise ProfileError("profile not found", [f"--profile: no profile named {name_or_path!r} in {profiles_dir} (known: {known})"])


def list_profile_names(profiles_dir: Path) -> list[str]:
    if not profiles_dir.is_dir():
        return []
    return sorted(p.stem for p in profiles_dir.iterdir() if p.suffix in (".yaml", ".yml"))


def read_profile_data(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError("unreadable profile", [f"{path}: cannot read ({exc.__class__.__name__}: {exc})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError("invalid YAML", [f"{path}: not valid YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise ProfileError("invalid profile", [f"{path}: (top level): must be a mapping of keys, got {type(data).__name__}"])
    return data


def _plain(text: str) -> str:
    """User text for an error line: as typed when plain, else quoted (one line, cut short)."""
    if text and text.isprintable() and text == text.strip() and len(text) <= SHOWN_INPUT_CHARS:
        return text
    return _shown(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`vllm.max_model_len=10000` → (["vllm", "max_model_len"], 10000). Values are YAML scalars."""
    if "=" not in text:
        raise ProfileError("bad --set", [f"--set {_plain(text)}: expected KEY=VALUE with a dotted key (e.g. vllm.port=8001)"])
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ProfileError("bad --set", [f"--set {_plain(key)}: not a dotted key (e.g. vllm.max_model_len)"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if parts[-1] == "api_key" or parts[-1] == "extra_args" and isinstance(value, str):
        value = raw if parts[-1] == "api_key" else value.split()
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ProfileError("bad --set", [f"--set {'.'.join(parts)}: {part} is not a section"])
            node = child
        node[parts[-1]] = value
    return data


def load_profile(
    name_or_path: str,
    profiles_dir: Path,
    overrides: list[str] | None = None,
    model: str | None = None,
) -> Profile:
    """Load, override (`--set`, `--model`) and validate a profile; ProfileError lists every problem."""
    path = resolve_profile_path(name_or_path, profiles_dir)
    data = read_profile_data(path)
    overrides = list(overrides or [])
    apply_overrides(data, overrides)
    set_keys = [".".join(parse_override(text)[0]) for text in overrides]
    if model:
        section = data.setdefault("model", {})
        if isinstance(section, dict):
            section["id"] = model
    return validate_profile(data, str(path), set_keys)


def validate_profile(data: dict[str, Any], source: str, set_keys: list[str] | tuple[str, ...] = ()) -> Profile:
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"invalid profile {source}", _render_errors(source, exc, set_keys)) from None


def profile_to_yaml(profile: Profile) -> str:
    """The effective profile as YAML, with secrets masked."""
    data = profile.model_dump(mode="json", exclude_none=True)
    if profile.vllm.api_key is not None:
        data["vllm"]["api_key"] = "***"
    for name, value in data.get("env", {}).items():
        if value and _is_secret_name(name):
            data["env"][name] = "***"
    return yaml.safe_dump(data, sort_keys=False)
