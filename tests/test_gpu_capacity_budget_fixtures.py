"""`bench --find-capacity`'s time budget against real searches (vLLM 0.26.0 on an H100 and an
H200, 0.34.0 on an H200): every level they ran, in the order they ran it.

* The least a level can take, as the search computes it from the levels before it (to leave out
  a level that cannot finish in the time left), never exceeded what a real level took.
* The 0.34 searches (a 20 s budget, 19.8 s spent at one user) started a 2-user level with 0.2 s
  left and reported "2 users did not": today that level is not started (it takes at least 9.9 s).
* tests/fixtures/vllm-0.26.0-h100/h100-4b-budget.json: two 40 s searches on an H100 with the
  budget handling in place; one ended during a 128-user level that already missed the SLO (a
  failure), the other during a 128-user level still within it (cut off, not a failure).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_supervisor.bench.capacity import least_level_seconds, measured_requests

FIXTURES = Path(__file__).parent / "fixtures"
ROUNDS = 2  # the searches ran with bench's default --rounds
REAL = {
    "h200-0.26": FIXTURES / "vllm-0.26.0" / "h200-4b-capacity.json",
    "h100-0.26": FIXTURES / "vllm-0.26.0-h100" / "h100-4b-capacity.json",
    "h100-0.26-budget": FIXTURES / "vllm-0.26.0-h100" / "h100-4b-budget.json",
    "h200-0.34-32b": FIXTURES / "vllm-0.34.0-h200" / "h200-32b-target-summary.json",
}


def searches(name: str) -> list[dict[str, Any]]:
    return json.loads(REAL[name].read_text())["searches"]


@pytest.mark.parametrize("name", sorted(REAL))
def test_the_least_a_level_takes_is_below_what_every_real_level_took(name: str) -> None:
    checked = 0
    for search in searches(name):
        finished: list[tuple[int, float]] = []
        for level in search["levels"]:
            assert level["requests"] <= measured_requests(level["users"], ROUNDS)
            least = least_level_seconds(finished, level["users"], ROUNDS)
            if not level["timed_out"]:
                assert least <= level["duration_s"], (level["users"], least, level["duration_s"])
                finished.append((level["users"], level["duration_s"]))
                checked += 1
    assert checked >= 2


def test_the_0_34_searches_would_not_start_a_level_they_had_no_time_for() -> None:
    for search in searches("h200-0.34-32b"):
        one, two = search["levels"]
        assert one["ok"] and two["timed_out"] and two["requests"] == 0
        assert search["summary"].startswith("1 concurrent users meet") and "; 2 users did not" in search["summary"]
        left = 20.0 - one["duration_s"]  # --search-seconds 20
        least = least_level_seconds([(1, one["duration_s"])], 2, ROUNDS)  # 19.8 s / 8 rounds × the 2-user level's 4
        assert least == pytest.approx(one["duration_s"] / 2) and least > 9.9 > left


def test_a_budget_that_ends_during_a_level_on_an_h100() -> None:
    tight, loose = searches("h100-0.26-budget")
    assert [lv["users"] for lv in tight["levels"]] == [1, 2, 4, 8, 16, 32, 64, 128]
    # ttft_p95=1s: the 128-user level's 227 measured requests already missed it when the budget ended it
    cut = tight["levels"][-1]
    assert cut["timed_out"] and not cut["unfinished"] and not cut["ok"]
    assert cut["violations"] == ["ttft_p95 1.02 s > 1 s", "the time budget cut the level off after 227 measured requests"]
    assert tight["capacity_users"] == 64
    assert tight["search"]["stopped"] == "time_budget" and tight["search"]["unmeasured"]["users"] == 96
    assert tight["summary"].startswith("64 concurrent users meet ttft_p95=1s,tpot_p95=50ms (the time budget"
                                       " (--max-seconds) ended the search; 128 users did not meet it)")
    # ttft_p95=4s: 210 of 256 requests measured, TTFT p95 1.6 s: cut off, not a failure
    cut = loose["levels"][-1]
    assert (cut["users"], cut["timed_out"], cut["unfinished"], cut["ok"], cut["violations"]) == (128, True, True, False, [])
    assert cut["requests"] == 210 and cut["ttft_s"]["p95"] < 4.0
    assert loose["capacity_users"] == 64
    assert loose["search"]["unmeasured"] == {"users": 128, "cut_off": True, "measured": 210, "of": 256}
    assert "ended the search during the 128-user level, 210 of its 256 requests measured" in loose["summary"]
    assert all(lv["ok"] for lv in loose["levels"][:-1])
