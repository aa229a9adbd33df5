"""Where a model's weight memory goes once vLLM has loaded it: every parameter and buffer of the
model in the engine, grouped by kind (the last part of its name) and dtype, against what torch has
allocated and what vLLM printed, beside the planner's estimate. For a quantized checkpoint this
shows what the kernel vLLM picked holds (repacked weights, unpacked zero points, workspaces).

Real run (GPU machine, after the shared recipe's device-install.sh; the model folder from
make-model.py, or qwen3-32b-awq as scripts/gpu_multi.py makes it):

  . /tmp/vllm-env.sh
  PYTHONPATH=.:$PYTHONPATH python3 scripts/gpu_weight_inventory.py --model /tmp/models/qwen3-32b-awq \\
      --quantization awq_marlin --dtype float16 --out $OUT/inventory.json

vLLM runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), eager, with dummy weights and a
short context; the JSON is printed last and written to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

GIB = 1024**3


def gpu_tensors(model: Any) -> list[tuple[str, Any]]:
    """(name, tensor) of every parameter and buffer of the model on the GPU, one per storage."""
    seen: set[int] = set()
    out = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.device.type == "cuda" and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            out.append((name, t))
    return out


def inventory(model: Any) -> dict[str, Any]:
    """Bytes of every distinct storage the model holds on the GPU, by kind and dtype."""
    import torch

    kinds: dict[str, dict[str, Any]] = defaultdict(lambda: {"bytes": 0, "count": 0, "dtypes": set(), "example": ""})
    for name, t in gpu_tensors(model):
        storage = t.untyped_storage()
        kind = name.rsplit(".", 1)[-1]
        k = kinds[kind]
        k["bytes"] += storage.nbytes()
        k["count"] += 1
        k["dtypes"].add(str(t.dtype).replace("torch.", ""))
        k["example"] = k["example"] or f"{name} {tuple(t.shape)}"
    total = sum(k["bytes"] for k in kinds.values())
    return {"kinds": {n: {**k, "gib": round(k["bytes"] / GIB, 4), "dtypes": sorted(k["dtypes"])}
                      for n, k in sorted(kinds.items(), key=lambda kv: -kv[1]["bytes"])},
            "total_gib": round(total / GIB, 4),
            "torch_allocated_gib": round(torch.cuda.memory_allocated() / GIB, 4)}


def load_residue(model: Any) -> dict[str, Any]:
    """Live allocations that no parameter or buffer of the model holds, by the code that made them
    (needs torch's memory history, recorded from before the engine started); those made while the
    model loaded are counted apart."""
    import torch

    held = [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for _, t in gpu_tensors(model)]
    by_site: dict[str, int] = defaultdict(int)
    during_load = 0
    for seg in torch.cuda.memory._snapshot()["segments"]:
        addr = seg["address"]
        for block in seg["blocks"]:
            start, size = addr, block["size"]
            addr += size
            if block["state"] != "active_allocated" or any(p <= start < p + n for p, n in held):
                continue
            frames = block.get("frames") or []
            if any(f["name"] in ("load_model", "process_weights_after_loading") for f in frames):
                during_load += size
            ours = [f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in frames
                    if "/torch/" not in f["filename"] and f["filename"].endswith(".py")]
            by_site[" < ".join(ours[:6]) or f"(no Python frames; {len(frames)} frames)"] += size
    top = sorted(by_site.items(), key=lambda kv: -kv[1])[:15]
    return {"not_the_model_gib": round(sum(by_site.values()) / GIB, 4), "made_while_loading_gib": round(during_load / GIB, 4),
            "sites": [{"gib": round(v / GIB, 4), "where": k} for k, v in top]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--quantization", default=None)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", default="")
    ap.add_argument("--trace-load", action="store_true",
                    help="record torch's allocations while loading and report those no tensor of the model holds")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if args.trace_load:
        import torch

        torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    from vllm import LLM, __version__

    llm = LLM(model=args.model, quantization=args.quantization, dtype=args.dtype, load_format="dummy",
              enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=4096, max_num_seqs=16)
    (found,) = llm.apply_model(inventory)[:1]
    if args.trace_load:
        (found["load_residue"],) = llm.apply_model(load_residue)[:1]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from llm_supervisor.config.profile import VllmArgs
    from llm_supervisor.vllm.fit import FitContext, weights_per_gpu
    from llm_supervisor.vllm.modelshape import ModelShape

    import torch

    gpu = torch.cuda.get_device_name(0)
    shape = ModelShape.from_config(json.loads((Path(args.model) / "config.json").read_text()))
    ctx = FitContext.of(shape, torch.cuda.mem_get_info()[1] / GIB, 1, gpu_name=gpu, vllm_version=__version__)
    vargs = VllmArgs(quantization=args.quantization, dtype=args.dtype)
    found["planner_weights_gib"] = round(weights_per_gpu(ctx, vargs).largest_gib, 4)
    found["vllm_version"], found["gpu"] = __version__, gpu
    text = json.dumps(found, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
