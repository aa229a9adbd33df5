"""vLLM's memory model: every constant and estimator the planner and the recovery policy use. Pure.

How vLLM sizes the KV cache depends on its version (docs/vllm-versions.md §4-§5, read from each
wheel's source); each way has a name, the *accounting*, that `plan --json` reports:

    budget-0.8       (0.8.5 … 0.8.x)  total × util − weights − peak activation − everything else on
                     the GPU that is not torch's (this process's CUDA context included)
    budget-0.26      (0.9 … 0.29)     ceil(total × util) − weights − peak activation − non-torch;
                     CUDA graphs come out of the headroom above that budget (model runner V2)
    budget-0.30      (0.30 … 0.33, and 0.34 with the extensible KV cache off) the same minus
                     vLLM's estimate of the CUDA-graph memory: graphs inside the budget
    extensible-0.34  (0.34, the default on CUDA) a pre-warm-up estimate as in budget-0.26 gives
                     the cache's capacity (and the first fit check); after warm-up and graph
                     capture the cache gets, from measured memory,
                         min(budget − non-KV use, device headroom − margin) − transient peak
                     (non-KV use = weights + non-torch + CUDA graphs; margin = max(1 GiB,
                     0.75 × transient)), rounded down to whole 2 MiB pages per layer

The budget-0.26 numbers, as vLLM 0.26's own log line states them ("Desired GPU memory
utilization is (0.3, 23.75 GiB). Actual usage is 7.56 GiB for weight, 0.62 GiB for peak
activation, 0.22 GiB for non-torch memory, and 1.0 GiB for CUDAGraph memory"):

    available KV = total × gpu_memory_utilization − weights − peak activation − non-torch
    blocks       = floor(available / (layers × page)),  page = 2 × block × kv_heads × head_dim × bytes
    KV tokens    = blocks × block_size (the smallest over the GPUs)
    concurrency  = blocks / cdiv(context, block_size)

Overhead without calibration (the "cold" model; constants fitted to the H100 fixtures of
Qwen3-4B at max_num_batched_tokens 8192, max_num_seqs 1024, where vLLM printed 0.62 GiB peak
activation with a warm torch.compile cache, 0.80 GiB cold, 0.22 GiB non-torch):

    activation (warm) = max(T × width × 2 B, S × vocab × 4 B) + 0.02 GiB
        T = max_num_batched_tokens, S = min(max_num_seqs, T)
        width = 3 × intermediate / TP + 4 × hidden  (gate/up output, activated intermediate,
                hidden-size buffers; MoE: top-k experts' intermediates)
        S × vocab × 4 B: the sampler warm-up's float32 logits for S sequences
    activation (cold) = activation (warm) × 1.30   (0.80 / 0.62: compiling and autotuning
        allocate on top of the warm peak; eager mode compiles nothing and peaks as warm: 0.63
        GiB for Qwen3-4B, 1.52 for Qwen3-32B on an H200, against 0.62 and 1.50 modelled)
    non-torch         = 0.22 GiB on one GPU, + 0.30 GiB with several (NCCL, custom all-reduce;
                        not measured here)

    V1 model runner chosen over the default V2 one (0.22+; the supervisor does so to offload on
    0.22-0.27): its profiling run warms the whole sampler, twice, the second time through the
    native top-k/top-p path with a generator (0.26's gpu_model_runner._dummy_sampler_run and
    topk_topp_sampler.forward_native): the logits, their softmax, the exponential noise and
    their quotient, four float32 [S, vocab] tensors at once, which compiling does not change:
        activation = max(the above, 4 × S × vocab × 4 B + 0.02 GiB)
    (Qwen3-32B at S = 1024 on an H200: 2.34 GiB; vLLM 0.26 printed 2.23 compiled or eager, 1.52
    at S = 16 and on the V2 runner).

    CPU offload (`--cpu-offload-gb`): non-torch + 0.12 GiB (vLLM 0.26 on an H200 printed 0.34 and
    0.32 GiB with 42-43 GiB of Qwen3-32B offloaded, compiled and eager; 0.22 without offload on
    either runner): the device's mappings of the pinned host memory the GPU reads.
    weights (vLLM)    = tensor bytes + 2 MiB per layer (allocator slack: 7.49 GiB of tensors
                        showed as 7.56 GiB)

    CUDA graphs       = 1.00 GiB per 36 layers on one GPU (Qwen3-4B on an H100: 1.00 GiB; the
                        same rate gives 1.78 GiB for Qwen3-32B's 64 layers, where vLLM 0.26 on an
                        H200 took 1.87 GiB); not measured with tensor parallelism

vLLM 0.34 (torch 2.14) spends differently beyond the weights; measured on an H200 (Qwen3-4B shape,
util 0.15 and 0.09, 8192 batched tokens, 1024 sequences; tests/fixtures/vllm-0.34.0-h200), its
"Actual usage is 8.36 GiB for consumed memory (weights + non-torch), 0.93 GiB for peak
activation, and 0.69 GiB for CUDAGraph memory" and "1.04 GiB kept for transient activations
(0.93 GiB allocated at peak, 1.04 GiB of torch reservation growth)" give, against the model above
(EngineMemory, engine_memory):

    non-torch          + 0.58 GiB   (0.80 against 0.22: weights 7.56 of the 8.36 consumed)
    activation         × 1.5, compiled cold or warm alike (0.93 against 0.62 warm; a cold
                       compile of a new max_model_len printed the same 0.93)
    transient kept     × 1.12 of the peak (torch's reservation growth: 1.04 against 0.93)
    CUDA graphs        × 0.69 (0.69 GiB against 1.00 for 36 layers)
    block size         64 (CacheConfig.DEFAULT_BLOCK_SIZE; 16 before 0.34)

vLLM keys its torch.compile cache by max_model_len (among others), so a launch with a context it
has not compiled before compiles cold, and its profiling run peaks higher by the cold factor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

from llm_supervisor.vllm.modelshape import GIB, MIB, ModelShape

# ---------------------------------------------------------------- fitted constants (see module doc)

ACTIVATION_BYTES = 2
SAMPLER_LOGIT_BYTES = 4
ACTIVATION_SLACK_GIB = 0.02
COLD_ACTIVATION_FACTOR = 1.30
NON_TORCH_GIB = 0.22
NON_TORCH_MULTI_GPU_GIB = 0.30
V1_SAMPLER_BUFFERS = 4        # float32 [S, vocab] tensors the V1 runner's sampler warm-up holds
NON_TORCH_OFFLOAD_GIB = 0.12  # with CPU offload (H200, vLLM 0.26: 0.32-0.34 GiB against 0.22)
WEIGHT_SLACK_PER_LAYER_BYTES = 2 * MIB
# What a new engine process's CUDA context takes before vLLM measures free memory (H100, CUDA
# 13: NVML showed 0.52 GiB more free than vLLM's "Free memory on device" line).
CUDA_CONTEXT_GIB = 0.5
# CUDA-graph memory on one GPU when no log has said: linear in the layers through two
# measurements, Qwen3-4B's 36 layers on an H100 ("Graph capturing finished in 4 secs, took 1.00
# GiB") and Qwen3-32B's 64 on an H200 (1.87 GiB); with tensor parallelism each rank's share of
# the activations (unmeasured), at least CUDA_GRAPH_MIN_GIB.
CUDA_GRAPH_ESTIMATE_GIB = 1.0
CUDA_GRAPH_REFERENCE_LAYERS = 36
CUDA_GRAPH_GIB_PER_LAYER = (1.87 - 1.00) / (64 - 36)
CUDA_GRAPH_MIN_GIB = 0.25
# vLLM 0.34's extensible KV cache (v1/worker/extensible_kv_cache.py): the margin kept free beyond
# the transient peak when the device, not the budget, binds; the CUDA VMM granule each layer's
# committed segment is rounded up to (assumed 2 MiB); the null block stays committed.
KV_MARGIN_FLOOR_GIB = 1.0
KV_MARGIN_FRACTION = 0.75
VMM_GRANULE_BYTES = 2 * MIB
# 0.34 warns when a utilization in (0.7, 1.0) keeps at least this much free memory out of the cache.
EXTENSIBLE_WITHHELD_WARNING_GIB = 1.0
# Printed GiB values are rounded to 0.01 (%.2f or round(x, 2)); a length computed from them must
# hold for the worst case of that rounding, or the relaunch fails again.
PRINT_ROUNDING_GIB = 0.005
# vLLM refuses to start unless free memory ≥ utilization × total; what we keep below that line.
FREE_CHECK_MARGIN_GIB = 0.25
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class EngineMemory:
    """How one generation of vLLM (and the torch it pins) spends memory beyond the weights,
    relative to the constants above (fitted on 0.26 with torch 2.11)."""

    block_size: int = DEFAULT_BLOCK_SIZE
    non_torch_extra_gib: float = 0.0
    activation_factor: float = 1.0      # × the (warm) activation model
    cold_factor: float = COLD_ACTIVATION_FACTOR
    reservation_growth: float = 1.0     # transient kept / peak allocated (0.34's post-warm-up sizing)
    graph_factor: float = 1.0

    def kept_for_transients_gib(self, peak_gib: float) -> float:
        """What the cache leaves for transient activations after warm-up (0.34): the profiled
        peak, grown as torch's reservation grows past it."""
        return peak_gib * self.reservation_growth


