"""bench: against a tiny in-test OpenAI-compatible streaming server with a known token rate
and a concurrency cap, so the measured numbers can be checked against what the server does."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
import uvicorn

from llm_supervisor.bench.run import (
    EndpointUnreachable, compare_sentence, engine_url_from_status, format_bench, normalize_url, percentile,
    run_bench, summarize,
)
from llm_supervisor.vllm.metrics import engine_metrics, parse_prometheus
from llm_supervisor.config.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeEngine:
    """An OpenAI-compatible streaming server: `rate` tokens/s per request, at most `cap`
    requests generating (the rest wait, as in vLLM's scheduler), chosen requests fail."""

    def __init__(self, rate: float = 40.0, cap: int = 2, fail_500: set[int] = frozenset(),
                 broken: set[int] = frozenset(), api_key: str | None = None,
                 status: dict | None = None, kv_max_concurrency: str | None = "11.0464") -> None:
        self.rate, self.cap = rate, cap
        self.fail_500, self.broken, self.api_key = set(fail_500), set(broken), api_key
        self.kv_max_concurrency = kv_max_concurrency
        self.status = status
        self.arrivals = 0
        self.running = 0
        self.waiting = 0
        self.max_running = 0
        self.bodies: list[tuple[str, dict]] = []  # (path, body) of every generation request
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._sem: asyncio.Semaphore | None = None
        self.app = self._build()

    def _authorized(self, request: Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request):
            if not self._authorized(request):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

        @app.get("/metrics")
        async def metrics():
            lines = [
                f'vllm:num_requests_running{{engine="0",model_name="fake-model"}} {float(self.running)}',
                f'vllm:num_requests_waiting{{engine="0",model_name="fake-model"}} {float(self.waiting)}',
            ]
            if self.kv_max_concurrency:
                lines.append('vllm:cache_config_info{block_size="16",engine="0",kv_cache_max_concurrency="'
                             f'{self.kv_max_concurrency}",kv_cache_size_tokens="110464"}} 1.0')
            return PlainTextResponse("\n".join(lines) + "\n")

        @app.get("/status")
        async def status():
            if self.status is None:
                return JSONResponse({"detail": "not found"}, status_code=404)
            return self.status

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await generate(request, "/v1/completions")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await generate(request, "/v1/chat/completions")

        async def generate(request: Request, path: str):
            if not self._authorized(request):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            body = await request.json()
            self.bodies.append((path, body))
            self.arrivals += 1
            number = self.arrivals
            if number in self.fail_500:
                return JSONResponse({"error": "boom"}, status_code=500)
            n = int(body["max_tokens"])
            assert body["stream"] is True and body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
            if self._sem is None:
                self._sem = asyncio.Semaphore(self.cap)
            sem = self._sem

            async def gen():
                self.waiting += 1
                async with sem:
                    self.waiting -= 1
                    self.running += 1
                    self.max_running = max(self.max_running, self.running)
                    try:
                        loop = asyncio.get_running_loop()
                        t0 = loop.time()
                        head = {"id": "x", "object": "chat.completion.chunk", "model": body["model"]}
                        yield "data: " + json.dumps({**head, "choices": [{"index": 0, "delta": {"content": ""}}]}) + "\n\n"
                        for i in range(n):
                            # absolute schedule: jitter does not accumulate
                            await asyncio.sleep(max(0.0, t0 + (i + 1) / self.rate - loop.time()))
                            if number in self.broken and i == n // 2:
                                raise RuntimeError("engine died mid-stream")
                            choice = {"index": 0, "text": f"t{i} "} if "prompt" in body else \
                                {"index": 0, "delta": {"content": f"t{i} "}}
                            yield "data: " + json.dumps({**head, "choices": [choice]}) + "\n\n"
                        usage = {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": n + 12}
                        yield "data: " + json.dumps({**head, "choices": [], "usage": usage}) + "\n\n"
                        yield "data: [DONE]\n\n"
                    finally:
                        self.running -= 1

            return StreamingResponse(gen(), media_type="text/event-stream")

        return app

    def __enter__(self) -> "FakeEngine":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake engine did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


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


def test_compare_sentence_says_who_capped() -> None:
    base = {"users": 8, "requests": 32, "peak_concurrency_observed": 4, "engine_running_peak": 4,
            "engine_waiting_peak": 4, "engine_max_concurrency": 11.05, "engine_max_concurrency_context": 10000}
    text = compare_sentence(base)
    assert "Up to 4 of 8" in text and "11.05 requests of 10,000 tokens" in text and "4 requests queued" in text
    text = compare_sentence({**base, "engine_max_concurrency": None})
    assert "unknown" in text


# ---------------------------------------------------------------- against the fake engine


def test_rates_concurrency_and_percentiles_match_the_server(settings: Settings) -> None:
    rate, cap, n = 40.0, 2, 16
    with FakeEngine(rate=rate, cap=cap) as eng:
        report = run_bench(settings, url=eng.url, users=4, requests=8, max_tokens=n, progress=False)
    assert report["model"] == "fake-model"
    assert report["succeeded"] == 8 and report["failed"] == 0 and report["success_rate"] == 1.0
    assert report["errors"] == {}
    assert report["total_tokens"] == 8 * n
    # each request decodes at `rate`; `cap` of them at once
    assert report["per_user_tokens_per_s"] == pytest.approx(rate, rel=0.15)
    assert report["tokens_per_s"] == pytest.approx(cap * rate, rel=0.25)
    assert report["duration_s"] == pytest.approx(8 / cap * n / rate, rel=0.25)
    # 4 users, 2 slots: 2 requests start at once (TTFT 1/rate), the other 6 wait one request (n/rate)
    assert report["ttft_s"]["p50"] == pytest.approx(n / rate + 1 / rate, abs=0.12)
    assert report["ttft_s"]["mean"] > 0.2
    assert report["latency_s"]["p50"] == pytest.approx(2 * n / rate, abs=0.15)
    assert cap <= report["peak_concurrency_observed"] <= cap + 1
    assert report["peak_in_flight"] == 4
    assert eng.max_running == cap
    assert report["engine_running_peak"] == cap
    assert report["engine_waiting_peak"] >= 1
    assert report["engine_max_concurrency"] == 11.05
    assert report["engine_max_concurrency_context"] == 10000
    assert report["engine_max_concurrency_source"] == "metrics"
    assert "queued" in report["comparison"]


def test_errors_are_counted_by_kind(settings: Settings) -> None:
    with FakeEngine(rate=200.0, cap=4, fail_500={2, 5, 6}, broken={3}) as eng:
        report = run_bench(settings, url=eng.url, users=3, requests=9, max_tokens=8, progress=False)
    assert report["errors"] == {"http_500": 3, "stream_broken": 1}
    assert report["succeeded"] == 5 and report["failed"] == 4
    assert report["success_rate"] == pytest.approx(5 / 9, abs=1e-4)
    assert report["total_tokens"] == 5 * 8


def test_daemon_status_gives_engine_url_and_capacity(tmp_path: Path) -> None:
    with FakeEngine(rate=200.0, cap=8, kv_max_concurrency=None) as eng:
        eng.status = {"state": "ready", "engine_url": eng.url, "served_model_name": "fake-model",
                      "max_concurrency": 3.5, "max_concurrency_context": 8192}
        settings = Settings(state_dir=tmp_path, api_port=eng.port)  # the "daemon" is the same server
        report = run_bench(settings, users=2, requests=2, max_tokens=4, progress=False)
    assert report["url"] == eng.url and report["succeeded"] == 2
    assert report["engine_max_concurrency"] == 3.5
    assert report["engine_max_concurrency_context"] == 8192
    assert report["engine_max_concurrency_source"] == "daemon"
    assert report["simulated"] is False


def test_a_simulated_engine_is_named_so(tmp_path: Path) -> None:
    from rich.console import Console

    with FakeEngine(rate=200.0, cap=8) as eng:
        eng.status = {"state": "ready", "engine_url": eng.url, "served_model_name": "fake-model", "simulated": True}
        settings = Settings(state_dir=tmp_path, api_port=eng.port)
        report = run_bench(settings, users=1, requests=1, max_tokens=4, progress=False)
    assert report["simulated"] is True
    console = Console(record=True, width=160)
    console.print(format_bench(report))
    text = console.export_text()
    assert text.lstrip().startswith("SIMULATED: the engine is the bundled vLLM simulator") and "SIMULATED bench" in text


def test_api_key_is_sent_as_bearer(settings: Settings) -> None:
    with FakeEngine(rate=200.0, cap=2, api_key="sekrit") as eng:
        with pytest.raises(EndpointUnreachable, match="api-key"):
            run_bench(settings, url=eng.url, users=1, requests=1, max_tokens=2, progress=False)
        report = run_bench(settings, url=eng.url, users=1, requests=2, max_tokens=2, api_key="sekrit", progress=False)
    assert report["succeeded"] == 2


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
    with FakeEngine(rate=200.0, cap=2) as eng:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", eng.url, "--users", "2", "--requests", "4", "--max-tokens", "5", "--json"])
        assert done.value.code == 0
        report = json.loads(capsys.readouterr().out)
        assert report["succeeded"] == 4 and report["total_tokens"] == 20
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", f"http://127.0.0.1:{free_port()}", "--users", "1"])
        assert done.value.code == 1
        assert "error: cannot reach" in capsys.readouterr().err
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
    with FakeEngine(rate=400.0, cap=4) as eng:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", eng.url, "--users", "2", "--requests", "6", "--prompt-tokens", "300",
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
    with FakeEngine(rate=400.0, cap=4) as eng:
        with pytest.raises(SystemExit) as done:
            cli.main(["bench", "--url", eng.url, "--users", "1", "--requests", "4", "--max-tokens", "5",
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
    with FakeEngine(rate=200.0, cap=2) as eng:
        report = run_bench(settings, url=eng.url, users=2, requests=3, max_tokens=3, progress=True)
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
