"""The supervisor's reading of real vLLM 0.26.0 output, recorded on an H100 by
scripts/gpu-validate.sh (docs/validation.md): the engine logs the daemon wrote, one file per
daemon lifetime, attempts separated by the daemon's `===== llm-supervisor attempt N` lines.

Each attempt is replayed the way the daemon reads it (launcher.split_lines → LogParser with a
FailureClassifier sink), and the facts and failure kinds must be what vLLM printed. The recovery
policy, given the real failure, must decide the relaunch the daemon made on the GPU (the
`change` in each status file's history).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_supervisor.host.logfiles import diagnose_file
from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind
from llm_supervisor.runtime.launcher import split_lines
from llm_supervisor.vllm.logparse import LogParser, StartupFacts
from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.settings import Settings, load_settings
from llm_supervisor.planning.launch import fit_context
from llm_supervisor.vllm.fit import FitContext
from llm_supervisor.vllm.recovery import Attempt, Relaunch, decide

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0"
PROFILE = Path(__file__).parent.parent / "scripts" / "profiles" / "h100-qwen3-4b.yaml"
# NVML's total of the H100 80GB (what the daemon passes to decide); vLLM/torch see 79.18 GiB
NVML_TOTAL_MIB = 81559

READY = "ready-bench-enginecore-killed-daemon-killed"
KV_SMALL = "kv-cache-too-small-recovered"
FREE_SHORT = "free-memory-short-recovered"  # first run: 3 launches (the margin bug, since fixed)
FREE_SHORT_FIXED = "free-memory-short-one-relaunch"  # re-run with the fixed margin
OOM = "oom-while-profiling-recovered"


@dataclass
class Run:
    """One launch as the daemon saw it."""

    number: int
    argv: list[str]
    text: str
    exit_code: int | None
    facts: StartupFacts
    classifier: FailureClassifier

    def flag(self, name: str) -> str | None:
        return self.argv[self.argv.index(name) + 1] if name in self.argv else None

    @property
    def sets(self) -> list[str]:
        out = [f"vllm.gpu_memory_utilization={self.flag('--gpu-memory-utilization')}",
               f"vllm.max_model_len={self.flag('--max-model-len')}"]
        if "--enforce-eager" in self.argv:
            out.append("vllm.enforce_eager=true")
        return out

    def failure(self) -> Failure | None:
        return self.classifier.classify(self.exit_code, self.facts.server_started)


def runs(name: str, folder: Path = FIXTURES) -> list[Run]:
    raw = (folder / f"{name}.log").read_bytes()
    out = []
    for seg in re.split(rb"(?m)^(?====== llm-supervisor attempt )", raw):
        if not seg.startswith(b"===== llm-supervisor attempt "):
            continue
        head = re.match(rb"===== llm-supervisor attempt (\d+) at \S+: (.*)", seg)
        assert head is not None
        classifier = FailureClassifier()
        parser = LogParser(sink=classifier, block_size=16)
        lines, rest = split_lines(b"", seg)
        for line in lines + ([rest.decode()] if rest else []):
            parser.feed(line)
        code = re.search(rb"^===== engine exited with code (\d+)", seg, re.M)
        out.append(Run(int(head.group(1)), head.group(2).decode().split(), seg.decode(errors="replace"),
                       int(code.group(1)) if code else None, parser.facts, classifier))
    return out


def status(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def relaunches(st: dict) -> list[dict]:
    return [h for h in st["history"] if h["event"] == "relaunch"]


def profile(run: Run):
    # The bundled Qwen/Qwen3-4B config is the dummy model's (same shape), so the daemon's
    # model-dependent arithmetic runs here without /tmp/models.
    return load_profile(str(PROFILE), PROFILE.parent, overrides=run.sets, model="Qwen/Qwen3-4B")


def settings_as_on(plan: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose simulated GPU and vLLM are those a plan made on a real machine reports
    (`plan --json`, kept as it came back)."""
    gpu = plan["hardware"]["gpus"][0]
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "gpu"))
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_NAME", gpu["name"])
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB", str(gpu["memory_free_mib"]))
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", plan["vllm_version"])
    return load_settings(state_dir=tmp_path / "state")


def cuda_graph_note(plan: dict) -> str:
    """A plan's one note on prompt steps beyond its CUDA graphs."""
    (text,) = [n for n in plan["notes"] if "beyond the CUDA graphs" in n]
    return text


