"""The target fit: the arguments that meet a profile's service target on the first launch. Pure.

A target asks for `min_concurrency` requests of `context` tokens at once. The prediction
(fit.predict_args) already chooses the context for a target; this chooses what the context
cannot: the utilization, within the profile's recovery bounds, the CUDA-graph headroom above the
budget and the GPU's free memory, and `max_num_seqs` where the engine would otherwise cap the
requests below the target (or where fewer sequences leave more room). When no choice within the
bounds meets the target, it says which change would, with numbers: a higher bound, a shorter
context (or fewer requests), an fp8 KV cache, more GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.vllm import memory
from llm_supervisor.vllm.fit import FitContext, Prediction, predict_args
from llm_supervisor.vllm.gpuspecs import find_gpu

SMALL_GPU_SEQS = 256  # vLLM's max_num_seqs on a GPU under 70 GiB


def _fmt_int(n: float) -> str:
    return f"{int(n):,}"


@dataclass(frozen=True)
class Ceiling:
    """The highest utilization a launch may use, and what sets it."""

    utilization: float
    reason: str   # "recovery.max_gpu_memory_utilization" | "CUDA-graph headroom" | "free GPU memory"
    safe: float   # the CUDA-graph headroom's limit alone


def graph_gib(ctx: FitContext, args: VllmArgs) -> float:
    """CUDA-graph memory to expect above the budget: none where this vLLM counts the graphs inside
    it, else what this host measured, or the estimate (FitContext.graph_gib)."""
    if ctx.accounting(args).graphs_in_budget:
        return 0.0
    return ctx.graph_gib(args)[0]


def utilization_ceiling(ctx: FitContext, args: VllmArgs, free_gib: float | None = None) -> Ceiling:
    """min(recovery bound, what leaves room for CUDA graphs and the CUDA context, what the free
    memory lets vLLM's start check pass), rounded down to 0.01."""
    total = ctx.gpu_total_gib
    safe = memory.floor2(memory.safe_utilization(total, graph_gib(ctx, args)))
    options = [(ctx.recovery.max_gpu_memory_utilization, "recovery.max_gpu_memory_utilization"),
               (safe, "CUDA-graph headroom")]
    if free_gib is not None and total:
        # NVML's free memory still counts what the engine's CUDA context will take
        usable = free_gib - memory.CUDA_CONTEXT_GIB - memory.FREE_CHECK_MARGIN_GIB
        options.append((memory.floor2(usable / total), "free GPU memory"))
    util, reason = min(options, key=lambda o: o[0])
    return Ceiling(max(util, 0.0), reason, safe)


@dataclass
class TargetFit:
    args: VllmArgs
    prediction: Prediction
    met: bool | None                      # None: the profile has no target
    ceiling: Ceiling | None = None
    changes: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    would: list[str] = field(default_factory=list)   # changes that would meet it, when nothing in bounds does

    def to_json(self) -> dict[str, Any]:
        return {"met": self.met, "changes": self.changes, "would": list(self.would),
                "ceiling": None if self.ceiling is None else
                {"gpu_memory_utilization": self.ceiling.utilization, "set_by": self.ceiling.reason}}


def hundredths(lo: float, hi: float) -> list[float]:
    start, stop = int(round(lo * 100)), int(math.floor(hi * 100 + 1e-6))
    return [u / 100 for u in range(start, stop + 1)]


def _concurrency(p: Prediction, context: int) -> float:
    return p.concurrency_at(context) if p.blocks_per_request(context) <= p.num_gpu_blocks else 0.0


def fit_target(ctx: FitContext, args: VllmArgs, *, free_gib: float | None = None) -> TargetFit:
    """The arguments that meet the target (the lowest utilization that does, never lower than the
    profile's), or the best within the bounds and what would meet it."""
    first = predict_args(ctx, args)
    target = ctx.target
    if target is None:
        return TargetFit(args, first, None)
    want, tctx = float(target.min_concurrency), int(target.context)
    goal = f"{want:g} requests of {_fmt_int(tctx)} tokens"
    notes: list[str] = []
    changes: dict[str, list[Any]] = {}
    _, seqs = ctx.batch_limits(args)
    need_seqs = math.ceil(want / args.data_parallel_size)
    if seqs < need_seqs:
        args = args.model_copy(update={"max_num_seqs": need_seqs})
        changes["max_num_seqs"] = [seqs, need_seqs]
        notes.append(f"max_num_seqs {seqs} → {need_seqs}: the engine would run at most {seqs} requests at once,"
                     f" the target asks for {goal}")
        first = predict_args(ctx, args)
    if first.target_met:
        return TargetFit(args, first, True, None, changes, notes)

    ceiling = utilization_ceiling(ctx, args, free_gib)
    base = args.gpu_memory_utilization

    def search(a: VllmArgs, top: float) -> tuple[VllmArgs, Prediction] | None:
        for u in hundredths(base + 0.01, top):
            cand = a.model_copy(update={"gpu_memory_utilization": u})
            p = predict_args(ctx, cand)
            if p.target_met:
                return cand, p
        return None

    found = search(args, ceiling.utilization)
    if found is None and seqs > SMALL_GPU_SEQS and need_seqs <= SMALL_GPU_SEQS and "max_num_seqs" not in changes:
        # vLLM's big-GPU default (1024 sequences) warms the sampler up for all of them; fewer
        # sequences leave that memory to the KV cache
        fewer = args.model_copy(update={"max_num_seqs": SMALL_GPU_SEQS})
        found = search(fewer, ceiling.utilization)
        if found is not None:
            changes["max_num_seqs"] = [seqs, SMALL_GPU_SEQS]
            notes.append(f"max_num_seqs {seqs} → {SMALL_GPU_SEQS}: fewer sequences shrink the sampler's warm-up"
                         " and leave that memory to the KV cache")
    if found is not None:
        new, p = found
        u = new.gpu_memory_utilization
        changes["gpu_memory_utilization"] = [base, u]
        notes.append(f"target {goal}: gpu_memory_utilization {base:g} → {u:g} meets it"
                     f" ({_concurrency(first, tctx):.2f} fit at {base:g}, {_concurrency(p, tctx):.2f} at {u:g};"
                     f" the ceiling is {ceiling.utilization:g}, set by {ceiling.reason})")
        return TargetFit(new, p, True, ceiling, changes, notes)

    # Nothing within the bounds: the best there, and what would do.
    top = max(base, ceiling.utilization)
    best_args = args.model_copy(update={"gpu_memory_utilization": top})
    best = predict_args(ctx, best_args)
    if top > base:
        changes["gpu_memory_utilization"] = [base, top]
    have = math.floor(_concurrency(best, tctx) * 100) / 100
    would = _what_would(ctx, best_args, best, ceiling, free_gib)
    notes.append(f"target {goal} cannot be met within the bounds: at utilization {top:g} (the ceiling, set by"
                 f" {ceiling.reason}) {have:.2f} fit" + ("" if would else "; no single change found that would"))
    return TargetFit(best_args if top > base else args, best if top > base else first, False, ceiling, changes, notes,
                     would)


def _what_would(ctx: FitContext, args: VllmArgs, best: Prediction, ceiling: Ceiling,
                free_gib: float | None) -> list[str]:
    """Changes outside the bounds that would meet the target, each with its numbers."""
    assert ctx.target is not None
    want, tctx = float(ctx.target.min_concurrency), int(ctx.target.context)
    out: list[str] = []
    # 1. a higher utilization than the ceiling allows
    limit = 0.99 if args.enforce_eager else ceiling.safe
    for u in hundredths(args.gpu_memory_utilization + 0.01, max(limit, 0.99)):
        p = predict_args(ctx, args.model_copy(update={"gpu_memory_utilization": u}))
        if not p.target_met:
            continue
        if u <= ceiling.safe or args.enforce_eager:
            if ceiling.reason == "free GPU memory" and free_gib is not None:
                need = u * ctx.gpu_total_gib + memory.CUDA_CONTEXT_GIB + memory.FREE_CHECK_MARGIN_GIB
                out.append(f"utilization {u:g}, which needs {need:.1f} GiB of free GPU memory ({free_gib:.1f} GiB is free)")
            else:
                out.append(f"recovery.max_gpu_memory_utilization ≥ {u:g}")
        else:
            out.append(f"vllm.enforce_eager: true and recovery.max_gpu_memory_utilization ≥ {u:g} (without CUDA graphs"
                       f" the GPU allows more than {ceiling.safe:g})")
        break
    # 2. a shorter context, or fewer requests
    block = ctx.block_size(args)
    fits = memory.largest_fitting(best.num_gpu_blocks, block, tctx, None,
                                  enough=lambda c: best.concurrency_at(c) + 1e-9 >= want)
    fits = fits // block * block
    if fits >= ctx.recovery.min_max_model_len:
        out.append(f"target.context ≤ {_fmt_int(fits)} ({want:g} requests of {_fmt_int(fits)} fit at utilization"
                   f" {args.gpu_memory_utilization:g})")
    have = math.floor(_concurrency(best, tctx) * 100) / 100
    if have >= 1:
        out.append(f"target.min_concurrency ≤ {have:g}")
    # 3. an fp8 KV cache, where the GPU runs one
    spec = find_gpu(ctx.gpu_name)
    if args.kv_cache_dtype == "auto" and (spec is None or spec.fp8_kv):
        p = predict_args(ctx, args.model_copy(update={"kv_cache_dtype": "fp8"}))
        c = _concurrency(p, tctx)
        if c + 1e-9 >= want:
            where = "" if spec is not None else " (if this GPU supports it: Ada or Hopper)"
            out.append(f"vllm.kv_cache_dtype: fp8{where}: {c:.2f} requests of {_fmt_int(tctx)} fit")
    # 4. more GPUs
    tp = args.tensor_parallel_size
    for more in [t for t in ctx.shape.valid_tensor_parallel_sizes() if t > tp][:3]:
        p = predict_args(ctx, args.model_copy(update={"tensor_parallel_size": more}))
        c = _concurrency(p, tctx)
        if c + 1e-9 >= want:
            gpus = more * args.pipeline_parallel_size * args.data_parallel_size
            out.append(f"tensor_parallel_size {more} ({gpus} GPUs of this size): {c:.2f} requests of {_fmt_int(tctx)} fit")
            break
    return out
