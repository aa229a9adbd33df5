"""vLLM's `/metrics`: the Prometheus text it serves, read into the few numbers the supervisor and
`bench` use. The one Prometheus parser of the package. Pure.

Names are stable from 0.8.5 to 0.34 (reference vllm.md §4, §10): `vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:generation_tokens_total`, `vllm:num_preemptions_total`, and
`vllm:cache_config_info`, whose labels carry the KV-cache size (`kv_cache_size_tokens`,
`kv_cache_max_concurrency`, `num_gpu_blocks`) from 0.23 on; the KV cache's fill is
`vllm:kv_cache_usage_perc` (0.9.2 on; `vllm:gpu_cache_usage_perc` before), a fraction despite
its name. With data parallel every engine has its own series: load is summed, capacity is the
smallest, fill the largest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition as (name, labels, value); malformed lines skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m["labels"] or "")}
        samples.append((m["name"], labels, value))
    return samples


@dataclass
class EngineMetrics:
    """What one `/metrics` scrape says about load and capacity (None: not exposed)."""

    running: float | None = None
    waiting: float | None = None
    generation_tokens_total: float | None = None
    max_concurrency: float | None = None
    kv_cache_tokens: int | None = None
    context: int | None = None
    kv_cache_usage: float | None = None  # 0..1, the fullest engine's (`kv_cache_usage_perc`, before 0.10 `gpu_cache_usage_perc`)
    preemptions_total: float | None = None


def finite_float(text: Any) -> float | None:
    """A finite number from a label value or a JSON field, else None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _add(total: float | None, value: float) -> float:
    return value if total is None else total + value


def engine_metrics(text: str) -> EngineMetrics:
    """Running/waiting requests and generated tokens (summed over engines), and the KV-cache
    capacity `vllm:cache_config_info` labels (the smallest engine's)."""
    out = EngineMetrics()
    for name, labels, value in parse_prometheus(text):
        if name == "vllm:num_requests_running":
            out.running = _add(out.running, value)
        elif name == "vllm:num_requests_waiting":
            out.waiting = _add(out.waiting, value)
        elif name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            out.kv_cache_usage = value if out.kv_cache_usage is None else max(out.kv_cache_usage, value)
        elif name == "vllm:generation_tokens_total":
            out.generation_tokens_total = _add(out.generation_tokens_total, value)
        elif name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            out.kv_cache_usage = value if out.kv_cache_usage is None else max(out.kv_cache_usage, value)
        elif name == "vllm:num_preemptions_total":
            out.preemptions_total = _add(out.preemptions_total, value)
        elif name == "vllm:cache_config_info":
            tokens = finite_float(labels.get("kv_cache_size_tokens"))
            if tokens is not None and tokens > 0 and (out.kv_cache_tokens is None or tokens < out.kv_cache_tokens):
                out.kv_cache_tokens = int(tokens)
            conc = finite_float(labels.get("kv_cache_max_concurrency"))
            if conc is not None and conc > 0:
                out.max_concurrency = conc if out.max_concurrency is None else min(out.max_concurrency, conc)
                if out.kv_cache_tokens:
                    out.context = int(round(out.kv_cache_tokens / out.max_concurrency))
    return out
