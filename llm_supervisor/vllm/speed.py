"""The speed model: how fast a launch will serve, predicted from bytes and FLOPs. Pure.

vLLM decodes in steps: every step reads the weights once, reads the KV cache of every running
request, and runs the matrix work for every token in the step (one per decoding request, plus
the prompt tokens being prefilled). A matrix product reads its weights and multiplies at once, so
its time is the larger of the two (a roofline), not their sum. With

    W     weight bytes read from GPU memory per step (per GPU; an untied input embedding is only
          looked up, so it is not counted; MoE: the experts the step's tokens route to)
    W_off weight bytes offloaded to CPU memory (--cpu-offload-gb), read over PCIe every step
    kv    KV-cache bytes per token per GPU;  L  the mean context of a running request
    F     2 × parameters touched per token (per GPU);  A  attention: 4 × layers × heads/TP × head_dim
          FLOPs per context token
    B     requests decoding in the step;  T_p  prompt tokens prefilled in the step
    BW, FLOPS, PCIE  the GPU's memory bandwidth, dense BF16 tensor rate, host link (gpuspecs.py)

one step takes

    t_step = t_fixed + max(W / (BW·e_bw), F·(B + T_p) / (FLOPS·e_c))            matrix products
             + max(B·L·kv / (BW·e_bw), A·(B·L + T_p·L_p) / (FLOPS·e_c))          attention
             + W_off / (PCIE·e_pcie) + t_allreduce
    t_fixed     = STEP_OVERHEAD_S (scheduling, sampling, CUDA-graph replay) + layers × EAGER_PER_LAYER_S
                  without CUDA graphs
    t_allreduce = TP > 1: 2 × layers × (latency + 2(TP−1)/TP × tokens × hidden × 2 B / link)
    e_c         = COMPUTE_EFFICIENCY for decode-only steps, PREFILL_EFFICIENCY with a prompt in them

Serving U users of a workload (prompt P, output O tokens; each user sends the next request when
the last one ends, as `bench` does), a replica runs R = min(U, max_num_seqs, KV requests)
requests at once (KV requests = KV tokens / (P + O/2): a request holds P tokens at first and
P + O at the end). Most steps only decode (t_d: B = R, L = P + O/2); a prompt is prefilled in
n = ⌈P / (max_num_batched_tokens − R + 1)⌉ steps of its own beside the others' decodes (t_p: B = R − 1,
T_p = P / n), and each of the R requests brings one prompt per O tokens. So

    TPOT      t_d + (R − 1)·n/O × (t_p − t_d)      (the others' prompts slow a user's decode)
    per user  1 / TPOT tokens/s (the decode rate a user sees)
    TTFT      FRONTEND_S + t_d/2 + n × t_p; when U > R the others wait their turn as well:
              + (U − R) × (O·TPOT + TTFT) / R
    total     R·O / (TTFT + (O − 1)·TPOT) tokens/s (Little's law, as `bench` counts it); requests/s ÷ O

Real vLLM 0.26 on an H200 (Qwen3-32B shape, 512-token prompts, 128-token replies, 1 to 32 users):
decode-only steps grew from 18.9 to 20.5 ms (the weights' 17 ms hide the batch's matrix work) while
each 512-token prompt took a ~60 ms step of its own; this model came within 5 % of every level.

It assumes every step replays a CUDA graph. vLLM captures graphs for steps of at most
min(2 × max_num_seqs, 512) tokens (0.26 and 0.34; 1,024 on data-center Blackwell in 0.34) and runs
a larger step without one, its kernels launched from the CPU: for a small model that step is
CPU-bound. On an H100 (vLLM 0.26, Qwen3-4B shape, 512-token prompts) users out of step, each
prompt in a 519-token step beside 7 decodes, decoded up to 23 % slower than this model at 8 to
16 users; with --max-cudagraph-capture-size 1024 they came within 1 %. Charging a floor per such
step overshoots from 32 users on, where prompts that arrive together share a step, so none is
charged; `ungraphed_prompts` tells where a load runs such steps with less GPU work than the
launches (UNGRAPHED_LAUNCH_PER_LAYER_S a layer), which `plan` says with the capture size that
covers them (docs/planner.md, "The dip in the middle, found").

Constants are engineering estimates until a host is calibrated (`bench --find-capacity` stores
what it measured; `fit_calibration` scales the memory-bound and the compute-bound parts of
the step to it, and fits the TTFT as a factor plus a term per running request, a growth the steps
do not show: 20 ms at 1 user to 236 ms at 32 for a Qwen3-4B shape on an H200). docs/planner.md
holds the measured comparison.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.vllm import cudagraphs, memory
from llm_supervisor.vllm.fit import FitContext, Prediction, offloaded_gib
from llm_supervisor.vllm.gpuspecs import GpuSpec, find_gpu
from llm_supervisor.vllm.modelshape import GIB, linear_bytes_per_element

# ---------------------------------------------------------------- constants (uncalibrated)

BANDWIDTH_EFFICIENCY = 0.80     # share of the memory bandwidth decode kernels reach
COMPUTE_EFFICIENCY = 0.50       # share of the dense tensor rate small-batch GEMMs reach
PREFILL_EFFICIENCY = 0.60       # … and prefill's large GEMMs
# share of the PCIe rate a zero-copy read of pinned memory reaches: vLLM 0.26's UVA offload of 44.26
# GiB on an H200 (PCIe 5.0 x16, 63 GB/s) decoded 0.72 tokens/s, ~34.6 GB/s over the bus
PCIE_EFFICIENCY = 0.55
STEP_OVERHEAD_S = 1.5e-3        # per step: scheduler, sampler, CUDA-graph replay, output processing
EAGER_PER_LAYER_S = 30e-6       # per layer and step without CUDA graphs: kernel launches
FRONTEND_S = 0.010              # per request: HTTP, tokenizing, the first chunk's way out
# per layer, a step beyond the captured CUDA graphs launching its kernels from the CPU: such steps
# took 19–34 ms (37–63 in another launch) where the model puts the GPU's work at 9 ms, for a Qwen3-4B
# shape (36 layers) on an H100 (vLLM 0.26); a Qwen3-32B shape's (64 layers, ~45 ms of launches) 60 ms
# prompt steps on an H200 showed nothing
UNGRAPHED_LAUNCH_PER_LAYER_S = 0.7e-3
MAX_ADVISED_CAPTURE = 2048      # graphs captured to this many tokens at most (1 % more graph memory a size)
ALLREDUCE_LATENCY_S = {True: 10e-6, False: 30e-6}   # NVLink, PCIe
NVLINK_BYTES_S = 300e9
ACTIVATION_BYTES = 2

DEFAULT_WORKLOAD_PROMPT = 1024
DEFAULT_WORKLOAD_OUTPUT = 256
PLAN_USERS = (1, 8, 32)
PLAN_RATES = (10.0, 20.0)


@dataclass(frozen=True)
class Workload:
    """What each user's requests look like."""

    prompt_tokens: int = DEFAULT_WORKLOAD_PROMPT
    output_tokens: int = DEFAULT_WORKLOAD_OUTPUT

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError("a workload needs at least one prompt and one output token")

    @property
    def mean_context(self) -> float:
        return self.prompt_tokens + self.output_tokens / 2

    def to_json(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True)
