"""The daemon's loop in-process, in virtual time (tests/fakes.py): states and their REST view,
the facts it reports, commands, sd_notify, hang detection, and a bug in its own tasks."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeGpus, FakeVllm, Harness, harnesses
from llm_supervisor.api.server import create_app
from llm_supervisor.errors import RuntimeFailure
from llm_supervisor.runtime.commands import Command
from llm_supervisor.states import State

CONTRACT_STATUS_KEYS = {"state", "profile", "pid", "uptime_s", "argv", "attempt", "restarts", "kv_cache_tokens",
                        "max_concurrency", "max_model_len", "gpu_memory_utilization", "gpus", "cpus", "history"}


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (1, 2))


class Recorder:
    """Every state the daemon entered, with what /readyz answered in that state."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.states: list[str] = []
        h.daemon.on_state = lambda state, why: self.states.append(state.value)


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.parametrize("version", ["0.26.0", "0.34.0"])
def test_ready_reports_the_facts_and_confirms_them_through_metrics(make, caplog, version: str) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> dict[str, Any]:
        h = make(FakeVllm(version=version)).start()
        status = await h.ready()
        await h.until(lambda: h.daemon.metrics_kv_tokens is not None, what="the /metrics check")
        status = h.daemon.status()
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        assert not any(e.running for e in h.vllm.engines)
        return status

    status = asyncio.run(scenario())
    assert status["ready"] is True and status["profile"] == "4090d-qwen3-4b" and status["simulated"] is True
    assert CONTRACT_STATUS_KEYS <= set(status)
    assert status["attempt"] == 1 and status["restarts"] == 0
    assert [h["event"] for h in status["history"]] == ["launch", "ready"]
    assert status["max_model_len"] == 40960
    tokens, conc = status["kv_cache_tokens"], status["max_concurrency"]
    assert isinstance(tokens, int) and tokens > 40960
    assert conc == pytest.approx(tokens / 40960, abs=0.01)
    assert status["kv_cache_tokens_metrics"] == tokens  # the engine's /metrics agrees with its log
    assert "KV tokens differ" not in caplog.text
    # once, although vLLM 0.28+ prints both figures on one line (two facts)
    assert caplog.text.count(f"vLLM reports {tokens:,} KV-cache tokens, max concurrency {conc:.2f}x at 40,960 tokens") == 1
    assert f"ready: {tokens:,} KV tokens" in caplog.text
    assert "state stopping -> stopped" in caplog.text


def test_states_and_the_rest_api_through_a_full_cycle(make, caplog) -> None:
    """starting → ready → engine death → backoff → starting → ready → admin restart → restarting →
    starting → ready → stop → stopped, with /readyz and /metrics telling the truth at each step."""
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> None:
        h = make()
        rec = Recorder(h)
        app = create_app(h.daemon.status, h.daemon.command, None)
        api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 5000)), base_url="http://d")
        h.start()

        await h.until(lambda: h.daemon.state is State.STARTING, what="starting")
        assert (await api.get("/healthz")).status_code == 200
        r = await api.get("/readyz")
        assert r.status_code == 503 and r.json()["state"] == "starting"

        status = await h.ready()
        assert status["pid"] and status["argv"][-1] == "--enable-prefix-caching"
        assert (await api.get("/readyz")).status_code == 200
        m = metrics((await api.get("/metrics")).text)
        assert m[("llm_supervisor_ready", ())] == 1
        assert m[("llm_supervisor_state", (("state", "ready"),))] == 1
        assert m[("llm_supervisor_kv_cache_tokens", ())] == status["kv_cache_tokens"]
        gpu = await h.until(lambda: next((g for g in h.daemon.status()["gpus"] if g["memory_used_mib"] > 1000), None),
                            what="the GPU poll to see the engine's memory")
        assert gpu["memory_total_mib"] == 24564

        # the engine dies: backoff, then a new start, then ready again
        h.engine.die()
        await h.until(lambda: h.daemon.state is State.BACKOFF, what="backoff")
        backoff = h.daemon.status()
        assert backoff["ready"] is False and backoff["pid"] is None
        r = await api.get("/readyz")
        assert r.status_code == 503 and r.json()["state"] == "backoff"
        m = metrics((await api.get("/metrics")).text)
        assert m[("llm_supervisor_restarts_total", (("reason", "engine_dead"),))] == 1
        assert m[("llm_supervisor_ready", ())] == 0
        second = await h.ready(attempt=2)
        assert second["restarts_by_reason"] == {"engine_dead": 1}

        # admin restart
        r = await api.post("/restart")
        assert r.status_code == 202 and r.json()["action"] == "restart"
        third = await h.ready(attempt=3)
        assert third["pid"] != second["pid"] and third["restarts_by_reason"] == {"engine_dead": 1, "admin": 1}
        assert [e for e, _ in h.events()][-3:] == ["restart", "launch", "ready"]

        r = await api.post("/stop")
        assert r.status_code == 202
        assert await h.exit_code() == 0
        # after a stop, no command is taken
        r = await api.post("/restart")
        assert r.status_code == 409 and "already stopping" in r.json()["detail"]
        await api.aclose()
        assert rec.states == ["starting", "ready", "backoff", "starting", "ready", "restarting", "starting", "ready",
                              "stopping", "stopped"]

    asyncio.run(scenario())
    assert "state ready -> restarting: restart requested" in caplog.text
    assert "state ready -> stopping: stop requested" in caplog.text


