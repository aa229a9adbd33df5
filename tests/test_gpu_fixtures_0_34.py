"""The supervisor's reading of real vLLM 0.34.0 (torch 2.14) on one H200, recorded by
scripts/gpu_validate.py (docs/validation.md, "vLLM 0.34.0 on the H200"): the engine logs the
daemon wrote, one file per daemon lifetime, replayed the way the daemon reads them.

What 0.34 printed is the ground truth for its memory model (memory.ENGINE_0_34): 64-token blocks,
the pre-warm-up estimate, the cache sized after warm-up, the KV error before and after warm-up.
The recovery policy, given the real first failure, must now choose a relaunch that fits (the
run on the GPU, with the model fitted to 0.26, needed two).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from test_gpu_fixtures import PROFILE, Run, runs
from llm_supervisor.config.loader import load_profile
from llm_supervisor.planning.launch import fit_context
from llm_supervisor.vllm.failures import FailureKind
from llm_supervisor.vllm.recovery import Relaunch, decide

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.34.0-h200"
READY = "ready-enginecore-killed-daemon-killed"
KV_SMALL = "kv-cache-too-small-recovered"
# Two more shapes on 0.34 (2026-12-04): Qwen3-8B at a 36 GB budget, the rank in a worker process
# (`gpu_multi.py --only mp1`), and Qwen3-32B fitted to 8 requests of 32,768 tokens
# (`gpu_capacity.py --only 32b`). The memory model's 0.34 figures were taken from the 4B shape.
SHAPE_8B = "h200-8b-mp1-worker-killed-ended-on-report"
SHAPE_32B = "h200-32b-target-first-launch"
SHAPES = {SHAPE_8B: ("Qwen/Qwen3-8B", 0.26, 16384), SHAPE_32B: ("Qwen/Qwen3-32B", 0.93, 32768)}
H200_NVML_MIB = 143771   # what NVML reports
H200_TORCH_GIB = 139.8   # what torch (and so vLLM) sees: "Free memory on device (139.1/139.8 GiB)"


def real(name: str) -> list[Run]:
    return runs(name, FIXTURES)


def status(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


QWEN3_4B = (7.56, 0.93, 0.69)  # weights, peak activation, CUDA graphs (GiB)


@pytest.mark.parametrize("name, number, tokens, available, concurrency, context, memory", [
    (READY, 1, 78848, 10.83, 1.93, 40960, QWEN3_4B),   # util 0.15; killed (kill -9 of EngineCore) after ready
    (READY, 2, 78848, 10.83, 1.93, 40960, QWEN3_4B),   # the relaunch, the same arguments
    (KV_SMALL, 3, 17920, 2.46, 1.0, 17856, QWEN3_4B),  # util 0.09 with vLLM's own estimate
    (SHAPE_8B, 1, 133632, 18.35, 8.16, 16384, (15.27, 1.19, 0.70)),   # cold compile
    (SHAPE_8B, 2, 134656, 18.49, 8.22, 16384, (15.27, 0.95, 0.70)),   # warm: a smaller peak
    (SHAPE_32B, 1, 265216, 64.75, 8.09, 32768, (61.03, 1.53, 1.28)),
])
def test_startup_facts_are_what_vllm_0_34_printed(name, number, tokens, available, concurrency, context, memory):
    run = real(name)[number - 1]
    f = run.facts
    # 0.34's "available" is the cache sized after warm-up, not the pre-warm-up estimate
    assert (f.kv_cache_tokens, f.available_kv_cache_gib, f.max_concurrency, f.max_concurrency_context) == (
        tokens, available, concurrency, context)
    assert f.kv_measured_after_warmup and f.vllm_version == "0.34.0"
    assert (f.model_weights_gib, f.peak_activation_gib, f.cuda_graph_gib) == memory
    # 64-token blocks: "N KV cache blocks" × 64 is the token count
    blocks = int(re.search(r"; (\d+) KV cache blocks", run.text).group(1))
    assert blocks * 64 == tokens
    assert f.server_started


def test_status_and_metrics_agree_with_the_log():
    st = status(f"{READY}.status-1")
    assert (st["state"], st["attempt"], st["kv_cache_tokens"], st["max_concurrency"]) == ("ready", 1, 78848, 1.93)
    info = next(line for line in (FIXTURES / "metrics-ready-cache-config.txt").read_text().splitlines()
                if line.startswith("vllm:cache_config_info"))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    assert (labels["kv_cache_size_tokens"], labels["num_gpu_blocks"], labels["block_size"]) == ("78848", "1232", "64")
    assert labels["enable_extensible_kv_cache"] == "True" and labels["user_specified_block_size"] == "False"
    st2 = status(f"{READY}.status-2")
    assert (st2["state"], st2["attempt"]) == ("ready", 2)
    assert [h["failure"]["kind"] for h in st2["history"] if h["event"] == "relaunch"] == ["engine_dead"]


def test_engine_death_exits_0():
    run = real(READY)[0]
    assert run.exit_code == 0
    failure = run.failure()
    assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD


@pytest.mark.parametrize("number, values, after_warmup", [
    # before warm-up: the estimate (util 0.07: 9.79 − 7.56 − 0.80 non-torch − 0.93 peak = 0.50)
    (1, {"needed_gib": 5.62, "available_gib": 0.49, "max_model_len": 40960, "estimated_max_model_len": 3520}, False),
    # after warm-up: the cache sized from measured memory (graphs, reservation growth, pages)
    (2, {"needed_gib": 2.79, "available_gib": 2.45, "max_model_len": 20352, "estimated_max_model_len": 17856}, True),
])
def test_kv_errors_before_and_after_warm_up(number, values, after_warmup):
    run = real(KV_SMALL)[number - 1]
    failure = run.failure()
    assert failure is not None and failure.kind is FailureKind.KV_CACHE_TOO_SMALL
    assert failure.values == values
    assert run.facts.kv_measured_after_warmup is after_warmup
    assert run.exit_code == 1 and not run.facts.server_started


def _profile(run: Run):
    return load_profile(str(PROFILE), PROFILE.parent, model="Qwen/Qwen3-4B", overrides=[
        f"vllm.gpu_memory_utilization={run.argv[run.argv.index('--gpu-memory-utilization') + 1]}",
        f"vllm.max_model_len={run.argv[run.argv.index('--max-model-len') + 1]}",
        "recovery.plan_first_launch=false"])


def test_the_first_kv_error_is_now_recovered_in_one_relaunch():
    """On the GPU the daemon (with the memory model fitted to 0.26) relaunched at 0.09 with 20,352
    tokens, which failed after warm-up (17,856 fit), and needed a third launch. Given the same
    first failure, the policy now counts what 0.34 takes after warm-up (0.69 GiB of graphs,
    torch's reservation growth, the null block's pages) and asks for what fits."""
    first, second, third = real(KV_SMALL)
    went = [h["change"] for h in status(f"{KV_SMALL}.status")["history"] if h["event"] == "relaunch"]
    assert went == [{"gpu_memory_utilization": [0.07, 0.09], "max_model_len": [40960, 20352]},
                    {"max_model_len": [20352, 17856]}]
    prof = _profile(first)
    fit = fit_context(prof, H200_TORCH_GIB, 1, gpu_name="NVIDIA H200", vllm_version="0.34.0")
    decision = decide(first.failure(), prof.vllm, prof, [], first.facts,
                      gpu_free_mib=H200_NVML_MIB, gpu_total_mib=H200_TORCH_GIB * 1024, fit=fit)
    assert isinstance(decision, Relaunch)
    util, length = decision.args.gpu_memory_utilization, decision.args.max_model_len
    assert util == 0.09 and length % 64 == 0
    largest = third.facts.kv_cache_tokens - 64  # what one request may use at 0.09: all but the null block
    assert 0.95 * largest <= length <= largest, (length, largest)
    assert "after warm-up" in decision.reason
    # and the planner agrees with what 0.34 printed at that utilization
    predicted = fit.predict(decision.args)
    assert predicted.kv_cache_tokens == third.facts.kv_cache_tokens


@pytest.mark.parametrize("name", SHAPES)
def test_the_planner_fitted_to_the_4b_shape_holds_for_8b_and_32b(name):
    """The first launch's KV tokens, predicted for exactly its arguments on a cold host: never
    more than vLLM found (a promise it cannot keep is a failed start), and within 2 %."""
    model, util, length = SHAPES[name]
    run = real(name)[0]
    assert (run.flag("--gpu-memory-utilization"), run.flag("--max-model-len")) == (str(util), str(length))
    prof = load_profile(str(PROFILE), PROFILE.parent, model=model, overrides=[
        f"vllm.gpu_memory_utilization={util}", f"vllm.max_model_len={length}", "recovery.plan_first_launch=false"])
    fit = fit_context(prof, H200_TORCH_GIB, 1, gpu_name="NVIDIA H200", vllm_version="0.34.0")
    predicted = fit.predict(prof.vllm).kv_cache_tokens
    assert 0.98 * run.facts.kv_cache_tokens <= predicted <= run.facts.kv_cache_tokens, (predicted, run.facts.kv_cache_tokens)


def test_the_32b_target_was_met_at_the_first_launch():
    summary = json.loads((FIXTURES / "h200-32b-target-summary.json").read_text())
    assert summary["target_met_first_launch"] and summary["attempt"] == 1
    assert summary["planned_args"]["gpu_memory_utilization"] == 0.93
    assert real(SHAPE_32B)[0].facts.kv_cache_tokens >= 8 * 32768
