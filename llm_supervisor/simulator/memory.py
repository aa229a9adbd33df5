"""The simulator's GPU memory model: what one vLLM worker (one GPU) allocates, and the KV-cache
sizing vLLM 0.26 does with it. Pure: no processes, no files.

vLLM ≥0.9 sizes the KV cache from a budget fixed at start:

    requested = total × gpu_memory_utilization          (total as NVML reports it, MiB/1024 GiB)
    available = requested − weights − peak activation − non-torch memory
    num_blocks = int(available // page_size // num_layers)   (page = one block of one layer)
    tokens = num_blocks × block_size

CUDA-graph memory is *not* reserved in 0.26 (`VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS` did not
cover this runner): graphs are captured after the KV cache exists and come out of the memory
above the budget, so a high utilization fails at graph capture, not before.

Constants are calibrated on real 0.26.0 runs (Qwen3-4B shape, H100 80GB, 81079 MiB,
max_num_batched_tokens 8192; see tests/fixtures/vllm-0.26.0-h100):

    weights   7.56 GiB   = shape estimate 7.49 GiB + LOAD_OVERHEAD (rotary cache, persistent buffers)
    activation 0.62 GiB warm / 0.80 GiB cold (first torch.compile keeps inductor workspaces)
    non-torch 0.22 GiB
    graphs    1.00 GiB
    util 0.30 → 15.36 GiB warm / 15.17 GiB cold → 111,808 / 110,464 tokens (matches exactly)
    util 0.12, 40,960 context → 0.92 GiB, needs 5.62 GiB, estimated max model length 6688
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_supervisor.vllm import cudagraphs

GIB = 1 << 30
MIB = 1 << 20

# Bytes the loader allocates besides the parameters (rotary cos/sin cache, persistent input
# buffers); calibrated so the Qwen3-4B estimate reads "Model loading took 7.56 GiB".
LOAD_OVERHEAD_BYTES = 70 * MIB
# Peak activation of the profiling run, per batched token, is modelled as the largest live
# tensors of one decoder layer (gate/up output, q/k/v, two hidden-sized buffers) in the model
# dtype, times a factor that absorbs logits, sampler and allocator slack (calibrated: 0.62 GiB).
ACTIVATION_FACTOR = 1.3154
# The first (cold) torch.compile leaves inductor workspaces behind: 0.80 GiB against 0.62 GiB.
COLD_ACTIVATION_FACTOR = 1.3
# vLLM's V1 model runner, where V2 is the default (0.22+; the supervisor picks it to offload on
# 0.26), warms its whole sampler: top-k/top-p twice, the second time through the native path with
# a generator (logits, softmax, exponential noise, quotient: float32 [seqs, vocab] each). Qwen3-32B
# at 1,024 sequences printed 2.23 GiB of peak activation on an H200 (the forward pass: ~1.9).
V1_SAMPLER_BYTES_PER_LOGIT = 2.23 * GIB / (1024 * 151936)
# CPU offload: the GPU's mappings of the pinned host weights are memory outside torch's allocator
# (0.32 GiB non-torch printed, eager, and 0.34 compiled, with 42-43 GiB offloaded; 0.22 without).
OFFLOAD_NON_TORCH_BYTES = int(0.11 * GIB)
# cuBLAS workspaces, NCCL and other memory outside torch's allocator.
NON_TORCH_BYTES = int(0.22 * GIB)
NON_TORCH_TP_BYTES = int(0.19 * GIB)  # NCCL communicators with TP/PP > 1
CUSTOM_ALL_REDUCE_BYTES = 64 * MIB  # IPC buffers unless --disable-custom-all-reduce
# CUDA graphs grow with the layers captured (51 sizes × PIECEWISE+FULL): 1.00 GiB for Qwen3-4B's
# 36 layers (H100), 1.87 GiB for Qwen3-32B's 64 (H200); at least GRAPH_MIN_BYTES.
GRAPH_MIN_BYTES = int(0.25 * GIB)
GRAPH_PER_LAYER_BYTES = (1.87 - 1.00) / (64 - 36) * GIB
GRAPH_OFFSET_BYTES = 1.00 * GIB - 36 * GRAPH_PER_LAYER_BYTES
# vLLM 0.34 with torch 2.14, measured on an H200 (Qwen3-4B shape, tests/fixtures/vllm-0.34.0-h200):
# "8.36 GiB for consumed memory (weights + non-torch), 0.93 GiB for peak activation, and 0.69 GiB
# for CUDAGraph memory", "1.04 GiB kept for transient activations (0.93 GiB allocated at peak,
# 1.04 GiB of torch reservation growth)", at util 0.15 and 0.09 alike, compiled cold or warm.
V034_NON_TORCH_EXTRA_BYTES = int(0.58 * GIB)  # 0.80 GiB non-torch against 0.22
V034_ACTIVATION_SCALE = 1.51                  # 0.93 GiB peak against 0.62 warm; no cold growth
V034_RESERVATION_GROWTH = 1.12                # torch's reservation grows past the peak
V034_GRAPH_SCALE = 0.69                       # 0.69 GiB of CUDA graphs against 1.00
V034_BLOCK_SIZE = 64                          # CacheConfig.DEFAULT_BLOCK_SIZE (16 before)
# The CUDA context each GPU process creates before vLLM measures free memory (outside the
# budget): with the simulated GPU's 300 MiB driver baseline this gives the real
# "Free memory on device (78.66/79.18 GiB)" on an idle H100.
CONTEXT_BYTES = 227 * MIB
# vLLM's redundancy buffer in the `--kv-cache-memory=` suggestion of the 0.26 summary line.
REDUNDANCY_BUFFER_BYTES = 150 * MIB


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def format_gib(nbytes: float) -> str:
    """vLLM's format_gib: round(x / GiB, 2) as Python prints it ("24.0", "3.18", "0.5")."""
    return f"{round(nbytes / GIB, 2)}"