def test_commands_are_an_enum_with_one_inbox(make) -> None:
    async def scenario() -> None:
        h = make()
        with pytest.raises(RuntimeFailure, match="unknown command 'reboot'"):
            h.daemon.command("reboot")
        with pytest.raises(RuntimeFailure, match="unknown command 'reload'"):  # SIGHUP only, not the API
            h.daemon.command("reload")
        h.start()
        await h.ready()
        h.daemon.command("stop")
        # after a stop nothing else is taken: the API answers 409 rather than 202 for nothing
        with pytest.raises(RuntimeFailure, match="already stopping"):
            h.daemon.command("restart")
        assert await h.exit_code() == 0
        assert h.daemon.attempt == 1
    asyncio.run(scenario())


@pytest.mark.parametrize("command", ["restart", "stop"])
def test_a_command_during_backoff_skips_the_wait(make, command: str) -> None:
    """A restart launches at once; a stop ends the daemon without another launch."""
    async def scenario() -> None:
        h = make(sets=["recovery.backoff_initial_s=100", "recovery.backoff_max_s=100"]).start()
        await h.ready()
        h.engine.die()
        await h.until(lambda: h.daemon.state is State.BACKOFF, what="backoff")
        asked_at = h.clock.monotonic()
        h.daemon.command(command)
        if command == "restart":
            await h.ready(attempt=2)
        else:
            assert await h.exit_code() == 0
            assert h.events()[-2:] == [("relaunch", "engine_dead"), ("stop", None)] and len(h.vllm.engines) == 1
        assert h.clock.monotonic() - asked_at < 10
    asyncio.run(scenario())


def test_a_stop_or_restart_during_the_start_ends_that_engine_first(make) -> None:
    """Commands do not wait for a start to finish: a stop ends the starting engine and the daemon
    (no second launch); a restart ends it and launches again, counted as the admin's."""
    async def scenario(command: str) -> Harness:
        h = make(FakeVllm(line_interval_s=2)).start()
        await h.until(lambda: h.daemon.state is State.STARTING and h.vllm.engines, what="a start under way")
        await h.clock.sleep(3)
        h.daemon.command(command)
        return h

    async def stop() -> None:
        h = await scenario("stop")
        assert await h.exit_code() == 0
        assert h.events() == [("launch", None), ("stop", None)]
        assert len(h.vllm.engines) == 1 and not h.engine.running and h.engine.stops

    async def restart() -> None:
        h = await scenario("restart")
        status = await h.ready(attempt=2)
        assert h.events() == [("launch", None), ("restart", None), ("launch", None), ("ready", None)]
        assert status["restarts_by_reason"] == {"admin": 1}
        first, second = h.vllm.engines
        assert not first.running and first.stops and second.running
        h.daemon.command("stop")
        assert await h.exit_code() == 0

    asyncio.run(stop())
    asyncio.run(restart())


