"""Calibration: what earlier vLLM starts on this host showed about the overhead beyond the
weights, so the next prediction uses measured numbers instead of the shape model. Pure: the
calibration file is kept by llm_supervisor.store.calibration.

An Observation is one start (ready or failed after profiling), keyed by model, vLLM version, GPU
name and TP; a CalibrationEntry keeps the latest warm-compile and cold-compile observations of
one key and turns them into the overhead for another launch (scaled by the shape model's ratio
when max_num_batched_tokens/max_num_seqs differ, and by the cold factor across compile states).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.errors import BadInput
from llm_supervisor.vllm import memory, runner
from llm_supervisor.vllm.modelshape import ModelShape

class CalibrationError(BadInput):
    """A log that does not hold what calibration needs."""


def norm_gpu(name: str | None) -> str:
    return re.sub(r"\s+", " ", (name or "").strip().lower())


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
    cuda_graph_sizes: list[int] | None = None  # the batch sizes captured (the graphs' memory grows with them)
    available_kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    requested_gib: float | None = None
    gpu_memory_utilization: float | None = None
    gpu_total_gib: float | None = None
    v1_sampler: bool | None = None   # ran on the V1 runner where V2 is the default (runner.v1_sampler_seen)
    cpu_offloaded_gib: float | None = None  # weights vLLM kept in CPU memory ("Total CPU offloaded parameters")
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
    return f"{model}|{vllm_version or '?'}|{norm_gpu(gpu_name)}|tp{int(tensor_parallel)}"


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
        # the cold delta, the conservative direction; eager mode compiles nothing: warm
        if obs.compile_cold and not obs.enforce_eager:
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

    def overhead(self, shape: ModelShape, tensor_parallel: int, tokens: int, seqs: int, cold: bool,
                 v1_sampler: bool = False, cpu_offload: bool = False) -> memory.Overhead:
        """The learned overhead for a launch at (tokens, seqs), cold or warm compile, on the V1
        runner's sampler warm-up or not, offloading or not: the learned activation scaled by the
        shape model's ratio between the launch and the start it was learned from, the non-torch
        memory moved by the model's difference for offload."""
        base = (self.cold if cold else self.warm) or (self.warm if cold else self.cold)
        assert base is not None
        engine = memory.engine_memory(self.vllm_version)  # e.g. 0.34's cold compile peaks as its warm one
        world = tensor_parallel * base.pipeline_parallel
        if base.activation_gib is not None and base.non_torch_gib is not None:
            act, nt = base.activation_gib, base.non_torch_gib
        else:
            nt = min(memory.estimate_non_torch_gib(world, engine=engine), base.overhead_gib)
            act = max(0.0, base.overhead_gib - nt)
        base_cold = bool(base.compile_cold and not base.enforce_eager)
        b_tokens = base.max_num_batched_tokens or tokens
        b_seqs = base.max_num_seqs or seqs
        b_v1 = bool(base.v1_sampler)
        notes = []
        if (base_cold, b_tokens, b_seqs, b_v1) != (cold, tokens, seqs, v1_sampler):
            ratio = (memory.estimate_activation_gib(shape, tensor_parallel, tokens, seqs, cold=cold, v1_sampler=v1_sampler,
                                                    engine=engine)
                     / memory.estimate_activation_gib(shape, tensor_parallel, b_tokens, b_seqs, cold=base_cold,
                                                      v1_sampler=b_v1, engine=engine))
            act *= ratio
            why = [w for w, differs in (
                ("warm compile cache" if base_cold else "cold compile", base_cold != cold),
                (f"max_num_batched_tokens {b_tokens} → {tokens}", b_tokens != tokens),
                (f"max_num_seqs {b_seqs} → {seqs}", b_seqs != seqs),
                ("V1 runner's sampler warm-up" if v1_sampler else "no V1 sampler warm-up", b_v1 != v1_sampler))
                if differs]
            notes.append(f"activation ×{ratio:.2f}: {', '.join(why)}")
        offload_then = bool(base.cpu_offloaded_gib)
        if cpu_offload != offload_then:
            nt = max(0.0, nt + memory.estimate_non_torch_gib(world, cpu_offload, engine)
                     - memory.estimate_non_torch_gib(world, offload_then, engine))
            notes.append("non-torch " + ("+" if cpu_offload else "−") + f"{memory.NON_TORCH_OFFLOAD_GIB:g} GiB:"
                         " CPU offload")
        note = f"overhead learned from {base.source or 'an earlier start'}" + (f" ({'; '.join(notes)})" if notes else "")
        return memory.Overhead(act, nt, cold, "calibration", note)


