"""The engine's command line and environment, built from a profile. Pure.

Secrets never go on the engine's argv (anyone can read it with `ps`): the API key travels in
`VLLM_API_KEY`, which `vllm serve` reads when `--api-key` is absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llm_supervisor.config.profile import Profile, VllmArgs
from llm_supervisor.config.redaction import REDACTED, SECRET_FLAGS, Redactor, is_secret_name  # noqa: F401 - re-exported

_CC_FLAGS = ("--compilation-config", "-cc")

# Variables that belong to the daemon's own service manager, never to the engine.
DAEMON_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def engine_argv(profile: Profile, args: VllmArgs, command: list[str]) -> list[str]:
    """`vllm serve MODEL --flag value …` for these arguments (the profile's, or recovery's)."""
    argv = [*command, profile.model.id]
    argv += ["--host", args.host, "--port", str(args.port)]
    argv += ["--served-model-name", profile.served_name]
    if profile.model.revision:
        argv += ["--revision", profile.model.revision]
    if profile.model.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += ["--gpu-memory-utilization", f"{args.gpu_memory_utilization:g}"]
    for name in ("max_model_len", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                 "max_num_seqs", "max_num_batched_tokens", "block_size", "quantization", "load_format"):
        value = getattr(args, name)
        default = VllmArgs.model_fields[name].default
        if value is not None and not (name.endswith("parallel_size") and value == default):
            argv += [_flag(name), str(value)]
    if args.dtype != "auto":
        argv += ["--dtype", args.dtype]
    if args.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", args.kv_cache_dtype]
    if args.enforce_eager:
        argv.append("--enforce-eager")
    if args.disable_custom_all_reduce:
        argv.append("--disable-custom-all-reduce")
    if args.cpu_offload_gb:
        argv += ["--cpu-offload-gb", f"{args.cpu_offload_gb:g}"]
    if args.swap_space is not None:
        argv += ["--swap-space", f"{args.swap_space:g}"]
    if args.enable_prefix_caching is True:
        argv.append("--enable-prefix-caching")
    elif args.enable_prefix_caching is False:
        argv.append("--no-enable-prefix-caching")
    argv += list(args.extra_args)
    return argv


def redact_argv(argv: list[str]) -> list[str]:
    """Mask the value of any secret-looking flag (`--api-key X`, `--hf-token=X`, `--db-password X`);
    config/redaction.py has the rules (a Redactor with the known values masks them too)."""
    return Redactor().argv(argv)


def is_secret_env(name: str) -> bool:
    return is_secret_name(name)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    return Redactor().env(env)


def engine_env(profile: Profile, args: VllmArgs, base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The engine's full environment: the daemon's, less its service-manager variables, plus
    the profile's `env`, `extra` (placement, caches), and the API key."""
    env = {k: v for k, v in base.items() if k not in DAEMON_ONLY_ENV and not k.startswith("LLM_SUPERVISOR_API_")
           and k != "LLM_SUPERVISOR_ENGINE_API_KEY"}  # the engine gets its key as VLLM_API_KEY only
    env.update(profile.env)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if args.api_key is not None:
        env["VLLM_API_KEY"] = args.api_key.get_secret_value()
    return env


def keeps_dead_engine_serving(env: Mapping[str, str]) -> bool:
    """`VLLM_KEEP_ALIVE_ON_ENGINE_DEATH` (read by vLLM as an integer): its API server stays up,
    answering errors, after its engine died, for someone to look at it."""
    try:
        return int(env.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "0") or "0") != 0
    except ValueError:
        return False


def changed_env(full: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """What the supervisor adds or changes relative to its own environment (for `plan`)."""
    return {k: v for k, v in full.items() if base.get(k) != v}


def compilation_config(extra_args: Sequence[str]) -> tuple[int, int, Any] | None:
    """(index of the flag, index of its value, the parsed value) of the last --compilation-config."""
    found = None
    for i, arg in enumerate(extra_args):
        for flag in _CC_FLAGS:
            if arg == flag and i + 1 < len(extra_args):
                found = (i, i + 1, extra_args[i + 1])
            elif arg.startswith(flag + "="):
                found = (i, i, arg[len(flag) + 1:])
    if found is None:
        return None
    i, j, raw = found
    try:
        return i, j, json.loads(raw)
    except ValueError:
        return i, j, raw


def with_compilation_config(extra_args: Sequence[str], changes: Mapping[str, Any]) -> list[str] | None:
    """extra_args with `changes` set in the JSON --compilation-config (added when there is none);
    None when the one there is not a JSON object (an optimization level, a file): changing it is
    the operator's call."""
    cc = compilation_config(extra_args)
    if cc is None:
        return [*extra_args, "--compilation-config", json.dumps(dict(changes))]
    i, j, value = cc
    if not isinstance(value, dict):
        return None
    text = json.dumps({**value, **changes})
    out = list(extra_args)
    if i == j:
        out[i] = f"{out[i].split('=', 1)[0]}={text}"
    else:
        out[j] = text
    return out
