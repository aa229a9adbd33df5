"""`supervisor bench`: a concurrency test against any OpenAI-compatible chat endpoint.

N users each keep one streaming chat request open at a time until the request budget is spent,
so the engine sees exactly N concurrent requests (fewer at the tail). Meanwhile the engine's
`/metrics` is sampled for `vllm:num_requests_running` / `..._waiting`, so the report can say how
many requests the engine really ran at once against what its KV cache promises.

Definitions used in the report (all times from the client's monotonic clock):

* TTFT: request sent → first chunk carrying generated text (`content` or `reasoning_content`).
* latency: request sent → end of the stream (`data: [DONE]`).
* tokens of a request: `usage.completion_tokens` when the server reports it, else the number of
  chunks that carried generated text (one token per chunk is vLLM's streaming default).
* tokens_per_s: all tokens of succeeded requests / wall time of the whole run.
* per_user_tokens_per_s: mean over succeeded requests of the decode rate a user sees once text
  flows: (tokens − 1) / (time of the last text chunk − TTFT). The first token is excluded because
  its wait is TTFT (queueing and prefill); for a server that streams at r tokens/s this is r.
  Requests with fewer than 2 tokens are left out. `per_user_e2e_tokens_per_s` is the plain
  tokens / latency mean, which includes queueing.
* peak_concurrency_observed: the most requests that were generating at once, seen by the client
  (between their first text chunk and the end of their stream).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

import httpx

from llm_supervisor.clock import Clock, SystemClock, first_of
from llm_supervisor.errors import RuntimeFailure
from llm_supervisor.config.profile import client_url
from llm_supervisor.config.settings import Settings
from llm_supervisor.vllm.metrics import EngineMetrics, engine_metrics, finite_float

if TYPE_CHECKING:
    from rich.console import Group

DEFAULT_ENGINE_URL = "http://127.0.0.1:8000"
DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
METRICS_INTERVAL_S = 0.25


class EndpointUnreachable(RuntimeFailure):
    """The OpenAI-compatible endpoint did not answer (refused, timed out, or refused our key)."""


# ---------------------------------------------------------------- pure helpers


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100) with linear interpolation between closest ranks
    (numpy's default, "type 7"); None for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    frac = pos - lo
    return float(data[lo] + (data[hi] - data[lo]) * frac)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 plus mean and max, rounded for display; None when there are no values."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
    return {
        "p50": _r(percentile(values, 50)),
        "p95": _r(percentile(values, 95)),
        "p99": _r(percentile(values, 99)),
        "mean": _r(sum(values) / len(values)),
        "max": _r(max(values)),
    }


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def normalize_url(url: str) -> str:
    """`host:8000/v1/` → `http://host:8000` (the base the OpenAI paths hang off)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


def engine_url_from_status(status: dict[str, Any]) -> str | None:
    """The engine's base URL from a daemon snapshot: `engine_url`, else `--host/--port` in argv."""
    url = status.get("engine_url")
    if isinstance(url, str) and url:
        return normalize_url(url)
    argv = status.get("argv")
    if isinstance(argv, list) and "--port" in argv:
        try:
            port = int(argv[argv.index("--port") + 1])
        except (ValueError, IndexError):
            return None
        host = "127.0.0.1"
        if "--host" in argv and argv.index("--host") + 1 < len(argv):
            host = argv[argv.index("--host") + 1]
        return client_url(host, port)
    return None


def daemon_urls(status: dict[str, Any]) -> list[str]:
    """The addresses a daemon's snapshot names for its model, the one clients use first: `url`
    (the front door's, when it is on; a wildcard host reached on 127.0.0.1), then the engine's."""
    found = []
    public = status.get("url")
    if isinstance(public, str) and public:
        try:
            listens = httpx.URL(public)
            found.append(client_url(listens.host, listens.port or 80))
        except httpx.InvalidURL:
            pass
    engine = engine_url_from_status(status)
    if engine and engine not in found:
        found.append(engine)
    return found


def bench_target(status: dict[str, Any] | None, url: str | None) -> tuple[str, dict[str, Any] | None]:
    """Where a bench goes (`url`, else the address the daemon's clients use, else vLLM's default)
    and the daemon's snapshot when it describes that endpoint (its KV figures apply), else None."""
    known = daemon_urls(status) if status else []
    chosen = normalize_url(url) if url else (known[0] if known else DEFAULT_ENGINE_URL)
    return chosen, status if chosen in known else None


