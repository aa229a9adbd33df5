"""Multi-GPU validation: the shipped multi-GPU profiles against real `vllm serve` on a machine with
2 or 8 GPUs, every scenario in one run (or, with --simulate, against the bundled simulator on
simulated GPUs, to check this script without GPU time). Two scenarios need one GPU only: the
process trees of vLLM's worker executors (a worker process, a Ray actor) without tensor parallel.

  mp1        Qwen3-8B on one GPU at a 40 GB budget with `--distributed-executor-backend mp`: the
             rank in a `VLLM::Worker` process of its own; then as tp2 (worker `kill -9`ed, daemon
             `kill -9`ed)
  ray1       the same on Ray: the supervisor's cluster mode with one node (`ray start --head`
             under the daemon), the rank a `RayWorkerProc` actor under Ray's raylet; then as
             tp2, and no Ray process left anywhere after the daemon's `kill -9`
  tp2        `3080x2-qwen3-8b` at a 20 GB budget per GPU (utilization from the GPUs' real total),
             TP 2 with --disable-custom-all-reduce: ready; KV tokens and concurrency from the log
             vs /status vs the planner; memory on each GPU; `kill -9` of the TP 1 worker → engine
             death noticed and recovered (timed); `kill -9` of the daemon → no worker left, memory
             freed on both GPUs (timed)
  allreduce  the same model with vLLM's all-reduce paths left on (custom all-reduce, flashinfer's
             fused all-reduce where vLLM picks it): ready, or a collectives failure
             (`CUBLAS_STATUS_INTERNAL_ERROR` at worker start was seen on two H200s) classified and
             recovered by a computed change (fusion off, then custom all-reduce off)
  ray2       two Ray nodes on this host, one GPU each (each run by `supervisor up --role head|worker`,
             kept to its GPU by CUDA_VISIBLE_DEVICES; the worker at 127.0.0.2), vLLM with
             `--distributed-executor-backend ray`, PP 2 across them (the supervisor keeps TP within a
             host): ready; the worker's supervisor
             `kill -9`ed → the head goes `degraded` (timed); the worker back → ready again (timed)
  awq1       `a10x8-qwen3-32b-awq`'s model and arguments (AWQ 4-bit, awq_marlin, float16) on one
             GPU at TP 1 and a 40 GB budget: ready; the quantized weights, KV tokens and concurrency
             from the log vs /status vs the planner; `bench --users 16` through the AWQ kernels
  tp8        `a10x8-qwen3-32b-awq` at a 24 GB budget per GPU, TP 8 (8 GPUs): ready, KV per rank,
             `bench --users 64`
  tp4dp2     the same as TP 4 × DP 2 with one replica per NUMA node: ready, each replica's
             placement, KV per replica, `bench --users 64`

A scenario needing more GPUs than the machine has is skipped with a note. Every process is kept
under NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1. Each
daemon lifetime has a hard limit (SIGALRM), SIGTERM unwinds, and everything started is ended.
Logs go to OUT/<scenario>/ (engine logs copied next to the daemon's); the summary (Markdown, then
one JSON line) is printed last and saved as OUT/summary.md and OUT/summary.json.

usage: python scripts/gpu_multi.py [--simulate] [--out DIR] [--models DIR] [--archive FILE.tar.gz]
                                   [--only mp1,ray1,awq1,tp2,allreduce,ray2,tp8,tp4dp2]
       (real run: `. /tmp/vllm-env.sh` first; /tmp/models/qwen3-8b and qwen3-32b from make-model.py;
       qwen3-32b-awq is made beside them from the bundled AWQ config and qwen3-32b's tokenizer)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
import gpu_validate as gv  # noqa: E402 - the single-GPU script's daemon, stop timing and summary helpers
from llm_supervisor.host.modelfiles import bundled_config_path  # noqa: E402

REPO = gv.REPO
PROFILES = REPO / "llm_supervisor" / "data" / "profiles"
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
LIMITS = {"mp1": 900, "ray1": 900, "awq1": 900, "tp2": 900, "allreduce": 900, "ray2": 1200, "tp8": 1200, "tp4dp2": 1200}
NEEDS = {"mp1": 1, "ray1": 1, "awq1": 1, "tp2": 2, "allreduce": 2, "ray2": 2, "tp8": 8, "tp4dp2": 8}
WORKER_IP = "127.0.0.2"  # the worker "host": a second loopback address
BUDGET_20GB = 18.0   # 0.9 of a 20 GB RTX 3080
BUDGET_24GB = 21.38  # 0.9 of a 24 GB A10
BUDGET_40GB = 36.0   # 0.9 of a 40 GB A100
H200_MIB = 143771


@dataclass
class MultiCtx(gv.Ctx):
    """gv.Ctx for a shipped profile and its model folder, on `gpus` GPUs."""

    profile: Path = PROFILES / "3080x2-qwen3-8b.yaml"
    gpus: int = 1

    def profile_args(self, sets: list[str]) -> list[str]:
        out = ["--profile", str(self.profile), "--model", self.model]
        for s in sets:
            out += ["--set", s]
        if self.simulate:
            out.append("--simulate")
        return out + ["--ignore-hardware-mismatch"]  # H200s stand in for the profiles' cards


def gpu_count(simulate: bool) -> int:
    if simulate:
        return 8
    with contextlib.suppress(OSError, subprocess.TimeoutExpired, ValueError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
        return len([ln for ln in out.splitlines() if ln.strip()])
    return 0


def used_per_gpu(ctx: MultiCtx) -> list[int]:
    """MiB in use on each GPU (NVML's view; the simulator's with --simulate)."""
    if ctx.simulate:
        from llm_supervisor.host import simgpu

        return [g.used_mib for g in simgpu.gpus(simgpu.load_config(ctx.env))]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired, ValueError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
        return [int(x) for x in out.split()]
    return []


def budget_sets(ctx: MultiCtx, budget_gib: float) -> list[str]:
    """`--set`s for a card of `budget_gib` (utilization from this GPU's real total, the recovery
    bounds kept at it) with dummy weights."""
    util = ctx.util(budget_gib)
    return [f"vllm.gpu_memory_utilization={util}", "recovery.min_gpu_memory_utilization=0.05",
            f"recovery.max_gpu_memory_utilization={util}", "vllm.load_format=dummy"]


def context(base: gv.Ctx, profile: str, model: str, gpus: int) -> MultiCtx:
    fields = {k: getattr(base, k) for k in ("out", "simulate", "python", "ignore_hw")}
    return MultiCtx(**fields, env=dict(base.env), model=model, profile=PROFILES / f"{profile}.yaml", gpus=gpus,
                    total_gib=base.total_gib)


def model_folder(base: gv.Ctx, models: Path, name: str, hf_id: str) -> str:
    """The real run's config-only folder (`--load-format dummy`); the simulator knows the HF id."""
    if base.simulate:
        return hf_id
    if name == "qwen3-32b-awq":
        awq_folder(models)
    return str(models / name)


