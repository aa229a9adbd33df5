"""Stopping a Ray node as the engine's daemon stops: SIGTERM/SIGINT gives `ray start` its staged
stop, a second stop signal ends it now. The worker node runs in-process with a fake `ray start`
in virtual time (tests/fakes.py's clock); the head passes a second signal on to its Ray loops."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from fakes import FakeTree, VirtualClock
from llm_supervisor.cluster.head import HeadDaemon
from llm_supervisor.cluster.process import RAY_STOP_TIMEOUT_S
from llm_supervisor.cluster.spec import RAY_READY_MARKER
from llm_supervisor.cluster.worker import WorkerNode
from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.settings import load_settings
from llm_supervisor.planning.launch import build_plan
from llm_supervisor.runtime.launcher import LaunchSpec, OutputCallback
from llm_supervisor.states import State


class FakeRayStart(FakeTree):
    """`ray start --block` that says it is up and then ignores SIGTERM, as a Ray node busy
    ending its workers can: only the guard's SIGKILL (at the stop timeout, or when hurried) ends it."""

    def __init__(self, on_output: OutputCallback, clock: VirtualClock) -> None:
        self.on_output = on_output
        self.engine_pid, self.guard_pid, self.placement = 7000, 7001, None
        super().__init__(clock)
        self.ignore_sigterm = True

    async def _run(self) -> None:
        await self.clock.sleep(0.5)
        line = f"{RAY_READY_MARKER}."
        self.on_output(f"{line}\n".encode(), [line])


class FakeRayLauncher:
    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.started: list[FakeRayStart] = []

    async def start(self, spec: LaunchSpec, on_output: OutputCallback) -> FakeRayStart:
        self.started.append(FakeRayStart(on_output, self.clock))
        return self.started[-1]


@pytest.fixture
def gcs() -> Any:
    """The head's GCS port, as a worker waits for it to accept connections before `ray start`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int) -> tuple[Any, Any, Any]:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "simgpu"))
    data = {"name": "two-nodes", "hardware": {"gpu_name": "RTX 4090", "gpu_count": 1, "gpu_memory_gib": 24},
            "model": {"id": "Qwen/Qwen3-4B"}, "vllm": {"pipeline_parallel_size": 2, "max_model_len": 8192},
            "cluster": {"nodes": 2, "head_address": f"127.0.0.1:{port}"}}
    path = tmp_path / "two-nodes.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(state_dir=tmp_path / "state")
    profile = load_profile(str(path), tmp_path)
    plan = build_plan(settings, profile, simulate=True, ignore_hardware=True, for_launch=True)
    return settings, profile, plan


def _stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int,
              signals: list[signal.Signals]) -> tuple[float, FakeRayStart, WorkerNode]:
    """A worker joins, then gets `signals` (the second 1 virtual second after the first): how long
    the stop took in virtual time, the fake `ray start`, the node."""
    settings, profile, plan = _profile(tmp_path, monkeypatch, port)

    async def scenario() -> tuple[float, FakeRayStart, WorkerNode]:
        clock = VirtualClock()
        clock.watch_threads(asyncio.get_running_loop())
        launcher = FakeRayLauncher(clock)
        node = WorkerNode(settings, profile, plan, "127.0.0.1", clock=clock, launcher=launcher)  # type: ignore[arg-type]
        task = node.ray.start()
        while node.state is not State.READY:
            assert not task.done(), node.ray.reason
            await clock.sleep(0.1)
        ray = launcher.started[-1]
        asked = clock.monotonic()
        for i, sig in enumerate(signals):
            if i:
                await clock.sleep(1.0)
                assert ray.running and not ray.hurried, "the staged stop should still be waiting"
            node._on_signal(sig)
            while not ray.stops and not task.done():
                await clock.sleep(0.05)
        await task
        return clock.monotonic() - asked, ray, node

    return asyncio.run(scenario())


def test_a_second_stop_signal_ends_ray_on_a_worker_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gcs: int,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")
    took, ray, node = _stopping(tmp_path, monkeypatch, gcs, [signal.SIGINT, signal.SIGINT])
    assert len(ray.hurried) == 1 and took < RAY_STOP_TIMEOUT_S
    assert node.state is State.STOPPED and not ray.running
    assert (f"SIGINT: stopping Ray (SIGTERM, then SIGKILL after {RAY_STOP_TIMEOUT_S:g} s; a second signal ends it now)"
            in caplog.text)
    assert "SIGINT again: ending Ray now with SIGKILL" in caplog.text


def test_one_stop_signal_leaves_ray_its_staged_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gcs: int,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")
    took, ray, node = _stopping(tmp_path, monkeypatch, gcs, [signal.SIGTERM])
    assert ray.hurried == [] and took >= RAY_STOP_TIMEOUT_S
    assert node.state is State.STOPPED and "ending Ray now" not in caplog.text


def test_a_second_stop_signal_on_the_head_also_ends_its_ray_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      gcs: int) -> None:
    settings, profile, plan = _profile(tmp_path, monkeypatch, gcs)

    async def scenario() -> list[tuple[bool, bool]]:
        head = HeadDaemon(settings, profile, plan)
        seen = []
        for _ in range(2):
            head._on_signal(signal.SIGTERM)
            seen.append((head.ray.hurried, head.probe.hurried))
        return seen

    assert asyncio.run(scenario()) == [(False, False), (True, True)]


def test_a_hurried_ray_loop_keeps_its_process_until_the_stop_then_ends_it_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gcs: int) -> None:
    """The head hurries its Ray loops on a second signal while vLLM still stops: Ray keeps running
    (not killed early and taken for a crash, so not restarted), and its stop then skips the 5 s."""
    settings, profile, plan = _profile(tmp_path, monkeypatch, gcs)

    async def scenario() -> tuple[bool, int, float, list[float]]:
        clock = VirtualClock()
        clock.watch_threads(asyncio.get_running_loop())
        launcher = FakeRayLauncher(clock)
        node = WorkerNode(settings, profile, plan, "127.0.0.1", clock=clock, launcher=launcher)  # type: ignore[arg-type]
        node.ray.start()
        while node.state is not State.READY:
            await clock.sleep(0.1)
        node.ray.hurry()
        await clock.sleep(10.0)
        running = launcher.started[-1].running and node.state is State.READY
        asked = clock.monotonic()
        await node.ray.stop()
        return running, len(launcher.started), clock.monotonic() - asked, launcher.started[-1].hurried

    running, starts, took, hurried = asyncio.run(scenario())
    assert running and starts == 1
    assert len(hurried) == 1 and took < RAY_STOP_TIMEOUT_S
