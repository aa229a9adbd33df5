"""The simulator's `/metrics`: Prometheus text with the vLLM series a supervisor reads. Pure."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


def fmt(value: float) -> str:
    """prometheus_client's float formatting."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def labels_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1


@dataclass
class EngineStats:
    """Per-engine series; running/waiting/kv come from EngineCore's step messages."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    success: dict[str, int] = field(default_factory=lambda: {r: 0 for r in FINISH_REASONS})
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    created: float = field(default_factory=time.time)


class Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample, labels, value in samples:
            self.lines.append(f"{sample}{labels_text(labels)} {fmt(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def cache_config_labels(version_ge_0_23: bool, has_blocks: bool, engine: int, block_size: int, util: float,
                        num_blocks: int, tokens: int, concurrency: float, cache_dtype: str,
                        prefix_caching: bool, override: int | None, cpu_offload_gb: float = 0.0,
                        swap_space: float = 4.0) -> dict[str, str]:
    labels = {
        "block_size": str(block_size), "cache_dtype": cache_dtype, "calculate_kv_scales": "False",
        "enable_prefix_caching": str(prefix_caching), "engine": str(engine),
        "gpu_memory_utilization": str(util), "is_attention_free": "False", "num_cpu_blocks": "None",
        "num_gpu_blocks": str(num_blocks) if has_blocks else "None",
        "num_gpu_blocks_override": str(override), "prefix_caching_hash_algo": "sha256",
        "sliding_window": "None", "swap_space": f"{swap_space:g}", "cpu_offload_gb": f"{cpu_offload_gb:g}",
    }
    if version_ge_0_23:
        labels.pop("swap_space")
        labels.pop("cpu_offload_gb")
        labels.update({
            "_block_size_resolved": "True", "kv_cache_dtype_skip_layers": "[]",
            "kv_cache_max_concurrency": str(concurrency), "kv_cache_memory_bytes": "None",
            "kv_cache_size_tokens": str(tokens), "kv_offloading_backend": "native", "kv_offloading_size": "None",
            "kv_sharing_fast_prefill": "False", "mamba_block_size": "None", "mamba_cache_dtype": "auto",
            "mamba_cache_mode": "none", "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "auto",
            "prefix_match_unit": "None", "skip_page_size_padded": "None", "user_specified_block_size": "False",
            "user_specified_mamba_block_size": "False",
        })
    return labels


def render(model_name: str, stats: list[EngineStats], cache_labels: list[dict[str, str]], kv_metric: str,
           extra: dict[str, Any] | None = None) -> str:
    out = Exposition()
    base = [{"engine": str(i), "model_name": model_name} for i in range(len(stats))]
    out.family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
               [("vllm:num_requests_running", b, s.running) for b, s in zip(base, stats)])
    out.family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
               [("vllm:num_requests_waiting", b, s.waiting) for b, s in zip(base, stats)])
    out.family(kv_metric, "gauge", "KV-cache usage. 1 means 100 percent usage.",
               [(kv_metric, b, s.kv_usage) for b, s in zip(base, stats)])
    out.family("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.",
               [("vllm:num_preemptions_total", b, s.preemptions) for b, s in zip(base, stats)])
    out.family("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
               [("vllm:prompt_tokens_total", b, s.prompt_tokens) for b, s in zip(base, stats)])
    out.family("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
               [("vllm:generation_tokens_total", b, s.generation_tokens) for b, s in zip(base, stats)])
    out.family("vllm:request_success_total", "counter", "Count of successfully processed requests.",
               [("vllm:request_success_total", {**b, "finished_reason": r}, s.success[r])
                for b, s in zip(base, stats) for r in FINISH_REASONS])
    for name, help_text, attr in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", "ttft"),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", "e2e")):
        samples: list[tuple[str, dict[str, str], float]] = []
        for b, s in zip(base, stats):
            h: Histogram = getattr(s, attr)
            for edge, count in zip(h.buckets, h.counts):
                samples.append((name + "_bucket", {**b, "le": fmt(edge)}, count))
            samples.append((name + "_bucket", {**b, "le": "+Inf"}, h.n))
            samples.append((name + "_count", b, h.n))
            samples.append((name + "_sum", b, h.total))
        out.family(name, "histogram", help_text, samples)
    out.family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig",
               [("vllm:cache_config_info", labels, 1.0) for labels in cache_labels])
    if extra:
        for name, value in extra.items():
            out.family(name, "gauge", name, [(name, {}, float(value))])
    return out.text()
