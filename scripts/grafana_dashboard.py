"""Write deploy/grafana/llm-supervisor.json, the Grafana dashboard, from the panel list below.

usage: python3 scripts/grafana_dashboard.py [--check]

The JSON is what users import (Dashboards → New → Import); this script is how it is changed.
`--check` exits 1 when the file differs from what the script would write (tests/test_deploy.py
runs it). Every metric a panel asks for must exist in the daemon's /metrics, vLLM's (the
fixtures) or the front door's (tests/fixtures/frontdoor-metrics.txt): the test checks that too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "llm-supervisor.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
SUP = 'instance=~"$instance"'    # the supervisor's /metrics (port 8900)
ENG = 'instance=~"$engine"'      # vLLM's /metrics (the engine's port)
RATE = "$__rate_interval"


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, "range": True}


def panel(title: str, kind: str, targets: list[tuple[str, str]], w: int, h: int, *, unit: str = "short",
          description: str = "", decimals: int | None = None, max_: float | None = None, stack: bool = False,
          mappings: list[dict[str, Any]] | None = None, thresholds: list[tuple[str, float | None]] | None = None
          ) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "mappings": mappings or []}
    if decimals is not None:
        defaults["decimals"] = decimals
    if max_ is not None:
        defaults["min"], defaults["max"] = 0, max_
    if thresholds:
        defaults["thresholds"] = {"mode": "absolute",
                                  "steps": [{"color": c, "value": v} for c, v in thresholds]}
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 2, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    options: dict[str, Any] = {}
    if kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background" if thresholds or mappings else "value", "graphMode": "none",
                   "textMode": "auto", "justifyMode": "auto", "orientation": "auto"}
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"w": w, "h": h},
            "targets": [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options}


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


READY_MAP = [{"type": "value", "options": {"0": {"text": "not ready", "color": "red", "index": 0},
                                           "1": {"text": "ready", "color": "green", "index": 1}}}]

PANELS: list[dict[str, Any]] = [
    row("Supervisor"),
    panel("Engine ready", "stat", [(f"llm_supervisor_ready{{{SUP}}}", "{{instance}}")], 4, 4, mappings=READY_MAP,
          description="1 once vLLM answered a real request (what /readyz says)"),
    panel("State", "stat", [(f"max by (state) (llm_supervisor_state{{{SUP}}}) == 1", "{{state}}")], 4, 4,
          description="starting, ready, degraded, restarting, backoff, stopping, stopped or failed"),
    panel("KV-cache tokens", "stat", [(f"llm_supervisor_kv_cache_tokens{{{SUP}}}", "{{instance}}")], 4, 4,
          description="GPU KV cache size in tokens, as the engine reported it at start"),
    panel("Max concurrency", "stat", [(f"llm_supervisor_max_concurrency{{{SUP}}}", "{{instance}}")], 4, 4,
          decimals=2, unit="x", description="requests of max_model_len tokens that fit in the KV cache at once"),
    panel("Context (max_model_len)", "stat", [(f"llm_supervisor_max_model_len{{{SUP}}}", "{{instance}}")], 4, 4),
    panel("Engine uptime", "stat", [(f"llm_supervisor_uptime_seconds{{{SUP}}}", "{{instance}}")], 4, 4, unit="s"),
    panel("Restarts per hour, by reason", "timeseries",
          [(f"sum by (reason) (increase(llm_supervisor_restarts_total{{{SUP}}}[1h]))", "{{reason}}")], 12, 8,
          description="engine relaunches in the last hour: recovery (the failure kind) or admin"),
    panel("GPU memory used", "timeseries",
          [(f"llm_supervisor_gpu_memory_used_bytes{{{SUP}}}", "GPU {{gpu}} used"),
           (f"llm_supervisor_gpu_memory_total_bytes{{{SUP}}}", "GPU {{gpu}} total")], 12, 8, unit="bytes"),
    panel("Launch attempt and GPU memory utilization", "timeseries",
          [(f"llm_supervisor_attempt{{{SUP}}}", "attempt"),
           (f"llm_supervisor_gpu_memory_utilization{{{SUP}}}", "gpu_memory_utilization")], 12, 6,
          description="a rising attempt with a falling utilization is recovery at work"),
    panel("State over time", "timeseries",
          [(f"max by (state) (llm_supervisor_state{{{SUP}}}) > 0", "{{state}}")], 12, 6, stack=True),

    row("vLLM"),
    panel("Requests running / waiting", "timeseries",
          [(f"sum(vllm:num_requests_running{{{ENG}}})", "running"),
           (f"sum(vllm:num_requests_waiting{{{ENG}}})", "waiting")], 8, 8),
    panel("KV-cache usage", "timeseries", [(f"max(vllm:kv_cache_usage_perc{{{ENG}}})", "KV cache")], 8, 8,
          unit="percentunit", max_=1),
    panel("Tokens per second", "timeseries",
          [(f"sum(rate(vllm:generation_tokens_total{{{ENG}}}[{RATE}]))", "generated"),
           (f"sum(rate(vllm:prompt_tokens_total{{{ENG}}}[{RATE}]))", "prompt")], 8, 8),
    panel("Time to first token", "timeseries",
          [(f"histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{ENG}}}[{RATE}])))", "p50"),
           (f"histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{ENG}}}[{RATE}])))", "p95")],
          8, 8, unit="s"),
    panel("Request latency (end to end)", "timeseries",
          [(f"histogram_quantile(0.5, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{{{ENG}}}[{RATE}])))", "p50"),
           (f"histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket{{{ENG}}}[{RATE}])))", "p95")],
          8, 8, unit="s"),
    panel("Inter-token latency", "timeseries",
          [(f"histogram_quantile(0.5, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{{{ENG}}}[{RATE}])))", "p50"),
           (f"histogram_quantile(0.95, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{{{ENG}}}[{RATE}])))", "p95")],
          8, 8, unit="s"),
    panel("Finished requests per second", "timeseries",
          [(f"sum by (finished_reason) (rate(vllm:request_success_total{{{ENG}}}[{RATE}]))", "{{finished_reason}}")],
          8, 8, stack=True),
    panel("Preemptions per second", "timeseries",
          [(f"sum(rate(vllm:num_preemptions_total{{{ENG}}}[{RATE}]))", "preemptions")], 8, 8,
          description="requests pushed out of the KV cache: a cache too small for the load"),
    panel("Prefix-cache hit rate", "timeseries",
          [(f"sum(rate(vllm:prefix_cache_hits_total{{{ENG}}}[{RATE}])) / sum(rate(vllm:prefix_cache_queries_total{{{ENG}}}[{RATE}]))",
            "hit rate")], 8, 8, unit="percentunit", max_=1),

    row("Front door"),
    panel("Held, in flight, queued", "timeseries",
          [(f"sum(llm_supervisor_frontdoor_held{{{SUP}}})", "held"),
           (f"sum(llm_supervisor_frontdoor_in_flight{{{SUP}}})", "in flight"),
           (f"sum(llm_supervisor_frontdoor_queued{{{SUP}}})", "queued")], 8, 8,
          description="requests the front door holds while the engine restarts, passes on, and queues"),
    panel("Completed, retried, cut streams per second", "timeseries",
          [(f"sum(rate(llm_supervisor_frontdoor_completed_total{{{SUP}}}[{RATE}]))", "completed"),
           (f"sum(rate(llm_supervisor_frontdoor_retried_total{{{SUP}}}[{RATE}]))", "retried"),
           (f"sum(rate(llm_supervisor_frontdoor_cut_streams_total{{{SUP}}}[{RATE}]))", "cut streams")], 8, 8),
    panel("Rejected per second, by reason", "timeseries",
          [(f"sum by (reason) (rate(llm_supervisor_frontdoor_rejected_total{{{SUP}}}[{RATE}]))", "{{reason}}")], 8, 8,
          stack=True, description="503 over the hold deadline, 429 over the queue bound"),
]


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids and positions: left to right, a new line when 24 columns are full, rows across."""
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        pos = p["gridPos"]
        if p["type"] == "row" or x + pos["w"] > 24:
            y += line_h
            x = line_h = 0
        pos["x"], pos["y"] = x, y
        if p["type"] == "row":
            y += 1
            continue
        x += pos["w"]
        line_h = max(line_h, pos["h"])
    return panels


def dashboard() -> dict[str, Any]:
    return {
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "uid": "llm-supervisor",
        "title": "llm-supervisor: vLLM under supervision",
        "description": "The supervisor's state, restarts, KV cache and GPU memory; vLLM's load and latency; the "
                       "front door's counters. Shipped with llm-supervisor (deploy/grafana).",
        "tags": ["vllm", "llm-supervisor"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "instance", "label": "supervisor", "type": "query", "datasource": DS,
             "query": {"query": "label_values(llm_supervisor_ready, instance)", "refId": "instance"},
             "definition": "label_values(llm_supervisor_ready, instance)", "includeAll": True, "multi": True,
             "allValue": ".*", "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": 1, "options": []},
            {"name": "engine", "label": "vLLM", "type": "query", "datasource": DS,
             "query": {"query": "label_values(vllm:num_requests_running, instance)", "refId": "engine"},
             "definition": "label_values(vllm:num_requests_running, instance)", "includeAll": True, "multi": True,
             "allValue": ".*", "current": {}, "hide": 0, "refresh": 2, "regex": "", "sort": 1, "options": []},
        ]},
        "panels": layout(PANELS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is not what this script writes")
    opts = parser.parse_args()
    text = render()
    if opts.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python3 scripts/grafana_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
