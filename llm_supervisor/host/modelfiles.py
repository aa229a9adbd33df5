"""A model's files on this machine: config.json and the safetensors headers, from a local
folder, the Hugging Face cache, or the config facts bundled with the package. Reads headers
only, never tensors; never imports torch or vLLM.

Where the config comes from, in order: a local model folder, the Hugging Face cache
(`$HF_HOME/hub/models--org--name/snapshots/*/config.json`), then the public config.json facts
bundled for the models of the shipped profiles (data/models/org--name.json).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable

from llm_supervisor.vllm.modelshape import (
    ModelShape, SafetensorsError, TensorInfo, WeightInventory, tensors_from_header,
)

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "models"


# The safetensors format caps the JSON header at 100 MB; anything larger is not a safetensors file.
SAFETENSORS_MAX_HEADER = 100_000_000


class ModelConfigNotFound(LookupError):
    """No config.json for the model here, in the HF cache, or bundled."""


class NotAModelFolder(ModelConfigNotFound):
    """A local folder with neither config.json nor a Mistral-format params.json: vLLM cannot load it."""


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of one safetensors file: 8-byte little-endian length, then that many bytes
    of JSON. Reads only the header, never the tensors."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{p}: too short for a safetensors header")
            (length,) = struct.unpack("<Q", head)
            size = os.fstat(fh.fileno()).st_size
            if length <= 1 or length > SAFETENSORS_MAX_HEADER or 8 + length > size:
                raise SafetensorsError(f"{p}: header length {length} does not fit the file ({size} bytes)")
            raw = fh.read(length)
    except OSError as exc:
        raise SafetensorsError(f"{p}: cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" \x00"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError(f"{p}: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{p}: header is not a JSON object")
    return header


def read_safetensors_tensors(path: str | Path) -> list[TensorInfo]:
    """Every tensor of one safetensors file with its size (dtype × shape; the data offsets when
    the dtype is unknown)."""
    return tensors_from_header(read_safetensors_header(path), str(path))


def find_model_dir(model: str, hf_home: str | None = None) -> Path | None:
    """The folder holding the model's files: the path itself, or its newest HF-cache snapshot."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    hub = Path(hf_home or os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    snapshots = hub / f"models--{bundled_name(model)}" / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            if (snap / "config.json").is_file() or any(snap.glob("*.safetensors*")):
                return snap
    return None


def _shard_files(folder: Path) -> tuple[list[Path], dict[str, Any] | None]:
    """The safetensors files vLLM would load from a folder, and the index when there is one."""
    for index_name in ("model.safetensors.index.json", "consolidated.safetensors.index.json"):
        index_path = folder / index_name
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SafetensorsError(f"{index_path}: unreadable index ({exc})") from None
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise SafetensorsError(f"{index_path}: no weight_map")
            names = sorted({str(v) for v in weight_map.values()})
            return [folder / n for n in names], index
    files = sorted(folder.glob("*.safetensors"))
    if any(not f.name.startswith("consolidated") for f in files):
        files = [f for f in files if not f.name.startswith("consolidated")]
    return files, None


def load_weight_inventory(model: str | Path, hf_home: str | None = None) -> WeightInventory | None:
    """Read the safetensors headers of a model folder (or its HF-cache snapshot); None when no
    safetensors files are there. Raises SafetensorsError for a file that is not safetensors."""
    folder = find_model_dir(str(model), hf_home)
    if folder is None:
        return None
    files, index = _shard_files(folder)
    if not files:
        return None
    missing = [f for f in files if not f.is_file()]
    if missing:
        total = ((index or {}).get("metadata") or {}).get("total_size")
        problems = [f"{f}: shard missing" for f in missing]
        if isinstance(total, (int, float)) and total > 0:
            return WeightInventory([], [str(f) for f in files], str(folder), int(total), problems)
        raise SafetensorsError(f"{missing[0]}: shard listed in the index is missing and the index has no total_size")
    tensors: list[TensorInfo] = []
    for f in files:
        tensors.extend(read_safetensors_tensors(f))
    if index is not None:
        wanted = set((index.get("weight_map") or {}).keys())
        tensors = [t for t in tensors if t.name in wanted] or tensors
    return WeightInventory(tensors, [str(f) for f in files], str(folder))


def bundled_name(model_id: str) -> str:
    return model_id.strip("/").replace("/", "--")


def bundled_config_path(model_id: str) -> Path:
    """Where the package keeps the config.json facts of a shipped profile's model (which may be
    missing: check is_file)."""
    return BUNDLED_DIR / f"{bundled_name(model_id)}.json"


def find_model_config(model: str, hf_home: str | None = None) -> tuple[dict[str, Any], str]:
    """Return (config dict, where it came from) for a local folder or a Hugging Face id."""
    path = Path(model).expanduser()
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            if not (path / "params.json").is_file():
                raise NotAModelFolder(f"{model}: folder has no config.json")
            raise ModelConfigNotFound(f"{model}: folder has no config.json (a Mistral-format params.json only)")
        return _read_json(cfg), str(cfg)
    if path.is_file() and path.name.endswith(".json"):
        return _read_json(path), str(path)
    hub = Path(hf_home or os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    snapshots = hub / f"models--{bundled_name(model)}" / "snapshots"
    if snapshots.is_dir():
        for snap in sorted(snapshots.iterdir(), reverse=True):
            if (snap / "config.json").is_file():
                return _read_json(snap / "config.json"), str(snap / "config.json")
    bundled = bundled_config_path(model)
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
        return ModelShape.from_config(config, name=model)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConfigNotFound(f"{model}: config.json lacks {exc}") from None


def iter_bundled_models() -> Iterable[str]:
    """Hugging Face ids of the models whose config facts ship with the package."""
    for path in sorted(BUNDLED_DIR.glob("*.json")):
        yield path.stem.replace("--", "/", 1)