def torch_format_size(nbytes: float) -> str:
    """PyTorch's allocator format_size (CUDACachingAllocator.cpp) for OOM messages."""
    if nbytes <= 1024:
        return f"{int(nbytes)} bytes"
    if nbytes <= 1048576:
        return f"{nbytes / 1024:.2f} KiB"
    if nbytes <= 1073741824:
        return f"{nbytes / 1048576:.2f} MiB"
    return f"{nbytes / 1073741824:.2f} GiB"


@dataclass(frozen=True)
class ShapeFacts:
    """What the memory model needs from a model's config.json (per whole model)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype_bytes: int


def activation_bytes(shape: ShapeFacts, tp: int, max_num_batched_tokens: int, cold: bool,
                     v034: bool = False) -> int:
    """Peak activation memory of the profiling run on one GPU (v034: vLLM 0.34's)."""
    qkv = (shape.num_heads / tp + 2 * max(1, shape.num_kv_heads // tp)) * shape.head_dim
    per_token = 2 * shape.intermediate_size / tp + qkv + 2 * shape.hidden_size
    warm = max_num_batched_tokens * per_token * shape.dtype_bytes * ACTIVATION_FACTOR
    if v034:
        return int(warm * V034_ACTIVATION_SCALE)
    return int(warm * (COLD_ACTIVATION_FACTOR if cold else 1.0))


def v1_sampler_bytes(shape: ShapeFacts, max_num_seqs: int) -> int:
    """The V1 runner's sampler warm-up peak on the last pipeline stage's GPU."""
    return int(max_num_seqs * shape.vocab_size * V1_SAMPLER_BYTES_PER_LOGIT)


def largest_activation_bytes(shape: ShapeFacts, tp: int, max_num_batched_tokens: int) -> int:
    """The biggest single tensor of the profiling run (the MLP gate/up output): what an OOM
    during profiling says it "tried to allocate" (304.00 MiB for Qwen3-4B at 8192 tokens)."""
    return int(max_num_batched_tokens * 2 * shape.intermediate_size / tp * shape.dtype_bytes)


def non_torch_bytes(world_size: int, disable_custom_all_reduce: bool, v034: bool = False) -> int:
    extra = V034_NON_TORCH_EXTRA_BYTES if v034 else 0
    if world_size > 1:
        extra += NON_TORCH_TP_BYTES
        if not disable_custom_all_reduce:
            extra += CUSTOM_ALL_REDUCE_BYTES
    return NON_TORCH_BYTES + extra


def graph_bytes(shape: ShapeFacts, tp: int, layers: int, enforce_eager: bool, v034: bool = False,
                sizes: tuple[int, ...] = ()) -> int:
    if enforce_eager:
        return 0
    one = (GRAPH_OFFSET_BYTES + GRAPH_PER_LAYER_BYTES * layers) * (V034_GRAPH_SCALE if v034 else 1.0)
    one *= cudagraphs.graph_factor(sizes)  # more sizes than the default: more memory (vllm/cudagraphs.py)
    return int(max(GRAPH_MIN_BYTES, one / max(1, tp)))


def requested_bytes(total_mib: int, utilization: float) -> int:
    """total × util as vLLM computes it (ceil of bytes)."""
    total = total_mib * MIB
    whole = total * utilization
    return int(whole) + (0 if whole == int(whole) else 1)


@dataclass(frozen=True)
class KvSizing:
    """The KV-cache outcome on one worker."""

    available_bytes: int
    kv_bytes_per_token: int  # this GPU, this pipeline stage
    block_size: int
    num_layers: int  # layers on this GPU

    @property
    def page_bytes(self) -> int:
        """One block of one layer (vLLM's AttentionSpec.page_size_bytes)."""
        return self.kv_bytes_per_token // self.num_layers * self.block_size

    @property
    def num_blocks(self) -> int:
        if self.available_bytes <= 0:
            return 0
        return int(self.available_bytes // self.page_bytes // self.num_layers)

    @property
    def tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def kv_bytes(self) -> int:
        """What the KV tensors occupy once allocated."""
        return self.num_blocks * self.page_bytes * self.num_layers

    def request_bytes(self, max_model_len: int) -> int:
        """Memory one request of this length needs (full attention: whole blocks)."""
        return cdiv(max_model_len, self.block_size) * self.page_bytes * self.num_layers

    def fits(self, max_model_len: int) -> bool:
        return self.request_bytes(max_model_len) <= self.available_bytes

    def estimate_max_model_len(self, upper: int) -> int:
        """vLLM's binary search for the longest max_model_len that fits (0 if none)."""
        lo, hi, best = 1, upper, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.fits(mid):
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best


def offloaded_bytes(layer_params: list[int], layers: int, budget_bytes: int) -> int:
    """What `--cpu-offload-gb` moves to CPU memory on one GPU: vLLM's offloader walks the decoder
    layers' parameters in order and moves each whole parameter while the bytes moved so far are
    below the budget, so it overshoots by up to one parameter; never more than the layers hold."""
    moved = 0
    if budget_bytes <= 0:
        return 0
    for _ in range(layers):
        for size in layer_params:
            if moved >= budget_bytes:
                return moved
            moved += size
    return moved


def max_concurrency(num_blocks: int, block_size: int, max_model_len: int) -> float:
    """Requests of max_model_len the cache holds at once: num_blocks / blocks per request."""
    return num_blocks / cdiv(max_model_len, block_size)


# ---------------------------------------------------------------- vLLM 0.30-0.33: the CUDA-graph estimate

# V2's profile_cudagraph_memory() captures a throwaway graph set before the KV cache is sized;
# its estimate came out 4% under the real pool ("CUDA graph pool memory: 1.0 GiB (actual), 0.96 GiB
# (estimated)") in the generated 0.30-0.33 logs.
GRAPH_ESTIMATE_FRACTION = 0.96


# The V1 runner's estimate (0.21-0.29: first capture + (n − 1) × the second's) reads lower: 1.09 GiB
# for Qwen3-32B on an H200 with vLLM 0.26, whose graphs took 1.87 GiB when captured.
V1_GRAPH_ESTIMATE_FRACTION = 1.09 / 1.87


def graph_estimate_bytes(graph_bytes: int, v1_runner: bool = False) -> int:
    return int(graph_bytes * (V1_GRAPH_ESTIMATE_FRACTION if v1_runner else GRAPH_ESTIMATE_FRACTION))


# ---------------------------------------------------------------- vLLM 0.34: the extensible KV cache
# (v1/worker/extensible_kv_cache.py: measure_kv_cache_bytes, blocks_within, physical_bytes_for)

KV_CACHE_MARGIN_FLOOR_BYTES = 1 << 30
KV_CACHE_MARGIN_FRACTION = 0.75
KV_CACHE_NON_TORCH_RESERVE_BYTES = 1 << 29
GRANULE_BYTES = 2 * MIB  # the CUDA VMM allocation granularity each layer's segment is rounded to
WITHHELD_WARNING_BYTES = 1 << 30


def physical_bytes_for(num_blocks: int, page_bytes: int, num_layers: int) -> int:
    """What committing `num_blocks` maps: one segment per layer, rounded up to the granule."""
    per_layer = cdiv(num_blocks * page_bytes, GRANULE_BYTES) * GRANULE_BYTES
    return per_layer * num_layers


def blocks_within(num_bytes: int, page_bytes: int, num_layers: int, capacity: int) -> int:
    """The most blocks (≤ capacity) whose committed footprint fits `num_bytes`."""
    blocks = min(max(num_bytes, 0) // (page_bytes * num_layers), capacity)
    while blocks > 0 and physical_bytes_for(blocks, page_bytes, num_layers) > num_bytes:
        blocks -= 1
    return max(blocks, 0)


def measure_kv_cache_bytes(init_free: int, free: int, committed: int, requested: int, transient: int,
                           growth: int = 0) -> int:
    """Bytes the KV cache may take after warm-up: the rest of the budget, capped by the device's
    headroom less a margin, less the transient peak."""
    non_kv_used = init_free - free - committed
    headroom = free + committed
    margin = max(KV_CACHE_MARGIN_FLOOR_BYTES, int(transient * KV_CACHE_MARGIN_FRACTION))
    available = min(requested - non_kv_used, headroom - margin)
    available -= max(transient, growth)
    return max(available, 0)
