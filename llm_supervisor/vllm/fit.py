"""The fit: what vLLM will print at startup for a set of arguments (weights, available KV-cache
memory, KV tokens, maximum concurrency) and the `--max-model-len` to launch with. Pure.

A prediction is three steps over the memory model (llm_supervisor.vllm.memory):

    weights  what the weights take on one GPU of each pipeline stage
    budget   the KV cache that remains of total × utilization on the tightest GPU, in blocks
    context  the context to launch with: the profile's, or the largest that fits, or the one that
             keeps the profile's service target

The `FitContext` holds what these steps need besides the arguments: the model's shape and weight
inventory, the GPU, the vLLM version, the calibration learned on this host, the recovery bounds
and the target. The plan builds it once before the first launch (reading config.json,
safetensors headers and the calibration file); the recovery policy reuses it after a failure, so
nothing reads a file while the daemon runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Protocol, Sequence

from llm_supervisor.config.profile import Profile, Recovery, Target, VllmArgs
from llm_supervisor.vllm import cudagraphs, gpuspecs, memory, runner
from llm_supervisor.vllm.calibration import CalibrationEntry, Observation
from llm_supervisor.vllm.memory import GIB, Overhead
from llm_supervisor.vllm.modelshape import (ModelShape, WeightInventory, linear_bytes_per_element,
                                            unpacked_zero_point_bytes_per_stage)


class CalibrationSource(Protocol):
    """The calibration store as the fit sees it (llm_supervisor.store.calibration.Calibration)."""

    def lookup(self, model: str, vllm_version: str | None, gpu_name: str | None,
               tensor_parallel: int) -> CalibrationEntry | None: ...


def _fmt_int(n: int | float) -> str:
    return f"{int(n):,}"


def _gib(x: float) -> str:
    return f"{x:.2f} GiB"


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*", text, re.I)
    if not m:
        return None
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[(m.group(2) or "")[:1].lower()]
    return int(float(m.group(1)) * scale)


def extra_arg(args: VllmArgs, flag: str) -> str | None:
    """The value of `--flag` in extra_args (`--flag=v` or `--flag v`)."""
    items = list(args.extra_args)
    for i, item in enumerate(items):
        if item == flag and i + 1 < len(items):
            return items[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- the fit context


@dataclass(frozen=True)
class FitContext:
    """Everything a fit needs besides the arguments, gathered once by the plan."""

    shape: ModelShape
    gpu_total_gib: float                 # per GPU, as NVML reports it (what utilization multiplies)
    gpu_count: int
    model: str = ""
    gpu_name: str | None = None
    vllm_version: str | None = None      # None: the version the memory model was fitted to
    inventory: WeightInventory | None = None
    calibration: CalibrationEntry | None = None
    recovery: Recovery = field(default_factory=Recovery)
    target: Target | None = None
    notes: tuple[str, ...] = ()          # what the plan found while gathering (unreadable headers, …)
    host_available_gib: float | None = None  # host RAM free for offloaded weights (host/), when read
    runner_env: str | None = None        # the profile's VLLM_USE_V2_MODEL_RUNNER, when it sets one
    overhead_margin_gib: float = 0.0     # held back beyond the overhead (lowmem: an offload's first launch)

    @classmethod
    def of(cls, shape: ModelShape, gpu_total_gib: float, gpu_count: int,
           calibration: CalibrationSource | CalibrationEntry | Observation | None = None,
           target: Target | None = None, vllm_version: str | None = None, *,
           recovery: Recovery | None = None, model: str | None = None, gpu_name: str | None = None,
           inventory: WeightInventory | None = None, tensor_parallel: int = 1,
           notes: Iterable[str] = (), host_available_gib: float | None = None,
           runner_env: str | None = None) -> "FitContext":
        """A context for a shape on GPUs of `gpu_total_gib`. calibration: a store (looked up by
        model, vLLM version, GPU name and `tensor_parallel`), one entry, or one observation."""
        name = model or shape.name
        entry = _resolve_entry(calibration, name, vllm_version, gpu_name, tensor_parallel)
        return cls(shape, gpu_total_gib, gpu_count, name, gpu_name, vllm_version, inventory, entry,
                   recovery or Recovery(), target, tuple(notes), host_available_gib, runner_env)

    @property
    def version(self) -> str:
        """The vLLM version planned for: the engine's, else the newest supported."""
        return self.vllm_version or memory.DEFAULT_VLLM_VERSION

    @property
    def engine(self) -> memory.EngineMemory:
        """How the version planned for spends memory beyond the weights (memory.engine_memory)."""
        return memory.engine_memory(self.vllm_version)

    def block_size(self, args: VllmArgs) -> int:
        """The KV block size this launch runs with (`--block-size`, else the version's default)."""
        return memory.block_size_for(args.block_size, self.vllm_version)

    def accounting(self, args: VllmArgs) -> memory.Accounting:
        """How this vLLM sizes the KV cache with these arguments (and the model runner they run on)."""
        return runner.accounting(self.vllm_version, args, self.runner_env)

    def v1_sampler(self, args: VllmArgs) -> bool:
        """The launch runs on the V1 model runner where V2 is the default (memory's V1 terms)."""
        return runner.v1_sampler_warmup(self.vllm_version, args.cpu_offload_gb, self.runner_env)

    def with_calibration(self, entry: CalibrationEntry | None) -> "FitContext":
        """The same context after this host learned more (the daemon, after a boot)."""
        return replace(self, calibration=entry)

    def with_version(self, vllm_version: str | None) -> "FitContext":
        """The same context for another vLLM version (the engine printed a different one)."""
        return replace(self, vllm_version=vllm_version)

    def graph_gib(self, args: VllmArgs) -> tuple[float, str]:
        """CUDA-graph memory on one GPU of the largest stage and where the figure comes from: an
        earlier start of this configuration on this host, else the per-layer estimate."""
        if args.enforce_eager:
            return 0.0, "enforce_eager: no CUDA graphs"
        factor = cudagraphs.graph_factor(self.capture_sizes(args))
        entry = self.entry_for(args)
        # a start that captured other sizes took more or less: scaled by the sizes above the default
        seen = [o.cuda_graph_gib * factor / cudagraphs.graph_factor(o.cuda_graph_sizes or ())
                for o in (entry.observations if entry else []) if (o.cuda_graph_gib or 0) > 0 and not o.enforce_eager]
        if seen:
            return max(seen), "measured on this host"
        layers = max(self.shape.layers_per_stage(args.pipeline_parallel_size))
        return memory.estimate_graph_gib(layers, args.tensor_parallel_size, self.engine) * factor, "estimated"

    def capture_sizes(self, args: VllmArgs) -> list[int]:
        """The batch sizes this launch captures as CUDA graphs (none with enforce_eager)."""
        if args.enforce_eager:
            return []
        tokens, seqs = self.batch_limits(args)
        ask = cudagraphs.capture_ask(args.extra_args)
        return cudagraphs.capture_sizes(seqs, tokens, ask.max_size, ask.sizes or ())

    def capture_problems(self, args: VllmArgs) -> list[str]:
        """Why vLLM would refuse the capture sizes extra_args ask for, one line each."""
        batched = None if args.enforce_eager else self.batch_limits(args)[0]
        return cudagraphs.capture_ask(args.extra_args).problems(batched)

    def batch_limits(self, args: VllmArgs) -> tuple[int, int]:
        """(max_num_batched_tokens, max_num_seqs) this launch runs with."""
        tokens, seqs = memory.default_batch_limits(self.gpu_total_gib, self.gpu_name, self.version)
        return args.max_num_batched_tokens or tokens, args.max_num_seqs or seqs

    def entry_for(self, args: VllmArgs) -> CalibrationEntry | None:
        entry = self.calibration
        if entry is None or entry.tensor_parallel != args.tensor_parallel_size:
            return None
        return entry

    def kv_bytes_per_token(self, args: VllmArgs) -> int:
        """KV-cache bytes per token on one GPU of the largest pipeline stage."""
        return max(self.shape.kv_bytes_per_token(args.tensor_parallel_size, args.kv_cache_dtype, args.dtype, layers=n)
                   for n in self.shape.layers_per_stage(args.pipeline_parallel_size))

    def cold_compile_extra_gib(self, args: VllmArgs) -> float:
        """How much more activation this launch takes when torch.compile's cache is cold (eager
        mode compiles nothing: 0)."""
        if args.enforce_eager:
            return 0.0
        tokens, seqs = self.batch_limits(args)
        return memory.cold_compile_extra_gib(self.shape, args.tensor_parallel_size, tokens, seqs, self.v1_sampler(args),
                                             self.engine)

    def predict(self, args: VllmArgs, compile_cached: bool | None = None) -> "Prediction":
        return predict_args(self, args, compile_cached)


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
    lookup = getattr(calibration, "lookup", None)
    if callable(lookup):
        return lookup(model or "", vllm_version, gpu_name, tp) if model else None
    raise TypeError(f"calibration must be a calibration store, CalibrationEntry or Observation, "
                    f"not {type(calibration).__name__}")


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
    block_size: int = memory.DEFAULT_BLOCK_SIZE
    max_num_batched_tokens: int = 0
    max_num_seqs: int = 0
    data_parallel: int = 1
    max_concurrency_per_replica: float = 0.0
    requested_max_model_len: int = 0
    target_met: bool | None = None
    target: dict[str, Any] | None = None
    gpu_total_gib: float = 0.0
    headroom_gib: float = 0.0
    vllm_version: str = memory.DEFAULT_VLLM_VERSION
    accounting: str = str(memory.Accounting.BUDGET_0_26)
    cuda_graph_gib: float = 0.0
    available_kv_cache_gib_before_warmup: float | None = None  # extensible-0.34: "Available KV cache memory"
    kv_cache_bound: str | None = None    # extensible-0.34: "budget" (utilization) or "device" (free memory)
    cpu_offload_gib: float = 0.0
    # per-request blocks as a function of context: kept for concurrency_at()
    _sliding: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def overhead_gib(self) -> float:
        return self.activation_gib + self.non_torch_gib

    @property
    def usable_blocks(self) -> int:
        """Blocks one request may use (from vLLM 0.30 the null block is not one of them)."""
        reserved = memory.null_block_reserved(memory.Accounting(self.accounting))
        return max(self.num_gpu_blocks - 1, 0) if reserved and self.num_gpu_blocks else self.num_gpu_blocks

    def fits_context(self, context: int) -> bool:
        """One request of `context` tokens fits the KV cache."""
        return self.blocks_per_request(context) <= self.usable_blocks

    def blocks_per_request(self, context: int) -> int:
        return memory.blocks_needed(context, self.block_size, self._sliding)

    def concurrency_at(self, context: int, per_replica: bool = False) -> float:
        """Requests of `context` tokens the KV cache holds at once (all DP replicas together)."""
        need = self.blocks_per_request(context)
        per = self.num_gpu_blocks / need if need else 0.0
        return per if per_replica else per * self.data_parallel

    def to_json(self) -> dict[str, Any]:
        return {
            "vllm_version": self.vllm_version,
            "accounting": self.accounting,
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
            "cuda_graph_gib": round(self.cuda_graph_gib, 2),
            "available_kv_cache_gib_before_warmup": (None if self.available_kv_cache_gib_before_warmup is None
                                                     else round(self.available_kv_cache_gib_before_warmup, 2)),
            "kv_cache_bound": self.kv_cache_bound,
            "cpu_offload_gib": round(self.cpu_offload_gib, 2),
            "notes": list(self.notes),
            "assumptions": list(self.assumptions),
        }


