#!/usr/bin/env python3
"""The CUDA-graph capture arguments on real vLLM: what it refuses, what it captures from the
compilation config, and what the supervisor says about both before a launch.

    . /tmp/vllm-env.sh   # on the GPU machine, after .gpu/bin/device-install.sh
    python3 scripts/gpu_capture_args.py --out /tmp/gca --archive $OUT/capture.tar.gz
    python3 scripts/gpu_capture_args.py --simulate --out /tmp/gcasim   # the bundled simulator, no GPU

Scenarios (a 24 GB budget on whatever card is there, Qwen3-4B's shape, --load-format dummy):
  both     `--max-cudagraph-capture-size 1024` beside the compilation config's
           max_cudagraph_capture_size: vLLM's exit code, its error, how long it took, the
           supervisor's classification of the log, and `plan` refusing the same profile (exit 2)
  apart    `--cudagraph-capture-sizes 1 8 640` with `--max-cudagraph-capture-size 1024`: the same
  config   the compilation config's max_cudagraph_capture_size 1024 alone: ready, the sizes vLLM
           captured and their memory against the planner's, and `plan`'s advice for that profile
The summary is printed last and written to summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_validate import (add_archive_option, archive_if_asked, build_ctx, free_port, gpu_used_mib,  # noqa: E402
                          torch_total_gib)
from llm_supervisor.config.settings import Settings  # noqa: E402
from llm_supervisor.host.logfiles import parse_log_file  # noqa: E402
from llm_supervisor.planning.launch import engine_command  # noqa: E402
from llm_supervisor.vllm.failures import FailureClassifier  # noqa: E402

PROFILE = "4090d-qwen3-4b"
BUDGET_GB = 24.0
CONTEXT = 40960
CC = "--compilation-config"
SCENARIOS: dict[str, list[str]] = {
    "both": ["--max-cudagraph-capture-size", "1024", CC, '{"max_cudagraph_capture_size": 512}'],
    "apart": ["--cudagraph-capture-sizes", "1", "8", "640", "--max-cudagraph-capture-size", "1024"],
    "config": [CC, '{"max_cudagraph_capture_size": 1024}'],
}


def plan(ctx: Any, util: float, extra: list[str], out: Path) -> dict[str, Any]:
    """`supervisor plan` for this launch, as an operator runs it; its exit code, error lines and JSON."""
    argv = [sys.executable, "-m", "llm_supervisor", "plan", "--profile", PROFILE, "--model", ctx.model,
            "--ignore-hardware-mismatch", "--json", "--set", f"vllm.gpu_memory_utilization={util}",
            "--set", f"vllm.max_model_len={CONTEXT}", "--set", "vllm.load_format=dummy",
            "--set", "vllm.extra_args=" + json.dumps(extra)]
    if ctx.simulate:
        argv.append("--simulate")
    start = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env={**ctx.env, "LLM_SUPERVISOR_STATE_DIR": str(out)},
                       timeout=300)
    took = time.monotonic() - start
    (out / "plan.out").write_text(r.stdout + r.stderr)
    got: dict[str, Any] = {"rc": r.returncode, "seconds": round(took, 2),
                           "errors": [line for line in r.stderr.splitlines() if line.startswith("error:")]}
    if r.returncode == 0:
        data = json.loads(r.stdout)
        predicted = data.get("predicted") or {}
        got["predicted_kv_tokens"] = predicted.get("kv_cache_tokens")
        got["predicted_graph_gib"] = predicted.get("cuda_graph_gib")
        got["notes"] = [n for n in data.get("notes", []) if "beyond the CUDA graphs" in n]
    return got


def serve(ctx: Any, name: str, util: float, extra: list[str], want_ready: bool) -> dict[str, Any]:
    out = ctx.out / name
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = ctx.env.get("LLM_SUPERVISOR_ENGINE_COMMAND", Settings.model_fields["engine_command"].default)
    argv = [*engine_command(command, ctx.simulate), ctx.model, "--load-format", "dummy", "--host", "127.0.0.1",
            "--port", str(port), "--gpu-memory-utilization", f"{util:.4f}", "--max-model-len", str(CONTEXT), *extra]
    (out / "argv.json").write_text(json.dumps(argv))
    log = out / "engine.log"
    result: dict[str, Any] = {"scenario": name, "extra_args": extra, "gpu_used_mib_before": gpu_used_mib(ctx)}
    result["plan"] = plan(ctx, util, extra, out)
    start = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, env=ctx.env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = start + (420 if want_ready else 240)
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            if want_ready:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        ready = time.monotonic() - start
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(1)
        result["ready_s"] = round(ready, 1) if ready is not None else None
        if ready is not None:
            result["gpu_used_mib_ready"] = gpu_used_mib(ctx)
        if proc.poll() is not None:
            result["exit_s"] = round(time.monotonic() - start, 1)
        for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):   # staged, the whole group
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
        result["rc"] = proc.returncode
    text = log.read_text(errors="replace")
    classifier = FailureClassifier()
    facts = parse_log_file(log, sink=classifier).facts
    failure = classifier.classify(proc.returncode, ready is not None) if ready is None else None
    result["failure"] = {"kind": str(failure.kind), "message": failure.message} if failure else None
    result["engine_core_started"] = "EngineCore" in text
    sizes = facts.cuda_graph_sizes
    result["captured"] = {"count": len(sizes), "max": max(sizes)} if sizes else None
    result["cuda_graph_gib"] = facts.cuda_graph_gib
    result["kv_tokens"] = facts.kv_cache_tokens
    result["gpu_used_mib_after"] = gpu_used_mib(ctx)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate", action="store_true", help="the bundled simulator on a simulated H100")
    ap.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu-capture-args"))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--model", default="/tmp/models/qwen3-4b")
    ap.add_argument("--only", default=",".join(SCENARIOS))
    add_archive_option(ap)
    args = ap.parse_args()
    args.ignore_hardware_mismatch = True
    ctx = build_ctx(args)
    total = torch_total_gib(ctx.env, 79.65)
    util = round(BUDGET_GB * 1e9 / 2**30 / total, 2)
    results = []
    for name in args.only.split(","):
        print(f"--- {name}", flush=True)
        results.append(serve(ctx, name, util, SCENARIOS[name], want_ready=name == "config"))
    summary = {"gpu_total_gib": round(total, 2), "util": util, "simulated": ctx.simulate, "results": results}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=2))
    archive_if_asked(args.archive, [ctx.out])
    for r in results:
        p = r["plan"]
        line = (f"{r['scenario']:>6}: rc {r['rc']}, exit {r.get('exit_s')} s, ready {r['ready_s']} s, "
                f"engine core {'started' if r['engine_core_started'] else 'not started'}, "
                f"failure {r['failure']['kind'] if r['failure'] else None}; plan rc {p['rc']} in {p['seconds']} s")
        if r["captured"]:
            line += (f"; captured {r['captured']['count']} sizes to {r['captured']['max']}, graphs "
                     f"{r['cuda_graph_gib']} GiB (planned {p.get('predicted_graph_gib')}), KV {r['kv_tokens']} "
                     f"(planned {p.get('predicted_kv_tokens')})")
        print(line)
        for e in p["errors"]:
            print(f"        plan {e}")
        if r["failure"]:
            print(f"        vLLM {r['failure']['message'][:300]}")
        for n in p.get("notes", []):
            print(f"        note …{n[n.find('; ', 400):]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
