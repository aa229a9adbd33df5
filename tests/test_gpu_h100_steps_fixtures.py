"""Real vLLM 0.26.0 on an H100 80GB HBM3, Qwen3-4B shape on the whole GPU
(tests/fixtures/vllm-0.26.0-h100/h100-4b-steps.json, h100-4b-mixed*.json, *.startup.log): fixed
loads of `bench --users`, with vLLM's own step counters, recorded by the capacity script's `steps`,
`mixed` and `mixed1024` scenarios.

What they hold: the dip in the decode rate a user sees at 8 and 16 users in the capacity searches
(tests/test_gpu_h100_capacity_fixtures.py) is users out of step, each prompt in an engine step of
its own beside the others' decodes, and those steps carry more tokens than vLLM 0.26's CUDA graphs
were captured for (512): with users in step, or short prompts, or graphs up to 1,024 tokens, the
speed model holds; the larger capture costs GPU memory and no KV tokens on 0.26."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llm_supervisor.host.logfiles import parse_log_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from gpu_capacity import steps_above  # noqa: E402 - how the script counts them in its summary

H100 = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"
STEPS = json.loads((H100 / "h100-4b-steps.json").read_text())
MIXED = json.loads((H100 / "h100-4b-mixed.json").read_text())
MIXED_1024 = json.loads((H100 / "h100-4b-mixed1024.json").read_text())


def level(record: dict, prompt: str, output: str, users: int) -> dict:
    return next(x for x in record["levels"]
                if (x["prompt_tokens"], x["output_tokens"], x["users"]) == (prompt, output, users))


def error(lv: dict) -> float:
    """The model's TPOT against the measured one (the model is the one of the recording)."""
    return lv["model_tpot_s"] / lv["tpot_s"] - 1


def test_every_level_was_answered_in_full_on_one_launch() -> None:
    for record in (STEPS, MIXED, MIXED_1024):
        assert record["ok"] and record["attempt"] == 1 and record["kv_cache_tokens"] == 456400
        for lv in record["levels"]:
            assert lv["succeeded"] == max(8, 4 * lv["users"])
            assert lv["engine_steps"] >= 500


@pytest.mark.parametrize("users", [1, 2, 4, 8, 16, 32, 64])
def test_users_in_step_see_the_model_within_eleven_percent_and_no_dip(users: int) -> None:
    """Equal replies: requests admitted together end together, so their users' next prompts share
    a step; the decode rate falls steadily with the users, and the model holds."""
    lv = level(STEPS, "512", "128", users)
    assert abs(error(lv)) <= 0.11
    rates = [level(STEPS, "512", "128", u)["tpot_s"] for u in (1, 2, 4, 8, 16, 32, 64)]
    assert rates == sorted(rates)


@pytest.mark.parametrize("users", [1, 2, 4, 8, 16])
def test_short_prompts_are_decode_steps_the_model_holds(users: int) -> None:
    lv = level(STEPS, "16", "128", users)
    assert abs(error(lv)) <= 0.06
    assert steps_above(lv["step_token_buckets"], 512) == 0


@pytest.mark.parametrize("users", [8, 16])
def test_users_out_of_step_decode_slower_than_the_model_in_steps_beyond_the_graphs(users: int) -> None:
    """Replies of 96-160 tokens: every prompt lands in a step of its own beside the decodes, more
    than 512 tokens, which runs without a CUDA graph; the same load in step was 10-20 % faster."""
    out_of_step, in_step = level(STEPS, "512", "96-160", users), level(STEPS, "512", "128", users)
    assert error(out_of_step) < -0.10
    assert out_of_step["tpot_s"] > 1.15 * in_step["tpot_s"]
    assert steps_above(out_of_step["step_token_buckets"], 512) >= 20


def test_prompts_that_fit_the_graphs_beside_eight_decodes_cost_little() -> None:
    """Out of step at 8 users: 480-token prompts (487 tokens a step) within 7 % of the model,
    512-token ones (519) 23 % slower than it in the same launch."""
    assert abs(error(level(MIXED, "480", "96-160", 8))) <= 0.07
    assert error(level(MIXED, "512", "96-160", 8)) < -0.20
    assert steps_above(level(MIXED, "480", "96-160", 8)["step_token_buckets"], 512) <= 5
    assert steps_above(level(MIXED, "512", "96-160", 8)["step_token_buckets"], 512) >= 20


@pytest.mark.parametrize("prompt", ["512", "600"])
def test_graphs_captured_to_1024_tokens_take_the_dip_away(prompt: str) -> None:
    default, wide = level(MIXED, prompt, "96-160", 8), level(MIXED_1024, prompt, "96-160", 8)
    assert abs(error(wide)) <= 0.02
    assert wide["tpot_s"] < 0.88 * default["tpot_s"]
    assert wide["ttft_p50_s"] < default["ttft_p50_s"]


def test_the_wider_capture_costs_graph_memory_and_no_kv_tokens_on_0_26() -> None:
    default = parse_log_file(H100 / "h100-4b-mixed.startup.log").facts
    wide = parse_log_file(H100 / "h100-4b-mixed1024.startup.log").facts
    assert (default.cuda_graph_gib, wide.cuda_graph_gib) == (1.0, 1.32)
    assert default.kv_cache_tokens == wide.kv_cache_tokens == 456400
    assert "'max_cudagraph_capture_size': 512" in (H100 / "h100-4b-mixed.startup.log").read_text()
    assert "'max_cudagraph_capture_size': 1024" in (H100 / "h100-4b-mixed1024.startup.log").read_text()