BASELINE_ENGINE = EngineMemory()
# vLLM 0.34.0 with torch 2.14 on an H200 (see the module docstring).
ENGINE_0_34 = EngineMemory(block_size=64, non_torch_extra_gib=0.58, activation_factor=1.5, cold_factor=1.0,
                           reservation_growth=1.12, graph_factor=0.69)

# ---------------------------------------------------------------- versions and their accounting

# The versions whose source was read (docs/vllm-versions.md) and whose logs are test fixtures.
SUPPORTED_VERSIONS = ("0.8.5", "0.26.0", "0.28.0", "0.30.0", "0.31.0", "0.32.0", "0.33.0", "0.34.0")
OLDEST_SUPPORTED_VERSION = SUPPORTED_VERSIONS[0]
NEWEST_SUPPORTED_VERSION = SUPPORTED_VERSIONS[-1]
# What the planner plans for when it cannot tell which vLLM will run.
DEFAULT_VLLM_VERSION = NEWEST_SUPPORTED_VERSION
# vLLM 0.34 flags that turn the extensible KV cache off (or size the cache by hand).
EXTENSIBLE_OFF_FLAGS = ("--no-enable-extensible-kv-cache", "--kv-cache-memory-bytes", "--kv-cache-memory",
                        "--num-gpu-blocks-override")


