"""Failure classification: every message variant of vLLM 0.8.5 → newest, counted once."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_supervisor.vllm.engine_args import keeps_dead_engine_serving
from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind
from llm_supervisor.host.logfiles import parse_log_file

FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"

TRY = "Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
DOCS = " See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
HEAD_OLD = "To serve at least one request with the models's max seq len"
HEAD_NEW = "To serve at least one request with the model's max seq len"


def classify(lines: list[str], exit_code: int | None = 1, was_ready: bool = False) -> Failure | None:
    classifier = FailureClassifier()
    for line in lines:
        classifier.feed(line)
    return classifier.classify(exit_code, was_ready)


def engine_error(message: str, proc: str = "EngineCore_DP0 pid=7") -> list[str]:
    """How V1 surfaces a startup ValueError: logged traceback, raw traceback, API server's wrapper."""
    p = f"({proc}) "
    return [
        f"{p}ERROR 05-01 10:00:00 [core.py:700] EngineCore failed to start.",
        f"{p}ERROR 05-01 10:00:00 [core.py:700] Traceback (most recent call last):",
        f'{p}ERROR 05-01 10:00:00 [core.py:700]   File "/vllm/v1/core/kv_cache_utils.py", line 545, in check',
        f"{p}ERROR 05-01 10:00:00 [core.py:700]     raise ValueError(",
        f"{p}ERROR 05-01 10:00:00 [core.py:700] ValueError: {message}",
        f"{p}Process {proc.split()[0]}:",
        f"{p}Traceback (most recent call last):",
        f'{p}  File "/usr/lib/python3.12/multiprocessing/process.py", line 314, in _bootstrap',
        f"{p}ValueError: {message}",
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. "
        "Failed core proc(s): {'EngineCore_DP0': 1}",
    ]


# ---------------------------------------------------------------- §2 B: KV cache too small


@pytest.mark.parametrize(
    "name, message, values",
    [
        ("B0", f"{HEAD_OLD} (32768), (4.50 GiB KV cache is needed, which is larger than the available KV cache "
               f"memory (2.25 GiB). {TRY}",
         {"needed_gib": 4.5, "available_gib": 2.25, "max_model_len": 32768}),
        ("B1", f"{HEAD_OLD} (32768), (4.50 GiB KV cache is needed, which is larger than the available KV cache "
               f"memory (2.25 GiB). Based on the available memory,  {TRY}",
         {"needed_gib": 4.5, "available_gib": 2.25, "max_model_len": 32768}),
        ("B1-no-estimate", f"{HEAD_OLD} (32768), (4.50 GiB KV cache is needed, which is larger than the available "
                           f"KV cache memory (2.25 GiB).  {TRY}",
         {"needed_gib": 4.5, "available_gib": 2.25, "max_model_len": 32768}),
        ("B2", f"{HEAD_OLD} (10485760), (240.00 GiB KV cache is needed, which is larger than the available KV cache "
               f"memory (88.38 GiB). Based on the available memory, the estimated maximum model length is 3861424. {TRY}",
         {"needed_gib": 240.0, "available_gib": 88.38, "max_model_len": 10485760, "estimated_max_model_len": 3861424}),
        ("B2-zero", f"{HEAD_OLD} (40960), (5.62 GiB KV cache is needed, which is larger than the available KV cache "
                    f"memory (0.00 GiB).  {TRY}",
         {"needed_gib": 5.62, "available_gib": 0.0, "max_model_len": 40960}),
        ("B3", f"{HEAD_OLD} (40960), (5.62 GiB KV cache is needed, which is larger than the available KV cache "
               f"memory (3.18 GiB). Based on the available memory, the estimated maximum model length is 23168. {TRY}{DOCS}",
         {"needed_gib": 5.62, "available_gib": 3.18, "max_model_len": 40960, "estimated_max_model_len": 23168}),
        ("B4", f"{HEAD_OLD} (262144), (24.0 GiB KV cache is needed, which is larger than the available KV cache "
               f"memory (3.18 GiB). Based on the available memory, the estimated maximum model length is 34736. {TRY}{DOCS}",
         {"needed_gib": 24.0, "available_gib": 3.18, "max_model_len": 262144, "estimated_max_model_len": 34736}),
        ("B4-no-estimate", f"{HEAD_OLD} (262144), (24.0 GiB KV cache is needed, which is larger than the available "
                           f"KV cache memory (0.5 GiB). {TRY}{DOCS}",
         {"needed_gib": 24.0, "available_gib": 0.5, "max_model_len": 262144}),
        ("B5", f"{HEAD_NEW} (40960), (5.62 GiB KV cache is needed, which is larger than the available KV cache "
               "memory (0.92 GiB). Based on the available memory, the estimated maximum model length is 6688. Try "
               "increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing "
               f"`max_model_len` when initializing the engine.{DOCS}",
         {"needed_gib": 5.62, "available_gib": 0.92, "max_model_len": 40960, "estimated_max_model_len": 6688}),
    ],
)
def test_kv_cache_too_small_variants(name: str, message: str, values: dict) -> None:
    failure = classify(engine_error(message))
    assert failure is not None
    assert failure.kind is FailureKind.KV_CACHE_TOO_SMALL
    assert failure.values == values
    assert failure.message == f"ValueError: {message}"