def awq_folder(models: Path) -> None:
    """make-model.py writes bf16 shapes only: the AWQ one is Qwen3-32B-AWQ's bundled config.json
    (its quantization_config, float16) with qwen3-32b's tokenizer and token ids."""
    src, dst = models / "qwen3-32b", models / "qwen3-32b-awq"
    if (dst / "config.json").is_file() or not (src / "config.json").is_file():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    config = json.loads(bundled_config_path("Qwen/Qwen3-32B-AWQ").read_text())
    ids = json.loads((src / "config.json").read_text())
    config.update({k: ids[k] for k in ("bos_token_id", "eos_token_id") if k in ids})
    (dst / "config.json").write_text(json.dumps(config, indent=1))


def engine_text(d: gv.Daemon) -> str:
    """The engine log the daemon wrote (`<state>/logs/<profile name>.log`)."""
    logs = sorted((d.state / "logs").glob("*.log"), key=lambda p: p.stat().st_size) if (d.state / "logs").is_dir() else []
    return logs[-1].read_text(errors="replace") if logs else ""


def kv_figures(d: gv.Daemon, st: dict[str, Any], plan: dict[str, Any] | None, since: float) -> dict[str, Any]:
    """What vLLM printed, what /status says and what the planner predicted; `since`: when the
    wait for ready began (gv.now())."""
    segments = gv.attempts_in(engine_text(d))
    printed = gv.printed(segments[-1]) if segments else {}
    pred = gv.predicted(plan)
    return {"status_kv_tokens": st.get("kv_cache_tokens"), "status_concurrency": st.get("max_concurrency"),
            "log_kv_tokens": printed.get("kv_cache_tokens"), "log_concurrency": printed.get("max_concurrency"),
            "predicted_kv_tokens": pred.get("kv_cache_tokens"), "predicted_kv_gib": pred.get("available_kv_cache_gib"),
            "log_kv_gib": printed.get("available_kv_cache_gib"), "time_to_ready_s": round(gv.now() - since, 1),
            "attempt": st.get("attempt")}


