"""`--cpu-offload-gb` on vLLM 0.22–0.27, whose default V2 model runner ignores it: the engine gets
the V1 runner, and a log that shows the offload ignored ends in a stop with the reason, never in a
relaunch with more offload that the engine would ignore again.

The real log: Qwen3-32B (dummy weights) on an H200 with vLLM 0.26.0 and `--cpu-offload-gb 42`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_harness import DaemonRun, run_cli
from llm_supervisor.config.profile import Hardware, Model, Profile, Recovery, VllmArgs
from llm_supervisor.host.logfiles import diagnose_file
from llm_supervisor.host.modelfiles import load_shape
from llm_supervisor.vllm import memory, runner
from llm_supervisor.vllm.calibration import calibration_facts, learn_from_facts
from llm_supervisor.vllm.failures import FailureClassifier, FailureKind
from llm_supervisor.vllm.fit import FitContext, overhead_for
from llm_supervisor.vllm.logparse import LogParser
from llm_supervisor.vllm.recovery import GiveUp, Relaunch, decide

ROOT = Path(__file__).resolve().parents[1]
REAL_LOG = Path(__file__).parent / "fixtures" / "vllm-0.26.0" / "offload-ignored-by-v2-runner.log"
H200_MIB = 143771  # 140.4 GiB as NVML reports an H200
H200 = {"LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(H200_MIB), "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H200"}
# what the real run asked for: 21.4 GiB of a 140 GiB card, 42 GiB of Qwen3-32B's 61 GiB in CPU memory
REAL_ARGS = ["Qwen/Qwen3-32B", "--gpu-memory-utilization", "0.153", "--max-model-len", "2064",
             "--load-format", "dummy", "--cpu-offload-gb", "42"]


def parse(path: Path) -> tuple[LogParser, FailureClassifier]:
    classifier = FailureClassifier()
    parser = LogParser(sink=classifier)
    for line in path.read_text().splitlines():
        parser.feed(line)
    return parser, classifier


def test_the_real_log_shows_weights_loaded_on_the_gpu_despite_the_offload() -> None:
    parser, classifier = parse(REAL_LOG)
    facts = parser.facts
    assert (facts.vllm_version, facts.model_runner, facts.model_weights_gib) == ("0.26.0", "v2", 61.03)
    assert facts.cpu_offloaded_gib is None
    assert facts.available_kv_cache_gib == -41.48
    assert runner.offload_ignored(facts, 42.0)
    assert not runner.offload_ignored(facts, 0)
    failure = classifier.classify(None, facts.server_started)
    assert failure is not None and failure.kind is FailureKind.NO_KV_CACHE_MEMORY


def test_an_offload_that_took_effect_is_not_called_ignored() -> None:
    parser = LogParser()
    for line in ("(EngineCore pid=7) INFO 12-03 12:26:15 [gpu_worker.py:378] Using V2 Model Runner",
                 "(EngineCore pid=7) INFO 12-03 12:26:18 [uva.py:58] Total CPU offloaded parameters: 42.0",
                 "(EngineCore pid=7) INFO 12-03 12:26:19 [gpu_model_runner.py:5347] Model loading took 19.07 GiB "
                 "memory and 3.3 seconds"):
        parser.feed(line)
    assert parser.facts.cpu_offloaded_gib == 42.0 and parser.facts.model_weights_gib == 19.07
    assert not runner.offload_ignored(parser.facts, 42.0)
    parser.facts.vllm_version = "0.28.0"  # the V2 runner offloads from 0.28, line or not
    parser.facts.cpu_offloaded_gib = None
    assert not runner.offload_ignored(parser.facts, 42.0)


def test_recovery_stops_with_the_reason_instead_of_asking_for_more_offload() -> None:
    parser, classifier = parse(REAL_LOG)
    failure = classifier.classify(None, False)
    assert failure is not None
    profile = Profile(name="h200-qwen3-32b-offload", hardware=Hardware(gpu_name="H200", gpu_count=1, gpu_memory_gib=141),
                      model=Model(id="Qwen/Qwen3-32B"),
                      vllm=VllmArgs(gpu_memory_utilization=0.153, max_model_len=2064, cpu_offload_gb=42),
                      recovery=Recovery(max_cpu_offload_gb=48, min_gpu_memory_utilization=0.1,
                                        max_gpu_memory_utilization=0.16))
    decision = decide(failure, profile.vllm, profile, [], parser.facts, gpu_total_mib=H200_MIB)
    assert isinstance(decision, GiveUp)
    assert decision.reason.startswith("vLLM 0.26.0 ignored --cpu-offload-gb 42: its V2 model runner")
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in decision.reason and "0.28" in decision.reason


def test_diagnose_explains_the_ignored_offload() -> None:
    result = diagnose_file(REAL_LOG)
    assert result["failure"]["kind"] == "no_kv_cache_memory"
    assert set(result["remedy"]) == {"why"}  # no utilization to try: it would fail the same way
    assert "ignored --cpu-offload-gb 42" in result["remedy"]["why"]


@pytest.mark.parametrize(("version", "profile_env", "offload", "expected"), [
    ("0.26.0", {}, 42.0, {"VLLM_USE_V2_MODEL_RUNNER": "0"}),
    ("0.27.0", {}, 1.0, {"VLLM_USE_V2_MODEL_RUNNER": "0"}),
    ("0.22.0", {}, 1.0, {"VLLM_USE_V2_MODEL_RUNNER": "0"}),
    (None, {}, 1.0, {"VLLM_USE_V2_MODEL_RUNNER": "0"}),      # not known: the V1 runner offloads everywhere
    ("0.21.0", {}, 1.0, {}),                                  # the V1 runner was the default
    ("0.28.0", {}, 42.0, {}),
    ("0.34.0", {}, 42.0, {}),
    ("0.26.0", {}, 0.0, {}),
    ("0.26.0", {"VLLM_USE_V2_MODEL_RUNNER": "1"}, 42.0, {}),  # the profile chose its runner
])
def test_the_engine_environment_chooses_a_runner_that_offloads(version, profile_env, offload, expected) -> None:
    assert runner.offload_env(version, offload, profile_env) == expected


def test_plan_runs_an_offloading_engine_with_the_v1_runner_on_vllm_0_26(tmp_path: Path) -> None:
    sets = ["--set", "model.id=Qwen/Qwen3-32B", "--set", "recovery.max_cpu_offload_gb=48"]
    base = ["plan", "--profile", "4090d-qwen3-4b", "--simulate", *sets, "--json"]
    env = {"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state"), "LLM_SUPERVISOR_SIM_HOST_AVAILABLE_GIB": "100"}
    plans = {}
    for version in ("0.26.0", "0.34.0"):
        done = run_cli(base, {**env, "LLM_SUPERVISOR_SIM_VLLM_VERSION": version})
        assert done.returncode == 0, done.stderr
        plans[version] = json.loads(done.stdout)
    old, new = plans["0.26.0"], plans["0.34.0"]
    assert old["low_memory"]["offload_gib"] > 0 and new["low_memory"]["offload_gib"] > 0
    assert old["env"].get("VLLM_USE_V2_MODEL_RUNNER") == "0"
    assert any("V1 model runner" in n for n in old["notes"])
    assert "VLLM_USE_V2_MODEL_RUNNER" not in new["env"]


def run_simulator(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_SUPERVISOR_SIM_", "VLLM_"))}
    full.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"),
                 "VLLM_CACHE_ROOT": str(tmp_path / "cache"), "LLM_SUPERVISOR_SIM_STARTUP_S": "0.2",
                 "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0", **H200, **env})
    done = subprocess.run([sys.executable, "-m", "llm_supervisor.simulator", "serve", *REAL_ARGS, "--port", "9"],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_the_simulator_ignores_the_offload_on_the_v2_runner_like_vllm_0_26(tmp_path: Path) -> None:
    rc, log = run_simulator(tmp_path, {})
    assert rc == 1
    assert "Using V2 Model Runner" in log and "Total CPU offloaded parameters" not in log
    assert "Model loading took 61.0" in log and "No available memory for the cache blocks" in log
    parser = LogParser()
    for line in log.splitlines():
        parser.feed(line)
    assert runner.offload_ignored(parser.facts, 42.0)
    assert parser.facts.available_kv_cache_gib == pytest.approx(-41.48, abs=1.0)  # the real log's figure


def test_the_supervisor_starts_the_offloading_engine_on_vllm_0_26_at_the_first_launch(tmp_path: Path) -> None:
    """A real `up --simulate` of a 32B model on a 24 GB card with vLLM 0.26: the supervisor plans
    the offload and launches with the V1 runner, the simulated engine offloads and is ready."""
    env = {"LLM_SUPERVISOR_SIM_HOST_AVAILABLE_GIB": "100", "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"}
    sets = ["model.id=Qwen/Qwen3-32B", "recovery.max_cpu_offload_gb=48"]
    with DaemonRun(tmp_path / "run", sets=sets, env=env) as run:
        run.start()
        status = run.wait_ready(timeout=90)
        assert status["attempt"] == 1
        log = run.engine_log()
        offloaded = [ln for ln in log.splitlines() if "Total CPU offloaded parameters" in ln]
        assert offloaded and "Using V2 Model Runner" not in log
        argv = status["argv"]
        asked = float(argv[argv.index("--cpu-offload-gb") + 1])
        # vLLM moves whole parameters until the budget is reached: a little more, never less
        assert asked <= float(offloaded[0].rsplit(": ", 1)[1]) < asked + 1


# ---------------------------------------------------------------- the V1 runner's memory accounting

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
V1_LOG = FIXTURES / "offload-v1-runner-recovered.log"


def first_attempt(path: Path) -> list[str]:
    """The log's first launch (all of it when the log is one `vllm serve`'s own output)."""
    lines = path.read_text().splitlines()
    return lines[:next((i for i, ln in enumerate(lines) if ln.startswith("===== engine exited")), len(lines))]


def test_on_the_v1_runner_vllm_0_26_takes_its_graph_estimate_out_of_the_budget() -> None:
    """The real first launch with the V1 runner: -0.86 GiB = 21.39 − 18.59 weights − 2.23
    activation − 0.34 non-torch − 1.09 estimated graphs; the V2 runner's estimate is 0 before 0.30."""
    classifier = FailureClassifier()
    parser = LogParser(sink=classifier)
    for line in first_attempt(V1_LOG):
        parser.feed(line)
    f = parser.facts
    assert (f.cpu_offloaded_gib, f.model_weights_gib, f.cuda_graph_estimate_gib) == (42.44, 18.59, 1.09)
    assert f.model_runner is None and not runner.offload_ignored(f, 42.0)
    assert f.available_kv_cache_gib == -0.86
    assert round(21.39 - 18.59 - 2.23 - 0.34 - 1.09, 2) == f.available_kv_cache_gib
    assert runner.v1_runner("0.26.0", 42.0) and not runner.v1_runner("0.26.0", 0)
    assert not runner.v1_runner("0.28.0", 42.0) and runner.v1_runner("0.21.0", 0)
    assert runner.v1_runner("0.34.0", 0, runner_env="0") and not runner.v1_runner("0.26.0", 42.0, runner_env="1")
    assert memory.accounting_for("0.26.0", (), v1_runner=True) is memory.Accounting.BUDGET_0_26_V1
    assert memory.accounting_for("0.26.0", (), v1_runner=False) is memory.Accounting.BUDGET_0_26
    assert memory.accounting_for("0.20.0", (), v1_runner=True) is memory.Accounting.BUDGET_0_26
    assert memory.accounting_for("0.30.0", (), v1_runner=True) is memory.Accounting.BUDGET_0_30
    assert memory.Accounting.BUDGET_0_26_V1.graphs_in_budget and memory.Accounting.BUDGET_0_26_V1.graph_estimate
    assert not memory.null_block_reserved(memory.Accounting.BUDGET_0_26_V1)  # the null block is 0.30's


