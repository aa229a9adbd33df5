"""Recovery, in-process: the daemon launches a fake vLLM (tests/fakes.py) that fails the way vLLM
fails, and must reach `ready` in the fewest relaunches, with computed arguments and a history
that explains each step; non-recoverable failures end in `failed` (exit 3) at once. Virtual time:
each test takes milliseconds.

`recovery.plan_first_launch=false` makes the first launch use the profile's arguments as they
are, so vLLM's own failure happens instead of the planner avoiding it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fakes import FakeVllm, Harness, floor2, harnesses
from llm_supervisor.runtime.commands import Command
from llm_supervisor.store.calibration import Calibration

NO_PLAN = "recovery.plan_first_launch=false"
TOTAL_GIB = 24564 / 1024  # the simulated RTX 4090 D as NVML reports it


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (0.2, 1))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def kinds(h: Harness) -> list[str]:
    return [k for e, k in h.events() if e == "exit"]


def test_kv_cache_too_small_recovers_in_one_relaunch_and_is_remembered(make) -> None:
    async def scenario() -> None:
        # utilization 0.5 leaves ~3.4 GiB of KV cache: 40,960 tokens (5.62 GiB) do not fit
        h = make(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"]).start()
        status = await h.ready()
        assert [e for e, _ in h.events()] == ["launch", "exit", "relaunch", "launch", "ready"]
        assert status["attempt"] == 2 and status["restarts"] == 1
        assert status["restarts_by_reason"] == {"kv_cache_too_small": 1}
        failure = next(e["failure"] for e in status["history"] if e["event"] == "exit")
        assert failure["kind"] == "kv_cache_too_small"
        values = failure["values"]
        assert values["max_model_len"] == 40960
        assert values["needed_gib"] == pytest.approx(5.62, abs=0.01)
        assert values["available_gib"] < values["needed_gib"]
        estimate = values["estimated_max_model_len"]

        (relaunch,) = h.relaunches()
        recovered = estimate // 16 * 16
        assert relaunch["change"] == {"max_model_len": [40960, recovered]}
        assert str(estimate) in relaunch["reason"] and "40960 → " in relaunch["reason"]
        assert "5.62 GiB" in relaunch["reason"] and "utilization 0.5" in relaunch["reason"]
        assert relaunch["failure"]["message"].startswith("ValueError: To serve at least one request")
        assert status["max_model_len"] == recovered
        assert status["argv"][status["argv"].index("--max-model-len") + 1] == str(recovered)
        assert status["gpu_memory_utilization"] == 0.5
        for entry in status["history"]:
            assert set(entry) >= {"at", "event", "failure", "change"}
            time.strptime(entry["at"][:19], "%Y-%m-%dT%H:%M:%S")
        launch = status["history"][0]
        assert "--max-model-len 40960" in launch["reason"] and "--gpu-memory-utilization 0.5" in launch["reason"]
        assert f"{status['kv_cache_tokens']:,} KV tokens" in status["history"][-1]["reason"]
        largest = status["kv_cache_tokens"]
        assert 0.95 * largest <= recovered <= largest, (recovered, largest)
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0

        # the next daemon on this state dir starts from the arguments that reached ready
        again = make(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"], state=h.tmp).start()
        assert any("starting from the arguments that last reached ready" in n and f"max_model_len 40960 → {recovered}" in n
                   for n in again.plan.notes), again.plan.notes
        status = await again.ready()
        assert [e for e, _ in again.events()] == ["launch", "ready"]
        assert status["attempt"] == 1 and status["max_model_len"] == recovered
    run(scenario())


def test_kv_cache_too_small_after_a_warm_start_recovers_in_one_relaunch(make) -> None:
    """A compile cache from an earlier boot at 40,960 tokens makes the failing start warm; the
    relaunch with a new max_model_len compiles cold, with a larger peak activation."""
    async def scenario() -> None:
        h = make(FakeVllm(compiled={40960}), sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"]).start()
        status = await h.ready()
        assert [e for e, _ in h.events()] == ["launch", "exit", "relaunch", "launch", "ready"]
        (relaunch,) = h.relaunches()
        estimate = relaunch["failure"]["values"]["estimated_max_model_len"]
        old, new = relaunch["change"]["max_model_len"]
        assert old == 40960 and new < estimate  # shortened below the warm estimate
        assert "warm start" in relaunch["reason"]
        largest = status["kv_cache_tokens"]
        assert status["max_model_len"] == new
        assert 0.95 * largest <= new <= largest, (new, largest)
    run(scenario())


def test_insufficient_free_memory_relaunches_with_utilization_from_free_memory(make) -> None:
    async def scenario() -> None:
        vllm = FakeVllm(other_gib=6000 / 1024)  # other processes hold 6000 MiB: 0.9 of the GPU is not free
        h = make(vllm, sets=[NO_PLAN]).start()
        status = await h.ready()
        first = next(e for e in status["history"] if e["event"] == "exit")
        assert first["failure"]["kind"] == "insufficient_free_memory"
        values = first["failure"]["values"]
        assert values["total_gib"] == pytest.approx(TOTAL_GIB, abs=0.01)
        assert values["requested_utilization"] == 0.9 and values["free_gib"] < 0.9 * TOTAL_GIB
        # vLLM's free figure and NVML's after the failed engine agree, so the smaller counts; the
        # margin is max(0.5 GiB, 2%) plus 1.0 GiB for the CUDA graphs vLLM 0.26 captures outside
        # its budget
        free_gib = min(vllm.total_gib - vllm.other_gib, values["free_gib"])
        expected = floor2((free_gib - max(0.5, 0.02 * TOTAL_GIB) - 1.0) / TOTAL_GIB)
        (relaunch,) = h.relaunches()
        assert relaunch["change"] == {"gpu_memory_utilization": [0.9, expected]}
        assert f"{free_gib:.2f} of {TOTAL_GIB:.2f} GiB is free" in relaunch["reason"]
        assert "for CUDA graphs" in relaunch["reason"]
        assert expected * TOTAL_GIB <= values["free_gib"]
        assert status["gpu_memory_utilization"] == expected and status["attempt"] == 2
    run(scenario())


def test_no_kv_cache_memory_raises_utilization_and_reaches_ready(make) -> None:
    async def scenario() -> None:
        # 0.33 × 23.99 GiB = 7.92 GiB: the weights (7.56) fit, activations and non-torch memory do not
        h = make(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.33", "recovery.min_gpu_memory_utilization=0.2"]).start()
        status = await h.ready()
        assert kinds(h)[0] == "no_kv_cache_memory"
        first = h.relaunches()[0]
        old, new = first["change"]["gpu_memory_utilization"]
        assert old == 0.33 and 0.33 < new <= 0.92
        assert "no memory is left for the KV cache" in first["reason"]
        # what follows can only be fitting the context into the now non-empty KV cache
        assert set(kinds(h)[1:]) <= {"kv_cache_too_small"}
        assert status["gpu_memory_utilization"] == new
        assert status["kv_cache_tokens"] >= status["max_model_len"] >= 4096
        assert status["attempt"] <= 5
    run(scenario())


def test_cuda_oom_at_graph_capture_steps_down_and_reaches_ready(make) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(fault="oom_at_graph_capture")).start()
        status = await h.ready()
        assert kinds(h) and set(kinds(h)) == {"cuda_oom"}
        assert status["attempt"] <= 5
        changes = [r["change"] for r in h.relaunches()]
        assert all(changes), changes  # every relaunch changed something
        # CUDA graphs are skipped only by enforce_eager: that is what finally works, after the step down
        assert changes[0] == {"gpu_memory_utilization": [0.9, 0.85]}
        assert changes[-1] == {"enforce_eager": [False, True]}
        assert "--enforce-eager" in status["argv"]
    run(scenario())


def test_cuda_oom_that_no_change_fixes_gives_up_at_the_bound(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> None:
        h = make(FakeVllm(fault="oom_at_load")).start()
        assert await h.exit_code() == 3
        events = [e for e, _ in h.events()]
        assert events.count("launch") == 5  # recovery.max_attempts
        assert events[-2:] == ["give_up", "stop"]
        assert "recovery.max_attempts = 5" in h.daemon.history[-2]["reason"]
        assert h.daemon.state.value == "failed"
        assert not any(e.running for e in h.vllm.engines)
    run(scenario())
    assert "state starting -> failed" in caplog.text


def test_engine_death_after_ready_restarts_with_the_same_arguments(make) -> None:
    async def scenario() -> None:
        h = make().start()
        before = await h.ready()
        h.engine.die()
        after = await h.ready(attempt=2)
        # the same arguments; behind the front door the engine listens on a fresh private port
        port = before["argv"].index("--port") + 1
        assert after["argv"][:port] + after["argv"][port + 1:] == before["argv"][:port] + before["argv"][port + 1:]
        assert after["argv"][port] != before["argv"][port] and after["pid"] != before["pid"]
        assert after["restarts"] == 1 and after["restarts_by_reason"] == {"engine_dead": 1}
        assert [e for e, _ in h.events()] == ["launch", "ready", "exit", "relaunch", "launch", "ready"]
        assert h.daemon.history[2]["failure"]["kind"] == "engine_dead"
        relaunch = h.daemon.history[3]
        assert relaunch["change"] is None and "same arguments" in relaunch["reason"]
        assert "after it was ready" in relaunch["reason"]
    run(scenario())


def test_unknown_model_fails_at_once_with_exit_3(make) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(fault="model_not_found")).start()
        assert await h.exit_code() == 3
        assert [e for e, _ in h.events()] == ["launch", "exit", "give_up", "stop"]
        assert all(e["attempt"] == 1 for e in h.daemon.history)
        assert h.daemon.history[1]["failure"]["kind"] == "model_not_found"
        assert "cannot find the model 'Qwen/Qwen3-4B'" in h.daemon.history[2]["reason"]
        # the give-up line names the kind once and vLLM's message once
        line = h.daemon.gave_up_line
        assert line.startswith("model_not_found: vLLM cannot find the model 'Qwen/Qwen3-4B'")
        assert line.count("Invalid repository ID") == 1
    run(scenario())


@pytest.mark.parametrize("fault", ["port_in_use", "bind_failed"])
def test_engine_port_taken_by_another_server_gives_up_without_a_loop(make, fault: str) -> None:
    """Without the front door the engine listens on the profile's port: another server on it is
    not something a relaunch fixes."""
    async def scenario() -> None:
        h = make(FakeVllm(fault=fault), sets=["frontdoor.enabled=false"]).start()
        assert await h.exit_code() == 3
        assert [e for e, _ in h.events()] == ["launch", "exit", "give_up", "stop"]
        assert h.daemon.history[1]["failure"]["kind"] == "port_in_use"
        assert f"port {h.profile.vllm.port} is already in use" in h.daemon.history[2]["reason"]
    run(scenario())


def test_a_failed_boot_teaches_the_planner_this_hosts_overhead(make) -> None:
    """kv_cache_too_small that recovery may not fix (the context may not shrink, utilization may
    not grow): the daemon gives up, and the failed log still calibrated the planner."""
    async def scenario() -> Harness:
        h = make(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5", "recovery.min_max_model_len=40960",
                       "recovery.min_gpu_memory_utilization=0.4", "recovery.max_gpu_memory_utilization=0.5"]).start()
        assert await h.exit_code() == 3
        return h
    h = run(scenario())
    entry = Calibration.in_state_dir(h.settings.state_dir).lookup("Qwen/Qwen3-4B", "0.26.0", "NVIDIA GeForce RTX 4090 D", 1)
    assert entry is not None, "no calibration learned from the failed boot"
    (obs,) = entry.observations
    assert obs.gpu_memory_utilization == 0.5
    # what the fake vLLM spends besides weights and KV (0.44 GiB), within the printed rounding
    assert obs.overhead_gib == pytest.approx(0.44, abs=0.01), obs


def test_failed_stays_visible_and_a_restart_tries_again(make) -> None:
    """After giving up the daemon stays in `failed` for LLM_SUPERVISOR_FAILED_LINGER_S: status says
    why; `restart` tries again from the planned arguments; a stop then exits 3."""
    async def scenario() -> None:
        h = make(FakeVllm(fault="oom_at_load"), sets=["recovery.max_attempts=2", "recovery.backoff_initial_s=0.1"],
                 failed_linger_s=60).start()
        await h.until(lambda: h.daemon.state.value == "failed", what="failed")
        status = h.daemon.status()
        assert status["attempt"] == 2 and status["message"].startswith("failed: ")
        assert "recovery.max_attempts = 2" in status["message"]
        assert status["history"][-1]["event"] == "give_up"
        assert not h.task.done()  # still there, saying why
        h.daemon.command("restart")
        await h.until(lambda: h.daemon.state.value == "failed" and h.daemon.attempt == 4, what="failed again")
        events = [e for e, _ in h.events()]
        assert events.count("give_up") == 2 and "restart" in events
        assert h.daemon.restarts_by_reason["admin"] == 1
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 3
    run(scenario())


def test_failed_linger_ends_on_its_own(make) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(fault="model_not_found"), failed_linger_s=30)
        failed: list[float] = []
        h.daemon.on_state = lambda state, why: failed.append(h.clock.monotonic()) if state.value == "failed" else None
        h.start()
        assert await h.exit_code() == 3
        # 30 virtual seconds from the failure; this test sees the exit within one 0.05 s poll
        assert len(failed) == 1 and 30 <= h.clock.monotonic() - failed[0] < 30.06
    run(scenario())


@pytest.mark.parametrize("fault", ["port_in_use", "bind_failed"])
@pytest.mark.parametrize("version", ["0.26.0", "0.34.0"])
def test_behind_the_front_door_a_taken_private_port_is_a_relaunch_on_a_fresh_one(make, fault: str, version: str) -> None:
    """Another process may take the private port between its choice and vLLM's bind (seen on a
    loaded host beside a Ray cluster); vLLM's own message does not say which port it was."""
    async def scenario() -> None:
        h = make(FakeVllm(faults={1: fault}, version=version)).start()
        status = await h.ready(attempt=2)
        assert [e for e, _ in h.events()] == ["launch", "exit", "relaunch", "launch", "ready"]
        assert h.daemon.history[1]["failure"]["kind"] == "port_in_use"
        first, second = (spec.argv[spec.argv.index("--port") + 1] for spec in h.launcher.specs)
        assert first != second and str(h.profile.vllm.port) not in (first, second)
        assert f"private port {first} (behind the front door)" in h.daemon.history[2]["reason"]
        assert status["url"].endswith(f":{h.profile.vllm.port}")
    run(scenario())