def test_v0_variant_c_tokens() -> None:
    message = ("The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV "
               f"cache (21600). {TRY}")
    lines = [f"(VllmWorker rank={r} pid={10 + r}) ERROR 05-01 10:00:00 [worker_base.py:1] ValueError: {message}"
             for r in (0, 1)]
    failure = classify(lines)
    assert failure.kind is FailureKind.KV_CACHE_TOO_SMALL
    assert failure.values == {"max_model_len": 32768, "kv_cache_tokens": 21600, "estimated_max_model_len": 21600}


def test_real_fixture_kv_cache_too_small() -> None:
    classifier = FailureClassifier()
    parse_log_file(FIXTURES / "kv-cache-too-small.log", sink=classifier)
    failure = classifier.classify(1, False)
    assert failure.kind is FailureKind.KV_CACHE_TOO_SMALL
    assert failure.values == {"needed_gib": 5.62, "available_gib": 0.92, "max_model_len": 40960,
                              "estimated_max_model_len": 6688}
    assert failure.message.startswith("ValueError: To serve at least one request with the model's max seq len (40960)")
    assert "(EngineCore" not in failure.message and "ERROR" not in failure.message
    assert failure.to_json()["kind"] == "kv_cache_too_small"
    # a saved log, no exit code: the same verdict
    assert classifier.classify(None, False).values == failure.values


# ---------------------------------------------------------------- §2 A: no memory for the cache


@pytest.mark.parametrize(
    "message",
    [
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.",
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the "
        f"engine.{DOCS}",
        "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine "
        f"(this flag also controls CPU memory reservation on the CPU backend, despite its name).{DOCS}",
        "Cannot auto-fit max_model_len: not enough GPU memory available to serve even a single token. Try increasing "
        "`gpu_memory_utilization`.",
    ],
    ids=["A1", "A2", "A3", "autofit"],
)
def test_no_kv_cache_memory_variants(message: str) -> None:
    failure = classify(engine_error(message))
    assert failure.kind is FailureKind.NO_KV_CACHE_MEMORY
    assert failure.message == f"ValueError: {message}"
    assert failure.values == {}


# ---------------------------------------------------------------- §3: free memory, OOM


@pytest.mark.parametrize("device", ["", " cuda:0"])
def test_insufficient_free_memory_old_and_new(device: str) -> None:
    message = (f"Free memory on device{device} (9.49/79.18 GiB) on startup is less than desired GPU memory utilization "
               "(0.3, 23.75 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.")
    failure = classify(engine_error(message))
    assert failure.kind is FailureKind.INSUFFICIENT_FREE_MEMORY
    assert failure.values == {"free_gib": 9.49, "total_gib": 79.18, "requested_utilization": 0.3,
                              "requested_gib": 23.75}


