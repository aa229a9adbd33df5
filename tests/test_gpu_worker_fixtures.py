"""Real vLLM 0.26.0 on an H200 with the rank in a process of its own, without tensor parallel
(`scripts/gpu_multi.py --only mp1,ray1`, tests/fixtures/vllm-0.26.0/h200-8b-*): the Qwen3-8B shape
at a 40 GB budget on one GPU, with `--distributed-executor-backend mp` (a `VLLM::Worker` process
under EngineCore) and on Ray (a `RayWorkerProc` actor under Ray's raylet).

What they hold: the worker's lines are read like any vLLM process's (its nested Ray prefix
included), a dead worker is an engine death the policy relaunches as is, and the planner's KV
figure for this shape lands within 1 % of what vLLM printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_gpu_fixtures import runs

from llm_supervisor.vllm.failures import FailureKind
from llm_supervisor.vllm.logparse import tp_rank

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
MP1 = "h200-8b-mp1-worker-killed"
RAY1 = "h200-8b-ray1-ready-stopped"
RAY1_KILLED = "h200-8b-ray1-actor-killed"
RAY1_SUMMARY = json.loads((FIXTURES / "h200-8b-ray1-summary.json").read_text())["ray1"]
MP1_SUMMARY = json.loads((FIXTURES / "h200-8b-mp1-summary.json").read_text())["mp1"]


def test_the_worker_process_is_read_like_any_vllm_process() -> None:
    first = runs(MP1)[0]
    assert first.facts.kv_cache_tokens == 142_496 and first.facts.max_concurrency == pytest.approx(8.70)
    assert first.facts.model_weights_gib == pytest.approx(15.27)  # printed by the worker, not EngineCore
    assert set(first.facts.processes) >= {"APIServer", "EngineCore", "Worker"}
    assert tp_rank("Worker pid=982") is None  # "Worker" alone names no tensor-parallel rank
    assert first.facts.tensor_parallel_size in (None, 1)


def test_a_killed_worker_is_an_engine_death_with_the_executor_named() -> None:
    first, second = runs(MP1)
    assert first.exit_code == 0  # the API server after EngineDeadError, as after EngineCore's death
    failure = first.failure()
    assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD
    assert "root cause: RuntimeError: Executor failed." in failure.message
    assert "Worker proc VllmWorker-0 died unexpectedly (exit code: None)" in first.text
    # the relaunch the daemon made: the same arguments (a new private port), ready again with the
    # compile cache warm
    def without_port(argv: list[str]) -> list[str]:
        i = argv.index("--port")
        return argv[:i] + argv[i + 2:]

    assert without_port(second.argv) == without_port(first.argv) and second.facts.kv_cache_tokens == 146_160


def test_the_recorded_run_figures() -> None:
    r = MP1_SUMMARY
    assert r["ok"] and r["worker_killed"].split()[1] == "VLLM::Worker"
    assert r["ready"]["status_kv_tokens"] == r["ready"]["log_kv_tokens"] == 142_496
    assert r["ready"]["predicted_kv_tokens"] == pytest.approx(142_496, rel=0.01)
    assert r["death_kind"] == "engine_dead" and r["ready_again"]["attempt"] == 2
    assert r["stop"]["left_over"] == [] and r["gpu_used_mib_after"] == [0]


def test_a_ray_actor_behind_enginecore_is_read_as_the_worker_it_is() -> None:
    # EngineCore prefixes what Ray forwards, Ray the actor, vLLM the worker: three prefixes deep
    (run,) = runs(RAY1)
    assert "(EngineCore pid=2329) \x1b[36m(RayWorkerProc pid=3140)\x1b[0m (Worker pid=3140) INFO" in run.text
    assert run.facts.processes == {"APIServer": 2199, "EngineCore": 2329, "RayWorkerProc": 3140, "Worker": 3140}
    assert run.facts.model_weights_gib == pytest.approx(15.27) and run.facts.available_kv_cache_gib == pytest.approx(19.57)
    assert run.facts.kv_cache_tokens == 142_496  # the same GPU budget as mp1, the same cache
    # then the daemon's SIGTERM: vLLM exits 0 ("shut down on a signal"), not an engine failure to recover
    assert run.exit_code == 0 and "[shutdown] EngineCore: trigger received signal=SIGTERM" in run.text


def test_a_killed_ray_actor_is_an_engine_death_vllm_notices_itself() -> None:
    # vLLM 0.26's RayExecutorV2 watches its actors: the death is logged and EngineCore fails at
    # once, the same "Executor failed." as a worker process's
    first, second = runs(RAY1_KILLED)
    assert "[ray_executor_v2.py:514] RayWorkerProc rank=[0] died unexpectedly, shutting down executor." in first.text
    assert first.exit_code == 0
    failure = first.failure()
    assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD
    assert "root cause: RuntimeError: Executor failed." in failure.message
    assert first.facts.processes["RayWorkerProc"] == 2117 and second.facts.processes["RayWorkerProc"] == 2663
    assert (first.facts.kv_cache_tokens, second.facts.kv_cache_tokens) == (142_496, 146_160)


def test_the_recorded_ray_run_figures() -> None:
    r = RAY1_SUMMARY
    assert r["worker_killed"].split()[1] == "ray::RayWorkerProc.run"  # the actor's title while it serves
    assert r["ready"]["status_kv_tokens"] == r["ready"]["log_kv_tokens"] == 142_496
    assert r["death_kind"] == "engine_dead" and r["ready_again"]["attempt"] == 2
    # the daemon's kill -9: its guard took Ray's tree down too (SIGTERM, then SIGKILL after 5 s)
    assert r["stop"]["left_over"] == [] and r["stop"]["vllm_processes_anywhere"] == [] and r["gpu_used_mib_after"] == [0]
    # the run's own check for Ray processes matched the shell that ran it (fixed since): only
    # command lines that mention Ray, no Ray process
    assert all(" bash -c " in p or p.split()[1] == "timeout" for p in r["ray_processes_anywhere"])
