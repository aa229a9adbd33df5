"""Recovery from the startup memory failures: ours against a naive policy and vLLM auto-fit, for
each vLLM version the simulator speaks (0.26's fixed budget, 0.34's extensible KV cache).

Each scenario starts the bundled vLLM simulator (real processes, real log text, a simulated
24 GB RTX 4090 D) with arguments that fail one way (on 0.26; 0.34 may not fail the same way, or
at all: that is what the comparison shows), then lets a policy relaunch it until it is ready or
the policy stops:

* daemon:   the whole product, `supervisor up --simulate`: the planner picks the first launch's
            arguments from the model and the GPU, then recovery handles what still fails.
* recovery: the recovery policy alone, from the profile's (failing) arguments:
            llm_supervisor.vllm.failures.FailureClassifier reads the output, llm_supervisor.vllm.recovery.decide
            computes the next arguments (with the simulated GPU's free memory, as the daemon does).
            This is what the CONTRACT's recovery figure is about: the first launch is wrong.
* naive: halve max_model_len after every failure (what people do by hand, and what several
         launchers do), same attempt limit.
* auto:  vLLM's own `--max-model-len auto` (v0.14+): one launch that fits the context to the KV
         cache; it does not touch utilization and does not retry.

Reported per scenario and policy: ready or not, launches, the final max_model_len and
utilization, KV-cache tokens, the concurrency vLLM reports at that context, and the context kept
as a share of the largest that fits at the final utilization (min(model limit, KV-cache tokens)).
Policy backoff delays are reported, not slept.

    python benchmarks/recovery.py [--only kv_cache_too_small] [--startup-s 1] [--vllm-versions 0.34.0,0.26.0]

Prints one JSON line: per version its scenarios (`versions`), the first version's also as
`scenarios`, and `relaunches`: per scenario and version, the daemon's and the policy's relaunches
and the failures seen. CONTRACT: kv_cache_too_small recovers in one relaunch keeping ≥ 95% of
the largest context that fits (checked for every version).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, base_env, emit, free_port, log, machine_info, tmpdir  # noqa: E402

import httpx  # noqa: E402

from llm_supervisor.planning.launch import SIMULATOR_COMMAND  # noqa: E402
from llm_supervisor.vllm.engine_args import engine_argv  # noqa: E402
from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.profile import Profile, VllmArgs
from llm_supervisor.config.settings import Settings  # noqa: E402

PROFILE = "4090d-qwen3-4b"
TARGET_KEPT = 0.95

VERSIONS = ("0.34.0", "0.26.0")

# name → (profile overrides, simulated-GPU environment, what a user did to get there)
SCENARIOS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "kv_cache_too_small": (["vllm.gpu_memory_utilization=0.5"], {},
                           "util 0.5 to share the card, full 40,960 context"),
    "insufficient_free_memory": ([], {"LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": "6144"},
                                 "another process holds 6 GiB, util 0.9"),
    "free_memory_short": (["recovery.min_gpu_memory_utilization=0.3"], {"LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": "12288"},
                          "another process holds 12 GiB, util 0.9 (bounds 0.3-0.92): what is free cannot hold "
                          "40,960 tokens"),
    "no_kv_cache_memory": (["vllm.gpu_memory_utilization=0.33"], {},
                           "util 0.33: the 7.9 GiB budget holds the 7.6 GiB of weights and nothing more"),
    "cuda_oom": (["vllm.gpu_memory_utilization=0.95"], {},
                 "util 0.95: on 0.26 CUDA graphs no longer fit above the budget"),
    "cuda_oom_at_graph_capture": ([], {"LLM_SUPERVISOR_SIM_FAULT": "oom_at_graph_capture"},
                                  "graph capture runs out of memory whatever the utilization (a fault)"),
}


@dataclass
class Launch:
    argv: list[str]
    ready: bool
    seconds: float
    failure: Any = None  # failures.Failure
    facts: Any = None  # logparse.StartupFacts
    exit_code: int | None = None
    tail: list[str] = field(default_factory=list)


def run_engine(argv: list[str], env: dict[str, str], port: int, timeout: float = 120.0) -> Launch:
    """Start one engine, read its output until ready (then stop it) or exit; classify."""
    from llm_supervisor.vllm.failures import FailureClassifier
    from llm_supervisor.vllm.logparse import LogParser

    clf = FailureClassifier()
    parser = LogParser(sink=clf)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    tail: list[str] = []
    ready = False
    started = False
    deadline = t0 + timeout
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                tail = (tail + [line.rstrip()])[-30:]
                for event in parser.feed(line):
                    if event.kind == "server_started":
                        started = True
            if started:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                        ready = True
                        break
        seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # the group may outlive its leader (EngineCore does): make sure it is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    # drain what is left so the classifier sees the traceback
    while True:
        try:
            line = lines.get(timeout=2.0)
        except queue.Empty:
            break
        if line is None:
            break
        tail = (tail + [line.rstrip()])[-30:]
        parser.feed(line)
    failure = None if ready else clf.classify(proc.returncode, was_ready=False)
    return Launch(argv, ready, seconds, failure, parser.facts, proc.returncode, tail)


def gpu_memory(env: dict[str, str]) -> tuple[float, float]:
    """(free MiB, total MiB) of simulated GPU 0, as NVML would report it now."""
    from llm_supervisor.host import simgpu

    gpu = simgpu.gpus(simgpu.load_config(env))[0]
    return float(gpu.free_mib), float(gpu.total_mib)


def _result(launches: list[Launch], args: VllmArgs | None, derived: int, delays: float,
            decisions: list[str], gave_up: str | None) -> dict[str, Any]:
    last = launches[-1]
    facts = last.facts
    out: dict[str, Any] = {
        "ready": last.ready,
        "launches": len(launches),
        "relaunches": len(launches) - 1,
        "failures": [str(getattr(launch.failure, "kind", "unknown")) for launch in launches if not launch.ready],
        "seconds": round(sum(launch.seconds for launch in launches), 2),
        "policy_delay_s": round(delays, 2),
        "decisions": decisions,
    }
    if gave_up:
        out["gave_up"] = gave_up
    if last.ready and facts is not None:
        ctx = facts.max_concurrency_context or facts.max_model_len or (args.max_model_len if args else None)
        tokens = facts.kv_cache_tokens
        out.update({
            "max_model_len": ctx,
            "gpu_memory_utilization": args.gpu_memory_utilization if args else None,
            "kv_cache_tokens": tokens,
            "max_concurrency": facts.max_concurrency,
        })
        if tokens and ctx:
            largest = min(derived, tokens // 16 * 16)
            out["largest_fitting_context"] = largest
            out["context_kept"] = round(ctx / largest, 4)
    return out


def policy_ours(profile: Profile, env: dict[str, str], derived: int, fit: Any) -> dict[str, Any]:
    from llm_supervisor.vllm.recovery import Attempt, GiveUp, decide

    args = profile.vllm
    history: list[Attempt] = []
    launches: list[Launch] = []
    decisions: list[str] = []
    delays = 0.0
    gave_up = None
    change: dict[str, Any] = {}
    reason = ""
    while True:
        at = time.time()
        launch = run_engine(engine_argv(profile, args, SIMULATOR_COMMAND), env, args.port)
        launches.append(launch)
        if launch.ready:
            break
        if launch.failure is None:
            gave_up = "no failure classified: " + " | ".join(launch.tail[-3:])
            break
        history.append(Attempt(at, args, launch.failure.kind, change, reason, ended_at=time.time()))
        free, total = gpu_memory(env)
        decision = decide(launch.failure, args, profile, history, launch.facts, free, total, fit=fit)
        if isinstance(decision, GiveUp):
            gave_up = decision.reason
            break
        decisions.append(decision.reason)
        change, reason = decision.change, decision.reason
        delays += decision.delay_s
        args = decision.args
    return _result(launches, args, derived, delays, decisions, gave_up)


def _history_failure(entry: dict[str, Any]) -> str | None:
    failure = entry.get("failure")
    if isinstance(failure, dict):
        return failure.get("kind")
    return failure if isinstance(failure, str) else None


def _launch_args(reason: str) -> dict[str, Any]:
    words = reason.split()
    out: dict[str, Any] = {}
    for flag, key, cast in (("--max-model-len", "max_model_len", int),
                            ("--gpu-memory-utilization", "gpu_memory_utilization", float)):
        if flag in words and words.index(flag) + 1 < len(words):
            with contextlib.suppress(ValueError):
                out[key] = cast(words[words.index(flag) + 1])
    return out


def policy_daemon(sets: list[str], gpu_env: dict[str, str], tmp: Path, startup_s: float,
                  derived: int, version: str) -> dict[str, Any]:
    """`supervisor up --simulate` with the scenario's overrides; read the outcome from /status."""
    from _common import Daemon

    env = {"LLM_SUPERVISOR_SIM_STARTUP_S": f"{startup_s:g}", "LLM_SUPERVISOR_SIM_VLLM_VERSION": version, **gpu_env}
    t0 = time.monotonic()
    with Daemon(tmp, sets=sets, env=env) as daemon:
        try:
            snap = daemon.wait_state(("ready", "failed"), timeout=240, fail=())
        except RuntimeError as exc:
            code = daemon.proc.poll() if daemon.proc else None
            if code == 2:  # bad input: the planner refused the arguments before any launch
                lines = [x for x in daemon.tail().splitlines() if x.startswith("error:")]
                return {"ready": False, "launches": 0, "relaunches": 0, "failures": [], "decisions": [],
                        "refused": " ".join(lines) or str(exc)[:500], "seconds": round(time.monotonic() - t0, 2)}
            return {"error": str(exc)[:1500]}
        seconds = time.monotonic() - t0
    hist = snap.get("history") or []
    launches = [h for h in hist if h.get("event") == "launch"]
    failures = [_history_failure(h) for h in hist if h.get("event") == "exit"]
    decisions = [h.get("reason", "") for h in hist if h.get("event") == "relaunch"]
    ready = snap.get("state") == "ready"
    out: dict[str, Any] = {
        "ready": ready,
        "launches": len(launches),
        "relaunches": max(0, len(launches) - 1),
        "failures": failures,
        "seconds": round(seconds, 2),
        "first_launch": _launch_args(launches[0].get("reason", "")) if launches else {},
        "decisions": decisions,
    }
    if not ready:
        out["gave_up"] = snap.get("message") or next((h.get("reason") for h in hist if h.get("event") == "give_up"), None)
        return out
    facts = snap.get("facts") or {}
    ctx = snap.get("max_model_len") or facts.get("max_concurrency_context")
    tokens = snap.get("kv_cache_tokens") or facts.get("kv_cache_tokens")
    out.update({"max_model_len": ctx, "gpu_memory_utilization": snap.get("gpu_memory_utilization"),
                "kv_cache_tokens": tokens, "max_concurrency": snap.get("max_concurrency")})
    if tokens and ctx:
        largest = min(derived, int(tokens) // 16 * 16)
        out["largest_fitting_context"] = largest
        out["context_kept"] = round(int(ctx) / largest, 4)
    return out


def policy_naive(profile: Profile, env: dict[str, str], derived: int) -> dict[str, Any]:
    args = profile.vllm
    launches: list[Launch] = []
    decisions: list[str] = []
    gave_up = None
    while True:
        launch = run_engine(engine_argv(profile, args, SIMULATOR_COMMAND), env, args.port)
        launches.append(launch)
        if launch.ready:
            break
        if len(launches) >= profile.recovery.max_attempts:
            gave_up = f"still failing after {len(launches)} launches ({getattr(launch.failure, 'kind', 'unknown')})"
            break
        length = args.max_model_len or derived
        new = max(16, length // 2)
        decisions.append(f"max_model_len {length} → {new}")
        args = args.model_copy(update={"max_model_len": new})
    return _result(launches, args, derived, 0.0, decisions, gave_up)


def policy_auto(profile: Profile, env: dict[str, str], derived: int) -> dict[str, Any]:
    args = profile.vllm.model_copy(update={"max_model_len": None})
    argv = engine_argv(profile, args, SIMULATOR_COMMAND) + ["--max-model-len", "auto"]
    launch = run_engine(argv, env, args.port)
    gave_up = None if launch.ready else f"failed ({getattr(launch.failure, 'kind', 'unknown')}); auto-fit does not retry"
    return _result([launch], args, derived, 0.0, [], gave_up)


def run_scenario(name: str, tmp: Path, startup_s: float, version: str) -> dict[str, Any]:
    from llm_supervisor.host.modelfiles import load_shape
    from llm_supervisor.host.simgpu import load_config
    from llm_supervisor.planning.launch import fit_context

    sets, gpu_env, story = SCENARIOS[name]
    port = free_port()
    settings = Settings()
    profile = load_profile(PROFILE, settings.profiles_dir, overrides=[*sets, f"vllm.port={port}"])
    shape = load_shape(profile.model.id)
    derived = int(getattr(shape, "context_limit", 0) or shape.max_position_embeddings)
    # the plan's fit context for this version, as the daemon hands it to the policy
    gpu = load_config({"LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA GeForce RTX 4090 D", "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": "24564"})
    fit = fit_context(profile, gpu.total_mib / 1024, 1, gpu_name=gpu.name, vllm_version=version)
    out: dict[str, Any] = {"scenario": story, "start": {"gpu_memory_utilization": profile.vllm.gpu_memory_utilization,
                                                        "max_model_len": profile.vllm.max_model_len}}
    policies: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
        "daemon": lambda env: policy_daemon(sets, gpu_env, tmp / f"{version}-{name}-daemon", startup_s, derived, version),
        "recovery": lambda env: policy_ours(profile, env, derived, fit),
        "naive": lambda env: policy_naive(profile, env, derived),
        "auto": lambda env: policy_auto(profile, env, derived),
    }
    for policy, fn in policies.items():
        # a fresh simulated GPU per policy: no leftovers between them
        env = base_env(tmp / f"{version}-{name}-{policy}", LLM_SUPERVISOR_SIM_STARTUP_S=f"{startup_s:g}",
                       VLLM_CACHE_ROOT=str(tmp / f"vllm-cache-{version}"), LLM_SUPERVISOR_SIM_VLLM_VERSION=version,
                       **gpu_env)
        log(f"recovery: {version}: {name}: {policy}")
        try:
            out[policy] = fn(env)
        except Exception as exc:  # report the broken policy, keep the others
            out[policy] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    first = out["recovery"].get("failures", [None])[:1]
    out["first_failure"] = first[0] if first else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    ap.add_argument("--startup-s", type=float, default=1.0, help="simulated warm start time")
    ap.add_argument("--vllm-versions", default=",".join(VERSIONS), help="the simulator's versions, comma-separated")
    args = ap.parse_args()
    versions = [v.strip() for v in args.vllm_versions.split(",") if v.strip()]
    result: dict[str, Any] = {"benchmark": "recovery", "machine": machine_info(), "profile": PROFILE,
                              "target_context_kept": TARGET_KEPT, "vllm_versions": versions}
    if not (REPO / "llm_supervisor" / "simulator" / "__main__.py").is_file():
        emit({**result, "error": "llm_supervisor/simulator is not runnable yet"})
        return
    with tmpdir("recovery") as tmp:
        result["versions"] = {
            version: {"scenarios": {name: run_scenario(name, tmp, args.startup_s, version)
                                    for name in (args.only or SCENARIOS)}}
            for version in versions}
    result["scenarios"] = result["versions"][versions[0]]["scenarios"]
    result["relaunches"] = relaunch_counts(result["versions"])
    met = []
    for version in versions:
        kv = result["versions"][version]["scenarios"].get("kv_cache_too_small", {}).get("recovery", {})
        if kv:
            met.append(bool(kv.get("ready") and kv.get("relaunches") == 1
                            and (kv.get("context_kept") or 0) >= TARGET_KEPT))
    if met:
        result["meets_target"] = all(met)
    emit(result)


def relaunch_counts(by_version: dict[str, Any]) -> dict[str, Any]:
    """Per scenario and version: relaunches until ready (daemon and policy alone) and the failures seen."""
    out: dict[str, Any] = {}
    for version, data in by_version.items():
        for name, sc in data["scenarios"].items():
            row = out.setdefault(name, {})
            row[version] = {policy: {"ready": sc.get(policy, {}).get("ready"),
                                     "relaunches": sc.get(policy, {}).get("relaunches"),
                                     "failures": sc.get(policy, {}).get("failures")}
                            for policy in ("daemon", "recovery")}
    return out


if __name__ == "__main__":
    main()
