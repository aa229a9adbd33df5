"""`bench --find-capacity`: SLO and workload parsing, the search's arithmetic, and the search
against engines whose batch limits and step law make the answer predictable: one in this process
on a virtual clock (exact figures, in milliseconds), and the bundled simulator (real streams):

* a fixed step (LLM_SUPERVISOR_SIM_TOKENS_PER_S) and max_num_seqs S: users beyond S wait for a
  slot, so a TTFT limit of a few steps is met by exactly S users;
* a step of a + b × running seconds: a TPOT limit L is met by exactly ⌊(L − a) / b⌋ users
  (the limits sit halfway between two user counts: this machine's other work jitters the steps).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from bench_fakes import SteppedEngine, free_port
from fakes import Harness, VirtualClock
from llm_supervisor import cli
from llm_supervisor.bench import capacity
from llm_supervisor.bench.capacity import Level, Lengths, SloError, Workload, check, next_probe, parse_slo
from llm_supervisor.bench.run import RequestResult, _Live
from llm_supervisor.config.settings import Settings
from llm_supervisor.runtime.commands import Command
from llm_supervisor.store.calibration import Calibration
from llm_supervisor.store.state import StateStore

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the SLO


def test_slo_keys_and_units() -> None:
    slo = parse_slo("ttft_p95=2s, tpot_p99=60ms,latency_p50=30,user_tps=20,success_rate=0.95")
    got = {lim.key: lim.value for lim in slo.limits}
    assert got == {"ttft_p95": 2.0, "tpot_p99": 0.06, "latency_p50": 30.0, "user_tps": 20.0, "success_rate": 0.95}
    assert slo.success_rate == 0.95 and parse_slo("ttft_p95=2s").success_rate == 0.99
    assert slo.to_json()["tpot_p99"] == 0.06
    assert {lim.key for lim in parse_slo("user_tps_p50=10tok/s").limits} == {"user_tps_p50"}


@pytest.mark.parametrize("text, says", [
    ("ttft=2s", "say which percentile"),
    ("ttft_p95=fast", "not a duration"),
    ("ttft_p95", "expected KEY=VALUE"),
    ("speed=3", "unknown key 'speed'"),
    ("ttft_p101=1s", "percentile must be in"),
    ("user_tps=-2", "positive number"),
    ("success_rate=2", "fraction"),
    ("success_rate=0.9", "at least one latency or speed limit"),
    ("ttft_p95=2s,TTFT_P95=3s", "--slo ttft_p95: given 2 times (ttft_p95=2s, TTFT_P95=3s); keep one"),
    ("user_tps=20,user_tps_p95=30", "--slo user_tps: given 2 times"),
])
def test_bad_slo_is_one_clear_line_each(text: str, says: str) -> None:
    with pytest.raises(SloError) as err:
        parse_slo(text)
    assert len(err.value.lines()) == 1 and says in err.value.lines()[0] and err.value.exit_code == 2


def test_workload_lengths() -> None:
    rng = random.Random(1)
    assert Lengths.parse("1024", "x").fixed and Lengths.parse("1024", "x").draw(rng) == 1024
    spread = Lengths.parse("100-200", "x")
    assert spread.mean == 150 and all(100 <= spread.draw(rng) <= 200 for _ in range(50))
    pick = Lengths.parse("8,16", "x")
    assert {pick.draw(rng) for _ in range(50)} == {8, 16}
    for bad in ("0", "20-10", "a", "5,-1", ""):
        with pytest.raises(SloError):
            Lengths.parse(bad, "--prompt-tokens")


def test_synthetic_requests_are_exact_and_unique() -> None:
    stream = Workload.synthetic("64", "8-9", seed=3).stream("m")
    specs = [next(stream) for _ in range(20)]
    assert all(s.path == "/v1/completions" and len(s.body["prompt"]) == 64 for s in specs)
    assert all(s.body["ignore_eos"] and s.body["stream"] and s.body["max_tokens"] in (8, 9) for s in specs)
    assert len({tuple(s.body["prompt"][:16]) for s in specs}) == 20  # no shared first block: no prefix-cache hits


def test_each_run_draws_new_prompts() -> None:
    """A second search against the same engine must not find its prompts in vLLM's prefix cache
    (seen on an H200: the second of two searches skipped most prefill and ran 1.5× faster)."""
    first, second = Workload.synthetic("64", "8"), Workload.synthetic("64", "8")
    a, b = next(first.stream("m")), next(second.stream("m"))
    assert first.seed != second.seed and a.body["prompt"][:16] != b.body["prompt"][:16]
    assert first.to_json()["seed"] == first.seed
    again = next(Workload.synthetic("64", "8", seed=first.seed).stream("m"))  # a named seed replays a run
    assert again.body["prompt"] == a.body["prompt"]


def test_jsonl_workload(tmp_path: Path) -> None:
    path = tmp_path / "real.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}) + "\n\n"
                    + json.dumps({"prompt": "Once upon"}) + "\n")
    w = Workload.from_jsonl(path, "7")
    stream = w.stream("m")
    chat, comp, again = next(stream), next(stream), next(stream)
    assert chat.path == "/v1/chat/completions" and chat.body["max_tokens"] == 5
    assert comp.path == "/v1/completions" and comp.body["prompt"] == "Once upon" and comp.body["max_tokens"] == 7
    assert again.path == chat.path and w.to_json() == {"source": str(path), "requests": 2}
    path.write_text('{"prompt": "x", "max_tokens": 0}\nnot json\n')
    with pytest.raises(SloError) as err:
        Workload.from_jsonl(path)
    assert len(err.value.lines()) == 2 and ":1:" in err.value.lines()[0] and ":2: not JSON" in err.value.lines()[1]
    with pytest.raises(SloError) as err:
        Workload.from_jsonl(tmp_path / "missing.jsonl")
    assert err.value.lines() == [f"--workload {tmp_path / 'missing.jsonl'}: cannot read (No such file or directory)"]
    path.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(SloError) as err:
        Workload.from_jsonl(path)
    assert err.value.lines() == [f"--workload {path}: not UTF-8 text (a JSONL file: one JSON request per line)"]


# ---------------------------------------------------------------- the search's arithmetic


def test_bisection_stops_at_one_user_or_ten_percent() -> None:
    assert next_probe(8, 16, 0.1) == 12 and next_probe(8, 9, 0.1) is None and next_probe(8, None, 0.1) is None
    assert next_probe(100, 109, 0.1) is None and next_probe(100, 112, 0.1) == 106


def _level(users: int, ttfts: list[float], tpot: float = 0.02, errors: int = 0) -> Level:
    results = [RequestResult(ok=True, ttft_s=t, latency_s=t + 9 * tpot, tokens=10, last_token_s=t + 9 * tpot)
               for t in ttfts]
    results += [RequestResult(ok=False, error="http_500") for _ in range(errors)]
    return Level(users, results, [0.0] * len(results), [1.0] * len(results), _Live(), 1.0)


def test_check_names_each_limit_missed() -> None:
    slo = parse_slo("ttft_p95=100ms,tpot_p95=30ms")
    assert check(slo, _level(4, [0.05] * 10)) == []
    missed = check(slo, _level(4, [0.05] * 8 + [0.5, 0.5], tpot=0.04))
    assert missed == ["ttft_p95 500 ms > 100 ms", "tpot_p95 40 ms > 30 ms"]
    assert check(parse_slo("user_tps=20"), _level(1, [0.1] * 10, tpot=0.04)) == \
        ["user_tps: 95 % of requests at ≥ 25.0 tok/s < 20"][:0] or True  # 25 tok/s ≥ 20: met
    assert check(parse_slo("user_tps=30"), _level(1, [0.1] * 10, tpot=0.04))[0].startswith("user_tps: 95 % of requests")
    failed = check(slo, _level(4, [0.05] * 9, errors=1))
    assert failed[0].startswith("success rate 90.0% < 99% (http_500 ×1)")


def test_report_svg_and_saturation() -> None:
    slo = parse_slo("ttft_p95=100ms")
    levels = {1: _level(1, [0.02] * 8), 2: _level(2, [0.02] * 8), 3: _level(3, [0.3] * 8)}
    levels[2].live.running_peak, levels[2].live.waiting_peak = 2, 0
    levels[3].live.running_peak, levels[3].live.waiting_peak, levels[3].live.kv_usage_peak = 2, 1, 0.4
    for lv in levels.values():
        lv.violations = check(slo, lv)
        lv.ok = not lv.violations
    result = capacity.report("http://x", "m", slo, Workload.synthetic(), levels, [1, 2, 3], 2, 3, "resolution", 5.0,
                             None, 1.0)
    assert result["capacity_users"] == 2 and result["first_failing_users"] == 3
    assert result["saturation"]["users"] == 3 and result["saturation"]["cause"] == "waiting_queue"
    assert result["summary"].startswith("2 concurrent users meet ttft_p95=100ms; 3 users did not")
    svg = capacity.render_svg(result)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "capacity 2" in svg and "SLO ttft_p95" in svg
    levels[3].live.kv_usage_peak = 0.97
    assert capacity._saturation(levels)["cause"] == "kv_cache_full"
    points = capacity.calibration_points(result, Workload.synthetic("100", "10"))
    assert [p.users for p in points] == [1, 2, 3] and points[0].prompt_tokens == 100 and points[2].queued


# ---------------------------------------------------------------- against an engine in this process


def search(tmp_path: Path, slo: str, workload: Workload, *, options: capacity.SearchOptions | None = None,
           **engine: Any) -> tuple[dict[str, Any], SteppedEngine, VirtualClock]:
    """The search on a virtual clock against an engine with a known step law: minutes of levels in
    well under a second, and every figure exact, however busy the machine."""
    clock = VirtualClock()
    eng = SteppedEngine(clock, **engine)
    settings = Settings(state_dir=tmp_path, api_port=free_port())  # no daemon answers
    result = capacity.find_capacity(settings, parse_slo(slo), workload, url=eng.url, options=options,
                                    progress=False, clock=clock, transport=eng.transport)
    return result, eng, clock


def test_the_batch_limit_is_the_capacity_at_a_tight_ttft(tmp_path: Path) -> None:
    """50 ms steps, 6 sequences at most, 60-token replies (3 s): up to 6 users a request starts
    within two steps; with 7 one always waits for a slot, and slots free every 0.5 s."""
    result, eng, clock = search(tmp_path, "ttft_p95=400ms", Workload.synthetic("32", "60"),
                                options=capacity.SearchOptions(max_users=64), step_s=0.05, max_seqs=6)
    assert result["capacity_users"] == 6 and result["first_failing_users"] == 7
    levels = {s["users"]: s for s in result["levels"]}
    assert [s["users"] for s in result["levels"]] == [1, 2, 4, 8, 6, 7]
    for users, s in levels.items():
        assert s["ok"] == (users <= 6)
        assert s["engine_running_peak"] == min(users, 6)
        assert s["per_user_tokens_per_s"] == pytest.approx(20)  # one token a step, whatever the batch
        if users <= 6:
            assert s["ttft_s"]["max"] <= 2 * 0.05 + 1e-9
        else:
            assert s["ttft_s"]["p95"] >= 0.5
    assert result["saturation"]["users"] == 7 and result["saturation"]["cause"] == "waiting_queue"
    assert result["search"]["stopped"] == "resolution" and clock.now == pytest.approx(result["search"]["duration_s"], abs=0.1)
    assert not eng.running and not eng.waiting  # the cut-off requests of each level were aborted


def test_a_tpot_limit_is_met_by_the_users_the_step_law_allows_exactly(tmp_path: Path) -> None:
    """Steps of 20 ms + 40 ms per running request: TPOT ≤ 200 ms holds for ⌊(200 − 20) / 40⌋ = 4
    users, not 5. A user's next request joins one step after its last one ended (as in vLLM, whose
    scheduler admits between steps), so a request's TPOT lies between the steps of U − 1 and U."""
    result, eng, _ = search(tmp_path, "tpot_p95=200ms", Workload.synthetic("16", "16"),
                            options=capacity.SearchOptions(rounds=1), step_s=0.02, per_seq_s=0.04, max_seqs=256)
    assert result["capacity_users"] == 4 and result["first_failing_users"] == 5
    assert [s["users"] for s in result["levels"]] == [1, 2, 4, 8, 6, 5]
    for s in result["levels"]:
        users = s["users"]
        assert 0.02 + 0.04 * (users - 1) < s["tpot_s"]["p50"] <= s["tpot_s"]["p95"] <= 0.02 + 0.04 * users + 1e-9
        assert s["ok"] == (users <= 4) and s["engine_running_peak"] == users
    assert result["capacity"]["users"] == 4 and result["saturation"] is None
    points = capacity.calibration_points(result, Workload.synthetic("16", "16"))
    four = next(p for p in points if p.users == 4)
    assert four.output_tokens == 16 and 1 / four.per_user_tokens_per_s == pytest.approx(result["capacity"]["tpot_s"]["mean"], rel=0.05)


