"""bench: against an in-test OpenAI-compatible streaming engine scheduled as vLLM is (a known step
time, a cap on running requests), so the measured numbers can be checked against what the engine
did: exactly, on a virtual clock, and through a real port for the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench_fakes import SteppedEngine, free_port
from fakes import VirtualClock
from llm_supervisor.bench.run import (
    EndpointUnreachable, bench_target, compare_sentence, daemon_urls, engine_url_from_status, format_bench, normalize_url, percentile,
    run_bench, summarize,
)
from llm_supervisor.vllm.metrics import engine_metrics, parse_prometheus
from llm_supervisor.config.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"


def virtual(**engine: object) -> tuple[SteppedEngine, dict[str, object]]:
    """An engine in this process and the run_bench arguments that reach it on a virtual clock."""
    clock = VirtualClock()
    eng = SteppedEngine(clock, **engine)  # type: ignore[arg-type]
    return eng, {"url": eng.url, "clock": clock, "transport": eng.transport, "progress": False}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose daemon URL points at a port nobody listens on."""
    return Settings(state_dir=tmp_path, api_port=free_port())


# ---------------------------------------------------------------- pure helpers


def test_percentile_linear_interpolation() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize() -> None:
    s = summarize([0.1, 0.2, 0.3, 0.4, 1.0])
    assert s["p50"] == 0.3 and s["max"] == 1.0 and s["mean"] == pytest.approx(0.4)
    assert s["p99"] == pytest.approx(0.976)
    assert summarize([])["p50"] is None


def test_engine_metrics_from_real_vllm_scrape() -> None:
    m = engine_metrics((FIXTURES / "metrics-ready.txt").read_text())
    assert m.running == 0.0 and m.waiting == 0.0
    assert m.max_concurrency == pytest.approx(11.0464)
    assert m.kv_cache_tokens == 110464
    assert m.context == 10000  # 110464 tokens / 11.0464 requests


def test_parse_prometheus_sums_engines_and_skips_junk() -> None:
    text = ('# HELP x\nvllm:num_requests_running{engine="0"} 3.0\nvllm:num_requests_running{engine="1"} 2\n'
            'garbage line\nvllm:num_requests_waiting{a="q\\"x"} 4\n')
    samples = parse_prometheus(text)
    assert ("vllm:num_requests_waiting", {"a": 'q"x'}, 4.0) in samples
    m = engine_metrics(text)
    assert m.running == 5.0 and m.waiting == 4.0 and m.max_concurrency is None