class Accounting(str, Enum):
    """How a vLLM version sizes the KV cache (see the module docstring)."""

    BUDGET_0_8 = "budget-0.8"
    BUDGET_0_26 = "budget-0.26"
    BUDGET_0_26_V1 = "budget-0.26-v1"
    BUDGET_0_30 = "budget-0.30"
    EXTENSIBLE_0_34 = "extensible-0.34"

    def __str__(self) -> str:
        return self.value

    @property
    def graphs_in_budget(self) -> bool:
        """CUDA-graph memory comes out of the utilization budget (estimated or measured)."""
        return self in (Accounting.BUDGET_0_26_V1, Accounting.BUDGET_0_30, Accounting.EXTENSIBLE_0_34)

    @property
    def graph_estimate(self) -> bool:
        """vLLM estimates the CUDA graphs with a throwaway capture and subtracts that from the budget."""
        return self in (Accounting.BUDGET_0_26_V1, Accounting.BUDGET_0_30)

    @property
    def free_memory_check(self) -> bool:
        """vLLM refuses to start when free memory is below the budget ("… on startup is less than
        desired GPU memory utilization"): from 0.9 while the budget is fixed at start."""
        return self in (Accounting.BUDGET_0_26, Accounting.BUDGET_0_26_V1, Accounting.BUDGET_0_30)

    def describe(self) -> str:
        return _ACCOUNTING_TEXT[self]