def test_a_signal_before_the_loop_ran_is_taken_before_the_first_launch(make) -> None:
    """A signal while the event loop was being built reaches the daemon as its handlers are set,
    before the first launch: a Ctrl-C ends the daemon without starting an engine only to stop it;
    a SIGHUP (reload) is that first launch, not a restart of it."""
    async def stop() -> None:
        h = make()
        h.daemon._on_signal(signal.SIGINT)
        h.start()
        assert await h.exit_code() == 0
        assert h.vllm.engines == [] and h.events() == [("stop", None)]
        assert h.daemon.state is State.STOPPED

    async def reload() -> None:
        h = make()
        h.daemon._on_signal(signal.SIGHUP)
        h.start()
        await h.ready()
        await h.clock.sleep(30)
        assert h.events() == [("launch", None), ("ready", None)] and len(h.vllm.engines) == 1
        h.daemon._on_signal(signal.SIGTERM)
        assert await h.exit_code() == 0

    asyncio.run(stop())
    asyncio.run(reload())


def test_restarts_asked_twice_before_the_first_is_done_relaunch_once(make) -> None:
    async def scenario() -> None:
        h = make().start()
        await h.ready()
        h.daemon.command("restart")
        h.daemon.command("restart")
        await h.ready(attempt=2)
        await h.clock.sleep(30)
        assert h.daemon.attempt == 2 and len(h.vllm.engines) == 2
        assert h.events() == [("launch", None), ("ready", None), ("restart", None), ("launch", None), ("ready", None)]
        h.daemon.command("stop")
        assert await h.exit_code() == 0
    asyncio.run(scenario())


def test_sd_notify_ready_status_watchdog_and_stopping(make) -> None:
    async def scenario() -> Harness:
        h = make(watchdog_s=0.5, notify=True).start()
        status = await h.ready()
        ready_at = h.clock.monotonic()
        await h.until(lambda: h.clock.monotonic() > ready_at + 3, what="3 s of watchdog pings")
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        n = h.notifier
        # READY=1 once, when the daemon is ready
        readies = n.keys("READY")
        assert len(readies) == 1
        kv, conc = status["kv_cache_tokens"], status["max_concurrency"]
        statuses = [v for _t, k, v in n.sent if k == "STATUS"]
        assert f"ready: {kv:,} KV tokens, {conc:.2f}x concurrency at 40,960 tokens (SIMULATED)" in statuses
        before = [v for t, k, v in n.sent if k == "STATUS" and t < readies[0][0]]
        assert any("starting vLLM" in s for s in before), before
        assert f"KV cache: {kv:,} tokens, {conc:.2f}x at 40,960" in before
        # WATCHDOG=1 every 0.5 s (half of WATCHDOG_USEC), from the loop
        pings = [t for t, k, _v in n.sent if k == "WATCHDOG"]
        window = [t for t in pings if ready_at <= t <= ready_at + 3.0]
        assert len(window) in (6, 7), window
        assert {round(b - a, 6) for a, b in zip(pings, pings[1:])} == {0.5}
        assert len(n.keys("STOPPING")) == 1 and n.keys("STOPPING")[0][0] > readies[0][0]
        return h
    asyncio.run(scenario())


def test_sighup_reloads_the_engine_with_reloading_then_ready(make) -> None:
    async def scenario() -> None:
        import signal

        h = make(notify=True).start()
        first = await h.ready()
        h.daemon._on_signal(signal.SIGHUP)
        second = await h.ready(attempt=2)
        n = h.notifier
        (reloading,) = n.keys("RELOADING")
        readies = n.keys("READY")
        assert len(readies) == 2 and readies[0][0] < reloading[0] < readies[1][0]
        assert second["pid"] != first["pid"] and second["restarts_by_reason"] == {"admin": 1}
        h.daemon._on_signal(signal.SIGTERM)
        assert await h.exit_code() == 0
    asyncio.run(scenario())


def test_a_hang_during_startup_is_an_engine_death(make) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(faults={1: "hang_startup"}), sets=["recovery.stall_timeout_s=120"]).start()
        await h.ready(attempt=2)
        exit_event = next(e for e in h.daemon.history if e["event"] == "exit")
        assert exit_event["failure"]["kind"] == "engine_dead"
        assert "no output for 120 s" in exit_event["failure"]["message"]
        assert h.vllm.engines[0].stops, "the hung engine was stopped"
        hung_from = h.vllm.engines[0].stops[0]
        assert 120 <= hung_from <= 125
    asyncio.run(scenario())


