"""Where a small, fast model's time goes: the same load through the front door and straight to
the engine's private address, with the CPU of every process on the path, against real `vllm serve`
on one H200 (or, with --simulate, the bundled simulator).

A Qwen3-4B shape decodes a step in about 4 ms on an H200, so at tens of users the serving stack
(the client, the front door, vLLM's API server and its EngineCore's scheduler, all Python) moves
thousands of streamed chunks a second. `gpu_capacity.py` measured the 4B shape's total tokens/s
20–45 % under the speed model from 16 users on, with a time to first token growing with the users
although the engine was far from its batch limits: this script tells the parts apart.

For each number of users (default 8, 32, 64) and each path (`door`: the profile's address, the
front door; `engine`: vLLM's own loopback port), one closed-loop level as `bench --find-capacity`
runs it (512-token prompts of random ids, 128-token replies, `--rounds` requests per user measured
once all users are active), and, over the level, the CPU time of: this process (the client), the
daemon (the front door runs in its event loop), vLLM's API server and its EngineCore, as a share of
one core.

usage: python scripts/gpu_serving_overhead.py [--simulate] [--out DIR] [--work DIR] [--users 8,32,64]
                                              [--rounds N] [--limit S]

Real run (GPU machine, after the shared recipe's device-install.sh; needs /tmp/models/qwen3-4b):
`. /tmp/vllm-env.sh; PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1 python3 scripts/gpu_serving_overhead.py --out $OUT`.
OUT receives overhead.json and summary.md; the summary is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_capacity import (OUTPUT_TOKENS, PROMPT_TOKENS, Daemon, ScenarioTimeout, _alarm, build_ctx,  # noqa: E402
                          speed_models, versions, write_profile)

from llm_supervisor.bench.capacity import Workload, run_level  # noqa: E402
from llm_supervisor.vllm import speed  # noqa: E402

MODEL = "qwen3-4b"  # the folder under --models and the served name


def engine_processes(daemon_pid: int, api_server_pid: int | None) -> dict[str, psutil.Process]:
    """The daemon, vLLM's API server (the engine pid the daemon reports) and its EngineCore."""
    out: dict[str, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        out["daemon (front door)"] = psutil.Process(daemon_pid)
    with contextlib.suppress(psutil.Error):
        if api_server_pid:
            api = psutil.Process(api_server_pid)
            out["API server"] = api
            kids = api.children(recursive=True)
            core = [k for k in kids if "EngineCore" in _name(k)] or kids
            if core:
                out["EngineCore"] = core[0]
    out["client (bench)"] = psutil.Process()
    return out


def _name(p: psutil.Process) -> str:
    try:
        return p.name() + " " + " ".join(p.cmdline())
    except psutil.Error:
        return ""


def cpu_seconds(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def measure(url: str, model: str, users: int, rounds: int, procs: dict[str, psutil.Process],
            stagger_s: float) -> dict[str, Any]:
    before = {k: cpu_seconds(p) for k, p in procs.items()}
    t0 = time.perf_counter()
    specs = Workload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS).stream(model)
    level = asyncio.run(run_level(url, None, users, specs, rounds=rounds, stagger_s=stagger_s, timeout_s=120.0,
                                  limit_s=120.0))
    wall = time.perf_counter() - t0
    after = {k: cpu_seconds(p) for k, p in procs.items()}
    s = level.summary()
    cores = {k: round((after[k] - before[k]) / wall, 2) for k in procs
             if before[k] is not None and after[k] is not None}
    return {"users": users, "requests": s["requests"], "succeeded": s["succeeded"],
            "per_user_tokens_per_s": s["per_user_tokens_per_s"], "tokens_per_s": s["tokens_per_s"],
            "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p95_s": s["ttft_s"]["p95"], "tpot_p50_s": s["tpot_s"]["p50"],
            "engine_running_peak": s["engine_running_peak"], "engine_waiting_peak": s["engine_waiting_peak"],
            "wall_s": round(wall, 2), "cpu_cores": cores}


def run(ctx: Any, users: list[int], rounds: int, r: dict[str, Any]) -> None:
    profile = write_profile(ctx, "h200-qwen3-4b-overhead", MODEL,
                            {"gpu_memory_utilization": 0.9, "max_model_len": 8192}, {"min_max_model_len": 2048})
    d = Daemon(ctx, "overhead", profile)
    try:
        model, _plan = speed_models(d)
        d.start()
        st = d.wait_ready()
        assert d.proc is not None
        r.update({"attempt": st.get("attempt"), "time_to_ready_s": st.get("time_to_ready_s"),
                  "kv_cache_tokens": st.get("kv_cache_tokens"), "door_url": st.get("url"),
                  "engine_url": st.get("engine_url")})
        procs = engine_processes(d.proc.pid, st.get("pid"))
        r["processes"] = {k: p.pid for k, p in procs.items()}
        w = speed.Workload(PROMPT_TOKENS, OUTPUT_TOKENS)
        for u in users:
            for path, url in (("door", st["url"]), ("engine", st["engine_url"])):
                row = {"path": path, **measure(url, MODEL, u, rounds, procs, stagger_s=1.0)}
                if model is not None:
                    p = model.at(u, w)
                    row["model_per_user_tokens_per_s"] = round(p.per_user_tokens_per_s, 1)
                    row["model_tokens_per_s"] = round(p.tokens_per_s, 1)
                    row["model_ttft_s"] = round(p.ttft_s, 4)
                r["levels"].append(row)
                print(f"    {u:>3} users via {path:<6}: {row['tokens_per_s']} tok/s, {row['per_user_tokens_per_s']}"
                      f" each, TTFT p50 {row['ttft_p50_s']} s, CPU {row['cpu_cores']}", flush=True)
        r["ok"] = all(x["succeeded"] == x["requests"] for x in r["levels"])
    finally:
        d.stop()


def summary(r: dict[str, Any]) -> str:
    names = list((r.get("processes") or {}).keys())
    lines = [f"Qwen3-4B shape, whole H200: ready at attempt {r.get('attempt')} in {r.get('time_to_ready_s')} s,"
             f" {r.get('kv_cache_tokens')} KV tokens", "",
             "| users | path | total tok/s | per user tok/s | TTFT p50 / p95 | model total / per user / TTFT | "
             + " | ".join(f"{n} CPU" for n in names) + " |",
             "|---:|---|---:|---:|---|---|" + "---:|" * len(names)]
    for x in r.get("levels") or []:
        ttft = f"{(x['ttft_p50_s'] or 0) * 1000:.0f} / {(x['ttft_p95_s'] or 0) * 1000:.0f} ms"
        model = (f"{x.get('model_tokens_per_s')} / {x.get('model_per_user_tokens_per_s')} /"
                 f" {(x.get('model_ttft_s') or 0) * 1000:.0f} ms")
        lines.append(f"| {x['users']} | {x['path']} | {x['tokens_per_s']} | {x['per_user_tokens_per_s']} | {ttft} |"
                     f" {model} | " + " | ".join(str(x["cpu_cores"].get(n, "–")) for n in names) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--out", default="/tmp/gpu-overhead-out")
    ap.add_argument("--work", default="/tmp/gpu-overhead-work")
    ap.add_argument("--models", default="/tmp/models")
    ap.add_argument("--users", default="8,32,64")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--limit", type=int, default=540, help="hard limit in seconds")
    ap.set_defaults(host_ram_gib=0, max_users=0, search_seconds=0)  # build_ctx reads them; no search here
    args = ap.parse_args()
    ctx = build_ctx(args)
    r: dict[str, Any] = {"ok": False, "levels": [], "versions": versions(ctx), "notes": []}
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGTERM, _alarm)
    signal.alarm(args.limit)
    try:
        run(ctx, [int(u) for u in args.users.split(",")], args.rounds, r)
    except ScenarioTimeout:
        r["notes"].append("hard limit reached; the levels measured before it are kept")
    except Exception as exc:  # keep what was measured, say what broke
        r["notes"].append(f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        signal.alarm(0)
    (ctx.out / "overhead.json").write_text(json.dumps(r, indent=1))
    text = summary(r)
    (ctx.out / "summary.md").write_text(text + "\n")
    print("\n===== summary =====\n" + text + "\n" + json.dumps({"ok": r["ok"], "notes": r["notes"]}))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
