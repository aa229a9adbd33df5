"""The fit planner against real vLLM 0.26.0 numbers (H100 fixtures), its calibration store and
its launch checks. Predictions here are for vLLM 0.26.0 (the version of those fixtures); the other
versions' accounting is tested against their generated logs in tests/test_vllm_versions.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_supervisor.host import modelfiles
from llm_supervisor.vllm import calibration
from llm_supervisor.store import calibration as calibration_store
from llm_supervisor.vllm import cards
from llm_supervisor.vllm import fit
from llm_supervisor.vllm import memory
from llm_supervisor.store import atomic
from llm_supervisor.errors import BadInput
from llm_supervisor.vllm.modelshape import GIB, ModelShape
from llm_supervisor.store.calibration import Calibration
from llm_supervisor.vllm.calibration import CalibrationError
from llm_supervisor.vllm.fit import check_launch
from llm_supervisor.config.loader import load_profile
from llm_supervisor.planning.launch import fit_context
from llm_supervisor.config.profile import Profile, Recovery, Target, VllmArgs

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
H100 = "NVIDIA H100 80GB HBM3"
H100_TOTAL = 79.18  # "Free memory on device (78.66/79.18 GiB)"
MODEL = "Qwen/Qwen3-4B"
QWEN3_4B = modelfiles.load_shape(MODEL)
V026 = "0.26.0"


def predict(*args: object, **kwargs: object) -> fit.Prediction:
    """fit.predict for vLLM 0.26.0 unless a test names another version."""
    kwargs.setdefault("vllm_version", V026)
    return fit.predict(*args, **kwargs)  # type: ignore[arg-type]


def within(value: float, expected: float, fraction: float) -> bool:
    return abs(value - expected) <= fraction * abs(expected)


def profile_for(model: str = MODEL, **vllm: object) -> Profile:
    data = {"name": "t", "hardware": {"gpu_name": "H100", "gpu_count": 1, "gpu_memory_gib": 80},
            "model": {"id": model}, "vllm": vllm}
    return Profile.model_validate(data)


# ---------------------------------------------------------------- reading logs


def test_facts_of_the_warm_ready_log():
    facts = calibration_store.read_log_facts(FIXTURES / "ready-then-sigterm.log")
    assert facts["model_weights_gib"] == 7.56
    assert facts["available_kv_cache_gib"] == 15.36
    assert facts["kv_cache_tokens"] == 111808
    assert (facts["peak_activation_gib"], facts["non_torch_gib"]) == (0.62, 0.22)
    assert (facts["gpu_total_gib"], facts["gpu_memory_utilization"], facts["requested_gib"]) == (79.18, 0.3, 23.75)
    assert facts["compile_cached"] is True
    assert facts["max_num_batched_tokens"] == 8192 and facts["max_model_len"] == 10000
    assert facts["vllm_version"] == "0.26.0" and facts["tensor_parallel_size"] == 1


def test_facts_of_the_cold_and_the_failed_logs():
    cold = calibration_store.read_log_facts(FIXTURES / "ready-then-enginecore-killed.log")
    assert cold["compile_cached"] is False and cold["peak_activation_gib"] == 0.8
    failed = calibration_store.read_log_facts(FIXTURES / "kv-cache-too-small.log")
    assert failed["compile_cached"] is False
    assert failed["gpu_memory_utilization"] == 0.12 and failed["available_kv_cache_gib"] == 0.92
    assert failed["max_model_len"] == 40960 and "gpu_total_gib" not in failed


def test_learn_from_the_warm_log():
    obs = calibration_store.learn_from_log(FIXTURES / "ready-then-sigterm.log", model=MODEL, gpu_name=H100)
    assert obs.compile_cold is False
    assert within(obs.overhead_gib, 0.84, 0.001)  # 0.62 activation + 0.22 non-torch
    assert (obs.weights_gib, obs.kv_cache_tokens, obs.max_model_len) == (7.56, 111808, 10000)
    assert (obs.max_num_batched_tokens, obs.max_num_seqs, obs.tensor_parallel) == (8192, 1024, 1)
    assert obs.vllm_version == "0.26.0" and obs.cuda_graph_gib == 1.0


def test_learn_from_the_failed_log_needs_the_gpu_total():
    log = FIXTURES / "kv-cache-too-small.log"
    with pytest.raises(CalibrationError) as err:
        calibration_store.learn_from_log(log, model=MODEL, gpu_name=H100)
    assert isinstance(err.value, BadInput) and "requested memory" in err.value.lines()[0]
    obs = calibration_store.learn_from_log(log, model=MODEL, gpu_name=H100, gpu_total_gib=H100_TOTAL)
    # 0.12 × 79.18 − 7.56 weights − 0.92 available = 1.02 GiB, the cold overhead of the ready run
    assert obs.compile_cold is True and within(obs.overhead_gib, 1.02, 0.01)


def test_learn_from_facts_object_with_the_parser_names():
    @dataclass
    class Facts:  # the shape of logparse.StartupFacts
        model_weights_gib: float | None = 7.56
        available_kv_cache_gib: float | None = 15.17
        kv_cache_tokens: int | None = 110464
        max_concurrency: float | None = 11.05
        max_concurrency_context: int | None = 10000
        cuda_graph_gib: float | None = 1.0
        engine_init_seconds: float | None = 40.26
        tensor_parallel_size: int | None = 1
        vllm_version: str | None = "0.26.0"
        compile_cached: bool | None = False

    obs = calibration.learn_from_facts(Facts(), model=MODEL, gpu_name=H100, gpu_total_gib=H100_TOTAL,
                                   gpu_memory_utilization=0.3)
    assert within(obs.overhead_gib, 23.754 - 7.56 - 15.17, 0.001) and obs.compile_cold is True
    assert obs.max_model_len == 10000


# ---------------------------------------------------------------- predictions vs the fixtures


def test_cold_prediction_matches_the_cold_ready_run():
    """No calibration: util 0.30, max_model_len 10000 on an H100 → vLLM printed 15.17 GiB, 110,464."""
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000), H100_TOTAL, 1, gpu_name=H100)
    assert within(p.available_kv_cache_gib, 15.17, 0.25) and within(p.kv_cache_tokens, 110464, 0.25)
    assert within(p.available_kv_cache_gib, 15.17, 0.02) and within(p.kv_cache_tokens, 110464, 0.02)
    assert within(p.weights_gib, 7.56, 0.02) and p.weights_source == "estimate"
    assert p.kv_cache_tokens % 16 == 0 and p.kv_bytes_per_token == 147456
    assert p.max_model_len == 10000 and p.fits and p.compile_cold and not p.calibrated
    assert within(p.max_concurrency, 11.05, 0.02)
    assert (p.max_num_batched_tokens, p.max_num_seqs) == (8192, 1024)


def test_cold_prediction_matches_the_failed_small_run():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.12), H100_TOTAL, 1, gpu_name=H100)
    assert within(p.available_kv_cache_gib, 0.92, 0.25)
    # vLLM estimated 6688 as the largest length; the planner launches with what fits instead of 40960
    assert within(p.max_model_len, 6688, 0.25) and p.max_model_len % 16 == 0 and p.fits
    assert p.requested_max_model_len == 40960
    assert any("profile asks for 40,960" in n and f"launching with {p.max_model_len:,}" in n for n in p.notes)


def test_calibrated_on_the_warm_run_predicts_the_small_run_within_10_percent(tmp_path):
    cal = Calibration.in_state_dir(tmp_path)
    cal.learn_from_log(FIXTURES / "ready-then-sigterm.log", model=MODEL, gpu_name=H100)
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.12), H100_TOTAL, 1, calibration=cal,
                vllm_version="0.26.0", model=MODEL, gpu_name=H100)
    assert p.calibrated and p.weights_source == "calibration" and p.compile_cold  # new max_model_len: cold
    assert within(p.available_kv_cache_gib, 0.92, 0.10)
    assert within(p.kv_cache_tokens, 6688, 0.10) and within(p.max_model_len, 6688, 0.10)
    # without the cold-compile delta the warm overhead alone would over-promise by ~20%
    warm = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.12), H100_TOTAL, 1, calibration=cal,
                   model=MODEL, gpu_name=H100, vllm_version="0.26.0", compile_cached=True)
    assert warm.available_kv_cache_gib > 1.05


def test_calibration_predicts_the_same_configuration_exactly():
    obs = calibration_store.learn_from_log(FIXTURES / "ready-then-sigterm.log", model=MODEL, gpu_name=H100)
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000), H100_TOTAL, 1,
                calibration=obs, gpu_name=H100)
    assert not p.compile_cold  # same max_model_len as the calibration run: its compile cache is warm
    assert within(p.available_kv_cache_gib, 15.36, 0.003) and within(p.kv_cache_tokens, 111808, 0.003)


def test_a_cold_observation_predicts_the_warm_relaunch():
    obs = calibration_store.learn_from_log(FIXTURES / "ready-then-enginecore-killed.log", model=MODEL, gpu_name=H100)
    assert obs.compile_cold is True
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000), H100_TOTAL, 1,
                calibration=obs, gpu_name=H100)
    assert not p.compile_cold and within(p.kv_cache_tokens, 111808, 0.01)  # the warm run's figure
    cold = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.3, max_model_len=12000), H100_TOTAL, 1,
                   calibration=obs, gpu_name=H100)
    assert cold.compile_cold and within(cold.kv_cache_tokens, 110464, 0.003)


def test_prediction_json_has_the_contract_keys():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=40960), 23.99, 1)
    data = p.to_json()
    for key in ("weights_gib", "kv_bytes_per_token", "available_kv_cache_gib", "kv_cache_tokens",
                "max_concurrency", "max_model_len"):
        assert key in data
    json.dumps(data)
    assert data["max_model_len"] == 40960 and data["max_num_batched_tokens"] == 2048  # small-GPU default


# ---------------------------------------------------------------- fitting


def test_target_drives_max_model_len():
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=40960)
    free = predict(QWEN3_4B, args, 23.99, 1)
    p = predict(QWEN3_4B, args, 23.99, 1, target=Target(min_concurrency=8, context=8192))
    assert p.target_met is True and p.num_gpu_blocks == free.num_gpu_blocks
    # the longest context that still holds 8 requests at once
    assert p.max_model_len == p.num_gpu_blocks // 8 * 16
    assert p.max_concurrency >= 8 and p.concurrency_at(p.max_model_len + 16) < 8
    assert 8192 <= p.max_model_len < 40960
    assert any("keeps 8 requests" in n for n in p.notes)
    # vLLM's own choice (max context) would leave ~2.4 requests
    assert free.max_model_len == 40960 and free.max_concurrency < 3


def test_target_that_the_hardware_cannot_meet_says_so():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=40960), 23.99, 1,
                target=Target(min_concurrency=16, context=32768))
    assert p.target_met is False and p.max_model_len == 32768 and p.fits
    assert any(n.startswith("target not met") for n in p.notes)


def test_target_met_at_the_profile_context_keeps_it():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=16384), 23.99, 1,
                target=Target(min_concurrency=2, context=8192))
    assert p.target_met and p.max_model_len == 16384


def test_min_max_model_len_is_a_floor():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.115), H100_TOTAL, 1, gpu_name=H100,
                recovery=Recovery(min_max_model_len=4096))
    assert 0 < p.kv_cache_tokens < 4096
    assert p.max_model_len == 4096 and not p.fits
    assert any("below recovery.min_max_model_len 4,096" in n for n in p.notes)
    target = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.115), H100_TOTAL, 1, gpu_name=H100,
                     recovery=Recovery(min_max_model_len=4096), target=Target(min_concurrency=1, context=4096))
    assert target.max_model_len == 4096 and not target.fits and target.target_met is False
    assert any("do not fit" in n for n in target.notes)


def test_no_memory_left_for_the_cache():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.08), H100_TOTAL, 1, gpu_name=H100)
    assert p.available_kv_cache_gib < 0 and p.kv_cache_tokens == 0 and not p.fits
    assert any("no memory left for the KV cache" in n for n in p.notes)


def test_data_parallel_counts_every_replica_and_fp8_doubles_tokens():
    one = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192), 23.99, 2)
    two = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192, data_parallel_size=2), 23.99, 2)
    assert two.kv_cache_tokens == one.kv_cache_tokens
    assert two.max_concurrency == pytest.approx(2 * one.max_concurrency)
    fp8 = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192, kv_cache_dtype="fp8"), 23.99, 1)
    assert fp8.kv_bytes_per_token == 73728
    assert abs(fp8.kv_cache_tokens - 2 * one.kv_cache_tokens) <= 16


def test_tensor_and_pipeline_parallel_shares():
    shape = modelfiles.load_shape("Qwen/Qwen3-8B")
    tp2 = predict(shape, VllmArgs(tensor_parallel_size=2, max_model_len=16384), 20.0, 2)
    assert tp2.kv_bytes_per_token == 73728 and 7.4 < tp2.weights_gib < 7.9
    assert tp2.non_torch_gib > memory.NON_TORCH_GIB  # NCCL buffers with several GPUs
    pp2 = predict(shape, VllmArgs(pipeline_parallel_size=2, max_model_len=16384), 20.0, 2)
    assert pp2.kv_bytes_per_token == 73728  # 18 of 36 layers per GPU, all KV heads


def test_kv_cache_memory_bytes_overrides_the_budget():
    args = VllmArgs(max_model_len=8192, extra_args=["--kv-cache-memory-bytes", str(2 * GIB)])
    p = predict(QWEN3_4B, args, 23.99, 1)
    assert p.available_kv_cache_gib == pytest.approx(2.0)
    assert p.kv_cache_tokens == (2 * GIB) // (147456 * 16) * 16


def test_sliding_window_model_is_not_limited_by_one_full_context():
    cfg = json.loads((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    cfg.pop("use_sliding_window")
    cfg["sliding_window"] = 4096
    shape = ModelShape.from_config(cfg)
    args = VllmArgs(gpu_memory_utilization=0.12, max_num_batched_tokens=2048)
    p = predict(shape, args, H100_TOTAL, 1, gpu_name=H100)
    # a few thousand tokens of cache, yet a 40960-token request holds only window + batch tokens
    assert p.blocks_per_request(40960) == -(-(4096 - 1 + 2048) // 16) + 1
    assert p.kv_cache_tokens < 40960 and p.blocks_per_request(40960) <= p.num_gpu_blocks
    assert p.max_model_len == 40960 and p.largest_context == 40960 and p.fits
    full = predict(QWEN3_4B, args, H100_TOTAL, 1, gpu_name=H100)
    assert full.kv_cache_tokens == p.kv_cache_tokens and full.max_model_len < 40960


def test_hybrid_and_mla_models_are_planned_with_a_note():
    cfg = json.loads((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    cfg.update(use_sliding_window=True, sliding_window=4096, max_window_layers=18)
    p = predict(ModelShape.from_config(cfg), VllmArgs(max_model_len=8192), 23.99, 1)
    assert any("lower bounds" in n for n in p.notes) and p.fits


def test_headroom_warning_for_cuda_graphs():
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.97, max_model_len=8192), 23.99, 1)
    assert any("graph capture may run out of memory" in n for n in p.notes)
    ok = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192), 23.99, 1)
    assert not any("graph capture" in n for n in ok.notes)
    eager = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.97, max_model_len=8192, enforce_eager=True), 23.99, 1)
    assert not any("graph capture" in n for n in eager.notes)


def test_concurrency_table():
    rows = fit.concurrency_table(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9), 23.99, 1, vllm_version=V026)
    assert [r["context"] for r in rows] == [4096, 8192, 32768]
    tokens = rows[0]["kv_cache_tokens"]
    for r in rows:
        assert r["fits"] and r["max_concurrency"] == pytest.approx(tokens / r["context"], abs=0.01)
    text = fit.format_concurrency_table(rows)
    assert "| 8,192 |" in text
    tight = fit.concurrency_table(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.12), H100_TOTAL, 1,
                                  gpu_name=H100, vllm_version=V026)
    assert [r["fits"] for r in tight] == [True, False, False]


def test_fit_context_of_a_profile_reads_safetensors_headers(tmp_path):
    spec = importlib.util.spec_from_file_location("_modelinfo_tests", Path(__file__).with_name("test_modelinfo.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    qwen3_tensors, write_safetensors = helpers.qwen3_tensors, helpers.write_safetensors

    (tmp_path / "config.json").write_text((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    write_safetensors(tmp_path / "model.safetensors", qwen3_tensors(QWEN3_4B))
    prof = profile_for(str(tmp_path), gpu_memory_utilization=0.3, max_model_len=10000)
    p = fit_context(prof, H100_TOTAL, 1, gpu_name=H100, vllm_version=V026).predict(prof.vllm)
    assert p.weights_source == "safetensors" and within(p.weights_gib, 7.56, 0.01)
    assert within(p.kv_cache_tokens, 110464, 0.02)


def test_shipped_profiles_fit_their_stated_hardware():
    for name in ("4090d-qwen3-4b", "3080x2-qwen3-8b", "a10x8-qwen3-32b-awq"):
        prof = load_profile(name, PROFILES)
        total = cards.stated_total_gib(prof.hardware)
        shape = modelfiles.load_shape(prof.model.id)
        assert check_launch(shape, prof, prof.vllm, total, prof.hardware.gpu_count) == []
        p = fit_context(prof, total, prof.hardware.gpu_count, gpu_name=cards.gpu_label(prof.hardware.gpu_name),
                        vllm_version=V026).predict(prof.vllm)
        assert p.fits and p.max_model_len == prof.vllm.max_model_len, (name, p.notes)
        assert p.target_met in (None, True)
    assert cards.stated_total_gib(load_profile("a10x8-qwen3-32b-awq", PROFILES).hardware) == pytest.approx(22.49, abs=0.01)


# ---------------------------------------------------------------- launch checks


def test_tp3_on_a_32_head_model_is_refused():
    prof = profile_for(tensor_parallel_size=1)
    lines = check_launch(QWEN3_4B, prof, VllmArgs(tensor_parallel_size=3), 24.0, 3)
    assert lines == ["tensor_parallel_size 3 does not divide the 32 attention heads of Qwen/Qwen3-4B;"
                     " use 1, 2, 4, 8, 16 or 32"]


def test_kv_head_rule_as_vllm_applies_it():
    cfg = json.loads((modelfiles.BUNDLED_DIR / "Qwen--Qwen3-4B.json").read_text())
    cfg.update(num_attention_heads=24, num_key_value_heads=6)
    shape = ModelShape.from_config(cfg)
    lines = check_launch(shape, profile_for(), VllmArgs(tensor_parallel_size=4), 80.0, 4)
    assert len(lines) == 1 and "does not divide the 6 key-value heads" in lines[0] and "use 1, 2, 3, 6, 12 or 24" in lines[0]
    cfg.update(num_attention_heads=32, num_key_value_heads=8)
    assert check_launch(ModelShape.from_config(cfg), profile_for(), VllmArgs(tensor_parallel_size=16), 80.0, 16) == []


def test_context_above_the_model_limit_needs_allow_long_context():
    args = VllmArgs(max_model_len=50000)
    lines = check_launch(QWEN3_4B, profile_for(), args, 80.0, 1)
    assert len(lines) == 1 and "max_model_len 50000 is above the 40960 tokens" in lines[0]
    assert "recovery.allow_long_context" in lines[0]
    allowed = Profile.model_validate({**profile_for().model_dump(mode="json"), "recovery": {"allow_long_context": True}})
    assert check_launch(QWEN3_4B, allowed, args, 80.0, 1) == []


def test_weights_over_the_budget_and_too_few_gpus():
    shape = modelfiles.load_shape("Qwen/Qwen3-32B")
    prof = profile_for("Qwen/Qwen3-32B")
    lines = check_launch(shape, prof, VllmArgs(gpu_memory_utilization=0.9), 23.99, 1)
    assert len(lines) == 1 and lines[0].startswith("weights need 61.") and "use more GPUs" in lines[0]
    low = check_launch(QWEN3_4B, profile_for(), VllmArgs(gpu_memory_utilization=0.3), 23.99, 1)
    assert len(low) == 1 and "raise vllm.gpu_memory_utilization above 0.32" in low[0]
    many = check_launch(QWEN3_4B, profile_for(), VllmArgs(tensor_parallel_size=4, data_parallel_size=2), 24.0, 4)
    assert many == ["tensor_parallel_size 4 × pipeline_parallel_size 1 × data_parallel_size 2 needs 8 GPUs but 4 are present"]


def test_awq_group_alignment():
    shape = modelfiles.load_shape("Qwen/Qwen3-32B-AWQ")
    prof = profile_for("Qwen/Qwen3-32B-AWQ")
    lines = check_launch(shape, prof, VllmArgs(tensor_parallel_size=16), 24.0, 16)
    assert len(lines) == 1 and "not a multiple of the awq group size 128" in lines[0] and "use 1, 2, 4 or 8" in lines[0]


# ---------------------------------------------------------------- the calibration store


def test_store_round_trip_and_lookup(tmp_path):
    cal = Calibration.in_state_dir(tmp_path)
    obs = cal.learn_from_log(FIXTURES / "ready-then-sigterm.log", model=MODEL, gpu_name=H100)
    cal.learn_from_log(FIXTURES / "kv-cache-too-small.log", model=MODEL, gpu_name=H100, gpu_total_gib=H100_TOTAL)
    again = Calibration.in_state_dir(tmp_path)
    assert again.warnings == []
    entry = again.lookup(MODEL, "0.26.0", "  nvidia h100 80gb HBM3 ", 1)
    assert entry is not None and entry.warm is not None and entry.cold is not None
    assert entry.warm.overhead_gib == obs.overhead_gib and entry.warm.max_num_batched_tokens == 8192
    assert entry.cold.compile_cold and within(entry.cold.overhead_gib, 1.02, 0.01)
    assert entry.warm.learned_at > 0
    # another vLLM version falls back to the newest entry of the same model, GPU and TP
    assert again.lookup(MODEL, "0.27.0", H100, 1) is entry
    assert again.lookup(MODEL, "0.26.0", H100, 2) is None
    assert again.lookup(MODEL, "0.26.0", "NVIDIA A10", 1) is None
    data = json.loads((tmp_path / "calibration.json").read_text())
    key = calibration.calibration_key(MODEL, "0.26.0", H100, 1)
    assert data["format"] == 1 and data["entries"][key]["warm"]["overhead_gib"] == pytest.approx(0.84)


def test_corrupt_calibration_file_is_ignored_with_a_warning(tmp_path, caplog):
    path = tmp_path / "calibration.json"
    path.write_text('{"entries": {"x": ')
    with caplog.at_level(logging.WARNING, logger="llm_supervisor.vllm.planner"):
        cal = Calibration(path)
    assert cal.entries() == [] and len(cal.warnings) == 1 and "corrupt" in cal.warnings[0]
    assert "corrupt" in caplog.text
    # predicting with it works (no calibration), and learning replaces the bad file
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000), H100_TOTAL, 1,
                calibration=cal, model=MODEL, gpu_name=H100)
    assert not p.calibrated
    cal.learn_from_log(FIXTURES / "ready-then-sigterm.log", model=MODEL, gpu_name=H100)
    assert Calibration(path).warnings == [] and len(Calibration(path).entries()) == 1


def test_bad_entries_are_skipped_not_fatal(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"format": 1, "entries": {"a": {"model": MODEL}, "b": "nonsense",
                                                          "c": {"model": MODEL, "gpu_name": H100, "tensor_parallel": 1,
                                                                "vllm_version": "0.26.0",
                                                                "warm": {"model": MODEL, "vllm_version": "0.26.0",
                                                                         "gpu_name": H100, "tensor_parallel": 1,
                                                                         "overhead_gib": 0.9}}}}))
    cal = Calibration(path)
    assert len(cal.entries()) == 1 and len(cal.warnings) == 2
    for content in ("[]", "null", '{"entries": []}'):
        path.write_text(content)
        assert Calibration(path).entries() == []


def test_write_is_atomic(tmp_path, monkeypatch):
    cal = Calibration.in_state_dir(tmp_path)
    cal.learn_from_log(FIXTURES / "ready-then-sigterm.log", model=MODEL, gpu_name=H100)
    path = tmp_path / "calibration.json"
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", crash)  # the one atomic writer
    with pytest.raises(OSError):
        cal.learn_from_log(FIXTURES / "kv-cache-too-small.log", model=MODEL, gpu_name=H100, gpu_total_gib=H100_TOTAL)
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json"]  # no temporary left behind
    monkeypatch.undo()
    cal.learn_from_log(FIXTURES / "kv-cache-too-small.log", model=MODEL, gpu_name=H100, gpu_total_gib=H100_TOTAL)
    assert Calibration(path).lookup(MODEL, "0.26.0", H100, 1).cold is not None
    assert os.stat(path).st_size > len(before)


def test_unreadable_log_is_bad_input(tmp_path):
    with pytest.raises(BadInput) as bad:
        calibration_store.learn_from_log(tmp_path / "missing.log", model=MODEL, gpu_name=H100)
    assert bad.value.lines() == [f"{tmp_path / 'missing.log'}: no such file"] and bad.value.exit_code == 2
    empty = tmp_path / "empty.log"
    empty.write_text("nothing useful\n")
    with pytest.raises(CalibrationError) as err:
        calibration_store.learn_from_log(empty, model=MODEL, gpu_name=H100, gpu_total_gib=80.0)
    assert len(err.value.lines()) == 1 and "no vLLM startup figures in it" in err.value.lines()[0]
    partial = tmp_path / "partial.log"  # weights printed, then it ended: what is missing is named
    partial.write_text("".join(line for line in (FIXTURES / "ready-then-sigterm.log").open(encoding="utf-8")
                               if "Model loading took" in line))
    with pytest.raises(CalibrationError) as err:
        calibration_store.learn_from_log(partial, model=MODEL, gpu_name=H100, gpu_total_gib=80.0)
    assert [line.split(": ", 1)[1] for line in err.value.lines()] == [
        'cannot learn the overhead: no available KV cache ("Available KV cache memory")',
        "cannot learn the overhead: no requested memory (the utilization and the GPU's total)"]


def test_default_batch_limits():
    assert memory.default_batch_limits(79.18, H100, "0.26.0") == (8192, 1024)
    assert memory.default_batch_limits(79.15, "NVIDIA A100-SXM4-80GB", "0.26.0") == (2048, 256)
    assert memory.default_batch_limits(23.99, "NVIDIA GeForce RTX 4090 D", "0.26.0") == (2048, 256)
    assert memory.default_batch_limits(79.18, H100, "0.8.5") == (8192, 256)


def test_facts_take_the_smallest_worker_and_read_the_v0_summary(tmp_path):
    text = "\n".join([
        "(Worker_TP0 pid=1) INFO 01-01 00:00:00 [gpu_worker.py:298] Available KV cache memory: 5.50 GiB",
        "(Worker_TP1 pid=2) INFO 01-01 00:00:00 [gpu_worker.py:298] Available KV cache memory: 5.25 GiB",
        "(EngineCore_DP0 pid=3) INFO 01-01 00:00:00 [kv_cache_utils.py:1087] GPU KV cache size: 76,448 tokens",
        "(EngineCore_DP0 pid=3) INFO 01-01 00:00:00 [kv_cache_utils.py:1087] GPU KV cache size: 76,432 tokens",
    ])
    (tmp_path / "tp.log").write_text(text)
    facts = calibration_store.read_log_facts(tmp_path / "tp.log")
    assert facts["available_kv_cache_gib"] == 5.25 and facts["kv_cache_tokens"] == 76432
    v0 = ("INFO 05-01 10:00:00 [worker.py:271] Memory profiling takes 3.10 seconds\r\n"
          "INFO 05-01 10:00:00 [worker.py:271] the current vLLM instance can use total_gpu_memory (23.65GiB)"
          " x gpu_memory_utilization (0.90) = 21.28GiB\r\n"
          "INFO 05-01 10:00:00 [worker.py:271] model weights take 7.55GiB; non_torch_memory takes 0.09GiB;"
          " PyTorch activation peak memory takes 1.41GiB; the rest of the memory reserved for KV Cache is 12.23GiB.")
    (tmp_path / "v0.log").write_text(v0)
    facts = calibration_store.read_log_facts(tmp_path / "v0.log")
    assert (facts["gpu_total_gib"], facts["gpu_memory_utilization"], facts["requested_gib"]) == (23.65, 0.9, 21.28)
    assert (facts["peak_activation_gib"], facts["non_torch_gib"], facts["available_kv_cache_gib"]) == (1.41, 0.09, 12.23)
    obs = calibration.learn_from_facts(facts, model=MODEL, gpu_name="NVIDIA GeForce RTX 4090", vllm_version="0.6.6")
    assert obs.overhead_gib == pytest.approx(1.50) and obs.compile_cold is None


def test_docs_table_is_generated_from_the_code():
    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("_planner_table", root / "scripts" / "planner_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.build_table(PROFILES, memory.DEFAULT_VLLM_VERSION)
    assert "| `4090d-qwen3-4b` | 1× RTX 4090 D (23.99 GiB) | Qwen/Qwen3-4B | TP 1 | 0.9 | 7.56 GiB | 144 KiB |" in table
    doc = (root / "docs" / "planner.md").read_text(encoding="utf-8")
    assert table in doc, "docs/planner.md is stale: run python3 scripts/planner_table.py --write docs/planner.md"


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(util=st.floats(0.05, 0.97), asked=st.integers(256, 40960), total=st.sampled_from([20.0, 23.99, 79.18]),
       want=st.one_of(st.none(), st.tuples(st.floats(0.5, 40), st.integers(256, 40960))))
def test_what_the_planner_launches_always_fits(util, asked, total, want):
    target = Target(min_concurrency=want[0], context=want[1]) if want else None
    p = predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=util, max_model_len=asked), total, 1, target=target,
                recovery=Recovery(min_max_model_len=256))
    assert p.kv_cache_tokens % 16 == 0 and p.kv_cache_tokens >= 0
    if p.fits:
        assert p.max_model_len <= p.kv_cache_tokens and p.max_model_len <= asked
        assert p.max_model_len in (asked, want[1] if want else asked) or p.max_model_len % 16 == 0
        assert p.max_concurrency >= 1 - 1e-9
    else:
        assert p.kv_cache_tokens < max(p.max_model_len, 256) or p.available_kv_cache_gib <= 0
    if p.target_met:
        assert p.concurrency_at(p.max_model_len) + 1e-9 >= want[0] and p.max_model_len >= want[1]
    if target is None and p.fits and p.max_model_len < asked:
        assert p.max_model_len + 16 > p.kv_cache_tokens  # the largest that fits, not less


def test_the_engines_private_port_is_never_one_the_supervisor_binds(monkeypatch) -> None:
    """The kernel may hand out the front door's or the API's port (both can lie in its ephemeral
    range, as tests' ports do) just before the supervisor binds it: such a choice is drawn again."""
    from llm_supervisor.planning import launch

    offered = iter([45671, 8900, 45671, 38211])

    class Sock:
        def __init__(self, *args) -> None:
            self.port = next(offered)

        def __enter__(self) -> "Sock":
            return self

        def __exit__(self, *exc) -> None:
            return None

        def bind(self, address) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(launch.socket, "socket", Sock)
    assert launch.free_loopback_port({45671, 8900}) == 38211
