"""The front door's admission logic (Gate) alone: states, holds, deadlines, the queue, drains.
No sockets; time is a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from frontdoor_fakes import FakeClock, run, until
from pydantic import ValidationError

from llm_supervisor.frontdoor import EngineState, FrontDoorConfig
from llm_supervisor.frontdoor.gate import (
    DEFAULT_RETRY_AFTER_S,
    ETA_FACTOR,
    ETA_SLACK_S,
    Gate,
    Rejected,
)


def gate(**config: object) -> tuple[Gate, FakeClock, list[object]]:
    clock = FakeClock()
    retired: list[object] = []
    return Gate(FrontDoorConfig(**config), clock, on_retired=retired.append), clock, retired


async def admit(g: Gate, **kw: object) -> asyncio.Task:
    """Ask for a ticket the way the proxy does; a task so the test can watch it wait."""
    async def ask() -> object:
        ticket = g.try_admit(**kw)  # type: ignore[arg-type]
        return ticket if ticket is not None else await g.wait_admit(**{k: v for k, v in kw.items() if k != "probe"})
    task = asyncio.ensure_future(ask())
    await asyncio.sleep(0)
    return task


def rejected(task: asyncio.Task) -> Rejected:
    assert task.done(), "the request is still waiting"
    exc = task.exception()
    assert isinstance(exc, Rejected), exc
    return exc


def test_held_while_starting_then_released_in_arrival_order() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate()
        tasks = [await admit(g) for _ in range(3)]
        assert g.held == 3 and g.in_flight == 0 and not any(t.done() for t in tasks)
        g.set_ready("engine-1")
        tickets = [await t for t in tasks]
        assert [t.upstream for t in tickets] == ["engine-1"] * 3
        assert g.held == 0 and g.in_flight == 3
        for t in tickets:
            g.release(t, "completed", 1.0)
        assert g.in_flight == 0 and g.stats()["completed"] == 3
    run(scenario())


def test_ready_admits_at_once_without_waiting() -> None:
    g, _clock, _ = gate()
    g.set_ready("engine-1")
    ticket = g.try_admit()
    assert ticket is not None and ticket.generation == 1
    assert g.in_flight == 1 and g.queued == 0 and g.held == 0


def test_fixed_hold_timeout_refuses_with_retry_after() -> None:
    async def scenario() -> None:
        g, clock, _ = gate(hold_timeout_s=30)
        g.set_starting(eta_s=120)
        task = await admit(g)
        clock.advance(29.9)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(0.2)
        await asyncio.sleep(0)
        exc = rejected(task)
        assert (exc.status, exc.reason) == (503, "hold_timeout")
        assert exc.retry_after_s == 90  # the engine is expected ready in 120 - 30 s
        assert "not ready" in exc.message and g.held == 0
        assert g.stats()["rejected"]["hold_timeout"] == 1
    run(scenario())


def test_hold_follows_the_daemons_estimate_when_no_timeout_is_set() -> None:
    async def scenario() -> None:
        g, clock, _ = gate()
        g.set_starting(eta_s=100)
        task = await admit(g)
        clock.advance(100 * ETA_FACTOR + ETA_SLACK_S - 1)
        await asyncio.sleep(0)
        assert not task.done(), "a request waits for a slightly late engine"
        clock.advance(2)
        await asyncio.sleep(0)
        exc = rejected(task)
        assert exc.reason == "hold_timeout" and exc.retry_after_s == DEFAULT_RETRY_AFTER_S
    run(scenario())


def test_a_new_estimate_moves_the_deadline_of_held_requests() -> None:
    async def scenario() -> None:
        g, clock, _ = gate()
        g.set_starting(eta_s=10)
        task = await admit(g)
        clock.advance(15)
        g.set_starting(eta_s=60)  # the first try failed; the daemon starts another, slower one
        clock.advance(40)
        await asyncio.sleep(0)
        assert not task.done()
        g.set_ready("engine-1")
        assert (await task).upstream == "engine-1"
    run(scenario())


def test_hold_without_any_estimate_is_bounded_by_hold_max() -> None:
    async def scenario() -> None:
        g, clock, _ = gate(hold_max_s=50)
        task = await admit(g)
        clock.advance(49)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(2)
        await asyncio.sleep(0)
        assert rejected(task).reason == "hold_timeout"
    run(scenario())


def test_hold_bound_refuses_at_once() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate(max_held=2)
        g.set_starting(eta_s=30)
        waiting = [await admit(g) for _ in range(2)]
        third = await admit(g)
        exc = rejected(third)
        assert (exc.status, exc.reason, exc.retry_after_s) == (503, "hold_full", 30)
        assert not any(t.done() for t in waiting)
        for t in waiting:
            t.cancel()
    run(scenario())


def test_probes_are_answered_at_once_while_not_ready() -> None:
    g, _clock, _ = gate()
    g.set_starting(eta_s=5)
    with pytest.raises(Rejected) as info:
        g.try_admit(probe=True)
    assert (info.value.status, info.value.reason, info.value.retry_after_s) == (503, "not_ready", 5)
    g.set_ready("engine-1")
    assert g.try_admit(probe=True) is not None


def test_failed_refuses_waiting_and_new_requests_without_retry_after() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate()
        task = await admit(g)
        g.set_failed("model not found: Qwen/Nope")
        await asyncio.sleep(0)
        exc = rejected(task)
        assert (exc.status, exc.reason, exc.retry_after_s) == (503, "failed", None)
        assert "model not found: Qwen/Nope" in exc.message
        with pytest.raises(Rejected) as info:
            g.try_admit()
        assert info.value.reason == "failed"
        g.set_starting(eta_s=10)  # an operator's restart: held again
        assert g.try_admit() is None
    run(scenario())


def test_admission_control_queues_then_refuses_with_429() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate(max_in_flight=2, max_queued=1)
        g.set_ready("engine-1")
        first, second = g.try_admit(), g.try_admit()
        assert first is not None and second is not None
        queued = await admit(g)
        assert not queued.done() and g.queued == 1 and g.held == 0
        with pytest.raises(Rejected) as info:
            g.try_admit()
        assert (info.value.status, info.value.reason) == (429, "queue_full")
        assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1
        g.release(first, "completed", 2.0)
        third = await queued
        assert third.generation == 1 and g.queued == 0 and g.in_flight == 2
    run(scenario())


def test_queue_full_retry_after_grows_with_the_wait() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate(max_in_flight=1, max_queued=3)
        g.set_ready("engine-1")
        t = g.try_admit()
        assert t is not None
        g.release(t, "completed", 20.0)  # requests take 20 s at the engine
        t = g.try_admit()
        assert t is not None
        waiting = [await admit(g) for _ in range(3)]
        with pytest.raises(Rejected) as info:
            g.try_admit()
        assert info.value.retry_after_s == 60  # capped: 4 requests x 20 s / 1 slot
        for w in waiting:
            w.cancel()
    run(scenario())


def test_requests_waiting_for_a_slot_are_held_when_the_engine_dies() -> None:
    async def scenario() -> None:
        g, clock, _ = gate(max_in_flight=1, max_queued=5, hold_timeout_s=60)
        g.set_ready("engine-1")
        busy = g.try_admit()
        assert busy is not None
        queued = await admit(g)
        assert g.queued == 1
        g.set_down("engine died", eta_s=30)
        assert g.held == 1 and g.queued == 0
        assert busy.cut_reason is not None, "the request at the dead engine is told to let go"
        g.release(busy, "retry")
        g.set_ready("engine-2")
        assert (await queued).upstream == "engine-2"
        clock.advance(120)  # no stale timer fires for a request that was released
    run(scenario())


def test_resends_wait_for_a_newer_engine_and_go_first() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate(max_in_flight=1, max_queued=5)
        g.set_ready("engine-1")
        failed = g.try_admit()
        assert failed is not None
        g.release(failed, "retry")
        resend = await admit(g, min_generation=failed.generation + 1, retry=True)
        assert g.held == 1, "a re-send waits for the next engine even while this one looks ready"
        busy = g.try_admit()
        assert busy is not None
        newcomer = await admit(g)
        g.set_down("engine died", eta_s=None)
        g.release(busy, "retry")
        assert g.held == 2
        g.set_ready("engine-2")
        ticket = await resend
        assert ticket.upstream == "engine-2" and not newcomer.done(), "the re-send went first"
        g.release(ticket, "completed")
        assert (await newcomer).upstream == "engine-2"
    run(scenario())


def test_resends_are_not_refused_by_the_hold_bound() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate(max_held=0)
        g.set_ready("engine-1")
        t = g.try_admit()
        assert t is not None
        g.release(t, "retry")
        g.set_down("engine died", eta_s=10)
        assert g.try_admit(retry=True, min_generation=2) is None
        with pytest.raises(Rejected):
            g.try_admit()
    run(scenario())


def test_old_engines_are_retired_once_unused() -> None:
    g, _clock, retired = gate()
    g.set_ready("engine-1")
    ticket = g.try_admit()
    assert ticket is not None
    g.set_down("engine died", eta_s=5)
    assert retired == [], "a request still holds the old engine"
    g.release(ticket, "retry")
    assert retired == ["engine-1"]
    g.set_ready("engine-2")
    g.set_ready("engine-3")
    assert retired == ["engine-1", "engine-2"]


def test_wait_idle_and_draining_holds_new_requests() -> None:
    async def scenario() -> None:
        g, clock, _ = gate()
        g.set_ready("engine-1")
        ticket = g.try_admit()
        assert ticket is not None
        g.set_draining()
        newcomer = await admit(g)
        assert g.held == 1
        idle = asyncio.ensure_future(g.wait_idle(30))
        await asyncio.sleep(0)
        clock.advance(10)
        assert not idle.done()
        g.release(ticket, "completed")
        assert await idle is True
        timed_out = asyncio.ensure_future(g.wait_idle(30))
        await asyncio.sleep(0)
        assert await timed_out is True, "nothing at the engine: idle at once"
        newcomer.cancel()
    run(scenario())


def test_wait_idle_times_out_on_the_clock() -> None:
    async def scenario() -> None:
        g, clock, _ = gate()
        g.set_ready("engine-1")
        assert g.try_admit() is not None
        idle = asyncio.ensure_future(g.wait_idle(5))
        await asyncio.sleep(0)
        clock.advance(5)
        assert await idle is False
    run(scenario())


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate(max_in_flight=1)
        task = await admit(g)
        assert g.held == 1
        task.cancel()
        await until(lambda: task.done())
        assert g.held == 0 and g.queued == 0
        g.set_ready("engine-1")
        assert g.try_admit() is not None
    run(scenario())


def test_closed_refuses_and_cannot_be_reopened() -> None:
    async def scenario() -> None:
        g, _clock, _ = gate()
        task = await admit(g)
        g.close()
        await asyncio.sleep(0)
        assert rejected(task).reason == "stopping"
        assert g.state is EngineState.CLOSED
        with pytest.raises(RuntimeError, match="stopped"):
            g.set_ready("engine-1")
    run(scenario())


def test_config_rejects_unknown_keys_and_inconsistent_holds() -> None:
    with pytest.raises(ValidationError):
        FrontDoorConfig(hold_timeout=5)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="hold_max_s"):
        FrontDoorConfig(hold_timeout_s=700, hold_max_s=600)
    with pytest.raises(ValidationError):
        FrontDoorConfig(max_in_flight=0)
    assert FrontDoorConfig().retry_body_limit_bytes == 1024 * 1024