class StepCost:
    """What one step of one engine costs (per GPU of a tensor-parallel group)."""

    weight_bytes: float            # read from GPU memory each step (dense part)
    expert_bytes: float            # MoE experts among weight_bytes, read as far as tokens route to them
    experts: int
    experts_per_token: int
    offloaded_bytes: float         # read over PCIe each step
    flops_per_token: float
    attention_flops_per_context_token: float
    kv_bytes_per_token: float
    layers: int
    hidden: int
    tensor_parallel: int
    data_parallel: int
    eager: bool
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_cache_tokens: int           # per replica
    block_size: int
    sliding_window: int | None = None
    graph_tokens: int = 0          # the largest step a captured CUDA graph covers (0: none, eager)


@dataclass(frozen=True)
class SpeedCalibration:
    """This host's measured speed as factors on the model's parts (1.0: uncalibrated)."""

    memory_factor: float = 1.0     # the step's fixed, memory, PCIe and all-reduce parts
    compute_factor: float = 1.0    # the step's compute part
    ttft_factor: float = 1.0
    points: int = 0
    source: str = ""
    # TTFT each other running request adds, measured (none in the step model: see fit_calibration)
    ttft_per_request_s: float = 0.0

    @property
    def calibrated(self) -> bool:
        return self.points > 0

    def to_json(self) -> dict[str, Any]:
        return {"memory_factor": round(self.memory_factor, 3), "compute_factor": round(self.compute_factor, 3),
                "ttft_factor": round(self.ttft_factor, 3),
                "ttft_per_request_ms": round(self.ttft_per_request_s * 1000, 2), "points": self.points,
                "source": self.source}