# ---------------------------------------------------------------- the link to the endpoint


@dataclass(frozen=True)
class Link:
    """How a bench reaches the endpoint and reads time: the network and the machine's clock, or
    (in tests) an engine in the same process behind an httpx transport and a virtual clock, so
    what a bench measures is exact however busy the machine is."""

    clock: Clock = field(default_factory=SystemClock)
    transport: httpx.AsyncBaseTransport | None = None

    def client(self, api_key: str | None, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=_headers(api_key), transport=self.transport, **kwargs)


# ---------------------------------------------------------------- one request


@dataclass
class RequestResult:
    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    tokens: int = 0
    chunks: int = 0
    last_token_s: float | None = None  # since the request was sent

    @property
    def decode_rate(self) -> float | None:
        if self.ttft_s is None or self.last_token_s is None or self.tokens < 2:
            return None
        span = self.last_token_s - self.ttft_s
        return (self.tokens - 1) / span if span > 0 else None


@dataclass
class _Live:
    """Counters shared by the users of one run (one event loop, so no locks)."""

    streaming: int = 0
    peak_streaming: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    done: int = 0
    tokens: int = 0
    running_peak: float | None = None
    waiting_peak: float | None = None
    kv_usage_peak: float | None = None
    preemptions: tuple[float, float] | None = None  # first and last /metrics reading
    metrics: EngineMetrics | None = None
    results: list[RequestResult] = field(default_factory=list)