def test_urls() -> None:
    assert normalize_url("127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    assert normalize_url("https://h/x/") == "https://h/x"
    assert engine_url_from_status({"engine_url": "http://127.0.0.1:8001"}) == "http://127.0.0.1:8001"
    argv = ["vllm", "serve", "m", "--host", "0.0.0.0", "--port", "8123"]
    assert engine_url_from_status({"argv": argv}) == "http://127.0.0.1:8123"
    assert engine_url_from_status({"state": "starting"}) is None
    assert engine_url_from_status({"argv": ["vllm", "serve", "m", "--host", "::1", "--port", "8123"]}) == \
        "http://[::1]:8123"


def test_a_bench_goes_where_clients_go() -> None:
    """The front door's address when the daemon has one (what clients see, held across restarts,
    counted by the door), else the engine's; the daemon's figures only for an address it names."""
    door = {"url": "http://127.0.0.1:8000", "engine_url": "http://127.0.0.1:41234", "max_concurrency": 2.0}
    assert bench_target(door, None) == ("http://127.0.0.1:8000", door)
    assert bench_target(door, "127.0.0.1:41234/v1") == ("http://127.0.0.1:41234", door)  # its engine, named
    assert bench_target(door, "http://gpu-box:9000") == ("http://gpu-box:9000", None)  # someone else's
    assert bench_target({**door, "url": "http://0.0.0.0:8000"}, None)[0] == "http://127.0.0.1:8000"
    assert bench_target({**door, "url": "http://[::]:8000"}, None)[0] == "http://127.0.0.1:8000"
    assert bench_target({**door, "url": "http://:8000"}, None)[0] == "http://127.0.0.1:8000"
    plain = {"url": "http://127.0.0.1:8000", "engine_url": "http://127.0.0.1:8000"}
    assert daemon_urls(plain) == ["http://127.0.0.1:8000"]
    assert bench_target(None, None) == ("http://127.0.0.1:8000", None)  # vLLM's default, no daemon


def test_compare_sentence_says_who_capped() -> None:
    base = {"users": 8, "requests": 32, "peak_concurrency_observed": 4, "engine_running_peak": 4,
            "engine_waiting_peak": 4, "engine_max_concurrency": 11.05, "engine_max_concurrency_context": 10000}
    text = compare_sentence(base)
    assert "Up to 4 of 8" in text and "11.05 requests of 10,000 tokens" in text and "4 requests queued" in text
    text = compare_sentence({**base, "engine_max_concurrency": None})
    assert "unknown" in text
    failed = {**base, "succeeded": 0, "peak_concurrency_observed": 0, "errors": {"http_501": 32}}
    assert compare_sentence(failed) == "No request succeeded (http_501: 32): nothing was measured."


# ---------------------------------------------------------------- against the fake engine


def test_rates_concurrency_and_percentiles_match_the_server(settings: Settings) -> None:
    rate, cap, n = 40.0, 2, 16
    eng, reach = virtual(step_s=1 / rate, max_seqs=cap)
    report = run_bench(settings, users=4, requests=8, max_tokens=n, **reach)
    assert report["model"] == "fake-model"
    assert report["succeeded"] == 8 and report["failed"] == 0 and report["success_rate"] == 1.0
    assert report["errors"] == {}
    assert report["total_tokens"] == 8 * n
    # each request decodes at `rate`, `cap` of them at once: 4 rounds of n / rate
    assert report["per_user_tokens_per_s"] == pytest.approx(rate)
    assert report["tokens_per_s"] == pytest.approx(cap * rate)
    assert report["duration_s"] == pytest.approx(8 / cap * n / rate)
    # 4 users, 2 slots: 2 requests start at once (TTFT one step), the other 6 wait one request
    # (n steps) and then one step; latency: n steps, or 2n for those that waited
    assert report["ttft_s"]["p50"] == pytest.approx((n + 1) / rate)
    assert report["ttft_s"]["mean"] == pytest.approx((2 * 1 + 6 * (n + 1)) / rate / 8)
    assert report["latency_s"]["p50"] == pytest.approx(2 * n / rate)
    assert report["latency_s"]["max"] == pytest.approx(2 * n / rate)
    # a request ends before the next one's first token: the client never sees more than the slots
    assert report["peak_concurrency_observed"] == cap
    assert report["peak_in_flight"] == 4
    assert eng.max_running == cap and eng.steps == 4 * n
    assert report["engine_running_peak"] == cap
    assert report["engine_waiting_peak"] == 4 - cap
    assert report["engine_max_concurrency"] == 11.05
    assert report["engine_max_concurrency_context"] == 10000
    assert report["engine_max_concurrency_source"] == "metrics"
    assert "queued" in report["comparison"]


def test_a_step_that_slows_with_the_batch_is_what_users_see(settings: Settings) -> None:
    # vLLM's step time grows with the running batch: 20 ms + 10 ms a request, 3 running
    eng, reach = virtual(step_s=0.020, per_seq_s=0.010, max_seqs=3)
    report = run_bench(settings, users=3, requests=6, max_tokens=11, **reach)
    assert report["succeeded"] == 6 and eng.max_running == 3
    assert report["per_user_tokens_per_s"] == pytest.approx(1 / 0.050)
    assert report["ttft_s"]["max"] == pytest.approx(0.050)
    assert report["latency_s"]["p50"] == pytest.approx(11 * 0.050)
    assert report["duration_s"] == pytest.approx(2 * 11 * 0.050)


def test_errors_are_counted_by_kind(settings: Settings) -> None:
    eng, reach = virtual(step_s=0.005, max_seqs=4, fail_500={2, 5, 6}, broken={3})
    report = run_bench(settings, users=3, requests=9, max_tokens=8, **reach)
    assert report["errors"] == {"http_500": 3, "stream_broken": 1}
    assert report["succeeded"] == 5 and report["failed"] == 4
    assert report["success_rate"] == pytest.approx(5 / 9, abs=1e-4)
    assert report["total_tokens"] == 5 * 8
    assert not eng.running and not eng.waiting


def test_daemon_status_gives_engine_url_and_capacity(tmp_path: Path) -> None:
    eng = SteppedEngine(step_s=0.005, max_seqs=8, kv_max_concurrency=None)
    with eng.serve() as url:
        eng.status = {"state": "ready", "engine_url": url, "served_model_name": "fake-model",
                      "max_concurrency": 3.5, "max_concurrency_context": 8192}
        settings = Settings(state_dir=tmp_path, api_port=eng.port)  # the "daemon" is the same server
        report = run_bench(settings, users=2, requests=2, max_tokens=4, progress=False)
    assert report["url"] == url and report["succeeded"] == 2
    assert report["engine_max_concurrency"] == 3.5
    assert report["engine_max_concurrency_context"] == 8192
    assert report["engine_max_concurrency_source"] == "daemon"
    assert report["simulated"] is False


def test_a_simulated_engine_is_named_so(tmp_path: Path) -> None:
    from rich.console import Console

    eng = SteppedEngine(step_s=0.005, max_seqs=8)
    with eng.serve() as url:
        eng.status = {"state": "ready", "engine_url": url, "served_model_name": "fake-model", "simulated": True}
        settings = Settings(state_dir=tmp_path, api_port=eng.port)
        report = run_bench(settings, users=1, requests=1, max_tokens=4, progress=False)
    assert report["simulated"] is True
    console = Console(record=True, width=160)
    console.print(format_bench(report))
    text = console.export_text()
    assert text.lstrip().startswith("SIMULATED: the engine is the bundled vLLM simulator") and "SIMULATED bench" in text


def test_api_key_is_sent_as_bearer(settings: Settings) -> None:
    eng = SteppedEngine(step_s=0.005, api_key="sekrit")
    with eng.serve() as url:  # over a real port: the header is what goes on the wire
        with pytest.raises(EndpointUnreachable, match="api-key"):
            run_bench(settings, url=url, users=1, requests=1, max_tokens=2, progress=False)
        report = run_bench(settings, url=url, users=1, requests=2, max_tokens=2, api_key="sekrit", progress=False)
    assert report["succeeded"] == 2 and eng.arrivals == 2


def test_unreachable_endpoint_is_one_clear_line(settings: Settings) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EndpointUnreachable) as info:
        run_bench(settings, url=url, users=1, requests=1, progress=False)
    assert info.value.lines() == [info.value.message]
    assert "cannot reach" in info.value.message and url in info.value.message


