"""When the model does not fit the card: the levers that make it fit, in order, and what the last
one costs. Pure.

"Fits" means a usable context fits: at least `recovery.min_max_model_len` tokens of KV cache
after the weights, the activations and the non-torch memory (the fit's own definition). The
levers, each tried on top of the ones before it until one fits:

    1. utilization, up to the ceiling (recovery bound, CUDA-graph headroom, free GPU memory)
    2. an fp8 KV cache, where the GPU runs one (Ada, Hopper): half the KV bytes per token
    3. eager mode: no CUDA graphs, so the ceiling rises by their memory
    4. fewer sequences: a smaller sampler warm-up
    5. a shorter context: the fit chooses the longest that fits, down to the usable minimum
    6. CPU offload (`--cpu-offload-gb`): the least whole GiB of decoder-layer weights per GPU kept
       in CPU memory with which a usable context fits — only up to recovery.max_cpu_offload_gb.
       Of levers 2–4, only those that lower the offload are kept. Until a start on this host has
       been learned, the offload is chosen with OFFLOAD_MARGIN_GIB more overhead than the shape
       model's, and the context with it: a launch that offloads pins its CPU weights (60–83 s for
       42–44 GiB on an H200) before vLLM profiles, so a fit that misses by the model's error costs
       that again, while a GiB more offloaded costs about 2 % of the decode rate.

Offload's cost is stated with it: every step reads the offloaded weights over PCIe (the speed
model's tokens/s with them), and the host needs RAM for them and vLLM's swap space (default
4 GiB per GPU), checked against what the host has free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.vllm.fit import FitContext, Prediction, decoder_gib_per_stage, predict_args
from llm_supervisor.vllm.gpuspecs import find_gpu
from llm_supervisor.vllm.speed import MeasuredPoint, speed_model
from llm_supervisor.vllm.target import hundredths, utilization_ceiling

SWAP_SPACE_DEFAULT_GIB = 4.0   # vLLM's --swap-space default
HOST_MARGIN_GIB = 2.0          # host RAM left for the engine's processes and the system
FEWER_SEQS = 16
# Overhead held back when choosing an uncalibrated offload (the shape model's largest miss seen on
# a GPU: 0.39 GiB, Qwen3-32B with offload on vLLM 0.26's V1 runner, before its sampler was modelled).
OFFLOAD_MARGIN_GIB = 0.5


def _fmt_int(n: float) -> str:
    return f"{int(n):,}"


def usable(ctx: FitContext) -> int:
    return ctx.recovery.min_max_model_len


def fits(p: Prediction, ctx: FitContext) -> bool:
    """A usable context fits, within the model's limit."""
    return p.available_kv_cache_gib > 0 and p.num_gpu_blocks > 0 and p.largest_context >= min(
        usable(ctx), ctx.shape.context_limit)


@dataclass
class LowMemoryPlan:
    args: VllmArgs                 # the levers (and offload) applied
    prediction: Prediction
    fits: bool                     # a usable context fits with `args`
    offload_gib: float             # per GPU; 0 when no offload
    allowed: bool                  # within recovery.max_cpu_offload_gb and the host's free RAM
    headline: str                  # "does not fit: …"
    levers: list[str] = field(default_factory=list)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # why the offload is not allowed
    alternatives: list[str] = field(default_factory=list)
    host_ram_gib: float = 0.0
    host_available_gib: float | None = None
    tokens_per_s: float | None = None

    @property
    def context(self) -> int:
        return self.prediction.max_model_len if self.fits else 0

    @property
    def usable_now(self) -> bool:
        """The plan can launch with `args`."""
        return self.fits and self.allowed

    def summary(self) -> str:
        """"with 42 GiB offloaded to CPU: fits 8,192 tokens, about 1.1 tokens/s, needs 46 GiB of host RAM"."""
        if not self.fits:
            return (f"{self.headline}; not even with every decoder layer's weights in CPU memory"
                    " (the embeddings, activations and CUDA context alone exceed the budget)")
        extra = f" (+ {', '.join(self.levers)})" if self.levers else ""
        speed = f", about {self.tokens_per_s:.2g} tokens/s" if self.tokens_per_s else ""
        if self.offload_gib:
            avail = f" ({self.host_available_gib:.0f} GiB available)" if self.host_available_gib is not None else ""
            return (f"{self.headline}; with {self.offload_gib:g} GiB offloaded to CPU{extra}: fits"
                    f" {_fmt_int(self.context)} tokens{speed}, needs {self.host_ram_gib:.0f} GiB of host RAM{avail}")
        return f"{self.headline}; with {', '.join(self.levers)}: fits {_fmt_int(self.context)} tokens{speed}"

    def refusal(self) -> list[str]:
        """Why the launch cannot go ahead, and what would fit (one line each)."""
        lines = [self.summary() + ("" if not self.problems else "; but " + "; ".join(self.problems))]
        if self.alternatives:
            lines.append("or: " + "; or ".join(self.alternatives))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"fits": self.fits, "allowed": self.allowed, "offload_gib": self.offload_gib,
                "changes": self.changes, "levers": list(self.levers), "context": self.context,
                "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 3),
                "host_ram_gib": round(self.host_ram_gib, 1), "host_available_gib": self.host_available_gib,
                "problems": list(self.problems), "alternatives": list(self.alternatives),
                "summary": self.summary()}


