"""Real vLLM 0.26.0 on an H200, Qwen3-4B shape on the whole GPU (tests/fixtures/vllm-0.26.0/
h200-4b-plain*.json, h200-4b-advised*.json, *.startup.log): the plan's own load (1,024-token
prompts, replies around 256, users out of step) at 8 and 32 users, and 512-token prompts at 8,
in two pairs of launches: CUDA graphs as vLLM captures them by default, and with the
`--max-cudagraph-capture-size` that `plan` advised for that launch.

What they hold: `plan` finds prompt steps beyond the graphs for this model on this GPU and
advises the size that covers them; with it, users at 8 decode as fast as the speed model says and
get their first token sooner; the graphs take the memory the planner counts, and no KV tokens on
0.26; from 32 users, where prompts share steps, the capture changes little."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import speed
from llm_supervisor.vllm.calibration import learn_from_facts
from llm_supervisor.vllm.fit import FitContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from gpu_capacity import steps_above  # noqa: E402 - how the script counts them in its summary

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
H200_TOTAL = 139.8
PAIRS = [tuple(json.loads((FIXTURES / f"h200-4b-{kind}{n}.json").read_text()) for kind in ("plain", "advised"))
         for n in ("", "-2")]
ARGS = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192)


def level(record: dict, prompt: str, users: int) -> dict:
    return next(x for x in record["levels"] if (x["prompt_tokens"], x["users"]) == (prompt, users))


def ctx(observation=None) -> FitContext:
    return FitContext.of(load_shape("Qwen/Qwen3-4B"), H200_TOTAL, 1, observation, model="Qwen/Qwen3-4B",
                         gpu_name="NVIDIA H200", vllm_version="0.26.0")


def test_plan_advises_the_capture_that_covers_its_loads_prompt_steps() -> None:
    c = ctx()
    model = speed.speed_model(c, ARGS, c.predict(ARGS))
    assert model is not None
    dip = model.ungraphed_prompts()
    assert dip is not None and dip.to_json() == PAIRS[0][0]["ungraphed_prompts"]
    assert (dip.users, dip.step_tokens, dip.capture_size) == ((8, 32), 1055, 1056)
    for plain, advised in PAIRS:
        assert "--max-cudagraph-capture-size 1056 covers them" in plain["ungraphed_note"]
        assert advised["advised_capture_size"] == 1056
        assert advised["ungraphed_prompts"] is None and advised["ungraphed_note"] is None
        assert (advised["cuda_graph_sizes"], advised["cuda_graph_max"]) == (85, 1056)


def test_the_graphs_take_the_memory_the_planner_counts_and_no_kv_tokens_on_0_26() -> None:
    wider = ARGS.model_copy(update={"extra_args": ["--max-cudagraph-capture-size", "1056"]})
    for plain, advised in PAIRS:
        assert ctx().graph_gib(ARGS)[0] == pytest.approx(plain["cuda_graph_gib"], abs=0.01)
        assert ctx().graph_gib(wider)[0] == pytest.approx(advised["cuda_graph_gib"], abs=0.02)
        assert advised["kv_cache_tokens"] == plain["kv_cache_tokens"] == 853_696
    # learned from the default launch's log, the figure is scaled to the advised capture
    facts = parse_log_file(FIXTURES / "h200-4b-plain.startup.log").facts
    obs = learn_from_facts(facts, model="Qwen/Qwen3-4B", gpu_name="NVIDIA H200", gpu_total_gib=H200_TOTAL,
                           tensor_parallel=1, gpu_memory_utilization=0.9, now=0.0)
    took = parse_log_file(FIXTURES / "h200-4b-advised.startup.log").facts.cuda_graph_gib
    assert ctx(obs).graph_gib(wider) == (pytest.approx(took, abs=0.02), "measured on this host")


@pytest.mark.parametrize("prompt", ["1024", "512"])
def test_with_the_advised_capture_eight_users_decode_at_the_models_pace(prompt: str) -> None:
    for plain, advised in PAIRS:
        before, after = level(plain, prompt, 8), level(advised, prompt, 8)
        assert after["tpot_s"] <= 0.92 * before["tpot_s"]              # 9–13 % faster in both pairs
        assert after["model_tpot_s"] / after["tpot_s"] - 1 == pytest.approx(0, abs=0.05)
        assert before["model_tpot_s"] / before["tpot_s"] - 1 < -0.05    # the default: slower than the model
        assert after["ttft_p50_s"] <= 0.85 * before["ttft_p50_s"]
        assert after["succeeded"] == after["requests"] and before["succeeded"] == before["requests"]


def test_from_32_users_prompts_share_steps_and_the_capture_changes_little() -> None:
    for plain, advised in PAIRS:
        for record in (plain, advised):
            lv = level(record, "1024", 32)
            assert lv["model_tpot_s"] / lv["tpot_s"] - 1 == pytest.approx(0, abs=0.1)
            # 128 prompts of 1,024 tokens in at most 28 steps of more than 1,024 tokens: ~5 a step
            assert steps_above(lv["step_token_buckets"], 1024) <= lv["requests"] / 4