@dataclass(frozen=True)
class LoadPoint:
    """The model's answer for `users` concurrent users of a workload."""

    users: int
    running: int                   # requests the engines run at once (all replicas)
    per_user_tokens_per_s: float
    tokens_per_s: float
    requests_per_s: float
    ttft_s: float
    tpot_s: float
    limited_by: str | None         # "max_num_seqs" | "kv_cache" when users queue, else None

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "running": self.running,
                "per_user_tokens_per_s": round(self.per_user_tokens_per_s, 2),
                "tokens_per_s": round(self.tokens_per_s, 1), "requests_per_s": round(self.requests_per_s, 3),
                "ttft_s": round(self.ttft_s, 4), "tpot_s": round(self.tpot_s, 5), "limited_by": self.limited_by}


@dataclass(frozen=True)
class UngraphedPrompts:
    """Prompt steps a load runs beyond the captured CUDA graphs where launching the kernels from
    the CPU takes longer than the GPU's work: the speed model (graphs for every step) is optimistic
    there."""

    users: tuple[int, ...]         # the load levels that run them
    step_tokens: int               # the largest such step: a prompt (chunk) and the others' decodes
    prompt_tokens: int             # … of which the prompt
    graph_tokens: int              # the largest step a graph covers
    gpu_s: float                   # the model's time for that step on the GPU
    launch_s: float                # the CPU's kernel launches for it
    capture_size: int | None       # --max-cudagraph-capture-size that covers them; None: above MAX_ADVISED_CAPTURE

    def to_json(self) -> dict[str, Any]:
        return {"users": list(self.users), "step_tokens": self.step_tokens, "prompt_tokens": self.prompt_tokens,
                "graph_tokens": self.graph_tokens, "gpu_ms": round(self.gpu_s * 1000, 1),
                "launch_ms": round(self.launch_s * 1000, 1), "capture_size": self.capture_size}


@dataclass(frozen=True)
class StepTime:
    """One step's parts, in seconds, before calibration: the matrix products' weight reads and
    their arithmetic (which overlap), the attention's KV reads and its arithmetic (which overlap),
    and the parts that add (fixed cost, PCIe, all-reduce)."""

    fixed: float
    weights: float
    matmul: float
    kv: float
    attention: float
    pcie: float
    allreduce: float
    calibration: SpeedCalibration

    @property
    def memory(self) -> float:
        """Bytes read from GPU memory: weights and KV cache."""
        return self.weights + self.kv

    @property
    def compute(self) -> float:
        """Arithmetic: the matrix products and the attention."""
        return self.matmul + self.attention

    def scaled(self, memory_factor: float, compute_factor: float) -> float:
        m, c = memory_factor, compute_factor
        return (m * (self.fixed + self.pcie + self.allreduce) + max(m * self.weights, c * self.matmul)
                + max(m * self.kv, c * self.attention))

    @property
    def total(self) -> float:
        return self.scaled(self.calibration.memory_factor, self.calibration.compute_factor)


