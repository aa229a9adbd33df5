"""The H100 scenarios 1, 5 and 6 run again at the end of the round (tests/fixtures/vllm-0.26.0/
h100-4b-rerun-2026-12-05.*): real vLLM 0.26.0 printed what it printed on 2026-11-21, and the
plan the supervisor made on that machine (`plan --json`, kept as it came back) is the plan this
code makes for the same launch here, CUDA-graph note included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_supervisor.planning.launch import build_plan
from llm_supervisor.vllm.failures import FailureKind
from test_gpu_fixtures import FIXTURES, cuda_graph_note, profile, runs, settings_as_on

RERUN = "h100-4b-rerun-2026-12-05"
ON_GPU = json.loads((FIXTURES / f"{RERUN}.plan.json").read_text())
SUMMARY = json.loads((FIXTURES / f"{RERUN}-summary.json").read_text())


def test_vllm_printed_what_it_printed_on_the_first_run() -> None:
    first, again = runs(RERUN)
    assert (first.facts.available_kv_cache_gib, first.facts.kv_cache_tokens) == (12.8, 93168)
    assert (first.facts.max_concurrency, first.facts.max_concurrency_context) == (2.27, 40960)
    assert first.facts.cuda_graph_gib == 1.0
    sizes = first.facts.cuda_graph_sizes or []
    assert (len(sizes), max(sizes)) == (51, 512)
    failure = first.failure()
    assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD
    assert again.facts.kv_cache_tokens == 94512 == SUMMARY["5"]["kv_cache_tokens"]
    assert again.exit_code is None  # the daemon was killed (scenario 6): the log stops
    assert SUMMARY["1"]["status_kv_cache_tokens"] == 93168 and SUMMARY["5"]["ended_on_report"] is True
    assert SUMMARY["6"]["kill9"]["left_over"] == [] and SUMMARY["6"]["kill9"]["gpu_used_mib_after"] == 0


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The plan for launch 1 made here, on a simulated GPU as the H100 reported itself."""
    settings = settings_as_on(ON_GPU, tmp_path, monkeypatch)
    return build_plan(settings, profile(runs(RERUN)[0]), simulate=True, ignore_hardware=True).to_json()


def test_the_plan_made_on_the_h100_is_the_plan_made_here(here: dict) -> None:
    for key in ("kv_cache_tokens", "available_kv_cache_gib", "weights_gib", "cuda_graph_gib", "compile_cold",
                "max_concurrency"):
        assert here["predicted"][key] == ON_GPU["predicted"][key], key
    assert (ON_GPU["predicted"]["kv_cache_tokens"], ON_GPU["predicted"]["available_kv_cache_gib"]) == (93104, 12.79)
    assert here["speed"]["ungraphed_prompts"] == ON_GPU["speed"]["ungraphed_prompts"]
    assert ON_GPU["speed"]["ungraphed_prompts"]["capture_size"] == 1056
    assert here["speed"]["points"] == ON_GPU["speed"]["points"]


def test_the_cuda_graph_note_given_on_the_h100_is_the_one_given_here(here: dict) -> None:
    assert cuda_graph_note(here) == cuda_graph_note(ON_GPU)
    assert ("--max-cudagraph-capture-size 1056 covers them (CUDA graphs 1.34 GiB instead of 1.00)"
            in cuda_graph_note(ON_GPU))