def test_a_start_that_talks_but_is_never_ready_ends_at_the_startup_timeout(make) -> None:
    """Output every 30 s (never a stall at 120 s), ready only after minutes: the daemon stops it
    at recovery.startup_timeout_s, relaunches as it is, and gives up when the streak is spent."""
    async def scenario() -> None:
        h = make(FakeVllm(line_interval_s=30), sets=["recovery.stall_timeout_s=120", "recovery.startup_timeout_s=60",
                                                     "recovery.max_attempts=2"]).start()
        assert await h.exit_code() == 3
        assert h.events() == [("launch", None), ("exit", "engine_dead"), ("relaunch", "engine_dead"), ("launch", None),
                              ("exit", "engine_dead"), ("give_up", "engine_dead"), ("stop", None)]
        exit_event = next(e for e in h.daemon.history if e["event"] == "exit")
        assert exit_event["failure"]["message"] == "engine not ready after 60 s (recovery.startup_timeout_s)"
        first, second = (e.stops[0] for e in h.vllm.engines)  # virtual s since the first launch
        assert 60 <= first <= 62 and 60 <= second - first - 1 <= 62, "stopped at the timeout (1 s backoff between)"
        assert h.daemon.state is State.FAILED and all(not e.running for e in h.vllm.engines)
    asyncio.run(scenario())


