"""deploy/: the Grafana dashboard and the Prometheus alert rules. The rules pass `promtool check
rules` and their own unit tests (`promtool test rules`; CI installs Debian's prometheus package,
locally the tests skip without it), and every metric the dashboard or the rules name exists: in
the daemon's /metrics (scraped from the app), in vLLM's (the fixtures from a real vLLM 0.26), or
in the front door's (tests/fixtures/frontdoor-metrics.txt, checked against its collector)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llm_supervisor.api.server import create_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "llm-supervisor.json"
RULES = DEPLOY / "prometheus" / "llm-supervisor-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "llm-supervisor-alerts.test.yml"
FIXTURES = Path(__file__).parent / "fixtures"
VLLM_METRICS = [FIXTURES / "vllm-0.26.0-h100" / "metrics-ready.txt", FIXTURES / "vllm-0.26.0" / "metrics-ready-util0.27.txt"]

# A daemon snapshot with every field its /metrics turns into a sample.
SNAPSHOT = {
    "state": "ready", "ready": True, "profile": "p", "model": "m", "served_model_name": "s", "simulated": False,
    "uptime_s": 10.0, "attempt": 2, "restarts": 1, "restarts_by_reason": {"kv_cache_too_small": 1},
    "kv_cache_tokens": 1000, "max_concurrency": 2.0, "max_model_len": 500, "gpu_memory_utilization": 0.9,
    "cpus": [0, 1], "gpus": [{"index": 0, "name": "g", "memory_used_mib": 1.0, "memory_total_mib": 2.0}],
    "history": [],
}

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "le", "inf", "nan"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the alert rules: .ci/run installs Debian's prometheus package (promtool)")
        pytest.skip("no promtool here (Debian package prometheus; .ci/run installs it)")
    return found


def front_door_collector() -> object:
    """The front door's own collector, on counters as its gate reports them."""
    from llm_supervisor.frontdoor.gate import REJECT_REASONS
    from llm_supervisor.frontdoor.metrics import FrontDoorCollector

    stats = {"state": "ready", "held": 0, "in_flight": 1, "queued": 0, "requests": 3, "completed": 2, "retried": 1,
             "rejected": {reason: 0 for reason in REJECT_REASONS}, "cut_streams": 0, "cut_responses": 0,
             "client_disconnects": 0, "drains": 0}
    return FrontDoorCollector(lambda: stats)


def our_metric_names() -> set[str]:
    app = create_app(lambda: SNAPSHOT, lambda action: None, None, [front_door_collector()])

    async def scrape() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
            return (await client.get("/metrics")).text

    import asyncio

    text = asyncio.run(scrape())
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def vllm_metric_names() -> set[str]:
    names = set()
    for path in VLLM_METRICS:
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def frontdoor_metric_names() -> set[str]:
    lines = (FIXTURES / "frontdoor-metrics.txt").read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (Grafana's $variables taken out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                     # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue  # a function, a keyword, a duration
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        query = var.get("definition") or ""
        m = re.match(r"label_values\((.+),\s*\w+\)$", query)
        if m:
            exprs.append(m.group(1))
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_the_alert_rules_pass_promtool_check_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout


def test_the_alerts_fire_when_they_should_promtool_test_rules() -> None:
    proc = subprocess.run([promtool(), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_alerts_asked_for_are_there() -> None:
    alerts = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert set(alerts) == {"LLMSupervisorFailed", "LLMSupervisorFlapping", "LLMSupervisorNotReady",
                           "VllmKvCacheSaturated", "VllmRequestsWaiting"}
    assert "increase(llm_supervisor_restarts_total[1h])" in alerts["LLMSupervisorFlapping"]["expr"]
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_every_metric_the_dashboard_and_the_rules_use_exists() -> None:
    ours, vllm, frontdoor = our_metric_names(), vllm_metric_names(), frontdoor_metric_names()
    assert {"llm_supervisor_ready", "llm_supervisor_restarts_total", "llm_supervisor_state"} <= ours
    assert all(name.startswith("llm_supervisor_frontdoor_") for name in frontdoor)
    assert frontdoor <= ours  # the list the page and dashboard were designed on is what the front door exports
    known = ours | vllm | frontdoor
    used: dict[str, set[str]] = {}
    for where, exprs in (("dashboard", dashboard_exprs()), ("rules", rule_exprs())):
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{where}: no metric found in {expr!r}"
            for name in names:
                used.setdefault(name, set()).add(where)
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert unknown == {}
    # the dashboard shows the supervisor, vLLM and the front door
    assert used.keys() & ours and used.keys() & vllm and used.keys() & frontdoor


def test_the_metric_name_reader_reads_promql() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(vllm:e2e_request_latency_seconds_bucket'
                        '{instance=~"$engine"}[$__rate_interval])))') == {"vllm:e2e_request_latency_seconds_bucket"}
    assert metric_names('llm_supervisor_ready == 0 unless on (instance) llm_supervisor_state{state="failed"} == 1') == {
        "llm_supervisor_ready", "llm_supervisor_state"}
    assert metric_names("sum(rate(a_total[5m])) / sum(rate(b_total[5m]))") == {"a_total", "b_total"}


def test_the_dashboard_is_what_its_script_writes_and_grafana_can_import_it() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "grafana_dashboard.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "llm-supervisor" and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        if p["type"] != "row":
            assert p["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    # no two panels overlap
    cells = set()
    for p in board["panels"]:
        pos = p["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, p["title"]
                cells.add((x, y))