def test_startup_info_line_about_free_memory_is_not_a_failure() -> None:
    classifier = FailureClassifier()
    parse_log_file(FIXTURES / "ready-then-sigterm.log", sink=classifier)
    assert classifier.failure is None


TORCH_NEW = ("CUDA out of memory. Tried to allocate 304.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which "
             "234.62 MiB is free. Including non-PyTorch memory, this process has 8.90 GiB memory in use. Of the "
             "allocated memory 8.10 GiB is allocated by PyTorch, and 312.45 MiB is reserved by PyTorch but "
             "unallocated. If reserved but unallocated memory is large try setting "
             "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")
TORCH_OLD = ("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; 14.56 GiB already "
             "allocated; 3.19 MiB free; 14.60 GiB reserved in total by PyTorch) If reserved memory is >> allocated "
             "memory try setting max_split_size_mb to avoid fragmentation.")


@pytest.mark.parametrize(
    "line, values",
    [
        (f"torch.OutOfMemoryError: {TORCH_NEW}",
         {"tried_to_allocate_mib": 304.0, "total_gib": 79.18, "free_mib": 234.62, "gpu": 0}),
        (f"torch.cuda.OutOfMemoryError: {TORCH_OLD}",
         {"tried_to_allocate_mib": 20.0, "total_gib": 15.78, "free_mib": 3.19, "gpu": 0}),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity of "
         "44.53 GiB of which 448.00 KiB is free.",
         {"tried_to_allocate_mib": 2048.0, "total_gib": 44.53, "free_mib": 0.438, "gpu": 1}),
        ("RuntimeError: CUDA error: out of memory", {}),
    ],
    ids=["torch-new", "torch-cuda-old", "units", "cuda-error"],
)
def test_torch_oom(line: str, values: dict) -> None:
    failure = classify([f"(EngineCore_DP0 pid=7) ERROR 05-01 10:00:00 [core.py:700] {line}", f"(EngineCore_DP0 pid=7) {line}"])
    assert failure.kind is FailureKind.CUDA_OOM
    assert failure.values == values
    assert failure.message == line


def test_weight_load_oom() -> None:
    lines = [
        "(EngineCore_DP0 pid=7) ERROR 01-20 10:00:00 [gpu_model_runner.py:3901] Failed to load model - not enough GPU "
        "memory. Try lowering --gpu-memory-utilization to free memory for weights, increasing --tensor-parallel-size, "
        "or using --quantization. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more tips. "
        f"(original error: {TORCH_NEW})",
        f"(EngineCore_DP0 pid=7) ERROR 01-20 10:00:00 [core.py:700] torch.OutOfMemoryError: {TORCH_NEW}",
    ] + engine_error("ignored")[-1:]
    failure = classify(lines)
    assert failure.kind is FailureKind.CUDA_OOM
    assert failure.stage == "load"
    assert failure.message.startswith("Failed to load model - not enough GPU memory")
    assert failure.values["tried_to_allocate_mib"] == 304.0


def test_sampler_warmup_oom() -> None:
    message = ("CUDA out of memory occurred when warming up sampler with 1024 dummy requests. Please try lowering "
               "`max_num_seqs` or `gpu_memory_utilization` when initializing the engine.")
    failure = classify([f"(EngineCore pid=5) RuntimeError: {message}"])
    assert failure.kind is FailureKind.CUDA_OOM
    assert failure.stage == "sampler_warmup"
    assert failure.values == {"warmup_requests": 1024}