# ---------------------------------------------------------------- step 1: weights


@dataclass(frozen=True)
class Weights:
    per_stage_gib: list[float]   # on one GPU of each pipeline stage
    source: str                  # "calibration" | "safetensors" | "estimate"
    kernel_gib: float = 0.0      # of the largest stage: what vLLM's kernel adds to the checkpoint's tensors

    @property
    def largest_gib(self) -> float:
        return max(self.per_stage_gib)


WEIGHT_SOURCES = {
    "calibration": "weights as vLLM measured them in the calibration log",
    "safetensors": "weights from the checkpoint's safetensors headers (+2 MiB per layer allocator slack)",
    "estimate": "weights estimated from config.json (+2 MiB per layer allocator slack)",
}


def weights_per_gpu(ctx: FitContext, args: VllmArgs) -> Weights:
    """Weight GiB on one GPU of each pipeline stage, and where the figure comes from: a learned
    measurement of this model, else the safetensors headers, else the shape estimate."""
    shape = ctx.shape
    tp, pp, quant = args.tensor_parallel_size, args.pipeline_parallel_size, args.quantization
    entry = ctx.entry_for(args)
    offload = offloaded_per_stage_gib(shape, args)
    if entry is not None:
        usable = [o for o in entry.observations if o.weights_gib is not None and o.pipeline_parallel == pp
                  and (o.quantization or None) in (None, quant, shape.quant_method)]
        if usable:
            newest = max(usable, key=lambda o: o.learned_at)
            return Weights([float(newest.weights_gib) - off for off in offload], "calibration")  # type: ignore[arg-type]
    layers = shape.layers_per_stage(pp)
    if ctx.inventory is not None:
        stage_bytes = ctx.inventory.per_gpu_bytes(shape, tp, pp, quant)
        source = "safetensors"
    else:
        stage_bytes = shape.weight_bytes_per_stage(tp, pp, args.dtype, quant)
        source = "estimate"
    kernel = kernel_bytes_per_stage(ctx, args)
    per_stage = [memory.weights_gib(b + k, n) - off for b, k, n, off in zip(stage_bytes, kernel, layers, offload)]
    largest = max(range(len(per_stage)), key=per_stage.__getitem__)
    return Weights(per_stage, source, kernel[largest] / GIB)