# StartupFacts fields calibration reads under their own names.
_PLAIN_FACTS = ("kv_cache_tokens", "max_concurrency_context", "vllm_version", "tensor_parallel_size",
                "pipeline_parallel_size", "max_model_len", "enforce_eager", "kv_cache_dtype", "quantization",
                "model_runner", "cpu_offloaded_gib", "cuda_graph_sizes")


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
    "consumed_gib": ("consumed_gib",),
    "cuda_graph_estimate_gib": ("cuda_graph_estimate_gib",),
    "available_kv_cache_gib_before_warmup": ("available_kv_cache_gib_before_warmup",),
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
    now: float = 0.0,
) -> Observation:
    """Turn a parsed log's startup facts (a logparse `StartupFacts`, or a mapping with the same
    names) into an Observation. Explicit keyword values win over the facts; `now` is when it was
    learned (epoch seconds, on the caller's clock: the newest observation of a key wins).

    Overhead = peak activation + non-torch when vLLM printed them (0.26's "Actual usage is …";
    from 0.28 non-torch = "consumed memory (weights + non-torch)" − weights, and 0.30-0.33's "peak
    activation" less the CUDA-graph estimate they add to it), else requested − weights − available
    KV, with requested = util × total (the more precise) or the printed "Desired … (0.3, 23.75
    GiB)", and available KV the budget's (0.34: the pre-warm-up estimate; 0.30-0.33: plus the
    graph estimate). The overhead means the same for every version: CUDA graphs are not in it."""
    weights = _fact(facts, "model_weights_gib")
    available = _fact(facts, "available_kv_cache_gib")
    util = gpu_memory_utilization if gpu_memory_utilization is not None else _fact(facts, "gpu_memory_utilization")
    total = _fact(facts, "gpu_total_gib") if gpu_total_gib is None else gpu_total_gib
    printed_req = requested_gib if requested_gib is not None else _fact(facts, "requested_gib")
    act = _fact(facts, "peak_activation_gib")
    nt = _fact(facts, "non_torch_gib")
    estimate = _fact(facts, "cuda_graph_estimate_gib")
    consumed = _fact(facts, "consumed_gib")
    if nt is None and consumed is not None and weights is not None:
        nt = round(max(float(consumed) - float(weights), 0.0), 4)
    version = memory.parse_version(vllm_version or _fact(facts, "vllm_version"))
    if act is not None and estimate and (version is None or version >= (0, 30)):
        # 0.30-0.33 print the estimate inside "peak activation"; 0.21-0.29's V1 runner does not
        act = round(max(float(act) - float(estimate), 0.0), 4)
    budget_kv = available  # the KV memory the budget left, for the overhead below
    before = _fact(facts, "available_kv_cache_gib_before_warmup")
    if before is not None:
        budget_kv = before  # 0.34: the budget's figure; the measured cache also lost the graphs
    if budget_kv is not None and estimate:
        budget_kv = float(budget_kv) + float(estimate)  # the graph estimate came out of it too
    requested = float(util) * float(total) if util is not None and total is not None else printed_req
    if act is not None and nt is not None:
        overhead = float(act) + float(nt)
    elif weights is not None and budget_kv is not None and requested is not None:
        overhead = float(requested) - float(weights) - float(budget_kv)
    else:
        missing = [n for n, v in (("model weights (\"Model loading took\")", weights),
                                  ("available KV cache (\"Available KV cache memory\")", available),
                                  ("requested memory (the utilization and the GPU's total)", requested)) if v is None]
        if len(missing) == 3:
            raise CalibrationError("cannot calibrate", [
                f"{source or 'log'}: no vLLM startup figures in it (model weights, KV cache memory, utilization): "
                "not a vLLM log, or one that ended before vLLM profiled its memory"])
        raise CalibrationError("cannot calibrate", [f"{source or 'log'}: cannot learn the overhead: no {m}" for m in missing])
    if overhead < -0.05:
        asked = (f"{float(util):g} × {float(total):.2f} GiB = {requested:.2f} GiB" if util is not None and total is not None
                 else f"{requested:.2f} GiB")
        raise CalibrationError("cannot calibrate", [
            f"{source or 'log'}: the numbers do not add up (requested {asked} < weights {float(weights):.2f} + KV "
            f"{float(budget_kv):.2f} GiB): was that run's GPU larger? plan with its total memory (--gpu-memory-gib)"])
    cached = compile_cached if compile_cached is not None else _fact(facts, "compile_cached")
    tp = tensor_parallel or _fact(facts, "tensor_parallel_size") or 1
    tokens_t = max_num_batched_tokens or _fact(facts, "max_num_batched_tokens")
    seqs = max_num_seqs or _fact(facts, "max_num_seqs")
    if seqs is None and total is not None:
        seqs = memory.default_batch_limits(float(total), gpu_name, vllm_version or _fact(facts, "vllm_version"))[1]
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
        cuda_graph_sizes=list(sizes) if (sizes := _fact(facts, "cuda_graph_sizes")) is not None else None,
        available_kv_cache_gib=float(available) if available is not None else None,
        kv_cache_tokens=_fact(facts, "kv_cache_tokens"),
        requested_gib=round(float(requested), 4) if requested is not None else None,
        gpu_memory_utilization=float(util) if util is not None else None,
        gpu_total_gib=float(total) if total is not None else None,
        cpu_offloaded_gib=_fact(facts, "cpu_offloaded_gib"),
        v1_sampler=runner.v1_sampler_seen({
            "vllm_version": vllm_version or _fact(facts, "vllm_version"),
            **{name: _fact(facts, name) for name in ("cpu_offloaded_gib", "cuda_graph_estimate_gib", "model_runner")}}) or None,
        learned_at=now,
        source=source,
    )



def calibration_facts(facts: Any) -> dict[str, Any]:
    """What calibration needs from a parsed log, under this module's names (None values left
    out): the log parser's StartupFacts, plus what vLLM's "non-default args" line says when the
    memory lines did not (a failed start prints no utilization of its own)."""
    merged = {name: _fact(facts, name) for name in (*_FACT_ALIASES, *_PLAIN_FACTS)}
    cli = getattr(facts, "cli_args", None) or {}
    for name in ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens"):
        if merged.get(name) is None and cli.get(name) is not None:
            merged[name] = cli[name]
    return {k: v for k, v in merged.items() if v is not None}
