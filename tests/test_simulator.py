"""The bundled vLLM simulator against real vLLM 0.26.0 behaviour (tests/fixtures/vllm-0.26.0-h100).

Real processes throughout: each test starts `python -m llm_supervisor.simulator serve …` in its own
session on a free port with its own simulated GPU folder and compile cache, and kills the whole
process group afterwards (an orphaned EngineCore keeps the group alive until then).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llm_supervisor.host import simgpu
from llm_supervisor.simulator import memory
from llm_supervisor.simulator.args import parse
from llm_supervisor.vllm.cudagraphs import capture_sizes
from llm_supervisor.simulator.config import resolve
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.vllm.failures import FailureClassifier, FailureKind
from llm_supervisor.simulator.memory import GIB, KvSizing, ShapeFacts

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm-0.26.0-h100"
H100_MIB = 81079  # 79.18 GiB as NVML reports an H100 80GB
QWEN3_4B = ShapeFacts(num_layers=36, hidden_size=2560, intermediate_size=9728, num_heads=32, num_kv_heads=8,
                      head_dim=128, vocab_size=151936, dtype_bytes=2)
KV_PER_TOKEN = 36 * 2 * 8 * 128 * 2  # 144 KiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Sim:
    """One simulator process group."""

    def __init__(self, tmp: Path, args: list[str], env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.log_path = tmp / f"sim-{self.port}.log"
        self.gpu_dir = tmp / "gpu"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_SUPERVISOR_SIM_", "VLLM_"))}
        full_env.update({
            "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
            "LLM_SUPERVISOR_SIM_GPU_DIR": str(self.gpu_dir), "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
            "LLM_SUPERVISOR_SIM_STARTUP_S": "0.2", "LLM_SUPERVISOR_SIM_DEATH_GRACE_S": "1",
            # these tests hold the simulator to the real 0.26.0 logs; 0.34 has tests/test_simulator_versions.py
            "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0",
        })
        full_env.update(env or {})
        self.env = full_env
        argv = [sys.executable, "-m", "llm_supervisor.simulator", "serve", *args]
        if "--port" not in args:
            argv += ["--port", str(self.port)]
        self.fh = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=self.fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pgid = self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def health(self) -> int | None:
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = 30) -> None:
        ok = wait_for(lambda: self.health() == 200 or self.proc.poll() is not None, timeout)
        assert ok and self.proc.poll() is None, f"simulator not ready (rc={self.proc.poll()}):\n{self.log[-3000:]}"

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"simulator still running after {timeout}s:\n{self.log[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def group_pids(self) -> list[int]:
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == self.pgid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        return out

    def kill(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        wait_for(lambda: not self.group_pids(), 10)
        self.fh.close()


@pytest.fixture
def sims(tmp_path):
    started: list[Sim] = []

    def start(args: list[str], env: dict[str, str] | None = None, port: int | None = None) -> Sim:
        sim = Sim(tmp_path, args, env, port)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.kill()


H100 = {"LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(H100_MIB), "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H100 80GB HBM3"}
FIXTURE_ARGS = ["Qwen/Qwen3-4B", "--served-model-name", "q4b", "--gpu-memory-utilization", "0.30",
                "--max-model-len", "10000", "--load-format", "dummy"]


def fixture_line(name: str, needle: str) -> str:
    for line in (FIXTURES / name).read_text().splitlines():
        if needle in line:
            return line.rstrip("\r")
    raise AssertionError(f"{needle!r} not in {name}")


def shape_regex(line: str) -> re.Pattern[str]:
    """A real log line turned into a pattern: same prefix kind, level, file:line and wording;
    pids, timestamps, numbers and paths free."""
    text = re.sub(r"^\((\w+) pid=\d+\) ", r"(\1 pid=<N>) ", line)
    text = re.sub(r"\d\d-\d\d \d\d:\d\d:\d\d", "<TS>", text)
    parts = re.split(r"(<N>|<TS>|-?\d[\d,]*(?:\.\d+)?)", text)
    out = ""
    for part in parts:
        if part in ("<N>", "<TS>") or re.fullmatch(r"-?\d[\d,]*(?:\.\d+)?", part or "x"):
            out += {"<TS>": r"\d\d-\d\d \d\d:\d\d:\d\d"}.get(part, r"-?\d[\d,]*(?:\.\d+)?")
        else:
            out += re.escape(part)
    return re.compile("^" + out + "$")


def lines(text: str) -> list[str]:
    return [ln.rstrip("\r") for ln in text.splitlines()]


# ---------------------------------------------------------------- pure memory model


def test_memory_model_reproduces_the_h100_numbers():
    weights = 7.56 * GIB
    requested = memory.requested_bytes(H100_MIB, 0.30)
    assert f"{requested / GIB:.2f}" == "23.75"
    for cold, avail_text, tokens, conc in ((True, "15.17", 110_464, "11.0464"), (False, "15.36", 111_808, "11.1808")):
        act = memory.activation_bytes(QWEN3_4B, 1, 8192, cold)
        available = requested - (7.492430686950684 * GIB + memory.LOAD_OVERHEAD_BYTES) - act - memory.NON_TORCH_BYTES
        sizing = KvSizing(int(available), KV_PER_TOKEN, 16, 36)
        assert memory.format_gib(available) == avail_text
        assert sizing.tokens == tokens and sizing.tokens % 16 == 0
        assert str(memory.max_concurrency(sizing.num_blocks, 16, 10_000)) == conc
    assert abs(weights - (7.492430686950684 * GIB + memory.LOAD_OVERHEAD_BYTES)) < 0.01 * GIB
    assert memory.format_gib(memory.activation_bytes(QWEN3_4B, 1, 8192, False)) == "0.62"
    assert memory.format_gib(memory.activation_bytes(QWEN3_4B, 1, 8192, True)) == "0.8"
    assert memory.torch_format_size(memory.largest_activation_bytes(QWEN3_4B, 1, 8192)) == "304.00 MiB"


def test_estimated_max_model_len_is_vllms_binary_search():
    sizing = KvSizing(int(0.9194 * GIB), KV_PER_TOKEN, 16, 36)
    assert memory.format_gib(sizing.request_bytes(40960)) == "5.62"
    assert sizing.estimate_max_model_len(40960) == 6688  # the real log's estimate
    assert sizing.fits(6688) and not sizing.fits(6689)
    assert KvSizing(-1, KV_PER_TOKEN, 16, 36).estimate_max_model_len(40960) == 0


def test_cli_matches_vllm_non_default_args_and_rejects_unknown_flags(capsys):
    _, shown = parse(["/models/qwen3-4b-shape", "--port", "8002", "--max-model-len", "10000",
                      "--served-model-name", "q4b", "--load-format", "dummy", "--gpu-memory-utilization", "0.3"])
    real = fixture_line("ready-then-sigterm.log", "non-default args").split("non-default args: ", 1)[1]
    assert f"{shown}" == real
    _, shown = parse(["m", "--api-key", "s3cret", "--max-model-len", "32k", "--no-enable-prefix-caching"])
    assert "s3cret" not in f"{shown}" and shown["max_model_len"] == 32000 and shown["enable_prefix_caching"] is False
    with pytest.raises(SystemExit) as exc:
        parse(["m", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_cli_takes_the_cuda_graph_capture_flags_as_vllm_0_26_did():
    """The real launch with --max-cudagraph-capture-size 1024 (its --enable-logging-iteration-details
    left out: the simulator logs no engine iterations, so it does not take that flag)."""
    real_line = (FIXTURES / "h100-4b-mixed1024.startup.log").read_text()
    real = ast.literal_eval(real_line.split("non-default args: ", 1)[1].split("\n", 1)[0].strip())
    del real["enable_logging_iteration_details"]
    _, shown = parse(["/tmp/models/qwen3-4b", "--host", "127.0.0.1", "--port", "52147", "--served-model-name",
                      "qwen3-4b", "--gpu-memory-utilization", "0.9", "--max-model-len", "8192", "--load-format",
                      "dummy", "--max-cudagraph-capture-size", "1024"])
    assert list(shown.items()) == list(real.items())
    ns, _ = parse(["m", "--cudagraph-capture-sizes", "1", "2", "4", "8"])
    assert ns.cudagraph_capture_sizes == [1, 2, 4, 8]


@pytest.mark.parametrize(("flags", "sizes", "top"), [
    ([], 51, 512),
    (["--max-cudagraph-capture-size", "1024"], 83, 1024),
    (["--max-num-seqs", "16"], 7, 32),
    (["--cudagraph-capture-sizes", "1", "8", "640"], 3, 640),
])
def test_the_capture_sizes_follow_vllms_rule(flags, sizes, top):
    """min(2 × max_num_seqs, 512) by default (51 sizes on the real H100), the flag's ceiling with
    the same grid (83 up to 1,024 on the real H100), or the sizes given."""
    ns, _ = parse(["m", *flags])
    got = capture_sizes(ns.max_num_seqs or 1024, 8192, ns.max_cudagraph_capture_size, ns.cudagraph_capture_sizes or ())
    assert (len(got), max(got)) == (sizes, top)


def test_a_start_with_graphs_to_1024_tokens_logs_what_the_real_h100_logged(sims):
    sim = sims([*FIXTURE_ARGS, "--max-cudagraph-capture-size", "1024"], H100)
    sim.wait_ready()
    text = sim.log_path.read_text()
    assert "'max_cudagraph_capture_size': 1024" in text
    assert "Capturing CUDA graphs (PIECEWISE): 100%|██████████| 83/83" in text
    assert re.search(r"Graph capturing finished in \d+ secs, took 1\.32 GiB", text)
    assert "GPU KV cache size: 110,464 tokens" in text  # on 0.26 the graphs sit outside the budget


def test_graphs_captured_to_1024_tokens_take_what_the_real_h100_took():
    base = memory.graph_bytes(QWEN3_4B, 1, 36, False, sizes=tuple(capture_sizes(1024, 8192)))
    wide = memory.graph_bytes(QWEN3_4B, 1, 36, False, sizes=tuple(capture_sizes(1024, 8192, 1024)))
    assert (memory.format_gib(base), memory.format_gib(wide)) == ("1.0", "1.32")  # as vLLM prints them


# ---------------------------------------------------------------- startup, as vLLM logs it


def test_ready_start_logs_like_real_vllm_and_sigterm_exits_cleanly(sims, tmp_path):
    sim = sims(FIXTURE_ARGS, H100)
    sim.wait_ready()
    tree = sim.tree()
    assert [p.name() for p in tree] == ["VLLM::EngineCore"]
    engine = tree[0]
    assert engine.ppid() == sim.proc.pid and os.getpgid(engine.pid) == sim.pgid  # no session of its own
    out = lines(sim.log)
    assert any("SIMULATED vLLM: no GPU is used" in ln and " WARNING " in ln for ln in out)
    # every key line of the real cold start has a counterpart of the same shape: prefix, level,
    # file:line and wording equal, only pids, times and numbers free
    for needle in ("Using max model len", "Model loading took", "Available KV cache memory", "GPU KV cache size",
                   "Maximum concurrency for", "Graph capturing finished", "init engine (profile",
                   "Cache the graph of compile range", "Starting vLLM server on", "Application startup complete."):
        pattern = shape_regex(fixture_line("ready-then-enginecore-killed.log", needle))
        assert any(pattern.match(ln) for ln in out), f"no line shaped like {pattern.pattern}"
    for needle in ("non-default args: {", "Initializing a V1 LLM engine (v0.26.0) with config: model="):
        real = fixture_line("ready-then-enginecore-killed.log", needle)
        head = shape_regex(real[:real.index(needle) + len(needle)])
        assert any(head.match(ln[:ln.index(needle) + len(needle)]) for ln in out if needle in ln), needle
    # the numbers of the real cold start (compile cache empty): exactly the H100 fixture's
    text = "\n".join(out)
    assert "Model loading took 7.56 GiB" in text
    assert "Available KV cache memory: 15.17 GiB" in text
    assert "GPU KV cache size: 110,464 tokens" in text
    assert "Maximum concurrency for 10,000 tokens per request: 11.05x" in text
    assert re.search(r"Graph capturing finished in \d+ secs, took 1\.00 GiB", text)
    summary = fixture_line("ready-then-enginecore-killed.log", "Desired GPU memory utilization")
    mine = next(ln for ln in out if "Desired GPU memory utilization" in ln)
    exact_bytes = re.compile(r"--kv-cache-memory=\d+")  # bytes differ by <0.01%; the GiB shown are equal
    assert exact_bytes.sub("", mine.split("] ", 1)[1]) == exact_bytes.sub("", summary.split("] ", 1)[1])
    # the multi-line logo record keeps vLLM's \r\n
    raw = sim.log_path.read_bytes()
    assert b"[api_utils.py:345] \r\n" in raw and b"version 0.26.0\r\n" in raw
    # /metrics carries the same cache_config_info as the real server
    metrics = httpx.get(sim.url + "/metrics", timeout=5).text
    info = next(ln for ln in metrics.splitlines() if ln.startswith("vllm:cache_config_info{"))
    real_info = next(ln for ln in (FIXTURES / "metrics-ready.txt").read_text().splitlines()
                     if ln.startswith("vllm:cache_config_info{"))
    assert info == real_info
    assert httpx.get(sim.url + "/version", timeout=5).json() == {"version": "0.26.0", "simulated": True}
    models = httpx.get(sim.url + "/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == "q4b" and models["data"][0]["max_model_len"] == 10000
    # the engine holds its memory on the simulated GPU: context + weights + activation + KV + graphs
    cfg = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(sim.gpu_dir), **H100})
    held = simgpu.held_mib(cfg, 0)
    assert 15.17 + 7.56 + 1.0 < held / 1024 < 26.5

    pids = [sim.proc.pid, engine.pid]
    sim.proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert sim.wait_exit(10) == 0
    assert time.monotonic() - start < 5
    assert wait_for(lambda: not any(alive(p) for p in pids), 5)
    assert simgpu.held_mib(cfg, 0) == 0
    out = sim.log
    for needle in ("[shutdown] API server: shutdown triggered", "[shutdown] EngineCore: trigger received signal=SIGTERM",
                   "Application shutdown complete."):
        assert needle in out


def test_warm_start_loads_the_compile_cache_and_gets_the_warm_numbers(sims, tmp_path):
    # a model folder with a config.json, as in the real run (`vllm serve /models/qwen3-4b-shape`)
    folder = tmp_path / "qwen3-4b-shape"
    folder.mkdir()
    (folder / "config.json").write_bytes((ROOT / "llm_supervisor/data/models/Qwen--Qwen3-4B.json").read_bytes())
    args = [str(folder), *FIXTURE_ARGS[1:]]
    cold = sims(args, H100)
    cold.wait_ready()
    assert "Available KV cache memory: 15.17 GiB" in cold.log
    real = fixture_line("ready-then-sigterm.log", "Initializing a V1 LLM engine").split("] ", 1)[1]
    mine = next(ln for ln in lines(cold.log) if "Initializing a V1 LLM engine" in ln).split("] ", 1)[1]
    assert mine.replace(str(folder), "/models/qwen3-4b-shape") == real  # every config field as vLLM prints it
    cold.kill()
    warm = sims(args, H100)
    warm.wait_ready()
    text = warm.log
    assert "Directly load the compiled graph(s) for compile range (1, 8192) from the cache" in text
    assert "Available KV cache memory: 15.36 GiB" in text
    assert "GPU KV cache size: 111,808 tokens" in text
    assert "Maximum concurrency for 10,000 tokens per request: 11.18x" in text
    assert "0.62 GiB for peak activation" in text


def test_kv_cache_too_small_fails_like_the_real_log(sims):
    sim = sims(["Qwen/Qwen3-4B", "--served-model-name", "q4b", "--gpu-memory-utilization", "0.12"], H100)
    assert sim.wait_exit(30) == 1
    out = lines(sim.log)
    real = fixture_line("kv-cache-too-small.log", "ValueError: To serve")
    mine = [ln for ln in out if "ValueError: To serve" in ln]
    assert mine and mine[0].split("] ", 1)[1] == real.split("] ", 1)[1]  # same text, same numbers
    assert "estimated maximum model length is 6688" in mine[0]
    assert any(re.match(r"^\(EngineCore pid=\d+\) ERROR \S+ \S+ \[core\.py:1330\] EngineCore failed to start\.$", ln)
               for ln in out)
    assert out[-1] == re.sub(r"pid=\d+", f"pid={sim.proc.pid}",
                             fixture_line("kv-cache-too-small.log", "RuntimeError: Engine core initialization"))
    assert "Available KV cache memory: 0.92 GiB" in sim.log
    assert not sim.group_pids()


def test_no_memory_for_cache_blocks_below_the_weights(sims):
    sim = sims(["Qwen/Qwen3-4B", "--gpu-memory-utilization", "0.08"], H100)
    assert sim.wait_exit(30) == 1
    assert ("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
            "initializing the engine (this flag also controls CPU memory reservation on the CPU backend, despite its "
            "name). See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.") in sim.log
    assert "RuntimeError: Engine core initialization failed." in sim.log


def test_free_memory_below_requested_utilization(sims):
    env = {**H100, "LLM_SUPERVISOR_SIM_GPU_OTHER_MIB": "70000"}
    sim = sims(FIXTURE_ARGS, env)
    assert sim.wait_exit(30) == 1
    m = re.search(r"ValueError: Free memory on device cuda:0 \(([\d.]+)/79\.18 GiB\) on startup is less than desired "
                  r"GPU memory utilization \(0\.3, 23\.75 GiB\)\. Decrease GPU memory utilization or reduce GPU memory"
                  r" used by other processes\.", sim.log)
    assert m, sim.log[-2000:]
    assert abs(float(m.group(1)) - (H100_MIB - 70000 - 300 - memory.CONTEXT_BYTES // memory.MIB) / 1024) < 0.02


def test_bad_input_fails_fast_with_vllms_errors(sims):
    unknown = sims(["Org/no-such-model"])
    flag = sims(["Qwen/Qwen3-4B", "--no-such-flag"])
    start = time.monotonic()
    assert unknown.wait_exit(15) == 1
    assert flag.wait_exit(15) == 2
    assert time.monotonic() - start < 10  # no engine is started for these
    assert "Invalid repository ID or local directory specified: 'Org/no-such-model'." in unknown.log
    assert "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig" in unknown.log
    assert "EngineCore" not in unknown.log
    assert "vllm serve: error: unrecognized arguments: --no-such-flag" in flag.log


def test_capture_sizes_vllm_refuses_fail_in_the_api_server_as_bad_arguments(sims):
    """A flag beside its compilation config key, and a largest size that is not the sizes' own: real
    vLLM refuses both while it builds its config, before any engine starts."""
    both = sims(["Qwen/Qwen3-4B", "--max-cudagraph-capture-size", "1024",
                 "--compilation-config", '{"max_cudagraph_capture_size": 512}'])
    apart = sims(["Qwen/Qwen3-4B", "--compilation-config", '{"cudagraph_capture_sizes": [1, 8, 640]}',
                  "--max-cudagraph-capture-size", "1024"])
    assert both.wait_exit(15) == 1 and apart.wait_exit(15) == 1
    assert ("ValueError: max_cudagraph_capture_size and compilation_config.max_cudagraph_capture_size are mutually "
            "exclusive") in both.log
    assert ("Value error, customized max_cudagraph_capture_size(=1024) should be consistent with the max value of "
            "cudagraph_capture_sizes(=640)") in apart.log
    for sim in (both, apart):
        assert "EngineCore" not in sim.log
        classifier = FailureClassifier()
        for line in sim.log.splitlines():
            classifier.feed(line)
        failure = classifier.classify(1, False)
        assert failure is not None and failure.kind is FailureKind.BAD_ARGUMENTS, sim.log[-1500:]


def test_the_compilation_config_s_capture_sizes_are_captured(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_NAME", "NVIDIA H100 80GB HBM3")
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB", str(H100_MIB))
    for extra, top, count in (('{"max_cudagraph_capture_size": 1024}', 1024, 83),
                              ('{"cudagraph_capture_sizes": [1, 8, 640], "max_cudagraph_capture_size": 640}', 640, 3)):
        ns, _ = parse(["Qwen/Qwen3-4B", "--compilation-config", extra])
        sizes = resolve(ns, Dialect("0.26.0")).graph_sizes
        assert (max(sizes), len(sizes)) == (top, count)


def test_occupied_port_is_errno_98(sims):
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        sim = sims(["Qwen/Qwen3-4B"], port=holder.getsockname()[1])
        assert sim.wait_exit(15) == 1
    assert re.search(r"^\(APIServer pid=\d+\) OSError: \[Errno 98\] Address already in use$", sim.log, re.M)


# ---------------------------------------------------------------- serving


def test_streaming_chat_at_the_configured_rate_and_api_key(sims):
    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_TOKENS_PER_S": "20", "VLLM_API_KEY": "k3y"})
    sim.wait_ready()
    body = {"model": "q4b", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 10,
            "stream": True, "stream_options": {"include_usage": True}}
    assert httpx.post(sim.url + "/v1/chat/completions", json=body, timeout=5).status_code == 401
    assert httpx.get(sim.url + "/health", timeout=5).status_code == 200  # health and metrics stay open
    headers = {"Authorization": "Bearer k3y"}
    start = time.monotonic()
    events = []
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=body, headers=headers, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append((time.monotonic() - start, line[6:]))
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _t, data in events[:-1]]
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 10
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    span = events[-1][0] - events[0][0]
    assert 9 / 20 * 0.8 < span < 9 / 20 * 3  # 10 tokens at 20/s: 9 intervals
    full = httpx.post(sim.url + "/v1/completions", headers=headers, timeout=10,
                      json={"model": "q4b", "prompt": "Say something", "max_tokens": 3}).json()
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 3
    metrics = httpx.get(sim.url + "/metrics", timeout=5).text
    assert 'vllm:generation_tokens_total{engine="0",model_name="q4b"} 13.0' in metrics
    assert re.search(r'^\(APIServer pid=\d+\) INFO:     127\.0\.0\.1:\d+ - "POST /v1/chat/completions HTTP/1\.1" 200 OK$',
                     sim.log, re.M)


def test_stalled_requests_wait_without_progress(sims):
    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_FAULT": "stall_requests"})
    sim.wait_ready()
    client = httpx.Client(timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.post(sim.url + "/v1/completions", json={"model": "q4b", "prompt": "x", "max_tokens": 2})
    metrics = httpx.get(sim.url + "/metrics", timeout=5).text
    assert 'vllm:num_requests_waiting{engine="0",model_name="q4b"}' in metrics
    waiting = float(re.search(r'vllm:num_requests_waiting\{engine="0",model_name="q4b"\} (\S+)', metrics).group(1))
    running = float(re.search(r'vllm:num_requests_running\{engine="0",model_name="q4b"\} (\S+)', metrics).group(1))
    assert (waiting, running) == (1.0, 0.0)
    assert 'vllm:generation_tokens_total{engine="0",model_name="q4b"} 0.0' in metrics


# ---------------------------------------------------------------- process behaviour (§5, §9)


def test_enginecore_sigkill_gives_503_then_exit_0(sims):
    sim = sims(FIXTURE_ARGS, H100)
    sim.wait_ready()
    engine = sim.tree()[0]
    os.kill(engine.pid, signal.SIGKILL)
    assert wait_for(lambda: sim.health() == 503, 5)
    assert sim.wait_exit(10) == 0  # exit code 0 although nobody asked it to stop
    out = sim.log
    assert "[shutdown] MPClient: engine core exited unexpectedly; starting cleanup" in out
    assert ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for"
            " the root cause.") in out
    assert '"GET /health HTTP/1.1" 503 Service Unavailable' in out
    assert "Finished server process" in out


def test_apiserver_sigkill_leaves_an_orphan_enginecore_holding_memory(sims):
    sim = sims(FIXTURE_ARGS, H100)
    sim.wait_ready()
    engine = sim.tree()[0]
    cfg = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(sim.gpu_dir), **H100})
    before = simgpu.held_mib(cfg, 0)
    os.kill(sim.proc.pid, signal.SIGKILL)
    assert sim.wait_exit(5) == -signal.SIGKILL
    time.sleep(0.5)
    assert alive(engine.pid) and engine.name() == "VLLM::EngineCore"
    assert simgpu.held_mib(cfg, 0) == before > 20_000
    # the port is free again, but the next launch finds the memory gone (§5 "Parent SIGKILL"):
    # 0.75 × 79.18 GiB would fit an idle H100, not one with an orphan on it
    args = [a if a != "0.30" else "0.75" for a in FIXTURE_ARGS]
    again = sims(args, H100, port=sim.port)
    assert again.wait_exit(30) == 1
    assert "ValueError: Free memory on device cuda:0" in again.log
    assert alive(engine.pid)


def test_the_guard_ending_an_orphan_enginecore_aborts_its_requests_like_real_vllm(sims):
    # tests/fixtures/vllm-0.26.0/h200-4b-apiserver-killed*: the API server killed with requests in
    # flight, then EngineCore's SIGTERM from the guard: "aborting in-flight requests count=16"
    import threading

    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_TOKENS_PER_S": "5"})
    sim.wait_ready()
    engine = sim.tree()[0]
    body = {"model": "q4b", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50, "stream": True}

    def stream() -> None:
        with contextlib.suppress(httpx.HTTPError):
            with httpx.stream("POST", sim.url + "/v1/chat/completions", json=body, timeout=30) as resp:
                for _ in resp.iter_bytes():
                    pass

    clients = [threading.Thread(target=stream, daemon=True) for _ in range(2)]
    for c in clients:
        c.start()
    assert wait_for(lambda: 'vllm:num_requests_running{engine="0",model_name="q4b"} 2.0'
                    in httpx.get(sim.url + "/metrics", timeout=5).text, 10)
    os.kill(sim.proc.pid, signal.SIGKILL)
    sim.wait_exit(5)
    engine.terminate()
    assert wait_for(lambda: not alive(engine.pid), 10)
    found = re.findall(r"\[core\.py:1441\] \[shutdown\] EngineCore: aborting in-flight requests count=(\d+)", sim.log)
    assert found == ["2"], sim.log[-2000:]


def test_multiprocess_executor_on_one_gpu_has_a_worker_process_whose_death_ends_the_engine(sims):
    # `--distributed-executor-backend mp` at world size 1: vLLM 0.26 still runs the rank in a
    # process of its own, titled and prefixed "Worker" (no parallel group is larger than one)
    sim = sims([*FIXTURE_ARGS, "--distributed-executor-backend", "mp"], H100)
    sim.wait_ready()
    engine = next(p for p in sim.tree() if p.name() == "VLLM::EngineCore")
    workers = engine.children()
    assert [w.name() for w in workers] == ["VLLM::Worker"]
    assert re.search(r"^\(Worker pid=\d+\) INFO \S+ \S+ \[model_runner\.py:305\] Model loading took", sim.log, re.M)
    os.kill(workers[0].pid, signal.SIGKILL)
    assert sim.wait_exit(15) == 0  # the API server after EngineDeadError, as real vLLM 0.26 exits
    assert re.search(r"^\(EngineCore pid=\d+\) ERROR \S+ \S+ \[multiproc_executor\.py:284\] Worker proc VllmWorker-0 "
                     r"died unexpectedly \(exit code: (None|-9)\), shutting down executor\.$", sim.log, re.M)
    assert not alive(engine.pid)
    # the lines real vLLM 0.26 printed when its worker was killed on an H200 (tests/fixtures/vllm-0.26.0)
    out = lines(sim.log)
    for needle in ("[core.py:1332] EngineCore encountered a fatal error.", "[core.py:1332] RuntimeError: Executor failed.",
                   'raise RuntimeError("Executor failed.")', "Model loading took"):
        pattern = shape_regex(fixture_line("../vllm-0.26.0/h200-8b-mp1-worker-killed.log", needle))
        assert any(pattern.match(ln) for ln in out), f"no line shaped like {pattern.pattern}"


def test_tensor_parallel_workers_and_death_pipe(sims):
    env = {"LLM_SUPERVISOR_SIM_GPU_COUNT": "2", "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": "20480",
           "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA GeForce RTX 3080"}
    sim = sims(["Qwen/Qwen3-8B", "--tensor-parallel-size", "2", "--max-model-len", "16384",
                "--disable-custom-all-reduce", "--gpu-memory-utilization", "0.9"], env)
    sim.wait_ready()
    engine = next(p for p in sim.tree() if p.name() == "VLLM::EngineCore")
    workers = engine.children()
    assert sorted(w.name() for w in workers) == ["VLLM::Worker_TP0", "VLLM::Worker_TP1"]
    out = sim.log
    assert len(re.findall(r"^\(Worker_TP0 pid=\d+\) INFO \S+ \S+ \[model_runner\.py:305\] Model loading took", out, re.M)) == 1
    assert "(Worker_TP1" in out and not re.search(r"^\(Worker_TP1 pid=\d+\) .*Model loading took", out, re.M)
    assert len(re.findall(r"^\(EngineCore pid=\d+\) .*GPU KV cache size", out, re.M)) == 1
    cfg = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(sim.gpu_dir), **env})
    assert simgpu.held_mib(cfg, 0) > 15_000 and simgpu.held_mib(cfg, 1) > 15_000
    os.kill(engine.pid, signal.SIGKILL)
    assert wait_for(lambda: not any(alive(w.pid) for w in workers), 5)  # the death pipe
    assert "Parent process exited, terminating worker" in sim.log
    assert sim.wait_exit(10) == 0


@pytest.mark.parametrize("version,expect", [
    ("0.11.0", [r"^\x1b\[1;36m\(EngineCore_DP0 pid=\d+\)\x1b\[0;0m INFO \S+ \S+ \[gpu_worker\.py:298\] "
                r"Available KV cache memory: 0\.\d\d GiB$",
                r"To serve at least one request with the models's max seq len \(40960\), \(5\.62 GiB KV cache is "
                r"needed, which is larger than the available KV cache memory \(0\.\d\d GiB\)\. Based on the available "
                r"memory, the estimated maximum model length is \d+\. Try increasing `gpu_memory_utilization` or "
                r"decreasing `max_model_len` when initializing the engine\.$",
                r"RuntimeError: Engine core initialization failed\. See root cause above\. Failed core proc\(s\): "
                r"\{'EngineCore_DP0': 1\}$"]),
    ("0.8.5", [r"^INFO \S+ \S+ \[api_server\.py:1043\] vLLM API server version 0\.8\.5$",
               r"the available KV cache memory \(0\.\d\d GiB\)\. Based on the available memory,  Try increasing "
               r"`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine\.$",
               r"^RuntimeError: Engine core initialization failed\. See root cause above\.$"]),
])
def test_older_version_dialects(sims, version, expect):
    sim = sims(["Qwen/Qwen3-4B", "--gpu-memory-utilization", "0.12"],
               {**H100, "LLM_SUPERVISOR_SIM_VLLM_VERSION": version, "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA H100"})
    assert sim.wait_exit(30) == 1
    for pattern in expect:
        assert re.search(pattern, sim.log, re.M), pattern


def test_runtime_oom_after_ready_kills_the_engine(sims):
    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_FAULT": "runtime_oom_after_ready=0.3"})
    sim.wait_ready()
    assert sim.wait_exit(15) == 0
    out = sim.log
    assert "EngineCore encountered a fatal error." in out
    assert re.search(r"torch\.OutOfMemoryError: CUDA out of memory\. Tried to allocate 304\.00 MiB\. GPU 0 has a total"
                     r" capacity of 79\.18 GiB of which [\d.]+ MiB is free\.", out)
    assert "EngineDeadError" in out


def test_hang_startup_stops_output_until_vllms_ready_timeout(sims):
    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_FAULT": "hang_startup=profile",
                              "VLLM_ENGINE_READY_TIMEOUT_S": "2"})
    assert wait_for(lambda: "Initial profiling" in sim.log or "torch.compile took" in sim.log, 15)
    size = len(sim.log)
    time.sleep(0.5)
    assert len(sim.log) == size and sim.proc.poll() is None  # silent, and not ready
    assert sim.health() is None  # not listening yet: connection refused
    assert sim.wait_exit(15) == 1
    assert "TimeoutError: Timed out waiting for engine core processes to start." in sim.log
    assert "Available KV cache memory" not in sim.log
    assert wait_for(lambda: not sim.group_pids(), 5)


def test_sigterm_during_startup_stops_the_engine(sims):
    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_STARTUP_S": "3"})
    assert wait_for(lambda: "Loading model" in sim.log, 15)
    sim.proc.send_signal(signal.SIGTERM)
    # vLLM turns SIGTERM into KeyboardInterrupt("terminated") while starting; CPython then exits
    # an uncaught KeyboardInterrupt by SIGINT
    assert sim.wait_exit(10) == -signal.SIGINT
    assert "KeyboardInterrupt: terminated" in sim.log
    assert "[shutdown] EngineCore: trigger received signal=SIGTERM" in sim.log
    assert wait_for(lambda: not sim.group_pids(), 5)


def test_ignore_sigterm_needs_sigkill(sims):
    sim = sims(FIXTURE_ARGS, {**H100, "LLM_SUPERVISOR_SIM_FAULT": "ignore_sigterm"})
    sim.wait_ready()
    pids = [sim.proc.pid] + [p.pid for p in sim.tree()]
    os.killpg(sim.pgid, signal.SIGTERM)
    time.sleep(1.0)
    assert all(alive(p) for p in pids) and sim.health() == 200
    os.killpg(sim.pgid, signal.SIGKILL)
    assert wait_for(lambda: not any(alive(p) for p in pids), 5)


def test_accepted_connections_send_without_nagle_delay() -> None:
    """The simulated API server's connections have Nagle's algorithm off, as real vLLM behaves:
    with it on, a streamed answer's first chunk waited for the client's delayed ACK on a reused
    keep-alive connection (the front door's way to the engine), ~30 ms that vLLM does not add."""
    import asyncio

    from llm_supervisor.simulator.apiserver import ApiServer
    from llm_supervisor.simulator.dialect import Dialect

    ns, _shown = parse(["/models/qwen3-4b", "--host", "127.0.0.1", "--port", "0"])
    server = ApiServer(ns, {}, Dialect("0.26.0"))
    server._bind()
    assert server.sock is not None

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        assert server.sock is not None
        server.sock.listen(8)
        srv = await asyncio.start_server(on_client, sock=server.sock)
        port = srv.sockets[0].getsockname()[1]
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(seen, 30)
        finally:
            w.close()
            srv.close()

    assert asyncio.run(accepted_nodelay()) != 0
