"""The batch sizes vLLM captures as CUDA graphs, read from a profile's extra_args, and the graph
memory the planner expects for them (vllm/cudagraphs.py), against vLLM 0.26's rule and the real
H100 launches with the default capture and with --max-cudagraph-capture-size 1024; and the steps
beyond the graphs: the simulator's pace for them, and what `plan` says about them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.config.settings import load_settings
from llm_supervisor.errors import PlanRefused
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.planning.launch import build_plan, format_plan
from llm_supervisor.simulator import args as sim_args
from llm_supervisor.simulator.config import resolve
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.vllm import cudagraphs, speed
from llm_supervisor.vllm.calibration import learn_from_facts
from llm_supervisor.vllm.fit import FitContext

H100 = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"
PROFILES = Path(__file__).resolve().parent.parent / "profiles"
H100_NAME, H100_GIB = "NVIDIA H100 80GB HBM3", 79.18


@pytest.mark.parametrize(("extra_args", "expected"), [
    ([], (None, None)),
    (["--max-cudagraph-capture-size", "1024"], (1024, None)),
    (["--max-cudagraph-capture-size=2048", "--enforce-eager"], (2048, None)),
    (["--max-cudagraph-capture-size", "512", "--max-cudagraph-capture-size", "1024"], (1024, None)),  # argparse
    (["--cudagraph-capture-sizes", "1", "2", "640", "--seed", "3"], (None, (1, 2, 640))),
    (["--compilation-config", '{"max_cudagraph_capture_size": 1024, "pass_config": {}}'], (1024, None)),
    (['-cc={"cudagraph_capture_sizes": [8, 16]}'], (None, (8, 16))),
    (["--compilation-config", "3"], (None, None)),              # an optimization level, not a JSON object
    (["--max-cudagraph-capture-size", "lots"], (None, None)),   # vLLM would refuse it; nothing to read
])
def test_the_capture_flags_are_read_from_extra_args(extra_args: list[str], expected: tuple) -> None:
    ask = cudagraphs.capture_ask(extra_args)
    assert (ask.max_size, ask.sizes) == expected
    assert ask.vllm_errors(8192) == [] and ask.problems(8192) == []


CC = "--compilation-config"


@pytest.mark.parametrize(("extra_args", "batched", "vllm_says"), [
    # a flag and its compilation config key: EngineArgs.create_engine_config refuses both
    (["--max-cudagraph-capture-size", "1024", CC, '{"max_cudagraph_capture_size": 512}'], 8192,
     "max_cudagraph_capture_size and compilation_config.max_cudagraph_capture_size are mutually exclusive"),
    (["--cudagraph-capture-sizes", "8", CC, '{"cudagraph_capture_sizes": [8, 16]}'], 8192,
     "cudagraph_capture_sizes and compilation_config.cudagraph_capture_sizes are mutually exclusive"),
    # a largest size other than the sizes' (VllmConfig._set_cudagraph_sizes), after the sizes above
    # max_num_batched_tokens are dropped
    (["--cudagraph-capture-sizes", "1", "8", "640", "--max-cudagraph-capture-size", "1024"], 8192,
     "customized max_cudagraph_capture_size(=1024) should be consistent with the max value of "
     "cudagraph_capture_sizes(=640)"),
    ([CC, '{"cudagraph_capture_sizes": [8, 1024], "max_cudagraph_capture_size": 1024}'], 512,
     "customized max_cudagraph_capture_size(=1024) should be consistent with the max value of "
     "cudagraph_capture_sizes(=8)"),
])
def test_capture_arguments_vllm_refuses_are_known_before_a_launch(extra_args: list[str], batched: int,
                                                                  vllm_says: str) -> None:
    ask = cudagraphs.capture_ask(extra_args)
    assert ask.vllm_errors(batched) == [vllm_says]
    problems = ask.problems(batched)
    assert len(problems) == 1 and "which vLLM refuses" in problems[0] and problems[0].startswith("extra_args ")
    assert ("max_num_batched_tokens 512" in problems[0]) == (batched == 512)
    # eager: no sizes to check, but EngineArgs still refuses a flag beside its config key
    assert ask.vllm_errors(None) == ([vllm_says] if "mutually exclusive" in vllm_says else [])


def test_the_largest_size_may_be_given_with_the_sizes_when_they_agree() -> None:
    ask = cudagraphs.capture_ask(["--cudagraph-capture-sizes", "1", "640", CC, '{"max_cudagraph_capture_size": 640}'])
    assert (ask.max_size, ask.sizes, ask.vllm_errors(8192)) == (640, (1, 640), [])


@pytest.mark.parametrize(("extra_args", "covered", "words"), [
    (["--seed", "1"], ["--seed", "1", "--max-cudagraph-capture-size", "1056"],
     "extra_args --max-cudagraph-capture-size 1056"),
    (["--max-cudagraph-capture-size=512", "--seed", "1"], ["--seed", "1", "--max-cudagraph-capture-size", "1056"],
     "extra_args --max-cudagraph-capture-size 1056"),
    # where the operator gave the largest size in the compilation config, the advice goes there
    ([CC, '{"max_cudagraph_capture_size": 512, "mode": 3}'], [CC, '{"max_cudagraph_capture_size": 1056, "mode": 3}'],
     "the compilation config's max_cudagraph_capture_size 1056 in extra_args"),
    # where the operator named the sizes, the size joins them (a largest size given beside them follows)
    (["--cudagraph-capture-sizes", "1", "8", "512", "--seed", "1"],
     ["--seed", "1", "--cudagraph-capture-sizes", "1", "8", "512", "1056"],
     "adding 1,056 to the CUDA-graph capture sizes in extra_args"),
    (["--cudagraph-capture-sizes", "8", "512", "--max-cudagraph-capture-size", "512"],
     ["--cudagraph-capture-sizes", "8", "512", "1056", "--max-cudagraph-capture-size", "1056"],
     "adding 1,056 to the CUDA-graph capture sizes in extra_args"),
    (['-cc={"cudagraph_capture_sizes": [8, 512], "max_cudagraph_capture_size": 512}'],
     ['-cc={"cudagraph_capture_sizes": [8, 512, 1056], "max_cudagraph_capture_size": 1056}'],
     "adding 1,056 to the CUDA-graph capture sizes in extra_args"),
    ([CC, '{"cudagraph_capture_sizes": [8, 512]}', "--max-cudagraph-capture-size", "512"],
     [CC, '{"cudagraph_capture_sizes": [8, 512, 1056]}', "--max-cudagraph-capture-size", "1056"],
     "adding 1,056 to the CUDA-graph capture sizes in extra_args"),
    (["--cudagraph-capture-sizes", "8", "512", CC, '{"max_cudagraph_capture_size": 512}'],
     [CC, '{"max_cudagraph_capture_size": 1056}', "--cudagraph-capture-sizes", "8", "512", "1056"],
     "adding 1,056 to the CUDA-graph capture sizes in extra_args"),
])
def test_the_advised_capture_goes_where_the_operator_sets_the_sizes(extra_args: list[str], covered: list[str],
                                                                     words: str) -> None:
    got = cudagraphs.covering_args(extra_args, 1056, 8192)
    assert got == (covered, words)
    ask = cudagraphs.capture_ask(got[0])
    assert ask.vllm_errors(8192) == [] and max(cudagraphs.capture_sizes(1024, 8192, ask.max_size, ask.sizes or ())) == 1056


@pytest.mark.parametrize("extra_args", [
    ["--max-cudagraph-capture-size", "1024", CC, '{"max_cudagraph_capture_size": 512}'],
    ["--cudagraph-capture-sizes", "8", "--max-cudagraph-capture-size", "16"],
])
def test_no_capture_advice_for_arguments_vllm_refuses_as_they_are(extra_args: list[str]) -> None:
    assert cudagraphs.covering_args(extra_args, 1056, 8192) is None


def test_an_optimization_level_for_a_compilation_config_is_kept_beside_the_advised_flag() -> None:
    assert cudagraphs.covering_args(["-cc", "3"], 1056, 8192) == (
        ["-cc", "3", "--max-cudagraph-capture-size", "1056"], "extra_args --max-cudagraph-capture-size 1056")


@pytest.mark.parametrize(("seqs", "tokens", "flags", "count", "top"), [
    (1024, 8192, (None, ()), 51, 512),        # the real H100 launches: 51 sizes
    (1024, 8192, (1024, ()), 83, 1024),       # … and 83 with --max-cudagraph-capture-size 1024
    (16, 8192, (None, ()), 7, 32),            # 2 × max_num_seqs
    (1024, 256, (None, ()), 35, 256),         # never above max_num_batched_tokens, which is captured
    (1024, 300, (None, ()), 38, 300),         # … also off the grid
    (1024, 8192, (None, (4, 1, 4, 9000)), 2, 4),
])
def test_the_sizes_follow_vllms_rule(seqs: int, tokens: int, flags: tuple, count: int, top: int) -> None:
    sizes = cudagraphs.capture_sizes(seqs, tokens, *flags)
    assert (len(sizes), max(sizes)) == (count, top)
    assert sizes == sorted(set(sizes))


def test_the_planner_expects_the_graph_memory_the_real_launches_took() -> None:
    ctx = FitContext.of(load_shape("Qwen/Qwen3-4B"), 79.18, 1, model="Qwen/Qwen3-4B",
                        gpu_name="NVIDIA H100 80GB HBM3", vllm_version="0.26.0")
    default = parse_log_file(H100 / "h100-4b-mixed.startup.log").facts.cuda_graph_gib
    wide = parse_log_file(H100 / "h100-4b-mixed1024.startup.log").facts.cuda_graph_gib
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192)
    assert ctx.graph_gib(args) == (pytest.approx(default, abs=0.005), "estimated")
    wider = args.model_copy(update={"extra_args": ["--max-cudagraph-capture-size", "1024"]})
    assert ctx.graph_gib(wider) == (pytest.approx(wide, abs=0.005), "estimated")
    assert ctx.graph_gib(wider.model_copy(update={"enforce_eager": True}))[0] == 0.0


@pytest.mark.parametrize(("log", "count", "top"), [
    ("h100-4b-mixed.startup.log", 51, 512),
    ("h100-4b-mixed1024.startup.log", 83, 1024),
])
def test_the_log_tells_which_sizes_were_captured(log: str, count: int, top: int) -> None:
    sizes = parse_log_file(H100 / log).facts.cuda_graph_sizes
    assert sizes is not None and (len(sizes), max(sizes)) == (count, top)
    assert sizes == cudagraphs.capture_sizes(1024, 8192, top)


def _learned(log: str) -> FitContext:
    facts = parse_log_file(H100 / log).facts
    obs = learn_from_facts(facts, model="Qwen/Qwen3-4B", gpu_name="NVIDIA H100 80GB HBM3", gpu_total_gib=79.18,
                           tensor_parallel=1, gpu_memory_utilization=0.9, now=0.0)
    assert obs.cuda_graph_sizes == facts.cuda_graph_sizes
    return FitContext.of(load_shape("Qwen/Qwen3-4B"), 79.18, 1, obs, model="Qwen/Qwen3-4B",
                         gpu_name="NVIDIA H100 80GB HBM3", vllm_version="0.26.0")


@pytest.mark.parametrize(("learned_from", "planned"), [
    ("h100-4b-mixed.startup.log", "h100-4b-mixed1024.startup.log"),
    ("h100-4b-mixed1024.startup.log", "h100-4b-mixed.startup.log"),
    ("h100-4b-mixed.startup.log", "h100-4b-mixed.startup.log"),
])
def test_graph_memory_learned_at_one_capture_is_scaled_to_another(learned_from: str, planned: str) -> None:
    """What one start took is the figure for its sizes: a plan with a wider (or the default)
    capture scales it, and lands on what that capture really took."""
    ctx = _learned(learned_from)
    top = max(parse_log_file(H100 / planned).facts.cuda_graph_sizes or [0])
    extra = [] if top == 512 else ["--max-cudagraph-capture-size", str(top)]
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192, extra_args=extra)
    took = parse_log_file(H100 / planned).facts.cuda_graph_gib
    assert ctx.graph_gib(args) == (pytest.approx(took, abs=0.01), "measured on this host")


def test_a_start_learned_before_its_sizes_were_kept_counts_as_the_default_capture() -> None:
    ctx = _learned("h100-4b-mixed.startup.log")
    assert ctx.calibration is not None and ctx.calibration.latest is not None
    ctx.calibration.latest.cuda_graph_sizes = None   # an older calibration file
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192)
    assert ctx.graph_gib(args)[0] == pytest.approx(1.00, abs=0.005)
    wider = args.model_copy(update={"extra_args": ["--max-cudagraph-capture-size", "1024"]})
    assert ctx.graph_gib(wider)[0] == pytest.approx(1.32, abs=0.005)


# ---------------------------------------------------------------- steps beyond the graphs


def _sim_law(monkeypatch: pytest.MonkeyPatch, *extra: str):
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_NAME", H100_NAME)
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB", "81079")
    ns, _ = sim_args.parse(["Qwen/Qwen3-4B", *extra], 0.92)
    return resolve(ns, Dialect("0.26.0")).step_law


def test_the_simulator_runs_a_step_beyond_its_graphs_at_the_cpus_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """As real vLLM 0.26 did on an H100: a 512-token prompt beside 7 decodes (519 tokens, graphs to
    512) waits on the CPU's launches; with graphs to 1,024 it runs at the GPU's pace, as do steps
    that fit the graphs, steps long enough on the GPU, and eager mode (its own plain law)."""
    default, wide = _sim_law(monkeypatch), _sim_law(monkeypatch, "--max-cudagraph-capture-size", "1024")
    eager = _sim_law(monkeypatch, "--enforce-eager")
    assert (default.graph_tokens, wide.graph_tokens, eager.graph_tokens) == (512, 1024, 0)
    beside = (8, 8 * 600, 512, 7)                 # running, context, prompt tokens, decodes
    assert default.duration(*beside) >= 0.025
    assert wide.duration(*beside) == eager.duration(*beside) < 0.015
    assert default.duration(8, 8 * 600, 480, 7) == wide.duration(8, 8 * 600, 480, 7) < 0.015
    together = (8, 8 * 600, 8 * 512, 0)           # eight prompts in one step: the GPU's work is longer
    assert default.duration(*together) == wide.duration(*together) > 0.040
    assert default.duration(64, 64 * 600, 0) == wide.duration(64, 64 * 600, 0)


def _h100_model(model: str = "Qwen/Qwen3-4B", gpu: str = H100_NAME, total: float = H100_GIB,
                **update: object) -> speed.SpeedModel:
    ctx = FitContext.of(load_shape(model), total, 1, model=model, gpu_name=gpu, vllm_version="0.26.0")
    args = VllmArgs(gpu_memory_utilization=0.9, max_model_len=8192).model_copy(update=update)
    m = speed.speed_model(ctx, args, ctx.predict(args))
    assert m is not None
    return m


def test_prompt_steps_beyond_the_graphs_are_found_where_the_cpu_sets_their_pace() -> None:
    m = _h100_model()
    dip = m.ungraphed_prompts(speed.Workload(512, 128))
    assert dip is not None and dip.users == (8, 32)  # one user's prompt slows only its own first token
    assert (dip.step_tokens, dip.prompt_tokens, dip.graph_tokens, dip.capture_size) == (543, 512, 512, 544)
    assert dip.gpu_s < dip.launch_s
    assert m.ungraphed_prompts(speed.Workload(480, 128), users=(8,)) is None         # 487 tokens: graphed
    assert _h100_model(extra_args=["--max-cudagraph-capture-size", "544"]).ungraphed_prompts(
        speed.Workload(512, 128)) is None
    assert _h100_model(enforce_eager=True).ungraphed_prompts(speed.Workload(512, 128)) is None
    assert _h100_model(max_num_batched_tokens=512).ungraphed_prompts() is None     # chunks within the graphs
    assert m.ungraphed_prompts(speed.Workload(4096, 128)) is None                  # long enough on the GPU
    # the GPU's work outlasts the launches: a 32B model on an H200, a 4B one on a 4090 D
    assert _h100_model("Qwen/Qwen3-32B", "NVIDIA H200", 139.8).ungraphed_prompts(speed.Workload(512, 128)) is None
    assert _h100_model(gpu="NVIDIA GeForce RTX 4090 D", total=23.99).ungraphed_prompts(speed.Workload(512, 128)) is None
    # beyond the largest capture worth advising (a deep model's launches outlast a 2,107-token step)
    deep = _h100_model(max_num_batched_tokens=4096)
    deep = replace(deep, cost=replace(deep.cost, layers=200))
    big = deep.ungraphed_prompts(speed.Workload(2100, 128), users=(8,))
    assert big is not None and big.step_tokens == 2107 and big.capture_size is None


def _plan_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "gpu"))
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_NAME", H100_NAME)
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB", "81079")
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.26.0")


def _with_vllm(profile, **update: object):
    """The profile with these vllm settings changed."""
    return profile.model_copy(update={"vllm": profile.vllm.model_copy(update=update)})


def test_plan_says_when_its_load_runs_prompt_steps_beyond_the_graphs(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _plan_env(tmp_path, monkeypatch)
    settings = load_settings(state_dir=tmp_path / "state")
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    plan = build_plan(settings, profile, simulate=True, ignore_hardware=True)
    dip = plan.to_json()["speed"]["ungraphed_prompts"]
    assert dip["users"] == [8, 32] and dip["capture_size"] == 1056 and dip["graph_tokens"] == 512
    note = [n for n in plan.notes if "beyond the CUDA graphs" in n]
    assert len(note) == 1 and "extra_args --max-cudagraph-capture-size 1056" in note[0]
    assert "CUDA graphs 1.34 GiB instead of 1.00" in note[0] and "KV cache" not in note[0]  # 0.26: outside the budget
    assert note[0] in format_plan(plan)
    covered = build_plan(settings, _with_vllm(profile, extra_args=["--max-cudagraph-capture-size", "1056"]),
                         simulate=True, ignore_hardware=True)
    assert covered.to_json()["speed"]["ungraphed_prompts"] is None
    assert not [n for n in covered.notes if "beyond the CUDA graphs" in n]
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.34.0")
    newer = build_plan(settings, profile, simulate=True, ignore_hardware=True)
    assert [n for n in newer.notes if "beyond the CUDA graphs" in n and n.endswith("out of the KV cache)")]


def test_plan_advises_the_size_among_the_sizes_the_operator_named(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _plan_env(tmp_path, monkeypatch)
    settings = load_settings(state_dir=tmp_path / "state")
    named = [str(n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)]
    profile = _with_vllm(load_profile("4090d-qwen3-4b", PROFILES), extra_args=["--cudagraph-capture-sizes", *named])
    plan = build_plan(settings, profile, simulate=True, ignore_hardware=True)
    note = [n for n in plan.notes if "beyond the CUDA graphs" in n]
    assert len(note) == 1 and "; adding 1,056 to the CUDA-graph capture sizes in extra_args covers them" in note[0]
    covered = build_plan(settings, _with_vllm(profile, extra_args=["--cudagraph-capture-sizes", *named, "1056"]),
                         simulate=True, ignore_hardware=True)
    assert not [n for n in covered.notes if "beyond the CUDA graphs" in n]


@pytest.mark.parametrize(("extra_args", "problem", "eager_refused"), [
    # EngineArgs refuses the pair before it looks at enforce_eager
    (["--max-cudagraph-capture-size", "1024", CC, '{"max_cudagraph_capture_size": 512}'],
     "extra_args give both --max-cudagraph-capture-size and the compilation config's max_cudagraph_capture_size, "
     "which vLLM refuses; keep one", True),
    # eager: no graphs, whose sizes vLLM leaves unchecked
    (["--cudagraph-capture-sizes", "8", "640", "--max-cudagraph-capture-size", "1024"],
     "extra_args ask for CUDA graphs up to 1,024 tokens but the largest of the capture sizes is 640, which vLLM "
     "refuses; give only the sizes", False),
])
def test_plan_refuses_capture_arguments_vllm_would_refuse(extra_args: list[str], problem: str, eager_refused: bool,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught before a launch that would fail in vLLM's config after loading nothing: one line each."""
    _plan_env(tmp_path, monkeypatch)
    settings = load_settings(state_dir=tmp_path / "state")
    profile = _with_vllm(load_profile("4090d-qwen3-4b", PROFILES), extra_args=extra_args)
    with pytest.raises(PlanRefused) as refused:
        build_plan(settings, profile, simulate=True, ignore_hardware=True)
    assert refused.value.problems == [problem]
    eager = _with_vllm(profile, enforce_eager=True)
    if eager_refused:
        with pytest.raises(PlanRefused):
            build_plan(settings, eager, simulate=True, ignore_hardware=True)
    else:
        assert build_plan(settings, eager, simulate=True, ignore_hardware=True).args.enforce_eager
