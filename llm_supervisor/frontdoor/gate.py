"""Engine state and admission: which request goes to the engine now, which waits, which is refused.

No I/O: the daemon moves the state (through FrontDoor), the proxy asks for tickets and gives them
back, and everything else is bookkeeping on the event loop.

States:
  STARTING   the engine is (re)starting: requests are held until it is ready
  READY      requests go to the engine (through the admission bound, when there is one)
  DOWN       the engine died: requests are held for its relaunch
  DRAINING   a planned restart: requests at the engine finish, new ones are held
  FAILED     recovery gave up: requests are refused (503) with the reason
  CLOSED     the front door is stopping: requests are refused (503)

A request holds a Ticket while it is at the engine: one attempt at one engine *generation* (each
`set_ready` starts a new one). A request that cannot have a ticket yet waits, either *held* (the
engine is not ready, or the request waits for a newer engine than the one that failed it; held
requests have a deadline) or *queued* (the engine is ready but every slot is taken; no deadline).
Requests being re-sent after an engine failure go first, then the rest in arrival order.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_supervisor.clock import Clock, Timer
from llm_supervisor.config.frontdoor import FrontDoorConfig

log = logging.getLogger("llm_supervisor.frontdoor")

# Without a fixed hold_timeout_s, a held request waits until the daemon's estimate of the time to
# ready, stretched by ETA_FACTOR plus ETA_SLACK_S (a relaunch can be slower than the last one), and
# at least MIN_HOLD_S (an engine already late may be ready any moment).
ETA_FACTOR = 1.25
ETA_SLACK_S = 10.0
MIN_HOLD_S = 10.0
# Retry-After when nothing better is known (engine starting without an estimate).
DEFAULT_RETRY_AFTER_S = 10
MAX_RETRY_AFTER_S = 600

REJECT_REASONS = ("hold_timeout", "hold_full", "queue_full", "not_ready", "failed", "stopping", "engine_lost")
# How a ticket ended (Gate.release): the counters and drain() read these.
OUTCOMES = ("completed", "cut_stream", "cut_response", "retry", "engine_lost", "client_gone")


class EngineState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"
    DRAINING = "draining"
    FAILED = "failed"
    CLOSED = "closed"


HOLDING = frozenset({EngineState.STARTING, EngineState.DOWN, EngineState.DRAINING})


class Rejected(Exception):
    """A request the front door answers itself: status, reason (a REJECT_REASONS name), message
    for the client, and Retry-After seconds (None: a retry would not help)."""

    def __init__(self, status: int, reason: str, message: str, retry_after_s: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s


class Ticket:
    """One request's attempt at one engine generation. `cut()` asks the request to stop using the
    engine (it died, or a drain ran out of time); the proxy registers `on_cut` to hear it."""

    __slots__ = ("cut_reason", "generation", "on_cut", "upstream")

    def __init__(self, generation: int, upstream: Any) -> None:
        self.generation = generation
        self.upstream = upstream
        self.cut_reason: str | None = None
        self.on_cut: Callable[[str], None] | None = None

    def cut(self, reason: str) -> None:
        if self.cut_reason is None:
            self.cut_reason = reason
            if self.on_cut is not None:
                self.on_cut(reason)


class _Waiter:
    __slots__ = ("future", "held_since", "min_generation", "retry", "timer")

    def __init__(self, future: asyncio.Future[Ticket], min_generation: int, retry: bool) -> None:
        self.future = future
        self.min_generation = min_generation
        self.retry = retry
        self.held_since: float | None = None  # set while held
        self.timer: Timer | None = None


@dataclass
class Counters:
    requests: int = 0
    retried: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    drains: int = 0


class Gate:
    def __init__(self, config: FrontDoorConfig, clock: Clock,
                 on_retired: Callable[[Any], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.on_retired = on_retired  # called with an old generation's upstream once nothing uses it
        self.state = EngineState.STARTING
        self.reason = "waiting for the engine's first start"
        self.generation = 0
        self.upstream: Any = None
        self.counters = Counters()
        self._eta: tuple[float, float] | None = None  # (when reported, seconds to ready) from the daemon
        self._tickets: set[Ticket] = set()
        self._per_generation: Counter[int] = Counter()
        self._retired: dict[int, Any] = {}        # generation -> upstream, waiting for its last ticket
        self._retries: dict[int, _Waiter] = {}    # re-sends after an engine failure (served first)
        self._waiters: dict[int, _Waiter] = {}    # everything else, in arrival order
        self._seq = itertools.count()
        self._held = 0
        self._idle: list[asyncio.Future[bool]] = []
        self._service_s: float | None = None      # moving average of a request's time at the engine

    # ------------------------------------------------------------------ figures

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    @property
    def held(self) -> int:
        return self._held

    @property
    def queued(self) -> int:
        return len(self._waiters) + len(self._retries) - self._held

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "state": self.state.value,
            "reason": self.reason,
            "generation": self.generation,
            "held": self.held,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "requests": c.requests,
            "completed": c.outcomes["completed"],
            "retried": c.retried,
            "rejected": {reason: c.rejected[reason] for reason in REJECT_REASONS},
            "cut_streams": c.outcomes["cut_stream"],
            "cut_responses": c.outcomes["cut_response"],
            "client_disconnects": c.outcomes["client_gone"],
            "drains": c.drains,
        }

    # ------------------------------------------------------------------ admission

    def try_admit(self, *, probe: bool = False, min_generation: int = 0, retry: bool = False) -> Ticket | None:
        """A ticket now, None when the request must wait (`wait_admit`), or Rejected."""
        state = self.state
        if state is EngineState.READY and self.generation >= min_generation:
            if self.queued == 0 and self._slot_free():
                return self._issue()
            if not retry and self.config.max_in_flight is not None and self.queued >= self.config.max_queued:
                raise self._reject_queue_full()
            return None
        if state is EngineState.FAILED:
            raise self._reject(503, "failed", f"The model server is unavailable: {self.reason}.", None)
        if state is EngineState.CLOSED:
            raise self._reject(503, "stopping", "The model server is shutting down.", None)
        if probe and state in HOLDING:
            raise self._reject(503, "not_ready", f"The model is not ready: {self.reason}.", self.retry_after_hint())
        if not retry and self._held >= self.config.max_held:
            raise self._reject(503, "hold_full", f"The model is not ready ({self.reason}) and "
                               f"{self.config.max_held} requests are already waiting for it; retry later.",
                               self.retry_after_hint())
        return None

    async def wait_admit(self, *, min_generation: int = 0, retry: bool = False) -> Ticket:
        """Wait for a ticket (held or queued); raises Rejected when the wait ends without one."""
        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, min_generation, retry)
        seq = next(self._seq)
        (self._retries if retry else self._waiters)[seq] = waiter
        self._classify(waiter)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            # a ticket granted just before the request went away goes back at once
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result(), "client_gone")
            raise
        finally:
            if (self._retries if retry else self._waiters).pop(seq, None) is not None:
                self._unhold(waiter)

    def release(self, ticket: Ticket, outcome: str, service_s: float | None = None) -> None:
        """The request is done with this ticket; `outcome` is one of OUTCOMES."""
        if ticket not in self._tickets:
            return
        self._tickets.discard(ticket)
        self.counters.outcomes[outcome] += 1
        if service_s is not None and outcome == "completed":
            prev = self._service_s
            self._service_s = service_s if prev is None else prev + 0.1 * (service_s - prev)
        gen = ticket.generation
        self._per_generation[gen] -= 1
        if self._per_generation[gen] <= 0:
            del self._per_generation[gen]
            if gen in self._retired:
                self._retire_now(gen)
        if not self._tickets:
            for fut in self._idle:
                if not fut.done():
                    fut.set_result(True)
        if self._waiters or self._retries:
            self._dispatch()

    def count_rejected(self, reason: str) -> None:
        self.counters.rejected[reason] += 1

    # ------------------------------------------------------------------ state changes (the daemon's)

    def set_starting(self, eta_s: float | None) -> None:
        self._check_open("engine_starting")
        self._end_generation("the engine is being restarted")
        self._eta = None if eta_s is None else (self.clock.monotonic(), max(0.0, eta_s))
        self._enter(EngineState.STARTING, "the engine is starting")

    def set_ready(self, upstream: Any) -> None:
        self._check_open("engine_ready")
        self._end_generation("the engine was replaced")
        self.generation += 1
        self.upstream = upstream
        self._eta = None
        self._enter(EngineState.READY, "")

    def set_down(self, reason: str, eta_s: float | None) -> None:
        self._check_open("engine_down")
        self._end_generation(f"the engine stopped: {reason}")
        self._eta = None if eta_s is None else (self.clock.monotonic(), max(0.0, eta_s))
        self._enter(EngineState.DOWN, reason)

    def set_draining(self) -> None:
        self._check_open("drain")
        self._enter(EngineState.DRAINING, "the engine is restarting")

    def set_failed(self, reason: str) -> None:
        self._check_open("engine_failed")
        self._end_generation(f"the engine failed: {reason}")
        self._eta = None
        self._enter(EngineState.FAILED, reason)

    def close(self) -> None:
        if self.state is EngineState.CLOSED:
            return
        self._end_generation("the server is shutting down")
        self._enter(EngineState.CLOSED, "shutting down")

    def cut(self, max_generation: int, reason: str) -> int:
        """Ask every request at an engine of `max_generation` or older to let go; returns how many."""
        doomed = [t for t in self._tickets if t.generation <= max_generation and t.cut_reason is None]
        for ticket in doomed:
            ticket.cut(reason)
        return len(doomed)

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no request is at any engine; False if `timeout_s` passes first."""
        if not self._tickets:
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._idle.append(future)
        timer = self.clock.call_at(self.clock.monotonic() + timeout_s,
                                   lambda: None if future.done() else future.set_result(False))
        try:
            return await future
        finally:
            timer.cancel()
            self._idle.remove(future)

    # ------------------------------------------------------------------ internals

    def _check_open(self, what: str) -> None:
        if self.state is EngineState.CLOSED:
            raise RuntimeError(f"{what}: the front door is stopped; a stopped front door cannot be started again")

    def _enter(self, state: EngineState, reason: str) -> None:
        previous = self.state
        self.state, self.reason = state, reason
        if previous is not state:
            log.info("front door: %s -> %s%s (in flight %d, waiting %d)", previous.value, state.value,
                     f": {reason}" if reason else "", self.in_flight, len(self._waiters) + len(self._retries))
        if state in (EngineState.FAILED, EngineState.CLOSED):
            self._refuse_all()
            return
        for waiter in [*self._retries.values(), *self._waiters.values()]:
            self._classify(waiter)
        self._dispatch()

    def _end_generation(self, reason: str) -> None:
        """The current engine is gone (or going): cut what still uses it, close it when unused."""
        if self.upstream is None:
            return
        gen, upstream = self.generation, self.upstream
        self.upstream = None
        cut = self.cut(gen, reason)
        if cut:
            log.warning("front door: %d request(s) were still at the engine (%s)", cut, reason)
        self._retired[gen] = upstream
        if self._per_generation.get(gen, 0) == 0:
            self._retire_now(gen)

    def _retire_now(self, gen: int) -> None:
        upstream = self._retired.pop(gen)
        if self.on_retired is not None:
            self.on_retired(upstream)

    def _slot_free(self) -> bool:
        limit = self.config.max_in_flight
        return limit is None or len(self._tickets) < limit

    def _issue(self) -> Ticket:
        ticket = Ticket(self.generation, self.upstream)
        self._tickets.add(ticket)
        self._per_generation[self.generation] += 1
        return ticket

    def _dispatch(self) -> None:
        """Hand tickets to waiting requests while the engine is ready and slots are free."""
        if self.state is not EngineState.READY:
            return
        for seq, waiter in list(self._retries.items()):
            if waiter.min_generation > self.generation:
                continue
            if not self._slot_free():
                return
            self._grant(self._retries, seq, waiter)
        waiters = self._waiters
        while waiters and self._slot_free():
            seq, waiter = next(iter(waiters.items()))
            self._grant(waiters, seq, waiter)

    def _grant(self, pool: dict[int, _Waiter], seq: int, waiter: _Waiter) -> None:
        del pool[seq]
        self._unhold(waiter)
        if not waiter.future.done():
            waiter.future.set_result(self._issue())

    def _is_held(self, waiter: _Waiter) -> bool:
        return self.state in HOLDING or waiter.min_generation > self.generation

    def _classify(self, waiter: _Waiter) -> None:
        """Held waiters get (or keep) a deadline; queued ones have none."""
        if not self._is_held(waiter):
            self._unhold(waiter)
            return
        now = self.clock.monotonic()
        if waiter.held_since is None:
            waiter.held_since = now
            self._held += 1
        if waiter.timer is not None:
            waiter.timer.cancel()
        deadline = self._deadline(waiter.held_since)
        waiter.timer = self.clock.call_at(deadline, lambda: self._expire(waiter))

    def _unhold(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None
        if waiter.held_since is not None:
            waiter.held_since = None
            self._held -= 1

    def _deadline(self, since: float) -> float:
        cfg = self.config
        cap = since + cfg.hold_max_s
        if cfg.hold_timeout_s is not None:
            return min(cap, since + cfg.hold_timeout_s)
        if self._eta is not None:
            reported, eta_s = self._eta
            expected = reported + eta_s * ETA_FACTOR + ETA_SLACK_S
            return min(cap, max(since + MIN_HOLD_S, expected))
        return cap

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.held_since is None or waiter.future.done():
            return
        if self.clock.monotonic() < self._deadline(waiter.held_since):
            self._classify(waiter)  # the deadline moved (a new estimate) after the timer was set
            return
        waited = self.clock.monotonic() - waiter.held_since
        what = self.reason or self.state.value
        waiter.future.set_exception(self._reject(
            503, "hold_timeout", f"The model is not ready ({what}); this request waited {waited:.0f} s for it. "
            "Retry later.", self.retry_after_hint()))

    def _refuse_all(self) -> None:
        for pool in (self._retries, self._waiters):
            for waiter in list(pool.values()):
                self._unhold(waiter)
                if not waiter.future.done():
                    if self.state is EngineState.FAILED:
                        exc = self._reject(503, "failed", f"The model server is unavailable: {self.reason}.", None)
                    else:
                        exc = self._reject(503, "stopping", "The model server is shutting down.", None)
                    waiter.future.set_exception(exc)
            pool.clear()

    def _reject(self, status: int, reason: str, message: str, retry_after_s: int | None) -> Rejected:
        self.counters.rejected[reason] += 1
        return Rejected(status, reason, message, retry_after_s)

    def _reject_queue_full(self) -> Rejected:
        limit = self.config.max_in_flight or 1
        if self._service_s is None:
            after = 1
        else:
            after = math.ceil(self._service_s * (self.queued + 1) / limit)
        return self._reject(429, "queue_full", f"Too many requests: {limit} are at the model and "
                            f"{self.queued} are waiting; retry later.", min(60, max(1, after)))

    def retry_after_hint(self) -> int:
        """Seconds until the engine is expected ready (Retry-After of a 503 while it is not)."""
        if self._eta is not None:
            reported, eta_s = self._eta
            left = reported + eta_s - self.clock.monotonic()
            if left > 0:
                return min(MAX_RETRY_AFTER_S, max(1, math.ceil(left)))
        return DEFAULT_RETRY_AFTER_S