def history(done: list[Run]) -> list[Attempt]:
    """Attempts as the daemon records them before it decides (launch times a minute apart)."""
    out = []
    for i, r in enumerate(done):
        f = r.failure()
        out.append(Attempt(at=1000.0 + 60 * i, args=profile(r).vllm, failure=f.kind if f else None,
                           reached_ready=r.facts.server_started, ended_at=1000.0 + 60 * i + 55))
    return out


# ---------------------------------------------------------------- what vLLM printed


PRINTED = re.compile(r"GPU KV cache size: ([\d,]+) tokens")
CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
AVAILABLE = re.compile(r"Available KV cache memory: ([\d.]+) GiB")


@pytest.mark.parametrize("name, number, tokens, available, concurrency, context, cached", [
    (READY, 1, 93168, 12.8, 2.27, 40960, False),    # cold torch.compile: 0.80 GiB peak activation
    (READY, 2, 94512, 12.98, 2.31, 40960, True),    # after EngineCore's kill -9: warm, 0.62 GiB
    (KV_SMALL, 2, 6688, 0.92, 1.0, 6672, False),    # the relaunch: new max_model_len, cold compile
    (FREE_SHORT, 2, 58576, 8.04, 5.86, 10000, False),
    (FREE_SHORT, 3, 31104, 4.27, 3.11, 10000, True),
    (OOM, 2, 65696, 9.02, 1.6, 40960, True),
    (FREE_SHORT_FIXED, 2, 47040, 6.46, 4.7, 10000, False),  # a fresh machine: cold
])
def test_startup_facts_are_what_vllm_printed(name, number, tokens, available, concurrency, context, cached):
    run = runs(name)[number - 1]
    f = run.facts
    assert (f.kv_cache_tokens, f.available_kv_cache_gib, f.max_concurrency, f.max_concurrency_context) == (
        tokens, available, concurrency, context)
    # and the same as a plain reading of the lines themselves
    assert int(PRINTED.search(run.text).group(1).replace(",", "")) == tokens
    assert float(AVAILABLE.search(run.text).group(1)) == available
    m = CONCURRENCY.search(run.text)
    assert (int(m.group(1).replace(",", "")), float(m.group(2))) == (context, concurrency)
    assert f.model_weights_gib == 7.56
    assert f.compile_cached is cached
    assert f.vllm_version == "0.26.0"
    # 144 KiB per token (36 layers × 2 × 8 KV heads × 128 × 2 B), rounded to 16-token blocks
    assert abs(available * 1024**3 / (144 * 1024) - tokens) < 0.005 * 1024**3 / (144 * 1024) + 16


def test_status_and_metrics_agree_with_the_log():
    run = runs(READY)[0]
    st = status(f"{READY}.status-1")
    assert st["state"] == "ready" and st["attempt"] == 1
    assert st["kv_cache_tokens"] == run.facts.kv_cache_tokens == 93168
    assert st["max_concurrency"] == run.facts.max_concurrency == 2.27
    assert st["max_concurrency_context"] == 40960
    info = next(line for line in (FIXTURES / "metrics-ready-util0.27.txt").read_text().splitlines()
                if line.startswith("vllm:cache_config_info"))
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
    assert int(labels["kv_cache_size_tokens"]) == 93168
    assert abs(float(labels["kv_cache_max_concurrency"]) - 2.27) < 0.005
    if st.get("kv_cache_tokens_metrics") is not None:
        assert st["kv_cache_tokens_metrics"] == 93168
    st2 = status(f"{READY}.status-2")
    assert (st2["state"], st2["attempt"], st2["kv_cache_tokens"]) == ("ready", 2, runs(READY)[1].facts.kv_cache_tokens)


# ---------------------------------------------------------------- failures


def test_enginecore_kill_after_ready_is_engine_dead_with_exit_code_0():
    run = runs(READY)[0]
    assert run.exit_code == 0  # vLLM's API server exits 0 after EngineDeadError
    failure = run.failure()
    assert failure is not None and failure.kind is FailureKind.ENGINE_DEAD
    assert "EngineDeadError" in failure.message
    ev = relaunches(status(f"{READY}.status-2"))
    assert ev[0]["failure"]["kind"] == "engine_dead"


def test_daemon_sigkill_left_the_second_launch_in_the_log():
    """The daemon was SIGKILLed while attempt 2 served: its output up to then is in the file
    (the log is written per chunk, not kept in a buffer), and no exit line follows."""
    second = runs(READY)[1]
    assert second.exit_code is None and second.facts.server_started
    assert "Application startup complete" in second.text


