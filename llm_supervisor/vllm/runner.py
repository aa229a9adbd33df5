"""Which model runner vLLM runs a model with, and what that means for CPU weight offload. Pure.

From vLLM 0.22 the V2 model runner is the default for dense models ("Using V2 Model Runner" in the
log). Until 0.28 that runner never installs vLLM's weight offloader: `--cpu-offload-gb` is
accepted, listed in "non-default args", and ignored, so every weight is loaded on the GPU. Read
from vLLM 0.26.0's and 0.27.0's source (only the V1 runner calls `set_offloader`; the V2 runner
does from 0.28.0), and seen on an H200 with 0.26.0: Qwen3-32B with `--cpu-offload-gb 42` printed
"Model loading took 61.03 GiB", then "Available KV cache memory: -41.48 GiB" and "No available
memory for the cache blocks". The V1 runner, chosen with VLLM_USE_V2_MODEL_RUNNER=0, offloads
and says so: "Total CPU offloaded parameters: 42.44" (GiB, printed before "Model loading took").

The runner also decides the memory accounting before 0.30: the V1 runner estimates the CUDA
graphs with a throwaway capture and takes that out of the KV budget (default since 0.21); the V2
runner's estimate is 0 until 0.30. On the same H200 with the V1 runner: "Estimated CUDA graph
memory: 1.09 GiB total", then "Available KV cache memory: -0.86 GiB" = 21.39 budget − 18.59
weights − 2.23 activation − 0.34 non-torch − 1.09 graphs.
"""

from __future__ import annotations

from collections.abc import Mapping

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.vllm import memory
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.vllm.memory import parse_version

RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
V2_DEFAULT_FROM = (0, 22, 0)   # the V2 model runner is the default for dense models
V2_OFFLOAD_FROM = (0, 28, 0)   # ... and installs the weight offloader


def _v2_is_default(vllm_version: str | None) -> bool:
    """This vLLM (None: not known, planned as the newest) runs dense models on the V2 runner by default."""
    v = parse_version(vllm_version)
    return v is None or v >= V2_DEFAULT_FROM


def v2_ignores_offload(vllm_version: str | None) -> bool:
    """Whether this vLLM's default runner ignores --cpu-offload-gb (None: not known)."""
    v = parse_version(vllm_version)
    return v is not None and V2_DEFAULT_FROM <= v < V2_OFFLOAD_FROM


def offload_env(vllm_version: str | None, cpu_offload_gb: float | None, profile_env: Mapping[str, str]) -> dict[str, str]:
    """The engine environment that makes `--cpu-offload-gb` take effect: the V1 runner on a vLLM
    whose V2 runner ignores it, or whose version is not known (the V1 runner offloads on every
    version). Nothing when the profile chooses the runner itself."""
    if not cpu_offload_gb or RUNNER_ENV in profile_env:
        return {}
    v = parse_version(vllm_version)
    if v is not None and not v2_ignores_offload(vllm_version):
        return {}
    return {RUNNER_ENV: "0"}


def v1_runner(vllm_version: str | None, cpu_offload_gb: float | None, runner_env: str | None = None) -> bool:
    """Whether the engine runs on vLLM's V1 model runner: before 0.22 always; on 0.22–0.27 when it
    offloads (offload_env chooses it); on any version when the profile's env says
    VLLM_USE_V2_MODEL_RUNNER=0 (runner_env: that variable's value in the profile, None when unset).
    Unknown versions: when it offloads (offload_env chooses the V1 runner then)."""
    if runner_env is not None:
        return runner_env.strip().lower() in ("0", "false")
    v = parse_version(vllm_version)
    if v is None:
        return bool(cpu_offload_gb)
    return v < V2_DEFAULT_FROM or (bool(cpu_offload_gb) and v2_ignores_offload(vllm_version))


def v1_sampler_warmup(vllm_version: str | None, cpu_offload_gb: float | None, runner_env: str | None = None) -> bool:
    """Whether the launch's profiling run warms the V1 runner's whole sampler (memory's V1 terms):
    the V1 runner where V2 is the default (0.22 and newer, or a version not known), as read in
    0.26's source; older versions' V1 runner is planned with the constants measured on V2."""
    return _v2_is_default(vllm_version) and v1_runner(vllm_version, cpu_offload_gb, runner_env)


def _get(facts: StartupFacts | Mapping[str, object], name: str) -> object:
    return facts.get(name) if isinstance(facts, Mapping) else getattr(facts, name, None)


def v1_seen(facts: StartupFacts | Mapping[str, object]) -> bool:
    """The log shows the V1 runner at work: it offloaded weights, or printed its CUDA-graph
    estimate without naming the V2 runner (0.22-0.33 name it when it runs). `facts`: a
    StartupFacts or a mapping with its names."""
    return bool(_get(facts, "cpu_offloaded_gib")) or (
        _get(facts, "cuda_graph_estimate_gib") is not None and _get(facts, "model_runner") != "v2")


def v1_sampler_seen(facts: StartupFacts | Mapping[str, object]) -> bool:
    """The start the log shows warmed the V1 runner's whole sampler (v1_sampler_warmup's rule)."""
    version = _get(facts, "vllm_version")
    return v1_seen(facts) and _v2_is_default(version if isinstance(version, str) else None)


def accounting(vllm_version: str | None, args: VllmArgs, runner_env: str | None,
               v1_seen: bool = False) -> memory.Accounting:
    """How this vLLM (None: the newest supported) sizes the KV cache for a launch with `args`, on
    the model runner that launch runs on; v1_seen: its log already showed the V1 runner at work."""
    return memory.accounting_for(vllm_version, args.extra_args,
                                 v1_seen or v1_runner(vllm_version, args.cpu_offload_gb, runner_env))


def offload_ignored(facts: StartupFacts, cpu_offload_gb: float | None) -> bool:
    """The log shows vLLM loaded the weights on its V2 runner without offloading although
    `--cpu-offload-gb` asked for it."""
    if not cpu_offload_gb or facts.model_runner != "v2" or facts.model_weights_gib is None:
        return False
    if facts.cpu_offloaded_gib:
        return False
    v = parse_version(facts.vllm_version)
    return v is None or v < V2_OFFLOAD_FROM


def offload_ignored_reason(facts: StartupFacts, cpu_offload_gb: float) -> str:
    version = f"vLLM {facts.vllm_version}" if facts.vllm_version else "this vLLM"
    return (f"{version} ignored --cpu-offload-gb {cpu_offload_gb:g}: its V2 model runner loads every weight on the "
            f"GPU (\"Model loading took {facts.model_weights_gib:g} GiB\") and offloads only from vLLM 0.28; no "
            f"argument change fixes that: run it with {RUNNER_ENV}=0 (the supervisor sets that whenever it offloads, "
            "unless the profile's env sets the variable) or use vLLM 0.28 or newer")