def _text_of(chunk: dict[str, Any]) -> str:
    parts = []
    for choice in chunk.get("choices") or ():
        text = choice.get("text")  # /v1/completions
        if isinstance(text, str) and text:
            parts.append(text)
        delta = choice.get("delta") or {}
        for key in ("content", "reasoning_content", "reasoning"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                parts.append(value)
    return "".join(parts)


async def _one_request(link: Link, client: httpx.AsyncClient, url: str, body: dict[str, Any], live: _Live,
                       path: str = "/v1/chat/completions") -> RequestResult:
    """Send one streaming chat (or completions) request and time it; every failure becomes an
    error kind."""
    start = link.clock.monotonic()
    res = RequestResult(ok=False)
    started_streaming = False
    done_marker = False
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", url + path, json=body) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                res.error = f"http_{resp.status_code}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done_marker = True
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    res.error = "bad_chunk"
                    return res
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    res.error = "stream_error"
                    return res
                # A token shows as text, or (for tokens that decode to nothing yet, e.g. a random-
                # weight model's) as a rise in vLLM's per-chunk usage (continuous_usage_stats).
                usage = chunk.get("usage")
                counted = usage.get("completion_tokens") if isinstance(usage, dict) else None
                grew = isinstance(counted, int) and counted > (usage_tokens or 0) and bool(chunk.get("choices"))
                if _text_of(chunk) or grew:
                    now = link.clock.monotonic() - start
                    res.chunks += 1
                    res.last_token_s = now
                    if res.ttft_s is None:
                        res.ttft_s = now
                        started_streaming = True
                        live.streaming += 1
                        live.peak_streaming = max(live.peak_streaming, live.streaming)
                if isinstance(counted, int):
                    usage_tokens = counted
    except httpx.TimeoutException:
        res.error = "timeout"
        return res
    except httpx.ConnectError:
        res.error = "connect_error"
        return res
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        res.error = "stream_broken"
        return res
    except httpx.HTTPError as exc:
        res.error = "http_error_" + type(exc).__name__
        return res
    finally:
        if started_streaming:
            live.streaming -= 1
    if not done_marker:
        res.error = "stream_broken"
        return res
    res.latency_s = link.clock.monotonic() - start
    res.tokens = usage_tokens if usage_tokens is not None else res.chunks
    res.ok = True
    return res


# ---------------------------------------------------------------- the run


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _daemon_status(settings: Settings) -> dict[str, Any] | None:
    """The daemon's /status, or None when no daemon answers (bench works without one)."""
    try:
        resp = httpx.get(settings.url + "/status", timeout=3.0)
        if resp.status_code == 200:
            data = resp.json()
            return data if isinstance(data, dict) else None
    except (httpx.HTTPError, ValueError):
        return None
    return None


async def _probe(link: Link, url: str, api_key: str | None, model: str | None) -> str:
    """Check the endpoint answers and pick the model: the first id of GET /v1/models."""
    try:
        async with link.client(api_key, timeout=10.0) as client:
            resp = await client.get(url + "/v1/models")
    except httpx.HTTPError as exc:
        raise EndpointUnreachable(
            f"cannot reach {url}: {type(exc).__name__} ({exc}); is the engine ready? (pass --url)"
        ) from None
    if resp.status_code in (401, 403):
        raise EndpointUnreachable(f"{url} refused the request (HTTP {resp.status_code}): pass --api-key or set OPENAI_API_KEY")
    if model:
        return model
    if resp.status_code != 200:
        raise EndpointUnreachable(f"{url}/v1/models answered HTTP {resp.status_code}; pass --model to name the served model")
    try:
        ids = [m["id"] for m in resp.json().get("data", []) if isinstance(m, dict) and m.get("id")]
    except (ValueError, AttributeError, TypeError):
        ids = []
    if not ids:
        raise EndpointUnreachable(f"{url}/v1/models lists no model; pass --model")
    return str(ids[0])


async def _poll_metrics(link: Link, client: httpx.AsyncClient, url: str, live: _Live, stop: asyncio.Event) -> None:
    """Sample the engine's /metrics until the run ends; stop quietly if it has none."""
    while not stop.is_set():
        try:
            resp = await client.get(url + "/metrics", timeout=2.0)
        except httpx.HTTPError:
            resp = None
        if resp is None or resp.status_code != 200:
            if live.metrics is None:
                return  # no metrics endpoint: nothing to sample
        else:
            m = engine_metrics(resp.text)
            if live.metrics is None or m.max_concurrency is not None:
                live.metrics = m
            if m.running is not None:
                live.running_peak = max(live.running_peak or 0.0, m.running)
            if m.waiting is not None:
                live.waiting_peak = max(live.waiting_peak or 0.0, m.waiting)
            if m.kv_cache_usage is not None:
                live.kv_usage_peak = max(live.kv_usage_peak or 0.0, m.kv_cache_usage)
            if m.preemptions_total is not None:
                first = live.preemptions[0] if live.preemptions else m.preemptions_total
                live.preemptions = (first, m.preemptions_total)
        await first_of(link.clock, stop.wait(), METRICS_INTERVAL_S)


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: the endpoint's path and the JSON body."""

    path: str
    body: dict[str, Any]


class RequestSource(Protocol):
    """What to send instead of one prompt (bench.capacity.Workload: prompts of a length, a file of
    real requests): an endless stream of requests for the served model, and what they are."""

    def stream(self, model: str) -> Iterator[RequestSpec]: ...

    def to_json(self) -> dict[str, Any]: ...


async def _run(
    link: Link, url: str, model: str, users: int, requests: int, max_tokens: int, prompt: str,
    api_key: str | None, timeout_s: float, ignore_eos: bool, on_done: Callable[[_Live], None] | None,
    specs: Iterator[RequestSpec] | None = None,
) -> tuple[_Live, float]:
    live = _Live()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": 0.0,
    }
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: every request generates exactly max_tokens
    one_prompt = RequestSpec("/v1/chat/completions", body)
    limits = httpx.Limits(max_connections=users + 4, max_keepalive_connections=users + 4)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    remaining = requests

    async with link.client(api_key, limits=limits, timeout=timeout) as client, \
            link.client(api_key, timeout=5.0) as mclient:
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll_metrics(link, mclient, url, live, stop))

        async def user() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                live.in_flight += 1
                live.peak_in_flight = max(live.peak_in_flight, live.in_flight)
                spec = next(specs) if specs is not None else one_prompt
                try:
                    res = await _one_request(link, client, url, spec.body, live, spec.path)
                finally:
                    live.in_flight -= 1
                live.results.append(res)
                live.done += 1
                live.tokens += res.tokens
                if on_done:
                    on_done(live)

        t0 = link.clock.monotonic()
        try:
            await asyncio.gather(*(user() for _ in range(min(users, requests))))
        finally:
            duration = link.clock.monotonic() - t0
            stop.set()
            await poller
    return live, duration


