"""The front door's figures as Prometheus metric families (prefix `llm_supervisor_frontdoor_`).

Gauges for what is true now, counters (`_total`) for what happened since start. The daemon
registers one collector with its registry; nothing is computed until a scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llm_supervisor.frontdoor.gate import EngineState

PREFIX = "llm_supervisor_frontdoor_"


class FrontDoorCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self._stats())

    def _families(self, s: dict[str, Any] | None) -> Iterator[Metric]:
        def gauge(name: str, doc: str, key: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=float(s[key]) if s else None)

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, doc, value=float(s[key]) if s else None)

        yield gauge("held", "Requests waiting for the engine to become ready.", "held")
        yield gauge("in_flight", "Requests at the engine now.", "in_flight")
        yield gauge("queued", "Requests waiting for an admission slot (max_in_flight).", "queued")
        state = GaugeMetricFamily(PREFIX + "state", "The front door's view of the engine (1 for the current state).",
                                  labels=["state"])
        if s:
            for value in EngineState:
                state.add_metric([value.value], 1.0 if s["state"] == value.value else 0.0)
        yield state
        yield counter("requests", "Requests received.", "requests")
        yield counter("completed", "Responses passed to the client in full.", "completed")
        yield counter("retried", "Requests re-sent after an engine failed them before answering.", "retried")
        rejected = CounterMetricFamily(PREFIX + "rejected", "Requests answered by the front door itself "
                                       "(503 or 429), by reason.", labels=["reason"])
        if s:
            for reason, n in s["rejected"].items():
                rejected.add_metric([reason], float(n))
        yield rejected
        yield counter("cut_streams", "Event streams the engine broke off (ended with an error event).", "cut_streams")
        yield counter("cut_responses", "Plain responses the engine broke off mid-body (connection closed).",
                      "cut_responses")
        yield counter("client_disconnects", "Requests whose client left before the answer was complete.",
                      "client_disconnects")
        yield counter("drains", "Drains before a planned restart.", "drains")
