"""The speed model and the GPU table: the formulas' parts are checked by hand against the bytes
and FLOPs they stand for, the capacity limits against the KV cache and max_num_seqs, and the
calibration against points made from known factors."""

from __future__ import annotations

import math

import pytest

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import speed
from llm_supervisor.vllm.fit import FitContext
from llm_supervisor.vllm.gpuspecs import GPUS, find_gpu
from llm_supervisor.vllm.modelshape import GIB
from llm_supervisor.vllm.speed import MeasuredPoint, SpeedCalibration, Workload, fit_calibration, speed_model

H200_TOTAL = 139.8


def model_for(name: str, gpu: str, total: float, **args) -> tuple[FitContext, VllmArgs, speed.SpeedModel]:
    shape = load_shape(name)
    a = VllmArgs(**args)
    ctx = FitContext.of(shape, total, a.tensor_parallel_size * a.data_parallel_size, model=name, gpu_name=gpu,
                        tensor_parallel=a.tensor_parallel_size)
    m = speed_model(ctx, a, ctx.predict(a))
    assert m is not None
    return ctx, a, m


# ---------------------------------------------------------------- the GPU table


@pytest.mark.parametrize("nvml, card", [
    ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
    ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"), ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"),
    ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM"), ("NVIDIA L40S", "L40S"), ("NVIDIA L4", "L4"), ("NVIDIA A10", "A10"),
    ("NVIDIA GeForce RTX 4090 D", "RTX 4090 D"), ("RTX 4090 D", "RTX 4090 D"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA GeForce RTX 3090", "RTX 3090"), ("NVIDIA GeForce RTX 3080", "RTX 3080"),
])
def test_nvml_names_find_their_card(nvml: str, card: str) -> None:
    spec = find_gpu(nvml)
    assert spec is not None and spec.name == card


def test_the_table_covers_the_cards_and_cites_a_source() -> None:
    assert find_gpu("NVIDIA A40") is None and find_gpu(None) is None
    names = {g.name for g in GPUS}
    assert {"RTX 3080", "RTX 3090", "RTX 4090", "RTX 4090 D", "A10", "L4", "L40S", "A100 80GB SXM", "H100 SXM",
            "H200"} <= names
    for g in GPUS:
        assert g.source and g.bandwidth_gbs > 0 and g.bf16_tflops > 0 and g.pcie_gbs in (31.5, 63.0)
    h200 = find_gpu("NVIDIA H200")
    assert h200 is not None and h200.bandwidth == 4.8e12 and h200.flops == 989e12 and h200.fp8_kv
    assert not find_gpu("A10").fp8_kv  # type: ignore[union-attr]


# ---------------------------------------------------------------- one step, by hand


def test_one_user_is_weights_over_bandwidth_plus_the_fixed_cost() -> None:
    ctx, args, m = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL, gpu_memory_utilization=0.9, max_model_len=32768)
    p = ctx.predict(args)
    step = m.step(1, 0.0)
    # Qwen3-4B ties its embeddings: the lm_head reads them, so every weight byte is read each step
    assert step.memory == pytest.approx(p.weights_gib * GIB / (4.8e12 * speed.BANDWIDTH_EFFICIENCY))
    assert step.fixed == speed.STEP_OVERHEAD_S and step.pcie == 0 and step.allreduce == 0
    params = m.cost.flops_per_token / 2
    assert 3.8e9 < params < 4.5e9  # Qwen3-4B: about 4.0 billion parameters (lm_head counted once more)
    assert step.compute == pytest.approx(2 * params / (989e12 * speed.COMPUTE_EFFICIENCY))
    # the KV cache of each running request is read too: 1,000 tokens × 144 KiB
    more = m.step(1, 1000.0)
    assert more.memory - step.memory == pytest.approx(1000 * 147456 / (4.8e12 * speed.BANDWIDTH_EFFICIENCY))


def test_untied_embeddings_are_looked_up_not_read() -> None:
    ctx, args, m = model_for("Qwen/Qwen3-8B", "NVIDIA H200", H200_TOTAL)
    p = ctx.predict(args)
    shape = ctx.shape
    embed = shape.vocab_size * shape.hidden_size * 2
    assert m.cost.weight_bytes == pytest.approx(p.weights_gib * GIB - embed)


def test_tensor_parallel_over_pcie_pays_for_all_reduce() -> None:
    _, _, tp2 = model_for("Qwen/Qwen3-8B", "RTX 3080", 20.0, tensor_parallel_size=2)
    _, _, tp1 = model_for("Qwen/Qwen3-8B", "NVIDIA H200", H200_TOTAL)
    st = tp2.step(1, 0.0)
    assert st.allreduce == pytest.approx(2 * 36 * (speed.ALLREDUCE_LATENCY_S[False] + 1 * 4096 * 2 / 31.5e9))
    assert tp1.step(1, 0.0).allreduce == 0.0


