"""CUDA-graph capture arguments on real vLLM 0.26.0 (tests/fixtures/vllm-0.26.0-h100/capture-args-*,
one H100, 2026-12-05): the two pairs vLLM refuses while it builds its config are classified as
bad arguments, printed by the simulator in the same words, and refused by `plan` with the lines it
gave on the GPU; the compilation config's max_cudagraph_capture_size is captured as the flag is,
and planned here as it was there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.settings import Settings
from llm_supervisor.errors import PlanRefused
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.planning.launch import build_plan
from llm_supervisor.simulator.args import parse
from llm_supervisor.simulator.config import StartupError, resolve
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.vllm import cudagraphs
from llm_supervisor.vllm.failures import FailureClassifier, FailureKind
from test_gpu_fixtures import cuda_graph_note, settings_as_on

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
RUN = json.loads((FIXTURES / "capture-args-2026-12-05-summary.json").read_text())
SUMMARY = {r["scenario"]: r for r in RUN["results"]}
ON_GPU = json.loads((FIXTURES / "capture-args-config1024.plan.json").read_text())
REFUSED = ("both", "apart")


def _log(scenario: str) -> str:
    name = "config1024" if scenario == "config" else scenario
    return (FIXTURES / f"capture-args-{name}.log").read_text()


def _final(text: str) -> str:
    """The exception vLLM ended on: its last line, or the pydantic error's message."""
    lines = [line.split(") ", 1)[1] if line.startswith("(APIServer") else line for line in text.splitlines()]
    for line in lines:
        if line.startswith("  Value error, "):
            return line.removeprefix("  Value error, ").split(" [type=")[0]
    return lines[-1].removeprefix("ValueError: ")


@pytest.mark.parametrize("scenario", REFUSED)
def test_vllm_refused_them_before_any_engine_and_the_supervisor_calls_it_bad_arguments(scenario: str) -> None:
    text = _log(scenario)
    assert "EngineCore" not in text and SUMMARY[scenario]["rc"] == 1
    classifier = FailureClassifier()
    for line in text.splitlines():
        classifier.feed(line)
    failure = classifier.classify(1, False)
    assert failure is not None and failure.kind is FailureKind.BAD_ARGUMENTS
    assert failure.message == SUMMARY[scenario]["failure"]["message"]


@pytest.mark.parametrize("scenario", REFUSED)
def test_the_simulator_refuses_them_in_vllms_words(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_NAME", "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB", "81079")
    ns, _ = parse(["Qwen/Qwen3-4B", *SUMMARY[scenario]["extra_args"]])
    with pytest.raises(StartupError) as raised:
        resolve(ns, Dialect("0.26.0"))
    assert _final(raised.value.final) == _final(_log(scenario))
    expected = cudagraphs.capture_ask(SUMMARY[scenario]["extra_args"]).vllm_errors(8192)
    assert expected == [_final(_log(scenario))]


def _profile(extra: list[str]):
    return load_profile("4090d-qwen3-4b", PROFILES, model="Qwen/Qwen3-4B", overrides=[
        f"vllm.gpu_memory_utilization={RUN['util']}", "vllm.max_model_len=40960",
        "vllm.load_format=dummy", "vllm.extra_args=" + json.dumps(extra)])


@pytest.fixture()
def h100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_as_on(ON_GPU, tmp_path, monkeypatch)


@pytest.mark.parametrize("scenario", REFUSED)
def test_plan_here_refuses_them_as_it_did_on_the_gpu(scenario: str, h100) -> None:
    with pytest.raises(PlanRefused) as refused:
        build_plan(h100, _profile(SUMMARY[scenario]["extra_args"]), simulate=True, ignore_hardware=True)
    assert ["error: " + p for p in refused.value.problems] == SUMMARY[scenario]["plan"]["errors"]
    assert SUMMARY[scenario]["plan"]["rc"] == 2


def test_the_compilation_config_s_size_is_captured_and_planned_as_on_the_gpu(h100,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    facts = parse_log_file(FIXTURES / "capture-args-config1024.log").facts
    sizes = facts.cuda_graph_sizes or []
    assert (len(sizes), max(sizes), facts.cuda_graph_gib, facts.kv_cache_tokens) == (83, 1024, 1.32, 98928)
    # the simulator captures what vLLM captured from the compilation config
    ns, _ = parse(["Qwen/Qwen3-4B", *SUMMARY["config"]["extra_args"]])
    assert list(resolve(ns, Dialect("0.26.0")).graph_sizes) == sizes
    # and the plan made here is the plan made there: graphs as taken, KV within 0.05 %
    here = build_plan(h100, _profile(SUMMARY["config"]["extra_args"]), simulate=True, ignore_hardware=True).to_json()
    for key in ("kv_cache_tokens", "available_kv_cache_gib", "cuda_graph_gib", "weights_gib"):
        assert here["predicted"][key] == ON_GPU["predicted"][key], key
    assert ON_GPU["predicted"]["cuda_graph_gib"] == facts.cuda_graph_gib
    assert abs(ON_GPU["predicted"]["kv_cache_tokens"] / facts.kv_cache_tokens - 1) < 0.001
    assert cuda_graph_note(here) == cuda_graph_note(ON_GPU)
    assert cuda_graph_note(ON_GPU).endswith("the compilation config's max_cudagraph_capture_size 1056 in extra_args "
                                            "covers them (CUDA graphs 1.34 GiB instead of 1.32)")