_ACCOUNTING_TEXT = {
    Accounting.BUDGET_0_8: ("available KV = GPU total × gpu_memory_utilization − weights − peak activation − all other"
                            " memory in use on the GPU (the CUDA context included); CUDA graphs above that budget"),
    Accounting.BUDGET_0_26: ("available KV = GPU total × gpu_memory_utilization − weights − peak activation − non-torch"
                             " memory; CUDA graphs and the CUDA context use the memory above that budget"),
    Accounting.BUDGET_0_26_V1: ("available KV = GPU total × gpu_memory_utilization − weights − peak activation −"
                                " non-torch memory − the V1 model runner's estimate of the CUDA-graph memory"),
    Accounting.BUDGET_0_30: ("available KV = GPU total × gpu_memory_utilization − weights − peak activation − non-torch"
                             " memory − vLLM's estimate of the CUDA-graph memory"),
    Accounting.EXTENSIBLE_0_34: ("extensible KV cache: sized after warm-up from measured memory, KV = min(GPU total ×"
                                 " gpu_memory_utilization − weights − non-torch − CUDA graphs, free memory at start −"
                                 " the same − max(1 GiB, 0.75 × peak activation)) − peak activation, in whole 2 MiB"
                                 " pages per layer; 'Available KV cache memory' is only its pre-warm-up estimate"),
}


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """"0.26.0" → (0, 26, 0); "0.11.1rc2.dev5" → (0, 11, 1); None when unparseable."""
    if not text:
        return None
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", str(text).strip())
    if not m:
        return None
    return tuple(int(g) for g in m.groups(default="0"))


def accounting_for(vllm_version: str | None, extra_args: tuple[str, ...] | list[str] = (),
                   v1_runner: bool = False) -> Accounting:
    """The accounting `vllm_version` (None: the default, the newest supported) uses with these extra
    arguments: 0.34's extensible KV cache is off with --no-enable-extensible-kv-cache,
    --kv-cache-memory-bytes or --num-gpu-blocks-override (then it sizes as 0.33 did). v1_runner:
    the engine runs on vLLM's V1 model runner (vllm/runner.py says when), which from 0.21 takes
    its CUDA-graph estimate out of the budget; the V2 runner does so only from 0.30."""
    version = parse_version(vllm_version or DEFAULT_VLLM_VERSION) or parse_version(DEFAULT_VLLM_VERSION)
    assert version is not None
    if version < (0, 9):
        return Accounting.BUDGET_0_8
    if version < (0, 30):
        return Accounting.BUDGET_0_26_V1 if v1_runner and version >= (0, 21) else Accounting.BUDGET_0_26
    if version < (0, 34):
        return Accounting.BUDGET_0_30
    flags = {str(a).split("=", 1)[0] for a in extra_args}
    if flags & set(EXTENSIBLE_OFF_FLAGS):
        return Accounting.BUDGET_0_30
    return Accounting.EXTENSIBLE_0_34


def engine_memory(vllm_version: str | None) -> EngineMemory:
    """The memory figures of `vllm_version`'s generation (None: the newest supported)."""
    version = parse_version(vllm_version or DEFAULT_VLLM_VERSION) or (0, 34, 0)
    return ENGINE_0_34 if version >= (0, 34) else BASELINE_ENGINE


def block_size_for(block_size: int | None, vllm_version: str | None) -> int:
    """The KV block size a launch runs with: `--block-size`, else the version's default."""
    return block_size or engine_memory(vllm_version).block_size


