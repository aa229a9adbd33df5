"""A model as vLLM sees it: its shape from config.json (layers, heads, context limit, quantization),
the tensors its safetensors headers list and how they split over GPUs, and KV-cache bytes per
token. Pure: the files are read by llm_supervisor.host.modelfiles.

Weights: when the checkpoint's `*.safetensors` headers are known, every tensor's dtype and shape
give the bytes exactly (`WeightInventory`). Without them the bytes are estimated from the shape
(`ModelShape.weight_bytes`), quantization included.

KV cache per token and GPU, as vLLM's V1 `AttentionSpec.page_size_bytes` counts it:
  standard attention  layers × 2 (K, V) × max(1, kv_heads // TP) × head_dim × dtype bytes
  MLA (kv_lora_rank)  layers × (kv_lora_rank + qk_rope_head_dim) × dtype bytes  (not split by TP)
with dtype = `--kv-cache-dtype` (fp8 = 1 byte) or the model's dtype.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
MIB = 1024**2

DTYPE_BYTES = {
    "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1,
}

# safetensors dtype names → bytes per element (F4/F6 are packed sub-byte formats)
SAFETENSORS_DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
    "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "F6_E2M3": 0.75, "F6_E3M2": 0.75, "F4": 0.5,
}

# config.json keys vLLM reads for the model's own context limit (it takes the smallest present)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                 "max_sequence_length", "max_seq_length", "seq_len")


class SafetensorsError(ValueError):
    """A file that claims to be safetensors but whose header cannot be read."""


# ---------------------------------------------------------------- quantization


def _quant_config(config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's `quantization_config` (a multimodal model's under `text_config`); {} when
    there is none."""
    quant = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config") or {}
    return quant if isinstance(quant, dict) else {}


