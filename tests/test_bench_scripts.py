"""The benchmark tooling itself: the results table is built from the scripts' JSON (never by
hand) and the chatty stream the ingestion benchmark feeds is one the real parser understands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import _chatter  # noqa: E402
import run_all  # noqa: E402


def _results() -> dict:
    return {
        "overhead": {
            "idle": {"rss_mb": 68.2, "rss_mib": 65.1, "uss_mib": 49.2, "cpu_pct": 0.2, "cpu_ms_per_s": 2.0, "seconds": 20.0},
            "parse": {"logparse_lines_per_s": 320000, "logparse_and_failures_lines_per_s": 210000},
            "e2e": {"error": "RuntimeError: daemon exited with 1"},
            "meets_target": {"rss": True, "idle_cpu": True, "parse": True, "e2e": None},
        },
        "status_latency": {"rate": 200.0, "p50_ms": 2.1, "p99_ms": 25.5, "max_ms": 40.0, "ok": 3000, "errors": {},
                           "meets_target": False},
        "recovery": {
            "meets_target": True,
            "scenarios": {"kv_cache_too_small": {
                "scenario": "util 0.5",
                "daemon": {"ready": True, "launches": 1, "failures": [], "max_model_len": 29040,
                           "gpu_memory_utilization": 0.5, "kv_cache_tokens": 29216, "max_concurrency": 1.01,
                           "context_kept": 0.994},
                "recovery": {"ready": True, "launches": 2, "relaunches": 1, "failures": ["kv_cache_too_small"],
                             "max_model_len": 29216, "largest_fitting_context": 29216, "context_kept": 1.0},
                "naive": {"ready": False, "launches": 5, "failures": ["cuda_oom"] * 5},
                "auto": {"error": "ValueError: boom"},
            }},
        },
    }


def test_results_markdown_comes_from_the_json() -> None:
    machine = {"cpu": "Test CPU 9000", "cores": 2, "memory_gib": 8.0, "python": "3.11.7", "os": "Linux",
               "date": "2026-01-01 00:00 UTC", "load_avg_1m": 0.5}
    md = run_all.render(_results(), machine, quick=False)
    lines = md.splitlines()
    assert any("Test CPU 9000" in x and "3.11.7" in x for x in lines)
    rss = next(x for x in lines if x.startswith("| daemon RSS"))
    assert "68.2 MB" in rss and rss.endswith("| yes |")
    status = next(x for x in lines if x.startswith("| GET /status"))
    assert "p99 25.5 ms" in status and status.endswith("| **no** |")
    e2e = next(x for x in lines if x.startswith("| log ingestion, engine"))
    assert "error: RuntimeError" in e2e
    assert next(x for x in lines if x.startswith("| engine exit")).count("not run") == 1
    kv = next(x for x in lines if x.startswith("| kv_cache_too_small recovery"))
    assert "1 relaunch(es), context 29,216 of 29,216 (100.0%)" in kv
    assert "| kv_cache_too_small | daemon | ready | 1 | none | 29,040 | 0.5 | 29,216 | 1.01× | 99.4% |" in md
    assert "| naive | gave up | 5 |" in md and "error: ValueError: boom" in md


def test_a_rerun_of_one_benchmark_keeps_the_others_dates() -> None:
    # `--only overhead` reruns one benchmark; the others' figures were measured earlier and say so
    machine = {"cpu": "Test CPU 9000", "cores": 2, "memory_gib": 8.0, "python": "3.11.7", "os": "Linux",
               "date": "2026-02-02 09:00 UTC", "load_avg_1m": 1.5}
    res = _results()
    res["overhead"]["machine"] = machine
    res["recovery"]["machine"] = {**machine, "date": "2026-01-01 00:00 UTC", "load_avg_1m": 0.25}
    md = run_all.render(res, machine, quick=False)
    assert "| overhead | 2026-02-02 09:00 UTC | 1.5 |" in md
    assert "| recovery | 2026-01-01 00:00 UTC | 0.25 |" in md
    assert "| status_latency | 2026-02-02 09:00 UTC | 1.5 |" in md  # no record of its own: the run's
    where = run_all.readme_section(res, machine).splitlines()[0]
    assert where.startswith("Measured between 2026-01-01 00:00 UTC and 2026-02-02 09:00 UTC on Test CPU 9000")
    assert "(1-min load at start: 0.25–1.5)" in where


def test_recovery_per_vllm_version_is_compared() -> None:
    res = _results()
    kv = res["recovery"]["scenarios"]
    res["recovery"].update({
        "vllm_versions": ["0.34.0", "0.26.0"],
        "versions": {"0.34.0": {"scenarios": kv}, "0.26.0": {"scenarios": kv}},
        "relaunches": {"kv_cache_too_small": {
            "0.34.0": {"daemon": {"ready": True, "relaunches": 0, "failures": []},
                       "recovery": {"ready": True, "relaunches": 1, "failures": ["kv_cache_too_small"]}},
            "0.26.0": {"daemon": {"ready": True, "relaunches": 0, "failures": []},
                       "recovery": {"ready": False, "relaunches": 4, "failures": ["cuda_oom"] * 5}}}},
    })
    md = run_all.render(res, {}, quick=False)
    assert "| scenario | daemon, 0.34.0 | daemon, 0.26.0 | recovery, 0.34.0 | recovery, 0.26.0 |" in md
    assert "| kv_cache_too_small | 0 (none) | 0 (none) | 1 (kv_cache_too_small) | gave up (cuda_oom ×5) |" in md
    assert "### vLLM 0.34.0" in md and "### vLLM 0.26.0" in md
    kv_row = next(x for x in md.splitlines() if x.startswith("| kv_cache_too_small recovery"))
    assert "vLLM 0.34.0: 1 relaunch(es)" in kv_row and "vLLM 0.26.0: 1 relaunch(es)" in kv_row


def test_chatty_stream_is_understood_by_the_parser() -> None:
    from llm_supervisor.vllm.logparse import LogParser

    parser = LogParser()
    lines = _chatter.chatty_stream(5000) + [f.format(tokens=123456, ctx=10000, conc=12.35) for f in _chatter.FINAL_FACTS]
    for line in lines:
        parser.feed(line)
    assert parser.facts.model_weights_gib == pytest.approx(7.56)
    assert parser.facts.kv_cache_tokens == 123456
    assert parser.facts.max_concurrency_context == 10000
    assert len(lines) == 5000 + len(_chatter.FINAL_FACTS)
