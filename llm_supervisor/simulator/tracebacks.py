"""Traceback frames of the failures the simulator reproduces, shaped like vLLM 0.26's (the
KV-cache and API-server frames are copied from the real H100 log). Only the final exception line
carries meaning for a log parser; the frames are there so the output reads like the real thing.
"""

from __future__ import annotations

Frame = tuple[str, int, str, str]

VLLM = "/usr/local/lib/python3.12/dist-packages/vllm"
TORCH = "/usr/local/lib/python3.12/dist-packages/torch"
PY = "/usr/lib/python3.12"


def _v(path: str, line: int, func: str, code: str) -> Frame:
    return (f"{VLLM}/{path}", line, func, code)


ENGINE_HEAD: list[Frame] = [
    _v("v1/engine/core.py", 1299, "run_engine_core", "engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)"),
    _v("v1/engine/core.py", 1065, "__init__", "super().__init__("),
]
_EXECUTOR_INIT: list[Frame] = [
    _v("v1/engine/core.py", 118, "__init__", "self.model_executor = executor_class(vllm_config)"),
    _v("v1/executor/abstract.py", 109, "__init__", "self._init_executor()"),
]
_KV_INIT: list[Frame] = [
    _v("v1/engine/core.py", 136, "__init__", "kv_cache_config = self._initialize_kv_caches(vllm_config)"),
]
_RPC_UNIPROC: list[Frame] = [
    _v("v1/executor/uniproc_executor.py", 80, "collective_rpc", "result = run_method(self.driver_worker, method, args, kwargs)"),
    _v("v1/serial_utils.py", 479, "run_method", "return func(*args, **kwargs)"),
]
_RPC_MULTIPROC: list[Frame] = [
    _v("v1/executor/multiproc_executor.py", 389, "collective_rpc", "return aggregate(get_response())"),
    _v("v1/executor/multiproc_executor.py", 372, "get_response", "raise RuntimeError("),
]
_TORCH_CTX: Frame = (f"{TORCH}/utils/_contextlib.py", 124, "decorate_context", "return func(*args, **kwargs)")

