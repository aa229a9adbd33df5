"""The model runner's overhead on a real GPU: what vLLM's profiling run takes beyond the weights
(peak activation and non-torch memory, from its own "Actual usage is …" line) on the V1 model
runner (the one the supervisor picks to offload weights on vLLM 0.22-0.27) against the default
V2 runner, beside the memory model's figures for the same arguments.

  v1-1024  Qwen3-32B shape, V1 runner (VLLM_USE_V2_MODEL_RUNNER=0), eager, max_num_seqs 1024
  v1-16    the same at max_num_seqs 16: the sampler warm-up's share goes
  v2-1024  the default V2 runner, eager, max_num_seqs 1024

Each is one `vllm serve` (dummy weights, util 0.9, max_model_len 4096), ended (its whole
session) once the memory line is printed or the start fails. Logs go to WORK; OUT receives
v1-runner.json and v1-runner-logs.tar.gz. The summary is printed last.

usage: python scripts/gpu_v1_runner.py [--simulate] [--out DIR] [--work DIR] [--models DIR]
                                       [--only v1-1024,v1-16,v2-1024] [--budget-s N]

Real run (GPU machine, after the shared recipe's device-install.sh): `. /tmp/vllm-env.sh;
PYTHONUNBUFFERED=1 python3 scripts/gpu_v1_runner.py --out $OUT`. --simulate runs the bundled
simulator (speaking vLLM 0.26.0) on a simulated H200 instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm_supervisor.host.modelfiles import bundled_config_path, load_shape  # noqa: E402
from llm_supervisor.planning.launch import free_loopback_port  # noqa: E402
from llm_supervisor.runtime.launcher import end_session  # noqa: E402
from llm_supervisor.vllm import memory  # noqa: E402
from llm_supervisor.vllm.logparse import LogParser  # noqa: E402

H200_MIB = 143771
DONE_MARKERS = ("Actual usage is", "Engine core initialization failed")
CONFIGS: dict[str, dict[str, Any]] = {
    "v1-1024": {"v1": True, "seqs": 1024},
    "v1-16": {"v1": True, "seqs": 16},
    "v2-1024": {"v1": False, "seqs": 1024},
}


def engine_command(simulate: bool) -> list[str]:
    if simulate:
        return [sys.executable, "-m", "llm_supervisor.simulator", "serve"]
    if shutil.which("vllm"):
        return ["vllm", "serve"]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]


def run_one(name: str, cfg: dict[str, Any], args: argparse.Namespace, env: dict[str, str], model: Path,
            port: int, deadline: float) -> dict[str, Any]:
    log_path = Path(args.work) / f"{name}.log"
    argv = [*engine_command(args.simulate), str(model), "--host", "127.0.0.1", "--port", str(port),
            "--gpu-memory-utilization", "0.9", "--max-model-len", "4096", "--max-num-seqs", str(cfg["seqs"]),
            "--load-format", "dummy", "--enforce-eager"]
    run_env = dict(env)
    if cfg["v1"]:
        run_env["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    else:
        run_env.pop("VLLM_USE_V2_MODEL_RUNNER", None)
    t0 = time.monotonic()
    parser = LogParser()
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=run_env, text=True,
                                start_new_session=True, bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                parser.feed(line.rstrip("\n"))
                if any(m in line for m in DONE_MARKERS) or time.monotonic() > deadline:
                    break
        finally:
            # the engine's whole session (API server, EngineCore): SIGTERM, 30 s, SIGKILL
            end_session(proc.pid, 30.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    f = parser.facts
    shape = load_shape(str(model))
    tokens, _ = memory.default_batch_limits(f.total_gpu_gib or H200_MIB / 1024, "NVIDIA H200", f.vllm_version)
    # eager mode: nothing compiles, the warm activation
    model_ov = memory.modelled_overhead(shape, 1, 1, tokens, cfg["seqs"], cold=False, v1_sampler=cfg["v1"])
    out: dict[str, Any] = {
        "config": name, "runner": "V1" if cfg["v1"] else "V2", "max_num_seqs": cfg["seqs"],
        "seconds": round(time.monotonic() - t0, 1), "vllm_version": f.vllm_version,
        "model_runner_line": f.model_runner, "weights_gib": f.model_weights_gib,
        "activation_gib": f.peak_activation_gib, "non_torch_gib": f.non_torch_gib,
        "available_kv_cache_gib": f.available_kv_cache_gib, "kv_cache_tokens": f.kv_cache_tokens,
        "model_activation_gib": round(model_ov.activation_gib, 3), "model_non_torch_gib": round(model_ov.non_torch_gib, 3),
    }
    if f.peak_activation_gib is not None:
        out["activation_error_gib"] = round(model_ov.activation_gib - f.peak_activation_gib, 3)
    if f.non_torch_gib is not None:
        out["non_torch_error_gib"] = round(model_ov.non_torch_gib - f.non_torch_gib, 3)
    out["ok"] = f.peak_activation_gib is not None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "out-v1-runner"))
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu-v1-runner-work"))
    ap.add_argument("--models", default="/tmp/models")
    ap.add_argument("--only", default=",".join(CONFIGS))
    ap.add_argument("--budget-s", type=float, default=300.0, help="start no configuration after this many seconds")
    args = ap.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    model = Path(args.models) / "qwen3-32b"
    if args.simulate:
        env.update({"LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H200", "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(H200_MIB),
                    "LLM_SUPERVISOR_SIM_GPU_DIR": str(work / "simgpu"), "LLM_SUPERVISOR_SIM_STARTUP_S": "1",
                    "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"})
        model = work / "models" / "qwen3-32b"
        model.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundled_config_path("Qwen/Qwen3-32B"), model / "config.json")
    start = time.monotonic()
    results = []
    for name in (n for n in args.only.split(",") if n):
        if time.monotonic() - start > args.budget_s:
            results.append({"config": name, "ok": False, "skipped": "time budget spent"})
            continue
        try:
            results.append(run_one(name, CONFIGS[name], args, env, model, free_loopback_port(), start + args.budget_s + 240))
        except Exception as exc:  # one configuration's failure must not lose the others'
            results.append({"config": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    (out / "v1-runner.json").write_text(json.dumps(results, indent=1))
    with tarfile.open(out / "v1-runner-logs.tar.gz", "w:gz") as tar:
        for p in sorted(work.glob("*.log")):
            tar.add(p, arcname=p.name)
    print("\n## V1 against V2 runner: profiling overhead (GiB), vLLM against the memory model")
    print("| config | runner | seqs | activation vLLM / model | non-torch vLLM / model | weights | s |")
    print("|---|---|---:|---|---|---:|---:|")
    for r in results:
        if "activation_gib" in r:
            print(f"| {r['config']} | {r['runner']} | {r['max_num_seqs']} | {r['activation_gib']} / {r['model_activation_gib']}"
                  f" | {r['non_torch_gib']} / {r['model_non_torch_gib']} | {r['weights_gib']} | {r['seconds']} |")
        else:
            print(f"| {r['config']} | – | – | {r.get('error') or r.get('skipped')} | | | |")
    print(json.dumps({r["config"]: r.get("ok") for r in results}))
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
