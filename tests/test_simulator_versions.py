"""The simulator speaking vLLM 0.34.0 (its default) against the logs generated from 0.34.0's own
source (tests/fixtures/generated/vllm-0.34.0: the same lines, prefix or none, level, file:line,
wording) and against real vLLM 0.34.0 on an H200 (tests/fixtures/vllm-0.34.0-h200: the same
numbers, for the same GPU and arguments): the extensible KV cache sized after warm-up, no
free-memory check, the KV error before and after warm-up. The generated logs keep 0.26's physical
figures for every version (their README), so only their shapes are compared. Real processes, as
in tests/test_simulator.py (whose helpers this reuses; those tests pin 0.26.0)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from test_simulator import H100, H100_MIB, ROOT, Sim, lines, shape_regex, wait_for
from llm_supervisor.host import simgpu
from llm_supervisor.host.logfiles import diagnose_file

GENERATED = Path(__file__).resolve().parent / "fixtures" / "generated" / "vllm-0.34.0"
REAL = Path(__file__).resolve().parent / "fixtures" / "vllm-0.34.0-h200"
# The H200 as torch saw it ("Free memory on device (139.1/139.8 GiB)"), with the dummy Qwen3-4B
H200 = {"LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(round(139.8 * 1024)), "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H200",
        "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.34.0"}
EXPECTED = json.loads((GENERATED / "expected.json").read_text(encoding="utf-8"))["scenarios"]
ARGS = ["Qwen/Qwen3-4B", "--served-model-name", "qwen3-4b", "--gpu-memory-utilization", "0.3", "--max-model-len", "10000"]
V034 = {**H100, "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.34.0"}
# The generated scenario's free memory at start: 78.66 GiB on an idle H100; another process takes
# it down to 18.15 GiB (insufficient-free-memory) or 11.5 GiB (kv-cache-too-small-after-warmup).
# The simulated GPU's driver baseline (300 MiB) and the engine's CUDA context (227 MiB) come first.
OTHER_FOR_18_15_GIB = str(H100_MIB - 527 - round(18.15 * 1024))
OTHER_FOR_11_5_GIB = str(H100_MIB - 527 - round(11.5 * 1024))


@pytest.fixture
def sims(tmp_path):
    started: list[Sim] = []

    def start(args: list[str], env: dict[str, str] | None = None) -> Sim:
        sim = Sim(tmp_path, args, {**V034, **(env or {})})
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.kill()


def generated_line(name: str, needle: str) -> str:
    for line in (GENERATED / name).read_text(encoding="utf-8").splitlines():
        if needle in line:
            return line.rstrip("\r")
    raise AssertionError(f"{needle!r} not in {name}")


def message(line: str) -> str:
    return line.split("] ", 1)[1] if "] " in line else line


def facts_of(sim: Sim) -> dict:
    result = diagnose_file(sim.log_path)
    return {"outcome": result["outcome"], "facts": result["facts"],
            "failure": result["failure"] and {"kind": result["failure"]["kind"], "values": result["failure"]["values"]}}


def expected(name: str, **drop: object) -> dict:
    entry = EXPECTED[name]
    facts = {k: v for k, v in entry["facts"].items() if k != "engine_init_seconds"}
    failure = entry["failure"] and {"kind": entry["failure"]["kind"], "values": entry["failure"]["values"]}
    return {"outcome": entry["outcome"], "facts": facts, "failure": failure}


def without_timing(got: dict) -> dict:
    got["facts"].pop("engine_init_seconds", None)
    if got["failure"]:
        got["failure"]["values"].pop("gpu", None)
    return got


def test_ready_start_prints_what_vllm_0_34_prints(sims) -> None:
    sim = sims(ARGS)
    sim.wait_ready()
    out = lines(sim.log)
    assert re.search(r"^\(APIServer pid=\d+\) INFO \S+ \S+ \[startup\.py:96\] non-default args: \{", sim.log, re.M)
    for needle in ("Using max model len", "Model loading took",
                   "Available KV cache memory", "Graph capturing finished", "Free memory on device",
                   "Memory after warmup", "GPU KV cache size", "Extended KV cache to", "init engine (profile",
                   "Starting vLLM server on", "Application startup complete."):
        pattern = shape_regex(generated_line("ready.log", needle))
        assert any(pattern.match(ln) for ln in out), f"no line shaped like {pattern.pattern}"
    # from 0.31, uvicorn's lines and tqdm's bars carry no process prefix
    assert "INFO:     Application startup complete." in out
    assert any(ln.startswith("Capturing CUDA graphs (FULL):") for ln in out)
    assert not any("Using V2 Model Runner" in ln or "Asynchronous scheduling" in ln for ln in out)
    assert httpx.get(sim.url + "/version", timeout=5).json() == {"version": "0.34.0", "simulated": True}
    # the engine holds weights, non-torch, graphs, the activation peak and the measured cache (and
    # its CUDA context)
    cfg = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(sim.gpu_dir), **H100})
    kv = float(re.search(r"Extended KV cache to \d+ blocks \(([\d.]+) GiB\)", sim.log).group(1))
    engine = 7.56 + 0.80 + 0.69 + 0.93 + kv
    assert engine < simgpu.held_mib(cfg, 0) / 1024 < engine + 0.5


def real_line(name: str, needle: str, attempt: int = 1) -> str:
    """The first line with `needle` in launch `attempt` of a real H200 log."""
    text = (REAL / name).read_text(encoding="utf-8")
    part = re.split(r"(?m)^===== llm-supervisor attempt \d+ .*$", text)[attempt]
    return next(ln.rstrip("\r") for ln in part.splitlines() if needle in ln)


def after_free(line: str) -> str:
    """A "Memory after warmup" / "Free memory on device" message without the free-memory figures
    (the simulated GPU's CUDA context is not the H200's)."""
    return re.sub(r"\d+\.\d+ GiB free|\(\d+\.\d+/|up to \d+\.\d+ GiB", "…", message(line))


def test_ready_numbers_are_real_vllm_0_34s_on_an_h200(tmp_path) -> None:
    """Util 0.15 and 40,960 tokens, as real vLLM 0.34.0 ran on an H200: the same pre-warm-up
    estimate, post-warm-up sizing (0.80 GiB non-torch, 0.93 peak, 1.04 kept, 0.69 of graphs),
    64-token blocks, tokens and concurrency."""
    sim = Sim(tmp_path, ["Qwen/Qwen3-4B", "--gpu-memory-utilization", "0.15", "--max-model-len", "40960"], H200)
    try:
        sim.wait_ready()
        out = lines(sim.log)
        for needle in ("Available KV cache memory", "Graph capturing finished", "GPU KV cache size",
                       "Extended KV cache to"):
            mine = next(ln for ln in out if needle in ln)
            real = real_line("ready-enginecore-killed-daemon-killed.log", needle)
            assert re.sub(r"in \d+ secs", "", message(mine)) == re.sub(r"in \d+ secs", "", message(real)), needle
        for needle in ("Memory after warmup", "Actual usage is"):
            mine = next(ln for ln in out if needle in ln)
            real = real_line("ready-enginecore-killed-daemon-killed.log", needle)
            mine_cut, real_cut = (after_free(t).split("Replace gpu_memory_utilization")[0] for t in (mine, real))
            assert mine_cut == real_cut, needle
        got = diagnose_file(sim.log_path)["facts"]
        assert (got["kv_cache_tokens"], got["max_concurrency"], got["cuda_graph_gib"]) == (78848, 1.93, 0.69)
    finally:
        sim.kill()


@pytest.mark.parametrize("util, length, attempt", [("0.07", "40960", 1), ("0.09", "20352", 2)])
def test_kv_errors_are_real_vllm_0_34s_on_an_h200(tmp_path, util: str, length: str, attempt: int) -> None:
    """The KV error before warm-up (util 0.07: 0.49 GiB, estimate 3520) and after it (util 0.09,
    20,352 tokens: 2.45 GiB after warm-up, estimate 17856), word for word as the H200 printed them."""
    sim = Sim(tmp_path, ["Qwen/Qwen3-4B", "--gpu-memory-utilization", util, "--max-model-len", length], H200)
    try:
        assert sim.wait_exit(30) == 1
        mine = next(ln for ln in lines(sim.log) if "ValueError: " in ln)
        assert message(mine) == message(real_line("kv-cache-too-small-recovered.log", "ValueError: ", attempt))
    finally:
        sim.kill()


@pytest.mark.parametrize("name,args,env", [
    ("kv-cache-too-small.log", ["Qwen/Qwen3-4B", "--served-model-name", "qwen3-4b", "--gpu-memory-utilization", "0.14"], {}),
    ("no-kv-cache-memory.log", [*ARGS[:4], "0.08", *ARGS[5:]], {}),
    ("kv-cache-too-small-after-warmup.log", ARGS, {"LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": OTHER_FOR_11_5_GIB}),
])
def test_failures_read_as_vllm_0_34_writes_them(sims, name: str, args: list[str], env: dict[str, str]) -> None:
    sim = sims(args, env)
    assert sim.wait_exit(30) == 1
    mine = next(ln for ln in lines(sim.log) if "ValueError: " in ln)
    real = generated_line(name, "ValueError: ")
    number = re.compile(r"\d[\d,.]*")
    assert number.sub("N", message(mine)) == number.sub("N", message(real))  # the same text and hint
    got, want = without_timing(facts_of(sim)), expected(name)
    assert (got["outcome"], got["failure"]["kind"]) == (want["outcome"], want["failure"]["kind"])
    assert set(got["failure"]["values"]) == set(want["failure"]["values"])
    assert re.search(r"^RuntimeError: Engine core initialization failed\. See root cause above\. Failed core proc\(s\): \{\}$",
                     sim.log, re.M)  # unprefixed from 0.31
    assert not sim.group_pids()


def test_short_free_memory_is_a_smaller_cache_not_a_refusal(sims) -> None:
    """0.34 skips 'Free memory … less than desired GPU memory utilization': it starts, and the
    cache gets what the device leaves after warm-up."""
    sim = sims(ARGS, {"LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": OTHER_FOR_18_15_GIB})
    sim.wait_ready()
    assert "less than desired GPU memory utilization" not in sim.log
    mine = message(next(ln for ln in lines(sim.log) if "Memory after warmup" in ln))
    assert shape_regex(generated_line("insufficient-free-memory.log", "Memory after warmup")).match(
        next(ln for ln in lines(sim.log) if "Memory after warmup" in ln))
    # bound by the device: 18.15 free − 9.05 non-KV (7.56 weights, 0.80 non-torch, 0.69 graphs)
    # − 1 GiB margin − 1.04 kept for transients = 7.06 GiB, in whole pages
    kv = float(re.search(r"KV cache blocks \(([\d.]+) GiB\)", mine).group(1))
    assert 6.9 <= kv <= 7.06, mine
    got = facts_of(sim)
    assert got["outcome"] == "ready" and got["failure"] is None


def test_engine_death_exits_0_like_0_34(sims) -> None:
    sim = sims(ARGS)
    sim.wait_ready()
    engine = sim.tree()[0]
    engine.kill()
    assert wait_for(lambda: sim.health() == 503, 5)
    assert sim.wait_exit(10) == 0
    assert "[core_client.py:869] [shutdown] MPClient: engine core exited unexpectedly; starting cleanup" in sim.log
    got = without_timing(facts_of(sim))
    want = expected("engine-dead.log")
    assert (got["outcome"], got["failure"]["kind"]) == (want["outcome"], want["failure"]["kind"]) == ("failed", "engine_dead")
    assert got["facts"]["kv_cache_tokens"] > 0


def test_extensible_cache_off_sizes_as_0_33(sims) -> None:
    """--no-enable-extensible-kv-cache: the free-memory check, the CUDA-graph estimate taken out of
    the budget, default utilization 0.92."""
    sim = sims([*ARGS, "--no-enable-extensible-kv-cache"])
    sim.wait_ready()
    text = sim.log
    # 0.30-0.33's sizing with 0.34's figures: 23.75 − 7.56 weights − 0.80 non-torch − 0.93 peak
    # − 0.66 GiB of CUDA-graph estimate (0.96 × 0.69) = 13.80 GiB, in 64-token blocks (1,570 of
    # them: 10.00 requests of 157 blocks)
    assert "Available KV cache memory: 13.8 GiB" in text
    assert "CUDA graph memory profiling is enabled" in text and "0.66 GiB (estimated)" in text
    assert "GPU KV cache size: 100,480 tokens, Maximum concurrency for 10,000 tokens per request: 10.00x" in text
    assert "Memory after warmup" not in text
    short = sims([*ARGS, "--no-enable-extensible-kv-cache"], {"LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": OTHER_FOR_18_15_GIB})
    assert short.wait_exit(30) == 1
    assert "on startup is less than desired GPU memory utilization (0.3, 23.75 GiB)" in short.log


def test_unset_utilization_takes_the_whole_device_and_a_high_one_warns(sims) -> None:
    whole = sims([a for a in ARGS if a not in ("--gpu-memory-utilization", "0.3")])
    whole.wait_ready()
    assert re.search(r"Desired GPU memory utilization is \(1\.0, 79\.18 GiB\)", whole.log)
    warmup = message(next(ln for ln in lines(whole.log) if "Memory after warmup" in ln))
    # bound by the device: 78.66 free − 9.05 non-KV − 1 GiB margin − 1.04 kept for transients
    assert re.search(r"KV cache blocks \(67\.[45]\d? GiB\)", warmup), warmup
    whole.kill()
    high = sims([*ARGS[:4], "0.9", *ARGS[5:]])
    high.wait_ready()
    assert re.search(r"WARNING \S+ \S+ \[extensible_kv_cache\.py:662\] gpu_memory_utilization=0\.9 caps this instance"
                     r" at 71\.26 GiB, keeping \d+\.\d+ GiB of free device memory out of the KV cache", high.log)


def test_the_simulators_own_version_flag(tmp_path) -> None:
    env = {"PYTHONPATH": str(ROOT), "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"}

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llm_supervisor.simulator", *a], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)

    assert run("--version").stdout.strip() == "0.26.0"  # the environment's
    assert run("--vllm-version", "0.34.0", "--version").stdout.strip() == "0.34.0"  # the flag wins
    assert run("--vllm-version=0.8.5", "-v").stdout.strip() == "0.8.5"
    bad = run("--vllm-version", "newest", "serve", "m")
    assert bad.returncode == 2 and "--vllm-version" in bad.stderr
    # 0.33 has no extensible KV cache and so no flag for it
    old = run("--vllm-version", "0.33.0", "serve", "Qwen/Qwen3-4B", "--no-enable-extensible-kv-cache")
    assert old.returncode == 2 and "unrecognized arguments: --no-enable-extensible-kv-cache" in old.stderr


@pytest.mark.parametrize("args, fixture, real_tokens", [
    (["Qwen/Qwen3-8B", "--gpu-memory-utilization", "0.26", "--max-model-len", "16384"],
     "h200-8b-mp1-worker-killed-ended-on-report.log", 133632),
    (["Qwen/Qwen3-32B", "--gpu-memory-utilization", "0.93", "--max-model-len", "32768"],
     "h200-32b-target-first-launch.log", 265216),
])
def test_larger_shapes_are_sized_near_real_vllm_0_34s(tmp_path, args: list[str], fixture: str, real_tokens: int) -> None:
    """The 8B and 32B shapes as real vLLM 0.34.0 ran them on an H200 (the simulator's 0.34 figures
    were taken from the 4B shape): the same weights and graphs to 0.1 GiB, the cache within 1.5 %."""
    sim = Sim(tmp_path, args, H200)
    try:
        sim.wait_ready()
        got = diagnose_file(sim.log_path)["facts"]
    finally:
        sim.kill()
    real = diagnose_file(REAL / fixture)["facts"]
    assert abs(got["model_weights_gib"] - real["model_weights_gib"]) <= 0.1
    assert abs(got["cuda_graph_gib"] - real["cuda_graph_gib"]) <= 0.1
    assert abs(got["kv_cache_tokens"] / real_tokens - 1) <= 0.015, (got["kv_cache_tokens"], real_tokens)
