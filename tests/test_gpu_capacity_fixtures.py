"""Real vLLM 0.26.0 on an H200, Qwen3-32B shape (tests/fixtures/vllm-0.26.0/h200-32b-*): the
target fit's first launch, and the speed model against two `bench --find-capacity` searches (512
-token prompts, 128-token replies, 1 to 32 users). The first search's prompts were fresh; the
second drew the same prompts again and vLLM's prefix cache skipped their prefill, so its levels
show the decode-only step alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_supervisor.bench.capacity import Workload, calibration_points
from llm_supervisor.config.profile import Recovery, Target, VllmArgs
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import speed
from llm_supervisor.vllm.fit import FitContext
from llm_supervisor.vllm.logparse import LogParser
from llm_supervisor.vllm.target import fit_target

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
LOG = FIXTURES / "h200-32b-target-ready-first-launch.log"
RECORD = json.loads((FIXTURES / "h200-32b-capacity.json").read_text())
H200_TOTAL = 139.8  # what torch (so vLLM) sees of an H200
WORKLOAD = speed.Workload(512, 128)
FRESH, CACHED = RECORD["searches"][0]["levels"], RECORD["searches"][1]["levels"]


def ctx(**kw) -> FitContext:
    return FitContext.of(load_shape("Qwen/Qwen3-32B"), H200_TOTAL, 1, model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200",
                         vllm_version="0.26.0", **kw)


def launched() -> VllmArgs:
    return VllmArgs(gpu_memory_utilization=0.92, max_model_len=32768)


def model() -> speed.SpeedModel:
    c, args = ctx(), launched()
    m = speed.speed_model(c, args, c.predict(args))
    assert m is not None
    return m


def test_the_first_launch_met_the_target_and_the_planner_chose_it() -> None:
    parser = LogParser()
    lines = LOG.read_text().splitlines()
    for line in lines:
        parser.feed(line)
    facts = parser.facts
    assert (facts.kv_cache_tokens, facts.max_concurrency, facts.max_model_len) == (269312, 8.22, 32768)
    assert facts.kv_cache_tokens >= 8 * 32768
    attempts = [line for line in lines if line.startswith("===== llm-supervisor attempt")]
    assert len(attempts) == 1 and "--gpu-memory-utilization 0.92 --max-model-len 32768" in attempts[0]
    # the same plan from the profile: 0.9 fits 7.81 requests, 0.92 is the least that meets 8
    target = ctx(target=Target(min_concurrency=8, context=32768), recovery=Recovery(max_gpu_memory_utilization=0.95))
    fit = fit_target(target, VllmArgs(gpu_memory_utilization=0.9, max_model_len=32768), free_gib=139.3)
    assert fit.met and fit.args.gpu_memory_utilization == 0.92 == RECORD["gpu_memory_utilization"]
    assert fit.prediction.kv_cache_tokens == pytest.approx(facts.kv_cache_tokens, rel=0.01)


@pytest.mark.parametrize("level", FRESH, ids=lambda lv: f"{lv['users']}-users")
def test_the_uncalibrated_model_predicts_each_fresh_level_within_ten_percent(level: dict) -> None:
    p = model().at(level["users"], WORKLOAD)
    assert p.running == level["engine_running_peak"] == level["users"]
    assert p.per_user_tokens_per_s == pytest.approx(level["per_user_tokens_per_s"], rel=0.10)
    assert p.tokens_per_s == pytest.approx(level["tokens_per_s"], rel=0.10)


def test_cached_prompts_leave_the_decode_only_step() -> None:
    """From 1 to 32 requests the step barely grows (18.8 → 20.5 ms): the weights' reads hide the
    batch's matrix work, which a sum of the two would have charged (the old model: 40 ms at 32)."""
    m = model()
    for level in CACHED:
        decode = m.steps(level["engine_running_peak"], WORKLOAD).decode
        assert decode.total == pytest.approx(level["tpot_s"]["p50"], rel=0.10)
        assert decode.weights > decode.matmul
    assert CACHED[-1]["tpot_s"]["p50"] < 1.1 * CACHED[0]["tpot_s"]["p50"]


def test_each_prompt_costs_a_step_of_its_own() -> None:
    """At 32 users a fresh prompt arrives every 4 steps; what the fresh search's TPOT has above the
    cached one's is those prompts' steps: 31/128 of (prefill step − decode step)."""
    fresh, cached = FRESH[-1], CACHED[-1]
    assert fresh["users"] == cached["users"] == 32
    measured_extra = (fresh["tpot_s"]["p50"] - cached["tpot_s"]["p50"]) * 128 / 31
    st = model().steps(32, WORKLOAD)
    assert st.chunks == 1 and st.prefill.matmul > st.prefill.weights  # compute-bound
    assert st.prefill.total - st.decode.total == pytest.approx(measured_extra, rel=0.15)


def test_calibrated_on_the_fresh_levels_every_level_is_within_three_percent() -> None:
    m = model()
    points = calibration_points({"levels": FRESH}, Workload.synthetic(512, 128))
    cal = speed.fit_calibration(m, points, "h200")
    assert 0.9 < cal.memory_factor < 1.1 and 0.9 < cal.compute_factor < 1.1
    fitted = m.with_calibration(cal)
    for lv in FRESH:
        assert fitted.at(lv["users"], WORKLOAD).per_user_tokens_per_s == pytest.approx(lv["per_user_tokens_per_s"],
                                                                                        rel=0.03)