def run_bench(
    settings: Settings,
    *,
    url: str | None = None,
    users: int = 8,
    requests: int | None = None,
    max_tokens: int = 128,
    prompt: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    timeout_s: float = 600.0,
    ignore_eos: bool = True,
    workload: RequestSource | None = None,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Run the concurrency test and return the report (see the module docstring for terms).

    Without `url`, the daemon at `settings.url` is asked for its engine's URL and capacity;
    with no daemon answering, http://127.0.0.1:8000 is used. `ignore_eos` (a vLLM extension
    that other servers ignore) makes every request generate exactly `max_tokens`, so runs compare.
    `timeout_s` bounds the wait for any one chunk, queueing included. `workload`: the requests to
    send instead of `prompt` × `max_tokens`, named in the report. `clock` and `transport` replace
    the machine's clock and the network (tests).
    """
    link = Link(clock or SystemClock(), transport)
    if users < 1:
        raise ValueError("users must be at least 1")
    requests = requests if requests is not None else 4 * users
    url, status = bench_target(_daemon_status(settings), url)
    model = asyncio.run(_probe(link, url, api_key, model))
    prompt = prompt or DEFAULT_PROMPT

    on_done = None
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("bench [bold]{task.fields[users]}[/bold] users"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task("bench", total=requests, users=users, rate="")
        t_start = link.clock.monotonic()

        def on_done(live: _Live) -> None:
            elapsed = max(link.clock.monotonic() - t_start, 1e-9)
            failed = sum(1 for r in live.results if not r.ok)
            rate = f"{live.tokens / elapsed:,.0f} tok/s" + (f", {failed} failed" if failed else "")
            bar.update(task, completed=live.done, rate=rate)

    try:
        if bar:
            bar.start()
        live, duration = asyncio.run(
            _run(link, url, model, users, requests, max_tokens, prompt, api_key, timeout_s, ignore_eos, on_done,
                 workload.stream(model) if workload is not None else None)
        )
    finally:
        if bar:
            bar.stop()
    report = _report(url, model, users, requests, max_tokens, live, duration, status)
    if workload is not None:
        report["workload"] = workload.to_json()
    return report


def _report(
    url: str, model: str, users: int, requests: int, max_tokens: int, live: _Live,
    duration: float, status: dict[str, Any] | None,
) -> dict[str, Any]:
    ok = [r for r in live.results if r.ok]
    errors: dict[str, int] = {}
    for r in live.results:
        if not r.ok:
            key = r.error or "unknown"
            errors[key] = errors.get(key, 0) + 1
    total_tokens = sum(r.tokens for r in ok)
    decode = [d for d in (r.decode_rate for r in ok) if d is not None]
    e2e = [r.tokens / r.latency_s for r in ok if r.latency_s]

    engine_max, engine_ctx, source = None, None, None
    if status and finite_float(status.get("max_concurrency")):
        engine_max = finite_float(status.get("max_concurrency"))
        ctx = status.get("max_concurrency_context") or status.get("max_model_len")
        engine_ctx = int(ctx) if isinstance(ctx, (int, float)) else None
        source = "daemon"
    elif live.metrics and live.metrics.max_concurrency:
        engine_max, engine_ctx, source = live.metrics.max_concurrency, live.metrics.context, "metrics"

    report: dict[str, Any] = {
        "url": url,
        "model": model,
        "users": users,
        "requests": requests,
        "max_tokens": max_tokens,
        "succeeded": len(ok),
        "failed": len(live.results) - len(ok),
        "success_rate": round(len(ok) / len(live.results), 4) if live.results else 0.0,
        "errors": dict(sorted(errors.items())),
        "duration_s": round(duration, 3),
        "total_tokens": total_tokens,
        "tokens_per_s": round(total_tokens / duration, 2) if duration > 0 else 0.0,
        "per_user_tokens_per_s": _r(sum(decode) / len(decode), 2) if decode else None,
        "per_user_e2e_tokens_per_s": _r(sum(e2e) / len(e2e), 2) if e2e else None,
        "ttft_s": summarize([r.ttft_s for r in ok if r.ttft_s is not None]),
        "latency_s": summarize([r.latency_s for r in ok if r.latency_s is not None]),
        "peak_concurrency_observed": live.peak_streaming,
        "peak_in_flight": live.peak_in_flight,
        "engine_running_peak": None if live.running_peak is None else int(live.running_peak),
        "engine_waiting_peak": None if live.waiting_peak is None else int(live.waiting_peak),
        "engine_max_concurrency": _r(engine_max, 2),
        "engine_max_concurrency_context": engine_ctx,
        "engine_max_concurrency_source": source,
        # the daemon's word: the bundled simulator, not vLLM on a GPU (None: no daemon asked)
        "simulated": bool(status.get("simulated")) if status else None,
    }
    report["comparison"] = compare_sentence(report)
    return report


def errors_text(errors: dict[str, int]) -> str:
    """`http_500: 3, stream_broken: 1`: the failed requests by kind."""
    return ", ".join(f"{kind}: {count}" for kind, count in errors.items())


def all_failed(report: dict[str, Any]) -> str | None:
    """Why nothing was measured (the errors by kind) when requests were sent and none succeeded;
    None otherwise."""
    if report.get("requests") and report.get("succeeded") == 0:
        return errors_text(report.get("errors") or {}) or "no answer"
    return None


def compare_sentence(report: dict[str, Any]) -> str:
    """One or two sentences: how many ran at once, against what the KV cache promises."""
    if (errors := all_failed(report)) is not None:
        return f"No request succeeded ({errors}): nothing was measured."
    offered = min(report["users"], report["requests"])
    peak = report["peak_concurrency_observed"]
    running = report.get("engine_running_peak")
    waiting = report.get("engine_waiting_peak")
    text = f"Up to {peak} of {offered} concurrent requests were generating at once"
    if running is not None:
        text += f" (engine /metrics: {running} running"
        text += f", {waiting} waiting at peak)" if waiting is not None else ")"
    text += "."
    cap = report.get("engine_max_concurrency")
    if cap is None:
        return text + " The engine's KV-cache concurrency is unknown (no daemon status, no kv_cache_max_concurrency in /metrics)."
    ctx = report.get("engine_max_concurrency_context")
    at = f" of {ctx:,} tokens" if ctx else ""
    text += f" The engine's KV cache holds {cap:.2f} requests{at} at once"
    seen = running if running is not None else peak
    if seen < offered and (waiting or 0) > 0:
        if seen < math.floor(cap):
            text += (f"; {offered - seen} requests queued although the KV cache had room, so the engine's "
                     "max_num_seqs (or its token budget) capped concurrency, not the client.")
        else:
            text += f"; {offered - seen} requests queued for KV-cache space (or max_num_seqs), not for the client."
    elif offered > cap:
        text += (f"; all {offered} ran together because these requests are far shorter than the full context"
                 " (the figure assumes every request uses its whole context).")
    else:
        text += f"; {offered} users are within that limit."
    return text


# ---------------------------------------------------------------- rendering


def format_bench(report: dict[str, Any]) -> "Group":
    """The report as a rich table, with the comparison sentence under it."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def s(value: Any, unit: str = "", digits: int = 3) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.{digits}f}{unit}"
        return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"

    table = Table(title=f"bench {report['model']} at {report['url']}", show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    work = report.get("workload")
    if work is None:
        sent = f"{report['max_tokens']} tokens"
    elif work.get("source") == "synthetic":
        sent = f"{work['prompt_tokens']}-token prompts, {work['output_tokens']}-token replies"
    else:
        sent = f"{work['requests']:,} requests of {work['source']}"
    table.add_row("users / requests", f"{report['users']} / {report['requests']} × {sent}")
    rate = report["success_rate"] * 100
    table.add_row("succeeded", f"{report['succeeded']} ({rate:.1f}%)")
    if report["errors"]:
        table.add_row("errors", errors_text(report["errors"]), style="red")
    table.add_row("duration", s(report["duration_s"], " s", 2))
    table.add_row("tokens", s(report["total_tokens"]))
    table.add_row("throughput", s(report["tokens_per_s"], " tok/s", 1))
    table.add_row("per user (decode)", s(report["per_user_tokens_per_s"], " tok/s", 1))
    for name, key in (("TTFT", "ttft_s"), ("latency", "latency_s")):
        p = report[key]
        table.add_row(f"{name} p50 / p95 / p99", " / ".join(s(p[k], " s") for k in ("p50", "p95", "p99")))
    table.add_row("peak generating at once", s(report["peak_concurrency_observed"]))
    if report.get("engine_running_peak") is not None:
        table.add_row("engine running / waiting (peak)", f"{report['engine_running_peak']} / {s(report.get('engine_waiting_peak'))}")
    if report.get("engine_max_concurrency") is not None:
        ctx = report.get("engine_max_concurrency_context")
        table.add_row("engine max concurrency", f"{report['engine_max_concurrency']:.2f}×" + (f" at {ctx:,} tokens" if ctx else ""))
    parts: list[Any] = [table, Text(report["comparison"])]
    if report.get("simulated"):
        parts.insert(0, Text(" SIMULATED: the engine is the bundled vLLM simulator on a simulated GPU; these figures "
                             "say nothing about a real GPU ", style="bold black on yellow"))
        table.title = f"SIMULATED {table.title}"
    return Group(*parts)