def weights_beyond_free(ctx: FitContext, args: VllmArgs, free_gib: float | None) -> str | None:
    """Why the GPU's free memory cannot take the model's weights (on one GPU) and the new engine's
    CUDA context, or None when it can or free memory is unknown. Memory that other processes hold
    is the cause (the budget is checked apart, by `check_launch`): no launch argument but CPU
    offload changes it."""
    if free_gib is None:
        return None
    weights = weights_per_gpu(ctx, args).largest_gib
    if free_gib >= weights + memory.CUDA_CONTEXT_GIB:
        return None
    return (f"only {free_gib:.2f} GiB of the GPU is free and the weights alone need {weights:.2f} GiB"
            f" (plus {memory.CUDA_CONTEXT_GIB:g} GiB for vLLM's CUDA context)")


def kernel_bytes_per_stage(ctx: FitContext, args: VllmArgs) -> list[float]:
    """Bytes vLLM's linear-layer kernel on this GPU adds to the checkpoint's tensors, on one GPU of
    each pipeline stage: AWQ's zero points unpacked by Machete on Hopper (modelshape)."""
    return unpacked_zero_point_bytes_per_stage(ctx.shape, gpuspecs.compute_capability(ctx.gpu_name),
                                               memory.parse_version(ctx.version), args.tensor_parallel_size,
                                               args.pipeline_parallel_size, args.dtype)


