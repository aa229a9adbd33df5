"""A realistic chatty vLLM output stream, for log-ingestion benchmarks.

Startup lines as vLLM 0.26.0 prints them (prefix, levels, a tqdm progress line with `\\r`
updates, some ANSI colour), then the run-time chatter a busy server produces: uvicorn access
lines, the periodic stats line, request logging. Stdlib only: the chatty fake engine imports it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

API = "(APIServer pid=3738) "
CORE = "(EngineCore pid=3863) "

STARTUP = [
    API + "INFO 11-21 07:24:39 [api_utils.py:273] non-default args: {'model_tag': 'Qwen/Qwen3-4B', 'port': 8001, "
    "'model': 'Qwen/Qwen3-4B', 'max_model_len': 10000, 'served_model_name': ['qwen3-4b'], 'gpu_memory_utilization': 0.9}",
    API + "WARNING 11-21 07:24:39 [system_utils.py:299] Found ulimit of 20000 and failed to automatically increase with error "
    "current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] Too many open files`",
    API + "INFO 11-21 07:24:39 [model.py:623] Resolved architecture: Qwen3ForCausalLM",
    API + "INFO 11-21 07:24:39 [model.py:1788] Using max model len 10000",
    API + "INFO 11-21 07:24:39 [scheduler.py:252] Chunked prefill is enabled with max_num_batched_tokens=8192.",
    CORE + "INFO 11-21 07:24:53 [core.py:116] Initializing a V1 LLM engine (v0.26.0) with config: model='Qwen/Qwen3-4B', "
    "speculative_config=None, tokenizer='Qwen/Qwen3-4B', skip_tokenizer_init=False, tokenizer_mode=auto, revision=None",
    CORE + "INFO 11-21 07:24:55 [gpu_worker.py:378] Using V2 Model Runner",
    CORE + "INFO 11-21 07:24:55 [model_runner.py:284] Loading model from scratch...",
    CORE + "INFO 11-21 07:24:56 [cuda.py:482] Using FLASH_ATTN attention backend out of potential backends: "
    "['FLASH_ATTN', 'FLASHINFER', 'TRITON_ATTN', 'FLEX_ATTENTION'].",
    CORE + "INFO 11-21 07:24:57 [model_runner.py:305] Model loading took 7.56 GiB and 1.944633 seconds",
    CORE + "INFO 11-21 07:25:05 [backends.py:1155] Dynamo bytecode transform time: 7.24 s",
    CORE + "INFO 11-21 07:25:16 [backends.py:393] Compiling a graph for compile range (1, 8192) takes 10.83 s",
    CORE + "INFO 11-21 07:25:20 [monitor.py:53] torch.compile took 22.21 s in total",
    CORE + "INFO 11-21 07:25:21 [gpu_worker.py:560] Available KV cache memory: 15.17 GiB",
    CORE + "Capturing CUDA graphs (PIECEWISE):   0%|          | 0/51 [00:00<?, ?it/s]\rCapturing CUDA graphs "
    "(PIECEWISE):  12%|█▏        | 6/51 [00:00<00:01, 29.31it/s]\rCapturing CUDA graphs (PIECEWISE): 100%|██████████| 51/51",
    CORE + "INFO 11-21 07:25:26 [model_runner.py:747] Graph capturing finished in 4 secs, took 1.00 GiB",
    CORE + "INFO 11-21 07:25:37 [core.py:340] init engine (profile, create kv cache, warmup model) took 40.26 s (compilation: 22.21 s)",
]

# The facts whose arrival proves the daemon parsed everything before them.
FINAL_FACTS = [
    CORE + "INFO 11-21 07:25:21 [kv_cache_utils.py:2177] GPU KV cache size: {tokens:,} tokens",
    CORE + "INFO 11-21 07:25:21 [kv_cache_utils.py:2178] Maximum concurrency for {ctx:,} tokens per request: {conc:.2f}x",
]

READY = [
    API + "INFO 11-21 07:25:38 [api_server.py:677] Starting vLLM server on http://{host}:{port}",
    API + "INFO:     Started server process [3738]",
    API + "INFO:     Waiting for application startup.",
    API + "INFO:     Application startup complete.",
]

RUNTIME = [
    API + 'INFO:     127.0.0.1:{n} - "POST /v1/chat/completions HTTP/1.1" 200 OK',
    API + "INFO 11-21 07:26:{s:02d} [loggers.py:259] Engine 000: Avg prompt throughput: 1520.3 tokens/s, Avg generation "
    "throughput: 843.1 tokens/s, Running: 12 reqs, Waiting: 0 reqs, GPU KV cache usage: 23.4%, Prefix cache hit rate: 41.2%",
    API + "INFO 11-21 07:26:{s:02d} [logger.py:49] Received request chatcmpl-{n:08x}: params: SamplingParams(n=1, "
    "temperature=0.7, top_p=0.8, max_tokens=512), prompt_token_ids: None, lora_request: None.",
    API + "\x1b[32mINFO\x1b[0m 11-21 07:26:{s:02d} [async_llm.py:331] Added request chatcmpl-{n:08x}.",
    API + 'INFO:     127.0.0.1:{n} - "GET /metrics HTTP/1.1" 200 OK',
    API + 'INFO:     127.0.0.1:{n} - "GET /health HTTP/1.1" 200 OK',
    API + "WARNING 11-21 07:26:{s:02d} [protocol.py:58] The following fields were present in the request but ignored: {{'top_k'}}",
]


def runtime_lines(count: int) -> Iterator[str]:
    """`count` run-time lines, cycling through the templates with changing numbers."""
    templates = itertools.cycle(RUNTIME)
    for n in range(count):
        yield next(templates).format(n=40000 + n % 20000, s=n % 60)


def chatty_stream(count: int) -> list[str]:
    """The startup lines, then `count` run-time lines: what a busy engine writes."""
    return STARTUP + list(runtime_lines(max(0, count - len(STARTUP))))