def version_notes(vllm_version: str | None) -> list[str]:
    """What makes a prediction for this version less certain than for the versions read."""
    version = parse_version(vllm_version)
    if version is None:
        return [f"vLLM version not known before launch: planned for the newest supported, {NEWEST_SUPPORTED_VERSION},"
                " until the engine prints its own"]
    newest = parse_version(NEWEST_SUPPORTED_VERSION)
    oldest = parse_version(OLDEST_SUPPORTED_VERSION)
    assert newest is not None and oldest is not None
    shown = ".".join(map(str, version))
    if version > newest:
        return [f"vLLM {shown} is newer than the newest version this supervisor knows ({NEWEST_SUPPORTED_VERSION}):"
                f" planned with {NEWEST_SUPPORTED_VERSION}'s memory accounting, which it may have changed"]
    if version < oldest:
        return [f"vLLM {shown} is older than the oldest version this supervisor knows ({OLDEST_SUPPORTED_VERSION}):"
                " its memory accounting may differ"]
    read = {parse_version(v)[:2] for v in SUPPORTED_VERSIONS}  # type: ignore[index]
    if version[:2] not in read:
        return [f"vLLM {shown}'s source was not read: its memory accounting is inferred from the versions read"
                f" around it ({', '.join(SUPPORTED_VERSIONS)})"]
    return []


def default_utilization(vllm_version: str | None, extra_args: tuple[str, ...] | list[str] = ()) -> float:
    """`--gpu-memory-utilization` when not given: 0.9 before 0.21, 0.92 from 0.21, 1.0 with 0.34's
    extensible KV cache (CacheConfig.resolved_gpu_memory_utilization)."""
    version = parse_version(vllm_version or DEFAULT_VLLM_VERSION) or (0, 34, 0)
    if accounting_for(vllm_version, extra_args) is Accounting.EXTENSIBLE_0_34:
        return 1.0
    return 0.92 if version >= (0, 21) else 0.9


def default_batch_limits(gpu_total_gib: float, gpu_name: str | None = None,
                         vllm_version: str | None = None) -> tuple[int, int]:
    """vLLM's defaults for `vllm serve` (max_num_batched_tokens, max_num_seqs).

    From ~0.9 (`EngineArgs.get_batch_defaults`): 8192 / 1024 on a GPU of 70 GiB or more that is
    not an A100, else 2048 / 256; from 0.28, 16384 / 1024 on a GPU of 160 GiB or more. Before
    0.9, 8192 on H100/H200 by name, else 2048, with 256 sequences. None: the newest supported."""
    name = (gpu_name or "").lower()
    version = parse_version(vllm_version or DEFAULT_VLLM_VERSION)
    if version is not None and version < (0, 9):
        big = "h100" in name or "h200" in name
        return (8192 if big else 2048), 256
    if version is not None and version >= (0, 28) and gpu_total_gib >= 160:
        return 16384, 1024
    if gpu_total_gib >= 70 and "a100" not in name and not (version is not None and version >= (0, 33) and "gb10" in name):
        return 8192, 1024
    return 2048, 256


# ---------------------------------------------------------------- weights


def weights_gib(tensor_bytes: float, layers: int) -> float:
    """What vLLM reports for `tensor_bytes` of weights over `layers` layers on one GPU."""
    return (tensor_bytes + WEIGHT_SLACK_PER_LAYER_BYTES * layers) / GIB


# ---------------------------------------------------------------- the overhead beyond the weights


