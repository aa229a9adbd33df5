"""Who holds the GPU, on real vLLM 0.26.0 (an H200, 2026-12-05, scripts/gpu_tenants_validate.py
T4 and T5): the logs and records in tests/fixtures/vllm-0.26.0/h200-4b-load-oom-gpu-taken* and
h200-4b-own-daemon*, read as the daemon reads them."""

from __future__ import annotations

import json

from test_gpu_fixtures import FIXTURES, PROFILE, profile, runs

from llm_supervisor.config.loader import load_profile
from llm_supervisor.host.logfiles import diagnose_file
from llm_supervisor.planning.launch import fit_context
from llm_supervisor.vllm.failures import FailureKind
from llm_supervisor.vllm.recovery import GiveUp, Relaunch, decide

TAKEN = "h200-4b-load-oom-gpu-taken"
H200_NVML_MIB = 143771  # NVML's total; torch sees 139.80 GiB
FREE_AFTER_MIB = 2550   # what NVML showed free once the failed engine had ended (2.49 GiB)
OTHER = "pid 968 (python3 gpu_validate.py --hog, user root) holds 140,592 MiB on GPU 0"


def _decide(free_mib: int):
    (run,) = runs(TAKEN)
    prof = profile(run)
    fit = fit_context(prof, 139.8, 1, gpu_name="NVIDIA H200", vllm_version="0.26.0")
    return run, decide(run.failure(), prof.vllm, prof, [], run.facts, gpu_free_mib=free_mib,
                       gpu_total_mib=H200_NVML_MIB, fit=fit, gpu_tenants=[OTHER])


def test_the_oom_while_loading_is_read_as_one() -> None:
    run, _ = _decide(FREE_AFTER_MIB)
    failure = run.failure()
    assert failure is not None and failure.kind == FailureKind.CUDA_OOM and run.exit_code == 1
    assert run.facts.model_weights_gib is None  # it never finished loading
    assert "Tried to allocate 96.00 MiB" in failure.message
    assert diagnose_file(FIXTURES / f"{TAKEN}.log")["failure"]["kind"] == "cuda_oom"


def test_with_the_memory_still_taken_it_stops_at_once_naming_the_holder() -> None:
    _, decision = _decide(FREE_AFTER_MIB)
    assert isinstance(decision, GiveUp), decision
    assert decision.reason.startswith("CUDA ran out of memory while loading the weights: only 2.49 GiB of the GPU "
                                      "is free and the weights alone need 7.5")
    assert OTHER in decision.reason
    # what the daemon did on the GPU: one launch, no relaunch, the same line
    daemon = (FIXTURES / f"{TAKEN}.daemon.log").read_text()
    assert daemon.count("launch attempt") == 1 and "relaunch with" not in daemon
    assert "giving up: cuda_oom: CUDA out of memory allocating 96 MiB" in daemon
    record = json.loads((FIXTURES / f"{TAKEN}-summary.json").read_text())["T5"]
    assert record["ok"] and record["grab_at_phase"] == "loading_weights" and record["decision"] == "give_up"


def test_once_the_memory_is_back_the_same_failure_relaunches() -> None:
    _, decision = _decide(H200_NVML_MIB - 600)
    assert isinstance(decision, Relaunch) and "alone need" not in decision.reason


def test_beside_its_own_daemon_doctor_and_bench_see_that_daemon() -> None:
    record = json.loads((FIXTURES / "h200-4b-own-daemon-summary.json").read_text())["T4"]
    assert record["ok"] and record["bench_url"] == record["serving_url"] and record["bench_succeeded"] == 8
    assert record["kv_tokens_from_stdin"] == record["kv_tokens_status"] == 212352
    doctor = (FIXTURES / "h200-4b-own-daemon.doctor.txt").read_text()
    gpu = next(ln for ln in doctor.splitlines() if "gpu processes" in ln)
    assert gpu.startswith("ok") and "the engine of the llm-supervisor running with this state dir" in gpu
    assert [ln.split()[1] for ln in doctor.splitlines() if ln.startswith("fail")] == ["gpus"]  # H100 profile, H200
    assert load_profile(str(PROFILE), PROFILE.parent).hardware.gpu_name == "H100"
