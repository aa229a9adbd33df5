"""Streaming chat clients for the benchmarks: N clients, each sending one streamed request after
another, and every request's fate (reusable by any benchmark that needs client-side figures).

Each request is counted as ok only when the stream ends with `data: [DONE]` and carried no error
event; everything else is a failure of a named kind:
  refused        the connection was refused (nothing listened)
  connect        another connection failure (reset, timeout while connecting)
  http_<status>  an answer other than 200 (503, 429, 500, …)
  error_event    a `data: {"error": …}` event in the stream
  cut            the stream ended without [DONE] (connection closed mid-stream)
  timeout        no byte for `read_timeout_s`

    results = asyncio.run(run_clients("http://127.0.0.1:8000", clients=64, duration_s=20))
    print(summarize(results, window_s=20))
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

TOKEN_MARK = b'"delta":{"content":'  # a chunk carrying generated text (the role chunk has none)
ERROR_MARK = b'data: {"error"'
DONE_MARK = b"data: [DONE]"


@dataclass
class Result:
    client: int
    start: float             # time.monotonic() when the request was sent
    end: float
    ok: bool
    failure: str | None      # one of the kinds above, None when ok
    status: int | None
    ttft_s: float | None     # to the first generated text
    tokens: int
    first_token_at: float | None = None


def _body(model: str, max_tokens: int) -> bytes:
    return json.dumps({"model": model, "stream": True, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "Say something about load balancers."}]}).encode()


async def one_request(client: httpx.AsyncClient, url: str, body: bytes, who: int) -> Result:
    start = time.monotonic()
    tokens = 0
    first: float | None = None
    status: int | None = None
    tail = b""
    try:
        async with client.stream("POST", url + "/v1/chat/completions", content=body,
                                 headers={"content-type": "application/json"}) as resp:
            status = resp.status_code
            if status != 200:
                await resp.aread()
                return Result(who, start, time.monotonic(), False, f"http_{status}", status, None, 0)
            error = False
            async for chunk in resp.aiter_raw():
                n = chunk.count(TOKEN_MARK)
                if n:
                    tokens += n
                    if first is None:
                        first = time.monotonic()
                if ERROR_MARK in chunk:
                    error = True
                tail = (tail + chunk)[-64:]
        end = time.monotonic()
        if error:
            return Result(who, start, end, False, "error_event", status, _ttft(first, start), tokens, first)
        if DONE_MARK not in tail:
            return Result(who, start, end, False, "cut", status, _ttft(first, start), tokens, first)
        return Result(who, start, end, True, None, status, _ttft(first, start), tokens, first)
    except httpx.ConnectError as exc:
        return Result(who, start, time.monotonic(), False, _connect_kind(exc), status, None, tokens, first)
    except httpx.TimeoutException:
        return Result(who, start, time.monotonic(), False, "timeout", status, _ttft(first, start), tokens, first)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        return Result(who, start, time.monotonic(), False, "cut", status, _ttft(first, start), tokens, first)


def _connect_kind(exc: BaseException) -> str:
    """"refused" when nothing listened (httpx words it "All connection attempts failed")."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen).lower()
        if isinstance(seen, ConnectionRefusedError) or "refused" in text or "all connection attempts failed" in text:
            return "refused"
        seen = seen.__cause__ or seen.__context__
    return "connect"


def _ttft(first: float | None, start: float) -> float | None:
    return None if first is None else first - start


async def run_clients(url: str, *, clients: int, duration_s: float, model: str = "qwen3-4b",
                      max_tokens: int = 32, read_timeout_s: float = 300.0, pause_after_failure_s: float = 0.05,
                      stop: asyncio.Event | None = None) -> list[Result]:
    """`clients` loops, each sending requests back to back until `duration_s` passed (or `stop`).
    A request under way when time is up is finished and kept."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(read_timeout_s, connect=5.0)
    body = _body(model, max_tokens)
    results: list[Result] = []
    deadline = time.monotonic() + duration_s
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        async def loop(who: int) -> None:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                result = await one_request(client, url, body, who)
                results.append(result)
                if not result.ok:
                    await asyncio.sleep(pause_after_failure_s)  # a failing server is not hammered in a spin
        await asyncio.gather(*(loop(i) for i in range(clients)))
    return results


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarize(results: list[Result]) -> dict[str, Any]:
    """Figures over all results. tokens/s is every token received over the span from the first
    request sent to the last one finished (the clients send back to back, so the engine is busy
    the whole span)."""
    ok = [r for r in results if r.ok]
    failures: dict[str, int] = {}
    for r in results:
        if not r.ok:
            failures[r.failure or "?"] = failures.get(r.failure or "?", 0) + 1
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    out: dict[str, Any] = {
        "requests": len(results),
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "failures": failures,
        "success_rate": round(len(ok) / len(results), 4) if results else None,
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p95_ms": _ms(percentile(ttfts, 95)),
        "tokens": sum(r.tokens for r in results),
    }
    if results:
        span = max(r.end for r in results) - min(r.start for r in results)
        out["span_s"] = round(span, 3)
        out["tokens_per_s"] = round(out["tokens"] / max(1e-9, span), 1)
    if ok:
        out["mean_latency_s"] = round(statistics.fmean(r.end - r.start for r in ok), 3)
    return out


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)