# per phase: the frames inside the worker (after the executor dispatch)
WORKER_FRAMES: dict[str, list[Frame]] = {
    "init_device": [
        _v("v1/worker/worker_base.py", 325, "init_device", "self.worker.init_device()  # type: ignore"),
        _v("v1/worker/gpu_worker.py", 265, "init_device",
           "self.requested_memory = request_memory(init_snapshot, self.cache_config)"),
        _v("v1/worker/utils.py", 412, "request_memory", "raise ValueError("),
    ],
    "load": [
        _v("v1/worker/worker_base.py", 331, "load_model", "self.worker.load_model()"),
        _v("v1/worker/gpu_worker.py", 402, "load_model", "self.model_runner.load_model(eep_scale_up=eep_scale_up)"),
        _v("v1/worker/gpu/model_runner.py", 298, "load_model", "self.model = model_loader.load_model("),
        _v("model_executor/model_loader/base_loader.py", 56, "load_model", "model = initialize_model("),
        _v("model_executor/models/qwen3.py", 287, "__init__", "self.model = Qwen3Model(vllm_config=vllm_config,"),
        _v("model_executor/layers/vocab_parallel_embedding.py", 278, "__init__", "self.weight = Parameter("),
    ],
    "profile": [
        _TORCH_CTX,
        _v("v1/worker/gpu_worker.py", 497, "determine_available_memory", "self.model_runner.profile_run()"),
        _v("v1/worker/gpu/model_runner.py", 612, "profile_run", "hidden_states, sample_hidden_states = self._dummy_run("),
        _TORCH_CTX,
        _v("v1/worker/gpu/model_runner.py", 571, "_dummy_run", "outputs = self.model("),
        _v("model_executor/layers/activation.py", 86, "forward_native", "return F.silu(x[..., :d]) * x[..., d:]"),
    ],
    "kv_alloc": [
        _v("v1/worker/gpu_worker.py", 612, "initialize_from_config", "self.model_runner.initialize_kv_cache(kv_cache_config)"),
        _v("v1/worker/gpu/model_runner.py", 402, "initialize_kv_cache", "kv_caches = init_kv_cache("),
        _v("v1/worker/gpu/attn_utils.py", 131, "_allocate_kv_cache", "tensor = torch.zeros(kv_cache_tensor.size, dtype=torch.int8, device=device)"),
    ],
    "graphs": [
        _v("v1/worker/gpu_worker.py", 724, "compile_or_warm_up_model", "cuda_graph_memory_bytes = self.model_runner.capture_model()"),
        _TORCH_CTX,
        _v("v1/worker/gpu/model_runner.py", 733, "capture_model", "self.cudagraph_manager.capture("),
        _v("v1/worker/gpu/cudagraph_utils.py", 198, "capture_graph", "with torch.cuda.graph(graph, self.pool):"),
        (f"{TORCH}/cuda/graphs.py", 265, "__exit__", "self.cuda_graph.capture_end()"),
    ],
}
# how EngineCore reaches each phase (TP=1: the worker runs inside EngineCore)
ENGINE_PHASE_FRAMES: dict[str, list[Frame]] = {
    "init_device": _EXECUTOR_INIT + [
        _v("v1/executor/uniproc_executor.py", 52, "_init_executor", "self.driver_worker.init_device()")],
    "load": _EXECUTOR_INIT + [
        _v("v1/executor/uniproc_executor.py", 54, "_init_executor", "self.driver_worker.load_model()")],
    "profile": _KV_INIT + [
        _v("v1/engine/core.py", 268, "_initialize_kv_caches",
           "available_gpu_memory = self.model_executor.determine_available_memory()"),
        _v("v1/executor/abstract.py", 137, "determine_available_memory",
           'return self.collective_rpc("determine_available_memory")'),
    ],
    "kv_check": _KV_INIT + [
        _v("v1/engine/core.py", 297, "_initialize_kv_caches", "kv_cache_configs = get_kv_cache_configs("),
        _v("v1/core/kv_cache_utils.py", 2132, "get_kv_cache_configs", "_check_enough_kv_cache_memory("),
        _v("v1/core/kv_cache_utils.py", 778, "_check_enough_kv_cache_memory", "raise ValueError("),
    ],
    "no_kv": _KV_INIT + [
        _v("v1/engine/core.py", 297, "_initialize_kv_caches", "kv_cache_configs = get_kv_cache_configs("),
        _v("v1/core/kv_cache_utils.py", 2132, "get_kv_cache_configs", "_check_enough_kv_cache_memory("),
        _v("v1/core/kv_cache_utils.py", 758, "_check_enough_kv_cache_memory", "raise ValueError("),
    ],
    "auto_fit": _KV_INIT + [
        _v("v1/engine/core.py", 297, "_initialize_kv_caches", "kv_cache_configs = get_kv_cache_configs("),
        _v("v1/core/kv_cache_utils.py", 2118, "get_kv_cache_configs", "_auto_fit_max_model_len(vllm_config, projected_groups_per_worker, available_memory)"),
        _v("v1/core/kv_cache_utils.py", 1371, "_auto_fit_max_model_len", "raise ValueError("),
    ],
    "kv_alloc": _KV_INIT + [
        _v("v1/engine/core.py", 310, "_initialize_kv_caches", "self.model_executor.initialize_from_config(kv_cache_configs)"),
        _v("v1/executor/abstract.py", 118, "initialize_from_config",
           'self.collective_rpc("initialize_from_config", args=(kv_cache_configs,))'),
    ],
    "graphs": _KV_INIT + [
        _v("v1/engine/core.py", 321, "_initialize_kv_caches", "self.model_executor.compile_or_warm_up_model()"),
        _v("v1/executor/abstract.py", 125, "compile_or_warm_up_model", 'self.collective_rpc("compile_or_warm_up_model")'),
    ],
}

