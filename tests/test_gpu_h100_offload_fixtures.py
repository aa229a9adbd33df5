"""Real vLLM 0.26.0 on an H100 80GB HBM3 (tests/fixtures/vllm-0.26.0-h100/h100-offload*): the
capacity script's `offload` scenario, Qwen3-32B's shape (61 GiB of bf16 weights) at a 24 GB
budget, on a card and a host the offload plan was never measured on (its figures came from an
H200: tests/fixtures/vllm-0.26.0/offload-fp8-planned-ready-first-launch.log).

What they hold: the plan the supervisor makes for that budget is the launch that ran (42 GiB
offloaded, fp8 KV cache, eager, 16 sequences, 2,672 tokens) and it was ready at the first launch;
vLLM printed the same weights and overhead on both cards; the planned KV tokens sit on the safe
side of what vLLM printed; the planned decode rate sits below what either host reached (the
hosts' PCIe reads differ by 1.4×), and one measured point calibrates it to this host."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_supervisor.config.profile import Recovery, VllmArgs
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.store.calibration import CALIBRATION_FILE as CALIBRATION_NAME, Calibration
from llm_supervisor.vllm import speed
from llm_supervisor.vllm.fit import FitContext
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.vllm.lowmem import LowMemoryPlan, plan_low_memory

FIXTURES = Path(__file__).parent / "fixtures"
H100_LOG = FIXTURES / "vllm-0.26.0-h100" / "h100-offload-fp8-planned-ready-first-launch.log"
H200_LOG = FIXTURES / "vllm-0.26.0" / "offload-fp8-planned-ready-first-launch.log"
RECORD = json.loads((FIXTURES / "vllm-0.26.0-h100" / "h100-offload.json").read_text())
# the same scenario again, then `bench --find-capacity` on the running engine: its record and the
# calibration file the daemon and the search wrote
CALIBRATED = json.loads((FIXTURES / "vllm-0.26.0-h100" / "h100-offload-calibrated.json").read_text())
CALIBRATION_FILE = FIXTURES / "vllm-0.26.0-h100" / "h100-offload-calibrated.calibration.json"
H100_TOTAL = 79.18  # GiB as torch sees an H100 80GB HBM3 (the engine log's "/79.18 GiB")
UTIL = 0.27         # 21.38 GiB of it, the 24 GB budget
BENCH = speed.Workload(512, 16)   # the scenario's `bench --users 1 --requests 2 --max-tokens 16`
GENERATION = re.compile(r"Avg generation throughput: ([\d.]+) tokens/s, Running: 1 reqs")


def facts(path: Path) -> StartupFacts:
    return parse_log_file(path).facts


def h100_plan(measured: list[speed.MeasuredPoint] | None = None) -> tuple[FitContext, LowMemoryPlan]:
    """The plan for the scenario's profile: util 0.27 and 8,192 tokens asked, offload up to 48 GiB,
    the host's 125 GiB of free RAM; its speed calibrated with `measured` (none: a fresh state
    directory)."""
    ctx = FitContext.of(load_shape("Qwen/Qwen3-32B"), H100_TOTAL, 1, vllm_version="0.26.0", model="Qwen/Qwen3-32B",
                        gpu_name="NVIDIA H100 80GB HBM3", host_available_gib=125,
                        recovery=Recovery(max_cpu_offload_gb=48, min_max_model_len=2048,
                                          min_gpu_memory_utilization=0.1, max_gpu_memory_utilization=UTIL))
    low = plan_low_memory(ctx, VllmArgs(gpu_memory_utilization=UTIL, max_model_len=8192), measured=measured or ())
    assert low is not None and low.usable_now
    return ctx, low


def test_the_plan_is_the_launch_that_ran_and_it_was_ready_at_the_first_launch() -> None:
    _, low = h100_plan()
    planned = RECORD["planned"]
    assert low.summary() == planned["summary"]
    assert low.offload_gib == planned["offload_gib"] == 42
    assert low.changes == planned["changes"]
    assert low.prediction.max_model_len == RECORD["predicted_max_model_len"] == 2672
    assert RECORD["attempt"] == 1 and RECORD["argv_offload"] == "42"
    f = facts(H100_LOG)
    assert f.max_model_len == 2672 and f.kv_cache_dtype == "fp8" and f.enforce_eager
    assert f.cpu_offloaded_gib == 42.44 and f.kv_cache_tokens == RECORD["kv_cache_tokens"] == 7552


def test_vllm_printed_the_same_weights_and_overhead_on_both_cards() -> None:
    """The same plan's arguments on two cards (util 0.27 of 79.18 GiB, 0.153 of 139.8): the model
    walks the same layers off the GPU, and the V1 runner's eager start peaks the same."""
    h100, h200 = facts(H100_LOG), facts(H200_LOG)
    for f in (h100, h200):
        assert f.model_weights_gib == pytest.approx(18.62, abs=0.01)
        assert (f.peak_activation_gib, f.non_torch_gib) == (1.52, 0.32)
    assert (h100.cpu_offloaded_gib, h200.cpu_offloaded_gib) == (42.44, 42.44)