def test_eager_mode_costs_launches_per_layer() -> None:
    _, _, graphs = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL)
    _, _, eager = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL, enforce_eager=True)
    assert eager.step(1, 0).fixed - graphs.step(1, 0).fixed == pytest.approx(36 * speed.EAGER_PER_LAYER_S)


# ---------------------------------------------------------------- users


def test_more_users_each_get_less_and_together_more() -> None:
    _, _, m = model_for("Qwen/Qwen3-32B", "NVIDIA H200", H200_TOTAL, gpu_memory_utilization=0.9)
    points = [m.at(u) for u in (1, 2, 8, 32, 64)]
    for a, b in zip(points, points[1:]):
        assert b.per_user_tokens_per_s < a.per_user_tokens_per_s
        assert b.tokens_per_s > a.tokens_per_s
    one = points[0]
    assert one.tpot_s == pytest.approx(1 / one.per_user_tokens_per_s)
    assert one.requests_per_s == pytest.approx(one.tokens_per_s / speed.DEFAULT_WORKLOAD_OUTPUT)
    # memory-bound at one user: 61 GiB of weights at 4.8 TB/s × 0.8 ≈ 17 ms a step
    assert 40 < one.per_user_tokens_per_s < 65
    assert 0.05 < one.ttft_s < 0.5


def test_users_beyond_the_kv_cache_queue_for_it() -> None:
    _, _, m = model_for("Qwen/Qwen3-4B", "RTX 4090 D", 24564 / 1024, gpu_memory_utilization=0.9, max_model_len=40960)
    w = Workload(1024, 256)
    slots, cap = m.slots(w)
    held = math.ceil((1024 + 128) / 16) * 16
    assert cap == "kv_cache" and slots == m.cost.kv_cache_tokens // held
    inside, beyond = m.at(slots, w), m.at(slots * 2, w)
    assert inside.limited_by is None and beyond.limited_by == "kv_cache"
    assert beyond.running == slots and beyond.tokens_per_s == pytest.approx(inside.tokens_per_s)
    assert beyond.ttft_s > inside.ttft_s + 10 * inside.tpot_s  # they wait whole requests
    n, why = m.users_at_rate(1.0, w)
    assert (n, why) == (slots, "kv_cache")


def test_max_num_seqs_caps_the_batch() -> None:
    _, _, m = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL, max_num_seqs=16)
    assert m.slots(Workload(128, 128)) == (16, "max_num_seqs")
    assert m.at(40, Workload(128, 128)).running == 16


def test_users_at_a_rate_is_the_largest_that_keeps_it() -> None:
    _, _, m = model_for("Qwen/Qwen3-32B", "NVIDIA H200", H200_TOTAL)
    n, why = m.users_at_rate(20.0)
    assert why == "speed" and n > 1
    assert m.at(n).per_user_tokens_per_s >= 20.0 > m.at(n + 1).per_user_tokens_per_s
    assert m.users_at_rate(10_000.0) == (0, "speed")


def test_data_parallel_replicas_share_the_users() -> None:
    _, _, one = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL)
    _, _, two = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL, data_parallel_size=2)
    assert two.at(16).per_user_tokens_per_s == pytest.approx(one.at(8).per_user_tokens_per_s)
    assert two.at(16).tokens_per_s == pytest.approx(2 * one.at(8).tokens_per_s)
    w = speed.Workload()
    assert (two.running(16, w), two.running(15, w), one.running(15, w)) == (8, 8, 15)
    slots, _ = two.slots(w)
    assert two.running(10 * slots, w) == slots == two.at(10 * slots).running // 2   # the rest queue


def test_unknown_gpu_gives_no_model() -> None:
    shape = load_shape("Qwen/Qwen3-4B")
    ctx = FitContext.of(shape, 48.0, 1, gpu_name="NVIDIA A40")
    assert speed_model(ctx, VllmArgs(), ctx.predict(VllmArgs())) is None


def test_summary_is_what_plan_shows() -> None:
    _, _, m = model_for("Qwen/Qwen3-4B", "RTX 4090 D", 24564 / 1024)
    s = m.summary()
    assert [p["users"] for p in s["points"]] == list(speed.PLAN_USERS)
    assert set(s["users_at_tokens_per_s"]) == {"10", "20"} and s["calibrated"] is False
    assert s["gpu"]["name"] == "RTX 4090 D" and s["workload"] == {"prompt_tokens": 1024, "output_tokens": 256}


