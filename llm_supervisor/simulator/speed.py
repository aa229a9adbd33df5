"""How long one step of the simulated engine takes: the simulated GPU's clock. Pure.

The simulator is a stand-in for a GPU, so it keeps a law of its own (the supervisor's speed
model, llm_supervisor.vllm.speed, is tested against it and must not share it). One step decodes
one token for every running request and prefills the prompts of the requests it admitted. The
tokens' matrix work runs under the weight reads (as on a real GPU: vLLM 0.26 on an H200 ran 1 to
32 decoding requests of a 32B model in 18.9–20.5 ms steps, a 512-token prompt in a ~60 ms one):

    step_s = step + max(0, per_seq × running + per_prefill_token × prompt tokens admitted − overlap)
             + per_context_token × Σ context of the running requests

With no override the terms come from the simulated card and the model:

    step              = OVERHEAD_S + weight bytes on one GPU / (bandwidth × BANDWIDTH_SHARE)
                        + offloaded weight bytes / (PCIe × PCIE_SHARE)
    per_seq           = 2 × parameters / TP / (tensor FLOPS × FLOPS_SHARE)
    per_context_token = KV bytes per token on one GPU / (bandwidth × BANDWIDTH_SHARE)
    per_prefill_token = per_seq
    overlap           = weight bytes on one GPU / (bandwidth × BANDWIDTH_SHARE)

A step of more tokens (decodes and prompt tokens) than the largest captured CUDA graph runs
without one, its kernels launched from the CPU, and takes at least

    ungraphed         = layers × UNGRAPHED_PER_LAYER_S

(real vLLM 0.26 on an H100 host, a 36-layer Qwen3-4B shape: steps of a 512-token prompt beside 1
to 15 decodes, just beyond graphs to 512 tokens, took 19–34 ms where their GPU work was ~9 ms, 37–63
in another launch; with graphs captured to 1,024 tokens the same load ran at the GPU's pace). A step
that carries several prompts is longer on the GPU than the floor, as real steps at 64 users were.
Eager mode keeps its plain law.

and the card's bandwidth, dense BF16 rate and PCIe link come from the GPU table
(llm_supervisor.vllm.gpuspecs: facts, not math), or from LLM_SUPERVISOR_SIM_GPU_BANDWIDTH_GBS,
_GPU_TFLOPS and _GPU_PCIE_GBS. Each term can be set outright (seconds):
LLM_SUPERVISOR_SIM_STEP_S, _STEP_PER_SEQ_S, _STEP_PER_CONTEXT_TOKEN_S, _STEP_PER_PREFILL_TOKEN_S,
_STEP_OVERLAP_S (0 once any of the first, second or fourth is set: a law set by hand adds its terms,
and has no ungraphed floor unless _UNGRAPHED_PER_LAYER_S is set too);
LLM_SUPERVISOR_SIM_TOKENS_PER_S=R makes every step 1/R seconds whatever the batch (the old
fixed-rate simulator, which some tests want).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from llm_supervisor.vllm.gpuspecs import find_gpu  # the cards' datasheet figures

OVERHEAD_S = 2.0e-3
BANDWIDTH_SHARE = 0.85
FLOPS_SHARE = 0.45
PCIE_SHARE = 0.54  # real vLLM 0.26 on an H200: 44.26 GiB offloaded, 0.72 tokens/s
UNGRAPHED_PER_LAYER_S = 0.8e-3
# A card not in the table: a mid-range PCIe Gen4 GPU
DEFAULT_BANDWIDTH_GBS = 900.0
DEFAULT_TFLOPS = 120.0
DEFAULT_PCIE_GBS = 31.5


@dataclass(frozen=True)
class StepLaw:
    step_s: float
    per_seq_s: float = 0.0
    per_context_token_s: float = 0.0
    per_prefill_token_s: float = 0.0
    overlap_s: float = 0.0
    graph_tokens: int = 0          # the largest step a captured CUDA graph covers
    ungraphed_s: float = 0.0       # the least a larger step takes (0: no such floor)

    def duration(self, running: int, context_tokens: int, prefill_tokens: int, decodes: int | None = None) -> float:
        """One step of `running` requests, `prefill_tokens` of them prompt tokens admitted in it
        (`decodes`: the running requests that only decode, all of them unless given)."""
        work = self.per_seq_s * running + self.per_prefill_token_s * prefill_tokens
        step = self.step_s + max(0.0, work - self.overlap_s) + self.per_context_token_s * context_tokens
        tokens = (running if decodes is None else decodes) + prefill_tokens
        if self.ungraphed_s and tokens > self.graph_tokens:
            return max(step, self.ungraphed_s)
        return step


def model_params(num_layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                 vocab: int) -> int:
    """Parameters of a dense decoder: attention (q, k, v, o), gated MLP, and the lm_head."""
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    return num_layers * (attention + 3 * hidden * intermediate) + vocab * hidden


def step_law(env: Callable[[str, float], float], *, gpu_name: str, weight_bytes: float, offloaded_bytes: float,
             params: int, tensor_parallel: int, kv_bytes_per_token: float, layers: int = 0,
             graph_sizes: tuple[int, ...] = ()) -> StepLaw:
    """The law for one engine; `env(name, default)` reads LLM_SUPERVISOR_SIM_<name>. `layers`:
    the decoder layers one GPU runs; `graph_sizes`: the CUDA graphs captured (none: eager)."""
    rate = env("TOKENS_PER_S", 0.0)
    if rate > 0:
        return StepLaw(1.0 / max(rate, 0.1))
    spec = find_gpu(gpu_name)
    bandwidth = env("GPU_BANDWIDTH_GBS", spec.bandwidth_gbs if spec else DEFAULT_BANDWIDTH_GBS) * 1e9 * BANDWIDTH_SHARE
    flops = env("GPU_TFLOPS", spec.bf16_tflops if spec else DEFAULT_TFLOPS) * 1e12 * FLOPS_SHARE
    pcie = env("GPU_PCIE_GBS", spec.pcie_gbs if spec else DEFAULT_PCIE_GBS) * 1e9 * PCIE_SHARE
    step = OVERHEAD_S + weight_bytes / bandwidth + (offloaded_bytes / pcie if offloaded_bytes else 0.0)
    per_seq = 2.0 * params / max(1, tensor_parallel) / flops
    by_hand = any(not math.isnan(env(name, math.nan)) for name in ("STEP_S", "STEP_PER_SEQ_S", "STEP_PER_PREFILL_TOKEN_S"))
    per_layer = env("UNGRAPHED_PER_LAYER_S", 0.0 if by_hand else UNGRAPHED_PER_LAYER_S)
    return StepLaw(
        step_s=env("STEP_S", step),
        per_seq_s=env("STEP_PER_SEQ_S", per_seq),
        per_context_token_s=env("STEP_PER_CONTEXT_TOKEN_S", kv_bytes_per_token / bandwidth),
        per_prefill_token_s=env("STEP_PER_PREFILL_TOKEN_S", per_seq),
        overlap_s=env("STEP_OVERLAP_S", 0.0 if by_hand else weight_bytes / bandwidth),
        graph_tokens=max(graph_sizes, default=0),
        ungraphed_s=layers * per_layer if graph_sizes else 0.0,
    )
