"""Every recovery path against both vLLM generations, in-process (tests/fakes.py): 0.26's fixed
budget (a free-memory check at start, CUDA graphs above the budget) and 0.34's extensible KV cache
(no free-memory check, a pre-warm-up estimate checked first, the cache sized after warm-up and
checked again). One policy; what differs is what each version does, so the fixes differ, and
0.34 must never need more relaunches than 0.26 for the same situation.

`recovery.plan_first_launch=false` makes the first launch use the profile's arguments as they
are, so vLLM's own failure happens instead of the planner avoiding it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

import pytest

from fakes import FakeVllm, Harness, harnesses
from llm_supervisor.runtime.commands import Command

NO_PLAN = "recovery.plan_first_launch=false"
V026, V034 = "0.26.0", "0.34.0"
VERSIONS = [V026, V034]


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (0.2, 1))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def kinds(h: Harness) -> list[str]:
    return [k for e, k in h.events() if e == "exit"]


def relaunches(h: Harness) -> int:
    return len(h.relaunches())


def test_the_plan_and_the_recovery_reason_with_the_engines_version(make) -> None:
    async def scenario() -> None:
        for version, accounting in ((V026, "budget-0.26"), (V034, "extensible-0.34")):
            h = make(FakeVllm(version=version)).start()
            status = await h.ready()
            assert h.plan.vllm_version == version and str(h.plan.accounting) == accounting
            assert status["vllm"] == {"version": version, "printed": version, "planned": version,
                                      "planned_source": "given", "accounting": accounting}
            assert status["facts"]["vllm_version"] == version
            assert h.daemon.fit is not None and h.daemon.fit.version == version
            h.daemon.inbox.put(Command.STOP)
    run(scenario())


def test_a_plan_for_one_version_follows_the_version_the_engine_prints(make) -> None:
    """Planned for 0.34 (say, nothing found before launch), but the engine prints 0.26: recovery
    reasons with 0.26 from then on."""
    async def scenario() -> None:
        h = make(FakeVllm(version=V026), sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"])
        h.daemon.plan.engine_version = type(h.plan.engine_version)(V034, "given")
        h.daemon.fit = h.daemon.fit.with_version(V034)  # type: ignore[union-attr]
        h.start()
        status = await h.ready()
        assert status["vllm"]["planned"] == V034 and status["vllm"]["printed"] == V026
        assert status["vllm"]["accounting"] == "budget-0.26"
        (relaunch,) = h.relaunches()
        assert "after warm-up" not in relaunch["reason"]  # 0.26 has no second sizing
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
def test_kv_cache_too_small_recovers_in_one_relaunch(make, version: str) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(version=version), sets=[NO_PLAN, "vllm.gpu_memory_utilization=0.5"]).start()
        status = await h.ready()
        assert kinds(h) == ["kv_cache_too_small"] and relaunches(h) == 1
        (relaunch,) = h.relaunches()
        estimate = relaunch["failure"]["values"]["estimated_max_model_len"]
        new = relaunch["change"]["max_model_len"][1]
        if version == V034:
            # the error came before warm-up: its estimate still counts the CUDA graphs the cache
            # loses after warm-up, so the relaunch asks for less than vLLM's estimate
            assert new < estimate and "after warm-up" in relaunch["reason"] and "CUDA graphs" in relaunch["reason"]
        else:
            assert new == estimate // 16 * 16
        largest = status["kv_cache_tokens"]
        assert 0.95 * largest <= new <= largest, (new, largest)
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
def test_free_memory_held_by_another_process(make, version: str) -> None:
    """Another process holds 6000 MiB. 0.26 refuses to start (insufficient_free_memory) and
    recovery lowers the utilization; 0.34 starts anyway with a cache that fits what is free."""
    async def scenario() -> None:
        vllm = FakeVllm(version=version, other_gib=6000 / 1024)
        h = make(vllm, sets=[NO_PLAN]).start()
        status = await h.ready()
        if version == V026:
            assert kinds(h) == ["insufficient_free_memory"] and relaunches(h) == 1
            assert status["gpu_memory_utilization"] < 0.9
        else:
            assert kinds(h) == [] and relaunches(h) == 0
            assert status["gpu_memory_utilization"] == 0.9
            assert status["kv_cache_tokens"] >= 40960
            # the cache is smaller than the utilization allows, and the daemon says why
            assert "KV cache limited by free GPU memory, not by gpu_memory_utilization" in status["message"]
    run(scenario())


def test_free_memory_too_short_for_the_context(make) -> None:
    """Another process holds 12 GiB of the 24: 0.26 refuses the start, then the lower utilization
    cannot hold 40,960 tokens; 0.34 starts, and after warm-up the cache is too small (bound by free
    memory, not by the utilization): recovery cuts the context and does not touch utilization."""
    counts = {}

    async def scenario(version: str) -> None:
        vllm = FakeVllm(version=version, other_gib=12.0)
        h = make(vllm, sets=[NO_PLAN, "recovery.min_gpu_memory_utilization=0.3"]).start()
        status = await h.ready()
        if version == V026:
            assert kinds(h) == ["insufficient_free_memory", "kv_cache_too_small"]
        else:
            assert kinds(h) == ["kv_cache_too_small"]
            (relaunch,) = h.relaunches()
            assert list(relaunch["change"]) == ["max_model_len"]
            assert "free device memory, not the utilization" in relaunch["reason"]
            assert status["gpu_memory_utilization"] == 0.9
        assert status["kv_cache_tokens"] >= status["max_model_len"]
        counts[version] = relaunches(h)

    for version in VERSIONS:
        run(scenario(version))
    assert counts == {V026: 2, V034: 1}


@pytest.mark.parametrize("plan", [False, True])
def test_no_kv_cache_memory_raises_utilization_and_reaches_ready(make, plan: bool) -> None:
    """Utilization 0.33 of a 24 GB card holds the weights and nothing more. vLLM finds no memory
    for the KV cache and recovery raises the utilization; with the planner free to choose
    (plan_first_launch) the low-memory plan raises it before the first launch instead."""
    counts = {}

    async def scenario(version: str) -> None:
        # 0.33 × 23.99 GiB = 7.92 GiB: the weights (7.56) fit, activations and non-torch memory do not
        h = make(FakeVllm(version=version), sets=[f"recovery.plan_first_launch={str(plan).lower()}",
                                                  "vllm.gpu_memory_utilization=0.33",
                                                  "recovery.min_gpu_memory_utilization=0.2"]).start()
        status = await h.ready()
        if plan:
            assert h.plan.args.gpu_memory_utilization > 0.33 and h.plan.prediction.fits
            assert any("higher utilization" in n or "0.33 →" in n for n in h.plan.notes), h.plan.notes
            assert kinds(h) == [] or set(kinds(h)) <= {"kv_cache_too_small"}
        else:
            assert kinds(h)[0] == "no_kv_cache_memory"
            first = h.relaunches()[0]
            old, new = first["change"]["gpu_memory_utilization"]
            assert old == 0.33 and 0.33 < new <= 0.92
            if version == V034:
                assert "CUDA graphs" in first["reason"]  # counted in, as 0.34 sizes the cache after capture
            assert set(kinds(h)[1:]) <= {"kv_cache_too_small"}
        assert status["kv_cache_tokens"] >= status["max_model_len"] >= 4096
        counts[version] = relaunches(h)

    for version in VERSIONS:
        run(scenario(version))
    assert counts[V034] <= counts[V026]
    if plan:
        assert counts == {V026: 0, V034: 0}


@pytest.mark.parametrize("version", VERSIONS)
def test_cuda_oom_at_graph_capture(make, version: str) -> None:
    """0.26 first steps utilization down (the KV cache, sized first, left no room for graphs);
    0.34 sizes the cache after capture, so a lower utilization frees nothing: enforce_eager at once."""
    async def scenario() -> None:
        h = make(FakeVllm(version=version, fault="oom_at_graph_capture")).start()
        status = await h.ready()
        changes = [r["change"] for r in h.relaunches()]
        assert set(kinds(h)) == {"cuda_oom"} and changes[-1] == {"enforce_eager": [False, True]}
        if version == V026:
            assert changes == [{"gpu_memory_utilization": [0.9, 0.85]}, {"enforce_eager": [False, True]}]
        else:
            assert changes == [{"enforce_eager": [False, True]}]
            assert "sizes its KV cache after warm-up" in h.relaunches()[0]["reason"]
        assert "--enforce-eager" in status["argv"]
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
def test_cuda_oom_at_load_once_is_retried(make, version: str) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(version=version, faults={1: "oom_at_load"})).start()
        await h.ready()
        assert kinds(h) == ["cuda_oom"] and relaunches(h) == 1
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
def test_engine_death_after_ready_restarts_with_the_same_arguments(make, version: str) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(version=version)).start()
        before = await h.ready()
        h.engine.die()
        after = await h.ready(attempt=2)
        # the same arguments; behind the front door the engine listens on a fresh private port
        port = before["argv"].index("--port") + 1
        assert after["argv"][:port] + after["argv"][port + 1:] == before["argv"][:port] + before["argv"][port + 1:]
        assert kinds(h) == ["engine_dead"]
        assert h.relaunches()[0]["change"] is None
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
def test_repeated_runtime_oom_steps_utilization_down(make, version: str) -> None:
    """Out of memory while serving: the first time the same arguments, the second a lower
    utilization (on 0.34 too: a smaller cache leaves more room for activations while serving)."""
    async def scenario() -> None:
        h = make(FakeVllm(version=version)).start()
        await h.ready()
        h.engine.runtime_oom()
        await h.ready(attempt=2)
        h.engine.runtime_oom()
        status = await h.ready(attempt=3)
        assert kinds(h) == ["cuda_oom", "cuda_oom"]
        first, second = (r["change"] for r in h.relaunches())
        assert first is None and second == {"gpu_memory_utilization": [0.9, 0.85]}
        assert status["gpu_memory_utilization"] == 0.85
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fault,kind", [("model_not_found", "model_not_found"), ("port_in_use", "port_in_use")])
def test_failures_no_argument_fixes_end_at_once(make, version: str, fault: str, kind: str) -> None:
    """(Without the front door, where the engine's port is the profile's: behind it a taken private
    port is a relaunch on a fresh one, tests/test_daemon_recovery.py.)"""
    async def scenario() -> None:
        h = make(FakeVllm(version=version, fault=fault), sets=["frontdoor.enabled=false"]).start()
        assert await h.exit_code() == 3
        assert kinds(h) == [kind] and relaunches(h) == 0
    run(scenario())


@pytest.mark.parametrize("version", VERSIONS)
def test_max_model_len_above_the_model_is_cut_to_its_limit(make, version: str) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(version=version, model_limit=32768), sets=[NO_PLAN]).start()
        status = await h.ready()
        assert kinds(h) == ["max_model_len_too_large"] and status["max_model_len"] == 32768
    run(scenario())