def test_recovery_of_the_real_v1_failure_makes_room_for_the_graph_estimate_too() -> None:
    """The relaunch must free at least what was missing (0.86 GiB), counting the 1.09 GiB of
    graphs vLLM took out of the budget: more offload, or eager mode, which drops the estimate."""
    classifier = FailureClassifier()
    parser = LogParser(sink=classifier)
    for line in first_attempt(V1_LOG):
        parser.feed(line)
    failure = classifier.classify(None, False)
    assert failure is not None and failure.kind is FailureKind.NO_KV_CACHE_MEMORY
    args = VllmArgs(gpu_memory_utilization=0.153, max_model_len=2064, cpu_offload_gb=42)
    profile = Profile(name="h200-qwen3-32b-offload", hardware=Hardware(gpu_name="H200", gpu_count=1, gpu_memory_gib=141),
                      model=Model(id="Qwen/Qwen3-32B"), vllm=args,
                      recovery=Recovery(max_cpu_offload_gb=48, min_gpu_memory_utilization=0.1,
                                        max_gpu_memory_utilization=0.153, min_max_model_len=2048))
    # what the daemon does after a failed boot: learn the overhead it showed (not the weights: offloaded)
    obs = learn_from_facts(parser.facts, model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200", gpu_total_gib=139.8,
                           tensor_parallel=1, gpu_memory_utilization=0.153, now=0.0)
    obs.weights_gib = None
    assert obs.overhead_gib == pytest.approx(2.23 + 0.34, abs=0.02)  # the graph estimate is not overhead
    fit = FitContext.of(load_shape("Qwen/Qwen3-32B"), 139.8, 1, obs, vllm_version="0.26.0", recovery=profile.recovery,
                        model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200", host_available_gib=120.0)
    decision = decide(failure, args, profile, [], parser.facts, gpu_total_mib=H200_MIB, fit=fit)
    assert isinstance(decision, Relaunch), decision
    new = decision.args
    # what the relaunch frees: more offload, the graph estimate (eager mode), and the overhead the
    # learned 2.23 + 0.34 GiB comes down to with fewer sequences (the V1 sampler warm-up) or eager
    # mode (no throwaway graph capture's non-torch memory)
    overhead = overhead_for(fit, new, cold=True).total_gib
    assert overhead <= 2.23 + 0.34 + 1e-6
    freed = (new.cpu_offload_gb or 0) - 42 + (1.09 if new.enforce_eager else 0.0) + (2.23 + 0.34 - overhead)
    assert freed >= 0.86 + 0.5, decision.reason  # the shortfall and the 2,048 tokens' 0.5 GiB


def test_plan_counts_the_graphs_inside_the_budget_when_the_v1_runner_offloads(tmp_path: Path) -> None:
    sets = ["--set", "model.id=Qwen/Qwen3-32B", "--set", "recovery.max_cpu_offload_gb=48"]
    env = {"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state"), "LLM_SUPERVISOR_SIM_HOST_AVAILABLE_GIB": "100",
           "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"}
    done = run_cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate", *sets, "--json"], env)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["accounting"] == "budget-0.26-v1"
    done = run_cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate", "--json"], env)
    assert json.loads(done.stdout)["accounting"] == "budget-0.26"  # no offload: the V2 runner


