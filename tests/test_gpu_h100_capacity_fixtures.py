"""Real vLLM 0.26.0 on an H100 80GB HBM3, Qwen3-4B shape on the whole GPU
(tests/fixtures/vllm-0.26.0-h100/h100-4b-capacity*): the capacity script's `4b` scenario, two
`bench --find-capacity` searches (512-token prompts, 128-token replies, 1 to 64 users), on a card
the speed model was never measured on (its figures come from the H100 datasheet; the H200 runs in
tests/test_gpu_4b_fixtures.py are the ones it was checked against).

What they hold: the planner's KV tokens to the block; the step model's decode rate a user sees
within 11 % where it held on the H200, and the ratio of the two cards' rates within 5 %; the same
dip at 8 and 16 users as on the H200 (its cause, steps beyond vLLM's CUDA graphs:
tests/test_gpu_h100_steps_fixtures.py); the calibration's per-request first-token term close to the
H200's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_supervisor.bench.capacity import Workload, calibration_points
from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import speed
from llm_supervisor.vllm.fit import FitContext

FIXTURES = Path(__file__).parent / "fixtures"
H100 = FIXTURES / "vllm-0.26.0-h100"
CAPACITY = json.loads((H100 / "h100-4b-capacity.json").read_text())
H200_CAPACITY = json.loads((FIXTURES / "vllm-0.26.0" / "h200-4b-capacity.json").read_text())
H100_TOTAL = 79.18  # GiB as torch sees an H100 80GB HBM3 (the GPU recipe's figure)
H200_TOTAL = 139.8
WORKLOAD = speed.Workload(512, 128)
SEARCHES = [s["levels"] for s in CAPACITY["searches"]]
ARGS = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192)


def model(gpu_name: str = "NVIDIA H100 80GB HBM3", total_gib: float = H100_TOTAL) -> speed.SpeedModel:
    c = FitContext.of(load_shape("Qwen/Qwen3-4B"), total_gib, 1, model="Qwen/Qwen3-4B", gpu_name=gpu_name,
                      vllm_version="0.26.0")
    m = speed.speed_model(c, ARGS, c.predict(ARGS))
    assert m is not None
    return m


def level(levels: list[dict], users: int) -> dict:
    return next(x for x in levels if x["users"] == users)


def points(levels: list[dict]) -> list[speed.MeasuredPoint]:
    return calibration_points({"levels": levels}, Workload.synthetic(512, 128))


def test_the_recorded_launch_and_the_planner_to_the_block() -> None:
    facts = parse_log_file(H100 / "h100-4b-capacity.log").facts
    assert facts.kv_cache_tokens == CAPACITY["kv_cache_tokens"] == 456400
    assert facts.max_concurrency == pytest.approx(55.71)
    assert CAPACITY["attempt"] == 1 and [s["capacity_users"] for s in CAPACITY["searches"]] == [64, 64]
    assert CAPACITY["plan"]["gpu"]["name"] == "H100 SXM"  # the card the speed model looked up
    assert model().cost.kv_cache_tokens == pytest.approx(456400, rel=0.001)


@pytest.mark.parametrize("users", [1, 2, 4, 32, 64])
def test_the_uncalibrated_decode_rate_on_an_unmeasured_card_is_within_eleven_percent(users: int) -> None:
    p = model().at(users, WORKLOAD)
    for levels in SEARCHES:
        lv = level(levels, users)
        assert lv["engine_running_peak"] == users
        assert p.per_user_tokens_per_s == pytest.approx(lv["per_user_tokens_per_s"], rel=0.11)


@pytest.mark.parametrize("users", [1, 2, 32, 64])
def test_the_two_cards_decode_rates_keep_the_models_ratio(users: int) -> None:
    """H200 over H100, per user: measured 1.15 to 1.22, the model 1.14 to 1.25 (memory bandwidth
    4,800 against 3,350 GB/s, with what does not scale with it)."""
    measured = (sum(level(s["levels"], users)["per_user_tokens_per_s"] for s in H200_CAPACITY["searches"])
                / sum(level(levels, users)["per_user_tokens_per_s"] for levels in SEARCHES))
    predicted = (model("NVIDIA H200", H200_TOTAL).at(users, WORKLOAD).per_user_tokens_per_s
                 / model().at(users, WORKLOAD).per_user_tokens_per_s)
    assert predicted == pytest.approx(measured, rel=0.05)


def test_eight_and_sixteen_users_decode_slower_than_the_model_says_as_on_the_h200() -> None:
    """144–157 tokens/s each at 8 users and 122–145 at 16, slower than at 32 (150–151), against the
    model's 200 and 181: the dip the H200 showed at 8 users, here wider (the search spreads its
    users' starts, so each prompt gets a step of its own, beyond the CUDA graphs' 512 tokens)."""
    m = model()
    for users in (8, 16):
        for levels in SEARCHES:
            assert 1.2 < m.at(users, WORKLOAD).per_user_tokens_per_s / level(levels, users)["per_user_tokens_per_s"] < 1.55
    for levels in SEARCHES:
        assert level(levels, 16)["per_user_tokens_per_s"] < level(levels, 32)["per_user_tokens_per_s"]


@pytest.mark.parametrize("held_out", [0, 1])
def test_calibrated_from_the_other_search_totals_are_within_twelve_percent(held_out: int) -> None:
    m = model()
    cal = speed.fit_calibration(m, points(SEARCHES[1 - held_out]), "other search")
    assert 0.0035 < cal.ttft_per_request_s < 0.0055  # the H200's: 5.0 ms per running request
    fitted = m.with_calibration(cal)
    for lv in SEARCHES[held_out]:
        if lv["users"] in (8, 16):
            continue  # the decode rate the model misses (above)
        assert fitted.at(lv["users"], WORKLOAD).tokens_per_s == pytest.approx(lv["tokens_per_s"], rel=0.12)