def _smallest_util(ctx: FitContext, a: VllmArgs, free_gib: float | None) -> tuple[VllmArgs, Prediction] | None:
    """`a` at the lowest utilization (≥ its own, ≤ the ceiling) with which a usable context fits."""
    top = utilization_ceiling(ctx, a, free_gib).utilization
    for u in [a.gpu_memory_utilization] + hundredths(a.gpu_memory_utilization + 0.01, top):
        cand = a.model_copy(update={"gpu_memory_utilization": u})
        p = predict_args(ctx, cand)
        if fits(p, ctx):
            return cand, p
    return None


def _least_offload(ctx: FitContext, a: VllmArgs, free_gib: float | None) -> tuple[int, VllmArgs, Prediction] | None:
    """The fewest whole GiB per GPU to offload so that a usable context fits (at the ceiling)."""
    top = max(a.gpu_memory_utilization, utilization_ceiling(ctx, a, free_gib).utilization)
    base = a.model_copy(update={"gpu_memory_utilization": top})
    most = math.ceil(max(decoder_gib_per_stage(ctx.shape, base)))

    def at(x: int) -> tuple[VllmArgs, Prediction]:
        cand = base.model_copy(update={"cpu_offload_gb": float(x)})
        return cand, predict_args(ctx, cand)

    cand, p = at(most)
    if not fits(p, ctx):
        return None
    lo, hi = 0, most  # lo does not fit (it was checked by the caller), hi does
    best = (most, cand, p)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        cand, p = at(mid)
        if fits(p, ctx):
            hi, best = mid, (mid, cand, p)
        else:
            lo = mid
    return best


def _changes(old: VllmArgs, new: VllmArgs) -> dict[str, list[Any]]:
    keys = ("gpu_memory_utilization", "kv_cache_dtype", "enforce_eager", "max_num_seqs", "cpu_offload_gb")
    return {k: [getattr(old, k), getattr(new, k)] for k in keys if getattr(old, k) != getattr(new, k)}


def _lever_text(old: VllmArgs, new: VllmArgs) -> list[str]:
    out = []
    if new.gpu_memory_utilization != old.gpu_memory_utilization:
        out.append(f"gpu_memory_utilization {old.gpu_memory_utilization:g} → {new.gpu_memory_utilization:g}")
    if new.kv_cache_dtype != old.kv_cache_dtype:
        out.append(f"kv_cache_dtype {new.kv_cache_dtype}")
    if new.enforce_eager and not old.enforce_eager:
        out.append("enforce_eager")
    if new.max_num_seqs != old.max_num_seqs:
        out.append(f"max_num_seqs {new.max_num_seqs}")
    return out