# Real vLLM 0.26.0 on an H200, every start eager (no compile), dummy weights, max_num_batched_tokens
# 8192: (fixture, model, V1 runner, max_num_seqs, offloaded), what vLLM printed read from the log.
H200_EAGER = [
    ("h200-32b-v1-runner-eager-seqs1024.log", "Qwen/Qwen3-32B", True, 1024, False),
    ("h200-32b-v1-runner-eager-seqs16.log", "Qwen/Qwen3-32B", True, 16, False),
    ("h200-32b-v2-runner-eager-seqs1024.log", "Qwen/Qwen3-32B", False, 1024, False),
    ("h200-4b-eager.log", "Qwen/Qwen3-4B", False, 1024, False),
    ("offload-planned-ready-first-launch.log", "Qwen/Qwen3-32B", True, 1024, True),
    ("offload-fp8-planned-ready-first-launch.log", "Qwen/Qwen3-32B", True, 16, True),
]


@pytest.mark.parametrize("name,model,v1,seqs,offload", H200_EAGER)
def test_the_overhead_model_against_real_eager_starts_on_an_h200(name: str, model: str, v1: bool, seqs: int,
                                                                  offload: bool) -> None:
    """vLLM 0.26's V1 runner warms its whole sampler (four float32 [seqs, vocab] tensors): for
    Qwen3-32B at 1,024 sequences that, not the forward pass, is the peak (2.23 GiB, eager or
    compiled), and fewer sequences or the V2 runner leave the forward pass (1.52); eager mode
    peaks as a warm compile does (no cold factor); offload adds non-torch memory (0.32 against
    0.22). The model must match each start, within 0.02 GiB below and 0.15 above."""
    parser = LogParser()
    for line in first_attempt(FIXTURES / name):
        parser.feed(line)
    f = parser.facts
    assert f.vllm_version == "0.26.0" and f.enforce_eager
    assert (f.model_runner == "v2") == (not v1 and not offload)
    assert bool(f.cpu_offloaded_gib) == offload
    ov = memory.modelled_overhead(load_shape(model), 1, 1, 8192, seqs, cold=False, v1_sampler=v1, cpu_offload=offload)
    assert f.peak_activation_gib is not None and f.non_torch_gib is not None
    assert -0.02 <= ov.activation_gib - f.peak_activation_gib <= 0.15, (ov.activation_gib, f.peak_activation_gib)
    assert -0.01 <= ov.non_torch_gib - f.non_torch_gib <= 0.05, (ov.non_torch_gib, f.non_torch_gib)