@dataclass(frozen=True)
class Steps:
    """What serving `running` requests of a workload costs one replica: its decode-only step, the
    step that carries a prompt (one of `chunks` for each prompt) and how often prompts come."""

    running: int
    decode: StepTime
    prefill: StepTime
    chunks: int
    output_tokens: int

    def tpot(self, memory_factor: float, compute_factor: float) -> float:
        """Time per output token a user sees: decode steps, and the others' prompts among them."""
        td = self.decode.scaled(memory_factor, compute_factor)
        tp = self.prefill.scaled(memory_factor, compute_factor)
        return td + (self.running - 1) * self.chunks / self.output_tokens * max(tp - td, 0.0)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class SpeedModel:
    cost: StepCost
    gpu: GpuSpec
    calibration: SpeedCalibration = field(default_factory=SpeedCalibration)

    def with_calibration(self, calibration: SpeedCalibration | None) -> "SpeedModel":
        return replace(self, calibration=calibration or SpeedCalibration())

    # --- one step
    def step(self, decodes: float, context: float, prefill_tokens: float = 0.0,
             prefill_context: float = 0.0, compute_efficiency: float = COMPUTE_EFFICIENCY) -> StepTime:
        c, g = self.cost, self.gpu
        tokens = decodes + prefill_tokens
        weights = c.weight_bytes
        if c.experts and c.expert_bytes:
            routed = 1.0 - (1.0 - c.experts_per_token / c.experts) ** max(tokens, 1.0)
            weights -= c.expert_bytes * (1.0 - routed)
        ctx = min(context, c.sliding_window) if c.sliding_window else context
        pctx = min(prefill_context, c.sliding_window) if c.sliding_window else prefill_context
        tokens = max(tokens, 1.0)
        bandwidth, flops = g.bandwidth * BANDWIDTH_EFFICIENCY, g.flops * compute_efficiency
        attention = c.attention_flops_per_context_token * (decodes * ctx + prefill_tokens * pctx)
        pcie = c.offloaded_bytes / (g.pcie * PCIE_EFFICIENCY) if c.offloaded_bytes else 0.0
        ar = 0.0
        if c.tensor_parallel > 1:
            link = NVLINK_BYTES_S if g.nvlink else g.pcie
            volume = 2 * (c.tensor_parallel - 1) / c.tensor_parallel * tokens * c.hidden * ACTIVATION_BYTES
            ar = 2 * c.layers * (ALLREDUCE_LATENCY_S[g.nvlink] + volume / link)
        fixed = STEP_OVERHEAD_S + (c.layers * EAGER_PER_LAYER_S if c.eager else 0.0)
        return StepTime(fixed, weights / bandwidth, c.flops_per_token * tokens / flops,
                        decodes * ctx * c.kv_bytes_per_token / bandwidth, attention / flops, pcie, ar, self.calibration)

    def steps(self, running: int, workload: Workload) -> Steps:
        """One replica running `running` requests: its decode-only step, and the steps that carry a
        prompt (chunked by max_num_batched_tokens, beside the others' decodes)."""
        w = workload
        budget = max(1, self.cost.max_num_batched_tokens - max(running - 1, 0))
        chunks = math.ceil(w.prompt_tokens / budget)
        decode = self.step(running, w.mean_context)
        prefill = self.step(max(running - 1, 0), w.mean_context, w.prompt_tokens / chunks, w.prompt_tokens / 2,
                            PREFILL_EFFICIENCY)
        return Steps(running, decode, prefill, chunks, w.output_tokens)

    # --- capacity of one replica
    def kv_requests(self, workload: Workload) -> int:
        """Requests of this workload one replica's KV cache holds at once (at their mean length)."""
        c = self.cost
        held = memory.cdiv(int(math.ceil(workload.mean_context)), c.block_size) * c.block_size
        if c.sliding_window:
            held = min(held, memory.cdiv(c.sliding_window + c.max_num_batched_tokens, c.block_size) * c.block_size)
        return c.kv_cache_tokens // held if held else 0

    def slots(self, workload: Workload) -> tuple[int, str]:
        """(requests one replica runs at once, what caps it)."""
        kv = self.kv_requests(workload)
        if kv < self.cost.max_num_seqs:
            return kv, "kv_cache"
        return self.cost.max_num_seqs, "max_num_seqs"

    def per_replica(self, users: int) -> int:
        """Users one replica serves: `users` concurrent users spread over the data parallel replicas."""
        return math.ceil(users / max(1, self.cost.data_parallel))

    def running(self, users: int, workload: Workload, slots: int | None = None) -> int:
        """Requests one replica runs at once for `users` concurrent users (the rest queue); `slots`:
        the replica's slots for this workload, where the caller has them."""
        return min(self.per_replica(users), self.slots(workload)[0] if slots is None else slots)

    def at(self, users: int, workload: Workload | None = None) -> LoadPoint:
        """Per-user and total speed for `users` concurrent users (all replicas)."""
        w = workload or Workload()
        dp = max(1, self.cost.data_parallel)
        slots, cap = self.slots(w)
        per_replica = self.per_replica(users)
        running = self.running(users, w, slots)
        if running <= 0:
            return LoadPoint(users, 0, 0.0, 0.0, 0.0, math.inf, math.inf, cap if users else None)
        cal = self.calibration
        st = self.steps(running, w)
        tpot = st.tpot(cal.memory_factor, cal.compute_factor)
        first = ((FRONTEND_S + st.decode.total / 2 + st.chunks * st.prefill.total) * cal.ttft_factor
                 + cal.ttft_per_request_s * (running - 1))
        total = running * dp * w.output_tokens / (first + (w.output_tokens - 1) * tpot)
        limited = None
        if per_replica > slots:
            limited = cap
            first += (per_replica - slots) * (w.output_tokens * tpot + first) / slots
        return LoadPoint(users, min(users, running * dp), 1.0 / tpot, total, total / w.output_tokens, first, tpot,
                         limited)

    def users_at_rate(self, rate: float, workload: Workload | None = None) -> tuple[int, str]:
        """The most users (none queueing) who each see at least `rate` tokens/s, and what stops
        more: "speed", "kv_cache" or "max_num_seqs"."""
        w = workload or Workload()
        dp = max(1, self.cost.data_parallel)
        slots, cap = self.slots(w)
        top = slots * dp
        if top <= 0 or self.at(1, w).per_user_tokens_per_s < rate:
            return 0, "speed" if top > 0 else cap
        if self.at(top, w).per_user_tokens_per_s >= rate:
            return top, cap
        lo, hi = 1, top
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.at(mid, w).per_user_tokens_per_s >= rate:
                lo = mid
            else:
                hi = mid
        return lo, "speed"

    def ungraphed_prompts(self, workload: Workload | None = None,
                          users: Iterable[int] = PLAN_USERS) -> UngraphedPrompts | None:
        """The prompt steps these loads run without a CUDA graph, where the CPU's launches outlast
        the GPU's work (a small model on a fast GPU); None when there are none. A lone user's prompt
        slows only its own first token, so levels of one running request are left out."""
        w = workload or Workload()
        c = self.cost
        if c.graph_tokens <= 0:
            return None  # eager: every step runs without graphs, and the step model charges it
        launch = c.layers * UNGRAPHED_LAUNCH_PER_LAYER_S
        hit: list[tuple[int, int, int, float]] = []
        for n in users:
            running = self.running(n, w)
            if running < 2:
                continue
            st = self.steps(running, w)
            prompt = math.ceil(w.prompt_tokens / st.chunks)
            tokens = prompt + running - 1
            if tokens > c.graph_tokens and st.prefill.total < launch:
                hit.append((n, tokens, prompt, st.prefill.total))
        if not hit:
            return None
        _, tokens, prompt, gpu = max(hit, key=lambda h: h[1])
        size = cudagraphs.covering_max_size(tokens, c.max_num_batched_tokens)
        return UngraphedPrompts(tuple(h[0] for h in hit), tokens, prompt, c.graph_tokens, gpu, launch,
                                size if size <= MAX_ADVISED_CAPTURE else None)

    def summary(self, workload: Workload | None = None, users: Iterable[int] = PLAN_USERS,
                rates: Iterable[float] = PLAN_RATES) -> dict[str, Any]:
        """What `plan` shows: the model's points and users at each per-user rate."""
        w = workload or Workload()
        at_rate = {}
        for rate in rates:
            n, why = self.users_at_rate(rate, w)
            at_rate[f"{rate:g}"] = {"users": n, "limited_by": why}
        return {
            "gpu": self.gpu.to_json(),
            "workload": w.to_json(),
            "calibrated": self.calibration.calibrated,
            "calibration": self.calibration.to_json() if self.calibration.calibrated else None,
            "points": [self.at(u, w).to_json() for u in users],
            "users_at_tokens_per_s": at_rate,
            "kv_requests": self.kv_requests(w) * max(1, self.cost.data_parallel),
            "ungraphed_prompts": dip.to_json() if (dip := self.ungraphed_prompts(w, users)) else None,
        }