def test_kv_cache_too_small_values():
    failure = runs(KV_SMALL)[0].failure()
    assert failure.kind is FailureKind.KV_CACHE_TOO_SMALL
    assert failure.values == {"needed_gib": 5.62, "available_gib": 1.1, "max_model_len": 40960,
                              "estimated_max_model_len": 8032}


@pytest.mark.parametrize("name", [FREE_SHORT, FREE_SHORT_FIXED])
def test_free_memory_short_values(name):
    failure = runs(name)[0].failure()
    assert failure.kind is FailureKind.INSUFFICIENT_FREE_MEMORY
    assert failure.values == {"free_gib": 18.15, "total_gib": 79.18, "requested_utilization": 0.3,
                              "requested_gib": 23.75}


@pytest.mark.parametrize("name, number, tried, free", [
    (FREE_SHORT, 2, 298.0, 284.62),  # after graph capture, 60.5 GiB held by another process
    (OOM, 1, 40.0, 6.62),            # another process took the GPU while vLLM profiled
])
def test_real_cuda_oom(name, number, tried, free):
    run = runs(name)[number - 1]
    failure = run.failure()
    assert failure.kind is FailureKind.CUDA_OOM
    assert failure.values["tried_to_allocate_mib"] == tried
    assert failure.values["free_mib"] == free
    assert failure.values["total_gib"] == 79.18
    assert run.exit_code == 1 and not run.facts.server_started


@pytest.mark.parametrize("name, number, kind", [
    (KV_SMALL, 1, "kv_cache_too_small"),
    (FREE_SHORT, 1, "insufficient_free_memory"),
    (FREE_SHORT, 2, "cuda_oom"),
    (OOM, 1, "cuda_oom"),
])
def test_diagnose_names_the_same_failure(tmp_path, name, number, kind):
    path = tmp_path / "attempt.log"
    path.write_text(runs(name)[number - 1].text)
    result = diagnose_file(path)
    assert result["outcome"] == "failed"
    assert result["vllm_version"] == "0.26.0"
    assert result["failure"]["kind"] == kind
    assert result["remedy"] is not None


@pytest.mark.parametrize("name, number, tokens", [(READY, 1, 93168), (KV_SMALL, 2, 6688), (OOM, 2, 65696)])
def test_diagnose_ready_runs(tmp_path, name, number, tokens):
    run = runs(name)[number - 1]
    path = tmp_path / "attempt.log"
    # up to the last line vLLM printed while serving (before the kill or the stop)
    text = run.text.split("Application startup complete.", 1)[0] + "Application startup complete.\n"
    path.write_text(text)
    result = diagnose_file(path)
    assert result["outcome"] == "ready"
    assert result["facts"]["kv_cache_tokens"] == tokens
    assert result["failure"] is None


# ---------------------------------------------------------------- recovery: the relaunches made


def test_engine_death_relaunches_the_same_arguments_after_the_backoff():
    done = runs(READY)[:1]
    failure = done[0].failure()
    decision = decide(failure, profile(done[0]).vllm, profile(done[0]), history(done), done[0].facts,
                      gpu_free_mib=NVML_TOTAL_MIB, gpu_total_mib=NVML_TOTAL_MIB)
    assert isinstance(decision, Relaunch)
    assert decision.change == {} and decision.delay_s == 1.0  # recovery.backoff_initial_s
    assert relaunches(status(f"{READY}.status-2"))[0]["change"] is None


def fit_for(prof) -> FitContext:
    return fit_context(prof, NVML_TOTAL_MIB / 1024, 1, gpu_name="NVIDIA H100 80GB HBM3", vllm_version="0.26.0")


def test_kv_too_small_after_a_warm_start_is_cut_for_the_cold_relaunch():
    """vLLM estimated 8032 tokens during a warm start; the relaunch with a new max_model_len
    compiles cold (0.18 GiB more activation) and held 6688. The daemon launched 6672."""
    first, relaunch = runs(KV_SMALL)
    prof = profile(first)
    failure = first.failure()
    decision = decide(failure, prof.vllm, prof, history([first]), first.facts,
                      gpu_free_mib=NVML_TOTAL_MIB, gpu_total_mib=NVML_TOTAL_MIB)
    assert isinstance(decision, Relaunch)
    assert decision.args.max_model_len == 8032  # vLLM's estimate, which no longer fits …
    assert decision.args.max_model_len > relaunch.facts.kv_cache_tokens
    cut = decide(failure, prof.vllm, prof, history([first]), first.facts,
                 gpu_free_mib=NVML_TOTAL_MIB, gpu_total_mib=NVML_TOTAL_MIB, fit=fit_for(prof))
    assert isinstance(cut, Relaunch)
    assert cut.args.max_model_len == 6672  # … what the daemon launched on the GPU
    assert "8032" in cut.reason and "warm start" in cut.reason
    assert relaunches(status(f"{KV_SMALL}.status"))[0]["change"] == {"max_model_len": [40960, 6672]}
    fit = relaunch.facts.kv_cache_tokens  # the largest context the cold relaunch held
    assert 0.95 * fit <= cut.args.max_model_len <= fit
    assert relaunch.facts.server_started and relaunch.number == 2


