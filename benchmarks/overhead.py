"""The daemon's own cost: RSS and CPU while the engine is ready and idle, and log ingestion.

1. idle: `supervisor up --profile 4090d-qwen3-4b --simulate` until ready, then RSS and CPU% of
   the daemon process alone (not the guard, not the engine) over --idle-seconds.
2. parse: lines/s through llm_supervisor.vllm.logparse.LogParser (and FailureClassifier) on a chatty
   vLLM stream, in this process: the parser's own ceiling.
3. e2e: the daemon (`up --simulate`, through benchmarks/_engine_override.py) runs
   benchmarks/chatty_engine.py as its engine,
   which writes --lines lines as fast as the daemon drains its pipe, then the KV-cache facts.
   Rate = lines / the engine's own write time (a full pipe blocks the writer, so the writer
   finishes within one pipe buffer of the daemon); the daemon reporting the final facts
   proves it parsed to the end.

    python benchmarks/overhead.py [--idle-seconds 20] [--lines 500000] [--parse-lines 200000]

Prints one JSON line. CONTRACT targets: RSS ≤ 80 MB, idle CPU ≤ 1%, ingestion ≥ 100,000 lines/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chatter import chatty_stream  # noqa: E402
from _common import REPO, Daemon, daemon_available, emit, log, machine_info, tmpdir  # noqa: E402

import psutil  # noqa: E402

TARGET_RSS_MB = 80.0
TARGET_IDLE_CPU_PCT = 1.0
TARGET_LINES_PER_S = 100_000
CHATTY_KV_TOKENS = 123_456


def measure_idle(seconds: float) -> dict:
    with tmpdir("overhead-idle") as tmp, Daemon(tmp) as daemon:
        log("overhead: waiting for the simulated engine to be ready")
        daemon.wait_state(("ready",), timeout=180)
        time.sleep(3.0)  # let the ready check and first metric scrapes settle
        proc = psutil.Process(daemon.pid)
        children = proc.children(recursive=True)
        log(f"overhead: idle for {seconds:g} s (daemon pid {daemon.pid}, {len(children)} child processes)")
        rss: list[int] = []
        t0, c0 = time.monotonic(), proc.cpu_times()
        end = t0 + seconds
        while time.monotonic() < end:
            rss.append(proc.memory_info().rss)
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        t1, c1 = time.monotonic(), proc.cpu_times()
        full = proc.memory_full_info()
        snap = daemon.status() or {}
        cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
        child_rss = 0
        for child in children:
            try:
                child_rss += child.memory_info().rss
            except psutil.Error:
                pass
        return {
            "state": snap.get("state"),
            "seconds": round(t1 - t0, 1),
            "rss_mb": round(max(rss) / 1e6, 1),
            "rss_mib": round(max(rss) / 2**20, 1),
            "uss_mib": round(full.uss / 2**20, 1),
            "threads": proc.num_threads(),
            "cpu_pct": round(100.0 * cpu_s / (t1 - t0), 3),
            "cpu_ms_per_s": round(1000.0 * cpu_s / (t1 - t0), 2),
            "children_rss_mib": round(child_rss / 2**20, 1),
        }


def measure_parse(count: int, repeats: int = 5) -> dict:
    from llm_supervisor.vllm.logparse import LogParser

    lines = chatty_stream(count)
    mb = sum(len(x) + 1 for x in lines) / 1e6
    out: dict = {"lines": len(lines), "mb": round(mb, 1)}

    def run(make) -> list[float]:
        rates = []
        for _ in range(repeats):
            feeders = make()
            t0 = time.perf_counter()
            for line in lines:
                for feed in feeders:
                    feed(line)
            rates.append(len(lines) / (time.perf_counter() - t0))
        return rates

    rates = run(lambda: [LogParser().feed])
    out["logparse_lines_per_s"] = round(statistics.median(rates))
    out["logparse_best_lines_per_s"] = round(max(rates))
    try:
        from llm_supervisor.vllm.failures import FailureClassifier

        # as the daemon wires them: the parser forwards each split line to the classifier
        rates = run(lambda: [LogParser(sink=FailureClassifier()).feed])
        out["logparse_and_failures_lines_per_s"] = round(statistics.median(rates))
    except ImportError as exc:
        out["failures_error"] = str(exc)
    return out


def measure_e2e(count: int) -> dict:
    with tmpdir("overhead-e2e") as tmp:
        stamp = tmp / "stamp.json"
        env = {
            "BENCH_ENGINE_COMMAND": f"{sys.executable} {REPO / 'benchmarks' / 'chatty_engine.py'}",
            "BENCH_CHATTY_LINES": str(count),
            "BENCH_CHATTY_STAMP": str(stamp),
        }
        # the real daemon on the simulated GPU, launching the chatty engine instead of the simulator
        daemon = Daemon(tmp, env=env, sets=["vllm.max_model_len=10000"],
                        entry=[sys.executable, str(REPO / "benchmarks" / "_engine_override.py")])
        samples: list[tuple[float, float, int]] = []  # (wall, daemon cpu s, rss)
        stop = threading.Event()

        def sample() -> None:
            proc = psutil.Process(daemon.pid)
            while not stop.is_set():
                try:
                    c = proc.cpu_times()
                    samples.append((time.time(), c.user + c.system, proc.memory_info().rss))
                except psutil.Error:
                    return
                time.sleep(0.05)

        with daemon:
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            log(f"overhead: daemon ingesting {count:,} lines from a chatty engine")
            snap = daemon.wait_state(("ready",), timeout=300)
            stop.set()
            sampler.join()
            t = json.loads(stamp.read_text())
            wall = t["end"] - t["start"]
            inside = [s for s in samples if t["start"] <= s[0] <= t["end"]]
            cpu = (inside[-1][1] - inside[0][1]) if len(inside) >= 2 else None
            span = (inside[-1][0] - inside[0][0]) if len(inside) >= 2 else None
            return {
                "lines": count,
                "seconds": round(wall, 3),
                "lines_per_s": round(count / wall),
                "daemon_cpu_pct_while_ingesting": round(100 * cpu / span, 1) if cpu is not None and span else None,
                "daemon_cpu_us_per_line": round(1e6 * cpu / count * (wall / span), 2) if cpu and span else None,
                "daemon_peak_rss_mib": round(max(s[2] for s in samples) / 2**20, 1) if samples else None,
                # facts is what the daemon's LogParser read (the engine's /metrics says it too)
                "final_fact_parsed": (snap.get("facts") or {}).get("kv_cache_tokens", snap.get("kv_cache_tokens"))
                == CHATTY_KV_TOKENS,
                "kv_cache_tokens_reported": (snap.get("facts") or {}).get("kv_cache_tokens"),
            }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--lines", type=int, default=500_000, help="lines through the daemon (e2e)")
    ap.add_argument("--parse-lines", type=int, default=200_000, help="lines through LogParser (in process)")
    ap.add_argument("--skip", action="append", default=[], choices=["idle", "parse", "e2e"])
    args = ap.parse_args()

    result: dict = {"benchmark": "overhead", "machine": machine_info(),
                    "targets": {"rss_mb": TARGET_RSS_MB, "idle_cpu_pct": TARGET_IDLE_CPU_PCT,
                                "lines_per_s": TARGET_LINES_PER_S}}
    missing = daemon_available()
    for name, fn, arg in (("parse", measure_parse, args.parse_lines), ("idle", measure_idle, args.idle_seconds),
                          ("e2e", measure_e2e, args.lines)):
        if name in args.skip:
            continue
        if name != "parse" and missing:
            result[name] = {"error": missing}
            continue
        try:
            result[name] = fn(arg)
        except Exception as exc:  # a benchmark reports what broke rather than dying silently
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    idle, parse, e2e = result.get("idle", {}), result.get("parse", {}), result.get("e2e", {})
    result["meets_target"] = {
        "rss": idle.get("rss_mb", 1e9) <= TARGET_RSS_MB if "rss_mb" in idle else None,
        "idle_cpu": idle.get("cpu_pct", 1e9) <= TARGET_IDLE_CPU_PCT if "cpu_pct" in idle else None,
        "parse": parse.get("logparse_lines_per_s", 0) >= TARGET_LINES_PER_S if "logparse_lines_per_s" in parse else None,
        "e2e": (e2e.get("lines_per_s", 0) >= TARGET_LINES_PER_S and e2e.get("final_fact_parsed"))
        if "lines_per_s" in e2e else None,
    }
    emit(result)


if __name__ == "__main__":
    main()