def _quant_facts(config: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """(method, weight bits, group size) from `quantization_config` (AWQ, GPTQ, bitsandbytes,
    fp8, compressed-tensors, mxfp4); all None for an unquantized checkpoint."""
    quant = _quant_config(config)
    if not quant:
        return None, None, None
    method = quant.get("quant_method")
    method = str(method).lower() if method else None
    bits = quant.get("bits") or quant.get("w_bit") or quant.get("weight_bits")
    group = quant.get("group_size") or quant.get("q_group_size")
    if method == "bitsandbytes" or quant.get("load_in_4bit") or quant.get("load_in_8bit"):
        method = "bitsandbytes"
        bits = 8 if quant.get("load_in_8bit") else (bits or 4)
        group = group or 64
    elif method in ("fp8", "fbgemm_fp8", "modelopt") and not bits:
        bits = 8
    elif method == "mxfp4":
        bits, group = 4, group or 32
    elif method == "compressed-tensors":
        for grp in (quant.get("config_groups") or {}).values():
            weights = (grp or {}).get("weights") or {}
            bits = bits or weights.get("num_bits")
            group = group or weights.get("group_size")
    return method, int(bits) if bits else None, int(group) if group else None


def linear_bytes_per_element(method: str | None, bits: int | None, group: int | None, elem: float) -> float:
    """Bytes per weight element of a linear layer in the given quantization (None: unquantized)."""
    if not method:
        return elem
    if method in ("awq", "gptq", "awq_marlin", "gptq_marlin", "marlin", "compressed-tensors") and bits and bits < 8:
        g = group if group and group > 0 else 128
        # packed weights + fp16 scales + packed zero points, per element
        return bits / 8 + 2 / g + (bits / 8) / g
    if method == "bitsandbytes":
        b = bits or 4
        return b / 8 + 4 / (group or 64)  # fp32 absmax per block
    if method == "mxfp4":
        return 0.5 + 1 / (group or 32)  # e8m0 scale per 32 elements
    if bits and bits <= 8:
        return bits / 8  # fp8 and int8 schemes (per-channel scales are negligible)
    return elem


def _zero_point(config: dict[str, Any]) -> bool:
    """Whether the checkpoint's quantized linear layers carry zero points that vLLM keeps (AWQ's
    `zero_point`; vLLM runs GPTQ symmetric, without them)."""
    quant = _quant_config(config)
    return str(quant.get("quant_method") or "").lower() == "awq" and bool(quant.get("zero_point"))


# From 0.26 vLLM runs AWQ and GPTQ checkpoints' linear layers through its mixed-precision kernels,
# the first in its order that takes the layer (kernels/linear/__init__.py `_POSSIBLE_KERNELS`, read
# in 0.26.0 and 0.34.0; 0.8.5's awq_marlin called Marlin directly). Machete, for compute capability
# 9.0 (Hopper), comes before Marlin and takes 4- and 8-bit weights in groups of 64 or 128 (or per
# channel) with 16-bit activations; it keeps zero points unpacked, as −scale × zero point in the
# activation dtype, where the checkpoint and Marlin pack them (mixed_precision/machete.py
# `transform_w_zp`). Qwen3-32B-AWQ on an H200, vLLM 0.26.0: "Using MacheteLinearKernel for
# AutoAWQMarlinLinearMethod", "Model loading took 18.6 GiB" against 18.00 GiB of checkpoint tensors.
MACHETE_CAPABILITY = (9, 0)
MACHETE_GROUP_SIZES = (-1, 64, 128)
MIXED_PRECISION_FIRST_VERSION = (0, 26)


def linear_kernel(shape: "ModelShape", compute_capability: tuple[int, int] | None,
                  vllm_version: tuple[int, ...] | None) -> str | None:
    """The kernel vLLM runs an AWQ or GPTQ checkpoint's linear layers with on this GPU
    ("MacheteLinearKernel" or "MarlinLinearKernel"); None for other checkpoints and before 0.26."""
    if shape.quant_method not in ("awq", "gptq") or not shape.quant_bits:
        return None
    if vllm_version is not None and vllm_version < MIXED_PRECISION_FIRST_VERSION:
        return None
    if (compute_capability == MACHETE_CAPABILITY and shape.quant_bits in (4, 8)
            and (shape.quant_group_size or -1) in MACHETE_GROUP_SIZES):
        return "MacheteLinearKernel"
    return "MarlinLinearKernel"


def unpacked_zero_point_bytes(shape: "ModelShape", compute_capability: tuple[int, int] | None,
                              vllm_version: tuple[int, ...] | None, dtype: str = "auto") -> float:
    """Bytes per quantized linear element that vLLM's kernel adds to the checkpoint's: AWQ's zero
    points held at 16 bits by Machete (0 where Marlin runs, or without zero points)."""
    group, bits = shape.quant_group_size, shape.quant_bits
    if not shape.quant_zero_point or not bits or not group or group <= 0:
        return 0.0  # per channel: one zero point per output column, negligible
    if linear_kernel(shape, compute_capability, vllm_version) != "MacheteLinearKernel":
        return 0.0
    return (shape.dtype_bytes(dtype) - bits / 8) / group


def unpacked_zero_point_bytes_per_stage(shape: "ModelShape", compute_capability: tuple[int, int] | None,
                                        vllm_version: tuple[int, ...] | None, tensor_parallel: int = 1,
                                        pipeline_parallel: int = 1, dtype: str = "auto") -> list[float]:
    """What Machete's zero points add on one GPU of each pipeline stage (zeros where they add
    nothing): the planner's and the simulator's one count of them."""
    per_element = unpacked_zero_point_bytes(shape, compute_capability, vllm_version, dtype)
    return [e * per_element for e in shape.dense_linear_elements_per_stage(tensor_parallel, pipeline_parallel)]


# ---------------------------------------------------------------- the shape


@dataclass(frozen=True)
class ModelShape:
    """The config.json facts that decide memory."""

    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    max_position_embeddings: int
    torch_dtype: str
    quant_method: str | None = None
    quant_bits: int | None = None
    quant_group_size: int | None = None
    quant_zero_point: bool = False       # AWQ's asymmetric 4-bit: a zero point per group
    sliding_window: int | None = None
    uses_mla: bool = False
    # --- added: MLA, mixture of experts, sliding-window layout, context limit, name
    model_type: str = ""
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    q_lora_rank: int | None = None
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int = 0
    num_dense_layers: int = 0
    num_sliding_layers: int = 0
    derived_max_model_len: int | None = None
    name: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "") -> "ModelShape":
        text = config.get("text_config") or config
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        layers = int(text["num_hidden_layers"])
        method, bits, group = _quant_facts(config)
        kv_lora = text.get("kv_lora_rank")
        window, sliding_layers = _sliding_layout(text, layers)
        experts = int(text.get("n_routed_experts") or text.get("num_experts") or text.get("num_local_experts") or 0)
        moe_inter = text.get("moe_intermediate_size") or (text.get("intermediate_size") if experts else None)
        shared = int(text.get("shared_expert_intermediate_size") or 0)
        if not shared and text.get("n_shared_experts") and moe_inter:
            shared = int(text["n_shared_experts"]) * int(moe_inter)
        dense = int(text.get("first_k_dense_replace") or len(text.get("mlp_only_layers") or []))
        max_pos = _context_limit(text)
        return cls(
            architecture=(config.get("architectures") or ["unknown"])[0],
            hidden_size=hidden,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate_size=int(text.get("intermediate_size") or 4 * hidden),
            vocab_size=int(text["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            max_position_embeddings=max_pos,
            torch_dtype=str(config.get("torch_dtype") or text.get("torch_dtype") or config.get("dtype")
                            or text.get("dtype") or "bfloat16"),
            quant_method=method,
            quant_bits=bits,
            quant_group_size=group,
            quant_zero_point=_zero_point(config),
            sliding_window=window,
            uses_mla=bool(kv_lora),
            model_type=str(config.get("model_type") or text.get("model_type") or ""),
            kv_lora_rank=int(kv_lora) if kv_lora else None,
            qk_rope_head_dim=int(text["qk_rope_head_dim"]) if text.get("qk_rope_head_dim") else None,
            qk_nope_head_dim=int(text["qk_nope_head_dim"]) if text.get("qk_nope_head_dim") else None,
            v_head_dim=int(text["v_head_dim"]) if text.get("v_head_dim") else None,
            q_lora_rank=int(text["q_lora_rank"]) if text.get("q_lora_rank") else None,
            num_experts=experts,
            num_experts_per_tok=int(text.get("num_experts_per_tok") or text.get("moe_topk") or (2 if experts else 0)),
            moe_intermediate_size=int(moe_inter) if moe_inter else None,
            shared_expert_intermediate_size=shared,
            num_dense_layers=min(dense, layers) if experts else layers,
            num_sliding_layers=sliding_layers,
            derived_max_model_len=_derived_max_len(text, max_pos),
            name=name,
        )

    # ------------------------------------------------------------ attention layout

    @property
    def attention_kind(self) -> str:
        """"mla", "full", "sliding" (every layer windowed) or "hybrid" (some layers windowed)."""
        if self.uses_mla:
            return "mla"
        if self.num_sliding_layers <= 0 or not self.sliding_window:
            return "full"
        return "sliding" if self.num_sliding_layers >= self.num_layers else "hybrid"

    @property
    def context_limit(self) -> int:
        """The longest max_model_len vLLM accepts without VLLM_ALLOW_LONG_MAX_MODEL_LEN."""
        return self.derived_max_model_len or self.max_position_embeddings

    def valid_tensor_parallel_sizes(self, upto: int | None = None) -> list[int]:
        """TP sizes vLLM accepts: they divide the attention heads and, for non-MLA models, either
        divide the KV heads or are a whole multiple of them (KV heads are then replicated)."""
        limit = upto or self.num_heads
        return [tp for tp in range(1, limit + 1) if not self.tensor_parallel_problem(tp)]

    def tensor_parallel_problem(self, tp: int) -> str | None:
        """Why vLLM would refuse this TP size for this model, or None."""
        if tp < 1:
            return "must be at least 1"
        if self.num_heads % tp:
            return "heads"
        if not self.uses_mla:
            kv = self.num_kv_heads
            if tp >= kv and tp % kv:
                return "kv_replicas"
            if tp < kv and kv % tp:
                return "kv_heads"
        return None

    # ------------------------------------------------------------ sizes

    def dtype_bytes(self, dtype: str = "auto") -> int:
        """Bytes per element of the model dtype vLLM runs in (`auto`: the checkpoint's, except that
        vLLM runs float32 checkpoints in half precision)."""
        if dtype in ("auto", None):
            name = self.torch_dtype.replace("torch.", "")
            return 2 if name in ("float32", "float") else DTYPE_BYTES.get(name, 2)
        return DTYPE_BYTES.get(dtype, 2)

    def kv_bytes_per_token(
        self, tensor_parallel: int = 1, kv_cache_dtype: str = "auto", dtype: str = "auto", layers: int | None = None
    ) -> int:
        """KV-cache bytes per token on one GPU (see the module docstring); `layers` for one
        pipeline stage, else all layers."""
        elem = DTYPE_BYTES[kv_cache_dtype] if kv_cache_dtype not in ("auto", None) else self.dtype_bytes(dtype)
        n_layers = self.num_layers if layers is None else layers
        if self.uses_mla and self.kv_lora_rank:
            return n_layers * (self.kv_lora_rank + (self.qk_rope_head_dim or 0)) * elem
        kv_heads = max(1, self.num_kv_heads // tensor_parallel)
        return n_layers * 2 * kv_heads * self.head_dim * elem

    def layers_per_stage(self, pipeline_parallel: int = 1) -> list[int]:
        """vLLM's split of the decoder layers over pipeline stages (`get_pp_indices`): equal
        shares, the remainder going to the stages before the last."""
        pp = max(1, pipeline_parallel)
        parts = [self.num_layers // pp] * pp
        for i in range(2, self.num_layers % pp + 2):
            parts[-i] += 1
        return parts

    def layer_ranges_per_stage(self, pipeline_parallel: int = 1) -> list[range]:
        """The decoder layers' indices on each pipeline stage (`layers_per_stage`, in order)."""
        out, start = [], 0
        for count in self.layers_per_stage(pipeline_parallel):
            out.append(range(start, start + count))
            start += count
        return out

    # --- parameter counts (one layer, whole model, before any TP split)

    def _attention_params(self) -> tuple[int, int, int]:
        """(params split by TP, params in the K/V projections, replicated params) of one layer."""
        h = self.hidden_size
        if self.uses_mla and self.kv_lora_rank:
            rope = self.qk_rope_head_dim or 0
            nope = self.qk_nope_head_dim or self.head_dim
            v = self.v_head_dim or self.head_dim
            per_head_q = nope + rope
            split = self.num_heads * v * h + self.kv_lora_rank * self.num_heads * (nope + v)
            replicated = h * (self.kv_lora_rank + rope) + self.kv_lora_rank
            if self.q_lora_rank:
                replicated += h * self.q_lora_rank + self.q_lora_rank
                split += self.q_lora_rank * self.num_heads * per_head_q
            else:
                split += h * self.num_heads * per_head_q
            return split, 0, replicated
        q = h * self.num_heads * self.head_dim
        o = self.num_heads * self.head_dim * h
        kv = 2 * h * self.num_kv_heads * self.head_dim
        return q + o, kv, 0

    def _is_moe_layer(self, index: int) -> bool:
        return self.num_experts > 0 and index >= self.num_dense_layers

    def _mlp_params(self, index: int) -> tuple[int, int]:
        """(params split by TP, replicated params: the MoE router) of layer `index`."""
        h = self.hidden_size
        if self._is_moe_layer(index):
            inter = self.moe_intermediate_size or self.intermediate_size
            experts = self.num_experts * 3 * h * inter
            shared = 3 * h * self.shared_expert_intermediate_size
            return experts + shared, h * self.num_experts
        return 3 * h * self.intermediate_size, 0

    def linear_params_per_layer(self) -> int:
        """Linear-layer parameters of one (dense, or the first MoE) decoder layer."""
        split, kv, rep = self._attention_params()
        mlp, router = self._mlp_params(self.num_layers - 1)
        return split + kv + rep + mlp + router

    def activation_width(self, tensor_parallel: int = 1) -> float:
        """Elements per token held at the widest point of one layer's forward pass on one GPU:
        the gate/up output, the activated intermediate, and a few hidden-size buffers
        (residual, normed input, attention output). MoE layers count the top-k experts'
        intermediates and their per-expert outputs."""
        h = self.hidden_size
        if self.num_experts:
            inter = self.num_experts_per_tok * (self.moe_intermediate_size or self.intermediate_size)
            inter += self.shared_expert_intermediate_size
            extra = self.num_experts_per_tok * h
        else:
            inter, extra = self.intermediate_size, 0
        return 3 * inter / max(1, tensor_parallel) + 4 * h + extra

    def weight_bytes_per_stage(
        self, tensor_parallel: int = 1, pipeline_parallel: int = 1, dtype: str = "auto",
        quantization: str | None = None,
    ) -> list[int]:
        """Estimated weight bytes on one GPU of each pipeline stage, from the shape alone.

        Linear layers are split by TP (K/V projections only down to one KV head per GPU);
        embeddings and lm_head are vocab-parallel; norms and MLA's low-rank down-projections
        are replicated. `quantization` (vLLM's `--quantization`) applies to an unquantized
        checkpoint quantized at load time (fp8, bitsandbytes)."""
        tp = max(1, tensor_parallel)
        elem = self.dtype_bytes(dtype)
        method, bits, group = self.quant_method, self.quant_bits, self.quant_group_size
        if not method and quantization in ("fp8", "bitsandbytes", "fbgemm_fp8"):
            method, bits, group = quantization, (8 if quantization != "bitsandbytes" else 4), None
        lin = linear_bytes_per_element(method, bits, group, elem)
        kv_split = min(tp, self.num_kv_heads) if not self.uses_mla else tp
        norms = (2 * self.hidden_size + 2 * self.head_dim) * elem

        def layer_bytes(index: int) -> float:
            split, kv, rep = self._attention_params()
            mlp, router = self._mlp_params(index)
            return (split + mlp) * lin / tp + kv * lin / kv_split + (rep * lin) + router * elem + norms

        embed = self.vocab_size * self.hidden_size * elem / tp
        stages = self.layer_ranges_per_stage(pipeline_parallel)
        out: list[int] = []
        for s, indices in enumerate(stages):
            total = sum(layer_bytes(i) for i in indices)
            if s == 0:
                total += embed
            if s == len(stages) - 1:
                # lm_head: tied to the embedding on one stage, its own copy on the last of several
                if not self.tied_embeddings or len(stages) > 1:
                    total += embed
                total += self.hidden_size * elem
            out.append(int(total))
        return out

    def dense_linear_elements_per_stage(self, tensor_parallel: int = 1, pipeline_parallel: int = 1) -> list[float]:
        """Elements of the decoder layers' linear weights on one GPU of each pipeline stage,
        routed experts left out (vLLM runs them through its MoE kernels): what a quantized
        checkpoint's linear-layer kernel holds."""
        tp = max(1, tensor_parallel)
        kv_split = min(tp, self.num_kv_heads) if not self.uses_mla else tp
        split, kv, rep = self._attention_params()

        def layer(index: int) -> float:
            mlp = 3 * self.hidden_size * self.shared_expert_intermediate_size if self._is_moe_layer(index) \
                else self._mlp_params(index)[0]
            return (split + mlp) / tp + kv / kv_split + rep

        return [sum(layer(i) for i in indices) for indices in self.layer_ranges_per_stage(pipeline_parallel)]

    def weight_bytes(self, tensor_parallel: int = 1, dtype: str = "auto", quantization: str | None = None) -> int:
        """Estimated weight bytes per GPU from the shape (used when no safetensors headers exist)."""
        return max(self.weight_bytes_per_stage(tensor_parallel, 1, dtype, quantization))


def _context_limit(text: dict[str, Any]) -> int:
    values = [int(text[k]) for k in _CONTEXT_KEYS if isinstance(text.get(k), (int, float)) and text.get(k)]
    return min(values) if values else 2048


def _derived_max_len(text: dict[str, Any], max_pos: int) -> int | None:
    """vLLM's derived limit: rope scaling stretches the trained context (yarn from its
    original_max_position_embeddings); su/longrope/llama3 already count it in max_position_embeddings."""
    rope = text.get("rope_scaling") or text.get("rope_parameters")
    if not isinstance(rope, dict):
        return None
    kind = str(rope.get("rope_type") or rope.get("type") or "")
    factor = rope.get("factor")
    if kind in ("su", "longrope", "llama3", "default", "") or not isinstance(factor, (int, float)):
        return None
    base = int(rope.get("original_max_position_embeddings") or max_pos) if kind == "yarn" else max_pos
    return int(base * factor)


def _sliding_layout(text: dict[str, Any], layers: int) -> tuple[int | None, int]:
    """(window, how many layers use it). Handles `layer_types` (newer transformers), Qwen2's
    `use_sliding_window`/`max_window_layers`, Gemma's `sliding_window_pattern` and alternating
    layers, and all-layer windows (Mistral 7B v0.1)."""
    window = text.get("sliding_window")
    if not isinstance(window, int) or window <= 0:
        return None, 0
    types = text.get("layer_types")
    if isinstance(types, list) and types:
        count = sum(1 for t in types if "sliding" in str(t))
        return (window if count else None), count
    if text.get("use_sliding_window") is False:
        return None, 0
    if "use_sliding_window" in text and "max_window_layers" in text:
        count = max(0, layers - int(text["max_window_layers"]))
        return (window if count else None), count
    pattern = text.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 1:
        return window, layers - layers // pattern
    if str(text.get("model_type", "")).startswith("gemma2") or text.get("interleaved_sliding_window"):
        return window, (layers + 1) // 2
    return window, layers


# ---------------------------------------------------------------- safetensors headers


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1


def tensors_from_header(header: dict[str, Any], source: str) -> list[TensorInfo]:
    """Every tensor a safetensors header lists, with its size (dtype × shape; the data offsets
    when the dtype is unknown). `source` names the file in error messages."""
    out: list[TensorInfo] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise SafetensorsError(f"{source}: tensor {name!r} has no shape")
        try:
            shape = tuple(int(d) for d in info["shape"])
        except (TypeError, ValueError):
            raise SafetensorsError(f"{source}: tensor {name!r} has a bad shape {info['shape']!r}") from None
        if any(d < 0 for d in shape):
            raise SafetensorsError(f"{source}: tensor {name!r} has a negative dimension")
        dtype = str(info.get("dtype", ""))
        numel = math.prod(shape) if shape else 1
        if dtype in SAFETENSORS_DTYPE_BYTES:
            nbytes = int(math.ceil(numel * SAFETENSORS_DTYPE_BYTES[dtype]))
        else:
            offsets = info.get("data_offsets")
            if not (isinstance(offsets, list) and len(offsets) == 2):
                raise SafetensorsError(f"{source}: tensor {name!r} has unknown dtype {dtype!r} and no offsets")
            nbytes = int(offsets[1]) - int(offsets[0])
        out.append(TensorInfo(name, dtype, shape, nbytes))
    return out


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder_layers)\.(\d+)\.")
_VOCAB_RE = re.compile(r"embed_tokens|lm_head|(?:^|\.)wte\.|word_embeddings|embed_out|tok_embeddings|(?:^|\.)output\.weight$")
_KV_RE = re.compile(r"(?:^|\.)(?:k_proj|v_proj|wk|wv)\.")
_REPLICATED_RE = re.compile(r"kv_a_proj_with_mqa|q_a_proj|_layernorm|(?:^|\.)norm\.|(?:mlp|moe)\.gate\.weight$|\.router\.")
_HEAD_RE = re.compile(r"lm_head|embed_out|(?:^|\.)output\.weight$")


@dataclass
class WeightInventory:
    """The tensors of a checkpoint as its safetensors headers list them."""

    tensors: list[TensorInfo]
    files: list[str]
    source: str
    total_only: int | None = None  # index.json total_size when shards are missing
    problems: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        if self.total_only is not None:
            return self.total_only
        return sum(t.nbytes for t in self.tensors)

    def per_gpu_bytes(
        self, shape: ModelShape, tensor_parallel: int = 1, pipeline_parallel: int = 1,
        quantization: str | None = None,
    ) -> list[int]:
        """Bytes on one GPU of each pipeline stage.

        Tensors of one dimension or fewer (norms, biases, per-tensor scales) and MLA's low-rank
        down-projections and MoE routers are replicated; K/V projections split no further than
        one KV head per GPU; everything else (embeddings and lm_head vocab-parallel) is divided by
        TP. `quantization` = fp8/bitsandbytes applied at load time to an unquantized checkpoint."""
        tp = max(1, tensor_parallel)
        stages = shape.layers_per_stage(pipeline_parallel)
        out = [0.0] * len(stages)
        if self.total_only is not None:
            for s, count in enumerate(stages):
                out[s] = self.total_only / tp * count / max(1, shape.num_layers)
            return [int(x) for x in out]
        ranges = shape.layer_ranges_per_stage(pipeline_parallel)
        kv_split = tp if shape.uses_mla else min(tp, max(1, shape.num_kv_heads))
        requant = None
        if not shape.quant_method and quantization in ("fp8", "fbgemm_fp8", "bitsandbytes"):
            requant = linear_bytes_per_element(quantization, 4 if quantization == "bitsandbytes" else 8, None, 2)
        for t in self.tensors:
            nbytes: float = t.nbytes
            vocab = bool(_VOCAB_RE.search(t.name))
            if requant is not None and len(t.shape) >= 2 and not vocab:
                nbytes = t.numel * requant
            if len(t.shape) <= 1 or _REPLICATED_RE.search(t.name):
                share = nbytes
            elif _KV_RE.search(t.name):
                share = nbytes / kv_split
            else:
                share = nbytes / tp
            m = _LAYER_RE.search(t.name)
            if m:
                index = int(m.group(1))
                stage = next((s for s, indices in enumerate(ranges) if index in indices), len(stages) - 1)
            elif vocab and _HEAD_RE.search(t.name):
                stage = len(stages) - 1
            elif vocab:
                stage = 0
                if shape.tied_embeddings and len(stages) > 1:
                    out[-1] += share  # the last stage keeps its own copy for lm_head
            else:
                stage = len(stages) - 1 if re.search(r"(?:^|\.)norm\.", t.name) else 0
            out[stage] += share
        return [int(x) for x in out]


# ---------------------------------------------------------------- finding config.json


