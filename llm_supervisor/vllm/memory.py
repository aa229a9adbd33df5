"""vLLM's memory model: every constant and estimator the planner and the recovery policy use. Pure.

The accounting is vLLM 0.26.0's, as its own log line states it ("Desired GPU memory
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

vLLM keys its torch.compile cache by max_model_len (among others), so a launch with a context it
has not compiled before compiles cold, and its profiling run peaks higher by the cold factor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from llm_supervisor.vllm.modelshape import GIB, MIB, ModelShape

# ---------------------------------------------------------------- fitted constants (see module doc)

ACTIVATION_BYTES = 2
SAMPLER_LOGIT_BYTES = 4
ACTIVATION_SLACK_GIB = 0.02
COLD_ACTIVATION_FACTOR = 1.30
NON_TORCH_GIB = 0.22
NON_TORCH_MULTI_GPU_GIB = 0.30
WEIGHT_SLACK_PER_LAYER_BYTES = 2 * MIB
# What a new engine process's CUDA context takes before vLLM measures free memory (H100, CUDA
# 13: NVML showed 0.52 GiB more free than vLLM's "Free memory on device" line).
CUDA_CONTEXT_GIB = 0.5
# CUDA-graph memory vLLM 0.26 takes above the utilization budget when no log has said
# (Qwen3-4B on an H100: "Graph capturing finished in 4 secs, took 1.00 GiB").
CUDA_GRAPH_ESTIMATE_GIB = 1.0
# Printed GiB values are rounded to 0.01 (%.2f or round(x, 2)); a length computed from them must
# hold for the worst case of that rounding, or the relaunch fails again.
PRINT_ROUNDING_GIB = 0.005
# vLLM refuses to start unless free memory ≥ utilization × total; what we keep below that line.
FREE_CHECK_MARGIN_GIB = 0.25
DEFAULT_BLOCK_SIZE = 16
DEFAULT_VLLM_VERSION = "0.26.0"


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


# ---------------------------------------------------------------- weights


def weights_gib(tensor_bytes: float, layers: int) -> float:
    """What vLLM reports for `tensor_bytes` of weights over `layers` layers on one GPU."""
    return (tensor_bytes + WEIGHT_SLACK_PER_LAYER_BYTES * layers) / GIB


# ---------------------------------------------------------------- the overhead beyond the weights


def estimate_activation_gib(shape: ModelShape, tensor_parallel: int, max_num_batched_tokens: int,
                            max_num_seqs: int, cold: bool = True) -> float:
    """Peak activation of vLLM's profiling run on one GPU (see the module docstring)."""
    tokens = max(1, max_num_batched_tokens)
    seqs = max(1, min(max_num_seqs, tokens))
    forward = tokens * shape.activation_width(tensor_parallel) * ACTIVATION_BYTES
    sampler = seqs * shape.vocab_size * SAMPLER_LOGIT_BYTES
    warm = max(forward, sampler) / GIB + ACTIVATION_SLACK_GIB
    return warm * COLD_ACTIVATION_FACTOR if cold else warm


def cold_compile_extra_gib(shape: ModelShape, tensor_parallel: int, max_num_batched_tokens: int,
                           max_num_seqs: int) -> float:
    """How much more activation a cold torch.compile takes than a warm one."""
    warm = estimate_activation_gib(shape, tensor_parallel, max_num_batched_tokens, max_num_seqs, cold=False)
    return warm * (COLD_ACTIVATION_FACTOR - 1)


def estimate_non_torch_gib(world_size: int) -> float:
    """Memory outside PyTorch's allocator that grows during startup (cuBLAS workspaces, NCCL)."""
    return NON_TORCH_GIB + (NON_TORCH_MULTI_GPU_GIB if world_size > 1 else 0.0)


@dataclass(frozen=True)
class Overhead:
    """What one GPU spends beyond the weights inside the budget: peak activation and non-torch."""

    activation_gib: float
    non_torch_gib: float
    cold: bool
    source: str  # "model" or "calibration"
    note: str = ""

    @property
    def total_gib(self) -> float:
        return self.activation_gib + self.non_torch_gib


def modelled_overhead(shape: ModelShape, tensor_parallel: int, pipeline_parallel: int,
                      max_num_batched_tokens: int, max_num_seqs: int, cold: bool) -> Overhead:
    """The overhead from the shape model alone (no calibration)."""
    act = estimate_activation_gib(shape, tensor_parallel, max_num_batched_tokens, max_num_seqs, cold=cold)
    return Overhead(act, estimate_non_torch_gib(tensor_parallel * pipeline_parallel), cold, "model")


# ---------------------------------------------------------------- KV blocks and contexts


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def blocks_needed(context: int, block: int, sliding: tuple[int, int] | None) -> int:
    """KV blocks one request of `context` tokens takes on every layer (vLLM's
    `max_memory_usage_bytes` / page): full attention cdiv(context, block); a sliding window
    cdiv(min(window − 1 + max_num_batched_tokens, context), block) + 1."""
    if sliding is None:
        return cdiv(max(1, context), block)
    window, tokens = sliding
    return cdiv(min(window - 1 + tokens, max(1, context)), block) + 1


def kv_blocks(available_gib: float, bytes_per_token: int, block: int) -> int:
    """Blocks of `block` tokens that `available_gib` holds at `bytes_per_token` (all layers)."""
    if not bytes_per_token:
        return 0
    return int(max(0.0, available_gib) * GIB // (bytes_per_token * block))


def largest_fitting(blocks: int, block: int, cap: int, sliding: tuple[int, int] | None,
                    enough: object = None) -> int:
    """The largest context ≤ cap (a block multiple, unless cap itself) for which `enough(ctx)`
    holds (default: one request fits in `blocks`); 0 when none does."""
    test = enough or (lambda ctx: blocks_needed(ctx, block, sliding) <= blocks)
    if cap <= 0:
        return 0
    if test(cap):  # type: ignore[operator]
        return cap
    lo, hi = 0, cap // block  # in blocks: lo fits (0 trivially), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if test(mid * block):  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return lo * block


# ---------------------------------------------------------------- above the budget


def graph_headroom_gib(enforce_eager: bool, seen_graph_gib: float | None = None) -> float:
    """CUDA-graph memory to expect above the budget: what a log showed, else the estimate."""
    if enforce_eager:
        return 0.0
    return seen_graph_gib if seen_graph_gib and seen_graph_gib > 0 else CUDA_GRAPH_ESTIMATE_GIB


def safe_utilization(gpu_total_gib: float, graph_gib: float) -> float:
    """The highest utilization that leaves room above the budget for CUDA graphs and the context."""
    return max(0.0, (gpu_total_gib - graph_gib - CUDA_CONTEXT_GIB) / gpu_total_gib)


def floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-6) / 100


def ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-6) / 100
