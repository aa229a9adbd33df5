"""A bug in one of the daemon's own supervising tasks ends that attempt, not the daemon."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import psutil

from llm_supervisor.runtime.daemon import Daemon
from llm_supervisor.planning.launch import build_plan
from llm_supervisor.config.profile import load_profile
from llm_supervisor.config.settings import load_settings
from llm_supervisor.runtime.states import State

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_exception_in_the_readiness_probe_relaunches_instead_of_crashing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "gpu"))
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_STARTUP_S", "0.3")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    settings = load_settings(state_dir=tmp_path / "state", api_port=_free_port())
    profile = load_profile("4090d-qwen3-4b", PROFILES,
                           overrides=[f"vllm.port={_free_port()}", "recovery.backoff_initial_s=0.1"])
    daemon = Daemon(settings, profile, build_plan(settings, profile, simulate=True, for_launch=True))
    real_probe = daemon._smoke_request
    calls = 0

    async def flaky_probe() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("probe bug")
        return await real_probe()

    daemon._smoke_request = flaky_probe  # type: ignore[method-assign]

    async def scenario() -> int:
        run = asyncio.create_task(daemon.run())
        deadline = time.monotonic() + 60
        while daemon.state is not State.READY:
            assert not run.done(), "the daemon exited"
            assert time.monotonic() < deadline, daemon.status()["history"]
            await asyncio.sleep(0.05)
        pids = [p.pid for p in psutil.Process().children(recursive=True)]
        daemon.command("stop")
        code = await asyncio.wait_for(run, 30)
        assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        return code

    assert asyncio.run(scenario()) == 0
    events = [(h["event"], (h["failure"] or {}).get("kind")) for h in daemon.history]
    assert events[:5] == [("launch", None), ("exit", "unknown"), ("relaunch", "unknown"), ("launch", None),
                          ("ready", None)], events
    assert "internal error in the supervisor's readiness probe" in daemon.history[1]["failure"]["message"]
