"""Planner-aware refinements of a recovery decision. Pure apart from reading config.json.

recovery.decide works from what vLLM printed; these two adjustments add what the planner knows
about the launch that follows, so that it is the last one:

* a context cut that vLLM estimated during a warm start is shortened by what a cold compile
  costs more (the relaunch always compiles cold: vLLM keys its compile cache by max_model_len);
* when recovery moves utilization but not the context, the context is fitted to the new budget,
  as the planner fits the first launch.
"""

from __future__ import annotations

import math

from llm_supervisor.vllm import modelshape as modelinfo, planner
from llm_supervisor.errors import SupervisorError
from llm_supervisor.vllm.failures import Failure, FailureKind
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.config.profile import Profile
from llm_supervisor.vllm.recovery import Relaunch


def refine(failure: Failure, decision: Relaunch, facts: StartupFacts, profile: Profile,
           calibration: planner.Calibration | None, *, gpu_total_gib: float, gpu_count: int,
           gpu_name: str | None, hf_home: str | None) -> Relaunch:
    """Both adjustments, in order."""
    decision = shorten_for_cold_compile(failure, decision, facts, profile, gpu_total_gib=gpu_total_gib,
                                        gpu_name=gpu_name, hf_home=hf_home)
    return refit_context(decision, profile, calibration, gpu_total_gib=gpu_total_gib, gpu_count=gpu_count,
                         gpu_name=gpu_name, hf_home=hf_home)


def shorten_for_cold_compile(failure: Failure, decision: Relaunch, facts: StartupFacts, profile: Profile, *,
                             gpu_total_gib: float, gpu_name: str | None, hf_home: str | None) -> Relaunch:
    """Shorten a context cut that vLLM estimated during a warm start.

    vLLM keys its torch.compile cache by max_model_len (among others), so the relaunch with a
    shorter context compiles cold, and a cold compile's profiling run peaks higher (vLLM 0.26,
    H100, Qwen3-4B: 0.80 GiB against 0.62 GiB warm). An estimate printed by a warm start is then
    too long by that difference and the relaunch fails again (seen on an H100:
    tests/fixtures/vllm-0.26.0/kv-cache-too-small-recovered.log)."""
    if (failure.kind != FailureKind.KV_CACHE_TOO_SMALL or "max_model_len" not in decision.change
            or not facts.compile_cached or decision.args.enforce_eager or not decision.args.max_model_len):
        return decision
    args = decision.args
    try:
        shape = modelinfo.load_shape(profile.model.id, hf_home)
    except (SupervisorError, LookupError, OSError, ValueError):
        return decision
    tokens, seqs = planner.default_batch_limits(gpu_total_gib, gpu_name, facts.vllm_version)
    warm = planner.estimate_activation_gib(shape, args.tensor_parallel_size, args.max_num_batched_tokens or tokens,
                                           args.max_num_seqs or seqs, cold=False)
    extra_gib = warm * (planner.COLD_ACTIVATION_FACTOR - 1)
    per_token = shape.kv_bytes_per_token(args.tensor_parallel_size, args.kv_cache_dtype, args.dtype) / 1024**3
    bs = args.effective_block_size
    new_len = (args.max_model_len - math.ceil(extra_gib / per_token)) // bs * bs
    if new_len < profile.recovery.min_max_model_len:
        return decision
    before = decision.change["max_model_len"][0]
    reason = (f"{decision.reason}; then → {new_len}: that estimate came from a warm start, and the relaunch "
              f"compiles cold (vLLM's compile cache is keyed by max_model_len), which takes about "
              f"{extra_gib:.2f} GiB more activation memory")
    return Relaunch(args.model_copy(update={"max_model_len": new_len}), decision.delay_s, reason,
                    {**decision.change, "max_model_len": [before, new_len]})



def refit_context(decision: Relaunch, profile: Profile, calibration: planner.Calibration | None, *,
                  gpu_total_gib: float, gpu_count: int, gpu_name: str | None, hf_home: str | None) -> Relaunch:
    """When recovery moves utilization but not the context, let the planner fit the context to the
    new budget, as it did for the first launch: after a raise, give back context an earlier cut
    took (up to what the profile asks); after a cut, avoid a launch that cannot hold it. Only
    when the profile lets the planner choose (recovery.plan_first_launch)."""
    if (not profile.recovery.plan_first_launch or "max_model_len" in decision.change
            or "gpu_memory_utilization" not in decision.change or not decision.args.max_model_len):
        return decision
    current = decision.args.max_model_len
    asked = profile.vllm.max_model_len
    try:
        prediction = planner.predict_profile(
            profile, gpu_total_gib, gpu_count, calibration,
            args=decision.args.model_copy(update={"max_model_len": asked}), gpu_name=gpu_name, hf_home=hf_home)
    except (SupervisorError, LookupError, OSError, ValueError):
        return decision
    new = prediction.max_model_len
    if not new or new == current:
        return decision
    util = decision.args.gpu_memory_utilization
    reason = (f"{decision.reason}; max_model_len {current:,} → {new:,}: what the planner predicts "
              f"utilization {util:g} holds" + (f" (the profile asks for {asked:,})" if asked else ""))
    return Relaunch(decision.args.model_copy(update={"max_model_len": new}), decision.delay_s, reason,
                    {**decision.change, "max_model_len": [current, new]})