# ---------------------------------------------------------------- calibration


def _measured(m: speed.SpeedModel, mem: float, comp: float, ttft: float, users: list[int]) -> list[MeasuredPoint]:
    truth = m.with_calibration(SpeedCalibration(mem, comp, ttft, 1))
    out = []
    for u in users:
        p = truth.at(u)
        out.append(MeasuredPoint(u, 1024, 256, p.per_user_tokens_per_s, running=p.running, ttft_s=p.ttft_s,
                                 tokens_per_s=p.tokens_per_s))
    return out


def test_calibration_recovers_the_memory_and_compute_factors() -> None:
    _, _, m = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL)
    cal = fit_calibration(m, _measured(m, 1.3, 0.7, 1.5, [1, 8, 32, 128, 256]), "test")
    assert cal.memory_factor == pytest.approx(1.3, rel=1e-3) and cal.compute_factor == pytest.approx(0.7, rel=1e-3)
    assert cal.ttft_factor == pytest.approx(1.5, rel=0.05) and cal.points == 5 and cal.calibrated
    fitted = m.with_calibration(cal)
    truth = m.with_calibration(SpeedCalibration(1.3, 0.7, 1.5, 1))
    assert fitted.at(64).per_user_tokens_per_s == pytest.approx(truth.at(64).per_user_tokens_per_s, rel=1e-3)


def test_calibration_recovers_a_first_token_that_grows_with_the_running_requests() -> None:
    """A serving path whose first token waits ~5 ms more per running request (as a Qwen3-4B shape
    did on an H200) is fitted as such, not as one factor on every TTFT."""
    _, _, m = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL)
    truth = m.with_calibration(SpeedCalibration(1.0, 1.0, 1.2, 1, "", 0.005))
    points = [MeasuredPoint(u, 1024, 256, truth.at(u).per_user_tokens_per_s, running=u, ttft_s=truth.at(u).ttft_s)
              for u in (1, 4, 16, 64)]
    cal = fit_calibration(m, points)
    assert cal.ttft_factor == pytest.approx(1.2, rel=0.02)
    assert cal.ttft_per_request_s == pytest.approx(0.005, rel=0.02)
    assert cal.to_json()["ttft_per_request_ms"] == pytest.approx(5.0, rel=0.02)
    assert m.with_calibration(cal).at(32).ttft_s == pytest.approx(truth.at(32).ttft_s, rel=0.01)
    # one load level cannot tell the two apart: a factor only
    single = fit_calibration(m, points[2:3])
    assert single.ttft_per_request_s == 0.0
    assert m.with_calibration(single).at(16).ttft_s == pytest.approx(truth.at(16).ttft_s, rel=0.01)
    # a first token that does not grow gets no per-request term
    flat = fit_calibration(m, _measured(m, 1.0, 1.0, 1.5, [1, 8, 32]))
    assert flat.ttft_per_request_s == pytest.approx(0.0, abs=1e-4) and flat.ttft_factor == pytest.approx(1.5, rel=0.02)


def test_one_point_scales_the_whole_step() -> None:
    _, _, m = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL)
    cal = fit_calibration(m, _measured(m, 1.2, 1.2, 1.0, [1]))
    assert cal.memory_factor == pytest.approx(1.2, rel=1e-3) == cal.compute_factor
    assert m.with_calibration(cal).at(1).per_user_tokens_per_s == pytest.approx(m.at(1).per_user_tokens_per_s / 1.2)


def test_no_usable_points_leave_it_uncalibrated() -> None:
    _, _, m = model_for("Qwen/Qwen3-4B", "NVIDIA H200", H200_TOTAL)
    assert fit_calibration(m, [MeasuredPoint(4, 100, 100, 0.0)]) == SpeedCalibration()
    wild = fit_calibration(m, [MeasuredPoint(1, 1024, 256, 1e6)])
    assert wild.memory_factor == speed.FACTOR_RANGE[0]  # clamped, not absurd
    point = MeasuredPoint(3, 10, 20, 5.5, running=2, ttft_s=0.1, tokens_per_s=11.0, queued=True)
    assert MeasuredPoint.from_json(point.to_json()) == point


# ---------------------------------------------------------------- against the simulator's own law