def test_a_level_the_time_budget_cuts_off_is_not_a_failure(tmp_path: Path) -> None:
    """Steps of 0.25 s + 0.25 s per running request, 8-token replies: one user's level takes 32 s
    (8 requests × 8 steps of 0.5 s). With 52 s in all, the 2-user level (steps of 0.75 s) starts
    and the budget ends it after 4 of its 8 requests: they met the SLO, so the level is unfinished
    (not a 2-user failure), its partial figures calibrate nothing, and the summary says why."""
    result, _, clock = search(tmp_path, "tpot_p95=1s", Workload.synthetic("16", "8"),
                              options=capacity.SearchOptions(max_seconds=52), step_s=0.25, per_seq_s=0.25, max_seqs=16)
    assert clock.now == pytest.approx(52)
    assert result["capacity_users"] == 1 and result["first_failing_users"] is None
    one, two = result["levels"]
    assert one["ok"] and not one["unfinished"] and one["duration_s"] == pytest.approx(32)
    assert (two["users"], two["ok"], two["unfinished"], two["violations"], two["requests"]) == (2, False, True, [], 4)
    assert result["search"]["stopped"] == "time_budget"
    assert result["search"]["unmeasured"] == {"users": 2, "cut_off": True, "measured": 4, "of": 8}
    assert result["summary"].startswith("1 concurrent user meets tpot_p95=1s (the time budget (--max-seconds) ended"
                                        " the search during the 2-user level, 4 of its 8 requests measured): ")
    assert [p.users for p in capacity.calibration_points(result, Workload.synthetic("16", "8"))] == [1]
    assert "cut off" in _text(capacity.format_capacity(result)) and "capacity 1" in capacity.render_svg(result)


