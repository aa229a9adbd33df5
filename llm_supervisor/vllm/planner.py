"""Pre-flight fit planner: predicts what vLLM will print at startup (weights, available KV-cache
memory, KV tokens, maximum concurrency) and the `--max-model-len` that fits, before anything
is launched, so the first launch is right. Pure apart from reading the calibration file and the
model folder (safetensors headers).

The memory model is vLLM 0.26.0's, as its own log line states it ("Desired GPU memory
utilization is (0.3, 23.75 GiB). Actual usage is 7.56 GiB for weight, 0.62 GiB for peak
activation, 0.22 GiB for non-torch memory, and 1.0 GiB for CUDAGraph memory"):

    available KV = total × gpu_memory_utilization − weights − peak activation − non-torch
    blocks       = floor(available / (layers × page)),  page = 2 × block × kv_heads × head_dim × bytes
    KV tokens    = blocks × block_size (the smallest over the GPUs)
    concurrency  = blocks / cdiv(context, block_size)

CUDA-graph memory is not subtracted in 0.26: it comes out of the headroom above the budget,
next to the CUDA context (~0.5 GiB).

Overhead without calibration (the "cold" model; constants fitted to the H100 fixtures of
Qwen3-4B at max_num_batched_tokens 8192, max_num_seqs 1024, where vLLM printed 0.62 GiB peak
activation with a warm torch.compile cache, 0.80 GiB cold, 0.22 GiB non-torch):

    activation (warm) = max(T × width × 2 B, S × vocab × 4 B) + 0.02 GiB
        T = max_num_batched_tokens, S = min(max_num_seqs, T)
        width = 3 × intermediate / TP + 4 × hidden  (gate/up output, activated intermediate,
                hidden-size buffers; MoE: top-k experts' intermediates)
        S × vocab × 4 B: the sampler warm-up's float32 logits for S sequences
    activation (cold) = activation (warm) × 1.30   (0.80 / 0.62: compiling and autotuning
        allocate on top of the warm peak; eager mode is counted as cold)
    non-torch         = 0.22 GiB on one GPU, + 0.30 GiB with several (NCCL, custom all-reduce;
                        not measured here)
    weights (vLLM)    = tensor bytes + 2 MiB per layer (allocator slack: 7.49 GiB of tensors
                        showed as 7.56 GiB)

With calibration (a `Calibration` entry learned from an earlier log of the same model, vLLM
version, GPU and TP), the learned overhead replaces the model: activation scaled by the
model's ratio when max_num_batched_tokens/max_num_seqs differ, non-torch as observed. A
different max_model_len changes torch.compile's cache key, so such a launch compiles cold; a
warm observation is then raised by the same 1.30 factor (and a cold one lowered by it for a
launch whose compile cache is warm).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from llm_supervisor.vllm import modelshape as modelinfo
from llm_supervisor.errors import BadInput
from llm_supervisor.vllm.logparse import parse_log
from llm_supervisor.vllm.modelshape import GIB, MIB, ModelShape, WeightInventory
from llm_supervisor.config.profile import Hardware, Profile, Recovery, Target, VllmArgs
from llm_supervisor.store.state import atomic_write

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- fitted constants (see module doc)

ACTIVATION_BYTES = 2
SAMPLER_LOGIT_BYTES = 4
ACTIVATION_SLACK_GIB = 0.02
COLD_ACTIVATION_FACTOR = 1.30
NON_TORCH_GIB = 0.22
NON_TORCH_MULTI_GPU_GIB = 0.30
WEIGHT_SLACK_PER_LAYER_BYTES = 2 * MIB
CUDA_CONTEXT_GIB = 0.5
CUDA_GRAPH_ESTIMATE_GIB = 1.0
DEFAULT_VLLM_VERSION = "0.26.0"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = 1

# NVML's total memory for cards as sold (MiB); ECC on the A10 keeps 1/16 back
TYPICAL_NVML_TOTAL_MIB: tuple[tuple[str, int], ...] = (
    (r"4090", 24564),
    (r"\bA10\b", 23028),
    (r"3090", 24576),
    (r"3080", 20480),
    (r"L4\b", 23034),
    (r"A100.*80", 81920),
    (r"H100", 81559),
    (r"H200", 143771),
)


class CalibrationError(BadInput):
    """A log that does not hold what calibration needs."""


# ---------------------------------------------------------------- small helpers


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """"0.26.0" → (0, 26, 0); "0.11.1rc2.dev5" → (0, 11, 1); None when unparseable."""
    if not text:
        return None
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", str(text).strip())
    if not m:
        return None
    return tuple(int(g) for g in m.groups(default="0"))


def default_batch_limits(gpu_total_gib: float, gpu_name: str | None = None,
                         vllm_version: str | None = None) -> tuple[int, int]:
    """vLLM's defaults for `vllm serve` (max_num_batched_tokens, max_num_seqs).

    From ~0.9 (`EngineArgs.get_batch_defaults`): 8192 / 1024 on a GPU of 70 GiB or more that is
    not an A100, else 2048 / 256. Before, 8192 on H100/H200 by name, else 2048, with 256
    sequences."""
    name = (gpu_name or "").lower()
    version = parse_version(vllm_version)
    if version is not None and version < (0, 9):
        big = "h100" in name or "h200" in name
        return (8192 if big else 2048), 256
    if gpu_total_gib >= 70 and "a100" not in name:
        return 8192, 1024
    return 2048, 256


def gpu_label(pattern: str) -> str:
    """A profile's GPU regex as a card name: "RTX 4090 ?D" → "RTX 4090 D", "\\bA10\\b" → "A10"."""
    return re.sub(r"\\[bB]|[?^$()]|\\", "", pattern).strip()


def stated_total_gib(hardware: Hardware) -> float:
    """The memory NVML would report for the profile's stated card: known cards from a table,
    else the stated size less 0.1%."""
    label = gpu_label(hardware.gpu_name)
    for pattern, mib in TYPICAL_NVML_TOTAL_MIB:
        if re.search(pattern, label, re.I) and abs(mib / 1024 - hardware.gpu_memory_gib) < 4:
            return mib / 1024
    return hardware.gpu_memory_gib * 0.999


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _fmt_int(n: int | float) -> str:
    return f"{int(n):,}"


