"""Whole-tree CPU pinning over real processes: the guard pins the engine before exec, so the
simulated vLLM API server, its EngineCore and (with tensor parallel 2) both GPU workers all run
on the profile's CPU set, and /status says so."""

from __future__ import annotations

import os

import pytest

from daemon_harness import DaemonRun


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or 1 not in os.sched_getaffinity(0),
                    reason="needs CPUs 0 and 1 to pin to a strict subset")
def test_explicit_cpus_pin_the_whole_engine_tree(daemons) -> None:
    run: DaemonRun = daemons(sets=["affinity.mode=explicit", "affinity.cpus=[1]",
                                   "vllm.tensor_parallel_size=2", "hardware.gpu_count=2"]).start()
    status = run.wait_ready()

    assert status["cpus"] == [1]
    placement = status["placement"]
    assert placement["mode"] == "explicit" and placement["pinned"] is True and placement["cpulist"] == "1"
    assert placement["applied"] and placement["applied"].startswith("cpus 1"), placement["applied"]
    assert "--tensor-parallel-size" in status["argv"]

    titles = {}
    for proc in run.engine_processes():
        cmd = " ".join(proc.cmdline())
        titles[proc.pid] = cmd.split()[0] if cmd.startswith("VLLM::") else "api_server"
        assert os.sched_getaffinity(proc.pid) == {1}, (cmd, os.sched_getaffinity(proc.pid))
    assert sorted(titles.values()) == ["VLLM::EngineCore", "VLLM::Worker_TP0", "VLLM::Worker_TP1", "api_server"]
    assert titles[status["pid"]] == "api_server"
    # the daemon itself is not pinned: only the engine tree is
    assert os.sched_getaffinity(run.pid) == os.sched_getaffinity(0)
    # both simulated GPUs hold memory: the two workers really ran
    assert run.held_mib(0) > 0 and run.held_mib(1) > 0