def test_thread_work_takes_no_virtual_time(make, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the daemon hands to threads (GPU reads, state and log writes) costs real time only: on
    a slow or busy machine the virtual timings these tests check are those of a fast one."""
    async def hang_stopped_at() -> float:
        h = make(FakeVllm(faults={1: "hang_startup"}), sets=["recovery.stall_timeout_s=120"]).start()
        await h.ready(attempt=2)
        return h.vllm.engines[0].stops[0]

    fast = asyncio.run(hang_stopped_at())
    read = FakeGpus.gpus

    def slow(self: FakeGpus) -> list:
        time.sleep(0.05)
        return read(self)
    monkeypatch.setattr(FakeGpus, "gpus", slow)
    assert asyncio.run(hang_stopped_at()) == fast


def test_a_ready_engine_with_requests_waiting_and_no_progress_is_restarted(make) -> None:
    async def scenario() -> None:
        h = make(sets=["recovery.stall_timeout_s=60"]).start()
        await h.ready()
        h.engine.waiting = 3.0  # requests wait, no token is generated
        await h.ready(attempt=2)
        exit_event = next(e for e in h.daemon.history if e["event"] == "exit")
        assert exit_event["failure"]["kind"] == "engine_dead"
        assert "3 requests waiting and no tokens generated for 60 s" in exit_event["failure"]["message"]
    asyncio.run(scenario())


def test_failing_health_is_degraded_and_recovers(make) -> None:
    async def scenario() -> None:
        h = make().start()
        await h.ready()
        h.engine.healthy = False
        await h.until(lambda: h.daemon.state is State.DEGRADED, what="degraded")
        h.engine.healthy = True
        await h.until(lambda: h.daemon.state is State.READY, what="ready again")
        assert h.daemon.attempt == 1  # the same engine
    asyncio.run(scenario())


def test_gpu_memory_in_status_follows_the_state_not_the_next_poll(make) -> None:
    """`ready` shows the engine's memory and `backoff` the memory it freed at once, not up to a
    poll interval (5 s) later."""
    async def scenario() -> tuple[int, int, int, float, float]:
        h = make().start()
        await h.until(lambda: h.daemon.gpus, what="a first GPU reading")
        before = h.daemon.gpus[0]["memory_used_mib"]
        await h.ready()
        at_ready = h.clock.monotonic()
        await h.until(lambda: h.daemon.gpus[0]["memory_used_mib"] > before + 1000, what="the engine's memory")
        seen_ready = h.clock.monotonic() - at_ready
        serving = h.daemon.gpus[0]["memory_used_mib"]
        h.engine.die()
        await h.until(lambda: h.daemon.state is State.BACKOFF, what="backoff")
        at_backoff = h.clock.monotonic()
        await h.until(lambda: h.daemon.gpus[0]["memory_used_mib"] < serving - 1000, what="the freed memory")
        return before, serving, h.daemon.gpus[0]["memory_used_mib"], seen_ready, h.clock.monotonic() - at_backoff

    before, serving, freed, seen_ready, seen_freed = asyncio.run(scenario())
    assert serving - before > 10_000 and freed == before
    assert seen_ready < 1.0 and seen_freed < 1.0


def test_an_engine_that_ignores_sigterm_is_killed_at_the_deadline(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> None:
        h = make(stop_timeout_s=10).start()
        await h.ready()
        h.engine.ignore_sigterm = True
        asked = h.clock.monotonic()
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        assert h.clock.monotonic() - asked >= 10
    asyncio.run(scenario())
    assert "ignored SIGTERM for 10 s (LLM_SUPERVISOR_STOP_TIMEOUT_S) and was killed" in caplog.text


def test_a_second_stop_signal_kills_the_engine_without_waiting_out_the_stop_timeout(make, caplog) -> None:
    """Ctrl-C, then Ctrl-C again: the first asks vLLM to stop (SIGTERM, up to the stop timeout),
    the second ends it now; the daemon still stops cleanly (exit 0, state stopped)."""
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> tuple[float, list[float], State]:
        h = make(stop_timeout_s=30).start()
        await h.ready()
        h.engine.ignore_sigterm = True
        asked = h.clock.monotonic()
        h.daemon._on_signal(signal.SIGINT)
        await h.until(lambda: h.engine.stops, what="the staged stop")
        await h.clock.sleep(2)
        assert h.engine.running and not h.engine.hurried
        h.daemon._on_signal(signal.SIGINT)
        assert await h.exit_code() == 0
        return h.clock.monotonic() - asked, h.engine.hurried, h.daemon.state

    took, hurried, state = asyncio.run(scenario())
    assert len(hurried) == 1 and took < 10 and state is State.STOPPED
    assert "SIGINT: stopping vLLM (SIGTERM, then SIGKILL after 30 s; a second signal ends it now)" in caplog.text
    assert "SIGINT again: ending vLLM now with SIGKILL" in caplog.text
    assert "killed with SIGKILL on a second stop signal" in caplog.text
    assert "ignored SIGTERM" not in caplog.text


def test_a_signal_during_a_stop_asked_through_the_api_ends_the_engine_now(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> tuple[float, list[float]]:
        h = make(stop_timeout_s=30).start()
        await h.ready()
        h.engine.ignore_sigterm = True
        asked = h.clock.monotonic()
        h.daemon.command("stop")
        await h.until(lambda: h.engine.stops, what="the staged stop")
        h.daemon._on_signal(signal.SIGTERM)
        assert await h.exit_code() == 0
        return h.clock.monotonic() - asked, h.engine.hurried

    took, hurried = asyncio.run(scenario())
    assert len(hurried) == 1 and took < 10
    assert "SIGTERM during a stop: ending vLLM now with SIGKILL" in caplog.text


def test_one_stop_signal_leaves_the_engine_its_stop_timeout(make, caplog) -> None:
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> list[float]:
        h = make(stop_timeout_s=12).start()
        await h.ready()
        h.engine.ignore_sigterm = True
        h.daemon._on_signal(signal.SIGTERM)
        assert await h.exit_code() == 0
        return h.engine.hurried

    assert asyncio.run(scenario()) == []
    # said only when the stop waited (in virtual time) for the whole timeout before the SIGKILL
    assert "ignored SIGTERM for 12 s (LLM_SUPERVISOR_STOP_TIMEOUT_S) and was killed" in caplog.text


def test_an_exception_in_the_readiness_probe_relaunches_instead_of_crashing(make) -> None:
    async def scenario() -> None:
        h = make()
        real_probe = h.daemon.engine_client.probe
        calls = 0

        async def flaky_probe() -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("probe bug")
            return await real_probe()

        h.daemon.engine_client.probe = flaky_probe  # type: ignore[method-assign]
        h.start()
        await h.ready()
        assert h.events()[:5] == [("launch", None), ("exit", "unknown"), ("relaunch", "unknown"), ("launch", None),
                                  ("ready", None)]
        assert "internal error in the supervisor's readiness probe" in h.daemon.history[1]["failure"]["message"]
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        assert not any(e.running for e in h.vllm.engines)
    asyncio.run(scenario())


def test_the_front_door_is_told_what_the_engine_does(make) -> None:
    """Held from the first second, released at ready, re-sent on a death, drained before a planned
    restart, honest when recovery gives up, closed last."""
    async def scenario() -> None:
        h = make().start()
        await h.ready()
        door = h.door
        public = (h.profile.vllm.host, h.profile.vllm.port)
        assert door.calls[0] == ("start", *public)
        assert door.names()[:3] == ["start", "starting", "ready"]
        assert door.calls[1] == ("starting", None)  # no launch measured yet on this host
        engine_url = door.calls[2][1]
        assert engine_url == h.daemon.engine_url and not engine_url.endswith(f":{public[1]}")
        assert h.daemon.status()["frontdoor"]["enabled"] is True
        first_ready_s = h.daemon.ready_seconds

        h.engine.die()
        await h.ready(attempt=2)
        assert door.names()[3:6] == ["down", "starting", "ready"]
        assert door.calls[4][1] == first_ready_s > 0  # the measured time to ready, for the holds
        assert door.calls[5][1] != engine_url  # a fresh private port

        h.daemon.command("restart")
        await h.ready(attempt=3)
        assert door.names()[6:9] == ["drain", "starting", "ready"]

        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        assert door.names()[-1] == "stop" and "drain" not in door.names()[9:]  # a stop does not wait
    asyncio.run(scenario())


def test_the_front_door_hears_of_a_lost_guard_at_once(make) -> None:
    """The guard killed: no exit report, but the engine is gone all the same; the front door holds
    (state down) from that moment, not only from the relaunch after the backoff."""
    async def scenario() -> None:
        h = make().start()
        await h.ready()
        h.engine.guard_killed()
        await h.until(lambda: h.door.names()[3:4] == ["down"], what="the front door told")
        assert h.daemon.state.value == "backoff"
        await h.ready(attempt=2)
        assert h.door.names()[3:6] == ["down", "starting", "ready"]
        relaunch = [e for e in h.daemon.status()["history"] if e["event"] == "relaunch"]
        assert relaunch[0]["failure"]["kind"] == "engine_dead" and "lost its guard" in relaunch[0]["failure"]["message"]
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
    asyncio.run(scenario())


@pytest.mark.parametrize("keep_alive", [False, True])
def test_an_engine_reported_dead_is_ended_at_once_not_when_its_api_server_exits(make, caplog, keep_alive: bool) -> None:
    """vLLM's API server outlives its dead engine by up to 5 s (its watchdog). Once it has said so in
    an ERROR line, the supervisor tells the front door and ends the tree at once; with
    VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1 (someone wants the dead server kept) it waits for the exit."""
    caplog.set_level(logging.INFO, logger="llm_supervisor")

    async def scenario() -> tuple[float, list[float], dict[str, Any]]:
        h = make(sets=['env.VLLM_KEEP_ALIVE_ON_ENGINE_DEATH="1"'] if keep_alive else []).start()
        await h.ready()
        first = h.engine
        died_at = h.clock.monotonic()
        first.die(linger_s=5.0)
        await h.until(lambda: "down" in h.door.names(), what="the front door told")
        down_after = h.clock.monotonic() - died_at
        await h.ready(attempt=2)
        relaunch = h.relaunches()[0]
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0
        return down_after, [t - died_at for t in first.stops], relaunch

    down_after, stops, relaunch = asyncio.run(scenario())
    assert relaunch["failure"]["kind"] == "engine_dead" and "EngineDeadError" in relaunch["failure"]["message"]
    if keep_alive:
        assert down_after >= 5.0 and stops == []  # the API server's own exit
        assert "reports its engine dead" not in caplog.text
    else:
        assert down_after < 1.0 and len(stops) == 1 and stops[0] < 1.0
        assert "attempt 1: vLLM reports its engine dead; ending the engine's processes now" in caplog.text
        assert "(ended by the supervisor after vLLM reported its engine dead) (engine_dead)" in caplog.text


def test_the_front_door_answers_honestly_when_recovery_gives_up(make) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(fault="model_not_found")).start()
        assert await h.exit_code() == 3
        failed = [c for c in h.door.calls if c[0] == "failed"]
        assert len(failed) == 1 and "not being restarted" in failed[0][1]
        assert h.door.names()[-1] == "stop"
    asyncio.run(scenario())


def test_without_the_front_door_the_engine_listens_on_the_profiles_address(make) -> None:
    async def scenario() -> None:
        h = make(sets=["frontdoor.enabled=false"]).start()
        status = await h.ready()
        assert h.door.calls == [] and status["frontdoor"] == {"enabled": False}
        argv = h.launcher.specs[0].argv
        assert argv[argv.index("--port") + 1] == str(h.profile.vllm.port)
    asyncio.run(scenario())