def estimate_activation_gib(shape: ModelShape, tensor_parallel: int, max_num_batched_tokens: int,
                            max_num_seqs: int, cold: bool = True, v1_sampler: bool = False,
                            engine: EngineMemory = BASELINE_ENGINE) -> float:
    """Peak activation of vLLM's profiling run on one GPU (see the module docstring); v1_sampler:
    the V1 runner's full sampler warm-up runs (runner.v1_sampler_warmup)."""
    tokens = max(1, max_num_batched_tokens)
    seqs = max(1, min(max_num_seqs, tokens))
    forward = tokens * shape.activation_width(tensor_parallel) * ACTIVATION_BYTES
    sampler = seqs * shape.vocab_size * SAMPLER_LOGIT_BYTES
    warm = (max(forward, sampler) / GIB + ACTIVATION_SLACK_GIB) * engine.activation_factor
    act = warm * engine.cold_factor if cold else warm
    if v1_sampler:
        act = max(act, V1_SAMPLER_BUFFERS * sampler / GIB + ACTIVATION_SLACK_GIB)
    return act


def cold_compile_extra_gib(shape: ModelShape, tensor_parallel: int, max_num_batched_tokens: int,
                           max_num_seqs: int, v1_sampler: bool = False,
                           engine: EngineMemory = BASELINE_ENGINE) -> float:
    """How much more activation a cold torch.compile takes than a warm one."""
    args = (shape, tensor_parallel, max_num_batched_tokens, max_num_seqs)
    return (estimate_activation_gib(*args, cold=True, v1_sampler=v1_sampler, engine=engine)
            - estimate_activation_gib(*args, cold=False, v1_sampler=v1_sampler, engine=engine))


def estimate_non_torch_gib(world_size: int, cpu_offload: bool = False,
                           engine: EngineMemory = BASELINE_ENGINE) -> float:
    """Memory outside PyTorch's allocator that grows during startup (cuBLAS workspaces, NCCL;
    with CPU offload, the mappings of the pinned weights)."""
    return (NON_TORCH_GIB + engine.non_torch_extra_gib + (NON_TORCH_MULTI_GPU_GIB if world_size > 1 else 0.0)
            + (NON_TORCH_OFFLOAD_GIB if cpu_offload else 0.0))


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
                      max_num_batched_tokens: int, max_num_seqs: int, cold: bool,
                      v1_sampler: bool = False, cpu_offload: bool = False,
                      engine: EngineMemory = BASELINE_ENGINE) -> Overhead:
    """The overhead from the shape model alone (no calibration); v1_sampler: the launch runs on
    the V1 model runner where V2 is the default (its sampler warm-up); cpu_offload: it offloads
    weights."""
    act = estimate_activation_gib(shape, tensor_parallel, max_num_batched_tokens, max_num_seqs, cold=cold,
                                  v1_sampler=v1_sampler, engine=engine)
    nt = estimate_non_torch_gib(tensor_parallel * pipeline_parallel, cpu_offload=cpu_offload, engine=engine)
    return Overhead(act, nt, cold, "model")


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


def estimate_graph_gib(layers: int | float | None = None, tensor_parallel: int = 1,
                       engine: EngineMemory = BASELINE_ENGINE) -> float:
    """CUDA-graph memory on one GPU holding `layers` layers (None: the reference model's) split
    `tensor_parallel` ways."""
    n = layers if layers and layers > 0 else CUDA_GRAPH_REFERENCE_LAYERS
    one = (CUDA_GRAPH_ESTIMATE_GIB + (n - CUDA_GRAPH_REFERENCE_LAYERS) * CUDA_GRAPH_GIB_PER_LAYER) * engine.graph_factor
    return max(CUDA_GRAPH_MIN_GIB, one / max(1, tensor_parallel))


def graph_headroom_gib(enforce_eager: bool, seen_graph_gib: float | None = None,
                       estimate_gib: float | None = None) -> float:
    """CUDA-graph memory to expect: what a log showed, else the estimate (`estimate_gib`, or the
    reference model's)."""
    if enforce_eager:
        return 0.0
    if seen_graph_gib and seen_graph_gib > 0:
        return seen_graph_gib
    return estimate_gib if estimate_gib is not None else CUDA_GRAPH_ESTIMATE_GIB


# ---------------------------------------------------------------- vLLM 0.34's extensible KV cache