# ---------------------------------------------------------------- from a fit


def _params_per_token(ctx: FitContext) -> float:
    """Parameters one token touches on one GPU (linear layers and lm_head; MoE: the routed experts)."""
    shape = ctx.shape
    per_layer = float(shape.linear_params_per_layer())
    if shape.num_experts:
        inter = shape.moe_intermediate_size or shape.intermediate_size
        per_layer -= (shape.num_experts - shape.num_experts_per_tok) * 3 * shape.hidden_size * inter
    return shape.num_layers * per_layer + shape.vocab_size * shape.hidden_size


def step_cost(ctx: FitContext, args: VllmArgs, prediction: Prediction) -> StepCost:
    """The cost of one step for these arguments, from the fit's prediction."""
    shape = ctx.shape
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    elem = shape.dtype_bytes(args.dtype)
    embed = shape.vocab_size * shape.hidden_size * elem / tp
    gpu_weights = prediction.weights_gib * GIB * pp  # the stages run one after the other
    read = gpu_weights - (0.0 if shape.tied_embeddings else embed)
    expert_bytes = 0.0
    if shape.num_experts:
        inter = shape.moe_intermediate_size or shape.intermediate_size
        lin = linear_bytes_per_element(shape.quant_method, shape.quant_bits, shape.quant_group_size, elem)
        moe_layers = max(0, shape.num_layers - shape.num_dense_layers)
        expert_bytes = moe_layers * shape.num_experts * 3 * shape.hidden_size * inter * lin / tp
    heads = max(1, shape.num_heads // tp)
    tokens, seqs = ctx.batch_limits(args)
    window = shape.sliding_window if shape.attention_kind == "sliding" else None
    return StepCost(
        weight_bytes=max(read, 0.0), expert_bytes=min(expert_bytes, max(read, 0.0)), experts=shape.num_experts,
        experts_per_token=shape.num_experts_per_tok or 0,
        offloaded_bytes=offloaded_gib(ctx, args) * GIB * pp,
        flops_per_token=2 * _params_per_token(ctx) / tp,
        attention_flops_per_context_token=4 * shape.num_layers * heads * shape.head_dim,
        kv_bytes_per_token=float(ctx.kv_bytes_per_token(args)) * pp,
        layers=shape.num_layers, hidden=shape.hidden_size, tensor_parallel=tp,
        data_parallel=args.data_parallel_size, eager=args.enforce_eager, max_num_seqs=seqs,
        max_num_batched_tokens=tokens, kv_cache_tokens=prediction.kv_cache_tokens,
        block_size=ctx.block_size(args), sliding_window=window,
        graph_tokens=max(ctx.capture_sizes(args), default=0),
    )


def speed_model(ctx: FitContext, args: VllmArgs, prediction: Prediction, measured: Sequence[MeasuredPoint] = (),
                source: str = "", gpu: GpuSpec | None = None) -> SpeedModel | None:
    """The speed model of a planned launch, calibrated with what `bench --find-capacity` measured
    on this host (`measured`, for the same model, GPU and tensor parallel size); None when the GPU
    is not in the table (gpuspecs.py)."""
    spec = gpu or find_gpu(ctx.gpu_name)
    if spec is None:
        return None
    model = SpeedModel(step_cost(ctx, args, prediction), spec)
    return model.with_calibration(fit_calibration(model, measured, source)) if measured else model


# ---------------------------------------------------------------- calibration from measured runs


@dataclass(frozen=True)
class MeasuredPoint:
    """One load level `bench --find-capacity` measured (what the calibration file keeps)."""

    users: int
    prompt_tokens: int
    output_tokens: int
    per_user_tokens_per_s: float
    running: int | None = None
    ttft_s: float | None = None        # median
    tokens_per_s: float | None = None
    queued: bool = False               # requests waited for a slot (TTFT includes queueing)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MeasuredPoint":
        return cls(int(data["users"]), int(data["prompt_tokens"]), int(data["output_tokens"]),
                   float(data["per_user_tokens_per_s"]),
                   int(data["running"]) if data.get("running") is not None else None,
                   float(data["ttft_s"]) if data.get("ttft_s") is not None else None,
                   float(data["tokens_per_s"]) if data.get("tokens_per_s") is not None else None,
                   bool(data.get("queued", False)))

    def to_json(self) -> dict[str, Any]:
        return {"users": self.users, "prompt_tokens": self.prompt_tokens, "output_tokens": self.output_tokens,
                "per_user_tokens_per_s": self.per_user_tokens_per_s, "running": self.running,
                "ttft_s": self.ttft_s, "tokens_per_s": self.tokens_per_s, "queued": self.queued}


FACTOR_RANGE = (0.2, 5.0)


def _clamp(x: float) -> float:
    return min(max(x, FACTOR_RANGE[0]), FACTOR_RANGE[1])


TIE = 1e-6   # pulls the two factors together where the points cannot tell them apart


def _minimize(loss: Callable[[float, float], float], lo: float, hi: float) -> tuple[float, float]:
    """The (x, y) in [lo, hi]² with the least loss: a coarse grid, then a pattern search."""
    n = 24
    grid = [lo + (hi - lo) * i / n for i in range(n + 1)]
    best = min(((loss(x, y), x, y) for x in grid for y in grid))
    f, x, y = best
    step = (hi - lo) / n
    while step > 1e-7:
        moved = False
        for dx, dy in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step)):
            nx, ny = min(max(x + dx, lo), hi), min(max(y + dy, lo), hi)
            nf = loss(nx, ny)
            if nf < f:
                f, x, y, moved = nf, nx, ny, True
                break
        if not moved:
            step /= 2
    return x, y


