"""GPUs of one engine that cannot set up their collectives: vLLM 0.26+ turns flashinfer's fused
all-reduce on by itself on Hopper with tensor parallelism, and on a host without NVSwitch
multicast the next cuBLAS call fails with CUBLAS_STATUS_INTERNAL_ERROR. The supervisor reads it
as its own kind (CONTRACT's "unknown"), relaunches without the fused all-reduce, then without the
custom all-reduce, then stops with what to check."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeVllm, Harness
from llm_supervisor.config.profile import Hardware, Model, Profile, Recovery, VllmArgs
from llm_supervisor.host.logfiles import diagnose_file
from llm_supervisor.simulator.config import _fused_allreduce
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.vllm import allreduce
from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.vllm.recovery import GiveUp, Relaunch, decide

FIXTURE = Path(__file__).parent / "fixtures" / "simulated" / "vllm-0.26.0-h200-tp2-allreduce-fusion.log"
CUBLAS = "RuntimeError: CUDA error: CUBLAS_STATUS_INTERNAL_ERROR when calling `cublasCreate(handle)`"
OFF = json.dumps({"pass_config": {"fuse_allreduce_rms": False}})


def classify(lines: list[str], exit_code: int | None = 1, was_ready: bool = False) -> Failure | None:
    c = FailureClassifier()
    for line in lines:
        c.feed(line)
    return c.classify(exit_code, was_ready)


def profile(**vllm: Any) -> Profile:
    return Profile(name="tp", hardware=Hardware(gpu_name="H200", gpu_count=2, gpu_memory_gib=141),
                   model=Model(id="Qwen/Qwen3-8B"), vllm=VllmArgs(tensor_parallel_size=2, **vllm),
                   recovery=Recovery(max_attempts=5))


def comm_failure() -> Failure:
    return Failure(FailureKind.MULTI_GPU_COMM, CUBLAS, {"flashinfer_allreduce": "mnnvl"})


def test_the_simulated_h200_log_is_a_multi_gpu_failure_reported_as_unknown() -> None:
    failure = classify(FIXTURE.read_text().splitlines())
    assert failure is not None and failure.kind is FailureKind.MULTI_GPU_COMM
    assert "CUBLAS_STATUS_INTERNAL_ERROR" in failure.message
    assert failure.values == {"flashinfer_allreduce": "mnnvl"}
    assert failure.to_json()["kind"] == "unknown"


def test_diagnose_names_the_flag_that_turns_the_fused_all_reduce_off() -> None:
    result = diagnose_file(FIXTURE)
    assert result["outcome"] == "failed" and result["facts"]["tensor_parallel_size"] == 2
    remedy = result["remedy"]
    assert remedy["extra_args"] == ["--compilation-config", OFF]
    assert "fuse_allreduce_rms=false" in remedy["why"] and "mnnvl" in remedy["why"]


@pytest.mark.parametrize("line, kind", [
    ("(Worker_TP0 pid=9) torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:3356, "
     "unhandled cuda error (run with NCCL_DEBUG=INFO for details)", FailureKind.MULTI_GPU_COMM),
    ("(Worker_TP1 pid=9) RuntimeError: CUDA error: peer access is not supported between these two devices",
     FailureKind.MULTI_GPU_COMM),
    ("(EngineCore pid=9) RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
     FailureKind.CUDA_OOM),
])
def test_collective_errors_and_cublas_out_of_memory(line: str, kind: FailureKind) -> None:
    failure = classify([line])
    assert failure is not None and failure.kind is kind


def test_collectives_failing_after_a_rank_died_or_after_ready_are_an_engine_death() -> None:
    nccl = "(Worker_TP0 pid=9) torch.distributed.DistBackendError: NCCL error: remote process exited or there was a network error"
    died = "(EngineCore pid=8) ERROR 12-03 10:00:00 [multiproc_executor.py:240] Worker proc VllmWorker-1 died unexpectedly, shutting down executor."
    for lines, ready in (([nccl], True), ([died, nccl], False)):
        failure = classify(lines, 1, was_ready=ready)
        assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD, lines


def test_the_ladder_fused_all_reduce_off_then_custom_all_reduce_off_then_stop() -> None:
    prof = profile()
    first = decide(comm_failure(), prof.vllm, prof, [], StartupFacts())
    assert isinstance(first, Relaunch)
    assert first.args.extra_args == ["--compilation-config", OFF] and first.delay_s == 0
    assert "mnnvl" in first.reason and "fuse_allreduce_rms=false" in first.reason
    second = decide(comm_failure(), first.args, prof, [], StartupFacts())
    assert isinstance(second, Relaunch) and second.args.disable_custom_all_reduce
    assert second.args.extra_args == first.args.extra_args
    third = decide(comm_failure(), second.args, prof, [], StartupFacts())
    assert isinstance(third, GiveUp) and "nvidia-smi topo -m" in third.reason


def test_one_gpu_has_no_collective_to_change() -> None:
    prof = profile().model_copy(update={"vllm": VllmArgs()})
    decision = decide(comm_failure(), prof.vllm, prof, [], StartupFacts())
    assert isinstance(decision, GiveUp) and "single-GPU" in decision.reason


def test_an_older_vllm_without_the_fusion_pass_goes_straight_to_nccl() -> None:
    prof = profile()
    decision = decide(comm_failure(), prof.vllm, prof, [], StartupFacts(vllm_version="0.11.0"))
    assert isinstance(decision, Relaunch)
    assert decision.change == {"disable_custom_all_reduce": [False, True]} and decision.args.extra_args == []


def test_the_operators_compilation_config_is_kept_and_merged() -> None:
    merged = allreduce.without_fusion(["--compilation-config", '{"cudagraph_mode": "PIECEWISE"}', "--seed", "1"])
    assert merged is not None and merged[2:] == ["--seed", "1"]
    assert json.loads(merged[1]) == {"cudagraph_mode": "PIECEWISE", "pass_config": {"fuse_allreduce_rms": False}}
    assert allreduce.without_fusion(["-cc=" + '{"pass_config": {"x": 1}}']) == [
        "-cc=" + json.dumps({"pass_config": {"x": 1, "fuse_allreduce_rms": False}})]
    assert allreduce.without_fusion(["--compilation-config", "3"]) is None  # not ours to rewrite
    assert allreduce.fusion_disabled(["--compilation-config", OFF])
    assert not allreduce.fusion_disabled(["--compilation-config", '{"pass_config": {}}'])


def test_the_simulator_fuses_where_vllm_does() -> None:
    new, old = Dialect("0.26.0"), Dialect("0.11.0")
    assert _fused_allreduce(new, "NVIDIA H200", 2, None)
    assert _fused_allreduce(new, "NVIDIA H100 80GB HBM3", 4, {"level": 3})
    assert not _fused_allreduce(new, "NVIDIA H200", 1, None)
    assert not _fused_allreduce(new, "NVIDIA GeForce RTX 3080", 2, None)
    assert not _fused_allreduce(old, "NVIDIA H200", 2, None)
    assert not _fused_allreduce(new, "NVIDIA H200", 2, json.loads(OFF))


def test_the_daemon_recovers_a_tp2_start_in_one_relaunch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "simgpu"))
    h = Harness(tmp_path, FakeVllm(version="0.26.0", fault="allreduce_fusion"),
                sets=["hardware.gpu_count=2", "vllm.tensor_parallel_size=2"])

    async def scenario() -> dict[str, Any]:
        return await h.start().ready()

    status = asyncio.run(scenario())
    launches = h.vllm.launches
    assert len(launches) == 2 and "--compilation-config" not in launches[0].argv
    assert launches[1].argv[launches[1].argv.index("--compilation-config") + 1] == OFF
    (relaunch,) = h.relaunches()
    assert relaunch["change"]["extra_args"] == [[], ["--compilation-config", OFF]]
    assert "extra_args + --compilation-config" in relaunch["summary"]
    assert relaunch["failure"]["kind"] == "unknown" and relaunch["failure"]["supervisor_kind"] == "multi_gpu_comm"
    assert status["state"] == "ready"
