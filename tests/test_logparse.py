"""The startup-log parser against real vLLM 0.26.0 output and each version's line shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_supervisor.vllm.failures import FailureClassifier
from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.vllm.logparse import CONTRACT_FACTS, LogParser, PHASES, parse_arg_dict, split_line, strip_header, tp_rank

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"


def feed(lines: list[str]) -> LogParser:
    parser = LogParser()
    for line in lines:
        parser.feed(line)
    return parser


# ---------------------------------------------------------------- real 0.26.0 logs


def test_ready_cold_start_facts() -> None:
    facts = parse_log_file(FIXTURES / "ready-then-enginecore-killed.log").facts
    assert facts.contract() == {
        "model_weights_gib": 7.56,
        "available_kv_cache_gib": 15.17,
        "kv_cache_tokens": 110464,
        "max_concurrency": 11.05,
        "max_concurrency_context": 10000,
        "cuda_graph_gib": 1.0,
        "engine_init_seconds": 40.26,
        "tensor_parallel_size": 1,
    }
    assert facts.vllm_version == "0.26.0"
    assert facts.model == "/models/qwen3-4b-shape"
    assert facts.model_load_seconds == pytest.approx(1.944633)
    assert facts.compile_cached is False
    assert facts.compile_seconds == 22.21
    assert facts.cuda_graph_seconds == 4
    assert facts.max_model_len == 10000
    assert facts.max_num_batched_tokens == 8192
    assert facts.enforce_eager is False
    assert facts.kv_cache_dtype == "auto"
    # the 0.26 "Free memory on device … Actual usage is …" INFO line
    assert (facts.free_gpu_gib, facts.total_gpu_gib) == (78.66, 79.18)
    assert (facts.requested_utilization, facts.requested_gib) == (0.3, 23.75)
    assert facts.profile_weights_gib == 7.56
    assert facts.peak_activation_gib == 0.8
    assert facts.non_torch_gib == 0.22
    assert facts.cudagraph_memory_gib == 1.0
    assert facts.suggested_kv_cache_memory_bytes == 15058794292
    assert facts.cli_args == {
        "model_tag": "/models/qwen3-4b-shape", "port": 8001, "model": "/models/qwen3-4b-shape",
        "max_model_len": 10000, "served_model_name": ["q4b"], "load_format": "dummy",
        "gpu_memory_utilization": 0.3,
    }
    assert facts.server_started is True
    assert facts.listen_url == "http://0.0.0.0:8001"
    assert facts.processes == {"APIServer": 3738, "EngineCore": 3863}
    # 144 KiB per token for Qwen3-4B; 15.17 GiB / 110,464 tokens is that, within rounding
    assert facts.kv_bytes_per_token == pytest.approx(144 * 1024, rel=0.001)


def test_ready_warm_start_facts() -> None:
    facts = parse_log_file(FIXTURES / "ready-then-sigterm.log").facts
    assert facts.contract() == {
        "model_weights_gib": 7.56, "available_kv_cache_gib": 15.36, "kv_cache_tokens": 111808,
        "max_concurrency": 11.18, "max_concurrency_context": 10000, "cuda_graph_gib": 1.0,
        "engine_init_seconds": 21.92, "tensor_parallel_size": 1,
    }
    assert facts.compile_cached is True
    assert facts.compile_seconds == 4.22
    assert facts.peak_activation_gib == 0.62
    assert facts.listen_url == "http://0.0.0.0:8002"


def test_apiserver_sigkilled_facts() -> None:
    facts = parse_log_file(FIXTURES / "apiserver-sigkilled.log").facts
    assert facts.kv_cache_tokens == 111808
    assert facts.engine_init_seconds == 10.56
    assert facts.compile_cached is True
    assert facts.server_started is True


def test_kv_cache_too_small_facts() -> None:
    parser = parse_log_file(FIXTURES / "kv-cache-too-small.log")
    facts = parser.facts
    assert facts.contract() == {
        "model_weights_gib": 7.56, "available_kv_cache_gib": 0.92, "kv_cache_tokens": None,
        "max_concurrency": None, "max_concurrency_context": None, "cuda_graph_gib": None,
        "engine_init_seconds": None, "tensor_parallel_size": 1,
    }
    assert facts.max_model_len == 40960
    assert facts.cli_args["gpu_memory_utilization"] == 0.12
    assert facts.server_started is False
    assert parser.phase == "kv_cache"


def test_phase_events_in_order_on_real_log() -> None:
    parser = LogParser()
    events = []
    for line in (FIXTURES / "ready-then-enginecore-killed.log").read_text(encoding="utf-8").split("\n"):
        events.extend(parser.feed(line))
    phases = [e.data["phase"] for e in events if e.kind == "phase"]
    assert phases == list(PHASES)
    started = [e for e in events if e.kind == "server_started"]
    assert len(started) == 1 and started[0].data["url"] == "http://0.0.0.0:8001"
    facts = {e.data["name"]: e.data["value"] for e in events if e.kind == "fact"}
    assert facts["kv_cache_tokens"] == 110464
    assert facts["max_concurrency"] == 11.05
    # every event comes before the server is up, then the parser goes quiet
    assert events[-1].kind == "server_started" or events[-1].kind == "fact"
    assert parser.feed("(EngineCore pid=1) INFO 11-21 07:25:21 [kv_cache_utils.py:2177] GPU KV cache size: 5 tokens") == []
    assert parser.facts.kv_cache_tokens == 110464


def test_each_fact_event_once() -> None:
    parser = LogParser()
    events = []
    for line in (FIXTURES / "ready-then-sigterm.log").read_text(encoding="utf-8").split("\n"):
        events.extend(parser.feed(line))
    names = [e.data["name"] for e in events if e.kind == "fact"]
    assert len(names) == len(set(names))


# ---------------------------------------------------------------- line cleaning


@pytest.mark.parametrize(
    "line, proc, text",
    [
        ("(EngineCore pid=5131) INFO 11-21 07:27:42 [x.py:1] hi\r\n", "EngineCore pid=5131", "INFO 11-21 07:27:42 [x.py:1] hi"),
        ("\x1b[1;36m(EngineCore_DP0 pid=12)\x1b[0;0m INFO x", "EngineCore_DP0 pid=12", "INFO x"),
        ("(VllmWorker rank=1 pid=9) INFO x", "VllmWorker rank=1 pid=9", "INFO x"),
        ("(RayWorkerWrapper pid=410, ip=10.0.0.5) ERROR y", "RayWorkerWrapper pid=410, ip=10.0.0.5", "ERROR y"),
        ("(EngineCore pid=3) \rbar 1%\rbar 50%\rbar 100%", "EngineCore pid=3", "bar 100%"),
        ("plain line\n", None, "plain line"),
        ("(not a prefix) text", None, "(not a prefix) text"),
        ("\x1b[32mINFO\x1b[0m 01-02 03:04:05 [a.py:3] colored", None, "INFO 01-02 03:04:05 [a.py:3] colored"),
    ],
)
def test_split_line(line: str, proc: str | None, text: str) -> None:
    assert split_line(line) == (proc, text)


def test_strip_header_and_tp_rank() -> None:
    assert strip_header("ERROR 11-21 07:27:42 [core.py:1330] EngineCore failed to start.") == (
        "ERROR", "EngineCore failed to start.")
    assert strip_header("INFO:     Application startup complete.") == ("INFO", "Application startup complete.")
    assert strip_header("ValueError: x") == (None, "ValueError: x")
    assert tp_rank("Worker_TP1 pid=4") == 1
    assert tp_rank("VllmWorker rank=3 pid=4") == 3
    assert tp_rank("VllmWorker TP2 pid=4") == 2
    assert tp_rank("Worker_DP0_TP1 pid=4") == 1
    assert tp_rank("EngineCore_DP0 pid=4") is None


def test_parse_arg_dict_with_enum_reprs() -> None:
    assert parse_arg_dict("non-default args: {'port': 8003, 'gpu_memory_utilization': 0.12}") == {
        "port": 8003, "gpu_memory_utilization": 0.12}
    broken = "non-default args: {'max_model_len': 4096, 'compilation_config': <CompilationMode.X: 3>, 'port': 9}"
    parsed = parse_arg_dict(broken)
    assert parsed["max_model_len"] == 4096 and parsed["port"] == 9


# ---------------------------------------------------------------- other versions' shapes


V0_LOG = [
    "INFO 05-01 10:00:00 [__init__.py:239] Automatically detected platform cuda.",
    "INFO 05-01 10:00:01 [api_server.py:1043] vLLM API server version 0.8.5",
    "INFO 05-01 10:00:01 [api_server.py:1044] args: Namespace(subparser='serve', model_tag='Qwen/Qwen3-4B', "
    "host=None, port=8000, model='Qwen/Qwen3-4B', max_model_len=32768, block_size=None, "
    "gpu_memory_utilization=0.9, tensor_parallel_size=1, enforce_eager=False, max_num_seqs=None)",
    "INFO 05-01 10:00:05 [llm_engine.py:240] Initializing a V0 LLM engine (v0.8.5) with config: "
    "model='Qwen/Qwen3-4B', speculative_config=None, max_seq_len=32768, tensor_parallel_size=1, "
    "pipeline_parallel_size=1, quantization=None, enforce_eager=False, kv_cache_dtype=auto, seed=0",
    "INFO 05-01 10:00:10 [model_runner.py:1140] Model loading took 7.5635 GiB and 3.123456 seconds",
    "INFO 05-01 10:00:15 [worker.py:287] Memory profiling takes 4.56 seconds\r",
    "INFO 05-01 10:00:15 [worker.py:287] the current vLLM instance can use total_gpu_memory (23.52GiB) x "
    "gpu_memory_utilization (0.90) = 21.17GiB\r",
    "INFO 05-01 10:00:15 [worker.py:287] model weights take 7.56GiB; non_torch_memory takes 0.08GiB; "
    "PyTorch activation peak memory takes 1.39GiB; the rest of the memory reserved for KV Cache is 12.14GiB.",
    "INFO 05-01 10:00:15 [executor_base.py:112] # cuda blocks: 5525, # CPU blocks: 1820",
    "INFO 05-01 10:00:15 [executor_base.py:117] Maximum concurrency for 32768 tokens per request: 2.70x",
    "INFO 05-01 10:00:16 [model_runner.py:1450] Capturing cudagraphs for decoding. This may lead to unexpected "
    "consequences if the model is not static.",
    "INFO 05-01 10:00:30 [model_runner.py:1592] Graph capturing finished in 14 secs, took 0.53 GiB",
    "INFO 05-01 10:00:30 [llm_engine.py:437] init engine (profile, create kv cache, warmup model) took 20.12 seconds",
    "INFO 05-01 10:00:31 [api_server.py:1090] Starting vLLM API server on http://0.0.0.0:8000",
    "INFO:     Started server process [1234]",
    "INFO:     Waiting for application startup.",
    "INFO:     Application startup complete.",
]


def test_v0_engine_lines() -> None:
    parser = LogParser()
    events = []
    for line in V0_LOG:
        events.extend(parser.feed(line))
    facts = parser.facts
    assert facts.vllm_version == "0.8.5"
    assert facts.model_weights_gib == 7.5635
    assert facts.kv_cache_tokens == 5525 * 16
    assert facts.max_concurrency == 2.70 and facts.max_concurrency_context == 32768
    assert facts.available_kv_cache_gib == 12.14
    assert (facts.total_gpu_gib, facts.requested_utilization, facts.requested_gib) == (23.52, 0.9, 21.17)
    assert (facts.profile_weights_gib, facts.non_torch_gib, facts.peak_activation_gib) == (7.56, 0.08, 1.39)
    assert facts.cuda_graph_gib == 0.53 and facts.engine_init_seconds == 20.12
    assert facts.tensor_parallel_size == 1
    assert facts.max_model_len == 32768
    assert facts.cli_args == {"model": "Qwen/Qwen3-4B", "max_model_len": 32768, "gpu_memory_utilization": 0.9,
                              "tensor_parallel_size": 1, "enforce_eager": False, "port": 8000}
    assert facts.listen_url == "http://0.0.0.0:8000"
    assert facts.server_started
    assert "capturing_graphs" in [e.data["phase"] for e in events if e.kind == "phase"]


def test_v0_blocks_use_the_block_size_from_args() -> None:
    parser = feed([
        "INFO 05-01 10:00:01 [api_server.py:1044] non-default args: {'block_size': 32}",
        "INFO 05-01 10:00:15 [executor_base.py:112] # GPU blocks: 1000, # CPU blocks: 10",
    ])
    assert parser.facts.kv_cache_tokens == 32000


def test_newest_combined_kv_line_and_init_variants() -> None:
    parser = feed([
        "(APIServer pid=5) INFO 08-14 10:00:00 [api_server.py:700] vLLM server version 0.28.0, serving model Qwen/Qwen3-4B",
        "(EngineCore pid=77) INFO 08-14 10:00:05 [gpu_model_runner.py:5503] Model loading took 7.56 GiB memory and 2.5 seconds",
        "(EngineCore pid=77) INFO 08-14 10:00:20 [gpu_worker.py:565] Available KV cache memory: 24.0 GiB",
        "(EngineCore pid=77) INFO 08-14 10:00:20 [kv_cache_utils.py:1870] GPU KV cache size: 174,752 tokens, "
        "Maximum concurrency for 40,960 tokens per request: 4.27x",
        "(EngineCore pid=77) INFO 08-14 10:00:25 [gpu_model_runner.py:7033] Graph capturing finished in 5 secs, took -0.12 GiB",
        "(EngineCore pid=77) INFO 08-14 10:00:40 [core.py:353] init engine (profile, create kv cache, warmup model) took "
        "40.26 s (compilation: 22.21 s — language_model: 20.00 s, encoder: 2.21 s)",
        "(APIServer pid=5) INFO 08-14 10:00:41 [api_server.py:682] Starting vLLM server on http://127.0.0.1:8000",
    ])
    facts = parser.facts
    assert facts.vllm_version == "0.28.0" and facts.model == "Qwen/Qwen3-4B"
    assert facts.model_weights_gib == 7.56 and facts.model_load_seconds == 2.5
    assert facts.available_kv_cache_gib == 24.0
    assert facts.kv_cache_tokens == 174752
    assert facts.max_concurrency == 4.27 and facts.max_concurrency_context == 40960
    assert facts.cuda_graph_gib == -0.12
    assert facts.engine_init_seconds == 40.26 and facts.compile_seconds == 22.21
    assert facts.server_started and facts.listen_url == "http://127.0.0.1:8000"


def test_engine_init_plain_seconds_form() -> None:
    parser = feed(["INFO 08-14 10:00:40 [core.py:336] init engine (profile, create kv cache, warmup model) took 12.30 s"])
    assert parser.facts.engine_init_seconds == 12.3
    assert parser.facts.compile_seconds is None


@pytest.mark.parametrize(
    "line, url",
    [
        ("INFO 05-01 10:00:31 [api_server.py:1090] Starting vLLM API server on http://0.0.0.0:8000", "http://0.0.0.0:8000"),
        ("(APIServer pid=1) INFO 07-08 1:00:00 [api_server.py:1457] Starting vLLM API server 0 on http://0.0.0.0:8000",
         "http://0.0.0.0:8000"),
        ("(APIServer pid=1) INFO 11-21 07:25:38 [api_server.py:677] Starting vLLM server on http://0.0.0.0:8001",
         "http://0.0.0.0:8001"),
    ],
)
def test_listen_line_variants(line: str, url: str) -> None:
    parser = LogParser()
    events = parser.feed(line)
    assert parser.facts.listen_url == url
    assert [e.data for e in events if e.kind == "server_started"] == [{"url": url, "via": "listen"}]


def test_startup_complete_alone_means_started() -> None:
    parser = LogParser()
    events = parser.feed("(APIServer pid=3738) INFO:     Application startup complete.\r\n")
    assert parser.facts.server_started
    assert [e.kind for e in events] == ["phase", "server_started"]


def test_version_sources() -> None:
    assert feed(["INFO 05-01 10:00:01 [api_server.py:1043] vLLM API server version 0.11.1rc2.dev10+g1234abcd"]
                ).facts.vllm_version == "0.11.1rc2.dev10+g1234abcd"
    assert feed(["(APIServer pid=1) INFO 11-21 07:24:39 [api_utils.py:345]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.26.0\r"]
                ).facts.vllm_version == "0.26.0"
    assert feed(["(EngineCore_DP0 pid=2) INFO 10-04 1:00:00 [core.py:77] Initializing a V1 LLM engine (v0.11.0) "
                 "with config: model='m', tensor_parallel_size=2"]).facts.vllm_version == "0.11.0"
    # FlashAttention's version is not vLLM's
    assert feed(["(EngineCore pid=1) INFO 11-21 07:24:56 [flash_attn.py:776] Using FlashAttention version 3"]
                ).facts.vllm_version is None


def test_compile_cached_detection() -> None:
    cached = "(EngineCore pid=1) INFO x [backends.py:292] Directly load the compiled graph(s) for compile range (1, 8192) from the cache, took 1.234 s"
    compiled = "(EngineCore pid=1) INFO x [backends.py:393] Compiling a graph for compile range (1, 8192) takes 10.56 s"
    assert feed([cached]).facts.compile_cached is True
    assert feed([compiled]).facts.compile_cached is False
    assert feed([cached, compiled]).facts.compile_cached is False


def test_v1_debug_memory_summary() -> None:
    parser = feed(["DEBUG 06-01 10:00:00 [gpu_worker.py:240] Memory profiling takes 3.10 seconds. Total non KV cache "
                   "memory: 9.21GiB; torch peak memory increase: 1.39GiB; non-torch forward increase memory: 0.10GiB; "
                   "weights memory: 7.56GiB."])
    facts = parser.facts
    assert (facts.non_kv_cache_gib, facts.peak_activation_gib, facts.non_torch_gib, facts.profile_weights_gib) == (
        9.21, 1.39, 0.10, 7.56)


def test_autofit_line_sets_max_model_len() -> None:
    parser = feed([
        "(APIServer pid=1) INFO 01-20 1:00:00 [model.py:1] Using max model len 40960",
        "(EngineCore pid=2) INFO 01-20 1:00:09 [kv_cache_utils.py:1] Auto-fit max_model_len: reduced from 40960 to "
        "6688 to fit in available GPU memory (0.92 GiB available for KV cache)",
    ])
    assert parser.facts.max_model_len == 6688


# ---------------------------------------------------------------- tensor parallel: count once


def _tp_lines(worker: str, engine: str, per_worker_kv: bool, ansi: bool = False) -> list[str]:
    def w(rank: int, pid: int, msg: str) -> str:
        prefix = f"({worker.format(rank=rank)} pid={pid})"
        if ansi:
            prefix = f"\x1b[1;36m{prefix}\x1b[0;0m"
        return f"{prefix} INFO 05-01 10:00:10 [gpu_model_runner.py:1] {msg}"

    eng = f"({engine} pid=50) " if engine else ""
    lines = [
        f"{eng}INFO 05-01 10:00:05 [core.py:1] Initializing a V1 LLM engine (v0.10.1) with config: model='m', "
        "tensor_parallel_size=2, pipeline_parallel_size=1",
        w(0, 60, "Model loading took 7.6 GiB and 3.0 seconds"),
        w(1, 61, "Model loading took 7.6 GiB and 3.1 seconds"),
        w(0, 60, "Available KV cache memory: 12.00 GiB"),
        w(1, 61, "Available KV cache memory: 11.50 GiB"),
    ]
    if per_worker_kv:  # v0.8.5–v0.11.0: EngineCore prints one KV line per worker, not yet min'ed
        lines += [
            f"{eng}INFO 05-01 10:00:11 [kv_cache_utils.py:634] GPU KV cache size: 174,752 tokens",
            f"{eng}INFO 05-01 10:00:11 [kv_cache_utils.py:637] Maximum concurrency for 40,960 tokens per request: 4.27x",
            f"{eng}INFO 05-01 10:00:11 [kv_cache_utils.py:634] GPU KV cache size: 167,472 tokens",
            f"{eng}INFO 05-01 10:00:11 [kv_cache_utils.py:637] Maximum concurrency for 40,960 tokens per request: 4.09x",
        ]
    else:
        lines += [
            f"{eng}INFO 05-01 10:00:11 [kv_cache_utils.py:1307] GPU KV cache size: 167,472 tokens",
            f"{eng}INFO 05-01 10:00:11 [kv_cache_utils.py:1313] Maximum concurrency for 40,960 tokens per request: 4.09x",
        ]
    lines += [
        w(0, 60, "Graph capturing finished in 6 secs, took 0.61 GiB"),
        w(1, 61, "Graph capturing finished in 6 secs, took 0.61 GiB"),
        f"{eng}INFO 05-01 10:00:20 [core.py:1] init engine (profile, create kv cache, warmup model) took 31.50 seconds",
    ]
    return lines


@pytest.mark.parametrize(
    "worker, engine, per_worker_kv, ansi",
    [
        ("VllmWorker rank={rank}", "", True, False),          # v0.8.5 – v0.10.0
        ("VllmWorker TP{rank}", "EngineCore_0", True, False),  # v0.10.1
        ("Worker_TP{rank}", "EngineCore_DP0", True, True),      # v0.11.0, colour-wrapped prefix
        ("Worker_TP{rank}", "EngineCore_DP0", False, True),     # v0.11.1 – v0.16
        ("Worker_TP{rank}", "EngineCore", False, False),        # v0.18+
    ],
)
def test_tensor_parallel_lines_count_once(worker: str, engine: str, per_worker_kv: bool, ansi: bool) -> None:
    parser = LogParser()
    events = []
    for line in _tp_lines(worker, engine, per_worker_kv, ansi):
        events.extend(parser.feed(line + "\r\n"))
    facts = parser.facts
    assert facts.tensor_parallel_size == 2
    assert facts.model_weights_gib == 7.6            # per GPU, not 15.2
    assert facts.available_kv_cache_gib == 11.5      # the smaller rank decides
    assert facts.kv_cache_tokens == 167472           # min over ranks, as vLLM
    assert facts.max_concurrency == 4.09
    assert facts.cuda_graph_gib == 0.61              # not doubled
    assert facts.engine_init_seconds == 31.5
    weights_events = [e for e in events if e.kind == "fact" and e.data["name"] == "model_weights_gib"]
    assert len(weights_events) == 1


def test_tp_size_from_worker_ranks_without_config_line() -> None:
    parser = feed([
        "(Worker_TP0 pid=60) INFO x [gpu_model_runner.py:1] Model loading took 4.0 GiB and 3.0 seconds",
        "(Worker_TP3 pid=63) INFO x [gpu_model_runner.py:1] Model loading took 4.0 GiB and 3.0 seconds",
        "(Worker_TP1 pid=61) INFO x [gpu_model_runner.py:1] Model loading took 4.0 GiB and 3.0 seconds",
    ])
    assert parser.facts.tensor_parallel_size == 4
    assert parser.facts.processes == {"Worker_TP0": 60, "Worker_TP3": 63, "Worker_TP1": 61}


def test_sink_receives_cleaned_lines() -> None:
    classifier = FailureClassifier()
    parser = parse_log_file(FIXTURES / "kv-cache-too-small.log", sink=classifier)
    assert parser.facts.available_kv_cache_gib == 0.92
    assert classifier.failure is not None and classifier.failure.kind == "kv_cache_too_small"


def test_contract_fact_names() -> None:
    assert CONTRACT_FACTS == (
        "model_weights_gib", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency",
        "max_concurrency_context", "cuda_graph_gib", "engine_init_seconds", "tensor_parallel_size",
    )
