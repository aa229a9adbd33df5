"""`vllm serve` command-line arguments: the flags the supervisor passes and the common ones users
add, parsed the way vLLM's FlexibleArgumentParser does (unknown flag → usage error, exit 2).

Options are declared in vLLM's group order (frontend, model, load, parallel, cache, scheduler),
so "non-default args: {…}" lists them in the order real vLLM does.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
SECRET_DESTS = ("api_key",)
QUANTIZATION_METHODS = [
    "awq", "deepspeedfp", "tpu_int8", "fp8", "ptpc_fp8", "fbgemm_fp8", "modelopt", "modelopt_fp4",
    "modelopt_mxfp8", "bitblas", "gguf", "gptq_marlin_24", "gptq_marlin", "gptq_bitblas", "awq_marlin", "gptq",
    "compressed-tensors", "bitsandbytes", "hqq", "experts_int8", "ipex", "quark", "moe_wna16", "torchao",
    "auto-round", "rtn", "inc", "mxfp4", "petit_nvfp4", "fp_quant", "marlin"]


def human_readable_int(value: str) -> int:
    """vLLM's parser for --max-model-len and friends: 1k = 1000, 1K = 1024, auto/-1 = auto-fit."""
    text = str(value).strip()
    if text.lower() == "auto":
        return -1
    m = re.fullmatch(r"(-?\d+(?:\.\d+)?)([kKmMgG]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid human_readable_int value: {value!r}")
    number, suffix = float(m.group(1)), m.group(2)
    scale = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "K": 1024, "M": 1024**2, "G": 1024**3}[suffix]
    if suffix and number != int(number) and suffix.isupper():
        raise argparse.ArgumentTypeError(f"invalid human_readable_int value: {value!r}")
    return int(number * scale)


