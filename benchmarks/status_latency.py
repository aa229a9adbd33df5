"""GET /status latency at a fixed open-loop rate while the (simulated) engine runs.

Open loop: request i is due at t0 + i/rate whatever happened to the others, and its latency
runs from that due time to the last byte of the answer. A slow answer therefore shows up in
the latency of the requests queued behind it (no coordinated omission).

    python benchmarks/status_latency.py [--rate 200] [--seconds 15]

Prints one JSON line. CONTRACT target: p99 ≤ 20 ms at 200 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Daemon, daemon_available, emit, log, machine_info, tmpdir  # noqa: E402

import httpx  # noqa: E402

from llm_supervisor.bench.run import percentile  # noqa: E402

TARGET_P99_MS = 20.0


async def open_loop(url: str, rate: float, seconds: float) -> dict:
    n = int(rate * seconds)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late_starts = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=5.0) as client:
        # warm the connection pool and the daemon's code paths
        for _ in range(20):
            await client.get(url + "/status")

        async def one(due: float) -> None:
            nonlocal late_starts
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late_starts += 1
            try:
                resp = await client.get(url + "/status")
                await resp.aread()
                if resp.status_code != 200:
                    errors[f"http_{resp.status_code}"] = errors.get(f"http_{resp.status_code}", 0) + 1
                    return
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - due)

        t0 = time.perf_counter() + 0.05
        tasks = [asyncio.create_task(one(t0 + i / rate)) for i in range(n)]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    return {
        "requests": n,
        "ok": len(latencies),
        "errors": errors,
        "achieved_rate": round(n / elapsed, 1),
        "late_client_starts": late_starts,
        "p50_ms": round(percentile(ms, 50) or 0, 2),
        "p95_ms": round(percentile(ms, 95) or 0, 2),
        "p99_ms": round(percentile(ms, 99) or 0, 2),
        "max_ms": round(max(ms), 2) if ms else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--url", help="measure an already running daemon instead of starting one")
    args = ap.parse_args()

    result = {"benchmark": "status_latency", "rate": args.rate, "seconds": args.seconds,
              "target_p99_ms": TARGET_P99_MS, "machine": machine_info()}
    if args.url:
        result.update(asyncio.run(open_loop(args.url.rstrip("/"), args.rate, args.seconds)))
    else:
        missing = daemon_available()
        if missing:
            emit({**result, "error": missing})
            return
        with tmpdir("status") as tmp, Daemon(tmp) as daemon:
            log("status_latency: waiting for the simulated engine to be ready")
            daemon.wait_state(("ready",), timeout=180)
            log(f"status_latency: {args.rate:g} req/s for {args.seconds:g} s")
            result.update(asyncio.run(open_loop(daemon.url, args.rate, args.seconds)))
            snap = daemon.status() or {}
            result["state_after"] = snap.get("state")
    result["meets_target"] = result.get("p99_ms", 1e9) <= TARGET_P99_MS and not result.get("errors")
    emit(result)


if __name__ == "__main__":
    main()