WORKER_START_HEAD: list[Frame] = [
    _v("v1/executor/multiproc_executor.py", 752, "worker_main", "worker = WorkerProc(*args, **kwargs)"),
    _v("v1/executor/multiproc_executor.py", 572, "__init__", "self.worker.init_device()"),
]
WORKER_BUSY_HEAD: list[Frame] = [
    _v("v1/executor/multiproc_executor.py", 843, "worker_busy_loop", "output = func(*args, **kwargs)"),
]
ENGINE_WORKER_START: list[Frame] = _EXECUTOR_INIT + [
    _v("v1/executor/multiproc_executor.py", 176, "_init_executor", "self.workers = WorkerProc.wait_for_ready(unready_workers)"),
    _v("v1/executor/multiproc_executor.py", 705, "wait_for_ready", "raise e from None"),
]
WORKER_START_FAILED = ("Exception: WorkerProc initialization failed due to an exception in a background process."
                       " See stack trace for root cause.")

ENGINE_BUSY: list[Frame] = [
    _v("v1/engine/core.py", 1309, "run_engine_core", "engine_core.run_busy_loop()"),
    _v("v1/engine/core.py", 1350, "run_busy_loop", "self._process_engine_step()"),
    _v("v1/engine/core.py", 1385, "_process_engine_step", "outputs, model_executed = self.step_fn()"),
    _v("v1/engine/core.py", 455, "step_with_batch_queue", "model_output = future.result()"),
    _v("v1/executor/uniproc_executor.py", 80, "collective_rpc", "result = run_method(self.driver_worker, method, args, kwargs)"),
    _TORCH_CTX,
    _v("v1/worker/gpu/model_runner.py", 1021, "execute_model", "hidden_states = self.model("),
    _v("model_executor/layers/activation.py", 86, "forward_native", "return F.silu(x[..., :d]) * x[..., d:]"),
]

# multiprocessing prints the exception once more on stderr
MP_BOOTSTRAP: list[Frame] = [
    (f"{PY}/multiprocessing/process.py", 314, "_bootstrap", "self.run()"),
    (f"{PY}/multiprocessing/process.py", 108, "run", "self._target(*self._args, **self._kwargs)"),
    _v("v1/engine/core.py", 1334, "run_engine_core", "raise e"),
]


# A worker process or Ray actor died while serving: the executor's monitor calls back, EngineCore's
# busy loop raises (v1/engine/core.py `_handle_client_request`, EXECUTOR_FAILED, since 0.8)
EXECUTOR_FAILED: list[Frame] = [
    _v("v1/engine/core.py", 1323, "run_engine_core", "engine_core.run_busy_loop()"),
    _v("v1/engine/core.py", 1362, "run_busy_loop", "self._process_input_queue()"),
    _v("v1/engine/core.py", 1385, "_process_input_queue", "self._handle_client_request(*req)"),
    _v("v1/engine/core.py", 1500, "_handle_client_request", 'raise RuntimeError("Executor failed.")'),
]


def rpc_frames(tp: int) -> list[Frame]:
    return _RPC_UNIPROC if tp == 1 else _RPC_MULTIPROC