def fit_calibration(model: SpeedModel, points: Sequence[MeasuredPoint], source: str = "") -> SpeedCalibration:
    """Factors that make the uncalibrated model match measured points (least squares on the
    relative error of the time per output token): the step's memory-bound and compute-bound parts
    separately where the points tell them apart (decode steps that only read the weights, steps
    whose prompts keep the tensor cores busy), else one factor for both; TTFT from the unqueued
    points."""
    base = model.with_calibration(None)
    cases: list[tuple[Steps, float]] = []
    for p in points:
        if p.per_user_tokens_per_s <= 0:
            continue
        w = Workload(p.prompt_tokens, p.output_tokens)
        running = p.running or max(base.running(p.users, w), 1)
        cases.append((base.steps(running, w), 1.0 / p.per_user_tokens_per_s))
    if not cases:
        return SpeedCalibration()

    def loss(lm: float, lc: float) -> float:
        m, c = math.exp(lm), math.exp(lc)
        return sum((st.tpot(m, c) / t - 1.0) ** 2 for st, t in cases) + TIE * (lm - lc) ** 2

    lm, lc = _minimize(loss, math.log(FACTOR_RANGE[0]), math.log(FACTOR_RANGE[1]))
    a, c = _clamp(math.exp(lm)), _clamp(math.exp(lc))
    stepped = base.with_calibration(SpeedCalibration(a, c, 1.0, len(cases)))
    seen: list[tuple[float, int, float]] = []   # (the model's TTFT, requests running, measured TTFT)
    for p in points:
        if p.ttft_s and not p.queued:
            w = Workload(p.prompt_tokens, p.output_tokens)
            at = stepped.at(p.users, w)
            if at.ttft_s > 0 and math.isfinite(at.ttft_s):
                seen.append((at.ttft_s, max(1, stepped.running(p.users, w)), p.ttft_s))
    ttft, per_request = _fit_ttft(seen)
    return SpeedCalibration(a, c, ttft, len(cases), source, per_request)


