"""Model shapes, KV bytes per token and safetensors header parsing (headers written by hand)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from llm_supervisor.host import modelfiles
from llm_supervisor.vllm.modelshape import GIB, ModelShape, SafetensorsError

QWEN3_4B = modelfiles.load_shape("Qwen/Qwen3-4B")
QWEN3_8B = modelfiles.load_shape("Qwen/Qwen3-8B")
QWEN3_32B_AWQ = modelfiles.load_shape("Qwen/Qwen3-32B-AWQ")

ST_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1, "F8_E4M3": 1}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], with_data: bool = False,
                      metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file in the documented format: u64 little-endian header length, the
    JSON header, then the data. Header-only files (with_data False) are enough for the planner,
    which never reads past the header. Returns the tensor bytes."""
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = ST_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        if with_data:
            fh.write(b"\0" * offset)
    return offset


def qwen3_tensors(shape: ModelShape) -> dict[str, tuple[str, list[int]]]:
    """The tensor list of a Qwen3 checkpoint (as on the Hub) for a given shape."""
    h, hd = shape.hidden_size, shape.head_dim
    q, kv, inter = shape.num_heads * hd, shape.num_kv_heads * hd, shape.intermediate_size
    out: dict[str, tuple[str, list[int]]] = {"model.embed_tokens.weight": ("BF16", [shape.vocab_size, h])}
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = ("BF16", [h])
        out[p + "post_attention_layernorm.weight"] = ("BF16", [h])
        out[p + "self_attn.q_proj.weight"] = ("BF16", [q, h])
        out[p + "self_attn.k_proj.weight"] = ("BF16", [kv, h])
        out[p + "self_attn.v_proj.weight"] = ("BF16", [kv, h])
        out[p + "self_attn.o_proj.weight"] = ("BF16", [h, q])
        out[p + "self_attn.q_norm.weight"] = ("BF16", [hd])
        out[p + "self_attn.k_norm.weight"] = ("BF16", [hd])
        out[p + "mlp.gate_proj.weight"] = ("BF16", [inter, h])
        out[p + "mlp.up_proj.weight"] = ("BF16", [inter, h])
        out[p + "mlp.down_proj.weight"] = ("BF16", [h, inter])
    out["model.norm.weight"] = ("BF16", [h])
    if not shape.tied_embeddings:
        out["lm_head.weight"] = ("BF16", [shape.vocab_size, h])
    return out


# ---------------------------------------------------------------- KV bytes per token


def test_qwen3_4b_kv_bytes_per_token_is_144_kib():
    assert QWEN3_4B.kv_bytes_per_token() == 147456 == 144 * 1024
    # 36 layers × 2 × 8 KV heads × 128 × 2 bytes; a 40960-token request needs 5.62 GiB
    assert round(40960 * QWEN3_4B.kv_bytes_per_token() / GIB, 2) == 5.62


def test_qwen3_8b_tp2_and_32b_awq_tp8():
    assert QWEN3_8B.kv_bytes_per_token(2) == 72 * 1024
    assert QWEN3_32B_AWQ.kv_bytes_per_token(8) == 32 * 1024


def test_kv_heads_never_split_below_one_and_fp8_halves():
    assert QWEN3_4B.kv_bytes_per_token(16) == 36 * 2 * 1 * 128 * 2
    assert QWEN3_4B.kv_bytes_per_token(kv_cache_dtype="fp8") == 147456 // 2
    assert QWEN3_4B.kv_bytes_per_token(layers=18) == 147456 // 2  # one of two pipeline stages


def test_mla_kv_is_one_latent_per_layer_and_not_split_by_tp():
    cfg = {"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
           "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 102400,
           "intermediate_size": 10944, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "v_head_dim": 128, "q_lora_rank": None, "n_routed_experts": 64, "num_experts_per_tok": 6,
           "moe_intermediate_size": 1408, "n_shared_experts": 2, "first_k_dense_replace": 1,
           "max_position_embeddings": 163840, "torch_dtype": "bfloat16"}
    shape = ModelShape.from_config(cfg)
    assert shape.uses_mla and shape.attention_kind == "mla"
    assert shape.kv_bytes_per_token(1) == 27 * (512 + 64) * 2
    assert shape.kv_bytes_per_token(4) == shape.kv_bytes_per_token(1)
    assert shape.kv_bytes_per_token(1, kv_cache_dtype="fp8") == 27 * 576
    # MLA has no KV-head divisibility rule, only the attention heads
    assert shape.tensor_parallel_problem(8) is None and shape.tensor_parallel_problem(3) == "heads"
    # DeepSeek-V2-Lite has ~15.7B parameters: the MoE estimate lands near 29 GiB in bf16
    assert 27 < shape.weight_bytes() / GIB < 31