API_SERVER_STARTUP: list[Frame] = [
    ("<frozen runpy>", 198, "_run_module_as_main", ""),
    ("<frozen runpy>", 88, "_run_code", ""),
    _v("entrypoints/cli/main.py", 101, "<module>", "main()"),
    _v("entrypoints/cli/main.py", 95, "main", "args.dispatch_function(args)"),
    _v("entrypoints/cli/serve.py", 148, "cmd", "uvloop.run(run_server(args))"),
    ("/usr/local/lib/python3.12/dist-packages/uvloop/__init__.py", 96, "run", "return __asyncio.run("),
    (f"{PY}/asyncio/runners.py", 194, "run", "return runner.run(main)"),
    (f"{PY}/asyncio/runners.py", 118, "run", "return self._loop.run_until_complete(task)"),
    ("uvloop/loop.pyx", 1515, "uvloop.loop.Loop.run_until_complete", ""),
    ("/usr/local/lib/python3.12/dist-packages/uvloop/__init__.py", 48, "wrapper", "return await main"),
]
API_BIND: list[Frame] = [
    _v("entrypoints/openai/api_server.py", 752, "run_server", "listen_address, sock = setup_server(args)"),
    _v("entrypoints/openai/api_server.py", 725, "setup_server", "sock = create_server_socket(sock_addr)"),
    _v("entrypoints/openai/api_server.py", 690, "create_server_socket", "sock.bind(addr)"),
]
API_ENGINE_CLIENT: list[Frame] = [
    _v("entrypoints/openai/api_server.py", 759, "run_server", "await run_server_worker(listen_address, sock, args, **uvicorn_kwargs)"),
    _v("entrypoints/openai/api_server.py", 773, "run_server_worker", "async with build_async_engine_client("),
    (f"{PY}/contextlib.py", 210, "__aenter__", "return await anext(self.gen)"),
    _v("entrypoints/openai/api_server.py", 139, "build_async_engine_client", "async with build_async_engine_client_from_engine_args("),
    (f"{PY}/contextlib.py", 210, "__aenter__", "return await anext(self.gen)"),
]
API_CONFIG: list[Frame] = [
    _v("entrypoints/openai/api_server.py", 164, "build_async_engine_client_from_engine_args",
       "vllm_config = engine_args.create_engine_config(usage_context=usage_context)"),
    _v("engine/arg_utils.py", 1590, "create_engine_config", "model_config = self.create_model_config()"),
    _v("engine/arg_utils.py", 1419, "create_model_config", "return ModelConfig("),
]
API_VLLM_CONFIG: list[Frame] = [
    _v("entrypoints/openai/api_server.py", 164, "build_async_engine_client_from_engine_args",
       "vllm_config = engine_args.create_engine_config(usage_context=usage_context)"),
    _v("engine/arg_utils.py", 1843, "create_engine_config", "config = VllmConfig("),
]
# a check of EngineArgs itself (a flag beside its compilation config key), as vLLM 0.26.0 printed it
API_ENGINE_ARGS: list[Frame] = [
    _v("entrypoints/openai/api_server.py", 163, "build_async_engine_client_from_engine_args",
       "vllm_config = engine_args.create_engine_config(usage_context=usage_context)"),
    _v("engine/arg_utils.py", 2347, "create_engine_config", "raise ValueError("),
]
API_ENGINE_START: list[Frame] = [
    _v("entrypoints/openai/api_server.py", 175, "build_async_engine_client_from_engine_args", "async_llm = AsyncLLM.from_vllm_config("),
    _v("v1/engine/async_llm.py", 217, "from_vllm_config", "return cls("),
    _v("v1/engine/async_llm.py", 146, "__init__", "self.engine_core = EngineCoreClient.make_async_mp_client("),
    _v("v1/engine/core_client.py", 132, "make_async_mp_client", "return AsyncMPClient(*client_args)"),
    _v("v1/engine/core_client.py", 963, "__init__", "super().__init__("),
    _v("v1/engine/core_client.py", 573, "__init__", "with launch_core_engines("),
    (f"{PY}/contextlib.py", 144, "__exit__", "next(self.gen)"),
    _v("v1/engine/utils.py", 1213, "launch_core_engines", "wait_for_engine_startup("),
    _v("v1/engine/utils.py", 1272, "wait_for_engine_startup", "raise RuntimeError("),
]
API_ENGINE_TIMEOUT: list[Frame] = API_ENGINE_START[:-1] + [
    _v("v1/engine/utils.py", 1251, "wait_for_engine_startup", "raise TimeoutError("),
]
API_OUTPUT_HANDLER: list[Frame] = [
    _v("v1/engine/async_llm.py", 660, "output_handler", "outputs = await engine_core.get_output_async()"),
    _v("v1/engine/core_client.py", 1061, "get_output_async", "raise self._format_exception(outputs) from None"),
]
ENGINE_DEAD = ("vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue."
               " See stack trace (above) for the root cause.")