def test_cold_start_estimate_is_not_cut():
    """From a cold first launch (the shared reference log) vLLM's estimate stands as it is."""
    first = runs(KV_SMALL)[0]
    facts = StartupFacts(compile_cached=False, vllm_version="0.26.0")
    prof = profile(first)
    failure = first.failure()
    decision = decide(failure, prof.vllm, prof, history([first]), facts)
    same = decide(failure, prof.vllm, prof, history([first]), facts, fit=fit_for(prof))
    assert isinstance(same, Relaunch) and isinstance(decision, Relaunch)
    assert (same.args, same.change, same.reason) == (decision.args, decision.change, decision.reason)


def test_free_memory_short_lowers_utilization_from_free_memory():
    """NVML showed 18.67 GiB free after the failed start, vLLM had printed 18.15 of 79.18: the
    relaunch must leave room for the CUDA graphs vLLM captures above its budget."""
    first, relaunch = runs(FREE_SHORT_FIXED)
    prof = profile(first)
    decision = decide(first.failure(), prof.vllm, prof, history([first]), first.facts,
                      gpu_free_mib=18.67 * 1024, gpu_total_mib=NVML_TOTAL_MIB)
    assert isinstance(decision, Relaunch)
    assert decision.change == {"gpu_memory_utilization": [0.3, 0.19]}
    st = status(f"{FREE_SHORT_FIXED}.status")
    assert relaunches(st)[0]["change"] == decision.change
    assert (st["state"], st["attempt"], st["kv_cache_tokens"]) == ("ready", 2, relaunch.facts.kv_cache_tokens)
    assert relaunch.facts.server_started


def test_free_memory_short_relaunch_leaves_room_above_the_budget():
    """What the engine used above util × 79.18 GiB when it ran out in the first run (its OOM
    message, plus the allocation that failed) must fit in vLLM's free 18.15 GiB next to the new
    budget. The first run's 0.21 did not (it needed a third launch); today's choice does."""
    first, second, _ = runs(FREE_SHORT)
    assert relaunches(status(f"{FREE_SHORT}.status"))[0]["change"] == {"gpu_memory_utilization": [0.3, 0.21]}
    in_use = float(re.search(r"this process has ([\d.]+) GiB memory in use", second.text).group(1))
    above = in_use - 0.21 * 79.18 + 298 / 1024
    assert 0.21 * 79.18 + above > 18.15
    prof = profile(first)
    decision = decide(first.failure(), prof.vllm, prof, history([first]), first.facts,
                      gpu_free_mib=18.67 * 1024, gpu_total_mib=NVML_TOTAL_MIB)
    assert decision.args.gpu_memory_utilization * 79.18 + above <= 18.15


def test_oom_after_graph_capture_steps_utilization_down():
    first, second = runs(FREE_SHORT)[:2]
    prof = profile(second)
    decision = decide(second.failure(), prof.vllm, prof, history([first, second]), second.facts,
                      gpu_free_mib=18.67 * 1024, gpu_total_mib=NVML_TOTAL_MIB)
    assert isinstance(decision, Relaunch)
    assert decision.change == {"gpu_memory_utilization": [0.21, 0.16]}
    assert relaunches(status(f"{FREE_SHORT}.status"))[1]["change"] == decision.change


def test_oom_while_profiling_steps_utilization_down():
    first = runs(OOM)[0]
    prof = profile(first)
    free_mib = NVML_TOTAL_MIB - 529  # the other process had let go, keeping its CUDA context
    decision = decide(first.failure(), prof.vllm, prof, history([first]), first.facts,
                      gpu_free_mib=free_mib, gpu_total_mib=NVML_TOTAL_MIB)
    assert isinstance(decision, Relaunch)
    assert decision.change == {"gpu_memory_utilization": [0.27, 0.22]}
    assert relaunches(status(f"{OOM}.status"))[0]["change"] == decision.change
    assert runs(OOM)[1].facts.server_started