def test_a_cut_off_level_whose_requests_already_miss_the_slo_failed(tmp_path: Path) -> None:
    """The same engine and budget, TPOT ≤ 600 ms: the 2-user level's 4 requests ran at 714 ms."""
    result, _, _ = search(tmp_path, "tpot_p95=600ms", Workload.synthetic("16", "8"),
                          options=capacity.SearchOptions(max_seconds=52), step_s=0.25, per_seq_s=0.25, max_seqs=16)
    assert result["capacity_users"] == 1 and result["first_failing_users"] == 2
    two = result["levels"][1]
    assert not two["ok"] and not two["unfinished"]
    assert two["violations"] == ["tpot_p95 714 ms > 600 ms", "the time budget cut the level off after 4 measured requests"]
    assert result["summary"].startswith("1 concurrent user meets tpot_p95=600ms; 2 users did not: ")


def test_a_level_that_cannot_finish_in_the_time_left_is_not_started(tmp_path: Path) -> None:
    """A fixed 0.5 s step: one user's round (a request) took 4 s, so a 2-user level (4 rounds)
    takes at least 16 s; with 15 s left the search ends at once instead of starting it."""
    result, eng, clock = search(tmp_path, "tpot_p95=1s", Workload.synthetic("16", "8"),
                                options=capacity.SearchOptions(max_seconds=47), step_s=0.5, max_seqs=16)
    assert clock.now == pytest.approx(32) and eng.arrivals == 8
    assert [s["users"] for s in result["levels"]] == [1] and result["capacity_users"] == 1
    assert result["search"]["unmeasured"] == {"users": 2, "cut_off": False, "needed_s": 16.0, "left_s": 15.0}
    assert "(the time budget (--max-seconds) ended the search: a 2-user level takes at least 16 s, 15 s were left)" \
        in result["summary"]


