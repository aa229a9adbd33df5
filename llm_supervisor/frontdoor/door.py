"""FrontDoor: what the daemon holds. It owns the public address and tells the proxy where the
engine is; the daemon tells it what the engine is doing.

Call order the daemon follows (docs/frontdoor.md, "Integration"):
  start(host, port)              once, before the first launch (requests are held from then on)
  engine_starting(eta)           each launch; engine_ready(url) once it answers
  engine_down(reason, eta)       the engine died; re-sends what it had not answered
  await drain()                  before a planned restart, then engine_starting(eta) …
  engine_failed(reason)          recovery gave up
  await stop()                   at daemon shutdown, after the engine has stopped
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from llm_supervisor.clock import Clock, SystemClock
from llm_supervisor.config.frontdoor import FrontDoorConfig
from llm_supervisor.config.profile import ALL_INTERFACES
from llm_supervisor.frontdoor.gate import EngineState, Gate
from llm_supervisor.frontdoor.metrics import FrontDoorCollector
from llm_supervisor.frontdoor.proxy import FrontDoorApp
from llm_supervisor.frontdoor.server import Listener
from llm_supervisor.frontdoor.upstream import HttpxUpstream, Upstream

log = logging.getLogger("llm_supervisor.frontdoor")

# After a drain's grace (or at stop) the requests still at the engine are cut; this long is left for
# them to end their answers (an error event, a re-send queued) before the figures are taken.
CUT_SETTLE_S = 5.0


@dataclass(frozen=True)
class Drained:
    """What a drain before a planned restart did: requests at the engine when it began, those that
    finished within the grace, those cut at its end (unanswered ones re-sent to the next engine,
    streams ended with an error event), and those held for the next engine."""

    grace_s: float
    waited_s: float
    at_engine: int
    completed: int
    cut: int = 0
    requeued: int = 0
    cut_streams: int = 0
    cut_responses: int = 0
    still_at_engine: int = 0
    held: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        parts = [f"{self.at_engine} at the engine", f"{self.completed} completed"]
        if self.cut:
            parts.append(f"{self.cut} cut at the end of the grace ({self.requeued} to be re-sent, {self.cut_streams} "
                         f"stream(s) ended with an error event, {self.cut_responses} response(s) cut)")
        if self.still_at_engine:
            parts.append(f"{self.still_at_engine} still at the engine")
        parts.append(f"{self.held} held for the next engine")
        return f"in {self.waited_s:g} s of {self.grace_s:g} s grace: " + ", ".join(parts)


class FrontDoor:
    """The front door. `clock` and `transport` are seams for tests: a fake clock moves deadlines,
    an httpx transport (MockTransport, …) stands in for every engine."""

    def __init__(self, config: FrontDoorConfig, *, clock: Clock | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self._transport = transport
        self.gate = Gate(config, self.clock, on_retired=self._retired)
        self.app = FrontDoorApp(self.gate, config, self.clock)
        self._listener: Listener | None = None
        self._address: str | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the public address

    @property
    def port(self) -> int | None:
        """The port bound (useful with port 0), once started."""
        return self._listener.port if self._listener else None

    async def start(self, host: str, port: int) -> None:
        """Listen on the public address; from now on requests are held until `engine_ready`.
        Raises BindError (a RuntimeFailure) or BadInput with one clear line when it cannot."""
        if self._listener is not None:
            raise RuntimeError("the front door is already started")
        listener = Listener(self.app, keepalive_s=self.config.client_keepalive_s)
        await listener.start(host, port)
        self._listener = listener
        shown = "<this host>" if host in ALL_INTERFACES else f"[{host}]" if ":" in host else host
        log.info("front door listening on %s:%s (OpenAI base URL for clients: http://%s:%s/v1)", host, listener.port,
                 shown, listener.port)

    async def stop(self) -> None:
        """Refuse what waits (503), cut what is at the engine, close the address and the pools."""
        self.gate.close()
        await self.gate.wait_idle(CUT_SETTLE_S)
        if self._listener is not None:
            await self._listener.stop()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # ------------------------------------------------------------------ what the engine does

    def engine_starting(self, eta_s: float | None) -> None:
        """A launch began; `eta_s` is the expected time to ready (None: unknown). Requests are held."""
        self.gate.set_starting(eta_s)

    def engine_ready(self, upstream: str) -> None:
        """The engine answers at `upstream` (http://127.0.0.1:PORT or unix:/PATH): held requests go."""
        timeout = self.config.connect_timeout_s
        target: Upstream | HttpxUpstream
        if self._transport is not None:
            target = HttpxUpstream(upstream, self._transport, connect_timeout_s=timeout)
        else:
            target = Upstream(upstream, connect_timeout_s=timeout)
        self._address = upstream
        self.gate.set_ready(target)

    def engine_down(self, reason: str, eta_s: float | None) -> None:
        """The engine died. Requests it had not answered are held and re-sent to the next one;
        streams under way end with an error event. `reason` is shown to clients."""
        self._address = None
        self.gate.set_down(reason, eta_s)

    def engine_failed(self, reason: str) -> None:
        """Recovery gave up: every request is answered 503 with `reason` until the next
        engine_starting/engine_ready. `reason` is shown to clients."""
        self._address = None
        self.gate.set_failed(reason)

    async def drain(self, grace_s: float | None = None) -> Drained:
        """Before a planned restart: hold new requests, let those at the engine finish within the
        grace (config drain_grace_s), then cut the rest (unanswered ones are re-sent to the next
        engine). Returns what happened."""
        grace = self.config.drain_grace_s if grace_s is None else max(0.0, grace_s)
        gate = self.gate
        started = self.clock.monotonic()
        before = Counter(gate.counters.outcomes)
        at_engine = gate.in_flight
        cut = 0
        if gate.state in (EngineState.READY, EngineState.DRAINING):
            gate.counters.drains += 1
            gate.set_draining()
            if not await gate.wait_idle(grace):
                cut = gate.cut(gate.generation, "the model server is restarting")
                await gate.wait_idle(CUT_SETTLE_S)
        after = gate.counters.outcomes
        return Drained(
            grace_s=grace,
            waited_s=round(self.clock.monotonic() - started, 3),
            at_engine=at_engine,
            completed=after["completed"] - before["completed"],
            cut=cut,
            requeued=after["retry"] - before["retry"],
            cut_streams=after["cut_stream"] - before["cut_stream"],
            cut_responses=after["cut_response"] - before["cut_response"],
            still_at_engine=gate.in_flight,
            held=gate.held,
        )

    # ------------------------------------------------------------------ figures

    def stats(self) -> dict[str, Any]:
        """Plain figures for /status (no secrets)."""
        return {**self.gate.stats(), "engine": self._address,
                "max_in_flight": self.config.max_in_flight, "max_held": self.config.max_held}

    def collector(self) -> FrontDoorCollector:
        """A prometheus_client collector for the daemon's registry."""
        return FrontDoorCollector(self.gate.stats)

    # ------------------------------------------------------------------ internals

    def _retired(self, upstream: Upstream | HttpxUpstream) -> None:
        """An old engine's pool is unused now: close its idle connections."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(upstream.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