def test_the_planned_kv_cache_is_on_the_safe_side_of_what_vllm_printed() -> None:
    """6,768 planned against 7,552 printed (−10 %, as on the H200: 6,864 against 7,648): the
    uncalibrated offload margin, and whole blocks."""
    _, low = h100_plan()
    printed = facts(H100_LOG).kv_cache_tokens
    assert low.prediction.kv_cache_tokens == RECORD["predicted_kv_cache_tokens"] == 6768
    assert printed is not None and 0.85 * printed <= low.prediction.kv_cache_tokens <= printed


def test_the_planned_decode_rate_is_below_what_either_host_reached() -> None:
    """vLLM's own 10-second averages with one request running: up to 1.1 tokens/s on the H100's
    host, up to 0.9 on the H200's. A user measured 1.1 and 0.80: 42.44 GiB crossed PCIe 5.0 x16 at
    about 50 GB/s (80 %, the H100 host's pinned copy rate) against 36 GB/s (58 %). The model takes
    the slower host's share, so the plan promises what both gave, and a measured point (what
    `bench --find-capacity` keeps) brings it to this host's rate."""
    ctx, low = h100_plan()
    model = speed.speed_model(ctx, low.args, low.prediction)
    assert model is not None
    planned = model.at(1, BENCH).per_user_tokens_per_s
    assert planned == pytest.approx(RECORD["predicted_decode_tokens_per_s_at_bench"], abs=0.001)
    reached = {path.parent.name: max(float(x) for x in GENERATION.findall(path.read_text()))
               for path in (H100_LOG, H200_LOG)}
    assert reached == {"vllm-0.26.0-h100": 1.1, "vllm-0.26.0": 0.9}
    assert all(planned < rate for rate in reached.values())
    assert planned < RECORD["measured_decode_tokens_per_s"] == 1.1
    measured = [speed.MeasuredPoint(1, BENCH.prompt_tokens, BENCH.output_tokens, RECORD["measured_decode_tokens_per_s"])]
    calibrated = speed.speed_model(ctx, low.args, low.prediction, measured)
    assert calibrated is not None and calibrated.at(1, BENCH).per_user_tokens_per_s == pytest.approx(1.1, rel=0.05)
    _, again = h100_plan(measured)
    assert again.args == low.args and "about 1.1 tokens/s" in again.summary()


def test_the_search_the_real_engine_answered_calibrates_the_next_plan_to_this_host(tmp_path: Path) -> None:
    """A second run: the same plan and KV cache, one user at 1.04 tokens/s, then a short `bench
    --find-capacity` (8-token replies, 1.05 tokens/s for one user and for each of two); the
    calibration file it left makes the low-memory line give this host's rate, as `plan` beside the
    running engine did (1.05 against 0.75 before)."""
    assert (CALIBRATED["attempt"], CALIBRATED["kv_cache_tokens"], CALIBRATED["argv_offload"]) == (1, 7552, "42")
    after = CALIBRATED["after_find_capacity"]
    assert after["speed_calibrated"] and after["tokens_per_s"] == 1.05 and CALIBRATED["ok"]
    state = tmp_path / "state"
    state.mkdir()
    (state / CALIBRATION_NAME).write_text(CALIBRATION_FILE.read_text())
    points, source = Calibration.in_state_dir(state, readonly=True).speed_points(
        "/tmp/models/qwen3-32b", "0.26.0", "NVIDIA H100 80GB HBM3", 1)
    assert [(p.users, p.per_user_tokens_per_s) for p in points] == [(1, 1.05), (2, 1.05)]
    assert source.startswith("bench --find-capacity")
    (_, low), (_, again) = h100_plan(), h100_plan(points)
    assert again.args == low.args
    assert low.tokens_per_s == pytest.approx(0.75, abs=0.01)
    assert again.tokens_per_s == pytest.approx(CALIBRATED["measured_decode_tokens_per_s"], rel=0.05)
