"""GPU capacity validation: the speed model against `bench --find-capacity`, and the target fit,
against real `vllm serve` on one H200, every scenario in one run (or, with --simulate, against the
bundled simulator on a simulated H200, to check this script without spending GPU time).

  4b   Qwen3-4B shape on the whole H200 (util 0.9): `bench --find-capacity` at two SLOs; the speed
       model's predictions (uncalibrated, and calibrated from the other SLO's levels) beside the
       measurements at 1, 8, 32 and the found number of users
  32b  Qwen3-32B shape with target {min_concurrency: 8, context: 32768}, util 0.9, bound 0.95:
       ready on the first launch at the planned utilization with the target met; then as 4b
  offload  Qwen3-32B shape (61 GiB of bf16 weights) at a 24 GB budget (21.38 GiB), CPU offload
       allowed up to 48 GiB: the supervisor plans the offload; ready on the first launch;
       predicted against measured KV tokens and decode tokens/s (a short bench); then a short
       `bench --find-capacity` (1-2 users, 8-token replies), after which `plan` (from the ready
       start's last-good arguments) gives the rate measured on this host within 15 %
  steps  Qwen3-4B shape as 4b: fixed loads of 1 to 64 users (`bench --users`) for three workloads
       (the searches' 512-token prompts and 128-token replies; 16-token prompts, so that no step
       carries a long prompt; replies of 96-160 tokens, so that users do not fall into step), with
       vLLM's own counters per level (engine steps, tokens per step, prefill and decode time per
       request) beside the speed model's decode step, prompt step and TPOT
  mixed  as steps, with vLLM logging every engine step (--enable-logging-iteration-details): users
       out of step at prompt lengths from 16 to 2,048 tokens
  mixed1024  four of mixed's levels with `--max-cudagraph-capture-size 1024`
  plain  the plan's own load (1,024-token prompts, replies of 192-320, users out of step) at 8 and
       32 users and mixed's 512-token level at 8, CUDA graphs as vLLM captures them: what `plan` says
       about prompt steps beyond the graphs, the graphs' memory, TPOT against the model
  advised  the same loads with the `--max-cudagraph-capture-size` that `plan` advises for them

Each daemon lifetime has a hard limit (SIGALRM) and ends every process it started, also when the
script itself gets SIGTERM. Logs and state
go to WORK (default $TMPDIR/gpu-capacity-work); OUT receives only a few files (the device
machine returns at most 8): versions.json, capacity-<scenario>.json per scenario, summary.json
and summary.md. The summary (Markdown, then one JSON line) is printed last.

usage: python scripts/gpu_capacity.py [--simulate] [--out DIR] [--work DIR] [--models DIR]
                                      [--only 4b,32b,offload,steps,mixed,mixed1024,plain,advised] [--max-users N] [--limit S]
                                      [--search-seconds S] [--archive FILE.tar.gz]

Real run (GPU machine, after the shared recipe's device-install.sh and make-model.py, which write
/tmp/models/qwen3-4b and /tmp/models/qwen3-32b): `. /tmp/vllm-env.sh; PYTHONUNBUFFERED=1
python3 scripts/gpu_capacity.py --out $OUT`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(REPO)]

from gpu_validate import add_archive_option, archive_if_asked, torch_total_gib  # noqa: E402 - shared with the other GPU scripts
from llm_supervisor.bench.capacity import Workload as BenchWorkload, calibration_points  # noqa: E402
from llm_supervisor.config.loader import load_profile  # noqa: E402
from llm_supervisor.config.settings import load_settings  # noqa: E402
from llm_supervisor.host.logfiles import parse_log_file  # noqa: E402
from llm_supervisor.host.modelfiles import bundled_config_path  # noqa: E402
from llm_supervisor.planning.launch import build_plan  # noqa: E402
from llm_supervisor.vllm import speed  # noqa: E402
from llm_supervisor.vllm.metrics import parse_prometheus  # noqa: E402

H200_MIB = 143771
READY_TIMEOUT = 600.0
LIMITS = {"4b": 1500, "32b": 1800, "offload": 1200, "steps": 900, "mixed": 900, "mixed1024": 600, "plain": 420,
          "advised": 420}
BUDGET_24GB_GIB = 21.38  # 0.9 of a 24 GB card, as docs/validation.md's scenarios use
# Two SLOs: interactive (≥ 20 tokens/s each, first token within 1 s) and relaxed.
SLOS = ("ttft_p95=1s,tpot_p95=50ms", "ttft_p95=4s,tpot_p95=100ms")
PROMPT_TOKENS, OUTPUT_TOKENS = 512, 128
COMPARE_USERS = (1, 8, 32)


class ScenarioTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise ScenarioTimeout("hard timeout reached")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ctx:
    out: Path
    work: Path
    models: Path
    simulate: bool
    env: dict[str, str]
    max_users: int
    search_s: float = 600.0
    limits: dict[str, int] = field(default_factory=lambda: dict(LIMITS))
    results: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "llm_supervisor", *args]


def build_ctx(args: argparse.Namespace) -> Ctx:
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("VLLM_CACHE_ROOT", str(work / "cache" / "vllm"))
    env.setdefault("HF_HOME", str(work / "cache" / "huggingface"))
    models = Path(args.models)
    if args.simulate:
        env.update({"LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H200", "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(H200_MIB),
                    "LLM_SUPERVISOR_SIM_GPU_DIR": str(work / "simgpu"),
                    "LLM_SUPERVISOR_SIM_STARTUP_S": env.get("LLM_SUPERVISOR_SIM_STARTUP_S", "3"),
                    # the GPU machine's vLLM (its offload runs on the V1 model runner)
                    "LLM_SUPERVISOR_SIM_VLLM_VERSION": env.get("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.26.0")})
        models = work / "models"
        for name, model_id in (("qwen3-4b", "Qwen/Qwen3-4B"), ("qwen3-32b", "Qwen/Qwen3-32B")):
            (models / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(bundled_config_path(model_id), models / name / "config.json")
    elif "LLM_SUPERVISOR_ENGINE_COMMAND" not in env and not shutil.which("vllm"):
        env["LLM_SUPERVISOR_ENGINE_COMMAND"] = f"{sys.executable} -m vllm.entrypoints.cli.main serve"
    if args.simulate:
        env["LLM_SUPERVISOR_SIM_HOST_AVAILABLE_GIB"] = str(args.host_ram_gib or 100)
    max_users = args.max_users or (48 if args.simulate else 512)
    # this process plans too (the speed model's inputs): it must see the same GPU and caches
    os.environ.update({k: v for k, v in env.items()
                       if k.startswith("LLM_SUPERVISOR_SIM_") or k in ("HF_HOME", "VLLM_CACHE_ROOT")})
    limits = {k: min(v, args.limit) if args.limit else v for k, v in LIMITS.items()}
    return Ctx(out, work, models, args.simulate, env, max_users, args.search_seconds, limits)


def write_profile(ctx: Ctx, name: str, model: str, vllm: dict[str, Any], recovery: dict[str, Any],
                  target: dict[str, Any] | None = None) -> Path:
    data: dict[str, Any] = {
        "name": name, "description": f"GPU capacity validation: {model} (dummy weights)",
        "hardware": {"gpu_name": "H200", "gpu_count": 1, "gpu_memory_gib": 141},
        "model": {"id": str(ctx.models / model), "served_name": model},
        "vllm": {"host": "127.0.0.1", "port": free_port(), "load_format": "dummy", **vllm},
        "affinity": {"mode": "auto", "memory_policy": "preferred"},
        "recovery": {"max_attempts": 3, "backoff_initial_s": 1, "backoff_max_s": 10, "startup_timeout_s": 900,
                     "stall_timeout_s": 300, **recovery},
    }
    if target:
        data["target"] = target
    path = ctx.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------- one daemon lifetime


class Daemon:
    def __init__(self, ctx: Ctx, name: str, profile: Path) -> None:
        self.ctx, self.name, self.profile = ctx, name, profile
        self.dir = ctx.work / name
        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh state dir: an earlier run's last-good args would change the plan
        self.dir.mkdir(parents=True)
        self.state = self.dir / "state"
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = {**ctx.env, "LLM_SUPERVISOR_STATE_DIR": str(self.state), "LLM_SUPERVISOR_LOG_DIR": str(self.state / "logs"),
                    "LLM_SUPERVISOR_API_PORT": str(self.api_port)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), trust_env=False)

    def args(self) -> list[str]:
        return ["--profile", str(self.profile), "--ignore-hardware-mismatch", *(["--simulate"] if self.ctx.simulate else [])]

    def plan(self, tag: str = "plan") -> dict[str, Any]:
        r = subprocess.run(self.ctx.cli("plan", *self.args(), "--json"), capture_output=True, text=True, env=self.env,
                           cwd=REPO, timeout=180)
        (self.dir / f"{tag}.out").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
        return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-2000:]}

    def start(self) -> None:
        self.log = (self.dir / "daemon.log").open("ab")
        self.proc = subprocess.Popen(self.ctx.cli("up", *self.args()), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=REPO, start_new_session=True)
        self.t0 = time.monotonic()

    def status(self) -> dict[str, Any] | None:
        try:
            r = self.http.get(self.url + "/status")
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        st = None
        while time.monotonic() < deadline:
            st = self.status()
            if st and st.get("state") == "ready":
                st["time_to_ready_s"] = round(time.monotonic() - self.t0, 1)
                return st
            if st and st.get("state") == "failed":
                raise RuntimeError(f"the daemon gave up: {st.get('message')}")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with code {self.proc.returncode}")
            time.sleep(1.0)
        raise RuntimeError(f"not ready after {timeout:g} s (last state {st and st.get('state')})")

    def bench(self, *args: str, timeout: float = 900) -> dict[str, Any]:
        tag = "bench-" + "-".join(a.strip("-").replace("=", "").replace(",", "_").replace(".", "")[:24] for a in args[:4])
        r = subprocess.run(self.ctx.cli("bench", *args, "--json"), capture_output=True, text=True, env=self.env,
                           cwd=REPO, timeout=timeout)
        (self.dir / f"{tag}.out").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr[-4000:])
        if r.returncode != 0:
            raise RuntimeError(f"bench {' '.join(args)} failed ({r.returncode}): {r.stderr[-500:]}")
        return json.loads(r.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.http.close()
        with contextlib.suppress(Exception):
            self.log.close()


# ---------------------------------------------------------------- predictions


def planned(ctx: Ctx, profile_path: Path, state_dir: Path) -> tuple[speed.SpeedModel | None, Any]:
    """The plan of a launch of this profile and its uncalibrated speed model."""
    settings = load_settings(state_dir=state_dir)
    profile = load_profile(str(profile_path), REPO / "profiles")
    plan = build_plan(settings, profile, simulate=ctx.simulate, ignore_hardware=True)
    if plan.fit is None or plan.prediction is None:
        return None, plan
    return speed.speed_model(plan.fit, plan.args, plan.prediction), plan


def speed_models(d: Daemon) -> tuple[speed.SpeedModel | None, Any]:
    """The uncalibrated speed model of the launch the daemon will make (the same plan, made
    before the engine holds the GPU's memory)."""
    return planned(d.ctx, d.profile, d.dir / "plan-state")


def compare(model: speed.SpeedModel | None, calibrated: speed.SpeedModel | None, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured levels at 1, 8, 32 and the found users beside the predictions."""
    w = speed.Workload(PROMPT_TOKENS, OUTPUT_TOKENS)
    levels = {s["users"]: s for s in result["levels"]}
    wanted = [u for u in (*COMPARE_USERS, result["capacity_users"]) if u in levels]
    rows = []
    for u in dict.fromkeys(wanted):
        s = levels[u]
        row: dict[str, Any] = {"users": u, "measured_per_user_tokens_per_s": s["per_user_tokens_per_s"],
                               "measured_tokens_per_s": s["tokens_per_s"], "measured_ttft_p50_s": s["ttft_s"]["p50"]}
        for tag, m in (("predicted", model), ("calibrated", calibrated)):
            if m is None:
                continue
            p = m.at(u, w)
            row[f"{tag}_per_user_tokens_per_s"] = round(p.per_user_tokens_per_s, 2)
            row[f"{tag}_tokens_per_s"] = round(p.tokens_per_s, 1)
            row[f"{tag}_ttft_s"] = round(p.ttft_s, 4)
            if s["per_user_tokens_per_s"]:
                row[f"{tag}_per_user_error"] = round(p.per_user_tokens_per_s / s["per_user_tokens_per_s"] - 1, 3)
            if s["tokens_per_s"]:
                row[f"{tag}_total_error"] = round(p.tokens_per_s / s["tokens_per_s"] - 1, 3)
        rows.append(row)
    return rows


def capacity_runs(ctx: Ctx, d: Daemon, r: dict[str, Any], model: speed.SpeedModel | None, plan: Any) -> None:
    """`bench --find-capacity` at both SLOs; predictions calibrated from the other SLO's levels."""
    r["planned_args"] = {k: getattr(plan.args, k) for k in ("gpu_memory_utilization", "max_model_len", "max_num_seqs")}
    searches: list[dict[str, Any]] = []
    r["raw_searches"] = searches  # what was measured so far, should the scenario's time run out
    for slo in SLOS:
        res = d.bench("--find-capacity", "--slo", slo, "--prompt-tokens", str(PROMPT_TOKENS), "--output-tokens",
                      str(OUTPUT_TOKENS), "--max-users", str(ctx.max_users), "--max-seconds", f"{ctx.search_s:g}")
        searches.append(res)
    del r["raw_searches"]
    r["searches"] = []
    for i, res in enumerate(searches):
        other = searches[1 - i]
        points = calibration_points(other, BenchWorkload.synthetic(PROMPT_TOKENS, OUTPUT_TOKENS))
        cal = model.with_calibration(speed.fit_calibration(model, points, "the other SLO's levels")) if model else None
        r["searches"].append({
            "slo": res["slo"]["text"], "capacity_users": res["capacity_users"], "summary": res["summary"],
            "search": res["search"], "saturation": res["saturation"], "levels": res["levels"], "plot": res.get("plot"),
            "calibration": cal.calibration.to_json() if cal else None, "compare": compare(model, cal, res)})
    r["ok"] = all(s["capacity_users"] > 0 for s in r["searches"])


# ---------------------------------------------------------------- scenarios


def scenario_4b(ctx: Ctx, r: dict[str, Any]) -> None:
    r.update({"scenario": "Qwen3-4B shape, whole GPU, util 0.9", "ok": False, "notes": []})
    profile = write_profile(ctx, "h200-qwen3-4b", "qwen3-4b", {"gpu_memory_utilization": 0.9, "max_model_len": 8192},
                            {"min_max_model_len": 2048})
    d = Daemon(ctx, "4b", profile)
    try:
        planned = d.plan()
        r["plan"] = planned.get("speed")
        r["predicted_kv_cache_tokens"] = (planned.get("predicted") or {}).get("kv_cache_tokens")
        model, plan = speed_models(d)
        d.start()
        st = d.wait_ready()
        r.update({"attempt": st.get("attempt"), "kv_cache_tokens": st.get("kv_cache_tokens"),
                  "time_to_ready_s": st.get("time_to_ready_s")})
        if r["predicted_kv_cache_tokens"] and r["kv_cache_tokens"]:
            r["kv_tokens_error"] = round(r["predicted_kv_cache_tokens"] / r["kv_cache_tokens"] - 1, 4)
        capacity_runs(ctx, d, r, model, plan)
    finally:
        d.stop()


def scenario_32b(ctx: Ctx, r: dict[str, Any]) -> None:
    r.update({"scenario": "Qwen3-32B shape, target 8 × 32,768, util 0.9, bound 0.95", "ok": False, "notes": []})
    profile = write_profile(ctx, "h200-qwen3-32b", "qwen3-32b", {"gpu_memory_utilization": 0.9, "max_model_len": 32768},
                            {"max_gpu_memory_utilization": 0.95, "min_max_model_len": 8192},
                            {"min_concurrency": 8, "context": 32768})
    d = Daemon(ctx, "32b", profile)
    try:
        plan = d.plan()
        r["plan_target_fit"] = plan.get("target_fit")
        r["plan_predicted"] = {k: (plan.get("predicted") or {}).get(k) for k in
                               ("kv_cache_tokens", "max_concurrency", "max_model_len", "target_met")}
        model, plan_obj = speed_models(d)
        d.start()
        st = d.wait_ready()
        facts = st.get("facts") or {}
        have = (st.get("kv_cache_tokens") or 0) / 32768
        r.update({"attempt": st.get("attempt"), "gpu_memory_utilization": st.get("gpu_memory_utilization"),
                  "kv_cache_tokens": st.get("kv_cache_tokens"), "requests_of_32768": round(have, 2),
                  "time_to_ready_s": st.get("time_to_ready_s"), "cuda_graph_gib": facts.get("cuda_graph_gib"),
                  "message": st.get("message")})
        r["target_met_first_launch"] = st.get("attempt") == 1 and have >= 8
        if not r["target_met_first_launch"]:
            r["notes"].append(f"target not met on the first launch: attempt {st.get('attempt')}, {have:.2f} requests")
        capacity_runs(ctx, d, r, model, plan_obj)
        r["ok"] = r["ok"] and r["target_met_first_launch"]
    finally:
        d.stop()


def scenario_offload(ctx: Ctx, r: dict[str, Any]) -> None:
    total = H200_MIB / 1024 if ctx.simulate else torch_total_gib(ctx.env, fallback=139.8)
    util = round(BUDGET_24GB_GIB / total, 3)
    r.update({"scenario": f"Qwen3-32B shape at a 24 GB budget (util {util}), CPU offload allowed", "ok": False,
              "notes": []})
    profile = write_profile(ctx, "h200-qwen3-32b-offload", "qwen3-32b", {"gpu_memory_utilization": util, "max_model_len": 8192},
                            {"min_gpu_memory_utilization": 0.1, "max_gpu_memory_utilization": util,
                             "min_max_model_len": 2048, "max_cpu_offload_gb": 48})
    d = Daemon(ctx, "offload", profile)
    try:
        plan = d.plan()
        low = plan.get("low_memory") or {}
        pred = plan.get("predicted") or {}
        points = (plan.get("speed") or {}).get("points") or [{}]
        r.update({"planned": {"summary": low.get("summary"), "offload_gib": low.get("offload_gib"),
                              "changes": low.get("changes"), "host_ram_gib": low.get("host_ram_gib")},
                  "predicted_kv_cache_tokens": pred.get("kv_cache_tokens"),
                  "predicted_max_model_len": pred.get("max_model_len"),
                  "predicted_decode_tokens_per_s": points[0].get("per_user_tokens_per_s")})
        model, _plan = speed_models(d)
        d.start()
        st = d.wait_ready(timeout=900)
        facts = st.get("facts") or {}
        r.update({"attempt": st.get("attempt"), "kv_cache_tokens": st.get("kv_cache_tokens"),
                  "time_to_ready_s": st.get("time_to_ready_s"), "model_weights_gib": facts.get("model_weights_gib"),
                  "argv_offload": (st.get("argv") or [])[(st.get("argv") or []).index("--cpu-offload-gb") + 1]
                  if "--cpu-offload-gb" in (st.get("argv") or []) else None})
        bench = d.bench("--users", "1", "--requests", "2", "--max-tokens", "16", timeout=600)
        r["measured_decode_tokens_per_s"] = bench.get("per_user_tokens_per_s")
        r["measured_ttft_s"] = (bench.get("ttft_s") or {}).get("p50")
        if model is not None:
            p = model.at(1, speed.Workload(PROMPT_TOKENS, 16))
            r["predicted_decode_tokens_per_s_at_bench"] = round(p.per_user_tokens_per_s, 3)
        pk, mk = r.get("predicted_kv_cache_tokens"), r.get("kv_cache_tokens")
        if pk and mk:
            r["kv_tokens_error"] = round(pk / mk - 1, 3)
        pd, md = r.get("predicted_decode_tokens_per_s_at_bench"), r.get("measured_decode_tokens_per_s")
        if pd and md:
            r["decode_error"] = round(pd / md - 1, 3)
        # a short search on the running engine calibrates this host's speed; the next plan's
        # low-memory line then gives the rate measured here
        found = d.bench("--find-capacity", "--slo", "tpot_p95=5s", "--prompt-tokens", "64", "--output-tokens", "8",
                        "--max-users", "2", "--max-seconds", "90", timeout=400)
        again = d.plan("plan-after-find-capacity")
        # with the engine ready, `plan` starts from its last-good arguments (the offload), so the
        # low-memory line is gone and the speed lines give the rate
        low_again = again.get("low_memory") or {}
        one_user = ((again.get("speed") or {}).get("points") or [{}])[0]
        calibrated = low_again.get("tokens_per_s") or one_user.get("per_user_tokens_per_s")
        r["after_find_capacity"] = {"capacity_users": found.get("capacity_users"), "tokens_per_s": calibrated,
                                    "low_memory": low_again.get("summary"), "argv": again.get("argv"),
                                    "speed_calibrated": (again.get("speed") or {}).get("calibrated")}
        if calibrated and md:
            r["after_find_capacity"]["error"] = round(calibrated / md - 1, 3)
        learned = bool(calibrated and md and abs(calibrated / md - 1) <= 0.15)
        r["ok"] = st.get("attempt") == 1 and bool(r.get("argv_offload")) and bench.get("succeeded") == 2 and learned
        if not learned:
            r["notes"].append(f"after bench --find-capacity the plan gives {calibrated} tokens/s, measured {md}")
        if st.get("attempt") != 1:
            r["notes"].append(f"ready only at attempt {st.get('attempt')}")
    finally:
        d.stop()


STEP_USERS = (1, 2, 4, 8, 16, 32, 64)
STEP_WORKLOADS = (("512", "128"), ("16", "128"), ("512", "96-160"))
# users out of step, prompts below, at and above vLLM 0.26's CUDA-graph capture size (512 tokens)
MIXED_LEVELS = [(p, "96-160", 8) for p in ("128", "256", "480", "512", "600", "1024", "2048")] + [
    (p, "96-160", u) for u in (2, 32) for p in ("256", "512", "1024")] + [("16", "96-160", 8), ("16", "96-160", 32)]
# vLLM's counters read per level (histograms: their _sum and _count; iteration tokens: buckets too)
ITERATION_TOKENS = "vllm:iteration_tokens_total"
ENGINE_HISTOGRAMS = (ITERATION_TOKENS, "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
                     "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                     "vllm:request_queue_time_seconds")
_SUMS_AND_COUNTS = {f"{h}_{part}" for h in ENGINE_HISTOGRAMS for part in ("sum", "count")}


def engine_counters(http: httpx.Client, engine_url: str) -> dict[str, float]:
    """The engine's histogram sums, counts and iteration-token buckets (`…_bucket@le`), summed
    over label sets."""
    out: dict[str, float] = {}
    for name, labels, value in parse_prometheus(http.get(engine_url.rstrip("/") + "/metrics").text):
        if name == f"{ITERATION_TOKENS}_bucket":
            name = f"{name}@{labels.get('le')}"
        elif name not in _SUMS_AND_COUNTS:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def steps_above(buckets: Sequence[Sequence[float]], tokens: int) -> int:
    """Engine steps of more than `tokens` tokens, from a level's cumulative [le, count] buckets."""
    return int(buckets[-1][1] - max((n for le, n in buckets if le <= tokens), default=0))


def level_counters(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    def mean(name: str) -> float | None:
        n = d.get(name + "_count", 0.0)
        return round(d.get(name + "_sum", 0.0) / n, 5) if n else None

    steps = d.get(f"{ITERATION_TOKENS}_count", 0.0)
    buckets = sorted(((float(k.split("@")[1]), v) for k, v in d.items() if "@" in k), key=lambda kv: kv[0])
    tokens = d.get(f"{ITERATION_TOKENS}_sum", 0.0)
    return {"engine_steps": int(steps), "tokens_per_step": round(tokens / steps, 1) if steps else None,
            "step_token_buckets": [[le, int(v)] for le, v in buckets],
            "prefill_s_mean": mean("vllm:request_prefill_time_seconds"),
            "decode_s_mean": mean("vllm:request_decode_time_seconds"),
            "engine_ttft_s_mean": mean("vllm:time_to_first_token_seconds"),
            "engine_itl_s_mean": mean("vllm:inter_token_latency_seconds"),
            "queue_s_mean": mean("vllm:request_queue_time_seconds")}


def run_levels(d: Daemon, r: dict[str, Any], model: speed.SpeedModel | None, engine: str,
               levels: Sequence[tuple[str, str, int]]) -> None:
    """One `bench --users` per (prompt, output, users), with the engine's counters around it."""
    rows: list[dict[str, Any]] = r.setdefault("levels", [])
    for prompt, output, users in levels:
        requests = max(8, 4 * users)
        before = engine_counters(d.http, engine) if engine else {}
        res = d.bench("--users", str(users), "--requests", str(requests), "--prompt-tokens", prompt,
                      "--output-tokens", output, timeout=300)
        after = engine_counters(d.http, engine) if engine else {}
        row: dict[str, Any] = {
            "prompt_tokens": prompt, "output_tokens": output, "users": users, "requests": requests,
            "succeeded": res.get("succeeded"), "duration_s": res.get("duration_s"),
            "tokens_per_s": res.get("tokens_per_s"), "per_user_tokens_per_s": res.get("per_user_tokens_per_s"),
            "ttft_p50_s": (res.get("ttft_s") or {}).get("p50"),
            # a user's decode rate is 1 / TPOT (bench --users reports the rate)
            "tpot_s": round(1 / res["per_user_tokens_per_s"], 5) if res.get("per_user_tokens_per_s") else None,
            **level_counters(before, after)}
        if row["engine_steps"] and row["duration_s"]:
            row["wall_per_step_s"] = round(row["duration_s"] / row["engine_steps"], 5)
        if model is not None:
            lengths = BenchWorkload.synthetic(prompt, output)  # bench's own reading of "96-160"
            w = speed.Workload(round(lengths.prompt.mean), round(lengths.output.mean))
            p, s = model.at(users, w), model.steps(min(users, model.slots(w)[0]), w)
            row.update({"model_tpot_s": round(p.tpot_s, 5), "model_ttft_s": round(p.ttft_s, 4),
                        "model_decode_step_s": round(s.decode.total, 5),
                        "model_prompt_step_s": round(s.prefill.total, 5), "model_prompt_chunks": s.chunks})
        rows.append(row)
        print(f"    P={prompt} O={output} U={users}: TPOT {row['tpot_s']} (model {row.get('model_tpot_s')}),"
              f" TTFT p50 {row['ttft_p50_s']}, steps {row['engine_steps']}, tokens/step {row['tokens_per_step']},"
              f" prefill {row['prefill_s_mean']}", flush=True)
    r["ok"] = bool(rows) and all(x["succeeded"] == x["requests"] for x in rows)


def levels_profile(ctx: Ctx, extra_args: Sequence[str] = ()) -> Path:
    vllm: dict[str, Any] = {"gpu_memory_utilization": 0.9, "max_model_len": 8192}
    # the simulator takes the CUDA-graph flags, not vLLM's iteration log
    args = [a for a in extra_args if not (ctx.simulate and a == "--enable-logging-iteration-details")]
    if args:
        vllm["extra_args"] = args
    return write_profile(ctx, "h200-qwen3-4b", "qwen3-4b", vllm, {"min_max_model_len": 2048})


def levels_scenario(ctx: Ctx, r: dict[str, Any], name: str, title: str, levels: Sequence[tuple[str, str, int]],
                    extra_args: Sequence[str] = ()) -> None:
    r.update({"scenario": title, "ok": False, "notes": []})
    d = Daemon(ctx, name, levels_profile(ctx, extra_args))
    try:
        model, plan = speed_models(d)
        if plan.speed is not None:  # what `plan` says about its own load's steps beyond the graphs
            r["ungraphed_prompts"] = plan.speed.summary()["ungraphed_prompts"]
            r["ungraphed_note"] = next((n for n in plan.notes if "beyond the CUDA graphs" in n), None)
        d.start()
        st = d.wait_ready()
        r.update({"attempt": st.get("attempt"), "kv_cache_tokens": st.get("kv_cache_tokens"),
                  "time_to_ready_s": st.get("time_to_ready_s"), "engine_url": st.get("engine_url")})
        with contextlib.suppress(OSError):
            facts = parse_log_file(d.state / "logs" / "h200-qwen3-4b.log").facts
            r.update({"cuda_graph_gib": facts.cuda_graph_gib, "cuda_graph_sizes": len(facts.cuda_graph_sizes or []),
                      "cuda_graph_max": max(facts.cuda_graph_sizes or [0])})
        run_levels(d, r, model, str(st.get("engine_url") or ""), levels)
    finally:
        d.stop()


def scenario_steps(ctx: Ctx, r: dict[str, Any]) -> None:
    levels_scenario(ctx, r, "steps", "Qwen3-4B shape, whole GPU, util 0.9: fixed loads, engine steps",
                    [(p, o, u) for p, o in STEP_WORKLOADS for u in STEP_USERS])


def scenario_mixed(ctx: Ctx, r: dict[str, Any]) -> None:
    """Every engine step's time as vLLM logs it (--enable-logging-iteration-details), for users out
    of step (varied replies) at prompt lengths around the CUDA-graph capture size."""
    levels_scenario(ctx, r, "mixed", "Qwen3-4B shape, whole GPU, util 0.9: steps that carry a prompt",
                    MIXED_LEVELS, ["--enable-logging-iteration-details"])


def scenario_mixed1024(ctx: Ctx, r: dict[str, Any]) -> None:
    """As mixed, with CUDA graphs captured up to 1,024 tokens instead of 512."""
    levels_scenario(ctx, r, "mixed1024", "Qwen3-4B shape, util 0.9, CUDA graphs to 1,024 tokens",
                    [(p, "96-160", 8) for p in ("480", "512", "600", "1024")],
                    ["--enable-logging-iteration-details", "--max-cudagraph-capture-size", "1024"])


# the plan's own workload (1,024-token prompts, 256-token replies) with users out of step, at the
# plan's 8 and 32 users, and the 512-token level that showed the dip
ADVISED_LEVELS = [("1024", "192-320", 8), ("1024", "192-320", 32), ("512", "96-160", 8)]


def scenario_plain(ctx: Ctx, r: dict[str, Any]) -> None:
    """The plan's load with CUDA graphs as vLLM captures them by default."""
    levels_scenario(ctx, r, "plain", "Qwen3-4B shape, util 0.9, the plan's load, default CUDA graphs", ADVISED_LEVELS,
                    ["--enable-logging-iteration-details"])


def scenario_advised(ctx: Ctx, r: dict[str, Any]) -> None:
    """The same loads with the capture size `plan` advises for the default launch."""
    _model, plan = planned(ctx, levels_profile(ctx), ctx.work / "advised-plan-state")
    dip = plan.speed.summary()["ungraphed_prompts"] if plan.speed is not None else None
    if not dip or not dip.get("capture_size"):
        r.update({"scenario": "the plan's load, the advised CUDA graphs", "ok": False,
                  "notes": ["plan advised no --max-cudagraph-capture-size for this launch"]})
        return
    size = int(dip["capture_size"])
    levels_scenario(ctx, r, "advised", f"Qwen3-4B shape, util 0.9, the plan's load, CUDA graphs to {size:,} (advised)",
                    ADVISED_LEVELS, ["--enable-logging-iteration-details", "--max-cudagraph-capture-size", str(size)])
    r["advised_capture_size"] = size


SCENARIOS: dict[str, Callable[[Ctx, dict[str, Any]], None]] = {"4b": scenario_4b, "32b": scenario_32b,
                                                        "offload": scenario_offload, "steps": scenario_steps,
                                                        "mixed": scenario_mixed, "mixed1024": scenario_mixed1024,
                                                        "plain": scenario_plain, "advised": scenario_advised}


# ---------------------------------------------------------------- summary


def versions(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "simulated": ctx.simulate, "python": sys.version.split()[0]}
    if ctx.simulate:
        out["gpu"] = "simulated NVIDIA H200"
        return out
    with contextlib.suppress(Exception):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        out["gpu"] = r.stdout.strip()
    with contextlib.suppress(Exception):
        r = subprocess.run([sys.executable, "-c", "import torch, vllm; print(torch.__version__, vllm.__version__)"],
                           capture_output=True, text=True, timeout=180, env=ctx.env)
        out["torch"], out["vllm"] = r.stdout.split()[:2]
    return out


def fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    if pct:
        return f"{v * 100:+.0f} %"
    return f"{v:,.1f}" if isinstance(v, float) else str(v)


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.2f} ms"


def summary_table(results: dict[str, Any]) -> str:
    lines = ["| scenario | result | figures | notes |", "|---|---|---|---|"]
    for key, r in results.items():
        res = "PASS" if r.get("ok") else "FAIL"
        figures = [f"attempt {fmt(r.get('attempt'))}", f"ready in {fmt(r.get('time_to_ready_s'))} s",
                   f"KV tokens {fmt(r.get('kv_cache_tokens'))}"]
        if r.get("predicted_kv_cache_tokens") and "planned" not in r:
            figures.append(f"planner {fmt(r['predicted_kv_cache_tokens'])} KV tokens ({fmt(r.get('kv_tokens_error'), True)})")
        if "requests_of_32768" in r:
            figures.append(f"utilization {r.get('gpu_memory_utilization')}, {fmt(r.get('requests_of_32768'))}"
                           " requests of 32,768")
        for s in r.get("searches") or []:
            search = s.get("search") or {}
            cut = search.get("unmeasured")
            end = f", budget ended it {'during' if cut['cut_off'] else 'before'} {cut['users']} users" if cut else ""
            figures.append(f"{s['slo']}: {s['capacity_users']} users (stopped: {search.get('stopped')}{end})")
        if r.get("cuda_graph_sizes"):
            figures.append(f"CUDA graphs {fmt(r.get('cuda_graph_gib'))} GiB for {r['cuda_graph_sizes']} sizes up to"
                           f" {r.get('cuda_graph_max')}")
        if "ungraphed_note" in r:
            dip = r.get("ungraphed_prompts") or {}
            figures.append(f"plan: steps of {dip.get('step_tokens')} tokens beyond the graphs, advises "
                           f"{dip.get('capture_size')}" if r["ungraphed_note"] else "plan: no steps beyond the graphs")
        if "planned" in r:
            figures.append(f"offload {r['planned'].get('offload_gib')} GiB (argv {r.get('argv_offload')}); KV tokens"
                           f" predicted {fmt(r.get('predicted_kv_cache_tokens'))} / measured {fmt(r.get('kv_cache_tokens'))}"
                           f" ({fmt(r.get('kv_tokens_error'), True)}); decode tok/s predicted"
                           f" {fmt(r.get('predicted_decode_tokens_per_s_at_bench'))} / measured"
                           f" {fmt(r.get('measured_decode_tokens_per_s'))} ({fmt(r.get('decode_error'), True)})")
            after = r.get("after_find_capacity")
            if after:
                figures.append(f"after find-capacity: plan {fmt(after.get('tokens_per_s'))} tok/s"
                               f" ({fmt(after.get('error'), True)})")
        lines.append(f"| {r['scenario']} | {res} | {'; '.join(figures)} | {'; '.join(r.get('notes') or [])} |")
    lines += ["", "Speed model against the measurement (per-user decode tokens/s and total tokens/s; errors are"
              " predicted/measured − 1; calibrated from the other SLO's levels)", "",
              "| scenario | SLO | users | measured per user / total | predicted per user / total (error) |"
              " calibrated per user / total (error) |", "|---|---|---:|---|---|---|"]
    for key, r in results.items():
        for s in r.get("searches") or []:
            for c in s["compare"]:
                lines.append(
                    f"| {key} | {s['slo']} | {c['users']} | {fmt(c['measured_per_user_tokens_per_s'])} /"
                    f" {fmt(c['measured_tokens_per_s'])} | {fmt(c.get('predicted_per_user_tokens_per_s'))} /"
                    f" {fmt(c.get('predicted_tokens_per_s'))} ({fmt(c.get('predicted_per_user_error'), True)},"
                    f" {fmt(c.get('predicted_total_error'), True)}) | {fmt(c.get('calibrated_per_user_tokens_per_s'))} /"
                    f" {fmt(c.get('calibrated_tokens_per_s'))} ({fmt(c.get('calibrated_per_user_error'), True)},"
                    f" {fmt(c.get('calibrated_total_error'), True)}) |")
    fixed = [(key, x) for key, r in results.items() for x in r.get("levels") or [] if "prompt_tokens" in x]
    if fixed:
        lines += ["", "Fixed loads: TPOT measured against the model (error: predicted/measured − 1), the first"
                  " token, and the engine steps that carried more than 512 tokens", "",
                  "| scenario | prompt | reply | users | TPOT measured | model (error) | TTFT p50 | steps > 512 tokens |",
                  "|---|---:|---:|---:|---:|---|---:|---:|"]
        for key, x in fixed:
            buckets = x.get("step_token_buckets")
            above = steps_above(buckets, 512) if buckets else None
            err = x["model_tpot_s"] / x["tpot_s"] - 1 if x.get("model_tpot_s") and x.get("tpot_s") else None
            lines.append(f"| {key} | {x['prompt_tokens']} | {x['output_tokens']} | {x['users']} |"
                         f" {ms(x.get('tpot_s'))} | {ms(x.get('model_tpot_s'))} ({fmt(err, True)}) |"
                         f" {ms(x.get('ttft_p50_s'))} | {fmt(above)} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate", action="store_true", help="the bundled simulator on a simulated H200")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu-capacity-out"))
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu-capacity-work"))
    ap.add_argument("--models", default="/tmp/models")
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--host-ram-gib", type=float, default=0, help="with --simulate: the simulated host's free RAM"
                    " (default 100)")
    ap.add_argument("--max-users", type=int, default=0, help="the search's ceiling (default 512; 48 simulated)")
    ap.add_argument("--limit", type=int, default=0, help="each scenario's hard limit in seconds (default: 1500, 1800"
                    " and 1200); what was measured before it is kept")
    ap.add_argument("--search-seconds", type=float, default=600.0, help="each capacity search's time budget")
    add_archive_option(ap)
    args = ap.parse_args()
    ctx = build_ctx(args)
    signal.signal(signal.SIGALRM, _alarm)
    # killed from outside (`timeout`, Ctrl-C): unwind, so each scenario's `finally` stops its daemon
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = versions(ctx)
    (ctx.out / "versions.json").write_text(json.dumps(info, indent=1))
    print("versions:", json.dumps(info), flush=True)
    t_all = time.monotonic()
    for key in [k.strip() for k in args.only.split(",") if k.strip()]:
        if key not in SCENARIOS:
            print(f"unknown scenario {key!r}; known: {', '.join(SCENARIOS)}", flush=True)
            continue
        print(f"--- scenario {key} (hard limit {ctx.limits[key]} s) at {time.monotonic() - t_all:.0f} s", flush=True)
        signal.alarm(ctx.limits[key])
        r: dict[str, Any] = {"scenario": key, "ok": False, "notes": []}
        ctx.results[key] = r  # filled as the scenario goes: a timeout keeps what was measured
        try:
            SCENARIOS[key](ctx, r)
        except (Exception, ScenarioTimeout) as exc:  # noqa: BLE001 - record and go on
            (ctx.work / f"error-{key}.txt").write_text("".join(traceback.format_exception(exc)))
            r["ok"] = False
            r["notes"].append(f"error: {exc!r}"[:300])
        finally:
            signal.alarm(0)
        (ctx.out / f"capacity-{key}.json").write_text(json.dumps(ctx.results[key], indent=1, default=str))
        print(f"    {key}: {'PASS' if ctx.results[key].get('ok') else 'FAIL'}", flush=True)
    summary = {"versions": info, "wall_s": round(time.monotonic() - t_all, 1), "results": ctx.results}
    (ctx.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    table = summary_table(ctx.results)
    (ctx.out / "summary.md").write_text(table + "\n")
    archive_if_asked(args.archive, [ctx.out, ctx.work])
    print("\n===== summary =====")
    print(table)
    print(json.dumps({k: {"ok": v.get("ok"), "notes": v.get("notes")} for k, v in ctx.results.items()}))
    return 0 if ctx.results and all(r.get("ok") for r in ctx.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