def test_which_launches_warm_the_v1_sampler_and_what_compiling_changes() -> None:
    shape = load_shape("Qwen/Qwen3-32B")
    # compiling does not change the sampler's buffers: a cold start peaks the same (the real
    # compiled offload start printed 2.23 GiB, as the eager ones)
    cold = memory.estimate_activation_gib(shape, 1, 8192, 1024, cold=True, v1_sampler=True)
    assert cold == pytest.approx(memory.estimate_activation_gib(shape, 1, 8192, 1024, cold=False, v1_sampler=True))
    assert memory.cold_compile_extra_gib(shape, 1, 8192, 1024, v1_sampler=True) == 0.0
    assert memory.cold_compile_extra_gib(shape, 1, 8192, 16, v1_sampler=True) > 0.4
    assert runner.v1_sampler_warmup("0.26.0", 42.0) and not runner.v1_sampler_warmup("0.26.0", None)
    assert not runner.v1_sampler_warmup("0.21.0", 0) and not runner.v1_sampler_warmup("0.28.0", 42.0)
    assert runner.v1_sampler_warmup("0.34.0", None, runner_env="0")
    # an eager launch compiles nothing: priced and reported as such
    ctx = FitContext.of(shape, 139.8, 1, vllm_version="0.26.0", model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200")
    eager = ctx.predict(VllmArgs(gpu_memory_utilization=0.9, max_model_len=4096, enforce_eager=True, max_num_seqs=16))
    assert not eager.compile_cold and eager.activation_gib == pytest.approx(1.50, abs=0.01)
    assert ctx.predict(VllmArgs(gpu_memory_utilization=0.9, max_model_len=4096)).compile_cold


def test_the_plan_for_the_real_v1_launch_is_on_the_safe_side_of_what_vllm_printed() -> None:
    """The first real offload launch (42 GiB, util 0.153, compiled): vLLM printed −0.86 GiB for the
    KV cache. The model now predicts no more than that (its V1 terms), and the calibration learned
    from that log gives back vLLM's figure for the same arguments."""
    shape = load_shape("Qwen/Qwen3-32B")
    args = VllmArgs(gpu_memory_utilization=0.153, max_model_len=2064, cpu_offload_gb=42)
    ctx = FitContext.of(shape, 139.8, 1, vllm_version="0.26.0", model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200")
    p = ctx.predict(args)
    assert p.accounting == "budget-0.26-v1"
    assert p.overhead_gib == pytest.approx(2.23 + 0.34, abs=0.15)
    assert p.available_kv_cache_gib <= -0.86
    parser = LogParser()
    for line in first_attempt(V1_LOG):
        parser.feed(line)
    obs = learn_from_facts(parser.facts, model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200", gpu_total_gib=139.8,
                           tensor_parallel=1, gpu_memory_utilization=0.153, now=0.0)
    assert obs.v1_sampler is True
    learned = FitContext.of(shape, 139.8, 1, obs, vllm_version="0.26.0", model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200")
    assert learned.predict(args).overhead_gib == pytest.approx(2.23 + 0.34, abs=0.01)
    # the same observation, for an eager launch at 16 sequences: the sampler's share and the
    # graph capture's non-torch memory come off
    eager = args.model_copy(update={"enforce_eager": True, "max_num_seqs": 16})
    assert learned.predict(eager).overhead_gib < 2.23 + 0.34 - 0.4


def test_calibration_keeps_the_sequences_the_start_ran_with() -> None:
    """A start at 16 sequences (from vLLM's non-default args line, as a saved log is read) is
    learned at 16, so a launch at 1,024 on the V1 runner scales the learned activation up by the
    sampler warm-up's share."""
    parser = LogParser()
    for line in first_attempt(FIXTURES / "h200-32b-v1-runner-eager-seqs16.log"):
        parser.feed(line)
    obs = learn_from_facts(calibration_facts(parser.facts), model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200", gpu_total_gib=139.8,
                           tensor_parallel=1, vllm_version="0.26.0", now=0.0)
    assert obs.max_num_seqs == 16 and obs.activation_gib == 1.52 and obs.enforce_eager
    shape = load_shape("Qwen/Qwen3-32B")
    ctx = FitContext.of(shape, 139.8, 1, obs, vllm_version="0.26.0", model="Qwen/Qwen3-32B", gpu_name="NVIDIA H200")
    at_1024 = overhead_for(ctx, VllmArgs(gpu_memory_utilization=0.153, cpu_offload_gb=42, enforce_eager=True,
                                         max_num_seqs=1024), cold=True)
    assert at_1024.activation_gib == pytest.approx(2.23, abs=0.15)  # the seqs-1024 start printed 2.23
    assert at_1024.non_torch_gib == pytest.approx(0.22 + memory.NON_TORCH_OFFLOAD_GIB)
