"""Recovery over real processes: the daemon launches the simulator with arguments that fail the
way vLLM fails, and must reach `ready` in the fewest relaunches, with computed arguments and a
history that explains each step; non-recoverable failures end in `failed` (exit 3) at once.

`recovery.plan_first_launch=false` makes the first launch use the profile's arguments as they
are, so vLLM's (the simulator's) own failure happens instead of the planner avoiding it.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import time

import pytest

from llm_supervisor.vllm.planner import Calibration

from daemon_harness import (  # noqa: F401 - `daemons` is a fixture
    DaemonRun,
    alive,
    daemons,
    failure_kinds,
    history_events,
    port_free,
    relaunches,
    wait_until,
)

NO_PLAN = "recovery.plan_first_launch=false"
TOTAL_MIB = 24564  # the simulated RTX 4090 D as NVML reports it
BASELINE_MIB = 300  # the simulated driver's own share of every GPU (simgpu)


def _floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-9) / 100


def _ready_or_failed(run: DaemonRun, timeout: float = 60) -> dict:
    return run.wait_status(lambda s: s["state"] in ("ready", "failed"), timeout, "ready or failed")


def test_kv_cache_too_small_recovers_in_one_relaunch_and_is_remembered(daemons) -> None:
    # Utilization 0.5 leaves ~4 GiB of KV cache: 40,960 tokens (5.62 GiB) do not fit.
    run: DaemonRun = daemons(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"]).start()
    status = run.wait_ready(60)

    assert history_events(status) == ["launch", "exit", "relaunch", "launch", "ready"]
    assert status["attempt"] == 2 and status["restarts"] == 1
    assert status["restarts_by_reason"] == {"kv_cache_too_small": 1}
    failure = next(h["failure"] for h in status["history"] if h["event"] == "exit")
    assert failure["kind"] == "kv_cache_too_small"
    values = failure["values"]
    assert values["max_model_len"] == 40960
    assert values["needed_gib"] == pytest.approx(5.62, abs=0.01)
    assert values["available_gib"] < values["needed_gib"]
    estimate = values["estimated_max_model_len"]
    # the simulator printed it in vLLM's words; the daemon took it from there
    assert f"the estimated maximum model length is {estimate}." in run.engine_log()

    (relaunch,) = relaunches(status)
    recovered = estimate // 16 * 16
    assert relaunch["change"] == {"max_model_len": [40960, recovered]}
    assert relaunch["failure"]["kind"] == "kv_cache_too_small"
    assert str(estimate) in relaunch["reason"] and "40960 → " in relaunch["reason"]
    assert status["max_model_len"] == recovered
    assert status["argv"][status["argv"].index("--max-model-len") + 1] == str(recovered)
    assert status["gpu_memory_utilization"] == 0.5
    # each history entry says when, what, which failure and which change; reasons carry numbers
    for entry in status["history"]:
        assert set(entry) >= {"at", "event", "failure", "change"}
        time.strptime(entry["at"][:19], "%Y-%m-%dT%H:%M:%S")
    launch = status["history"][0]
    assert "--max-model-len 40960" in launch["reason"] and "--gpu-memory-utilization 0.5" in launch["reason"]
    assert relaunch["failure"]["message"].startswith("ValueError: To serve at least one request")
    assert "5.62 GiB" in relaunch["reason"] and "utilization 0.5" in relaunch["reason"]
    ready = status["history"][-1]
    assert f"{status['kv_cache_tokens']:,} KV tokens" in ready["reason"]

    # the largest context that fits is what the KV cache holds at these settings
    largest = status["kv_cache_tokens"]
    assert recovered <= largest
    assert recovered >= 0.95 * largest, (recovered, largest)

    # Last-good arguments: stop, start again -> the first launch uses the recovered length.
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    before = len(run.stderr())
    run.restart_process()
    again = run.wait_ready(60)
    assert history_events(again) == ["launch", "ready"], again["history"]
    assert again["attempt"] == 1 and again["restarts"] == 0
    assert again["max_model_len"] == recovered
    assert again["argv"][again["argv"].index("--max-model-len") + 1] == str(recovered)
    assert "starting from the arguments that last reached ready" in run.stderr()[before:]
    assert f"max_model_len 40960 → {recovered}" in run.stderr()[before:]


def test_kv_cache_too_small_after_a_warm_start_recovers_in_one_relaunch(daemons) -> None:
    """A compile cache from an earlier boot at 40,960 tokens makes the failing start warm; the
    relaunch with a new max_model_len compiles cold (vLLM hashes max_model_len into the compile
    cache), with a larger peak activation (0.80 against 0.62 GiB in the real 0.26 H100 logs)."""
    warm = daemons(sets=[NO_PLAN]).start()
    warm.wait_ready(60)
    warm.signal(signal.SIGTERM)
    assert warm.wait_exit(30) == 0
    run = daemons(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"],
                  env={"VLLM_CACHE_ROOT": warm.env["VLLM_CACHE_ROOT"]}).start()
    status = _ready_or_failed(run)
    assert status["state"] == "ready", status["message"]
    assert history_events(status) == ["launch", "exit", "relaunch", "launch", "ready"], \
        [r["change"] for r in relaunches(status)]
    (relaunch,) = relaunches(status)
    estimate = relaunch["failure"]["values"]["estimated_max_model_len"]
    old, new = relaunch["change"]["max_model_len"]
    assert old == 40960 and new < estimate  # shortened below the warm estimate
    assert "warm start" in relaunch["reason"]
    largest = status["kv_cache_tokens"]
    assert status["max_model_len"] == new
    assert 0.95 * largest <= new <= largest, (new, largest)


def test_insufficient_free_memory_relaunches_with_utilization_from_free_memory(daemons) -> None:
    other_mib = 6000  # "other processes" hold 6000 MiB: 0.9 of the GPU is not free
    run = daemons(sets=[NO_PLAN], env={"LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": str(other_mib)}).start()
    status = _ready_or_failed(run)

    first = next(h for h in status["history"] if h["event"] == "exit")
    assert first["failure"]["kind"] == "insufficient_free_memory"
    values = first["failure"]["values"]
    total_gib = TOTAL_MIB / 1024
    assert values["total_gib"] == pytest.approx(total_gib, abs=0.01)
    assert values["requested_utilization"] == 0.9
    assert values["free_gib"] < 0.9 * total_gib

    # vLLM's own free figure (measured after the new engine's CUDA context) and the GPU's after the
    # failed engine is gone agree within a context, so the smaller counts; the margin is
    # max(0.5 GiB, 2%) plus 1.0 GiB for the CUDA graphs vLLM 0.26 captures outside its budget.
    free_after_exit = (TOTAL_MIB - other_mib - BASELINE_MIB) / 1024
    free_gib = min(free_after_exit, values["free_gib"])
    expected = _floor2((free_gib - max(0.5, 0.02 * total_gib) - 1.0) / total_gib)
    relaunch = relaunches(status)[0]
    assert relaunch["failure"]["kind"] == "insufficient_free_memory"
    assert relaunch["change"] == {"gpu_memory_utilization": [0.9, expected]}
    assert f"{free_gib:.2f} of {total_gib:.2f} GiB is free" in relaunch["reason"]
    assert "for CUDA graphs" in relaunch["reason"]
    # the new utilization passes vLLM's own free-memory check (what vLLM reported as free)
    assert expected * total_gib <= values["free_gib"]
    assert failure_kinds(status).count("insufficient_free_memory") == 1

    assert status["state"] == "ready", status["message"]
    assert status["gpu_memory_utilization"] == expected
    assert len(relaunches(status)) == 1, failure_kinds(status)


def test_no_kv_cache_memory_raises_utilization_and_reaches_ready(daemons) -> None:
    # 0.33 × 23.99 GiB = 7.92 GiB: the weights (7.56) fit, activations and non-torch memory do not.
    run = daemons(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.33",
                        "recovery.min_gpu_memory_utilization=0.2"]).start()
    status = _ready_or_failed(run)
    assert status["state"] == "ready", status["message"]
    kinds = failure_kinds(status)
    assert kinds[0] == "no_kv_cache_memory"
    first = relaunches(status)[0]
    assert first["failure"]["kind"] == "no_kv_cache_memory"
    old, new = first["change"]["gpu_memory_utilization"]
    assert old == 0.33 and 0.33 < new <= 0.92
    assert "no memory is left for the KV cache" in first["reason"]
    # what follows can only be fitting the context into the now non-empty KV cache
    assert set(kinds[1:]) <= {"kv_cache_too_small"}
    assert status["gpu_memory_utilization"] == new
    assert status["kv_cache_tokens"] >= status["max_model_len"] >= 4096
    assert status["attempt"] <= 5


def test_cuda_oom_at_graph_capture_steps_down_and_reaches_ready(daemons) -> None:
    run = daemons(env={"LLM_SUPERVISOR_SIM_FAULT": "oom_at_graph_capture"}).start()
    status = _ready_or_failed(run)
    assert status["state"] == "ready", status["message"]
    kinds = failure_kinds(status)
    assert kinds and set(kinds) == {"cuda_oom"}
    assert status["attempt"] <= 5  # recovery.max_attempts
    changes = [r["change"] for r in relaunches(status)]
    assert all(c for c in changes), changes  # every relaunch changed something
    # CUDA graphs are skipped only by enforce_eager: that is what finally works, after the step down
    assert changes[0] == {"gpu_memory_utilization": [0.9, 0.85]}
    assert changes[-1] == {"enforce_eager": [False, True]}
    assert "--enforce-eager" in status["argv"]


def test_cuda_oom_that_no_change_fixes_gives_up_at_the_bound(daemons) -> None:
    run = daemons(env={"LLM_SUPERVISOR_SIM_FAULT": "oom_at_load"}).start()
    assert run.wait_exit(90) == 3, run.stderr_tail()
    history = run.state_history()
    assert [h["event"] for h in history].count("launch") == 5  # recovery.max_attempts
    assert history[-2]["event"] == "give_up" and history[-1]["event"] == "stop"
    assert "recovery.max_attempts = 5" in history[-2]["reason"]
    assert "state starting -> failed" in run.stderr()
    assert not run.tree()


def test_engine_death_after_ready_restarts_with_the_same_arguments(daemons) -> None:
    run = daemons().start()
    before = run.wait_ready()
    core = run.engine_core()
    assert core is not None
    held = run.held_mib()
    os.kill(core.pid, signal.SIGKILL)
    after = run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, 60, "ready again")

    assert after["argv"] == before["argv"]
    assert after["pid"] != before["pid"]
    assert after["restarts"] == 1 and after["restarts_by_reason"] == {"engine_dead": 1}
    assert history_events(after) == ["launch", "ready", "exit", "relaunch", "launch", "ready"]
    exit_event = after["history"][2]
    assert exit_event["failure"]["kind"] == "engine_dead"
    relaunch = after["history"][3]
    assert relaunch["change"] is None and "same arguments" in relaunch["reason"]
    assert "after it was ready" in relaunch["reason"]
    # one engine holds the simulated GPU, not two: the dead one released its share
    new_core = run.engine_core()
    assert new_core is not None and new_core.pid != core.pid
    assert not alive(core)
    assert 0 < run.held_mib() < 1.5 * held


def test_unknown_model_fails_at_once_with_exit_3(daemons) -> None:
    run = daemons(args=["--model", "nobody-here/no-such-model"]).start()
    assert run.wait_exit(60) == 3, run.stderr_tail()
    history = run.state_history()
    assert [h["event"] for h in history] == ["launch", "exit", "give_up", "stop"]
    assert all(h["attempt"] == 1 for h in history)
    assert history[1]["failure"]["kind"] == "model_not_found"
    assert "cannot find the model 'nobody-here/no-such-model'" in history[2]["reason"]
    assert "state starting -> failed" in run.stderr()
    assert not run.tree() and run.held_mib() == 0


def test_missing_model_folder_is_bad_input(daemons) -> None:
    run = daemons(args=["--model", "/nonexistent/folder"]).start()
    assert run.wait_exit(30) == 2
    lines = [ln for ln in run.stderr().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --model /nonexistent/folder: no such folder")


def test_engine_port_in_use_is_refused_before_launch(daemons) -> None:
    run = daemons()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", run.engine_port))
        holder.listen()
        run.start()
        assert run.wait_exit(30) == 1
    lines = [ln for ln in run.stderr().splitlines() if ln.startswith("error:")]
    assert lines == [ln for ln in lines if f"engine port {run.engine_port} on 127.0.0.1 is in use" in ln]
    assert len(lines) == 1
    assert "Traceback" not in run.stderr()
    assert not (run.state_dir / "logs").exists()  # no engine was ever launched
    assert port_free(run.engine_port)


def test_engine_port_taken_after_the_check_gives_up_without_a_loop(daemons) -> None:
    """Another server grabs the port between the daemon's check and vLLM's bind."""
    run = daemons(startup_s=0.3)
    holder = socket.socket()
    try:
        run.start()
        wait_until(lambda: "launch attempt 1:" in run.stderr(), 30, 0.005, "the first launch")
        try:
            holder.bind(("127.0.0.1", run.engine_port))
        except OSError:
            pytest.skip("the engine bound its port before this test could take it")
        holder.listen()
        assert run.wait_exit(60) == 3, run.stderr_tail()
    finally:
        holder.close()
    history = run.state_history()
    assert [h["event"] for h in history] == ["launch", "exit", "give_up", "stop"]
    assert history[1]["failure"]["kind"] == "port_in_use"
    assert f"port {run.engine_port} is already in use" in history[2]["reason"]
    assert not run.tree()


def test_a_failed_boot_teaches_the_planner_this_hosts_overhead(daemons) -> None:
    """kv_cache_too_small that recovery may not fix (the context may not shrink, utilization may
    not grow): the daemon gives up, and the failed log still calibrated the planner."""
    run = daemons(sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5", "recovery.min_max_model_len=40960",
                        "recovery.min_gpu_memory_utilization=0.4", "recovery.max_gpu_memory_utilization=0.5"]).start()
    assert run.wait_exit(60) == 3
    entry = Calibration.in_state_dir(run.state_dir).lookup("Qwen/Qwen3-4B", "0.26.0", "NVIDIA GeForce RTX 4090 D", 1)
    assert entry is not None, "no calibration learned from the failed boot"
    (obs,) = entry.observations
    assert obs.gpu_memory_utilization == 0.5
    # what the simulator's memory model spends besides weights and KV at this card's batch limits
    assert 0.2 < obs.overhead_gib < 1.5, obs


def test_failed_stays_visible_and_a_restart_tries_again(daemons) -> None:
    """After giving up the daemon stays in `failed` for LLM_SUPERVISOR_FAILED_LINGER_S: /status says
    why, /readyz is 503, /metrics shows the state; `restart` tries again; SIGTERM then exits 3."""
    run = daemons(env={"LLM_SUPERVISOR_SIM_FAULT": "oom_at_load", "LLM_SUPERVISOR_FAILED_LINGER_S": "60"},
                  sets=["recovery.max_attempts=2", "recovery.backoff_initial_s=0.1"]).start()
    failed = run.wait_status(lambda s: s["state"] == "failed", 60, "failed")
    assert failed["attempt"] == 2 and failed["message"].startswith("failed: ")
    assert "recovery.max_attempts = 2" in failed["message"]
    assert failed["history"][-1]["event"] == "give_up"
    assert run.get("/readyz").status_code == 503
    assert 'llm_supervisor_state{state="failed"} 1.0' in run.get("/metrics").text
    assert run.proc.poll() is None  # still serving

    assert run.post("/restart").status_code == 202
    again = run.wait_status(lambda s: s["state"] == "failed" and s["attempt"] == 4, 60, "failed again")
    events = [h["event"] for h in again["history"]]
    assert events.count("give_up") == 2 and "restart" in events
    assert again["restarts_by_reason"].get("admin") == 1

    t0 = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 3
    assert time.monotonic() - t0 < 10
