"""The target fit: a reachable service target is met by the plan (utilization, max_num_seqs and
context chosen within the bounds), and an unreachable one says which change would, with numbers.
The regression: on an H200, Qwen3-32B with target 8 × 32,768 and a 0.95 bound launched at 0.9
with 7.87 requests and said "service target NOT met"."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from fakes import Harness, harnesses
from llm_supervisor import cli
from llm_supervisor.runtime.commands import Command
from llm_supervisor.config.profile import Recovery, Target, VllmArgs
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import memory
from llm_supervisor.vllm.fit import FitContext
from llm_supervisor.vllm.target import fit_target, utilization_ceiling

H200_TOTAL = 139.8  # what torch (so vLLM) sees of an H200
H200 = "NVIDIA H200"
VLLM = "0.26.0"  # the version of the regression (CUDA graphs above the budget)
QWEN3_32B = load_shape("Qwen/Qwen3-32B")


def ctx_32b(want: float = 8, context: int = 32768, bound: float = 0.95, **kw: Any) -> FitContext:
    return FitContext.of(QWEN3_32B, H200_TOTAL, 1, target=Target(min_concurrency=want, context=context),
                         recovery=Recovery(max_gpu_memory_utilization=bound), model="Qwen/Qwen3-32B", gpu_name=H200,
                         vllm_version=VLLM, **kw)


def test_the_h200_regression_is_met_by_raising_utilization_within_the_bound() -> None:
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=32768)
    at_09 = ctx_32b().predict(args)
    assert at_09.target_met is False and 7.7 < at_09.concurrency_at(32768) < 8  # vLLM printed 7.87×
    fit = fit_target(ctx_32b(), args, free_gib=139.3)
    assert fit.met is True and fit.changes == {"gpu_memory_utilization": [0.9, 0.92]}
    assert fit.args.gpu_memory_utilization == 0.92 and fit.prediction.target_met
    assert fit.prediction.concurrency_at(32768) >= 8
    # the lowest utilization that meets it: one step less does not
    assert ctx_32b().predict(args.model_copy(update={"gpu_memory_utilization": 0.91})).target_met is False
    assert "0.9 → 0.92 meets it" in fit.notes[0] and "recovery.max_gpu_memory_utilization" in fit.notes[0]


def test_a_target_already_met_changes_nothing() -> None:
    fit = fit_target(ctx_32b(want=4), VllmArgs(gpu_memory_utilization=0.9, max_model_len=32768))
    assert fit.met is True and fit.changes == {} and fit.args.gpu_memory_utilization == 0.9
    none = fit_target(FitContext.of(QWEN3_32B, H200_TOTAL, 1), VllmArgs())
    assert none.met is None and none.changes == {}


def test_unreachable_within_the_bound_says_which_change_would_with_numbers() -> None:
    fit = fit_target(ctx_32b(bound=0.9), VllmArgs(gpu_memory_utilization=0.9, max_model_len=32768))
    assert fit.met is False and fit.args.gpu_memory_utilization == 0.9
    would = fit.would
    assert would[0] == "recovery.max_gpu_memory_utilization ≥ 0.92"
    shorter = next(w for w in would if w.startswith("target.context ≤ "))
    length = int(shorter.split("≤ ")[1].split(" ")[0].replace(",", ""))
    p = ctx_32b(bound=0.9).predict(VllmArgs(gpu_memory_utilization=0.9, max_model_len=length))
    assert p.concurrency_at(length) >= 8 > p.concurrency_at(length + 16)
    assert any(w.startswith("target.min_concurrency ≤ 7.8") for w in would)
    fp8 = next(w for w in would if w.startswith("vllm.kv_cache_dtype: fp8"))
    assert "15." in fp8  # twice the tokens in the same memory
    assert any(w.startswith("tensor_parallel_size 2 (2 GPUs") for w in would)
    assert "cannot be met within the bounds" in fit.notes[-1]


def test_free_memory_caps_the_utilization() -> None:
    ctx = ctx_32b()
    free = 0.91 * H200_TOTAL + memory.CUDA_CONTEXT_GIB + memory.FREE_CHECK_MARGIN_GIB + 0.005
    ceiling = utilization_ceiling(ctx, VllmArgs(), free_gib=free)
    assert (ceiling.utilization, ceiling.reason) == (0.91, "free GPU memory")
    fit = fit_target(ctx, VllmArgs(gpu_memory_utilization=0.9, max_model_len=32768), free_gib=free)
    assert fit.met is False and fit.args.gpu_memory_utilization == 0.91
    assert fit.would[0].startswith("utilization 0.92, which needs") and "GiB is free" in fit.would[0]


def test_cuda_graph_headroom_caps_the_utilization_and_eager_would_lift_it() -> None:
    ctx = ctx_32b(want=9, bound=1.0)
    ceiling = utilization_ceiling(ctx, VllmArgs())
    assert ceiling.reason == "CUDA-graph headroom"
    assert ceiling.utilization == memory.floor2((H200_TOTAL - memory.CUDA_GRAPH_ESTIMATE_GIB - memory.CUDA_CONTEXT_GIB)
                                                / H200_TOTAL)
    eager = utilization_ceiling(ctx, VllmArgs(enforce_eager=True))
    assert eager.utilization == 0.99 and eager.reason == "CUDA-graph headroom"


def test_max_num_seqs_below_the_target_is_raised() -> None:
    fit = fit_target(ctx_32b(want=12, context=4096), VllmArgs(max_num_seqs=8, max_model_len=32768))
    assert fit.met is True and fit.changes["max_num_seqs"] == [8, 12] and fit.args.max_num_seqs == 12


# ---------------------------------------------------------------- through `plan`


def h200_profile(tmp_path: Path, bound: float = 0.95, want: float = 8) -> Path:
    data = {
        "name": "h200-qwen3-32b", "hardware": {"gpu_name": "H200", "gpu_count": 1, "gpu_memory_gib": 141},
        "model": {"id": "Qwen/Qwen3-32B"},
        "vllm": {"gpu_memory_utilization": 0.9, "max_model_len": 32768},
        "recovery": {"max_gpu_memory_utilization": bound},
        "target": {"min_concurrency": want, "context": 32768},
    }
    path = tmp_path / "h200-qwen3-32b.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def plan_json(tmp_path: Path, profile: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
              *extra: str) -> dict[str, Any]:
    monkeypatch.setenv("LLM_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(SystemExit) as done:
        cli.main(["plan", "--profile", str(profile), "--gpu-memory-gib", str(H200_TOTAL),
                  "--vllm-version", VLLM, "--json", *extra])
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_plan_meets_a_reachable_target(tmp_path: Path, capsys, monkeypatch) -> None:
    data = plan_json(tmp_path, h200_profile(tmp_path), capsys, monkeypatch)
    argv = data["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.92"
    assert data["predicted"]["target_met"] is True and data["predicted"]["max_concurrency"] >= 8
    assert data["target_fit"]["met"] is True and data["target_fit"]["changes"] == {"gpu_memory_utilization": [0.9, 0.92]}
    speed = data["speed"]
    assert speed["gpu"]["name"] == "H200" and [p["users"] for p in speed["points"]] == [1, 8, 32]
    assert speed["users_at_tokens_per_s"]["20"]["users"] > 8


def test_plan_says_what_would_meet_an_unreachable_target(tmp_path: Path, capsys, monkeypatch) -> None:
    profile = h200_profile(tmp_path, bound=0.9)
    data = plan_json(tmp_path, profile, capsys, monkeypatch)
    assert data["target_fit"]["met"] is False and data["predicted"]["target_met"] is False
    assert data["target_fit"]["would"][0] == "recovery.max_gpu_memory_utilization ≥ 0.92"
    monkeypatch.setenv("LLM_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(SystemExit):
        cli.main(["plan", "--profile", str(profile), "--gpu-memory-gib", str(H200_TOTAL), "--vllm-version", VLLM])
    text = capsys.readouterr().out
    assert "target 8 requests of 32,768 tokens at once: NOT met (7.81 fit at utilization 0.9)" in text
    assert "it would with: recovery.max_gpu_memory_utilization ≥ 0.92; or target.context ≤ " in text
    assert "users at" not in text and "≥ 20 tok/s each:" in text


def test_plan_first_launch_off_keeps_the_profile_utilization(tmp_path: Path, capsys, monkeypatch) -> None:
    data = plan_json(tmp_path, h200_profile(tmp_path), capsys, monkeypatch, "--set", "recovery.plan_first_launch=false")
    argv = data["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert any("plan_first_launch is off" in n and "0.9 → 0.92" in n for n in data["notes"])


# ---------------------------------------------------------------- through the daemon


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (0.2, None))


def test_the_first_launch_meets_a_reachable_target(make) -> None:
    """4.2 requests of 24,576 tokens on a 4090 D: utilization 0.9 holds 4.02; the plan raises it
    within the bounds and the first launch meets the target (no "NOT met", no relaunch)."""
    async def scenario() -> None:
        h = make(sets=["target.min_concurrency=4.2", "target.context=24576",
                       "recovery.max_gpu_memory_utilization=0.95"]).start()
        status = await h.ready()
        assert [e for e, _ in h.events()] == ["launch", "ready"]
        assert status["gpu_memory_utilization"] == 0.93
        assert status["kv_cache_tokens"] / 24576 >= 4.2
        assert "NOT met" not in status["message"]
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
    asyncio.run(scenario())


def test_an_unreachable_target_serves_what_fits_and_says_so_with_the_engines_figures(make) -> None:
    """20 requests of 24,576 tokens do not fit a 4090 D at any utilization: the engine still
    starts (one launch, no relaunch loop) and the ready message says what the engine holds."""
    async def scenario() -> None:
        h = make(sets=["target.min_concurrency=20", "target.context=24576"]).start()
        status = await h.ready()
        assert [e for e, _ in h.events()] == ["launch", "ready"]
        have = status["kv_cache_tokens"] / 24576
        assert 4 < have < 20
        assert status["message"].endswith(f"service target NOT met: {have:.2f} requests of 24,576 tokens fit, "
                                          "the profile wants 20")
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
    asyncio.run(scenario())