def test_cli_json_and_table(settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console
    from llm_supervisor import cli

    monkeypatch.setenv("LLM_SUPERVISOR_API_PORT", str(settings.api_port))
    with SteppedEngine(step_s=0.005).serve() as url:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", url, "--users", "2", "--requests", "4", "--max-tokens", "5", "--json"])
        assert done.value.code == 0
        report = json.loads(capsys.readouterr().out)
        assert report["succeeded"] == 4 and report["total_tokens"] == 20
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", f"http://127.0.0.1:{free_port()}", "--users", "1"])
        assert done.value.code == 1
        assert "error: cannot reach" in capsys.readouterr().err
    with SteppedEngine(step_s=0.005, fail_500={1, 2, 3}).serve() as url:  # it answers, but never a completion
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", url, "--users", "1", "--requests", "3", "--max-tokens", "5", "--json"])
        assert done.value.code == 1  # no figure to take for a measurement
        captured = capsys.readouterr()
        assert json.loads(captured.out)["succeeded"] == 0
        assert captured.err.strip() == "error: bench: none of 3 requests succeeded (http_500: 3)"
    console = Console(record=True, width=120)
    console.print(format_bench(report))
    text = console.export_text()
    assert "throughput" in text and "TTFT p50 / p95 / p99" in text and "100.0%" in text


def test_prompts_of_a_length_and_replies_of_a_range(settings: Settings, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # `bench --prompt-tokens 300 --output-tokens 4-6`: random-token prompts of that length (fresh
    # each run, no prefix-cache hits) on /v1/completions, replies drawn from the range
    from rich.console import Console

    from llm_supervisor import cli

    monkeypatch.setenv("LLM_SUPERVISOR_API_PORT", str(settings.api_port))
    eng = SteppedEngine(step_s=0.0025, max_seqs=4)
    with eng.serve() as url:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", url, "--users", "2", "--requests", "6", "--prompt-tokens", "300",
                      "--output-tokens", "4-6", "--json"])
        assert done.value.code == 0
        report = json.loads(capsys.readouterr().out)
        sent = list(eng.bodies)
    assert report["succeeded"] == 6 and report["workload"]["prompt_tokens"] == "300"
    assert {path for path, _ in sent} == {"/v1/completions"}
    assert [len(b["prompt"]) for _, b in sent] == [300] * 6 and len({tuple(b["prompt"]) for _, b in sent}) == 6
    assert all(4 <= b["max_tokens"] <= 6 and b["ignore_eos"] is True for _, b in sent)
    assert report["total_tokens"] == sum(b["max_tokens"] for _, b in sent)
    console = Console(record=True, width=120)
    console.print(format_bench(report))
    assert "2 / 6 × 300-token prompts, 4-6-token replies" in console.export_text()