def failures(st: dict[str, Any]) -> list[tuple[Any, str]]:
    """(failure kind, the decision's reason) for each relaunch or stop in the history: the daemon's
    own kind (`multi_gpu_comm` where the contract's `kind` says `unknown`)."""
    out = []
    for h in st.get("history") or []:
        if h.get("event") in ("relaunch", "give_up"):
            failure = h.get("failure") or {}
            out.append((failure.get("supervisor_kind") or failure.get("kind"), (h.get("reason") or "")[:300]))
    return out


def worker(d: gv.Daemon, title: str) -> psutil.Process | None:
    for p in gv.alive(d.tree()):
        with contextlib.suppress(psutil.Error):
            if title in " ".join(p.cmdline()):
                return p
    return None


def bench(ctx: MultiCtx, d: gv.Daemon, users: int) -> dict[str, Any]:
    cmd = ctx.cli("bench", "--users", str(users), "--requests", str(users * 2), "--max-tokens", "64", "--json")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=d.env, cwd=REPO)
    (d.dir / f"bench-{users}.out").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    with contextlib.suppress(ValueError):
        b = json.loads(r.stdout)
        return {k: b.get(k) for k in ("succeeded", "failed", "tokens_per_s", "per_user_tokens_per_s",
                                      "peak_concurrency_observed")} | {"ttft_p50_s": (b.get("ttft_s") or {}).get("p50")}
    return {"error": r.stderr.strip()[-300:]}


# ---------------------------------------------------------------- scenarios


