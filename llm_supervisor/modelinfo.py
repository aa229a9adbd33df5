"""Model shapes from config.json: weight bytes and KV-cache bytes per token. Pure apart from
reading files.

Where the config comes from, in order: a local model folder, the Hugging Face cache
(`$HF_HOME/hub/models--org--name/snapshots/*/config.json`), then the public config.json facts
bundled for the models of the shipped profiles (data/models/org--name.json).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLED_DIR = Path(__file__).resolve().parent / "data" / "models"
GIB = 1024**3
MIB = 1024**2

DTYPE_BYTES = {
    "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1,
}


class ModelConfigNotFound(LookupError):
    """No config.json for the model here, in the HF cache, or bundled."""


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
    sliding_window: int | None = None
    uses_mla: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelShape":
        text = config.get("text_config") or config
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        quant = config.get("quantization_config") or {}
        window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
        return cls(
            architecture=(config.get("architectures") or ["unknown"])[0],
            hidden_size=hidden,
            num_layers=int(text["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate_size=int(text.get("intermediate_size") or 4 * hidden),
            vocab_size=int(text["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            max_position_embeddings=int(text.get("max_position_embeddings") or 2048),
            torch_dtype=str(config.get("torch_dtype") or text.get("torch_dtype") or config.get("dtype") or "bfloat16"),
            quant_method=quant.get("quant_method"),
            quant_bits=quant.get("bits") or quant.get("w_bit"),
            quant_group_size=quant.get("group_size") or quant.get("q_group_size"),
            sliding_window=int(window) if window else None,
            uses_mla=bool(text.get("kv_lora_rank")),
        )

    # ------------------------------------------------------------ sizes

    def dtype_bytes(self, dtype: str = "auto") -> int:
        name = self.torch_dtype if dtype in ("auto", None) else dtype
        return DTYPE_BYTES.get(name, 2)

    def kv_bytes_per_token(self, tensor_parallel: int = 1, kv_cache_dtype: str = "auto", dtype: str = "auto") -> int:
        """Per GPU: layers × 2 (K and V) × max(1, kv_heads // TP) × head_dim × dtype bytes."""
        elem = DTYPE_BYTES[kv_cache_dtype] if kv_cache_dtype not in ("auto", None) else self.dtype_bytes(dtype)
        kv_heads = max(1, self.num_kv_heads // tensor_parallel)
        return self.num_layers * 2 * kv_heads * self.head_dim * elem

    def linear_params_per_layer(self) -> int:
        q = self.hidden_size * self.num_heads * self.head_dim
        kv = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return q + kv + o + mlp

    def weight_bytes(self, tensor_parallel: int = 1, dtype: str = "auto") -> int:
        """Estimated weight bytes per GPU from the shape (used when no safetensors headers exist)."""
        elem = self.dtype_bytes(dtype)
        linear = self.linear_params_per_layer() * self.num_layers
        if self.quant_method in ("awq", "gptq", "awq_marlin", "gptq_marlin") and self.quant_bits:
            group = self.quant_group_size or 128
            # packed weights + fp16 scales + packed zero points, per input×output element
            per_elem = self.quant_bits / 8 + 2 / group + (self.quant_bits / 8) / group
            linear_bytes = linear * per_elem
        elif self.quant_method in ("fp8", "compressed-tensors") and self.quant_bits in (None, 8):
            linear_bytes = linear * 1.0
        elif self.quant_method == "bitsandbytes":
            linear_bytes = linear * 0.5 * (1 + 4 / 64)
        else:
            linear_bytes = linear * elem
        embed = self.vocab_size * self.hidden_size * elem * (1 if self.tied_embeddings else 2)
        norms = (2 * self.num_layers + 1) * self.hidden_size * elem + 2 * self.num_layers * self.head_dim * elem
        return int((linear_bytes + embed) / tensor_parallel + norms)


# ---------------------------------------------------------------- finding config.json


def bundled_name(model_id: str) -> str:
    return model_id.strip("/").replace("/", "--")


def find_model_config(model: str, hf_home: str | None = None) -> tuple[dict[str, Any], str]:
    """Return (config dict, where it came from) for a local folder or a Hugging Face id."""
    path = Path(model).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelConfigNotFound(f"{model}: folder has no config.json")
        return _read_json(cfg), str(cfg)
    if path.is_file() and path.name.endswith(".json"):
        return _read_json(path), str(path)
    hub = Path(hf_home or os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    snapshots = hub / f"models--{bundled_name(model)}" / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir(), reverse=True):
            if (snap / "config.json").is_file():
                return _read_json(snap / "config.json"), str(snap / "config.json")
    bundled = BUNDLED_DIR / f"{bundled_name(model)}.json"
    if bundled.is_file():
        return _read_json(bundled), f"bundled facts for {model}"
    raise ModelConfigNotFound(
        f"{model}: no config.json (not a folder, not in the Hugging Face cache under {hub}, not bundled)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelConfigNotFound(f"{path}: unreadable config.json ({exc})") from None
    if not isinstance(data, dict):
        raise ModelConfigNotFound(f"{path}: config.json is not an object")
    return data


def load_shape(model: str, hf_home: str | None = None) -> ModelShape:
    config, _ = find_model_config(model, hf_home)
    try:
        return ModelShape.from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConfigNotFound(f"{model}: config.json lacks {exc}") from None