def decoder_gib_per_stage(shape: ModelShape, args: VllmArgs) -> list[float]:
    """Weight GiB of the decoder layers on one GPU of each pipeline stage: what `--cpu-offload-gb`
    can move. vLLM offloads decoder-layer parameters only (`make_layers`), never the embedding,
    lm_head or final norm."""
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    stages = shape.weight_bytes_per_stage(tp, pp, args.dtype, args.quantization)
    vocab = shape.vocab_size * shape.hidden_size * shape.dtype_bytes(args.dtype) / tp
    out = []
    for s, total in enumerate(stages):
        rest = float(total)
        if s == 0:
            rest -= vocab
        if s == len(stages) - 1:
            rest -= (vocab if not shape.tied_embeddings or len(stages) > 1 else 0.0) + shape.hidden_size * 2
        out.append(max(rest, 0.0) / GIB)
    return out


def _layer_param_bytes(shape: ModelShape, args: VllmArgs) -> list[float]:
    """One decoder layer's parameters on one GPU, in the order vLLM's modules register them
    (qkv_proj, o_proj, q/k norms, [router], gate_up_proj or the fused experts, down_proj, the two
    layer norms): what the CPU offloader walks through."""
    tp = args.tensor_parallel_size
    elem = shape.dtype_bytes(args.dtype)
    method, bits, group = shape.quant_method, shape.quant_bits, shape.quant_group_size
    if not method and args.quantization in ("fp8", "bitsandbytes", "fbgemm_fp8"):
        method, bits, group = args.quantization, (8 if args.quantization != "bitsandbytes" else 4), None
    lin = linear_bytes_per_element(method, bits, group, elem)
    h, hd = shape.hidden_size, shape.head_dim
    heads, kv = shape.num_heads / tp, max(1, shape.num_kv_heads // tp)
    out = [h * (heads + 2 * kv) * hd * lin, heads * hd * h * lin, 2 * hd * elem]
    if shape.num_experts:
        inter = (shape.moe_intermediate_size or shape.intermediate_size) * shape.num_experts / tp
        out += [h * shape.num_experts * elem, 2 * inter * h * lin, inter * h * lin]
        if shape.shared_expert_intermediate_size:
            shared = shape.shared_expert_intermediate_size / tp
            out += [2 * shared * h * lin, shared * h * lin]
    else:
        inter = shape.intermediate_size / tp
        out += [2 * inter * h * lin, inter * h * lin]
    return out + [2 * h * elem]


def offloaded_per_stage_gib(shape: ModelShape, args: VllmArgs) -> list[float]:
    """What `--cpu-offload-gb` moves to CPU memory on one GPU of each stage (vLLM counts it per
    GPU, in GiB). vLLM's offloader walks the decoder layers' parameters in order and moves each
    whole parameter while the bytes moved so far are below the asked amount, so it moves up to
    one parameter more; never more than the decoder layers hold."""
    want = float(args.cpu_offload_gb or 0.0) * GIB
    if want <= 0:
        return [0.0] * args.pipeline_parallel_size
    params = _layer_param_bytes(shape, args)
    out = []
    for layers, decoder in zip(shape.layers_per_stage(args.pipeline_parallel_size), decoder_gib_per_stage(shape, args)):
        per_layer = sum(params)
        whole = min(layers, int(want // per_layer)) if per_layer else 0
        moved = whole * per_layer
        if whole < layers:
            for size in params:
                if moved >= want:
                    break
                moved += size
        out.append(min(moved / GIB, decoder))
    return out


def offloaded_gib(ctx: FitContext, args: VllmArgs) -> float:
    """GiB of weights in CPU memory per GPU (the largest stage's), read over PCIe every step."""
    return max(offloaded_per_stage_gib(ctx.shape, args))


# ---------------------------------------------------------------- step 2: the budget


@dataclass(frozen=True)
class Budget:
    requested_gib: float       # total × utilization
    overhead: Overhead         # peak activation + non-torch
    available_gib: float       # KV cache on the tightest GPU (what vLLM prints as the cache's size)
    blocks: int                # KV blocks there
    accounting: memory.Accounting = memory.Accounting.BUDGET_0_26
    graph_gib: float = 0.0     # CUDA graphs per GPU (inside the budget from budget-0.30 on)
    before_warmup_gib: float | None = None   # extensible: the pre-warm-up estimate (the capacity)
    bound: str | None = None   # extensible: "budget" or "device"
    withheld_gib: float = 0.0  # extensible: free memory the utilization keeps out of the cache

    @property
    def usable_blocks(self) -> int:
        """Blocks one request may use: from 0.30 the null block is not one of them."""
        return max(self.blocks - 1, 0) if memory.null_block_reserved(self.accounting) and self.blocks else self.blocks


def overhead_for(ctx: FitContext, args: VllmArgs, cold: bool) -> Overhead:
    """The overhead of this launch: learned on this host when it can be, else the shape model;
    plus the context's margin, when it holds one back. `cold`: torch.compile's cache does not
    hold this configuration (eager mode compiles nothing: never cold)."""
    tokens, seqs = ctx.batch_limits(args)
    entry = ctx.entry_for(args)
    v1, offload = ctx.v1_sampler(args), bool(args.cpu_offload_gb)
    cold = cold and not args.enforce_eager
    if entry is not None and entry.observations:
        ov = entry.overhead(ctx.shape, args.tensor_parallel_size, tokens, seqs, cold, v1_sampler=v1,
                            cpu_offload=offload)
    else:
        ov = memory.modelled_overhead(ctx.shape, args.tensor_parallel_size, args.pipeline_parallel_size,
                                      tokens, seqs, cold, v1_sampler=v1, cpu_offload=offload, engine=ctx.engine)
    if ctx.overhead_margin_gib:
        ov = replace(ov, non_torch_gib=ov.non_torch_gib + ctx.overhead_margin_gib,
                     note=(ov.note + "; " if ov.note else "") + f"+{ctx.overhead_margin_gib:g} GiB margin")
    return ov


def kv_budget(ctx: FitContext, args: VllmArgs, weights: Weights, overhead: Overhead) -> Budget:
    """The KV cache on the tightest GPU, as this vLLM version sizes it (memory.Accounting):
    (total × utilization − weights − overhead [− CUDA graphs]) in blocks, or 0.34's post-warm-up
    sizing; `--kv-cache-memory-bytes` and `--num-gpu-blocks-override` replace what they replace."""
    requested = ctx.gpu_total_gib * args.gpu_memory_utilization
    block = ctx.block_size(args)
    accounting = ctx.accounting(args)
    kv_override = extra_arg(args, "--kv-cache-memory-bytes") or extra_arg(args, "--kv-cache-memory")
    blocks_override = extra_arg(args, "--num-gpu-blocks-override")
    graphs, _ = ctx.graph_gib(args)
    init_free = ctx.gpu_total_gib - memory.CUDA_CONTEXT_GIB  # no other process on the GPU
    best: Budget | None = None
    for w, layers in zip(weights.per_stage_gib, ctx.shape.layers_per_stage(args.pipeline_parallel_size)):
        per_token = ctx.shape.kv_bytes_per_token(args.tensor_parallel_size, args.kv_cache_dtype, args.dtype, layers=layers)
        before = requested - w - overhead.total_gib
        pre = None
        bound = None
        withheld = 0.0
        if accounting is memory.Accounting.BUDGET_0_8:
            avail = before - memory.CUDA_CONTEXT_GIB
        elif accounting.graph_estimate:
            avail = before - graphs
        elif accounting is memory.Accounting.EXTENSIBLE_0_34:
            pre = before
            sizing = memory.extensible_sizing(requested, init_free, w + overhead.non_torch_gib + graphs,
                                              ctx.engine.kept_for_transients_gib(overhead.activation_gib))
            bound, withheld = sizing.bound, sizing.withheld_gib
            capacity = memory.kv_blocks(before, per_token, block)
            nblocks = memory.extensible_blocks(sizing.available_gib, per_token, block, layers, capacity)
            avail = nblocks * block * per_token / GIB if before > 0 else before
        else:
            avail = before
        if kv_override and _parse_size(kv_override):
            avail = _parse_size(kv_override) / GIB  # type: ignore[operator]
        if accounting is not memory.Accounting.EXTENSIBLE_0_34 or avail <= 0:
            nblocks = memory.kv_blocks(avail, per_token, block)
        if blocks_override and blocks_override.isdigit():
            nblocks = int(blocks_override)
        if best is None or nblocks < best.blocks:
            best = Budget(requested, overhead, avail, nblocks, accounting, graphs, pre, bound, withheld)
    assert best is not None
    return best


# ---------------------------------------------------------------- step 3: the context


@dataclass(frozen=True)
class ContextChoice:
    max_model_len: int
    largest: int                 # the largest context one request of which fits
    target_met: bool | None
    notes: list[str]


def _sliding(ctx: FitContext, args: VllmArgs) -> tuple[int, int] | None:
    shape = ctx.shape
    if shape.attention_kind == "sliding" and shape.sliding_window:
        return shape.sliding_window, ctx.batch_limits(args)[0]
    return None


def choose_context(ctx: FitContext, args: VllmArgs, nblocks: int, usable: int | None = None) -> ContextChoice:
    """The context to launch with for a pool of `nblocks`: the profile's when one request of it
    fits (in `usable` blocks: from vLLM 0.30 the null block is not usable), else the largest that
    does; with a target, the longest that still keeps the target's concurrency (never shorter
    than the target's own context)."""
    fit_blocks = nblocks if usable is None else usable
    shape, recovery, target = ctx.shape, ctx.recovery, ctx.target
    block = ctx.block_size(args)
    sliding = _sliding(ctx, args)
    limit = shape.context_limit
    asked = args.max_model_len or limit
    cap = min(asked, recovery.max_max_model_len) if recovery.max_max_model_len else asked
    long_ok = recovery.allow_long_context
    min_len = recovery.min_max_model_len
    dp = args.data_parallel_size
    notes: list[str] = []
    largest = memory.largest_fitting(fit_blocks, block, limit if not long_ok else max(limit, asked), sliding)

    def plain() -> int:
        """The profile's context if one request of it fits, else the largest that does."""
        if memory.blocks_needed(cap, block, sliding) <= fit_blocks:
            if cap < asked:
                notes.append(f"max_model_len capped at recovery.max_max_model_len {_fmt_int(cap)}")
            return cap
        length = max(min(largest, cap) // block * block, 0)
        if length < min_len:
            notes.append(f"profile asks for {_fmt_int(asked)} but only {_fmt_int(largest)} tokens fit,"
                         f" below recovery.min_max_model_len {_fmt_int(min_len)}: the launch would fail")
            return min_len
        notes.append(f"profile asks for {_fmt_int(asked)} but {_fmt_int(largest)} fits:"
                     f" launching with {_fmt_int(length)}")
        return length

    if target is None:
        return ContextChoice(plain(), largest, None, notes)
    want, tctx = float(target.min_concurrency), int(target.context)

    def conc(c: int) -> float:
        return nblocks / memory.blocks_needed(c, block, sliding) * dp

    if tctx > cap:
        notes.append(f"target not met: its context {_fmt_int(tctx)} is above the {_fmt_int(cap)}"
                     " tokens this profile may launch with")
        return ContextChoice(plain(), largest, False, notes)
    if conc(tctx) + 1e-9 < want:
        length = min(tctx, largest // block * block) if largest >= block else tctx
        notes.append(f"target not met: {conc(tctx):.2f} requests of {_fmt_int(tctx)} tokens fit at once,"
                     f" the profile wants {want:g}; launching with {_fmt_int(max(length, min_len))}")
        return ContextChoice(max(length, min_len), largest, False, notes)
    length = memory.largest_fitting(fit_blocks, block, cap, sliding,
                                    enough=lambda c: conc(c) + 1e-9 >= want and memory.blocks_needed(c, block, sliding) <= fit_blocks)
    if length < cap:
        length = length // block * block
        notes.append(f"profile asks for {_fmt_int(asked)}; {_fmt_int(length)} keeps {want:g} requests of"
                     f" {_fmt_int(tctx)} tokens at once ({conc(tctx):.2f} fit): launching with {_fmt_int(length)}")
    return ContextChoice(max(length, tctx, min_len), largest, True, notes)


# ---------------------------------------------------------------- the three together


def predict_args(ctx: FitContext, args: VllmArgs, compile_cached: bool | None = None) -> Prediction:
    """Predict vLLM's startup numbers for `args` and the max_model_len to launch with.

    compile_cached: whether torch.compile's cache holds this configuration (None: known only when
    an earlier start on this host compiled exactly this configuration; otherwise cold)."""
    shape, recovery = ctx.shape, ctx.recovery
    tp, pp, dp = args.tensor_parallel_size, args.pipeline_parallel_size, args.data_parallel_size
    block = ctx.block_size(args)
    tokens, seqs = ctx.batch_limits(args)
    entry = ctx.entry_for(args)
    model_name = ctx.model or shape.name or "the model"
    accounting = ctx.accounting(args)
    notes: list[str] = list(memory.version_notes(ctx.vllm_version))
    assumptions: list[str] = [
        f"vLLM {ctx.version} memory accounting ({accounting}): {accounting.describe()}",
        f"GPU total {ctx.gpu_total_gib:.2f} GiB each (as NVML reports it), block size {block}",
        f"max_num_batched_tokens {tokens}{'' if args.max_num_batched_tokens else ' (vLLM default here)'},"
        f" max_num_seqs {seqs}{'' if args.max_num_seqs else ' (vLLM default here)'}",
    ]

    weights = weights_per_gpu(ctx, args)
    assumptions.append(WEIGHT_SOURCES[weights.source])
    if weights.kernel_gib:
        assumptions.append(f"+{weights.kernel_gib:.2f} GiB per GPU: vLLM's Machete kernel (compute capability 9.0) holds"
                           " the AWQ zero points at 16 bits, where the checkpoint packs them")
    offload = offloaded_gib(ctx, args)
    if offload:
        assumptions.append(f"cpu_offload_gb {args.cpu_offload_gb:g}: {offload:.2f} GiB of the decoder layers' weights per GPU"
                           " stay in CPU memory and cross PCIe every step")
    kind = shape.attention_kind
    if kind == "sliding" and shape.sliding_window:
        notes.append(f"every layer uses a {shape.sliding_window}-token sliding window: a request holds at most"
                     f" {_fmt_int(shape.sliding_window - 1 + tokens)} tokens of KV cache")
    elif kind == "hybrid":
        notes.append(f"{shape.num_sliding_layers} of {shape.num_layers} layers use a sliding window; the planner"
                     " counts every layer as full attention, so KV tokens and concurrency are lower bounds")
    elif kind == "mla":
        assumptions.append("MLA: one latent vector (kv_lora_rank + qk_rope_head_dim) per token and layer, on every GPU")

    limit = shape.context_limit
    asked = args.max_model_len or limit
    if asked > limit and not recovery.allow_long_context:
        notes.append(f"max_model_len {_fmt_int(asked)} is above the {_fmt_int(limit)} tokens {model_name} was trained for;"
                     " vLLM refuses it unless recovery.allow_long_context is set")

    def fit(cold: bool) -> tuple[Budget, ContextChoice]:
        budget = kv_budget(ctx, args, weights, overhead_for(ctx, args, cold))
        return budget, choose_context(ctx, args, budget.blocks, budget.usable_blocks)

    if compile_cached is not None:
        # the caller knows the compile cache's state for this launch
        warm = bool(compile_cached)
        budget, choice = fit(not warm)
    else:
        # Select the context with a cold compile (the conservative pool), then price the launch
        # with the compile state that context will really have: warm only when an earlier start
        # compiled exactly this configuration.
        budget, choice = fit(True)
        warm = entry is not None and any(
            o.same_compile(args, choice.max_model_len, tokens, seqs) for o in entry.observations)
        if warm:
            w_budget, w_choice = fit(False)
            if w_choice.max_model_len == choice.max_model_len:  # a different length would compile cold again
                budget, choice = w_budget, w_choice
            else:
                warm = False
    ov = budget.overhead
    notes[:0] = choice.notes
    if ov.note:
        notes.append(ov.note)
    elif entry is None:
        assumptions.append("no calibration: overhead (peak activation, non-torch) from the shape model"
                           " fitted to vLLM 0.26.0 on an H100" + (f", with vLLM {ctx.version}'s own figures measured on an H200"
                                                                   if ctx.engine != memory.BASELINE_ENGINE else ""))
    if ov.source == "model" and tp * pp > 1:
        assumptions.append(f"non-torch memory with {tp * pp} GPUs per replica: "
                           f"{memory.estimate_non_torch_gib(tp * pp, engine=ctx.engine):.2f} GiB (NCCL and all-reduce buffers; not measured)")

    sliding = _sliding(ctx, args)
    length, nblocks, avail = choice.max_model_len, budget.blocks, budget.available_gib
    kv_tokens = nblocks * block
    need = memory.blocks_needed(length, block, sliding)
    per_replica = nblocks / need if need else 0.0
    fits = avail > 0 and nblocks > 0 and need <= budget.usable_blocks and (recovery.allow_long_context or length <= limit)
    if avail <= 0:
        graph_part = f" − {_gib(budget.graph_gib)} CUDA graphs" if budget.accounting.graphs_in_budget and budget.graph_gib else ""
        notes.append(f"no memory left for the KV cache: {_gib(budget.requested_gib)} budget − {_gib(weights.largest_gib)}"
                     f" weights − {_gib(ov.total_gib)} overhead{graph_part} ≤ 0; raise gpu_memory_utilization or use more GPUs")
    elif need > budget.usable_blocks and not any("min_max_model_len" in n for n in notes):
        notes.append(f"even {_fmt_int(length)} tokens (recovery.min_max_model_len {_fmt_int(recovery.min_max_model_len)})"
                     f" do not fit: the KV cache holds {_fmt_int(kv_tokens)} tokens")

    headroom = ctx.gpu_total_gib - budget.requested_gib
    graphs, graph_source = ctx.graph_gib(args)
    if accounting.graphs_in_budget and not args.enforce_eager:
        how = ("vLLM subtracts its estimate of them before sizing the cache" if accounting.graph_estimate
               else "measured after capture, before the cache is sized")
        assumptions.append(f"CUDA graphs {graphs:.2f} GiB per GPU ({graph_source}), inside the budget: {how}")
        if graph_source == "estimated":
            notes.append(f"vLLM {ctx.version} counts CUDA-graph memory inside the budget; the planner's"
                         f" {graphs:.2f} GiB for it is an estimate (from 1.00 GiB for 36 layers and 1.87 GiB for 64, measured"
                         f" on two models{' on one GPU each; shared by the tensor-parallel ranks, unmeasured' if tp > 1 else ''}"
                         f"{f', × {ctx.engine.graph_factor:g} as vLLM {ctx.version} captured them' if ctx.engine.graph_factor != 1.0 else ''}): KV memory may"
                         f" differ by a few tenths of a GiB until a start on this host is learned")
    if accounting is memory.Accounting.EXTENSIBLE_0_34:
        assumptions.append(f"no other process on the GPU: {ctx.gpu_total_gib - memory.CUDA_CONTEXT_GIB:.2f} GiB free at start"
                           " (vLLM 0.34 no longer refuses to start when less is free: its KV cache comes out smaller)")
        if budget.bound == "device":
            notes.append(f"vLLM {ctx.version} keeps max(1 GiB, 0.75 × peak activation) of device memory free after warm-up:"
                         f" at gpu_memory_utilization {args.gpu_memory_utilization:g} the free device memory, not the"
                         " utilization, limits the KV cache")
        elif (0.7 < args.gpu_memory_utilization < 1.0
              and budget.withheld_gib >= memory.EXTENSIBLE_WITHHELD_WARNING_GIB):
            notes.append(f"gpu_memory_utilization {args.gpu_memory_utilization:g} keeps ~{budget.withheld_gib:.2f} GiB of"
                         f" free device memory out of the KV cache; vLLM {ctx.version} warns about it (its extensible KV"
                         " cache needs no headroom below 1.0 unless other processes share the GPU)")
    elif not accounting.graphs_in_budget:
        # --- headroom above the budget: CUDA graphs and the CUDA context live there
        if headroom < graphs + memory.CUDA_CONTEXT_GIB:
            safe = memory.safe_utilization(ctx.gpu_total_gib, graphs)
            notes.append(f"only {_gib(headroom)} stays outside the {args.gpu_memory_utilization:g} budget; CUDA graphs"
                         f" (~{graphs:.1f} GiB) and the CUDA context (~{memory.CUDA_CONTEXT_GIB} GiB) need more: graph capture may run"
                         f" out of memory (gpu_memory_utilization ≤ {math.floor(safe * 100) / 100:.2f} or enforce_eager avoids it)")
    if dp > 1:
        assumptions.append(f"{dp} data-parallel replicas: KV tokens are per replica, concurrency counts all replicas")
    assumptions.append("enforce_eager: nothing compiles (the activation peaks as a warm start's)" if args.enforce_eager
                       else "torch.compile cache " + ("warm (this configuration was compiled before)" if warm else "cold"))
    notes.extend(ctx.notes)

    target = ctx.target
    return Prediction(
        weights_gib=weights.largest_gib,
        kv_bytes_per_token=ctx.kv_bytes_per_token(args),
        available_kv_cache_gib=avail,
        kv_cache_tokens=kv_tokens,
        max_concurrency=per_replica * dp,
        max_model_len=length,
        largest_context=choice.largest,
        fits=fits,
        notes=notes,
        assumptions=assumptions,
        requested_gib=budget.requested_gib,
        activation_gib=ov.activation_gib,
        non_torch_gib=ov.non_torch_gib,
        compile_cold=ov.cold,  # overhead_for's decision: never for eager mode
        calibrated=ov.source == "calibration",
        weights_source=weights.source,
        num_gpu_blocks=nblocks,
        block_size=block,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        data_parallel=dp,
        max_concurrency_per_replica=per_replica,
        requested_max_model_len=asked,
        target_met=choice.target_met,
        target={"min_concurrency": target.min_concurrency, "context": target.context} if target else None,
        gpu_total_gib=ctx.gpu_total_gib,
        headroom_gib=headroom,
        vllm_version=ctx.version,
        accounting=str(accounting),
        cuda_graph_gib=graphs,
        available_kv_cache_gib_before_warmup=budget.before_warmup_gib,
        kv_cache_bound=budget.bound,
        cpu_offload_gib=offload,
        _sliding=sliding,
    )


def predict(shape: ModelShape, args: VllmArgs, gpu_total_gib: float, gpu_count: int,
            calibration: CalibrationSource | CalibrationEntry | Observation | None = None,
            target: Target | None = None, vllm_version: str | None = None, *,
            recovery: Recovery | None = None, model: str | None = None, gpu_name: str | None = None,
            inventory: WeightInventory | None = None, compile_cached: bool | None = None) -> Prediction:
    """predict_args() for a shape and a GPU, without building a FitContext by hand."""
    ctx = FitContext.of(shape, gpu_total_gib, gpu_count, calibration, target, vllm_version, recovery=recovery,
                        model=model, gpu_name=gpu_name, inventory=inventory, tensor_parallel=args.tensor_parallel_size)
    return predict_args(ctx, args, compile_cached)


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
        weights = max(memory.weights_gib(b, n) - off for b, n, off in
                      zip(stage_bytes, shape.layers_per_stage(pp), offloaded_per_stage_gib(shape, args)))
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
    calibration: CalibrationSource | CalibrationEntry | Observation | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Requests of each context length the KV cache holds at once with `args` (all DP replicas
    together); `fits` is False where one request of that length does not fit or exceeds the
    model's context. Extra keyword arguments go to predict()."""
    base = predict(shape, args, gpu_total_gib, gpu_count, calibration, **kwargs)
    limit = shape.context_limit
    rows = []
    for ctx in contexts:
        ok = base.fits_context(ctx) and ctx <= limit
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