def extensible_margin_gib(transient_gib: float) -> float:
    """What 0.34 keeps free beyond the transient peak where the device headroom binds."""
    return max(KV_MARGIN_FLOOR_GIB, KV_MARGIN_FRACTION * max(transient_gib, 0.0))


@dataclass(frozen=True)
class ExtensibleSizing:
    """The KV bytes 0.34 measures after warm-up (measure_kv_cache_bytes), and which bound binds."""

    available_gib: float   # before the page rounding
    by_budget_gib: float   # requested − non-KV use − transient
    by_device_gib: float   # headroom − margin − transient
    margin_gib: float

    @property
    def bound(self) -> str:
        """"budget" (gpu_memory_utilization limits the cache) or "device" (free memory does)."""
        return "budget" if self.by_budget_gib <= self.by_device_gib else "device"

    @property
    def withheld_gib(self) -> float:
        """Free device memory the utilization keeps out of the cache (0.34 warns at ≥ 1 GiB)."""
        return max(0.0, self.by_device_gib - self.by_budget_gib)


def extensible_sizing(requested_gib: float, init_free_gib: float, non_kv_gib: float,
                      transient_gib: float) -> ExtensibleSizing:
    """0.34's post-warm-up measurement: non_kv_gib is everything the engine holds besides the KV
    cache (weights, non-torch memory, CUDA graphs), init_free_gib the free memory when the engine
    started (after its CUDA context), transient_gib the profiled activation peak."""
    margin = extensible_margin_gib(transient_gib)
    by_budget = requested_gib - non_kv_gib - transient_gib
    by_device = init_free_gib - non_kv_gib - margin - transient_gib
    return ExtensibleSizing(max(min(by_budget, by_device), 0.0), by_budget, by_device, margin)


def extensible_sizing_from_log(init_free_gib: float, free_after_gib: float, committed_gib: float,
                               requested_gib: float, transient_gib: float) -> ExtensibleSizing:
    """The same measurement from what 0.34 printed: "Free memory on device (F/…) on startup" and
    "Memory after warmup: F' GiB free, C GiB committed …, K GiB kept for transient activations …
    within the requested R GiB" (non-KV use = F − F' − C)."""
    return extensible_sizing(requested_gib, init_free_gib, init_free_gib - free_after_gib - committed_gib, transient_gib)


def extensible_blocks(available_gib: float, bytes_per_token: int, block: int, layers: int,
                      capacity: int | None = None) -> int:
    """Blocks whose committed footprint fits `available_gib` (ExtensibleKVCache.blocks_within):
    each layer's segment is rounded up to whole VMM granules; at most `capacity` (the pre-warm-up
    reservation)."""
    if not bytes_per_token or layers <= 0:
        return 0
    page = bytes_per_token * block // layers  # one block of one layer
    per_layer = int(max(0.0, available_gib) * GIB) // layers // VMM_GRANULE_BYTES * VMM_GRANULE_BYTES
    blocks = per_layer // page if page else 0
    return min(blocks, capacity) if capacity is not None else blocks


def committed_null_block_gib(layers: int) -> float:
    """What the extensible cache keeps committed before it is sized: one granule per layer."""
    return layers * VMM_GRANULE_BYTES / GIB


def null_block_reserved(accounting: Accounting) -> bool:
    """From 0.30 one block (the null block) is not usable by requests: the fit check and vLLM's
    estimated maximum length count one block less than the cache holds."""
    return accounting in (Accounting.BUDGET_0_30, Accounting.EXTENSIBLE_0_34)


def safe_utilization(gpu_total_gib: float, graph_gib: float) -> float:
    """The highest utilization that leaves room above the budget for CUDA graphs and the context."""
    return max(0.0, (gpu_total_gib - graph_gib - CUDA_CONTEXT_GIB) / gpu_total_gib)


def floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-6) / 100


def ceil2(x: float) -> float:
    return math.ceil(x * 100 - 1e-6) / 100