TTFT_PER_REQUEST_MAX_S = 0.05


def _fit_ttft(seen: Sequence[tuple[float, int, float]]) -> tuple[float, float]:
    """TTFT ≈ factor × the model's + per_request × (running − 1), least squares on the relative
    error. The second term is what the step model does not see: on a real H200 (vLLM 0.26,
    Qwen3-4B shape, 512-token prompts) the first token took 22 ms at 1 user and 236 ms at 32,
    straight to vLLM, while the steps and the model said ~22 ms throughout (docs/planner.md). With
    one load level, or levels that all ran one request, only the factor is fitted (the median ratio)."""
    if not seen:
        return 1.0, 0.0
    ratio = _clamp(statistics.median(t / m for m, _r, t in seen))
    if len({r for _m, r, _t in seen}) < 2:
        return ratio, 0.0
    # normal equations of min Σ (f·a_i + s·x_i − 1)², a_i = model_i / t_i, x_i = (running_i − 1) / t_i
    aa = sum((m / t) ** 2 for m, _r, t in seen)
    ax = sum((m / t) * ((r - 1) / t) for m, r, t in seen)
    xx = sum(((r - 1) / t) ** 2 for _m, r, t in seen)
    a1 = sum(m / t for m, _r, t in seen)
    x1 = sum((r - 1) / t for _m, r, t in seen)
    det = aa * xx - ax * ax
    if det <= 0:
        return ratio, 0.0
    f, s = (a1 * xx - x1 * ax) / det, (aa * x1 - ax * a1) / det
    if s <= 0:
        return ratio, 0.0
    f = _clamp(f)
    s = min(max((x1 - f * ax) / xx, 0.0), TTFT_PER_REQUEST_MAX_S)  # again for a clamped factor
    return f, s