def worker_death_and_kill(ctx: MultiCtx, d: gv.Daemon, title: str, r: dict[str, Any],
                          start_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """What tp2, mp1 and ray1 share: ready (KV figures, memory per GPU); `kill -9` of the GPU
    worker process titled `title` → the death noticed and recovered (timed); `kill -9` of the
    daemon → no process of its tree left and every GPU's memory back (timed)."""
    baseline = used_per_gpu(ctx)
    plan = d.plan()
    d.start(*start_args)
    st = d.wait_ready(timeout=600)
    r["ready"] = kv_figures(d, st, plan, d.t0)
    r["gpu_used_mib_ready"] = used_per_gpu(ctx)
    first = st.get("attempt", 1)
    victim = worker(d, title)
    r["worker_killed"] = gv.describe(victim).strip() if victim else None
    t0 = gv.now()
    if victim is not None:
        victim.kill()
    noticed = d.wait(lambda s: s.get("state") != "ready" or s.get("attempt", 1) > first, 120, 0.05, "the death")
    r["death_noticed_s"] = round(gv.now() - t0, 2)
    again = d.wait_ready(attempt=first + 1, timeout=600)
    r["death_kind"] = (failures(again) or [(noticed.get("state"), "")])[-1][0]
    r["ready_again_s"] = round(gv.now() - t0, 2)
    r["ready_again"] = kv_figures(d, again, None, t0)
    r["stop"] = d.measure_stop(signal.SIGKILL, sum(baseline) if baseline else None)
    r["gpu_used_mib_after"] = used_per_gpu(ctx)
    freed = all(u <= b + gv.MEM_TOLERANCE_MIB for u, b in zip(r["gpu_used_mib_after"], baseline))
    r["ok"] = bool(victim) and again.get("state") == "ready" and not r["stop"]["left_over"] and freed
    return r


def scenario_tp2(base: gv.Ctx, models: Path) -> dict[str, Any]:
    ctx = context(base, "3080x2-qwen3-8b", model_folder(base, models, "qwen3-8b", "Qwen/Qwen3-8B"), 2)
    sets = budget_sets(ctx, BUDGET_20GB)
    r: dict[str, Any] = {"scenario": "tp2: 3080x2-qwen3-8b at 20 GB per GPU, TP 2, custom all-reduce off", "ok": False}
    d = gv.Daemon(ctx, "tp2", sets)
    try:
        return worker_death_and_kill(ctx, d, "VLLM::Worker_TP1", r)
    finally:
        d.cleanup()


def one_gpu_profile(ctx: MultiCtx, name: str, vllm: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    """The 3080x2 profile's model on one GPU of a 40 GB budget (TP 1), with `vllm` changes."""
    data = yaml.safe_load(ctx.profile.read_text())
    data["name"] = name
    data["description"] = f"Qwen3-8B on one GPU, {name}"
    data["hardware"].update({"gpu_count": 1, "gpu_memory_gib": 40})
    data["vllm"].update({"tensor_parallel_size": 1, **vllm})
    if cluster is not None:
        data["cluster"] = cluster
    path = ctx.out / f"{name}-profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def scenario_mp1(base: gv.Ctx, models: Path) -> dict[str, Any]:
    """One GPU, vLLM's multiprocess executor asked for (`--distributed-executor-backend mp`): the
    rank runs in a `VLLM::Worker` process of its own, as each rank does under tensor parallel."""
    ctx = context(base, "3080x2-qwen3-8b", model_folder(base, models, "qwen3-8b", "Qwen/Qwen3-8B"), 1)
    ctx.profile = one_gpu_profile(ctx, "qwen3-8b-mp1", {"extra_args": ["--distributed-executor-backend", "mp"]})
    sets = budget_sets(ctx, BUDGET_40GB)
    r: dict[str, Any] = {"scenario": "mp1: Qwen3-8B at 40 GB on one GPU, a worker process (executor mp)", "ok": False}
    d = gv.Daemon(ctx, "mp1", sets)
    if not base.simulate:
        d.env["CUDA_VISIBLE_DEVICES"] = "0"
    try:
        return worker_death_and_kill(ctx, d, "VLLM::Worker", r)
    finally:
        d.cleanup()


def scenario_ray1(base: gv.Ctx, models: Path) -> dict[str, Any]:
    """One GPU on Ray: the supervisor's cluster mode with one node (`ray start --head` under the
    daemon, vLLM with `--distributed-executor-backend ray`): the rank is a Ray actor
    (`RayWorkerProc` from vLLM 0.26, `RayWorkerWrapper` before), a child of Ray's raylet rather
    than of vLLM."""
    ctx = context(base, "3080x2-qwen3-8b", model_folder(base, models, "qwen3-8b", "Qwen/Qwen3-8B"), 1)
    r: dict[str, Any] = {"scenario": "ray1: Qwen3-8B at 40 GB on one GPU, the rank a Ray actor (cluster mode, one node)",
                         "ok": False}
    try:
        import ray  # noqa: F401 - the `ray` command comes with it
    except ImportError:
        return r | {"skipped": "Ray is not installed here (pip install 'ray[default]')"}
    ray_tmp = tempfile.mkdtemp(prefix="lsr", dir="/tmp")  # Ray's socket paths must stay short
    ctx.profile = one_gpu_profile(ctx, "qwen3-8b-ray1", {}, ray_cluster(1, gv.free_port(), ray_tmp, base.simulate))
    sets = budget_sets(ctx, BUDGET_40GB)
    d = ray_node(gv.Daemon(ctx, "ray1", sets), base.simulate, 0)
    try:
        worker_death_and_kill(ctx, d, "ray::RayWorker", r, ("--role", "head"))  # RayWorkerProc (0.26+), RayWorkerWrapper before
        r["ray_processes_anywhere"] = [] if base.simulate else ray_procs_anywhere()
        r["ok"] = r["ok"] and not r["ray_processes_anywhere"]
        return r
    finally:
        d.cleanup()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_procs_anywhere() -> list[str]:
    """Real runs only: any Ray process on this machine (nothing else runs Ray there), known by what
    it runs: an actor's or worker's title (`ray::…`), Ray's daemons, `ray start`. A shell whose
    command line merely mentions them is not one."""
    def is_ray(argv: list[str], _name: str) -> bool:
        if not argv:
            return False
        exe = Path(argv[0]).name
        ray_start = exe == "ray" or (len(argv) > 1 and Path(argv[1]).name == "ray")
        return argv[0].startswith("ray::") or exe in ("raylet", "gcs_server") or ray_start

    return gv.procs_anywhere(is_ray)


def scenario_allreduce(base: gv.Ctx, models: Path) -> dict[str, Any]:
    ctx = context(base, "3080x2-qwen3-8b", model_folder(base, models, "qwen3-8b", "Qwen/Qwen3-8B"), 2)
    sets = [*budget_sets(ctx, BUDGET_20GB),
            "vllm.disable_custom_all_reduce=false"]
    if base.simulate:
        ctx.env["LLM_SUPERVISOR_SIM_FAULT"] = "allreduce_fusion"  # what two H200s showed once
    r: dict[str, Any] = {"scenario": "allreduce: TP 2 with vLLM's all-reduce paths on", "ok": False}
    d = gv.Daemon(ctx, "allreduce", sets)
    try:
        d.plan()
        d.start()
        st = d.wait_ready(timeout=800)
        r["ready"] = kv_figures(d, st, None, d.t0)
        r["failures"] = failures(st)
        r["changes"] = [h.get("change") for h in gv.history_events(st, "relaunch")]
        r["ok"] = st.get("state") == "ready"
    finally:
        d.cleanup()
    return r


def scenario_awq1(base: gv.Ctx, models: Path) -> dict[str, Any]:
    """The 8× A10 profile's quantized model whole on one GPU (TP 1): what vLLM loads for AWQ
    weights, the activation peak of its kernels and the KV that is left, against the planner."""
    ctx = context(base, "a10x8-qwen3-32b-awq", model_folder(base, models, "qwen3-32b-awq", "Qwen/Qwen3-32B-AWQ"), 1)
    sets = [*budget_sets(ctx, BUDGET_40GB), "vllm.tensor_parallel_size=1"]
    r: dict[str, Any] = {"scenario": "awq1: Qwen3-32B-AWQ (awq_marlin, float16) at 40 GB on one GPU, TP 1", "ok": False}
    d = gv.Daemon(ctx, "awq1", sets)
    if not base.simulate:
        d.env["CUDA_VISIBLE_DEVICES"] = "0"
    return serve_and_bench(ctx, d, r, 16)


def scenario_a10x8(base: gv.Ctx, models: Path, tp: int, dp: int) -> dict[str, Any]:
    key = f"tp{tp}" + (f"dp{dp}" if dp > 1 else "")
    ctx = context(base, "a10x8-qwen3-32b-awq", model_folder(base, models, "qwen3-32b-awq", "Qwen/Qwen3-32B-AWQ"), 8)
    sets = [*budget_sets(ctx, BUDGET_24GB),
            f"vllm.tensor_parallel_size={tp}", f"vllm.data_parallel_size={dp}"]
    r: dict[str, Any] = {"scenario": f"{key}: a10x8-qwen3-32b-awq at 24 GB per GPU, TP {tp} × DP {dp}", "ok": False}
    return serve_and_bench(ctx, gv.Daemon(ctx, key, sets), r, 64)


def serve_and_bench(ctx: MultiCtx, d: gv.Daemon, r: dict[str, Any], users: int) -> dict[str, Any]:
    """What awq1, tp8 and tp4dp2 share: the plan (its replica layout), ready, the weights and KV
    figures planned and printed, memory on each GPU, then `bench --users N`."""
    try:
        plan = d.plan()
        r["placement"] = (plan or {}).get("placement", {}).get("layout")
        d.start()
        st = d.wait_ready(timeout=900)
        r["ready"] = kv_figures(d, st, plan, d.t0)
        r["planned_weights_gib"] = gv.predicted(plan).get("weights_gib")
        segments = gv.attempts_in(engine_text(d))
        r["log_weights_gib"] = gv.printed(segments[-1]).get("model_weights_gib") if segments else None
        r["gpu_used_mib_ready"] = used_per_gpu(ctx)
        r[f"bench_{users}"] = bench(ctx, d, users)
        r["ok"] = st.get("state") == "ready" and (r[f"bench_{users}"].get("succeeded") or 0) > 0
    finally:
        d.cleanup()
    return r


RAY_ENV = {"RAY_DISABLE_USAGE_STATS": "1", "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
           "LLM_SUPERVISOR_SIM_RAY_PG_TIMEOUT_S": "60"}


def ray_cluster(nodes: int, gcs_port: int, ray_tmp: str, simulate: bool) -> dict[str, Any]:
    """The profile's `cluster:` section for `nodes` Ray nodes on this host."""
    cluster: dict[str, Any] = {
        "nodes": nodes, "head_address": f"127.0.0.1:{gcs_port}", "temp_dir": ray_tmp,
        "ray_command": shutil.which("ray") or str(Path(sys.executable).parent / "ray"),
        "join_timeout_s": 600, "poll_interval_s": 1, "restart_backoff_initial_s": 1,
        "object_store_memory_bytes": 2 * 2**30}
    if simulate:  # keep Ray light on a small machine
        cluster.update({"num_cpus": 1, "object_store_memory_bytes": 80_000_000})
    return cluster


def ray_node(d: gv.Daemon, simulate: bool, gpu: int) -> gv.Daemon:
    """A daemon as one Ray "host" of this machine: Ray's settings, and a GPU of its own (a
    simulated one, or CUDA_VISIBLE_DEVICES)."""
    d.env.update(RAY_ENV)
    if simulate:
        d.env.update({"LLM_SUPERVISOR_SIM_GPU_DIR": str(d.dir / "gpu"), "LLM_SUPERVISOR_SIM_GPU_COUNT": "1"})
    else:
        d.env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return d


def ray_profile(ctx: MultiCtx, gcs_port: int, ray_tmp: str) -> Path:
    """The 3080x2 profile as two hosts of one GPU each, PP 2 across them on Ray."""
    data = yaml.safe_load(ctx.profile.read_text())
    data["name"] = "3080x2-qwen3-8b-ray"
    data["hardware"]["gpu_count"] = 1
    # the supervisor keeps tensor parallelism within a host (vLLM's advice for Ray): PP 2 spans the two
    data["vllm"].update({"tensor_parallel_size": 1, "pipeline_parallel_size": 2})
    data["cluster"] = ray_cluster(2, gcs_port, ray_tmp, ctx.simulate)
    path = ctx.out / "ray2-profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def scenario_ray2(base: gv.Ctx, models: Path) -> dict[str, Any]:
    ctx = context(base, "3080x2-qwen3-8b", model_folder(base, models, "qwen3-8b", "Qwen/Qwen3-8B"), 2)
    r: dict[str, Any] = {"scenario": "ray2: two Ray nodes of one GPU each, PP 2 across them", "ok": False}
    try:
        import ray  # noqa: F401 - the `ray` command comes with it
    except ImportError:
        return r | {"skipped": "Ray is not installed here (pip install 'ray[default]')"}
    ray_tmp = tempfile.mkdtemp(prefix="lsr", dir="/tmp")  # Ray's socket paths must stay short
    ctx.profile = ray_profile(ctx, gv.free_port(), ray_tmp)
    sets = budget_sets(ctx, BUDGET_20GB)
    head = gv.Daemon(ctx, "ray2-head", sets)
    worker = gv.Daemon(ctx, "ray2-worker", [*sets, f"cluster.node_ip={WORKER_IP}"])
    for i, node in enumerate((head, worker)):
        ray_node(node, ctx.simulate, i)
    try:
        head.start("--role", "head")
        worker.start("--role", "worker")
        st = head.wait_ready(timeout=900)
        r["ready"] = kv_figures(head, st, None, head.t0)
        r["nodes"] = [(n.get("address"), n.get("state"), n.get("gpus")) for n in st.get("nodes") or []]
        r["argv_backend"] = (st.get("argv") or [])[(st.get("argv") or []).index("--distributed-executor-backend") + 1] \
            if "--distributed-executor-backend" in (st.get("argv") or []) else None
        r["gpu_used_mib_ready"] = used_per_gpu(ctx) if not ctx.simulate else None
        t0 = gv.now()
        assert worker.proc is not None
        worker.proc.kill()  # the worker host's supervisor dies; its guard ends Ray there
        worker.proc.wait(30)
        st = head.wait(lambda s: s.get("state") == "degraded", 180, 0.2, "the head degraded")
        r["degraded_after_s"] = round(gv.now() - t0, 2)
        r["degraded_message"] = (st.get("message") or "")[:200]
        worker.start("--role", "worker")
        attempt = st.get("attempt", 1)
        again = head.wait_ready(attempt=attempt + 1, timeout=900)
        r["ready_again_s"] = round(gv.now() - t0, 2)
        r["ready_again"] = kv_figures(head, again, None, t0)
        r["ok"] = r["argv_backend"] == "ray" and bool(r["degraded_after_s"]) and again.get("state") == "ready"
    finally:
        worker.cleanup()
        head.cleanup()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return r


SCENARIOS: dict[str, Callable[[gv.Ctx, Path], dict[str, Any]]] = {
    "mp1": scenario_mp1, "ray1": scenario_ray1, "awq1": scenario_awq1, "tp2": scenario_tp2, "allreduce": scenario_allreduce, "ray2": scenario_ray2,
    "tp8": lambda c, m: scenario_a10x8(c, m, 8, 1), "tp4dp2": lambda c, m: scenario_a10x8(c, m, 4, 2),
}


def summary_table(results: dict[str, Any]) -> str:
    lines = ["| scenario | result | figures |", "|---|---|---|"]
    for r in results.values():
        res = "SKIP" if r.get("skipped") else ("PASS" if r.get("ok") else "FAIL")
        figs = []
        for tag in ("ready", "ready_again"):
            k = r.get(tag) or {}
            if k:
                figs.append(f"{tag}: attempt {k.get('attempt')}, {gv.fmt(k.get('time_to_ready_s'))} s, KV tokens status "
                            f"{gv.fmt(k.get('status_kv_tokens'))} / log {gv.fmt(k.get('log_kv_tokens'))} / planner "
                            f"{gv.fmt(k.get('predicted_kv_tokens'))}")
        for key in ("nodes", "argv_backend", "worker_killed", "degraded_after_s", "death_noticed_s", "death_kind", "ready_again_s", "gpu_used_mib_ready", "gpu_used_mib_after", "failures",
                    "changes", "placement", "planned_weights_gib", "log_weights_gib", "bench_16", "bench_64", "ray_processes_anywhere", "skipped", "error"):
            if r.get(key) not in (None, [], {}):
                figs.append(f"{key} {r[key]}")
        stop = r.get("stop") or {}
        if stop:
            figs.append(f"kill -9 of the daemon: no engine process after {gv.fmt(stop.get('no_engine_process_s'))} s, "
                        f"memory freed after {gv.fmt(stop.get('gpu_memory_freed_s'))} s, left {stop.get('left_over')}")
        lines.append(f"| {r.get('scenario')} | {res} | {'; '.join(str(f) for f in figs)[:1500]} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--simulate", action="store_true", help="the bundled simulator on 8 simulated H200s")
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu-multi-out")
    ap.add_argument("--models", default="/tmp/models")
    ap.add_argument("--cache", default="")
    ap.add_argument("--only", default=",".join(SCENARIOS))
    gv.add_archive_option(ap)
    args = ap.parse_args()
    args.model, args.ignore_hardware_mismatch = "", True
    base = gv.build_ctx(args)
    base.env.update(NO_MULTICAST)
    os.environ.update(NO_MULTICAST)
    if args.simulate:
        base.env.update({"LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H200", "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(H200_MIB),
                         "LLM_SUPERVISOR_SIM_GPU_COUNT": "8"})
        # gv.build_ctx pins the simulator to the GPU machine's vLLM 0.26 (the recipe's version)
        base.total_gib = H200_MIB / 1024
    else:
        base.total_gib = gv.torch_total_gib(base.env, fallback=139.8)
    signal.signal(signal.SIGALRM, gv._alarm)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    have = gpu_count(args.simulate)
    results: dict[str, Any] = {}
    for key in [k.strip() for k in args.only.split(",") if k.strip() in SCENARIOS]:
        if have < NEEDS[key]:
            results[key] = {"scenario": key, "ok": False, "skipped": f"needs {NEEDS[key]} GPUs, {have} here"}
            continue
        print(f"--- {key} (hard limit {LIMITS[key]} s)", flush=True)
        signal.alarm(LIMITS[key])
        try:
            results[key] = SCENARIOS[key](base, Path(args.models))
        except (Exception, gv.ScenarioTimeout) as exc:  # noqa: BLE001 - one scenario's failure is a row
            (base.out / f"error-{key}.txt").write_text("".join(traceback.format_exception(exc)))
            results[key] = {"scenario": key, "ok": False, "error": repr(exc)[:300]}
        finally:
            signal.alarm(0)
        print(f"    {key}: {'PASS' if results[key].get('ok') else 'FAIL'}", flush=True)
    table = summary_table(results)
    (base.out / "summary.md").write_text(table + "\n")
    (base.out / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    gv.archive_if_asked(args.archive, [base.out])
    print(table)
    print(json.dumps({k: {"ok": v.get("ok"), "skipped": v.get("skipped")} for k, v in results.items()}))
    return 0 if all(v.get("ok") or v.get("skipped") for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
