"""vLLM 0.8.5 → 0.34.0: `diagnose` against every log generated from the wheels' own source
(tests/fixtures/generated/vllm-*/, each with expected.json), the planner against each version's
generated ready log, and what each version's accounting, batch defaults and calibration mean.

Facts a version does not print must come out null, never a number from another line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.host.logfiles import diagnose_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.store.calibration import read_log_facts
from llm_supervisor.vllm import fit, memory
from llm_supervisor.vllm.calibration import learn_from_facts
from llm_supervisor.vllm.memory import Accounting

GENERATED = Path(__file__).parent / "fixtures" / "generated"
VERSIONS = sorted((p for p in GENERATED.glob("vllm-*") if p.is_dir()), key=lambda p: memory.parse_version(p.name[5:]))
CASES = [(folder, name) for folder in VERSIONS
         for name in json.loads((folder / "expected.json").read_text(encoding="utf-8"))["scenarios"]]
H100 = "NVIDIA H100 80GB HBM3"
H100_TOTAL = 79.18
QWEN3_4B = load_shape("Qwen/Qwen3-4B")


def expected(folder: Path, name: str) -> dict[str, Any]:
    return json.loads((folder / "expected.json").read_text(encoding="utf-8"))["scenarios"][name]


def prints_version(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return "version " in text or "LLM engine (v" in text


@pytest.mark.parametrize("folder,name", CASES, ids=[f"{f.name}/{n}" for f, n in CASES])
def test_diagnose_reads_every_generated_log(folder: Path, name: str) -> None:
    want = expected(folder, name)
    got = diagnose_file(folder / name)
    assert set(got) == {"vllm_version", "outcome", "facts", "failure", "remedy"}  # CONTRACT's shape
    if prints_version(folder / name):
        assert got["vllm_version"] == want["vllm_version"]
    else:  # HiSparse's one-line sample prints no version: nothing to read it from
        assert got["vllm_version"] is None
    assert got["outcome"] == want["outcome"]
    assert got["facts"] == want["facts"]  # every fact, null where that version prints none
    if want["failure"] is None:
        assert got["failure"] is None and got["remedy"] is None
        return
    assert got["failure"]["kind"] == want["failure"]["kind"]
    for key, value in want["failure"]["values"].items():
        assert got["failure"]["values"][key] == value, key
    assert set(got["failure"]["values"]) - set(want["failure"]["values"]) <= {"gpu"}  # the OOM's device
    assert got["remedy"] and got["remedy"]["why"]


def test_facts_a_version_does_not_print_are_null() -> None:
    """0.8.5 prints no available KV memory; a failed start prints no KV size; 0.34's cache size is
    the post-warm-up one, never the pre-warm-up estimate."""
    old = diagnose_file(GENERATED / "vllm-0.8.5" / "ready.log")["facts"]
    assert old["available_kv_cache_gib"] is None and old["kv_cache_tokens"] == 106672
    new = diagnose_file(GENERATED / "vllm-0.34.0" / "ready.log")["facts"]
    assert new["available_kv_cache_gib"] == 14.13  # not 15.17, the 'Available KV cache memory' estimate


def test_0_34_remedies_follow_what_0_34_does() -> None:
    # the KV error before warm-up: the cache after warm-up also loses the CUDA graphs
    pre = diagnose_file(GENERATED / "vllm-0.34.0" / "kv-cache-too-small.log")
    assert pre["remedy"]["max_model_len"] < pre["failure"]["values"]["estimated_max_model_len"]
    assert "after warm-up" in pre["remedy"]["why"]
    # the KV error after warm-up, bound by free device memory (another process): cut the context,
    # leave the utilization alone
    post = diagnose_file(GENERATED / "vllm-0.34.0" / "kv-cache-too-small-after-warmup.log")
    # (vLLM's estimate, 6640, in 0.34's 64-token blocks: 6592; the generated log keeps 16-token ones)
    assert post["remedy"]["max_model_len"] == 6592 and "gpu_memory_utilization" not in post["remedy"]
    assert "free device memory, not the utilization" in post["remedy"]["why"]
    # 0.26 and 0.33 for the same situation: vLLM refused the start, and the fix is a lower utilization
    for version in ("0.26.0", "0.33.0"):
        refused = diagnose_file(GENERATED / f"vllm-{version}" / "insufficient-free-memory.log")
        assert refused["remedy"]["gpu_memory_utilization"] < 0.3


def test_external_weights_free_memory_check_counts_the_weights_back() -> None:
    """0.32+ with weights held by another process compares free memory with the budget less those
    weights (16.2 GiB of 23.75): the new utilization adds them back."""
    for version in ("0.32.0", "0.33.0"):
        got = diagnose_file(GENERATED / f"vllm-{version}" / "insufficient-free-memory-external-weights.log")
        assert got["failure"]["kind"] == "insufficient_free_memory"
        util = got["remedy"]["gpu_memory_utilization"]
        # (15.1 free − 1.58 margin + 7.55 external) / 79.18 → 0.26, not (15.1 − 1.58) / 79.18 = 0.17
        assert util == 0.26, got["remedy"]
        assert "external weights" in got["remedy"]["why"]


@pytest.mark.parametrize("version,accounting", [
    ("0.8.5", Accounting.BUDGET_0_8), ("0.26.0", Accounting.BUDGET_0_26), ("0.28.0", Accounting.BUDGET_0_26),
    ("0.30.0", Accounting.BUDGET_0_30), ("0.31.0", Accounting.BUDGET_0_30), ("0.32.0", Accounting.BUDGET_0_30),
    ("0.33.0", Accounting.BUDGET_0_30),
])
def test_planner_predicts_each_versions_generated_ready_log(version: str, accounting: Accounting) -> None:
    """The generated scenario: Qwen3-4B on an H100, util 0.3, max-model-len 10000, cold compile.
    (0.34 spends differently beyond the weights, which the generated logs' fixed figures do not
    show: its planner is checked against the real H200 log below.)"""
    want = expected(GENERATED / f"vllm-{version}", "ready.log")["facts"]
    p = fit.predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.3, max_model_len=10000), H100_TOTAL, 1,
                    gpu_name=H100, model="Qwen/Qwen3-4B", vllm_version=version)
    assert p.accounting == str(accounting) and p.vllm_version == version
    assert p.kv_cache_tokens == pytest.approx(want["kv_cache_tokens"], rel=0.004), (p.kv_cache_tokens, want)
    assert p.max_concurrency == pytest.approx(want["max_concurrency"], abs=0.04)
    if want["available_kv_cache_gib"] is not None:
        assert p.available_kv_cache_gib == pytest.approx(want["available_kv_cache_gib"], abs=0.06)


REAL_0_34 = Path(__file__).resolve().parent / "fixtures" / "vllm-0.34.0-h200"


@pytest.mark.parametrize("util, length, name, attempt, tokens, before, after", [
    (0.15, 40960, "ready-enginecore-killed-daemon-killed.log", 1, 78848, 11.68, 10.83),
    (0.09, 17856, "kv-cache-too-small-recovered.log", 3, 17920, 3.29, 2.46),
])
def test_planner_predicts_real_vllm_0_34_on_an_h200(tmp_path: Path, util: float, length: int, name: str, attempt: int,
                                                    tokens: int, before: float, after: float) -> None:
    """Qwen3-4B (dummy weights) on an H200 that torch sees as 139.8 GiB: the pre-warm-up estimate
    vLLM printed, the cache it sized after warm-up (in whole 2 MiB pages of 64-token blocks) and its
    tokens, exactly, with no calibration."""
    text = (REAL_0_34 / name).read_text(encoding="utf-8")
    part = text.split("===== llm-supervisor attempt ")[attempt]
    (tmp_path / "attempt.log").write_text(part, encoding="utf-8")
    printed = diagnose_file(tmp_path / "attempt.log")["facts"]
    assert (printed["kv_cache_tokens"], printed["available_kv_cache_gib"]) == (tokens, after)
    assert f"Available KV cache memory: {before} GiB" in part
    p = fit.predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=util, max_model_len=length), 139.8, 1,
                    gpu_name="NVIDIA H200", model="Qwen/Qwen3-4B", vllm_version="0.34.0")
    assert p.accounting == str(Accounting.EXTENSIBLE_0_34) and p.kv_cache_bound == "budget"
    assert p.kv_cache_tokens == tokens
    assert round(p.available_kv_cache_gib, 2) == after
    assert p.available_kv_cache_gib_before_warmup == pytest.approx(before, abs=0.01)


def test_accounting_follows_the_flags_that_turn_0_34s_extensible_cache_off() -> None:
    assert memory.accounting_for("0.34.0") is Accounting.EXTENSIBLE_0_34
    assert memory.accounting_for(None) is Accounting.EXTENSIBLE_0_34  # the newest, when unknown
    for flag in ("--no-enable-extensible-kv-cache", "--kv-cache-memory-bytes=8G", "--num-gpu-blocks-override"):
        assert memory.accounting_for("0.34.0", [flag]) is Accounting.BUDGET_0_30
    assert memory.accounting_for("0.35.2") is Accounting.EXTENSIBLE_0_34
    assert memory.version_notes("0.35.2") and "newer than" in memory.version_notes("0.35.2")[0]
    assert memory.version_notes("0.29.0") and "not read" in memory.version_notes("0.29.0")[0]
    assert memory.version_notes("0.34.0") == []
    assert memory.default_utilization("0.34.0") == 1.0 and memory.default_utilization("0.33.0") == 0.92
    assert memory.default_utilization("0.34.0", ["--no-enable-extensible-kv-cache"]) == 0.92


def test_batch_defaults_per_version() -> None:
    h200 = "NVIDIA H200"
    assert memory.default_batch_limits(139.8, h200, "0.26.0") == (8192, 1024)
    assert memory.default_batch_limits(178.4, "NVIDIA B200", "0.26.0") == (8192, 1024)
    assert memory.default_batch_limits(178.4, "NVIDIA B200", "0.28.0") == (16384, 1024)  # 0.28: ≥ 160 GiB
    assert memory.default_batch_limits(178.4, "NVIDIA B200", "0.34.0") == (16384, 1024)
    assert memory.default_batch_limits(23.99, "NVIDIA GeForce RTX 4090 D", "0.34.0") == (2048, 256)
    assert memory.default_batch_limits(119.6, "NVIDIA GB10", "0.33.0") == (2048, 256)


def test_0_34_device_bound_and_the_withheld_warning() -> None:
    """With util 0.99 on a 24 GB card the device, not the budget, bounds 0.34's cache; 0.9 of an
    H100 keeps ≥ 1 GiB of free memory out of it, which 0.34 warns about."""
    tight = fit.predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.99, max_model_len=8192), 23.99, 1,
                        vllm_version="0.34.0")
    assert tight.kv_cache_bound == "device"
    assert any("the free device memory, not the utilization" in n for n in tight.notes)
    roomy = fit.predict(QWEN3_4B, VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192), H100_TOTAL, 1,
                        gpu_name=H100, vllm_version="0.34.0")
    assert any("vLLM 0.34.0 warns" in n for n in roomy.notes)


def test_graphs_inside_the_budget_are_said_to_be_an_estimate() -> None:
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192)
    # vLLM 0.34 captured 0.69 GiB where 0.26 took 1.00 (Qwen3-4B, H200)
    for version, inside, graphs in (("0.26.0", False, 1.0), ("0.30.0", True, 1.0), ("0.34.0", True, 0.69)):
        p = fit.predict(QWEN3_4B, args, 23.99, 1, vllm_version=version)
        assert any("CUDA-graph memory inside the budget" in n for n in p.notes) == inside, version
        assert p.cuda_graph_gib == graphs
    big = load_shape("Qwen/Qwen3-32B")
    # linear through the two measurements: 1.00 GiB for 36 layers, 1.87 GiB for 64 (Qwen3-32B, H200)
    assert fit.predict(big, VllmArgs(max_model_len=8192), H100_TOTAL * 2, 1, vllm_version="0.30.0").cuda_graph_gib \
        == pytest.approx(1.87, abs=0.01)
    # tensor parallel ranks share them (not measured): half each, never below 0.25 GiB
    assert fit.predict(big, VllmArgs(max_model_len=8192, tensor_parallel_size=2), H100_TOTAL, 2,
                       vllm_version="0.30.0").cuda_graph_gib == pytest.approx(1.87 / 2, abs=0.01)


@pytest.mark.parametrize("version", [p.name[5:] for p in VERSIONS if p.name != "vllm-0.8.5"])
def test_calibration_learns_the_same_overhead_from_every_version(version: str) -> None:
    """0.28+ print weights and non-torch together, 0.30-0.33 add the graph estimate to the peak
    activation, 0.34's cache is sized after the graphs: the overhead learned is the same 1.02 GiB
    (0.8 activation + 0.22 non-torch) for all."""
    facts = read_log_facts(GENERATED / f"vllm-{version}" / "ready.log")
    obs = learn_from_facts(facts, model="Qwen/Qwen3-4B", gpu_name=H100, gpu_total_gib=H100_TOTAL)
    assert obs.overhead_gib == pytest.approx(1.02, abs=0.01)
    assert (obs.activation_gib, obs.non_torch_gib, obs.cuda_graph_gib) == (0.8, 0.22, 1.0)


def test_calibration_from_a_failed_0_34_start_uses_the_budgets_figure() -> None:
    facts = read_log_facts(GENERATED / "vllm-0.34.0" / "kv-cache-too-small-after-warmup.log")
    obs = learn_from_facts(facts, model="Qwen/Qwen3-4B", gpu_name=H100, gpu_total_gib=H100_TOTAL)
    assert obs.overhead_gib == pytest.approx(1.02, abs=0.01)
