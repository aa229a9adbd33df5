"""The last hour as the status page plots it: GPU memory, running and waiting requests, KV-cache
usage and generated tokens per second, sampled by the daemon itself every `interval_s`
(LLM_SUPERVISOR_SERIES_INTERVAL_S, default 10 s) into a ring of 360 points (an hour at 10 s; a
few tens of kB). Served as `GET /status/series`.

Nothing here needs Prometheus: a person with only the daemon still sees the trend.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from llm_supervisor.clock import Clock
from llm_supervisor.vllm.metrics import EngineMetrics

log = logging.getLogger("llm_supervisor")

INTERVAL_S = 10.0
POINTS = 360  # an hour of 10 s points


@dataclass(frozen=True)
class Point:
    t: float                                  # epoch seconds
    gpu_used_mib: tuple[tuple[str, float], ...]  # (GPU index, MiB in use)
    running: float | None
    waiting: float | None
    kv_cache_usage: float | None              # 0..1
    tokens_per_s: float | None                # generated tokens per second since the last point


class Series:
    """A ring of points; `to_json` turns it into columns for the page."""

    def __init__(self, interval_s: float = INTERVAL_S, points: int = POINTS) -> None:
        self.interval_s = interval_s
        self.window_s = interval_s * points
        self.points: collections.deque[Point] = collections.deque(maxlen=points)
        self.gpu_total_mib: dict[str, float] = {}
        self._last_tokens: tuple[float, float] | None = None  # (t, generation_tokens_total)

    def add(self, t: float, gpus: list[dict[str, Any]], metrics: EngineMetrics | None) -> Point:
        used = []
        for gpu in gpus:
            index = str(gpu.get("index", "?"))
            if isinstance(gpu.get("memory_used_mib"), (int, float)):
                used.append((index, float(gpu["memory_used_mib"])))
            if isinstance(gpu.get("memory_total_mib"), (int, float)):
                self.gpu_total_mib[index] = float(gpu["memory_total_mib"])
        rate = None
        total = metrics.generation_tokens_total if metrics else None
        if total is not None:
            if self._last_tokens is not None and t > self._last_tokens[0]:
                before_t, before = self._last_tokens
                # a relaunched engine counts from 0 again: what it generated since is the rate
                rate = (total - before if total >= before else total) / (t - before_t)
            self._last_tokens = (t, total)
        else:
            self._last_tokens = None
        point = Point(t, tuple(used), metrics.running if metrics else None, metrics.waiting if metrics else None,
                      metrics.kv_cache_usage if metrics else None, None if rate is None else round(rate, 2))
        self.points.append(point)
        return point

    def to_json(self) -> dict[str, Any]:
        points = list(self.points)
        indexes = sorted({i for p in points for i, _ in p.gpu_used_mib} | set(self.gpu_total_mib),
                         key=lambda i: (len(i), i))
        return {
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "t": [round(p.t, 3) for p in points],
            "gpu_memory_used_mib": {i: [dict(p.gpu_used_mib).get(i) for p in points] for i in indexes},
            "gpu_memory_total_mib": {i: self.gpu_total_mib.get(i) for i in indexes},
            "running": [p.running for p in points],
            "waiting": [p.waiting for p in points],
            "kv_cache_usage": [p.kv_cache_usage for p in points],
            "generation_tokens_per_s": [p.tokens_per_s for p in points],
        }


async def sample(series: Series, clock: Clock, gpus: Callable[[], list[dict[str, Any]]],
                 metrics: Callable[[], Awaitable[EngineMetrics | None]], serving: Callable[[], bool]) -> None:
    """Every `series.interval_s`: the GPUs as last polled and, while the engine serves, its /metrics."""
    while True:
        try:
            series.add(clock.time(), gpus(), await metrics() if serving() else None)
        except Exception as exc:  # noqa: BLE001 - a plot must never cost the daemon
            log.debug("series sample failed: %s", exc)
        await clock.sleep(series.interval_s)
