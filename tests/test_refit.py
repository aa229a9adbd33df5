"""The recovery policy with the plan's fit context: the context is refitted to a new budget with
the same memory model the plan used, and nothing else decides it."""

from __future__ import annotations

from pathlib import Path

from llm_supervisor.config.loader import load_profile
from llm_supervisor.planning.launch import fit_context
from llm_supervisor.vllm.failures import Failure, FailureKind
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.vllm.recovery import Relaunch, decide

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
TOTAL_4090D_MIB = 24564
GPU = "NVIDIA GeForce RTX 4090 D"
NO_KV = Failure(FailureKind.NO_KV_CACHE_MEMORY, "ValueError: No available memory for the cache blocks. …", {})
# util 0.33 of a 24 GB card: the weights (7.56 GiB) fit, nothing is left for the KV cache
FACTS = StartupFacts(model_weights_gib=7.56, available_kv_cache_gib=-0.1)


def _decide(profile, **update):
    args = profile.vllm.model_copy(update=update)
    fit = fit_context(profile, TOTAL_4090D_MIB / 1024, 1, gpu_name=GPU, vllm_version="0.26.0")
    return fit, decide(NO_KV, args, profile, [], FACTS, gpu_total_mib=TOTAL_4090D_MIB, fit=fit)


def test_raising_utilization_gives_back_the_context_an_earlier_cut_took() -> None:
    profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=["recovery.min_gpu_memory_utilization=0.3"])
    fit, out = _decide(profile, gpu_memory_utilization=0.33, max_model_len=4096)
    assert isinstance(out, Relaunch)
    new_util = out.args.gpu_memory_utilization
    expected = fit.predict(out.args.model_copy(update={"max_model_len": 40960})).max_model_len
    assert 0.33 < new_util and 4096 < expected < 40960  # more than 4K fits, less than the full context
    assert out.args.max_model_len == expected
    assert out.change == {"gpu_memory_utilization": [0.33, new_util], "max_model_len": [4096, expected]}
    assert f"max_model_len 4,096 → {expected:,}" in out.reason and "asks for 40,960" in out.reason


def test_context_is_left_alone_when_the_profile_lets_vllm_decide() -> None:
    profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=["recovery.plan_first_launch=false",
                                                                  "recovery.min_gpu_memory_utilization=0.3"])
    _, out = _decide(profile, gpu_memory_utilization=0.33, max_model_len=4096)
    assert isinstance(out, Relaunch)
    assert set(out.change) == {"gpu_memory_utilization"} and out.args.max_model_len == 4096


def test_context_recovery_chose_is_not_refitted() -> None:
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    kv = Failure(FailureKind.KV_CACHE_TOO_SMALL, "ValueError: To serve at least one request …",
                 {"needed_gib": 5.62, "available_gib": 0.92, "max_model_len": 40960, "estimated_max_model_len": 6688})
    # vLLM 0.26's numbers (on 0.34 this error, raised before warm-up, would leave no room after it)
    fit = fit_context(profile, TOTAL_4090D_MIB / 1024, 1, gpu_name=GPU, vllm_version="0.26.0")
    args = profile.vllm.model_copy(update={"gpu_memory_utilization": 0.35})
    out = decide(kv, args, profile, [], StartupFacts(compile_cached=False), gpu_total_mib=TOTAL_4090D_MIB, fit=fit)
    assert isinstance(out, Relaunch)
    assert out.change == {"max_model_len": [40960, 6688]}
