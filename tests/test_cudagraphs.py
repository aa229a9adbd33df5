"""The batch sizes vLLM captures as CUDA graphs, read from a profile's extra_args, and the graph
memory the planner expects for them (vllm/cudagraphs.py), against vLLM 0.26's rule and the real
H100 launches with the default capture and with --max-cudagraph-capture-size 1024."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import cudagraphs
from llm_supervisor.vllm.calibration import learn_from_facts
from llm_supervisor.vllm.fit import FitContext

H100 = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"


@pytest.mark.parametrize(("extra_args", "expected"), [
    ([], (None, ())),
    (["--max-cudagraph-capture-size", "1024"], (1024, ())),
    (["--max-cudagraph-capture-size=2048", "--enforce-eager"], (2048, ())),
    (["--cudagraph-capture-sizes", "1", "2", "640", "--seed", "3"], (None, (1, 2, 640))),
    (["--compilation-config", '{"max_cudagraph_capture_size": 1024, "pass_config": {}}'], (1024, ())),
    (['-cc={"cudagraph_capture_sizes": [8, 16]}'], (None, (8, 16))),
    (["--compilation-config", "3"], (None, ())),              # an optimization level, not a JSON object
    (["--max-cudagraph-capture-size", "lots"], (None, ())),   # vLLM would refuse it; nothing to read
])
def test_the_capture_flags_are_read_from_extra_args(extra_args: list[str], expected: tuple) -> None:
    assert cudagraphs.capture_flags(extra_args) == expected


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