def test_graph_capture_oom_on_each_tp_worker_interleaved() -> None:
    """Two workers print their tracebacks at once, line by line interleaved; one failure results."""
    tb = [
        "ERROR 05-01 10:00:00 [multiproc_executor.py:1] WorkerProc hit an exception.",
        "ERROR 05-01 10:00:00 [multiproc_executor.py:1] Traceback (most recent call last):",
        'ERROR 05-01 10:00:00 [multiproc_executor.py:1]   File "/vllm/v1/worker/gpu_model_runner.py", line 1, in capture_model',
        f"ERROR 05-01 10:00:00 [multiproc_executor.py:1] torch.OutOfMemoryError: {TORCH_NEW}",
    ]
    lines = []
    for a, b in zip(tb, tb):
        lines.append(f"\x1b[1;36m(Worker_TP0 pid=60)\x1b[0;0m {a}\r\n")
        lines.append(f"(Worker_TP1 pid=61) {b.replace('304.00 MiB', '306.00 MiB')}\r\n")
    lines.append("(EngineCore_DP0 pid=50) Exception: WorkerProc initialization failed due to an exception in a "
                 "background process. See stack trace for root cause.")
    failure = classify(lines)
    assert failure.kind is FailureKind.CUDA_OOM
    assert failure.values["tried_to_allocate_mib"] == 304.0   # the first sighting, not a sum


def test_kv_error_repeated_by_every_worker_counts_once() -> None:
    message = (f"{HEAD_NEW} (40960), (5.62 GiB KV cache is needed, which is larger than the available KV cache memory "
               f"(0.92 GiB). Based on the available memory, the estimated maximum model length is 6688. {TRY}")
    lines = engine_error(message, "Worker_TP0 pid=60") + engine_error(message.replace("6688", "6672"), "Worker_TP1 pid=61")
    classifier = FailureClassifier()
    for line in lines:
        classifier.feed(line)
    failure = classifier.classify(1, False)
    assert failure.kind is FailureKind.KV_CACHE_TOO_SMALL
    assert failure.values["estimated_max_model_len"] == 6688


# ---------------------------------------------------------------- after ready


def test_engine_killed_after_ready_fixture_exit_zero() -> None:
    classifier = FailureClassifier()
    parser = parse_log_file(FIXTURES / "ready-then-enginecore-killed.log", sink=classifier)
    assert parser.facts.server_started
    failure = classifier.classify(0, True)   # real 0.26 exits 0 here
    assert failure.kind is FailureKind.ENGINE_DEAD
    assert "EngineDeadError" in failure.message
    assert failure.values == {"exit_code": 0}


def test_clean_sigterm_is_not_a_failure_in_a_saved_log() -> None:
    classifier = FailureClassifier()
    parse_log_file(FIXTURES / "ready-then-sigterm.log", sink=classifier)
    assert classifier.classify(None, True) is None
    assert classifier.shutdown_requested
    # if the supervisor did not ask for it, the engine is gone all the same
    failure = classifier.classify(0, True)
    assert failure.kind is FailureKind.ENGINE_DEAD and "signal" in failure.message


def test_a_sigkill_of_the_api_server_is_said_as_such_not_as_a_shutdown() -> None:
    # its EngineCore, left behind, logs a signal-triggered shutdown; the main process was killed
    shutdown = "(EngineCore pid=2) INFO 12-04 05:30:23 [core.py:1698] [shutdown] EngineCore: trigger received signal=SIGTERM"
    after = classify([shutdown], exit_code=137, was_ready=True)
    assert after.kind is FailureKind.ENGINE_DEAD and after.values == {"exit_code": 137}
    assert after.message == ("vLLM was killed by SIGKILL after it was ready (exit code 137: `kill -9`, or the kernel's "
                             "OOM killer when host memory ran out)")
    before = classify(["(APIServer pid=1) INFO 12-04 05:30:20 [api_server.py:1] vLLM API server version 0.26.0"],
                      exit_code=-9)
    assert before.kind is FailureKind.UNKNOWN and before.message == ("vLLM was killed by SIGKILL before it was ready "
                                                                  "(`kill -9`, or the kernel's OOM killer when host memory ran out)")
    assert classify([shutdown], exit_code=143, was_ready=True).message == \
        "vLLM was killed by SIGTERM after it was ready (exit code 143)"
    assert classify([shutdown], exit_code=0, was_ready=True).message == \
        "vLLM shut down on a signal after it was ready (exit code 0)"
    assert classify([], exit_code=3, was_ready=True).message == "vLLM exited with code 3 after it was ready"