def plan_low_memory(ctx: FitContext, args: VllmArgs, *, free_gib: float | None = None,
                    measured: Sequence[MeasuredPoint] = ()) -> LowMemoryPlan | None:
    """None when a usable context fits with `args` as they are; else the levers that make it fit
    (see the module docstring), whether the profile allows them, and their cost (its decode rate
    calibrated with `measured`, what `bench --find-capacity` measured on this host)."""
    first = predict_args(ctx, args)
    if fits(first, ctx):
        return None
    rec = ctx.recovery
    budget = args.gpu_memory_utilization * ctx.gpu_total_gib
    weights = first.weights_gib + first.cpu_offload_gib  # the whole model's share of one GPU
    if weights > budget:
        headline = (f"does not fit: {weights:.1f} GiB of weights per GPU, {budget:.1f} GiB budget"
                    f" ({args.gpu_memory_utilization:g} × {ctx.gpu_total_gib:.2f} GiB)")
    else:
        need = usable(ctx) * first.kv_bytes_per_token / 1024**3
        headline = (f"does not fit: {weights:.1f} GiB of weights and {first.overhead_gib:.2f} GiB of activations leave"
                    f" {max(first.available_kv_cache_gib, 0):.2f} GiB of the {budget:.1f} GiB budget for the KV cache;"
                    f" {_fmt_int(usable(ctx))} tokens need {need:.2f} GiB")

    spec = find_gpu(ctx.gpu_name)
    steps: list[VllmArgs] = [args]
    if args.kv_cache_dtype == "auto" and spec is not None and spec.fp8_kv:
        steps.append(steps[-1].model_copy(update={"kv_cache_dtype": "fp8"}))
    if not args.enforce_eager:
        steps.append(steps[-1].model_copy(update={"enforce_eager": True}))
    _, seqs = ctx.batch_limits(args)
    fewer = max(FEWER_SEQS, math.ceil(ctx.target.min_concurrency) if ctx.target else 0)
    if seqs > fewer:
        steps.append(steps[-1].model_copy(update={"max_num_seqs": fewer}))

    for a in steps:
        found = _smallest_util(ctx, a, free_gib)
        if found is not None:
            new, p = found
            levers = _lever_text(args, new)
            if p.max_model_len < (args.max_model_len or ctx.shape.context_limit):
                levers.append(f"max_model_len {_fmt_int(p.max_model_len)}")
            plan = LowMemoryPlan(new, p, True, 0.0, True, headline, levers, _changes(args, new))
            plan.tokens_per_s = _rate(ctx, new, p, measured)
            return plan

    # CPU offload, with the levers that lower it; uncalibrated, with a margin (module docstring)
    full = steps[-1]
    margin = 0.0 if ctx.entry_for(full) is not None else OFFLOAD_MARGIN_GIB
    mctx = replace(ctx, overhead_margin_gib=margin)
    least = _least_offload(mctx, full, free_gib)
    if least is None and margin:
        mctx, least = ctx, _least_offload(ctx, full, free_gib)
    if least is None:
        plan = LowMemoryPlan(full, predict_args(ctx, full), False, 0.0, False, headline)
        plan.alternatives = _alternatives(ctx, args)
        return plan
    x, new, p = least
    for key, original in (("max_num_seqs", args.max_num_seqs), ("enforce_eager", args.enforce_eager),
                          ("kv_cache_dtype", args.kv_cache_dtype)):
        if getattr(new, key) == original:
            continue
        # without the lever, from the profile's utilization: its own ceiling applies
        trial = new.model_copy(update={key: original, "cpu_offload_gb": None,
                                       "gpu_memory_utilization": args.gpu_memory_utilization})
        alt = _least_offload(mctx, trial, free_gib)
        if alt is not None and alt[0] <= x:
            x, new, p = alt
    if mctx.overhead_margin_gib:
        # the context chosen with the margin held back; the prediction without it
        new = new.model_copy(update={"max_model_len": p.max_model_len})
        p = predict_args(ctx, new)
    world = args.tensor_parallel_size * args.pipeline_parallel_size * args.data_parallel_size
    swap = args.swap_space if args.swap_space is not None else SWAP_SPACE_DEFAULT_GIB
    levers = [t for t in _lever_text(args, new)]
    plan = LowMemoryPlan(new, p, True, float(x), True, headline, levers, _changes(args, new))
    plan.host_ram_gib = world * (x + swap)
    plan.host_available_gib = ctx.host_available_gib
    plan.tokens_per_s = _rate(ctx, new, p, measured)
    if x > rec.max_cpu_offload_gb:
        plan.allowed = False
        plan.problems.append(f"recovery.max_cpu_offload_gb is {rec.max_cpu_offload_gb:g}"
                             + (" (never)" if not rec.max_cpu_offload_gb else "")
                             + f": set it to {x:g} or more to allow it")
    if ctx.host_available_gib is not None and plan.host_ram_gib > ctx.host_available_gib - HOST_MARGIN_GIB:
        plan.allowed = False
        plan.problems.append(f"the host has {ctx.host_available_gib:.0f} GiB of RAM free, {plan.host_ram_gib:.0f} GiB"
                             f" are needed (+{HOST_MARGIN_GIB:g} GiB for the system)")
    if not plan.allowed:
        plan.alternatives = _alternatives(ctx, args)
    return plan


def _rate(ctx: FitContext, args: VllmArgs, p: Prediction, measured: Sequence[MeasuredPoint]) -> float | None:
    model = speed_model(ctx, args, p, measured)
    return None if model is None else model.at(1).per_user_tokens_per_s


def _alternatives(ctx: FitContext, args: VllmArgs) -> list[str]:
    """What would fit without offload: more GPUs, a quantized model."""
    out = []
    for tp in [t for t in ctx.shape.valid_tensor_parallel_sizes() if t > args.tensor_parallel_size]:
        a = args.model_copy(update={"tensor_parallel_size": tp, "cpu_offload_gb": None})
        if fits(predict_args(ctx, a), ctx):
            gpus = tp * args.pipeline_parallel_size * args.data_parallel_size
            out.append(f"tensor_parallel_size {tp} ({gpus} GPUs of this size)")
            break
    if not ctx.shape.quant_method and not args.quantization:
        out.append("a 4-bit (AWQ/GPTQ) or fp8 checkpoint of the model")
    return out
