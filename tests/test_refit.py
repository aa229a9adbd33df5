"""Planner-aware refinements of recovery decisions (refit.py)."""

from __future__ import annotations

from pathlib import Path

from llm_supervisor.vllm import planner
from llm_supervisor.config.profile import load_profile
from llm_supervisor.vllm.recovery import Relaunch
from llm_supervisor.vllm.refit import refit_context

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
TOTAL_4090D_GIB = 24564 / 1024


def _decision(profile, **update):
    args = profile.vllm.model_copy(update=update)
    return Relaunch(args, 0.0, "raised utilization", {"gpu_memory_utilization": [0.33, update["gpu_memory_utilization"]]})


def test_raising_utilization_gives_back_the_context_an_earlier_cut_took() -> None:
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    decision = _decision(profile, gpu_memory_utilization=0.4, max_model_len=4096)
    out = refit_context(decision, profile, None, gpu_total_gib=TOTAL_4090D_GIB, gpu_count=1,
                        gpu_name="NVIDIA GeForce RTX 4090 D", hf_home=None)
    expected = planner.predict_profile(profile, TOTAL_4090D_GIB, 1, None, args=decision.args.model_copy(
        update={"max_model_len": 40960}), gpu_name="NVIDIA GeForce RTX 4090 D").max_model_len
    assert 4096 < expected < 40960  # 0.4 of a 24 GB card holds more than 4K, less than the full context
    assert out.args.max_model_len == expected
    assert out.change == {"gpu_memory_utilization": [0.33, 0.4], "max_model_len": [4096, expected]}
    assert f"max_model_len 4,096 → {expected:,}" in out.reason and "asks for 40,960" in out.reason


def test_context_is_left_alone_when_the_profile_lets_vllm_decide_or_recovery_chose_it() -> None:
    profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=["recovery.plan_first_launch=false"])
    decision = _decision(profile, gpu_memory_utilization=0.4, max_model_len=4096)
    kwargs = dict(gpu_total_gib=TOTAL_4090D_GIB, gpu_count=1, gpu_name=None, hf_home=None)
    assert refit_context(decision, profile, None, **kwargs) is decision
    planned = load_profile("4090d-qwen3-4b", PROFILES)
    chosen = Relaunch(decision.args, 0.0, "cut", {"max_model_len": [40960, 4096]})
    assert refit_context(chosen, planned, None, **kwargs) is chosen