def test_a_file_of_real_requests(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_supervisor import cli

    monkeypatch.setenv("LLM_SUPERVISOR_API_PORT", str(settings.api_port))
    work = tmp_path / "work.jsonl"
    work.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}) + "\n"
                    + json.dumps({"prompt": "once upon a time"}) + "\n")
    eng = SteppedEngine(step_s=0.0025, max_seqs=4)
    with eng.serve() as url:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", url, "--users", "1", "--requests", "4", "--max-tokens", "5",
                      "--workload", str(work), "--json"])
        assert done.value.code == 0
        report = json.loads(capsys.readouterr().out)
        sent = list(eng.bodies)
    assert report["succeeded"] == 4 and report["workload"] == {"source": str(work), "requests": 2}
    assert [p for p, _ in sent] == ["/v1/chat/completions", "/v1/completions"] * 2
    assert [b["max_tokens"] for _, b in sent] == [3, 5, 3, 5]  # the file's own, else --max-tokens


@pytest.mark.parametrize("argv, line", [
    (["--prompt", "hi", "--prompt-tokens", "100"], "--prompt: not with --prompt-tokens"),
    (["--prompt-tokens", "100", "--workload", "w.jsonl"], "--prompt-tokens: not with --workload"),
    (["--output-tokens", "64"], "--output-tokens: with --prompt-tokens or --workload"),
    (["--prompt-tokens", "0"], "--prompt-tokens"),
])
def test_bench_request_options_that_do_not_go_together(argv: list[str], line: str, settings: Settings,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_supervisor import cli

    monkeypatch.setenv("LLM_SUPERVISOR_API_PORT", str(settings.api_port))
    with pytest.raises(SystemExit) as done:
        cli.main(["bench", "--url", f"http://127.0.0.1:{free_port()}", *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err


def test_progress_bar_does_not_break_the_run(settings: Settings) -> None:
    eng, reach = virtual(step_s=0.005)
    report = run_bench(settings, users=2, requests=3, max_tokens=3, **{**reach, "progress": True})
    assert report["succeeded"] == 3


# ---------------------------------------------------------------- against the bundled simulator


@pytest.mark.skipif(not (Path(__file__).parent.parent / "llm_supervisor" / "simulator" / "__main__.py").is_file(),
                    reason="the simulator is not in this checkout")
def test_bench_against_the_simulator(tmp_path: Path, settings: Settings) -> None:
    """More users than the engine runs at once: peak running is capped at max_num_seqs, the
    rest queue, each stream runs at the simulator's token rate, and the engine's KV-cache
    concurrency matches what its /metrics and its log say."""
    rate, seqs, users, n = 40.0, 3, 6, 20
    port = free_port()
    env = {**os.environ, "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"), "LLM_SUPERVISOR_SIM_STARTUP_S": "0.3",
           "LLM_SUPERVISOR_SIM_TOKENS_PER_S": f"{rate:g}", "VLLM_CACHE_ROOT": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(__file__).parent.parent)}
    argv = [sys.executable, "-m", "llm_supervisor.simulator", "serve", "Qwen/Qwen3-4B", "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", "qwen3-4b", "--max-model-len", "8192",
            "--gpu-memory-utilization", "0.9", "--max-num-seqs", str(seqs)]
    log = open(tmp_path / "sim.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "sim.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "simulator not ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        report = run_bench(settings, url=f"http://127.0.0.1:{port}", users=users, requests=2 * users,
                           max_tokens=n, progress=False)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
    sim_log = (tmp_path / "sim.log").read_text()
    assert report["model"] == "qwen3-4b"
    assert report["succeeded"] == 2 * users and report["success_rate"] == 1.0
    assert report["total_tokens"] == 2 * users * n
    # rates the client measures: never faster than the engine streams; on a loaded machine the
    # client may read late, so slower is allowed down to a factor that a wrong formula would miss
    assert 0.5 * rate <= report["per_user_tokens_per_s"] <= 1.15 * rate
    assert 0.5 * seqs * rate <= report["tokens_per_s"] <= 1.3 * seqs * rate
    assert report["engine_running_peak"] == seqs
    assert report["engine_waiting_peak"] >= users - seqs
    # the client sees at least the engine's running requests at once; a late reader may see the
    # tail of one stream overlap the start of the next, never more than the users it runs
    assert seqs <= report["peak_concurrency_observed"] <= users
    # the KV-cache figure the bench reports is the one vLLM printed at startup
    printed = re.search(r"Maximum concurrency for 8,192 tokens per request: ([\d.]+)x", sim_log)
    assert printed, sim_log[-2000:]
    assert report["engine_max_concurrency"] == pytest.approx(float(printed.group(1)), abs=0.01)
    assert report["engine_max_concurrency_context"] == 8192
    # half the requests waited for a slot: their TTFT is about one whole request (n / rate)
    assert report["ttft_s"]["p95"] == pytest.approx(n / rate, abs=0.2)