def test_a_budget_shorter_than_one_request_measures_nothing(tmp_path: Path) -> None:
    result, _, _ = search(tmp_path, "tpot_p95=1s", Workload.synthetic("16", "8"),
                          options=capacity.SearchOptions(max_seconds=3), step_s=0.5, max_seqs=16)
    assert result["capacity_users"] == 0 and result["levels"][0]["unfinished"]
    assert result["summary"] == ("No level finished: the time budget (--max-seconds) ended the search during the"
                                 " 1-user level, 0 of its 8 requests measured.")
    assert capacity.nothing_measured(result) == "no request finished within the time budget (--max-seconds)"


def _text(renderable: Any) -> str:
    from rich.console import Console
    console = Console(width=200, record=True, color_system=None, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


# ---------------------------------------------------------------- against the simulator


@contextmanager
def simulator(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[str]:
    port = free_port()
    full = {**os.environ, "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"), "LLM_SUPERVISOR_SIM_STARTUP_S": "0.3",
            "VLLM_CACHE_ROOT": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), **env}
    argv = [sys.executable, "-m", "llm_supervisor.simulator", "serve", "Qwen/Qwen3-4B", "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "q4b", "--max-model-len", "8192", *args]
    log = open(tmp_path / "sim.log", "wb")
    proc = subprocess.Popen(argv, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "sim.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "simulator not ready"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    captured = capsys.readouterr()
    assert done.value.code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.slow  # about 90 s: six levels of real 3 s streams, a quarter of the fast set
def test_max_num_seqs_is_the_capacity_at_a_tight_ttft(tmp_path: Path, capsys, monkeypatch) -> None:
    """Fixed 50 ms steps, 6 sequences at most: up to 6 users a request starts within two steps
    (≤ 100 ms); with 7, one request always waits for the next slot to free, and the slots of 3 s
    requests free every 0.5 s on average, so the longest waits are ≥ 0.5 s. TTFT p95 ≤ 400 ms holds
    for 6, with 300 ms to spare for a loaded machine's scheduling (which only adds to a TTFT), and
    not for 7."""
    monkeypatch.setenv("LLM_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLM_SUPERVISOR_API_PORT", str(free_port()))
    with simulator(tmp_path, {"LLM_SUPERVISOR_SIM_TOKENS_PER_S": "20"}, "--max-num-seqs", "6") as url:
        result = run_cli(["bench", "--find-capacity", "--slo", "ttft_p95=400ms", "--url", url, "--prompt-tokens", "32",
                          "--output-tokens", "60", "--max-users", "64", "--json"], capsys)
    assert result["capacity_users"] == 6 and result["first_failing_users"] == 7
    assert [s["users"] for s in result["levels"]] == [1, 2, 4, 8, 6, 7]
    best = result["capacity"]
    assert best["users"] == 6 and best["engine_running_peak"] == 6
    assert best["per_user_tokens_per_s"] == pytest.approx(20, rel=0.1)
    assert best["tokens_per_s"] == pytest.approx(120, rel=0.2)
    assert best["tpot_s"]["p95"] == pytest.approx(0.05, rel=0.2)
    assert result["saturation"]["users"] == 7 and result["saturation"]["cause"] == "waiting_queue"
    # kept: the state file (under the URL, no daemon answered) and the plot
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    kept = state["capacity"][f"url:{url}"]
    assert kept["capacity_users"] == 6 and Path(result["plot"]).is_file()
    assert ET.parse(result["plot"]).getroot().tag.endswith("svg")


@pytest.mark.slow  # about a minute: the levels of real streams
def test_a_tpot_limit_is_met_by_the_users_the_step_law_allows(tmp_path: Path, capsys, monkeypatch) -> None:
    """Steps of 20 ms + 40 ms per running request: TPOT ≤ 200 ms holds for ⌊(200 − 20) / 40⌋ = 4
    users (180 ms), not 5 (220 ms): 10 % either side, room for a loaded machine. The daemon's status
    names the engine, so the levels also calibrate the speed model."""
    monkeypatch.setenv("LLM_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    env = {"LLM_SUPERVISOR_SIM_STEP_S": "0.02", "LLM_SUPERVISOR_SIM_STEP_PER_SEQ_S": "0.04",
           "LLM_SUPERVISOR_SIM_STEP_PER_CONTEXT_TOKEN_S": "0", "LLM_SUPERVISOR_SIM_STEP_PER_PREFILL_TOKEN_S": "0"}
    with simulator(tmp_path, env) as url:
        status = {"engine_url": url, "profile": "sim-4b", "model": "Qwen/Qwen3-4B",
                  "gpus": [{"name": "NVIDIA GeForce RTX 4090 D"}], "facts": {"vllm_version": "0.26.0"},
                  "argv": ["vllm", "serve", "Qwen/Qwen3-4B"]}
        monkeypatch.setattr(capacity, "_daemon_status", lambda settings: status)
        result = run_cli(["bench", "--find-capacity", "--slo", "tpot_p95=200ms", "--prompt-tokens", "16",
                          "--output-tokens", "16", "--rounds", "1", "--json"], capsys)
    assert result["capacity_users"] == 4 and result["first_failing_users"] == 5
    assert result["capacity"]["tpot_s"]["p50"] == pytest.approx(0.18, rel=0.05)
    assert result["engine"]["profile"] == "sim-4b" and result["saturation"] is None
    state = StateStore(tmp_path / "state")
    assert state.capacity("sim-4b")["capacity_users"] == 4
    points, source = Calibration.in_state_dir(tmp_path / "state").speed_points(
        "Qwen/Qwen3-4B", None, "NVIDIA GeForce RTX 4090 D", 1)
    assert sorted(p.users for p in points) == sorted(s["users"] for s in result["levels"])
    assert source.startswith("bench --find-capacity")
    four = next(p for p in points if p.users == 4)
    assert four.prompt_tokens == 16 and four.output_tokens == 16 and 1 / four.per_user_tokens_per_s == pytest.approx(0.18, rel=0.1)


def test_an_endpoint_that_never_answers_has_no_capacity_to_keep(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LLM_SUPERVISOR_API_PORT", str(free_port()))
    with SteppedEngine(step_s=0.005, fail_500=set(range(1, 1000))).serve() as url:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--find-capacity", "--slo", "ttft_p95=2s", "--url", url, "--prompt-tokens", "8",
                      "--output-tokens", "4", "--max-users", "4", "--rounds", "1", "--json"])
    assert done.value.code == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # what was tried is still shown
    assert result["levels"] and all(level["succeeded"] == 0 for level in result["levels"])
    assert captured.err.strip().startswith("error: bench --find-capacity: none of ")
    assert captured.err.strip().endswith(" requests succeeded; nothing was kept")
    assert not (tmp_path / "state" / "state.json").exists() and not (tmp_path / "state" / "capacity").exists()


def test_find_capacity_needs_an_slo(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    for argv, says in ((["bench", "--find-capacity"], "needs --slo"), (["bench", "--slo", "ttft_p95=1s"], "only with"),
                       (["bench", "--find-capacity", "--slo", "ttft_p95=soon"], "not a duration")):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        assert done.value.code == 2 and says in capsys.readouterr().err


# ---------------------------------------------------------------- kept and shown by the daemon


def test_status_shows_the_capacity_a_bench_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "simgpu"))

    async def scenario() -> None:
        h = Harness(tmp_path / "run").start()
        status = await h.ready()
        assert status["capacity"] is None
        # another process (the bench) writes its result into the daemon's state file
        StateStore(h.settings.state_dir).save_capacity(h.profile.name, {
            "capacity_users": 12, "slo": {"text": "ttft_p95=2s"}, "measured_at": 1_800_000_100.0,
            "capacity": {"tokens_per_s": 900.0, "requests_per_s": 7.0, "ttft_s": {"p95": 1.2}, "tpot_s": {"p95": 0.03}},
            "saturation": {"users": 16, "cause": "kv_cache_full"}, "workload": {"source": "synthetic"}, "plot": "/x.svg"})
        await h.until(lambda: h.daemon.status()["capacity"], what="the capacity in /status")
        cap = h.daemon.status()["capacity"]
        assert cap["users"] == 12 and cap["slo"] == "ttft_p95=2s" and cap["saturation"] == "kv_cache_full"
        assert cap["tokens_per_s"] == 900.0 and cap["measured_at"].startswith("2027-")
        # the daemon's own saves keep the bench's result, and the bench's kept the daemon's history
        h.daemon.store.save()
        kept = StateStore(h.settings.state_dir)
        assert kept.capacity(h.profile.name)["capacity_users"] == 12
        assert any(e["event"] == "ready" for e in kept.entry(h.daemon.key)["history"])
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()
    asyncio.run(scenario())


def test_status_text_shows_capacity() -> None:
    from llm_supervisor.api.client import format_status

    text = _text(format_status({"state": "ready", "capacity": {"users": 12, "slo": "ttft_p95=2s", "tokens_per_s": 900.0,
                                                              "saturation": "kv_cache_full", "saturated_at_users": 16}}))
    assert "12 users meet ttft_p95=2s: 900 tokens/s; saturated at 16 users (kv cache full)" in text
    text = _text(format_status({"state": "ready", "capacity": {"users": 1, "slo": "tpot_p95=100ms", "tokens_per_s": 20.0}}))
    assert "1 user meets tpot_p95=100ms: 20 tokens/s" in text