def test_every_recovery_took_one_relaunch_but_the_first_free_memory_run():
    attempts = {name: status(f"{name}.status")["attempt"] for name in (KV_SMALL, OOM, FREE_SHORT, FREE_SHORT_FIXED)}
    assert attempts == {KV_SMALL: 2, OOM: 2, FREE_SHORT: 3, FREE_SHORT_FIXED: 2}


# ---------------------------------------------------------------- bench and planner (re-run)

RERUN = "validation-summary-bench-planner-rerun"  # scenarios 1 and 8 again, after the bench and planner fixes
CUDA_TOTAL_MIB = 81079  # NVML v2 on the H100: total 81,559 − reserved 480 = torch's 79.18 GiB


def test_bench_measures_ttft_and_decode_rate_with_textless_tokens():
    """The dummy model's tokens decode to empty text; bench counts them from vLLM's per-chunk
    usage, so TTFT, the per-user decode rate and the observed concurrency are real figures."""
    b = status("bench-16-users")
    assert (b["users"], b["requests"], b["max_tokens"]) == (16, 64, 64)
    assert (b["succeeded"], b["failed"], b["success_rate"]) == (64, 0, 1.0)
    assert b["total_tokens"] == 64 * 64
    assert abs(b["tokens_per_s"] - b["total_tokens"] / b["duration_s"]) < 0.01 * b["tokens_per_s"]
    ttft, lat = b["ttft_s"], b["latency_s"]
    assert all(ttft[k] is not None for k in ("p50", "p95", "p99", "mean", "max"))
    assert 0 < ttft["p50"] <= ttft["p95"] <= ttft["p99"] <= ttft["max"]
    assert ttft["max"] < lat["p50"]  # the first token comes well before the end of 64
    assert ttft["p50"] < 0.25  # 16 short prompts on an H100: tens of milliseconds
    # 63 tokens after the first, over the time from the first token to the end of the stream
    rate = b["per_user_tokens_per_s"]
    assert rate is not None and abs(rate - 63 / (lat["mean"] - ttft["mean"])) < 0.05 * rate
    assert rate > b["per_user_e2e_tokens_per_s"] > 0  # the e2e rate includes TTFT
    assert rate * b["users"] > b["tokens_per_s"]  # each user's decode rate, times 16, above the whole run's
    assert b["peak_concurrency_observed"] == b["peak_in_flight"] == b["engine_running_peak"] == 16
    assert b["engine_max_concurrency"] == 2.27
    assert "Up to 16 of 16" in b["comparison"]


def test_planner_predicts_the_cold_ready_run_from_the_cuda_visible_total():
    """Launch 1 (util 0.27, len 40960, cold compile): vLLM printed 12.80 GiB / 93,168 tokens.
    With NVML's total (81,559 MiB) the planner said 12.91 / 94,032; with the CUDA-visible total
    it is within 0.02 GiB and 0.1 % of the tokens, on the GPU and here."""
    from llm_supervisor.host.modelfiles import load_shape
    from llm_supervisor.vllm.fit import predict
    from llm_supervisor.config.profile import VllmArgs

    printed = runs(READY)[0].facts
    assert (printed.available_kv_cache_gib, printed.kv_cache_tokens) == (12.8, 93168)
    row = status(RERUN)["results"]["7"]["rows"][0]
    on_gpu, seen = row["predicted"], row["vllm_printed"]
    assert (seen["available_kv_cache_gib"], seen["kv_cache_tokens"]) == (12.8, 93168)  # the re-run printed the same
    assert on_gpu["gpu_total_gib"] == 79.18 and on_gpu["compile_cold"] is True
    assert (on_gpu["available_kv_cache_gib"], on_gpu["kv_cache_tokens"]) == (12.79, 93104)
    args = VllmArgs(gpu_memory_utilization=0.27, max_model_len=40960)
    here = predict(load_shape("Qwen/Qwen3-4B"), args, CUDA_TOTAL_MIB / 1024, 1, gpu_name="NVIDIA H100 80GB HBM3",
                   vllm_version="0.26.0")
    assert here.kv_cache_tokens == on_gpu["kv_cache_tokens"]
    assert abs(here.available_kv_cache_gib - printed.available_kv_cache_gib) < 0.02
    assert abs(here.kv_cache_tokens - printed.kv_cache_tokens) < 0.001 * printed.kv_cache_tokens
    old = predict(load_shape("Qwen/Qwen3-4B"), args, NVML_TOTAL_MIB / 1024, 1, gpu_name="NVIDIA H100 80GB HBM3",
                  vllm_version="0.26.0")
    assert old.kv_cache_tokens - printed.kv_cache_tokens > 800  # the error the fix removed (94,032)