def test_exit_zero_after_ready_is_engine_dead() -> None:
    failure = classify(["(APIServer pid=1) INFO:     Application startup complete."], exit_code=0, was_ready=True)
    assert failure.kind is FailureKind.ENGINE_DEAD
    assert failure.values == {"exit_code": 0}


@pytest.mark.parametrize(
    "line",
    [
        "(APIServer pid=1) ERROR 05-01 10:00:00 [core_client.py:1] Engine core proc EngineCore_DP0 died unexpectedly, "
        "shutting down client.",
        "(EngineCore pid=2) ERROR 07-08 10:00:00 [multiproc_executor.py:1] Worker proc VllmWorker-1 died unexpectedly "
        "(exit code: -9), shutting down executor.",
        "(APIServer pid=1) WARNING 11-21 07:25:39 [core_client.py:702] [shutdown] MPClient: engine core exited "
        "unexpectedly; starting cleanup",
    ],
)
def test_engine_death_lines(line: str) -> None:
    failure = classify([line], exit_code=1, was_ready=True)
    assert failure.kind is FailureKind.ENGINE_DEAD
    assert failure.message == line.split("] ", 1)[1]


def test_runtime_oom_after_ready() -> None:
    lines = [
        "(EngineCore pid=2) ERROR 05-01 10:00:00 [core.py:1] EngineCore encountered a fatal error.",
        f"(EngineCore pid=2) ERROR 05-01 10:00:00 [core.py:1] torch.OutOfMemoryError: {TORCH_NEW}",
        "(APIServer pid=1) ERROR 05-01 10:00:00 [async_llm.py:1] vllm.v1.engine.exceptions.EngineDeadError: "
        "EngineCore encountered an issue. See stack trace (above) for the root cause.",
    ]
    failure = classify(lines, exit_code=0, was_ready=True)
    assert failure.kind is FailureKind.CUDA_OOM
    assert failure.values["runtime"] == 1 and failure.stage == "runtime"


def test_engine_killed_by_signal_during_startup() -> None:
    failure = classify(["(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. "
                        "Failed core proc(s): {'EngineCore_DP0': -9}"], exit_code=1)
    assert failure.kind is FailureKind.ENGINE_DEAD
    assert failure.values == {"engine_exit_code": -9, "exit_code": 1}


# ---------------------------------------------------------------- non-memory failures


def test_max_model_len_too_large_pydantic() -> None:
    lines = [
        "(APIServer pid=9) Traceback (most recent call last):",
        '(APIServer pid=9)   File "/vllm/engine/arg_utils.py", line 1, in create_model_config',
        "(APIServer pid=9) pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
        "(APIServer pid=9)   Value error, User-specified max_model_len (100000) is greater than the derived "
        "max_model_len (max_position_embeddings=40960 or model_max_length=None in model's config.json). To allow "
        "overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must "
        "be used with extreme caution. [type=value_error, input_value=ArgsKwargs((), {'model': 'x', 'tokens': [1]}), "
        "input_type=ArgsKwargs]",
        "(APIServer pid=9)     For further information visit https://errors.pydantic.dev/2.11/v/value_error",
    ]
    failure = classify(lines)
    assert failure.kind is FailureKind.MAX_MODEL_LEN_TOO_LARGE
    assert failure.values == {"max_model_len": 100000, "derived_max_model_len": 40960}
    assert failure.message.startswith("User-specified max_model_len (100000)")
    assert "[type=" not in failure.message


