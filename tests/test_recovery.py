"""The recovery policy: computed numbers, bounds, targets, give-ups, backoff and flapping."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.config.profile import Hardware, Model, Profile, Recovery, Target, VllmArgs
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm.fit import FitContext
from llm_supervisor.vllm.recovery import Attempt, GiveUp, Relaunch, backoff_delay, decide, failure_streak

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"
H100_MIB = 81080  # NVML's total for the H100 of the fixtures (79.18 GiB)


def profile(recovery: dict[str, Any] | None = None, target: dict[str, Any] | None = None,
            gpu_gib: float = 79.18, **vllm: Any) -> Profile:
    rec = {"min_max_model_len": 2048, "min_gpu_memory_utilization": 0.05, "max_gpu_memory_utilization": 0.95}
    rec.update(recovery or {})
    return Profile(
        name="test",
        hardware=Hardware(gpu_name="H100", gpu_count=1, gpu_memory_gib=gpu_gib),
        model=Model(id="Qwen/Qwen3-4B"),
        vllm=VllmArgs(**vllm),
        recovery=Recovery(**rec),
        target=Target(**target) if target else None,
    )


def kv_failure(estimate: bool = True) -> Failure:
    values = {"needed_gib": 5.62, "available_gib": 0.92, "max_model_len": 40960}
    if estimate:
        values["estimated_max_model_len"] = 6688
    return Failure(FailureKind.KV_CACHE_TOO_SMALL, "ValueError: To serve at least one request …", values)


def relaunch(decision: Any) -> Relaunch:
    assert isinstance(decision, Relaunch), getattr(decision, "reason", decision)
    return decision


def give_up(decision: Any) -> GiveUp:
    assert isinstance(decision, GiveUp), decision
    return decision


# ---------------------------------------------------------------- kv_cache_too_small


def test_real_fixture_recovers_in_one_relaunch() -> None:
    classifier = FailureClassifier()
    facts = parse_log_file(FIXTURES / "kv-cache-too-small.log", sink=classifier).facts
    failure = classifier.classify(1, False)
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile(gpu_memory_utilization=0.12, max_model_len=40960)
    r = relaunch(decide(failure, args, prof, [], facts, gpu_total_mib=H100_MIB))
    assert r.args.max_model_len == 6688           # vLLM's own estimate, already a multiple of 16
    assert r.args.gpu_memory_utilization == 0.12  # unchanged
    assert r.change == {"max_model_len": [40960, 6688]}
    assert r.delay_s == 0.0
    for number in ("40960", "6688", "5.62", "0.92"):
        assert number in r.reason


def test_estimate_rounded_down_to_block_size() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960, block_size=128)
    r = relaunch(decide(kv_failure(), args, profile(), [], None))
    assert r.args.max_model_len == 6656  # 6688 // 128 × 128


def test_without_estimate_uses_the_ratio_safely() -> None:
    """40960 × 0.92/5.62 = 6705 → 6704 would overshoot the real fit (6688, the fixture's estimate):
    the printed GiB are rounded to 0.01, so the policy takes the worst case of that rounding."""
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    r = relaunch(decide(kv_failure(estimate=False), args, profile(), [], None))
    # 40960 × (0.92 − 0.005) / (5.62 + 0.005) = 6662.8 → 6656 (block 16)
    assert r.args.max_model_len == 6656
    assert r.args.max_model_len <= 6688               # fits, unlike the naive 6704
    assert r.args.max_model_len >= 0.95 * 6688        # and keeps ≥ 95% of the largest that fits


def test_clamped_to_max_bound() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    r = relaunch(decide(kv_failure(), args, profile({"max_max_model_len": 4096}), [], None))
    assert r.args.max_model_len == 4096


def test_below_minimum_raises_utilization_when_it_can() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile({"min_max_model_len": 8192})
    r = relaunch(decide(kv_failure(), args, prof, [], None, gpu_free_mib=80000, gpu_total_mib=H100_MIB))
    # 8192 tokens need 8192 × 5.625/40960 = 1.125 GiB; 0.915 available → +0.21 GiB (+0.01 margin) → 0.14
    assert r.args.gpu_memory_utilization == 0.14
    # at 0.14: 0.915 + 0.02 × 79.18 GiB = 2.4986 GiB / (5.625/40960 GiB per token) = 18194 → 18192
    assert r.args.max_model_len == 18192
    assert r.change == {"gpu_memory_utilization": [0.12, 0.14], "max_model_len": [40960, 18192]}


def test_below_minimum_gives_up_when_bounds_forbid() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile({"min_max_model_len": 8192, "max_gpu_memory_utilization": 0.13})
    g = give_up(decide(kv_failure(), args, prof, [], None, gpu_total_mib=H100_MIB))
    assert "8192" in g.reason and "0.14" in g.reason and "max_gpu_memory_utilization" in g.reason


def test_below_minimum_gives_up_when_memory_is_not_free() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile({"min_max_model_len": 8192})
    g = give_up(decide(kv_failure(), args, prof, [], None, gpu_free_mib=10000, gpu_total_mib=H100_MIB))
    assert "9.77 GiB" in g.reason and "free" in g.reason


def test_target_fits_concurrency() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile(target={"min_concurrency": 2, "context": 2048})
    r = relaunch(decide(kv_failure(), args, prof, [], None))
    # the pool holds ~6688 tokens; 2 requests each of ≤ 3344 tokens fit together
    assert r.args.max_model_len == 3344
    assert "2.00× concurrency" in r.reason


def test_target_raises_utilization_when_allowed() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile(target={"min_concurrency": 8, "context": 4096})
    r = relaunch(decide(kv_failure(), args, prof, [], None, gpu_total_mib=H100_MIB))
    # 8 × 4096 tokens × 5.625/40960 GiB = 4.5 GiB; 0.915 available → utilization 0.12 + 3.585/79.18 + 0.01 → 0.18
    assert r.args.gpu_memory_utilization == 0.18
    assert r.args.max_model_len == 4096


def test_target_that_cannot_be_met_says_so() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    prof = profile({"max_gpu_memory_utilization": 0.15}, target={"min_concurrency": 8, "context": 4096})
    r = relaunch(decide(kv_failure(), args, prof, [], None, gpu_total_mib=H100_MIB))
    assert r.args.max_model_len == 4096
    assert r.args.gpu_memory_utilization == 0.12
    assert "cannot be met" in r.reason and "1.63 requests of 4096" in r.reason and "0.18" in r.reason


def test_never_repeats_a_failed_length() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    failed = Attempt(at=1.0, args=VllmArgs(gpu_memory_utilization=0.12, max_model_len=6688),
                     failure=FailureKind.KV_CACHE_TOO_SMALL)
    current = Attempt(at=2.0, args=args, failure=FailureKind.KV_CACHE_TOO_SMALL)
    r = relaunch(decide(kv_failure(), args, profile(), [failed, current], None))
    assert r.args.max_model_len == 6672


def test_v0_tokens_variant() -> None:
    failure = Failure(FailureKind.KV_CACHE_TOO_SMALL, "…",
                      {"max_model_len": 32768, "kv_cache_tokens": 21600, "estimated_max_model_len": 21600})
    r = relaunch(decide(failure, VllmArgs(max_model_len=32768), profile(), [], None))
    assert r.args.max_model_len == 21600


# ---------------------------------------------------------------- insufficient_free_memory


def free_failure() -> Failure:
    return Failure(FailureKind.INSUFFICIENT_FREE_MEMORY, "ValueError: Free memory on device cuda:0 …",
                   {"free_gib": 9.49, "total_gib": 79.18, "requested_utilization": 0.3, "requested_gib": 23.75})


def test_free_memory_sets_utilization_with_margin() -> None:
    args = VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000)
    r = relaunch(decide(free_failure(), args, profile(), [], None))
    # margin max(0.5 GiB, 2% of 79.18 = 1.58 GiB) + 1.0 GiB for the CUDA graphs vLLM 0.26 takes above
        # the budget; (9.49 − 2.58)/79.18 = 0.0873 → 0.08
    assert r.args.gpu_memory_utilization == 0.08
    assert r.change == {"gpu_memory_utilization": [0.3, 0.08]}
    assert "9.49" in r.reason and "79.18" in r.reason


def test_free_memory_below_minimum_gives_up() -> None:
    args = VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000)
    g = give_up(decide(free_failure(), args, profile({"min_gpu_memory_utilization": 0.5}), [], None))
    assert "0.08" in g.reason and "0.5" in g.reason and "nvidia-smi" in g.reason


def test_free_memory_released_since_retries_same_args() -> None:
    args = VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000)
    r = relaunch(decide(free_failure(), args, profile(), [], None, gpu_free_mib=70000, gpu_total_mib=H100_MIB))
    assert r.args == args and r.change == {} and r.delay_s == 2.0


def no_kv() -> Failure:
    return Failure(FailureKind.NO_KV_CACHE_MEMORY, "ValueError: No available memory for the cache blocks. …", {})


def test_no_kv_memory_raises_utilization_from_the_profile_numbers() -> None:
    facts = StartupFacts(model_weights_gib=7.56, available_kv_cache_gib=-0.5)
    args = VllmArgs(gpu_memory_utilization=0.08, max_model_len=10000)
    r = relaunch(decide(no_kv(), args, profile(), [], facts, gpu_total_mib=H100_MIB))
    # non-KV = 0.08 × 79.18 + 0.5 = 6.83 GiB; + 3.96 GiB (5%) for the KV cache; +0.01 → 0.15
    assert r.args.gpu_memory_utilization == 0.15


@pytest.mark.parametrize("version,util", [("0.26.0", 0.13), ("0.34.0", 0.14)])
def test_no_kv_memory_uses_the_memory_model_when_available_is_not_printed(version: str, util: float) -> None:
    facts = StartupFacts(model_weights_gib=7.56)
    args = VllmArgs(gpu_memory_utilization=0.08, max_model_len=10000)
    fit = FitContext.of(load_shape("Qwen/Qwen3-4B"), H100_MIB / 1024, 1, gpu_name="NVIDIA H100 80GB HBM3",
                        recovery=profile().recovery, vllm_version=version)
    r = relaunch(decide(no_kv(), args, profile(), [], facts, gpu_total_mib=H100_MIB, fit=fit))
    # 0.26: 7.56 weights + 1.03 overhead (0.81 cold activation at 8192 tokens/1024 seqs + 0.22
    # non-torch, the plan's memory model) + 0.28 KV (2048 tokens × 144 KiB) = 8.87 GiB / 79.18 =
    # 0.112 +0.01 → 0.13; vLLM 0.34 spends 1.73 (0.93 activation + 0.80 non-torch, as measured on
    # an H200) and counts the CUDA graphs (0.69 GiB) inside the budget too: 10.26 GiB → 0.14
    assert r.args.gpu_memory_utilization == util
    overhead = "1.03" if version == "0.26.0" else "1.73"
    assert f"{overhead} GiB of peak activation and non-torch memory" in r.reason
    assert ("0.69 GiB of CUDA graphs" in r.reason) == (version == "0.34.0")


def test_no_kv_memory_with_vllms_own_overhead_figures() -> None:
    facts = StartupFacts(model_weights_gib=7.56, peak_activation_gib=0.8, non_torch_gib=0.22)
    args = VllmArgs(gpu_memory_utilization=0.08, max_model_len=10000)
    r = relaunch(decide(no_kv(), args, profile(), [], facts, gpu_total_mib=H100_MIB))
    # 7.56 + 1.02 (as vLLM measured) + 3.96 GiB (5%: no KV bytes per token known) = 12.54 GiB
    # / 79.18 = 0.158 +0.01 → 0.17
    assert r.args.gpu_memory_utilization == 0.17
    assert "as vLLM measured them" in r.reason


def test_no_kv_memory_without_any_overhead_figure_steps_up() -> None:
    """No printed overhead and no model shape: one step up, not a guess."""
    facts = StartupFacts(model_weights_gib=7.56)
    args = VllmArgs(gpu_memory_utilization=0.08, max_model_len=10000)
    r = relaunch(decide(no_kv(), args, profile(), [], facts, gpu_total_mib=H100_MIB))
    assert r.change == {"gpu_memory_utilization": [0.08, 0.13]}


def test_no_kv_memory_falls_back_to_eager_within_bounds() -> None:
    facts = StartupFacts(model_weights_gib=7.56)
    args = VllmArgs(gpu_memory_utilization=0.08, max_model_len=10000)
    prof = profile({"max_gpu_memory_utilization": 0.1})
    fit = FitContext.of(load_shape("Qwen/Qwen3-4B"), H100_MIB / 1024, 1, gpu_name="NVIDIA H100 80GB HBM3",
                        recovery=prof.recovery)
    r = relaunch(decide(no_kv(), args, prof, [], facts, gpu_total_mib=H100_MIB, fit=fit))
    assert r.args.enforce_eager is True
    assert r.args.gpu_memory_utilization == 0.1


def test_model_that_cannot_fit_the_card() -> None:
    facts = StartupFacts(model_weights_gib=61.0)
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=10000)
    g = give_up(decide(no_kv(), args, profile(gpu_gib=22.5), [], facts, gpu_total_mib=24564))
    assert "61 GiB" in g.reason and "cannot fit" in g.reason


# ---------------------------------------------------------------- cuda_oom


def oom(stage: str | None = None, runtime: bool = False) -> Failure:
    values = {"tried_to_allocate_mib": 304.0, "total_gib": 79.18, "free_mib": 234.62}
    if runtime:
        values["runtime"] = 1
    return Failure(FailureKind.CUDA_OOM, "torch.OutOfMemoryError: CUDA out of memory. …", values,
                   "runtime" if runtime else stage)


def test_startup_oom_steps_then_gives_up() -> None:
    prof = profile({"max_attempts": 5}, gpu_memory_utilization=0.9)
    facts = StartupFacts(model_weights_gib=7.56, kv_cache_tokens=500000)  # died in graph capture
    args = VllmArgs(gpu_memory_utilization=0.9)
    history: list[Attempt] = []
    seen = []
    for i in range(4):
        history.append(Attempt(at=float(i), args=args, failure=FailureKind.CUDA_OOM))
        r = relaunch(decide(oom(), args, prof, history, facts))
        seen.append(r.change)
        args = r.args
    assert seen == [
        {"gpu_memory_utilization": [0.9, 0.85]},
        {"enforce_eager": [False, True]},
        {"max_num_seqs": [None, 512]},  # half of vLLM's default on this 79 GiB GPU (1,024)
        {"gpu_memory_utilization": [0.85, 0.8]},
    ]
    history.append(Attempt(at=5.0, args=args, failure=FailureKind.CUDA_OOM))
    g = give_up(decide(oom(), args, prof, history, facts))
    assert "5 launches failed" in g.reason and "max_attempts = 5" in g.reason


def test_sampler_warmup_oom_cuts_sequences_first() -> None:
    r = relaunch(decide(oom("sampler_warmup"), VllmArgs(max_num_seqs=1024), profile(), [], StartupFacts()))
    assert r.change == {"max_num_seqs": [1024, 512]}


def test_oom_never_repeats_failed_args() -> None:
    args = VllmArgs(gpu_memory_utilization=0.9)
    earlier = Attempt(at=0.0, args=VllmArgs(gpu_memory_utilization=0.85), failure=FailureKind.KV_CACHE_TOO_SMALL)
    r = relaunch(decide(oom(), args, profile(), [earlier], StartupFacts()))
    assert r.change == {"enforce_eager": [False, True]}


def test_oom_with_every_step_spent_gives_up() -> None:
    args = VllmArgs(gpu_memory_utilization=0.52, enforce_eager=True, max_num_seqs=8)
    g = give_up(decide(oom(), args, profile({"min_gpu_memory_utilization": 0.5}), [], StartupFacts()))
    assert "every step" in g.reason


def test_runtime_oom_restarts_then_steps_down() -> None:
    args = VllmArgs(gpu_memory_utilization=0.9)
    prof = profile()
    first = Attempt(at=0.0, args=args, failure=FailureKind.CUDA_OOM, reached_ready=True, ended_at=100.0)
    r = relaunch(decide(oom(runtime=True), args, prof, [first], StartupFacts()))
    assert r.args == args and r.delay_s == 2.0
    second = Attempt(at=110.0, args=args, failure=FailureKind.CUDA_OOM, reached_ready=True, ended_at=200.0)
    r = relaunch(decide(oom(runtime=True), args, prof, [first, second], StartupFacts()))
    assert r.change == {"gpu_memory_utilization": [0.9, 0.85]}


# ---------------------------------------------------------------- engine death, backoff, flapping


def dead() -> Failure:
    return Failure(FailureKind.ENGINE_DEAD, "EngineDeadError: EngineCore encountered an issue.", {"exit_code": 0}, "runtime")


def test_backoff_delay_grows_and_caps() -> None:
    rec = Recovery(backoff_initial_s=2, backoff_max_s=60)
    assert [backoff_delay(rec.backoff_initial_s, rec.backoff_max_s, n) for n in (0, 1, 2, 3, 4, 5, 6, 7, 1000)] == [0, 2, 4, 8, 16, 32, 60, 60, 60]


def test_engine_death_restarts_same_args_with_growing_backoff_then_stops_flapping() -> None:
    prof = profile({"max_attempts": 5, "backoff_initial_s": 2, "backoff_max_s": 10})
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=10000)
    history: list[Attempt] = []
    delays = []
    for i in range(4):
        history.append(Attempt(at=i * 100.0, args=args, failure=FailureKind.ENGINE_DEAD, reached_ready=True,
                               ended_at=i * 100.0 + 60))
        r = relaunch(decide(dead(), args, prof, history, None))
        assert r.args == args and r.change == {}
        delays.append(r.delay_s)
    assert delays == [2, 4, 8, 10]
    history.append(Attempt(at=400.0, args=args, failure=FailureKind.ENGINE_DEAD, reached_ready=True, ended_at=460.0))
    g = give_up(decide(dead(), args, prof, history, None))
    assert "became ready and then died 5 times" in g.reason


def test_a_stable_run_resets_the_streak() -> None:
    prof = profile({"max_attempts": 3})
    args = VllmArgs()
    history = [Attempt(at=float(i), args=args, failure=FailureKind.ENGINE_DEAD, reached_ready=True, ended_at=i + 5.0)
               for i in range(2)]
    history.append(Attempt(at=100.0, args=args, failure=FailureKind.ENGINE_DEAD, reached_ready=True,
                           ended_at=100.0 + 3 * 86400))
    r = relaunch(decide(dead(), args, prof, history, None))
    assert r.delay_s == 2.0
    assert len(failure_streak(history)) == 1


def test_attempt_limit_applies_to_memory_fixes_too() -> None:
    prof = profile({"max_attempts": 2})
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    history = [Attempt(at=0.0, args=VllmArgs(max_model_len=30000), failure=FailureKind.KV_CACHE_TOO_SMALL),
               Attempt(at=1.0, args=args, failure=FailureKind.KV_CACHE_TOO_SMALL)]
    g = give_up(decide(kv_failure(), args, prof, history, None))
    assert "max_attempts = 2" in g.reason and "kv_cache_too_small" in g.reason


# ---------------------------------------------------------------- non-recoverable and the rest


@pytest.mark.parametrize(
    "kind, message, words",
    [
        (FailureKind.MODEL_NOT_FOUND, "ValueError: Invalid repository ID or local directory specified: 'x'",
         ["Qwen/Qwen3-4B", "model.id"]),
        (FailureKind.BAD_ARGUMENTS, "vllm serve: error: unrecognized arguments: --foo", ["--foo", "extra_args"]),
        (FailureKind.PORT_IN_USE, "OSError: [Errno 98] Address already in use", ["port 8000", "vllm.port"]),
    ],
)
def test_non_recoverable_give_up_at_once(kind: FailureKind, message: str, words: list[str]) -> None:
    g = give_up(decide(Failure(kind, message, {}), VllmArgs(), profile(), [], None))
    for word in words:
        assert word in g.reason


def test_internal_port_race_retries_once() -> None:
    failure = Failure(FailureKind.PORT_IN_USE, "EADDRINUSE", {"port": 29500})
    args = VllmArgs(port=8000)
    r = relaunch(decide(failure, args, profile(), [], None))
    assert r.args == args
    history = [Attempt(0.0, args, FailureKind.PORT_IN_USE), Attempt(1.0, args, FailureKind.PORT_IN_USE)]
    give_up(decide(failure, args, profile(), history, None))


def test_a_taken_private_port_behind_the_front_door_relaunches_until_max_attempts() -> None:
    """The private port is chosen afresh at each launch: the same failure again is another port
    taken, not the same one, so it is retried like an engine death (to recovery.max_attempts)."""
    bare = Failure(FailureKind.PORT_IN_USE, "OSError: [Errno 98] Address already in use", {})
    args = VllmArgs(port=8000)
    history = [Attempt(0.0, args, FailureKind.PORT_IN_USE)]
    r = relaunch(decide(bare, args, profile(), history, None, engine_port=41234))
    assert r.args == args and "private port 41234" in r.reason and "fresh port" in r.reason
    history = [Attempt(float(n), args, FailureKind.PORT_IN_USE) for n in range(profile().recovery.max_attempts)]
    assert "max_attempts" in give_up(decide(bare, args, profile(), history, None, engine_port=41234)).reason
    # torch.distributed's port (named in its message) is still the internal race: retried once
    torch = Failure(FailureKind.PORT_IN_USE, "EADDRINUSE", {"port": 29500})
    assert "same arguments" in relaunch(decide(torch, args, profile(), [], None, engine_port=41234)).reason


def test_max_model_len_too_large_uses_the_model_limit() -> None:
    failure = Failure(FailureKind.MAX_MODEL_LEN_TOO_LARGE, "User-specified max_model_len (100000) …",
                      {"max_model_len": 100000, "derived_max_model_len": 40960})
    r = relaunch(decide(failure, VllmArgs(max_model_len=100000), profile(), [], None))
    assert r.change == {"max_model_len": [100000, 40960]}
    assert "40960" in r.reason


def test_unknown_retries_once_then_gives_up() -> None:
    failure = Failure(FailureKind.UNKNOWN, "RuntimeError: CUBLAS_STATUS_INTERNAL_ERROR", {"exit_code": 1})
    args = VllmArgs()
    r = relaunch(decide(failure, args, profile(), [Attempt(0.0, args, FailureKind.UNKNOWN)], None))
    assert r.args == args and r.delay_s == 2.0
    history = [Attempt(0.0, args, FailureKind.UNKNOWN), Attempt(5.0, args, FailureKind.UNKNOWN)]
    g = give_up(decide(failure, args, profile(), history, None))
    assert "twice" in g.reason and "CUBLAS" in g.reason


def test_decide_is_pure() -> None:
    args = VllmArgs(gpu_memory_utilization=0.12, max_model_len=40960)
    history = [Attempt(at=0.0, args=args, failure=FailureKind.KV_CACHE_TOO_SMALL)]
    before_args, before_history = args.model_copy(deep=True), copy.deepcopy(history)
    failure = kv_failure()
    values = dict(failure.values)
    first = decide(failure, args, profile(), history, None)
    second = decide(failure, args, profile(), history, None)
    assert args == before_args and history == before_history and failure.values == values
    assert first == second


def test_attempt_to_json() -> None:
    a = Attempt(at=1.5, args=VllmArgs(), failure=FailureKind.CUDA_OOM, change={"enforce_eager": [False, True]},
                reason="r", reached_ready=False)
    assert a.to_json() == {"at": 1.5, "failure": "cuda_oom", "change": {"enforce_eager": [False, True]},
                           "reason": "r", "reached_ready": False, "ended_at": None}


def test_an_unknown_failure_twice_in_a_row_gives_up() -> None:
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=10000)
    unknown = Failure(FailureKind.UNKNOWN, "vLLM exited with code 1 before it was ready", {})
    first = relaunch(decide(unknown, args, profile({"max_attempts": 10}), [], None))
    assert first.args == args and first.change == {}
    # the history ends with the launch that just failed (decide's convention)
    history = [Attempt(at=1.0, args=args, failure=FailureKind.UNKNOWN),
               Attempt(at=2.0, args=args, failure=FailureKind.UNKNOWN)]
    g = give_up(decide(unknown, args, profile({"max_attempts": 10}), history, None))
    assert "failed twice the same way" in g.reason


def test_a_start_that_worked_in_between_means_the_unknown_failure_is_not_repeating() -> None:
    """unknown (killed during startup) → ready → died → ready → unknown again: a relaunch, not a
    give-up (seen when engine processes are killed from outside at random moments)."""
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=10000)
    history = [
        Attempt(at=1.0, args=args, failure=FailureKind.UNKNOWN),
        Attempt(at=2.0, args=args, failure=FailureKind.ENGINE_DEAD, reached_ready=True, ended_at=3.0),
        Attempt(at=4.0, args=args, failure=None, reached_ready=True, ended_at=5.0),
        Attempt(at=6.0, args=args, failure=FailureKind.UNKNOWN),
    ]
    unknown = Failure(FailureKind.UNKNOWN, "vLLM was killed by signal 9 before it was ready", {})
    r = relaunch(decide(unknown, args, profile({"max_attempts": 10}), history, None))
    assert r.args == args and r.change == {} and "retrying once" in r.reason
