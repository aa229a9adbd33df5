"""An open-loop HTTP load generator for the daemon's REST API (stdlib asyncio, raw HTTP/1.1 on
keep-alive connections, so the client costs little next to the server it measures).

Requests are scheduled at a fixed rate whatever the server does (no coordinated omission):
latency counts from the scheduled moment, so time spent queued because the server fell behind
shows up in the percentiles. Usable from a test (`run_load`) or alone:

    python tests/hardening_load.py http://127.0.0.1:8900 --rps 500 --seconds 20 [--token T] [--restart-every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    rps: float
    seconds: float
    sent: int = 0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    restarts: list[int] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)  # (t, value) from `sample`
    behind_max: int = 0

    def pct(self, path: str, q: float) -> float:
        values = sorted(self.latencies.get(path, []))
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> dict:
        out = {"rps": self.rps, "seconds": self.seconds, "sent": self.sent, "errors": self.errors[:10],
               "n_errors": len(self.errors), "restarts": self.restarts, "behind_max": self.behind_max}
        for path, values in self.latencies.items():
            out[path] = {"n": len(values), "p50_ms": round(self.pct(path, 0.5) * 1000, 2),
                         "p99_ms": round(self.pct(path, 0.99) * 1000, 2),
                         "max_ms": round(max(values) * 1000, 2), "status": self.statuses.get(path, {})}
        return out


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, method: str,
                   path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write((head + "\r\n").encode())
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size + 2)
        return status, body
    return status, await reader.readexactly(length)


async def _load(url: str, rps: float, seconds: float, mix: list[tuple[float, str]], token: str | None,
                restart_every: float | None, connections: int,
                sample: Callable[[], float] | None, on_tick: Callable[[float], None] | None) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result = LoadResult(rps, seconds)
    queue: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
    rnd = random.Random(1)
    paths, weights = [p for _, p in mix], [w for w, _ in mix]
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                due, path = await queue.get()
                try:
                    status, _ = await asyncio.wait_for(_request(reader, writer, host, "GET", path, {}), 10)
                except (OSError, ConnectionError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                    result.errors.append(f"{path}: {exc.__class__.__name__}: {exc}")
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                finally:
                    queue.task_done()
                result.latencies.setdefault(path, []).append(time.monotonic() - due)
                codes = result.statuses.setdefault(path, {})
                codes[status] = codes.get(status, 0) + 1
                if status >= 500 and not (path == "/readyz" and status == 503):
                    result.errors.append(f"{path}: HTTP {status}")
        finally:
            writer.close()

    async def restarter() -> None:
        assert restart_every
        while True:
            await asyncio.sleep(restart_every)
            reader, writer = await asyncio.open_connection(host, port)
            try:
                status, body = await _request(reader, writer, host, "POST", "/restart", auth)
            finally:
                writer.close()
            result.restarts.append(status)
            if status != 202:
                result.errors.append(f"POST /restart: HTTP {status} {body[:200]!r}")

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    extra = [asyncio.create_task(restarter())] if restart_every else []
    start = time.monotonic()
    interval = 1.0 / rps
    n = 0
    next_sample = start
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due_count = int((now - start) / interval) + 1
        while n < due_count:
            queue.put_nowait((start + n * interval, rnd.choices(paths, weights)[0]))
            n += 1
        result.behind_max = max(result.behind_max, queue.qsize())
        if sample is not None and now >= next_sample:
            result.samples.append((now - start, sample()))
            next_sample = now + 1.0
        if on_tick is not None:
            on_tick(now - start)
        await asyncio.sleep(min(interval, 0.002))
    result.sent = n
    try:
        await asyncio.wait_for(queue.join(), 30)
    except asyncio.TimeoutError:
        result.errors.append(f"{queue.qsize()} requests still queued 30 s after the end")
    for task in workers + extra:
        task.cancel()
    await asyncio.gather(*workers, *extra, return_exceptions=True)
    if sample is not None:
        result.samples.append((time.monotonic() - start, sample()))
    return result


def run_load(url: str, *, rps: float = 500, seconds: float = 20, token: str | None = None,
             restart_every: float | None = None, connections: int = 16,
             mix: list[tuple[float, str]] | None = None, sample: Callable[[], float] | None = None) -> LoadResult:
    mix = mix or [(0.9, "/status"), (0.04, "/metrics"), (0.03, "/readyz"), (0.03, "/healthz")]
    return asyncio.run(_load(url, rps, seconds, mix, token, restart_every, connections, sample, None))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rps", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--token")
    parser.add_argument("--restart-every", type=float)
    args = parser.parse_args()
    result = run_load(args.url, rps=args.rps, seconds=args.seconds, token=args.token, restart_every=args.restart_every)
    print(json.dumps(result.summary(), indent=1))


if __name__ == "__main__":
    main()