def test_max_model_len_too_large_v085() -> None:
    failure = classify([
        "ValueError: User-specified max_model_len (65536) is greater than the derived max_model_len "
        "(max_position_embeddings=32768 or model_max_length=None in model's config.json). This may lead to "
        "incorrect model outputs or CUDA errors. To allow overriding this maximum, set the env var "
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1"])
    assert failure.kind is FailureKind.MAX_MODEL_LEN_TOO_LARGE
    assert failure.values == {"max_model_len": 65536, "derived_max_model_len": 32768}


def test_pydantic_field_error_is_bad_arguments() -> None:
    lines = [
        "(APIServer pid=9) pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig",
        "(APIServer pid=9) gpu_memory_utilization",
        "(APIServer pid=9)   Input should be less than or equal to 1 [type=less_than_equal, input_value=1.5, "
        "input_type=float]",
    ]
    failure = classify(lines)
    assert failure.kind is FailureKind.BAD_ARGUMENTS
    assert failure.message == "ValidationError: CacheConfig.gpu_memory_utilization: Input should be less than or equal to 1"
    assert failure.to_json()["kind"] == "unknown"   # CONTRACT's kinds only


@pytest.mark.parametrize(
    "lines, exit_code",
    [
        (["usage: vllm serve [model_tag] [options]", "vllm serve: error: unrecognized arguments: --max-modle-len 4096"], 2),
        (["usage: vllm serve [model_tag] [options]",
          "vllm serve: error: argument --dtype: invalid choice: 'fp7' (choose from 'auto', 'half', 'bfloat16')"], 2),
        (["TypeError: EngineArgs.__init__() got an unexpected keyword argument 'foo'"], 1),
        (["ValueError: max_cudagraph_capture_size and compilation_config.max_cudagraph_capture_size are mutually "
          "exclusive"], 1),
        ([], 2),
    ],
)
def test_bad_arguments(lines: list[str], exit_code: int) -> None:
    failure = classify(lines, exit_code=exit_code)
    assert failure.kind is FailureKind.BAD_ARGUMENTS
    if lines:
        assert failure.message == lines[-1]


@pytest.mark.parametrize(
    "line, port",
    [
        ("(APIServer pid=1) OSError: [Errno 98] Address already in use", None),
        ("(APIServer pid=1) ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8000): "
         "address already in use", 8000),
        ("(EngineCore pid=2) RuntimeError: The server socket has failed to listen on any local network address. "
         "port: 29500, useIpv6: 0, code: -98, name: EADDRINUSE, message: address already in use", 29500),
    ],
)
def test_port_in_use(line: str, port: int | None) -> None:
    failure = classify([line])
    assert failure.kind is FailureKind.PORT_IN_USE
    assert failure.values == ({} if port is None else {"port": port})


@pytest.mark.parametrize(
    "lines",
    [
        ["(APIServer pid=1) ValueError: Invalid repository ID or local directory specified: 'Qwen/Qwen3-4X'.",
         "(APIServer pid=1) Please verify the following requirements:"],
        ["(APIServer pid=1) huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-abc)",
         "(APIServer pid=1) ",
         "(APIServer pid=1) Repository Not Found for url: https://huggingface.co/Qwen/Qwen3-4X/resolve/main/config.json."],
        ["OSError: nope/model is not a local folder and is not a valid model identifier listed on "
         "'https://huggingface.co/models'"],
        ["OSError: Can't load the configuration of '/models/x'. If you were trying to load it from "
         "'https://huggingface.co/models', make sure you don't have a local directory with the same name."],
        ["huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
         "'namespace/repo_name': '/models/missing'. Use `repo_type` argument if needed."],
        ["FileNotFoundError: [Errno 2] No such file or directory: '/models/x/config.json'"],
        ["huggingface_hub.errors.GatedRepoError: 403 Client Error. Cannot access gated repo for url "
         "https://huggingface.co/meta-llama/x/resolve/main/config.json."],
    ],
    ids=["invalid-id", "repo-not-found", "not-local-folder", "cant-load-config", "hf-validation", "no-config", "gated"],
)
def test_model_not_found(lines: list[str]) -> None:
    failure = classify(lines)
    assert failure.kind is FailureKind.MODEL_NOT_FOUND


def test_repo_id_retry_error_alone_is_not_model_not_found() -> None:
    """vLLM logs a benign retry for local folders (#33545); only the raised HFValidationError counts."""
    classifier = FailureClassifier()
    classifier.feed("(APIServer pid=1) ERROR 02-02 14:28:39 [repo_utils.py:47] Error retrieving safetensors: Repo id "
                    "must be in the form 'repo_name' or 'namespace/repo_name': '/data/m'. Use `repo_type` argument if needed.")
    assert classifier.failure is None


def test_model_not_found_message_keeps_the_url() -> None:
    failure = classify([
        "(APIServer pid=1) huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-abc)",
        "(APIServer pid=1) Repository Not Found for url: https://huggingface.co/Qwen/Qwen3-4X/resolve/main/config.json.",
    ])
    assert "https://huggingface.co/Qwen/Qwen3-4X" in failure.message


# ---------------------------------------------------------------- unknown and noise


def test_unknown_failure_names_the_root_cause() -> None:
    lines = [
        "(Worker_TP0 pid=60) ERROR 07-25 10:00:00 [multiproc_executor.py:1] WorkerProc failed to start.",
        "(Worker_TP0 pid=60) ERROR 07-25 10:00:00 [multiproc_executor.py:1] RuntimeError: CUDA error: "
        "an illegal memory access was encountered",
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
    failure = classify(lines, exit_code=1)
    assert failure.kind is FailureKind.UNKNOWN
    assert failure.message == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert failure.values == {"exit_code": 1}
    # a saved log with the same lines: the fatal wrapper says startup ended
    assert classify(lines, exit_code=None).kind is FailureKind.UNKNOWN


def test_cublas_internal_error_at_tp_start_is_ours_and_unknown_to_the_contract() -> None:
    """The first TP 2 attempt on two H200s failed this way (flashinfer's all-reduce auto-selected)."""
    lines = [
        "(Worker_TP0 pid=60) ERROR 07-25 10:00:00 [multiproc_executor.py:1] WorkerProc failed to start.",
        "(Worker_TP0 pid=60) ERROR 07-25 10:00:00 [multiproc_executor.py:1] RuntimeError: CUDA error: "
        "CUBLAS_STATUS_INTERNAL_ERROR when calling `cublasCreate(handle)`",
        "(APIServer pid=1) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
    ]
    failure = classify(lines, exit_code=1)
    assert failure.kind is FailureKind.MULTI_GPU_COMM and failure.to_json()["kind"] == "unknown"
    assert failure.message == "RuntimeError: CUDA error: CUBLAS_STATUS_INTERNAL_ERROR when calling `cublasCreate(handle)`"


def test_timeout_waiting_for_engine() -> None:
    failure = classify(["(APIServer pid=1) TimeoutError: Timed out waiting for engine core processes to start. This is "
                        "often caused by slow weight loading for large models. Waited 600s (configured by "
                        "VLLM_ENGINE_READY_TIMEOUT_S)."], exit_code=None)
    assert failure.kind is FailureKind.UNKNOWN
    assert failure.message.startswith("TimeoutError: Timed out waiting")


def test_noise_is_not_a_failure() -> None:
    lines = [
        "(APIServer pid=5071) WARNING 11-21 07:27:00 [system_utils.py:299] Found ulimit of 20000 and failed to "
        "automatically increase with error current limit exceeds maximum limit. This can cause fd limit errors like "
        "`OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n",
        "(EngineCore pid=1) WARNING 11-21 07:27:00 [x.py:1] Lowering max_num_seqs may avoid running out of memory",
        "[W1121 07:27:16.650291128 socket.cpp:207] [c10d] The hostname of the client socket cannot be retrieved. err=-3",
        "/usr/lib/python3.12/multiprocessing/resource_tracker.py:254: UserWarning: resource_tracker: There appear to be "
        "1 leaked semaphore objects to clean up at shutdown",
        "(APIServer pid=1) INFO 11-21 07:27:00 [x.py:1] GPU KV cache usage: 99.0% — not out of memory yet",
    ]
    classifier = FailureClassifier()
    for line in lines:
        classifier.feed(line)
    assert classifier.failure is None
    assert classifier.classify(None, False) is None
    assert classifier.classify(None, True) is None


def test_still_starting_is_no_failure() -> None:
    classifier = FailureClassifier()
    for line in (FIXTURES / "kv-cache-too-small.log").read_text(encoding="utf-8").split("\n")[:30]:
        classifier.feed(line)
    assert classifier.classify(None, False) is None


def test_a_precise_cause_beats_the_consequences() -> None:
    lines = [
        "(APIServer pid=1) ERROR x [core_client.py:1] Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.",
        f"(EngineCore_DP0 pid=7) torch.OutOfMemoryError: {TORCH_NEW}",
        "(EngineCore_DP0 pid=7) ValueError: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine.",
    ]
    assert classify(lines).kind is FailureKind.NO_KV_CACHE_MEMORY


def test_failure_kind_values_match_contract() -> None:
    assert {k.contract_kind for k in FailureKind} == {
        "kv_cache_too_small", "no_kv_cache_memory", "insufficient_free_memory", "cuda_oom",
        "max_model_len_too_large", "engine_dead", "port_in_use", "model_not_found", "unknown",
    }
    assert FailureKind("bad_arguments") is FailureKind.BAD_ARGUMENTS


def test_ray_node_manager_lines_are_not_engine_failures():
    c = FailureClassifier()
    c.feed("(raylet) [2026-11-21 08:40:01,002 E 1234 1234] (raylet) agent_manager.cc:83: The agent is "
           "killed by the OS (e.g., out of memory). CUDA out of memory. Tried to allocate 2.00 MiB.")
    c.feed("(raylet, ip=10.0.0.2) RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB")
    assert c.classify(exit_code=0, was_ready=True).kind == FailureKind.ENGINE_DEAD


@pytest.mark.parametrize("lines, reported", [
    # the API server's output handler, every V1 version (real 0.26 and 0.34 print it at ERROR)
    (["(APIServer pid=1) ERROR 12-03 18:00:22 [async_llm.py:957] vllm.v1.engine.exceptions.EngineDeadError: "
      "EngineCore encountered an issue. See stack trace (above) for the root cause."], True),
    # a worker process, seen by the executor's monitor
    (["(EngineCore pid=926) ERROR 12-04 02:40:02 [multiproc_executor.py:284] Worker proc VllmWorker-0 died "
      "unexpectedly (exit code: None), shutting down executor."], True),
    # an unprefixed exception line (0.31+ prints tracebacks without the logger's prefix)
    (["vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue."], True),
    # a warning first (0.26's client cleanup): the ERROR line follows; not yet
    (["(APIServer pid=1) WARNING 12-03 18:00:22 [core_client.py:869] [shutdown] MPClient: engine core exited "
      "unexpectedly; starting cleanup"], False),
    # a logged prompt may quote anything
    (["(APIServer pid=1) INFO 12-03 18:00:22 [logger.py:41] Received request chatcmpl-1: prompt: 'why did my "
      "EngineDeadError say the worker died unexpectedly?'"], False),
])
def test_an_engine_death_is_reported_only_by_an_error_line_or_an_exception(lines: list[str], reported: bool) -> None:
    classifier = FailureClassifier()
    for line in lines:
        classifier.feed(line)
    assert classifier.engine_death_reported is reported


@pytest.mark.parametrize("value, keeps", [(None, False), ("0", False), ("", False), ("1", True), ("2", True),
                                          ("yes", False)])
def test_vllm_keeps_a_dead_engine_serving_only_when_its_variable_is_a_nonzero_integer(value: str | None,
                                                                                      keeps: bool) -> None:
    env = {} if value is None else {"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": value}
    assert keeps_dead_engine_serving(env) is keeps