def _gib(x: float) -> str:
    return f"{x:.2f} GiB"


def _norm_gpu(name: str | None) -> str:
    return re.sub(r"\s+", " ", (name or "").strip().lower())


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*", text, re.I)
    if not m:
        return None
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[(m.group(2) or "")[:1].lower()]
    return int(float(m.group(1)) * scale)


def _extra_arg(args: VllmArgs, flag: str) -> str | None:
    """The value of `--flag` in extra_args (`--flag=v` or `--flag v`)."""
    items = list(args.extra_args)
    for i, item in enumerate(items):
        if item == flag and i + 1 < len(items):
            return items[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- the overhead model


def estimate_activation_gib(shape: ModelShape, tensor_parallel: int, max_num_batched_tokens: int,
                            max_num_seqs: int, cold: bool = True) -> float:
    """Peak activation of vLLM's profiling run on one GPU (see the module docstring)."""
    tokens = max(1, max_num_batched_tokens)
    seqs = max(1, min(max_num_seqs, tokens))
    forward = tokens * shape.activation_width(tensor_parallel) * ACTIVATION_BYTES
    sampler = seqs * shape.vocab_size * SAMPLER_LOGIT_BYTES
    warm = max(forward, sampler) / GIB + ACTIVATION_SLACK_GIB
    return warm * COLD_ACTIVATION_FACTOR if cold else warm


def estimate_non_torch_gib(world_size: int) -> float:
    """Memory outside PyTorch's allocator that grows during startup (cuBLAS workspaces, NCCL)."""
    return NON_TORCH_GIB + (NON_TORCH_MULTI_GPU_GIB if world_size > 1 else 0.0)


@dataclass(frozen=True)
class Overhead:
    activation_gib: float
    non_torch_gib: float
    cold: bool
    source: str  # "model" or "calibration"
    note: str = ""

    @property
    def total_gib(self) -> float:
        return self.activation_gib + self.non_torch_gib


# ---------------------------------------------------------------- calibration


@dataclass
class Observation:
    """What one vLLM start showed about this host: the overhead beyond the weights, and the
    configuration it was measured at. Keyed by model, vLLM version, GPU name and TP."""

    model: str
    vllm_version: str | None
    gpu_name: str
    tensor_parallel: int
    overhead_gib: float
    weights_gib: float | None = None
    activation_gib: float | None = None
    non_torch_gib: float | None = None
    compile_cold: bool | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None
    kv_cache_dtype: str | None = None
    quantization: str | None = None
    pipeline_parallel: int = 1
    cuda_graph_gib: float | None = None
    available_kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    requested_gib: float | None = None
    gpu_memory_utilization: float | None = None
    gpu_total_gib: float | None = None
    learned_at: float = 0.0
    source: str = ""

    @property
    def key(self) -> str:
        return calibration_key(self.model, self.vllm_version, self.gpu_name, self.tensor_parallel)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Observation":
        known = {f.name for f in fields(cls)}
        obs = cls(**{k: v for k, v in data.items() if k in known})
        if not isinstance(obs.overhead_gib, (int, float)) or not isinstance(obs.model, str):
            raise ValueError("observation lacks overhead_gib or model")
        return obs

    def same_compile(self, args: VllmArgs, max_model_len: int, tokens: int, seqs: int) -> bool:
        """Would a launch with these arguments find this start's torch.compile cache?"""
        return (
            self.max_model_len == max_model_len
            and self.max_num_batched_tokens in (None, tokens)
            and self.max_num_seqs in (None, seqs)
            and bool(self.enforce_eager) == bool(args.enforce_eager)
            and (self.kv_cache_dtype or "auto") == (args.kv_cache_dtype or "auto")
        )


def calibration_key(model: str, vllm_version: str | None, gpu_name: str, tensor_parallel: int) -> str:
    return f"{model}|{vllm_version or '?'}|{_norm_gpu(gpu_name)}|tp{int(tensor_parallel)}"


@dataclass
class CalibrationEntry:
    """The latest warm-compile and cold-compile observations for one key."""

    model: str
    vllm_version: str | None
    gpu_name: str
    tensor_parallel: int
    warm: Observation | None = None
    cold: Observation | None = None

    @property
    def observations(self) -> list[Observation]:
        return [o for o in (self.warm, self.cold) if o is not None]

    @property
    def latest(self) -> Observation | None:
        obs = self.observations
        return max(obs, key=lambda o: o.learned_at) if obs else None

    def add(self, obs: Observation) -> None:
        # an unknown compile state is filed as warm: predicting a cold launch from it then adds
        # the cold delta, the conservative direction
        if obs.compile_cold or obs.enforce_eager:
            self.cold = obs
        else:
            self.warm = obs

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "vllm_version": self.vllm_version, "gpu_name": self.gpu_name,
            "tensor_parallel": self.tensor_parallel,
            "warm": self.warm.to_json() if self.warm else None,
            "cold": self.cold.to_json() if self.cold else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CalibrationEntry":
        entry = cls(str(data["model"]), data.get("vllm_version"), str(data["gpu_name"]), int(data["tensor_parallel"]))
        for kind in ("warm", "cold"):
            if isinstance(data.get(kind), dict):
                setattr(entry, kind, Observation.from_json(data[kind]))
        return entry

    def overhead(self, shape: ModelShape, tensor_parallel: int, tokens: int, seqs: int, cold: bool) -> Overhead:
        """The learned overhead for a launch at (tokens, seqs), cold or warm compile."""
        base = (self.cold if cold else self.warm) or (self.warm if cold else self.cold)
        assert base is not None
        world = tensor_parallel * base.pipeline_parallel
        if base.activation_gib is not None and base.non_torch_gib is not None:
            act, nt = base.activation_gib, base.non_torch_gib
        else:
            nt = min(estimate_non_torch_gib(world), base.overhead_gib)
            act = max(0.0, base.overhead_gib - nt)
        base_cold = bool(base.compile_cold or base.enforce_eager)
        notes = []
        if base_cold and not cold:
            act /= COLD_ACTIVATION_FACTOR
            notes.append("warm compile cache: learned cold activation ÷ 1.30")
        elif cold and not base_cold:
            act *= COLD_ACTIVATION_FACTOR
            notes.append("cold compile: learned warm activation × 1.30")
        b_tokens = base.max_num_batched_tokens or tokens
        b_seqs = base.max_num_seqs or seqs
        if (b_tokens, b_seqs) != (tokens, seqs):
            ratio = (estimate_activation_gib(shape, tensor_parallel, tokens, seqs, cold=False)
                     / estimate_activation_gib(shape, tensor_parallel, b_tokens, b_seqs, cold=False))
            act *= ratio
            notes.append(f"activation scaled ×{ratio:.2f} from max_num_batched_tokens {b_tokens}, max_num_seqs {b_seqs}")
        note = f"overhead learned from {base.source or 'an earlier start'}" + (f" ({'; '.join(notes)})" if notes else "")
        return Overhead(act, nt, cold, "calibration", note)


class Calibration:
    """This host's learned overheads: JSON in <state_dir>/calibration.json, written atomically
    (temporary file + os.replace). A corrupt file is ignored with a warning, never a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []
        self._entries: dict[str, CalibrationEntry] = {}
        self.load()

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> "Calibration":
        return cls(Path(state_dir) / CALIBRATION_FILE)

    # --- reading

    def load(self) -> None:
        self._entries = self._read()

    def _read(self) -> dict[str, CalibrationEntry]:
        try:
            text = self.path.read_bytes()  # decoded by json.loads: bad UTF-8 is corruption too
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"{self.path}: cannot read calibration ({exc.__class__.__name__}); ignoring it")
            return {}
        try:
            data = json.loads(text)
            raw = data["entries"]
            if not isinstance(raw, dict):
                raise ValueError("entries is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            self._warn(f"{self.path}: calibration file is corrupt ({exc}); ignoring it")
            return {}
        out: dict[str, CalibrationEntry] = {}
        for key, value in raw.items():
            try:
                entry = CalibrationEntry.from_json(value)
            except (ValueError, KeyError, TypeError) as exc:
                self._warn(f"{self.path}: skipping a bad calibration entry {key!r} ({exc})")
                continue
            out[calibration_key(entry.model, entry.vllm_version, entry.gpu_name, entry.tensor_parallel)] = entry
        return out

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("%s", text)

    def entries(self) -> list[CalibrationEntry]:
        return list(self._entries.values())

    def lookup(self, model: str, vllm_version: str | None, gpu_name: str | None,
               tensor_parallel: int) -> CalibrationEntry | None:
        """The entry for exactly this key, else the newest for the same model, GPU and TP under
        another vLLM version."""
        if not gpu_name:
            return None
        exact = self._entries.get(calibration_key(model, vllm_version, gpu_name, tensor_parallel))
        if exact is not None:
            return exact
        others = [e for e in self._entries.values()
                  if e.model == model and _norm_gpu(e.gpu_name) == _norm_gpu(gpu_name)
                  and e.tensor_parallel == tensor_parallel and e.latest is not None]
        return max(others, key=lambda e: e.latest.learned_at) if others else None  # type: ignore[union-attr]

    # --- writing

    def record(self, obs: Observation) -> CalibrationEntry:
        """Add an observation (re-reading the file first, so concurrent writers lose nothing
        but their own race) and write the file atomically."""
        current = self._read()
        entry = current.get(obs.key) or CalibrationEntry(obs.model, obs.vllm_version, obs.gpu_name, obs.tensor_parallel)
        entry.add(obs)
        current[obs.key] = entry
        self._entries = current
        self.save()
        return entry

    def save(self) -> None:
        data = {"format": CALIBRATION_FORMAT, "entries": {k: e.to_json() for k, e in sorted(self._entries.items())}}
        atomic_write_json(self.path, data)

    def learn_from_log(self, path: str | Path, *, model: str, gpu_name: str, gpu_total_gib: float | None = None,
                       tensor_parallel: int | None = None, save: bool = True, **overrides: Any) -> Observation:
        """Learn from a saved vLLM log and (by default) record it."""
        obs = learn_from_log(path, model=model, gpu_name=gpu_name, gpu_total_gib=gpu_total_gib,
                             tensor_parallel=tensor_parallel, **overrides)
        if save:
            self.record(obs)
        else:
            entry = self._entries.get(obs.key) or CalibrationEntry(obs.model, obs.vllm_version, obs.gpu_name, obs.tensor_parallel)
            entry.add(obs)
            self._entries[obs.key] = entry
        return obs


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half."""
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


# --- reading the facts calibration needs from a log (through logparse, the one vLLM log parser)

# StartupFacts fields calibration reads under their own names.
_PLAIN_FACTS = ("kv_cache_tokens", "max_concurrency_context", "vllm_version", "tensor_parallel_size",
                "pipeline_parallel_size", "max_model_len", "enforce_eager", "kv_cache_dtype", "quantization")

_FACT_ALIASES: dict[str, tuple[str, ...]] = {
    "model_weights_gib": ("model_weights_gib", "weights_gib", "profile_weights_gib", "weights_usage_gib"),
    "available_kv_cache_gib": ("available_kv_cache_gib",),
    "kv_cache_tokens": ("kv_cache_tokens",),
    "requested_gib": ("requested_gib", "desired_gib", "requested_memory_gib", "desired_memory_gib"),
    "gpu_memory_utilization": ("gpu_memory_utilization", "requested_utilization", "desired_utilization", "utilization"),
    "gpu_total_gib": ("gpu_total_gib", "total_gpu_gib", "total_gib", "device_total_gib", "total_memory_gib"),
    "peak_activation_gib": ("peak_activation_gib", "activation_gib", "peak_activation"),
    "non_torch_gib": ("non_torch_gib", "non_torch_memory_gib", "non_torch"),
    "cuda_graph_gib": ("cuda_graph_gib",),
    "compile_cached": ("compile_cached",),
    "max_num_batched_tokens": ("max_num_batched_tokens",),
    "max_num_seqs": ("max_num_seqs",),
    "max_model_len": ("max_model_len", "max_concurrency_context"),
    "tensor_parallel_size": ("tensor_parallel_size",),
    "pipeline_parallel_size": ("pipeline_parallel_size",),
    "vllm_version": ("vllm_version",),
    "enforce_eager": ("enforce_eager",),
    "kv_cache_dtype": ("kv_cache_dtype",),
    "quantization": ("quantization",),
}


def _fact(facts: Any, name: str) -> Any:
    for alias in _FACT_ALIASES.get(name, (name,)):
        value = facts.get(alias) if isinstance(facts, Mapping) else getattr(facts, alias, None)
        if value is not None:
            return value
    return None


def learn_from_facts(
    facts: Any,
    *,
    model: str,
    gpu_name: str,
    gpu_total_gib: float | None = None,
    tensor_parallel: int | None = None,
    vllm_version: str | None = None,
    gpu_memory_utilization: float | None = None,
    requested_gib: float | None = None,
    compile_cached: bool | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    max_model_len: int | None = None,
    source: str = "",
    now: float | None = None,
) -> Observation:
    """Turn a parsed log's startup facts (a logparse `StartupFacts`, or a mapping with the same
    names) into an Observation. Explicit keyword values win over the facts.

    Overhead = peak activation + non-torch when vLLM printed them (0.26's "Actual usage is …"),
    else requested − weights − available KV, with requested = util × total (the more precise)
    or the printed "Desired … (0.3, 23.75 GiB)"."""
    weights = _fact(facts, "model_weights_gib")
    available = _fact(facts, "available_kv_cache_gib")
    util = gpu_memory_utilization if gpu_memory_utilization is not None else _fact(facts, "gpu_memory_utilization")
    total = _fact(facts, "gpu_total_gib") if gpu_total_gib is None else gpu_total_gib
    printed_req = requested_gib if requested_gib is not None else _fact(facts, "requested_gib")
    act = _fact(facts, "peak_activation_gib")
    nt = _fact(facts, "non_torch_gib")
    requested = float(util) * float(total) if util is not None and total is not None else printed_req
    if act is not None and nt is not None:
        overhead = float(act) + float(nt)
    elif weights is not None and available is not None and requested is not None:
        overhead = float(requested) - float(weights) - float(available)
    else:
        missing = [n for n, v in (("model weights (\"Model loading took\")", weights),
                                  ("available KV cache (\"Available KV cache memory\")", available),
                                  ("the requested memory (utilization and GPU total)", requested)) if v is None]
        raise CalibrationError("cannot calibrate", [f"{source or 'log'}: cannot learn the overhead: no {m}" for m in missing])
    if overhead < -0.05:
        raise CalibrationError("cannot calibrate", [
            f"{source or 'log'}: the numbers do not add up (requested {requested} GiB < weights {weights} + KV {available} GiB);"
            " pass the GPU's total memory that run had"])
    cached = compile_cached if compile_cached is not None else _fact(facts, "compile_cached")
    tp = tensor_parallel or _fact(facts, "tensor_parallel_size") or 1
    tokens_t = max_num_batched_tokens or _fact(facts, "max_num_batched_tokens")
    seqs = max_num_seqs or _fact(facts, "max_num_seqs")
    if seqs is None and total is not None:
        seqs = default_batch_limits(float(total), gpu_name, vllm_version or _fact(facts, "vllm_version"))[1]
    return Observation(
        model=model,
        vllm_version=vllm_version or _fact(facts, "vllm_version"),
        gpu_name=gpu_name,
        tensor_parallel=int(tp),
        overhead_gib=round(max(0.0, overhead), 4),
        weights_gib=float(weights) if weights is not None else None,
        activation_gib=float(act) if act is not None else None,
        non_torch_gib=float(nt) if nt is not None else None,
        compile_cold=(not cached) if cached is not None else None,
        max_num_batched_tokens=int(tokens_t) if tokens_t else None,
        max_num_seqs=int(seqs) if seqs else None,
        max_model_len=int(max_model_len or _fact(facts, "max_model_len") or 0) or None,
        enforce_eager=_fact(facts, "enforce_eager"),
        kv_cache_dtype=_fact(facts, "kv_cache_dtype"),
        quantization=_fact(facts, "quantization"),
        pipeline_parallel=int(_fact(facts, "pipeline_parallel_size") or 1),
        cuda_graph_gib=_fact(facts, "cuda_graph_gib"),
        available_kv_cache_gib=float(available) if available is not None else None,
        kv_cache_tokens=_fact(facts, "kv_cache_tokens"),
        requested_gib=round(float(requested), 4) if requested is not None else None,
        gpu_memory_utilization=float(util) if util is not None else None,
        gpu_total_gib=float(total) if total is not None else None,
        learned_at=time.time() if now is None else now,
        source=source,
    )


def read_log_facts(path: str | Path) -> dict[str, Any]:
    """What calibration needs from a saved log, under this module's names (None values left out):
    the log parser's StartupFacts, plus what vLLM's "non-default args" line says when the memory
    lines did not (a failed start prints no utilization of its own)."""
    p = Path(path)
    try:
        facts = parse_log(p).facts
    except (OSError, UnicodeError) as exc:
        raise CalibrationError("unreadable log", [f"{p}: cannot read ({exc.__class__.__name__}: {exc})"]) from None
    merged = {name: _fact(facts, name) for name in (*_FACT_ALIASES, *_PLAIN_FACTS)}
    cli = facts.cli_args or {}
    for name in ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens"):
        if merged.get(name) is None and cli.get(name) is not None:
            merged[name] = cli[name]
    return {k: v for k, v in merged.items() if v is not None}


def learn_from_log(path: str | Path, *, model: str, gpu_name: str, gpu_total_gib: float | None = None,
                   tensor_parallel: int | None = None, **overrides: Any) -> Observation:
    """An Observation from a saved vLLM log (ready or failed after profiling)."""
    facts = read_log_facts(path)
    return learn_from_facts(facts, model=model, gpu_name=gpu_name, gpu_total_gib=gpu_total_gib,
                            tensor_parallel=tensor_parallel, source=str(path), **overrides)


# ---------------------------------------------------------------- the prediction


@dataclass
class Prediction:
    """What vLLM will print at startup with these arguments, and the context to launch with."""

    weights_gib: float
    kv_bytes_per_token: int
    available_kv_cache_gib: float
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    largest_context: int
    fits: bool
    notes: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    requested_gib: float = 0.0
    activation_gib: float = 0.0
    non_torch_gib: float = 0.0
    compile_cold: bool = True
    calibrated: bool = False
    weights_source: str = "estimate"
    num_gpu_blocks: int = 0
    block_size: int = 16
    max_num_batched_tokens: int = 0
    max_num_seqs: int = 0
    data_parallel: int = 1
    max_concurrency_per_replica: float = 0.0
    requested_max_model_len: int = 0
    target_met: bool | None = None
    target: dict[str, Any] | None = None
    gpu_total_gib: float = 0.0
    headroom_gib: float = 0.0
    # per-request blocks as a function of context: kept for concurrency_at()
    _sliding: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def overhead_gib(self) -> float:
        return self.activation_gib + self.non_torch_gib

    def blocks_per_request(self, context: int) -> int:
        return _blocks_needed(context, self.block_size, self._sliding)

    def concurrency_at(self, context: int, per_replica: bool = False) -> float:
        """Requests of `context` tokens the KV cache holds at once (all DP replicas together)."""
        need = self.blocks_per_request(context)
        per = self.num_gpu_blocks / need if need else 0.0
        return per if per_replica else per * self.data_parallel

    def to_json(self) -> dict[str, Any]:
        return {
            "weights_gib": round(self.weights_gib, 2),
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "available_kv_cache_gib": round(self.available_kv_cache_gib, 2),
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": round(self.max_concurrency, 2),
            "max_model_len": self.max_model_len,
            "largest_context": self.largest_context,
            "fits": self.fits,
            "requested_max_model_len": self.requested_max_model_len,
            "requested_gib": round(self.requested_gib, 2),
            "activation_gib": round(self.activation_gib, 2),
            "non_torch_gib": round(self.non_torch_gib, 2),
            "compile_cold": self.compile_cold,
            "calibrated": self.calibrated,
            "weights_source": self.weights_source,
            "num_gpu_blocks": self.num_gpu_blocks,
            "block_size": self.block_size,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "max_num_seqs": self.max_num_seqs,
            "data_parallel": self.data_parallel,
            "max_concurrency_per_replica": round(self.max_concurrency_per_replica, 2),
            "target": self.target,
            "target_met": self.target_met,
            "gpu_total_gib": round(self.gpu_total_gib, 2),
            "headroom_gib": round(self.headroom_gib, 2),
            "notes": list(self.notes),
            "assumptions": list(self.assumptions),
        }


def _blocks_needed(context: int, block: int, sliding: tuple[int, int] | None) -> int:
    """KV blocks one request of `context` tokens takes on every layer (vLLM's
    `max_memory_usage_bytes` / page): full attention cdiv(context, block); a sliding window
    cdiv(min(window − 1 + max_num_batched_tokens, context), block) + 1."""
    if sliding is None:
        return _cdiv(max(1, context), block)
    window, tokens = sliding
    return _cdiv(min(window - 1 + tokens, max(1, context)), block) + 1


def _largest_fitting(blocks: int, block: int, cap: int, sliding: tuple[int, int] | None,
                     enough: Any = None) -> int:
    """The largest context ≤ cap (a block multiple, unless cap itself) for which `enough(ctx)`
    holds (default: one request fits in `blocks`); 0 when none does."""
    test = enough or (lambda ctx: _blocks_needed(ctx, block, sliding) <= blocks)
    if cap <= 0:
        return 0
    if test(cap):
        return cap
    lo, hi = 0, cap // block  # in blocks: lo fits (0 trivially), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if test(mid * block):
            lo = mid
        else:
            hi = mid
    return lo * block


def _weights_per_stage(
    shape: ModelShape, args: VllmArgs, inventory: WeightInventory | None,
    entry: CalibrationEntry | None, pp: int,
) -> tuple[list[float], str]:
    """Weight GiB on one GPU of each pipeline stage, and where the figure comes from."""
    tp = args.tensor_parallel_size
    quant = args.quantization
    if entry is not None:
        usable = [o for o in entry.observations if o.weights_gib is not None and o.pipeline_parallel == pp
                  and (o.quantization or None) in (None, quant, shape.quant_method)]
        if usable:
            newest = max(usable, key=lambda o: o.learned_at)
            return [float(newest.weights_gib)] * pp, "calibration"  # type: ignore[arg-type]
    layers = shape.layers_per_stage(pp)
    if inventory is not None:
        stage_bytes = inventory.per_gpu_bytes(shape, tp, pp, quant)
        return [(b + WEIGHT_SLACK_PER_LAYER_BYTES * n) / GIB for b, n in zip(stage_bytes, layers)], "safetensors"
    stage_bytes = shape.weight_bytes_per_stage(tp, pp, args.dtype, quant)
    return [(b + WEIGHT_SLACK_PER_LAYER_BYTES * n) / GIB for b, n in zip(stage_bytes, layers)], "estimate"


def _resolve_entry(calibration: Any, model: str | None, vllm_version: str | None, gpu_name: str | None,
                   tp: int) -> CalibrationEntry | None:
    if calibration is None:
        return None
    if isinstance(calibration, CalibrationEntry):
        return calibration
    if isinstance(calibration, Observation):
        entry = CalibrationEntry(calibration.model, calibration.vllm_version, calibration.gpu_name, calibration.tensor_parallel)
        entry.add(calibration)
        return entry if calibration.tensor_parallel == tp else None
    if isinstance(calibration, Calibration):
        return calibration.lookup(model or "", vllm_version, gpu_name, tp) if model else None
    raise TypeError(f"calibration must be a Calibration, CalibrationEntry or Observation, not {type(calibration).__name__}")


def predict(
    shape: ModelShape,
    args: VllmArgs,
    gpu_total_gib: float,
    gpu_count: int,
    calibration: Calibration | CalibrationEntry | Observation | None = None,
    target: Target | None = None,
    vllm_version: str | None = None,
    *,
    recovery: Recovery | None = None,
    model: str | None = None,
    gpu_name: str | None = None,
    inventory: WeightInventory | None = None,
    compile_cached: bool | None = None,
) -> Prediction:
    """Predict vLLM's startup numbers for `args` on GPUs of `gpu_total_gib` (as NVML reports
    them), and the max_model_len the supervisor would launch with.

    calibration: a Calibration store (looked up by `model`, `vllm_version`, `gpu_name`, TP), one
    CalibrationEntry, or one Observation. recovery: the profile's bounds (min_max_model_len,
    max_max_model_len, allow_long_context). inventory: safetensors headers (exact weights).
    compile_cached: whether torch.compile's cache holds this configuration (None: inferred from
    the calibration; without one, cold)."""
    recovery = recovery or Recovery()
    version = vllm_version or DEFAULT_VLLM_VERSION
    tp, pp, dp = args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size
    block = args.effective_block_size
    model_name = model or shape.name or "the model"
    d_tokens, d_seqs = default_batch_limits(gpu_total_gib, gpu_name, version)
    tokens = args.max_num_batched_tokens or d_tokens
    seqs = args.max_num_seqs or d_seqs
    entry = _resolve_entry(calibration, model or shape.name, vllm_version, gpu_name, tp)
    notes: list[str] = []
    assumptions: list[str] = [
        f"vLLM {version} memory accounting: available KV = GPU total × gpu_memory_utilization − weights"
        " − peak activation − non-torch memory; CUDA graphs and the CUDA context use the memory above that budget",
        f"GPU total {gpu_total_gib:.2f} GiB each (as NVML reports it), block size {block}",
        f"max_num_batched_tokens {tokens}{'' if args.max_num_batched_tokens else ' (vLLM default here)'},"
        f" max_num_seqs {seqs}{'' if args.max_num_seqs else ' (vLLM default here)'}",
    ]

    # --- weights and KV bytes per token, per pipeline stage
    weights, weights_source = _weights_per_stage(shape, args, inventory, entry, pp)
    assumptions.append({
        "calibration": "weights as vLLM measured them in the calibration log",
        "safetensors": "weights from the checkpoint's safetensors headers (+2 MiB per layer allocator slack)",
        "estimate": "weights estimated from config.json (+2 MiB per layer allocator slack)",
    }[weights_source])
    stage_layers = shape.layers_per_stage(pp)
    kv_per_token = [shape.kv_bytes_per_token(tp, args.kv_cache_dtype, args.dtype, layers=n) for n in stage_layers]
    sliding: tuple[int, int] | None = None
    kind = shape.attention_kind
    if kind == "sliding" and shape.sliding_window:
        sliding = (shape.sliding_window, tokens)
        notes.append(f"every layer uses a {shape.sliding_window}-token sliding window: a request holds at most"
                     f" {_fmt_int(shape.sliding_window - 1 + tokens)} tokens of KV cache")
    elif kind == "hybrid":
        notes.append(f"{shape.num_sliding_layers} of {shape.num_layers} layers use a sliding window; the planner"
                     " counts every layer as full attention, so KV tokens and concurrency are lower bounds")
    elif kind == "mla":
        assumptions.append("MLA: one latent vector (kv_lora_rank + qk_rope_head_dim) per token and layer, on every GPU")

    # --- the budget
    requested = gpu_total_gib * args.gpu_memory_utilization
    kv_bytes_override = _extra_arg(args, "--kv-cache-memory-bytes") or _extra_arg(args, "--kv-cache-memory")
    blocks_override = _extra_arg(args, "--num-gpu-blocks-override")

    def overhead_for(cold: bool) -> Overhead:
        if entry is not None and entry.observations:
            return entry.overhead(shape, tp, tokens, seqs, cold)
        act = estimate_activation_gib(shape, tp, tokens, seqs, cold=cold)
        return Overhead(act, estimate_non_torch_gib(tp * pp), cold, "model")

    def pool(ov: Overhead) -> tuple[float, int]:
        """(available KV GiB on the tightest GPU, blocks there)."""
        best: tuple[float, int] | None = None
        for w, per_tok in zip(weights, kv_per_token):
            avail = requested - w - ov.total_gib
            if kv_bytes_override and _parse_size(kv_bytes_override):
                avail = _parse_size(kv_bytes_override) / GIB  # type: ignore[operator]
            nblocks = int(max(0.0, avail) * GIB // (per_tok * block)) if per_tok else 0
            if blocks_override and blocks_override.isdigit():
                nblocks = int(blocks_override)
            if best is None or nblocks < best[1]:
                best = (avail, nblocks)
        assert best is not None
        return best

    # --- the context vLLM would be asked for, and the caps
    limit = shape.context_limit
    asked = args.max_model_len or limit
    cap = asked
    if recovery.max_max_model_len:
        cap = min(cap, recovery.max_max_model_len)
    long_ok = recovery.allow_long_context
    if asked > limit and not long_ok:
        notes.append(f"max_model_len {_fmt_int(asked)} is above the {_fmt_int(limit)} tokens {model_name} was trained for;"
                     " vLLM refuses it unless recovery.allow_long_context is set")
    min_len = recovery.min_max_model_len

    def choose_plain(nblocks: int, largest: int, out_notes: list[str]) -> int:
        """The profile's context if one request of it fits, else the largest that does."""
        if _blocks_needed(cap, block, sliding) <= nblocks:
            if cap < asked:
                out_notes.append(f"max_model_len capped at recovery.max_max_model_len {_fmt_int(cap)}")
            return cap
        length = max(min(largest, cap) // block * block, 0)
        if length < min_len:
            out_notes.append(f"profile asks for {_fmt_int(asked)} but only {_fmt_int(largest)} tokens fit,"
                             f" below recovery.min_max_model_len {_fmt_int(min_len)}: the launch would fail")
            return min_len
        out_notes.append(f"profile asks for {_fmt_int(asked)} but {_fmt_int(largest)} fits:"
                         f" launching with {_fmt_int(length)}")
        return length

    def choose(nblocks: int) -> tuple[int, int, bool | None, list[str]]:
        """(max_model_len, largest context, target met, notes) for a pool of nblocks."""
        out_notes: list[str] = []
        largest = _largest_fitting(nblocks, block, limit if not long_ok else max(limit, asked), sliding)
        if target is None:
            return choose_plain(nblocks, largest, out_notes), largest, None, out_notes
        want, ctx = float(target.min_concurrency), int(target.context)

        def conc(c: int) -> float:
            return nblocks / _blocks_needed(c, block, sliding) * dp

        if ctx > cap:
            out_notes.append(f"target not met: its context {_fmt_int(ctx)} is above the {_fmt_int(cap)}"
                             " tokens this profile may launch with")
            fitted = choose_plain(nblocks, largest, out_notes)
            return fitted, largest, False, out_notes
        if conc(ctx) + 1e-9 < want:
            length = min(ctx, largest // block * block) if largest >= block else ctx
            out_notes.append(f"target not met: {conc(ctx):.2f} requests of {_fmt_int(ctx)} tokens fit at once,"
                             f" the profile wants {want:g}; launching with {_fmt_int(max(length, min_len))}")
            return max(length, min_len), largest, False, out_notes
        length = _largest_fitting(nblocks, block, cap, sliding, enough=lambda c: conc(c) + 1e-9 >= want)
        if length < cap:
            length = length // block * block
            out_notes.append(f"profile asks for {_fmt_int(asked)}; {_fmt_int(length)} keeps {want:g} requests of"
                             f" {_fmt_int(ctx)} tokens at once ({conc(ctx):.2f} fit): launching with {_fmt_int(length)}")
        return max(length, ctx, min_len), largest, True, out_notes

    if compile_cached is not None:
        # the caller knows the compile cache's state for this launch
        warm = bool(compile_cached) and not args.enforce_eager
        ov = overhead_for(not warm)
        avail, nblocks = pool(ov)
        length, largest, target_met, fit_notes = choose(nblocks)
    else:
        # Select the context with a cold compile (the conservative pool), then price the launch
        # with the compile state that context will really have: warm only when an earlier start
        # compiled exactly this configuration.
        cold_ov = ov = overhead_for(True)
        avail, nblocks = pool(cold_ov)
        length, largest, target_met, fit_notes = choose(nblocks)
        warm = not args.enforce_eager and entry is not None and any(
            o.same_compile(args, length, tokens, seqs) for o in entry.observations)
        if warm:
            warm_ov = overhead_for(False)
            w_avail, w_blocks = pool(warm_ov)
            w_length, w_largest, w_met, w_notes = choose(w_blocks)
            if w_length == length:  # a different length would compile cold again: keep the cold choice
                ov, avail, nblocks, largest, target_met, fit_notes = warm_ov, w_avail, w_blocks, w_largest, w_met, w_notes
            else:
                warm = False
    notes[:0] = fit_notes
    if ov.note:
        notes.append(ov.note)
    elif entry is None:
        assumptions.append("no calibration: overhead (peak activation, non-torch) from the shape model"
                           " fitted to vLLM 0.26.0 on an H100")
    if ov.source == "model" and tp * pp > 1:
        assumptions.append(f"non-torch memory with {tp * pp} GPUs per replica: {estimate_non_torch_gib(tp * pp):.2f} GiB"
                           " (NCCL and all-reduce buffers; not measured)")

    kv_tokens = nblocks * block
    need = _blocks_needed(length, block, sliding)
    per_replica = nblocks / need if need else 0.0
    fits = avail > 0 and nblocks > 0 and need <= nblocks and (long_ok or length <= limit)
    if avail <= 0:
        notes.append(f"no memory left for the KV cache: {_gib(requested)} budget − {_gib(max(weights))} weights"
                     f" − {_gib(ov.total_gib)} overhead = {_gib(avail)}; raise gpu_memory_utilization or use more GPUs")
    elif need > nblocks and not any("min_max_model_len" in n for n in notes):
        notes.append(f"even {_fmt_int(length)} tokens (recovery.min_max_model_len {_fmt_int(min_len)}) do not fit:"
                     f" the KV cache holds {_fmt_int(kv_tokens)} tokens")

    # --- headroom above the budget: CUDA graphs and the CUDA context live there
    headroom = gpu_total_gib - requested
    graphs = 0.0 if args.enforce_eager else max(
        [o.cuda_graph_gib for o in (entry.observations if entry else []) if (o.cuda_graph_gib or 0) > 0] or [CUDA_GRAPH_ESTIMATE_GIB])
    if headroom < graphs + CUDA_CONTEXT_GIB:
        safe_util = max(0.0, (gpu_total_gib - graphs - CUDA_CONTEXT_GIB) / gpu_total_gib)
        notes.append(f"only {_gib(headroom)} stays outside the {args.gpu_memory_utilization:g} budget; CUDA graphs"
                     f" (~{graphs:.1f} GiB) and the CUDA context (~{CUDA_CONTEXT_GIB} GiB) need more: graph capture may run"
                     f" out of memory (gpu_memory_utilization ≤ {math.floor(safe_util * 100) / 100:.2f} or enforce_eager avoids it)")
    if dp > 1:
        assumptions.append(f"{dp} data-parallel replicas: KV tokens are per replica, concurrency counts all replicas")
    assumptions.append("torch.compile cache " + ("warm (this configuration was compiled before)" if warm else "cold"))

    return Prediction(
        weights_gib=max(weights),
        kv_bytes_per_token=max(kv_per_token),
        available_kv_cache_gib=avail,
        kv_cache_tokens=kv_tokens,
        max_concurrency=per_replica * dp,
        max_model_len=length,
        largest_context=largest,
        fits=fits,
        notes=notes,
        assumptions=assumptions,
        requested_gib=requested,
        activation_gib=ov.activation_gib,
        non_torch_gib=ov.non_torch_gib,
        compile_cold=not warm,
        calibrated=ov.source == "calibration",
        weights_source=weights_source,
        num_gpu_blocks=nblocks,
        block_size=block,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        data_parallel=dp,
        max_concurrency_per_replica=per_replica,
        requested_max_model_len=asked,
        target_met=target_met,
        target={"min_concurrency": target.min_concurrency, "context": target.context} if target else None,
        gpu_total_gib=gpu_total_gib,
        headroom_gib=headroom,
        _sliding=sliding,
    )


def predict_profile(
    profile: Profile,
    gpu_total_gib: float,
    gpu_count: int,
    calibration: Calibration | CalibrationEntry | Observation | None = None,
    vllm_version: str | None = None,
    *,
    args: VllmArgs | None = None,
    gpu_name: str | None = None,
    hf_home: str | None = None,
    compile_cached: bool | None = None,
) -> Prediction:
    """predict() for a profile: loads the shape (config.json) and, where the checkpoint is on
    disk, its safetensors headers; applies the profile's target and recovery bounds.
    Raises modelinfo.ModelConfigNotFound when no config.json can be found."""
    shape = modelinfo.load_shape(profile.model.id, hf_home)
    inventory = None
    problem = None
    try:
        inventory = modelinfo.load_weight_inventory(profile.model.id, hf_home)
    except modelinfo.SafetensorsError as exc:
        problem = f"safetensors headers unreadable ({exc}); weights estimated from config.json"
    result = predict(shape, args or profile.vllm, gpu_total_gib, gpu_count, calibration, profile.target,
                     vllm_version, recovery=profile.recovery, model=profile.model.id, gpu_name=gpu_name,
                     inventory=inventory, compile_cached=compile_cached)
    if problem:
        result.notes.append(problem)
    return result


# ---------------------------------------------------------------- launch checks


def _or_list(values: Sequence[int]) -> str:
    items = [str(v) for v in values]
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def check_launch(shape: ModelShape, profile: Profile, args: VllmArgs, gpu_total_gib: float,
                 gpu_count: int, inventory: WeightInventory | None = None) -> list[str]:
    """Problems that doom a launch with `args`, one clear line each (empty: none). The caller
    raises PlanRefused(lines)."""
    problems: list[str] = []
    model = profile.model.id
    tp, pp, dp = args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size
    need_gpus = tp * pp * dp
    if need_gpus > gpu_count:
        problems.append(f"tensor_parallel_size {tp} × pipeline_parallel_size {pp} × data_parallel_size {dp}"
                        f" needs {need_gpus} GPUs but {gpu_count} {'is' if gpu_count == 1 else 'are'} present")
    why = shape.tensor_parallel_problem(tp)
    valid = _or_list(shape.valid_tensor_parallel_sizes())
    if why == "heads":
        problems.append(f"tensor_parallel_size {tp} does not divide the {shape.num_heads} attention heads of {model}; use {valid}")
    elif why == "kv_replicas":
        problems.append(f"tensor_parallel_size {tp} is not a multiple of the {shape.num_kv_heads} key-value heads of {model}"
                        f" (vLLM replicates KV heads only whole); use {valid}")
    elif why == "kv_heads":
        problems.append(f"tensor_parallel_size {tp} does not divide the {shape.num_kv_heads} key-value heads of {model}; use {valid}")
    method = shape.quant_method or args.quantization
    if method and any(q in str(method) for q in ("awq", "gptq")) and shape.quant_group_size and shape.quant_group_size > 0:
        inter = (shape.moe_intermediate_size if shape.num_experts else None) or shape.intermediate_size
        if inter % tp == 0 and (inter // tp) % shape.quant_group_size:
            ok = [t for t in shape.valid_tensor_parallel_sizes() if inter % t == 0 and (inter // t) % shape.quant_group_size == 0]
            problems.append(f"tensor_parallel_size {tp} splits the intermediate size {inter} of {model} into"
                            f" {inter // tp}, not a multiple of the {method} group size {shape.quant_group_size}; use {_or_list(ok)}")
    if pp > shape.num_layers:
        problems.append(f"pipeline_parallel_size {pp} is more than the {shape.num_layers} layers of {model}")
    limit = shape.context_limit
    if args.max_model_len and args.max_model_len > limit and not profile.recovery.allow_long_context:
        problems.append(f"max_model_len {args.max_model_len} is above the {limit} tokens {model} supports"
                        f" (max_position_embeddings); lower vllm.max_model_len or set recovery.allow_long_context: true")
    if need_gpus <= gpu_count and not why:
        stage_bytes = (inventory.per_gpu_bytes(shape, tp, pp, args.quantization) if inventory is not None
                       else shape.weight_bytes_per_stage(tp, pp, args.dtype, args.quantization))
        weights = max((b + WEIGHT_SLACK_PER_LAYER_BYTES * n) / GIB for b, n in zip(stage_bytes, shape.layers_per_stage(pp)))
        budget = args.gpu_memory_utilization * gpu_total_gib
        if weights > budget:
            needed_util = math.ceil(weights / gpu_total_gib * 100) / 100
            if needed_util < 1:
                fix = (f"raise vllm.gpu_memory_utilization above {needed_util:.2f}, "
                       "use more GPUs (tensor_parallel_size) or a quantized model")
            else:
                fix = "use more GPUs (tensor_parallel_size) or a quantized model"
            problems.append(f"weights need {weights:.2f} GiB per GPU but gpu_memory_utilization"
                            f" {args.gpu_memory_utilization:g} × {gpu_total_gib:.2f} GiB gives {budget:.2f} GiB; {fix}")
    return problems


# ---------------------------------------------------------------- concurrency table


def concurrency_table(
    shape: ModelShape,
    args: VllmArgs,
    gpu_total_gib: float,
    gpu_count: int,
    contexts: Iterable[int] = (4096, 8192, 32768),
    calibration: Calibration | CalibrationEntry | Observation | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Requests of each context length the KV cache holds at once with `args` (all DP replicas
    together); `fits` is False where one request of that length does not fit or exceeds the
    model's context. Extra keyword arguments go to predict()."""
    base = predict(shape, args, gpu_total_gib, gpu_count, calibration, **kwargs)
    limit = shape.context_limit
    rows = []
    for ctx in contexts:
        ok = base.blocks_per_request(ctx) <= base.num_gpu_blocks and ctx <= limit
        rows.append({"context": int(ctx), "max_concurrency": round(base.concurrency_at(ctx), 2) if ok else 0.0,
                     "fits": ok, "kv_cache_tokens": base.kv_cache_tokens})
    return rows


def format_concurrency_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of concurrency_table() rows."""
    lines = ["| context (tokens) | concurrent requests |", "|---:|---:|"]
    for row in rows:
        value = f"{row['max_concurrency']:.2f}×" if row["fits"] else "does not fit"
        lines.append(f"| {row['context']:,} | {value} |")
    return "\n".join(lines)