# ---------------------------------------------------------------- config facts


def test_bundled_shapes_and_quantization():
    assert (QWEN3_4B.num_heads, QWEN3_4B.num_kv_heads, QWEN3_4B.tied_embeddings) == (32, 8, True)
    assert QWEN3_4B.context_limit == 40960 and QWEN3_4B.attention_kind == "full"
    assert (QWEN3_32B_AWQ.quant_method, QWEN3_32B_AWQ.quant_bits, QWEN3_32B_AWQ.quant_group_size) == ("awq", 4, 128)
    assert QWEN3_4B.valid_tensor_parallel_sizes() == [1, 2, 4, 8, 16, 32]
    assert QWEN3_4B.tensor_parallel_problem(3) == "heads"


@pytest.mark.parametrize("quant, method, bits", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "gptq", 4),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes", 4),
    ({"load_in_8bit": True}, "bitsandbytes", 8),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8", 8),
    ({"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 128}}}},
     "compressed-tensors", 4),
])
def test_quantization_configs(quant, method, bits):
    cfg = json.loads((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-8B.json").read_text())
    cfg["quantization_config"] = quant
    shape = ModelShape.from_config(cfg)
    assert (shape.quant_method, shape.quant_bits) == (method, bits)
    bf16 = QWEN3_8B.weight_bytes()
    assert shape.weight_bytes() < bf16 * (0.62 if bits == 8 else 0.40)


def test_awq_estimate_is_about_a_quarter_of_bf16():
    bf16 = modelfiles.load_shape("Qwen/Qwen3-32B").weight_bytes()
    awq = QWEN3_32B_AWQ.weight_bytes()
    assert 0.25 < awq / bf16 < 0.35  # 4-bit linear layers, 16-bit embeddings
    # vocab-parallel embeddings and lm_head: per GPU close to total / TP
    assert abs(QWEN3_32B_AWQ.weight_bytes(8) - awq / 8) / (awq / 8) < 0.01


def test_fp8_online_quantization_of_a_bf16_checkpoint():
    full = QWEN3_8B.weight_bytes()
    fp8 = QWEN3_8B.weight_bytes(quantization="fp8")
    assert 0.55 < fp8 / full < 0.62  # linear layers in 1 byte, embeddings stay 16-bit


def test_sliding_window_layouts():
    base = json.loads((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    assert ModelShape.from_config(base).attention_kind == "full"  # use_sliding_window false
    mistral = {**base, "sliding_window": 4096}
    mistral.pop("use_sliding_window")
    assert ModelShape.from_config(mistral).attention_kind == "sliding"
    gemma3 = {**mistral, "sliding_window_pattern": 6}
    s = ModelShape.from_config(gemma3)
    assert s.attention_kind == "hybrid" and s.num_sliding_layers == 36 - 6
    typed = {**mistral, "layer_types": ["sliding_attention", "full_attention"] * 18}
    assert ModelShape.from_config(typed).num_sliding_layers == 18
    qwen2 = {**base, "sliding_window": 32768, "use_sliding_window": True, "max_window_layers": 28}
    assert ModelShape.from_config(qwen2).num_sliding_layers == 36 - 28


def test_yarn_rope_scaling_stretches_the_context_limit():
    cfg = json.loads((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert ModelShape.from_config(cfg).context_limit == 131072


def test_pipeline_split_follows_vllm():
    assert QWEN3_4B.layers_per_stage(1) == [36]
    assert QWEN3_4B.layers_per_stage(5) == [7, 7, 7, 8, 7]  # remainder before the last stage
    stages = QWEN3_8B.weight_bytes_per_stage(1, 2)
    assert len(stages) == 2 and abs(sum(stages) - QWEN3_8B.weight_bytes()) / QWEN3_8B.weight_bytes() < 0.01


# ---------------------------------------------------------------- safetensors headers


def test_header_of_a_small_file_with_data(tmp_path):
    f = tmp_path / "model.safetensors"
    written = write_safetensors(f, {"a": ("BF16", [3, 4]), "b": ("F32", [5]), "c": ("U8", [])}, with_data=True,
                                metadata={"format": "pt"})
    tensors = {t.name: t for t in modelfiles.read_safetensors_tensors(f)}
    assert set(tensors) == {"a", "b", "c"}
    assert (tensors["a"].nbytes, tensors["b"].nbytes, tensors["c"].nbytes) == (24, 20, 1)
    assert sum(t.nbytes for t in tensors.values()) == written == 45
    assert tensors["a"].shape == (3, 4) and tensors["a"].dtype == "BF16"


def test_qwen3_4b_headers_match_the_shape_estimate_exactly(tmp_path):
    (tmp_path / "config.json").write_text((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    total = write_safetensors(tmp_path / "model.safetensors", qwen3_tensors(QWEN3_4B))
    inv = modelfiles.load_weight_inventory(tmp_path)
    assert inv is not None and inv.total_bytes == total == 8_044_936_192  # 4.02B parameters × 2 bytes
    assert inv.per_gpu_bytes(QWEN3_4B, 1) == [QWEN3_4B.weight_bytes()]
    tp2 = inv.per_gpu_bytes(QWEN3_4B, 2)[0]
    assert abs(tp2 - QWEN3_4B.weight_bytes(2)) / tp2 < 0.001
    assert abs(tp2 - total / 2) / tp2 < 0.001  # vocab-parallel embeddings: close to total / TP


def test_index_json_shard_set(tmp_path):
    shape = QWEN3_8B
    tensors = qwen3_tensors(shape)
    names = list(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    total = 0
    weight_map = {}
    for fname, part in shards.items():
        total += write_safetensors(tmp_path / fname, {n: tensors[n] for n in part})
        weight_map.update({n: fname for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    # a stray consolidated file must not be counted twice
    write_safetensors(tmp_path / "consolidated.safetensors", {"x": ("BF16", [1000, 1000])})
    inv = modelfiles.load_weight_inventory(tmp_path)
    assert inv is not None and inv.total_only is None
    assert len(inv.files) == 2 and inv.total_bytes == total
    assert inv.per_gpu_bytes(shape, 1) == [shape.weight_bytes()]
    # pipeline parallel 2: the two stages hold all of it (lm_head on the last)
    stages = inv.per_gpu_bytes(shape, 1, 2)
    assert sum(stages) == total and stages[1] > stages[0] - shape.vocab_size * shape.hidden_size * 2


def test_missing_shard_falls_back_to_index_total(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 16_000_000_000}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    inv = modelfiles.load_weight_inventory(tmp_path)
    assert inv is not None and inv.total_only == 16_000_000_000 and inv.problems
    assert inv.per_gpu_bytes(QWEN3_8B, 2) == [8_000_000_000]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(SafetensorsError, match="missing"):
        modelfiles.load_weight_inventory(tmp_path)


def test_kv_projections_replicate_beyond_the_kv_heads(tmp_path):
    f = tmp_path / "model.safetensors"
    write_safetensors(f, {"model.layers.0.self_attn.k_proj.weight": ("BF16", [1024, 2560]),
                          "model.layers.0.self_attn.q_proj.weight": ("BF16", [4096, 2560]),
                          "model.layers.0.input_layernorm.weight": ("BF16", [2560])})
    inv = modelfiles.load_weight_inventory(tmp_path)
    assert inv is not None
    k, q, norm = 1024 * 2560 * 2, 4096 * 2560 * 2, 2560 * 2
    # TP 16 over 8 KV heads: each GPU keeps one whole KV head (k / 8), q splits 16 ways, norms replicate
    assert inv.per_gpu_bytes(QWEN3_4B, 16) == [k // 8 + q // 16 + norm]


@pytest.mark.parametrize("content, match", [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 10**12) + b"{}", "does not fit"),
    (struct.pack("<Q", 8) + b"not json", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_bad_safetensors_files_raise_clearly(tmp_path, content, match):
    f = tmp_path / "model.safetensors"
    f.write_bytes(content)
    with pytest.raises(SafetensorsError, match=match):
        modelfiles.load_weight_inventory(tmp_path)


def test_no_safetensors_means_no_inventory(tmp_path):
    assert modelfiles.load_weight_inventory(tmp_path) is None
    assert modelfiles.load_weight_inventory("Qwen/Qwen3-4B", hf_home=str(tmp_path)) is None