def test_the_simulators_step_law_is_its_own_and_agrees_within_a_quarter() -> None:
    """The simulator keeps an independent law (its own constants, no import of the speed model);
    on the same card and model the two agree within 25 % from 1 to 64 running requests."""
    from llm_supervisor.simulator.speed import StepLaw, model_params, step_law

    shape = load_shape("Qwen/Qwen3-4B")
    _, _, m = model_for("Qwen/Qwen3-4B", "NVIDIA GeForce RTX 4090 D", 24564 / 1024)
    law = step_law(lambda name, default: default, gpu_name="NVIDIA GeForce RTX 4090 D",
                   weight_bytes=m.cost.weight_bytes, offloaded_bytes=0.0,
                   params=model_params(shape.num_layers, shape.hidden_size, shape.intermediate_size, shape.num_heads,
                                       shape.num_kv_heads, shape.head_dim, shape.vocab_size),
                   tensor_parallel=1, kv_bytes_per_token=m.cost.kv_bytes_per_token)
    for running in (1, 8, 64):
        sim = law.duration(running, running * 1000, 0)
        assert m.step(running, 1000).total == pytest.approx(sim, rel=0.25), running
    fixed = step_law(lambda name, default: 40.0 if name == "TOKENS_PER_S" else default, gpu_name="x", weight_bytes=1e9,
                     offloaded_bytes=0.0, params=1, tensor_parallel=1, kv_bytes_per_token=1.0)
    assert fixed == StepLaw(1 / 40) and fixed.duration(50, 10**6, 10**4) == 1 / 40
    set_ = step_law(lambda name, default: {"STEP_S": 0.01, "STEP_PER_SEQ_S": 0.002}.get(name, default),
                    gpu_name="NVIDIA H200", weight_bytes=1e9, offloaded_bytes=0.0, params=1, tensor_parallel=1,
                    kv_bytes_per_token=0.0)
    assert set_.duration(5, 0, 0) == pytest.approx(0.02)


# ---------------------------------------------------------------- /metrics and the calibration file


def test_metrics_read_kv_usage_and_preemptions() -> None:
    from llm_supervisor.vllm.metrics import engine_metrics

    text = ('vllm:kv_cache_usage_perc{engine="0"} 0.25\nvllm:kv_cache_usage_perc{engine="1"} 0.97\n'
            'vllm:num_preemptions_total{engine="0"} 3.0\nvllm:num_preemptions_total{engine="1"} 2.0\n')
    m = engine_metrics(text)
    assert m.kv_cache_usage == 0.97 and m.preemptions_total == 5.0
    assert engine_metrics('vllm:gpu_cache_usage_perc{model_name="x"} 0.5\n').kv_cache_usage == 0.5


def test_calibration_file_keeps_speed_points_beside_the_memory_entries(tmp_path) -> None:
    import json

    from llm_supervisor.store.calibration import SPEED_POINTS_KEPT, Calibration

    cal = Calibration(tmp_path / "calibration.json")
    first = [MeasuredPoint(u, 512, 128, 50.0 - u) for u in (1, 2)]
    cal.record_speed("m", "0.26.0", "NVIDIA H200", 1, first, now=1.0, source="run 1")
    cal.record_speed("m", "0.26.0", "NVIDIA H200", 1, [MeasuredPoint(4, 512, 128, 40.0)], now=2.0, source="run 2")
    again = Calibration(tmp_path / "calibration.json")
    points, source = again.speed_points("m", None, "nvidia h200", 1)  # another version: the same GPU and TP
    assert [p.users for p in points] == [4, 1, 2] and source == "run 2"
    assert again.speed_points("m", "0.26.0", "NVIDIA H200", 2) == ([], "")
    # a memory observation written by the daemon keeps the speed section, and the other way round
    from llm_supervisor.vllm.calibration import Observation

    again.record(Observation("m", "0.26.0", "NVIDIA H200", 1, overhead_gib=0.8, learned_at=3.0))
    data = json.loads((tmp_path / "calibration.json").read_text())
    assert set(data) == {"format", "entries", "speed"} and len(data["entries"]) == 1
    many = [MeasuredPoint(u, 1, 1, 1.0) for u in range(1, 40)]
    cal.record_speed("m", "0.26.0", "NVIDIA H200", 1, many, now=4.0)
    assert len(Calibration(tmp_path / "calibration.json").speed_points("m", "0.26.0", "NVIDIA H200", 1)[0]) == SPEED_POINTS_KEPT
    assert len(Calibration(tmp_path / "calibration.json").entries()) == 1
    (tmp_path / "calibration.json").write_text('{"format": 1, "entries": {}, "speed": {"k": {"points": [{"users": "x"}]}}}')
    assert Calibration(tmp_path / "calibration.json").speed_points("m", None, "NVIDIA H200", 1) == ([], "")