class VllmArgumentParser(argparse.ArgumentParser):
    """argparse with vLLM's `--config FILE.yaml` expansion (file values first, CLI wins)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        if "--config" in argv or any(a.startswith("--config=") for a in argv):
            argv = _expand_config(argv, self)
        return super().parse_args(argv, namespace)


def _expand_config(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    path = None
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--config":
            if i + 1 >= len(argv):
                parser.error("argument --config: expected one argument")
            path = argv[i + 1]
            skip = True
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            continue
        out.append(arg)
    if path is None:
        return out
    if not path.endswith((".yaml", ".yml")):
        parser.error(f"Config file must be of a yaml/yml type. {path} supplied")
    try:
        import yaml

        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read config file {path}: {exc}")
    if not isinstance(data, dict):
        parser.error(f"config file {path} must hold a mapping of option names to values")
    extra: list[str] = []
    for key, value in data.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            extra.append(flag)
        elif value is False:
            extra.append("--no-" + flag[2:])
        elif isinstance(value, list):
            extra += [flag, *(str(v) for v in value)]
        else:
            extra += [flag, str(value)]
    # the positional model (if any) stays first; file values come before CLI flags
    head = out[:1] if out and not out[0].startswith("-") else []
    return head + extra + out[len(head):]


def build_parser(default_util: float | None = 0.92, extensible: bool = False) -> argparse.ArgumentParser:
    """vLLM's `serve` parser; `extensible`: the version has 0.34's --[no-]enable-extensible-kv-cache
    (whose default utilization is None: 1.0 with the extensible KV cache, 0.92 without)."""
    p = VllmArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] [options]",
                           description="Launch a local OpenAI-compatible API server to serve LLM completions "
                                       "via HTTP (simulated: no GPU is used).")
    b = argparse.BooleanOptionalAction
    p.add_argument("model_tag", nargs="?", default=None, help="The model tag to serve")
    # frontend
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--uvicorn-log-level", default="info",
                   choices=["critical", "debug", "error", "info", "trace", "warning"])
    p.add_argument("--disable-uvicorn-access-log", action=b, default=False)
    p.add_argument("--api-key", nargs="+", default=None)
    p.add_argument("--chat-template", default=None)
    p.add_argument("--response-role", default="assistant")
    p.add_argument("--enable-auto-tool-choice", action=b, default=False)
    p.add_argument("--tool-call-parser", default=None)
    p.add_argument("--enable-log-requests", action=b, default=False)
    p.add_argument("--disable-log-requests", action=b, default=False)
    p.add_argument("--max-log-len", type=int, default=None)
    p.add_argument("--disable-fastapi-docs", action=b, default=False)
    p.add_argument("--enable-server-load-tracking", action=b, default=False)
    p.add_argument("--shutdown-timeout", type=int, default=0)
    # model
    p.add_argument("--model", default=None)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--trust-remote-code", action=b, default=False)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float", "float16", "float32", "half"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--revision", default=None)
    p.add_argument("--code-revision", default=None)
    p.add_argument("--tokenizer-revision", default=None)
    p.add_argument("--max-model-len", type=human_readable_int, default=None)
    p.add_argument("--quantization", "-q", default=None, choices=QUANTIZATION_METHODS)
    p.add_argument("--enforce-eager", action=b, default=False)
    p.add_argument("--max-logprobs", type=int, default=20)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--generation-config", default="auto")
    p.add_argument("--hf-overrides", default=None)
    p.add_argument("--reasoning-parser", default=None)
    # load
    p.add_argument("--load-format", default="auto")
    p.add_argument("--download-dir", default=None)
    # parallel
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--distributed-executor-backend", default=None, choices=["mp", "ray", "uni", "external_launcher"])
    p.add_argument("--disable-custom-all-reduce", action=b, default=False)
    p.add_argument("--enable-expert-parallel", action=b, default=False)
    # cache
    p.add_argument("--block-size", type=int, default=None, choices=[1, 8, 16, 32, 64, 128, 256])
    p.add_argument("--gpu-memory-utilization", type=float, default=default_util)
    p.add_argument("--kv-cache-memory-bytes", type=human_readable_int, default=None)
    if extensible:
        p.add_argument("--enable-extensible-kv-cache", action=b, default=None)
    p.add_argument("--swap-space", type=float, default=4)
    p.add_argument("--kv-cache-dtype", default="auto",
                   choices=["auto", "bfloat16", "fp8", "fp8_ds_mla", "fp8_e4m3", "fp8_e5m2", "fp8_inc"])
    p.add_argument("--num-gpu-blocks-override", type=int, default=None)
    p.add_argument("--enable-prefix-caching", action=b, default=None)
    p.add_argument("--cpu-offload-gb", type=float, default=0)
    # scheduler
    p.add_argument("--max-num-batched-tokens", type=human_readable_int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-partial-prefills", type=int, default=1)
    p.add_argument("--enable-chunked-prefill", action=b, default=None)
    p.add_argument("--async-scheduling", action=b, default=None)
    p.add_argument("--cudagraph-capture-sizes", nargs="+", type=int, default=None)
    p.add_argument("--max-cudagraph-capture-size", type=int, default=None)
    # compilation and the rest
    p.add_argument("--compilation-config", "-O", default=None)
    p.add_argument("--speculative-config", default=None)
    p.add_argument("--limit-mm-per-prompt", default=None)
    p.add_argument("--disable-log-stats", action=b, default=False)
    return p


def parse(argv: list[str], default_util: float | None = 0.92,
          extensible: bool = False) -> tuple[argparse.Namespace, dict[str, Any]]:
    """Parse `serve` arguments; returns (namespace, non-default args in vLLM's print order)."""
    parser = build_parser(default_util, extensible)
    ns = parser.parse_args(argv)
    if not extensible:
        ns.enable_extensible_kv_cache = False
    model = ns.model_tag or ns.model or DEFAULT_MODEL
    ns.model = model
    defaults = vars(build_parser(default_util, extensible).parse_args([]))
    if not extensible:
        defaults["enable_extensible_kv_cache"] = False
    shown: dict[str, Any] = {}
    if ns.model_tag is not None:
        shown["model_tag"] = ns.model_tag
    for key, value in vars(ns).items():
        if key in ("model_tag", "model"):
            continue
        if value != defaults.get(key):
            if key in SECRET_DESTS:
                value = ["***"] * len(value) if isinstance(value, list) else "***"
            shown[key] = value
    if ns.model_tag is not None or ns.model != DEFAULT_MODEL:
        shown["model"] = model
    return ns, _reorder_model(shown)


def _reorder_model(shown: dict[str, Any]) -> dict[str, Any]:
    """vLLM lists `model` after the frontend options and before the model group."""
    if "model" not in shown:
        return shown
    model = shown.pop("model")
    frontend = ("model_tag", "host", "port", "uvicorn_log_level", "disable_uvicorn_access_log", "api_key",
                "chat_template", "response_role", "enable_auto_tool_choice", "tool_call_parser",
                "enable_log_requests", "disable_log_requests", "max_log_len", "disable_fastapi_docs",
                "enable_server_load_tracking", "shutdown_timeout")
    out: dict[str, Any] = {}
    placed = False
    for key, value in shown.items():
        if not placed and key not in frontend:
            out["model"] = model
            placed = True
        out[key] = value
    if not placed:
        out["model"] = model
    return out


def env_api_key() -> str | None:
    return os.environ.get("VLLM_API_KEY") or None
