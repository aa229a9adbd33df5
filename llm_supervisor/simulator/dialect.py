"""What differs between vLLM versions in what the simulator prints and how it sizes memory
(`--vllm-version`, else LLM_SUPERVISOR_SIM_VLLM_VERSION).

Thresholds follow the source history in the project's vLLM reference (§1-§4) and
docs/vllm-versions.md (0.26 → 0.34, read from the wheels); the versions the simulator is tested
with are 0.8.5, 0.11.0, 0.26.0 (matching the real H100 logs) and 0.34.0 (the default, the newest
release, matching the logs generated from its source: tests/fixtures/generated/vllm-0.34.0).
Other versions get the behaviour of the nearest threshold below them. File:line of a 0.34 line
the generated fixtures do not show is read from the 0.34.0 wheel's source; where 0.34 has no
such line any more, the simulator does not print it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_supervisor.simulator import tracebacks as tb
from llm_supervisor.simulator.logs import traceback_text

DEFAULT_VERSION = "0.34.0"
TESTED_VERSIONS = ("0.8.5", "0.11.0", "0.26.0", "0.34.0")
DOCS_MEMORY = "https://docs.vllm.ai/en/latest/configuration/conserving_memory/"


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        raise ValueError(f"not a vLLM version: {text!r} (e.g. 0.8.5, 0.11.0, 0.26.0)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


@dataclass(frozen=True)
class Dialect:
    version: str

    @property
    def v(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return self.v >= (major, minor, patch)

    # ------------------------------------------------------------ process prefixes (§1.1)

    @property
    def ansi_prefix(self) -> bool:
        """Cyan prefixes even on pipes until v0.16."""
        return not self.at_least(0, 16)

    @property
    def api_name(self) -> str | None:
        return "APIServer" if self.at_least(0, 10, 1) else None

    def engine_name(self, dp_rank: int, dp_size: int) -> str | None:
        if not self.at_least(0, 10, 1):
            return f"EngineCore_{dp_rank}" if dp_size > 1 else None
        if not self.at_least(0, 11):
            return f"EngineCore_{dp_rank}"
        if self.at_least(0, 18) and dp_size == 1:
            return "EngineCore"
        return f"EngineCore_DP{dp_rank}"

    def engine_proc_label(self, dp_rank: int) -> str:
        """The name in "Failed core proc(s)" and the multiprocessing "Process …:" line."""
        if not self.at_least(0, 11):
            return f"EngineCore_{dp_rank}"
        return f"EngineCore_DP{dp_rank}"

    def worker_name(self, rank: int, tp_rank: int, pp_rank: int, pp_size: int, tp_size: int = 2,
                    dp_rank: int = 0, dp_size: int = 1) -> str:
        """`Worker` plus a part per parallel group larger than one (DP, PP, TP), as vLLM names
        worker processes; "VllmWorker rank=N" before v0.10.1."""
        if not self.at_least(0, 10, 1):
            return f"VllmWorker rank={rank}"
        pp = f"PP{pp_rank}_" if pp_size > 1 else ""
        if not self.at_least(0, 11):
            return f"VllmWorker {pp}TP{tp_rank}"
        parts = [f"DP{dp_rank}"] if dp_size > 1 else []
        parts += [f"PP{pp_rank}"] if pp_size > 1 else []
        parts += [f"TP{tp_rank}"] if tp_size > 1 else []
        return "_".join(["Worker", *parts])  # one worker of its own (`--distributed-executor-backend mp`): "Worker"

    # ------------------------------------------------------------ which lines exist

    @property
    def logo(self) -> bool:
        return self.at_least(0, 15)

    @property
    def non_default_args(self) -> bool:
        return self.at_least(0, 10)

    @property
    def v2_runner(self) -> bool:
        return self.at_least(0, 22)

    @property
    def v2_runner_line(self) -> bool:
        """"Using V2 Model Runner" and "Asynchronous scheduling is enabled": gone in 0.34."""
        return self.at_least(0, 22) and not self.at_least(0, 34)

    @property
    def load_oom_line(self) -> bool:
        """"Failed to load model - not enough GPU memory …": 0.13 to 0.33."""
        return self.at_least(0, 13) and not self.at_least(0, 34)

    @property
    def ray_executor_v2(self) -> bool:
        """`--distributed-executor-backend ray` runs RayExecutorV2 (VLLM_USE_RAY_V2_EXECUTOR_BACKEND
        defaults to 1 in 0.26): `RayWorkerProc` actors that log as vLLM workers, watched by a monitor
        thread; before, `RayWorkerWrapper` actors driven by a compiled DAG."""
        return self.at_least(0, 26)

    @property
    def unprefixed_raw(self) -> bool:
        """From 0.31 only logger records carry `(Name pid=N)`: uvicorn, tqdm and raw tracebacks do not."""
        return self.at_least(0, 31)

    @property
    def consumed_summary(self) -> bool:
        """0.28+: "Actual usage is X GiB for consumed memory (weights + non-torch), …"."""
        return self.at_least(0, 28)

    @property
    def estimates_graphs(self) -> bool:
        """0.30+: model runner V2 profiles CUDA-graph memory and takes it out of the budget
        (0.34 too, but only with the extensible KV cache off)."""
        return self.at_least(0, 30)

    @property
    def extensible_kv_cache(self) -> bool:
        """0.34: the extensible KV cache exists (on by default on CUDA)."""
        return self.at_least(0, 34)

    @property
    def memory_0_34(self) -> bool:
        """0.34 (torch 2.14): more non-torch memory, a larger activation peak that a cold compile
        does not grow, torch's reservation growth kept for transients, smaller CUDA graphs, and
        64-token blocks (memory.V034_*)."""
        return self.at_least(0, 34)

    @property
    def null_block_reserved(self) -> bool:
        """0.30+: the KV fit check and the estimated length leave out one block (the null block)."""
        return self.at_least(0, 30)

    @property
    def large_gpu_batch_default(self) -> bool:
        """0.28+: GPUs of 160 GiB or more default to 16,384 batched tokens."""
        return self.at_least(0, 28)

    @property
    def available_kv_line(self) -> bool:
        return self.at_least(0, 9, 2)

    @property
    def kv_lines_per_worker(self) -> bool:
        """KV size/concurrency printed once per worker by EngineCore before v0.11.1."""
        return not self.at_least(0, 11, 1)

    @property
    def load_lines_per_worker(self) -> bool:
        """"Model loading took"/"Available KV cache memory" once per worker before v0.18."""
        return not self.at_least(0, 18)

    @property
    def combined_kv_line(self) -> bool:
        return self.at_least(0, 27)

    @property
    def free_memory_check(self) -> bool:
        return self.at_least(0, 9, 1)

    @property
    def memory_summary_line(self) -> bool:
        return self.at_least(0, 22)

    @property
    def shutdown_lines(self) -> bool:
        return self.at_least(0, 24)

    @property
    def so_reuseport(self) -> bool:
        """vLLM set SO_REUSEPORT unconditionally until v0.25: a second instance binds silently."""
        return not self.at_least(0, 25)

    @property
    def dead_engine_health_status(self) -> int:
        if not self.at_least(0, 9, 2):
            return 200
        if not self.at_least(0, 11):
            return 500
        return 503

    @property
    def kv_usage_metric(self) -> str:
        return "vllm:kv_cache_usage_perc" if self.at_least(0, 9, 2) else "vllm:gpu_cache_usage_perc"

    @property
    def cache_info_has_kv_size(self) -> bool:
        return self.at_least(0, 23)

    @property
    def cache_info_has_blocks(self) -> bool:
        return self.at_least(0, 9)

    @property
    def auto_fit(self) -> bool:
        return self.at_least(0, 14)

    # ------------------------------------------------------------ source locations

    def src(self, key: str) -> str:
        if self.at_least(0, 34):
            table = SRC_0_34
        else:
            table = SRC_0_26 if self.at_least(0, 22) else SRC_0_11 if self.at_least(0, 10) else SRC_0_8
        return table.get(key) or SRC_0_26.get(key) or SRC_0_34[key]

    def worker_died(self, rank: int, exit_code: int | None) -> str:
        """The executor's monitor when a worker process dies while serving (`exit code` from 0.26)."""
        code = f" (exit code: {exit_code})" if self.at_least(0, 26) else ""
        return f"Worker proc VllmWorker-{rank} died unexpectedly{code}, shutting down executor."

    def executor_failed(self) -> str:
        """EngineCore after its executor's failure callback (a worker process or Ray actor died
        while serving): "Executor failed." out of the busy loop."""
        return "EngineCore encountered a fatal error.\n" + traceback_text(tb.EXECUTOR_FAILED, "RuntimeError: Executor failed.")

    # ------------------------------------------------------------ startup lines

    def model_loading(self, nbytes: int, seconds: float, v2_runner: bool) -> str:
        gib = nbytes / (1 << 30)
        if self.at_least(0, 28):
            return f"Model loading took {round(gib, 2)} GiB memory and {seconds:.6f} seconds"
        if v2_runner:
            return f"Model loading took {round(gib, 2)} GiB and {seconds:.6f} seconds"
        if self.at_least(0, 14):
            return f"Model loading took {round(gib, 2)} GiB memory and {seconds:.6f} seconds"
        return f"Model loading took {gib:.4f} GiB and {seconds:.6f} seconds"

    def available_kv(self, nbytes: int) -> str:
        gib = nbytes / (1 << 30)
        if self.at_least(0, 14):
            return f"Available KV cache memory: {round(gib, 2)} GiB"
        return f"Available KV cache memory: {gib:.2f} GiB"

    def kv_size_lines(self, tokens: int, max_model_len: int, concurrency: float) -> list[str]:
        size = f"GPU KV cache size: {tokens:,} tokens"
        conc = f"Maximum concurrency for {max_model_len:,} tokens per request: {concurrency:.2f}x"
        if self.combined_kv_line:
            return [f"{size}, {conc}"]
        return [size, conc]

    def init_engine(self, seconds: float, compile_seconds: float | None) -> str:
        head = "init engine (profile, create kv cache, warmup model) took"
        if not self.at_least(0, 20):
            return f"{head} {seconds:.2f} seconds"
        if compile_seconds is None:
            return f"{head} {seconds:.2f} s"
        return f"{head} {seconds:.2f} s (compilation: {compile_seconds:.2f} s)"

    def starting_server(self, host: str, port: int) -> str:
        shown = host or "0.0.0.0"
        if self.at_least(0, 17):
            return f"Starting vLLM server on http://{shown}:{port}"
        if self.at_least(0, 9, 2):
            return f"Starting vLLM API server 0 on http://{shown}:{port}"
        return f"Starting vLLM API server on http://{shown}:{port}"

    # ------------------------------------------------------------ failure messages (§2, §3)

    def kv_hint(self, util: float, extensible: bool, after_warmup: bool) -> str:
        """0.34's `_more_kv_cache_memory_hint` (v1/core/kv_cache_planning.py)."""
        if not extensible:
            return ("Try increasing `gpu_memory_utilization` when initializing the engine (this flag also controls CPU"
                    " memory reservation on the CPU backend, despite its name).")
        used_by = "the model, its activations, CUDA graphs and warmup" if after_warmup else "the model and its activations"
        graphs = (" CUDA graphs take less with fewer or smaller capture sizes in the compilation config."
                  if after_warmup else "")
        if util < 1.0:
            return (f"The KV cache gets what is left after {used_by} within `gpu_memory_utilization`={util}; increase it"
                    " (with the extensible KV cache it defaults to 1.0) or decrease `max_model_len` or `max_num_seqs`."
                    + graphs)
        return (f"The extensible KV cache already takes all device memory left after {used_by}; decrease"
                " `max_model_len` or `max_num_seqs`, or the model needs a device with more memory." + graphs)

    def no_kv_memory(self, hint: str | None = None) -> str:
        base = "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine"
        if self.at_least(0, 34):
            return f"No available memory for the cache blocks. {hint or self.kv_hint(0.92, False, False)} See {DOCS_MEMORY} for more details."
        if self.at_least(0, 22):
            return (base + " (this flag also controls CPU memory reservation on the CPU backend, despite its name)."
                    f" See {DOCS_MEMORY} for more details.")
        if self.at_least(0, 13):
            return base + f". See {DOCS_MEMORY} for more details."
        return base + "."

    def kv_too_small(self, max_model_len: int, needed: int, available: int, estimate: int,
                     hint: str | None = None) -> str:
        gib = 1 << 30
        if self.at_least(0, 14):
            need_s, avail_s = f"{round(needed / gib, 2)}", f"{round(available / gib, 2)}"
        else:
            need_s, avail_s = f"{needed / gib:.2f}", f"{available / gib:.2f}"
        who = "model's" if self.at_least(0, 22) else "models's"
        head = (f"To serve at least one request with the {who} max seq len ({max_model_len}), "
                f"({need_s} GiB KV cache is needed, which is larger than the available KV cache memory ({avail_s} GiB).")
        if self.at_least(0, 34):
            est = f" Based on the available memory, the estimated maximum model length is {estimate}." if estimate > 0 else ""
            return (head + est + f" {hint or self.kv_hint(0.92, False, False)} Decreasing `max_model_len` also reduces"
                    f" what is needed. See {DOCS_MEMORY} for more details.")
        if self.at_least(0, 22):
            est = f" Based on the available memory, the estimated maximum model length is {estimate}." if estimate > 0 else ""
            return (head + est + " Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU"
                    " backend) or decreasing `max_model_len` when initializing the engine."
                    f" See {DOCS_MEMORY} for more details.")
        tail = " Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine."
        if self.at_least(0, 14):
            est = f" Based on the available memory, the estimated maximum model length is {estimate}." if estimate > 0 else ""
            return head + est + tail + f" See {DOCS_MEMORY} for more details."
        if self.at_least(0, 9, 1):
            est = f" Based on the available memory, the estimated maximum model length is {estimate}." if estimate > 0 else " "
            more = f" See {DOCS_MEMORY} for more details." if self.at_least(0, 13) else ""
            return head + est + tail + more
        # v0.8.4/0.8.5: a bug drops the number and leaves two spaces
        est = " Based on the available memory,  " if estimate > 0 else "  "
        return head + est + tail.lstrip()

    def free_memory(self, device: int, free: int, total: int, util: float, requested: int) -> str:
        gib = 1 << 30
        where = f" cuda:{device}" if self.at_least(0, 14) else ""
        return (f"Free memory on device{where} ({round(free / gib, 2)}/{round(total / gib, 2)} GiB) on startup is less"
                f" than desired GPU memory utilization ({util}, {round(requested / gib, 2)} GiB). Decrease GPU memory"
                " utilization or reduce GPU memory used by other processes.")

    def engine_init_failed(self, failed: dict[str, int]) -> str:
        text = "Engine core initialization failed. See root cause above."
        if not self.at_least(0, 9, 2):
            return text
        if self.at_least(0, 22):
            return text + " Failed core proc(s): {}"
        return text + f" Failed core proc(s): {failed}"

    def max_len_too_large(self, given: int, derived: int) -> str:
        text = (f"User-specified max_model_len ({given}) is greater than the derived max_model_len "
                f"(max_position_embeddings={derived} or model_max_length=None in model's config.json).")
        if self.at_least(0, 11):
            return (text + " To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."
                    " VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If the model uses relative"
                    " position encoding (RoPE), positions exceeding derived_max_model_len lead to nan. If the model"
                    " uses absolute position encoding, positions exceeding derived_max_model_len will cause a CUDA"
                    " array out-of-bounds error.")
        return (text + " This may lead to incorrect model outputs or CUDA errors. To allow overriding this"
                " maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")


# File:line of each log call, per source snapshot (0.26 from the real logs; older from §1).
SRC_0_26 = {
    "fi_ar_backend": "flashinfer_all_reduce.py:121", "fi_ar_failed": "flashinfer_all_reduce.py:71",
    "fi_ar_fallback": "flashinfer_all_reduce.py:163",
    "logo": "api_utils.py:345", "args": "api_utils.py:273", "ulimit": "system_utils.py:299",
    "arch": "model.py:623", "max_len": "model.py:1788", "chunked": "scheduler.py:252",
    "async_sched": "vllm.py:1109", "engine_init": "core.py:116", "ps_init": "parallel_state.py:1615",
    "ps_rank": "parallel_state.py:1946", "v2_runner": "gpu_worker.py:378", "loading": "model_runner.py:284",
    "attn_backend": "cuda.py:482", "flash_attn": "flash_attn.py:776", "load_took": "model_runner.py:305",
    "cache_dir": "backends.py:1094", "dynamo": "backends.py:1155", "cache_graph": "backends.py:378",
    "compiling": "backends.py:393", "load_graph": "backends.py:292", "aot_saved": "decorators.py:708",
    "aot_load": "decorators.py:311", "compile_total": "monitor.py:53", "profile_run": "monitor.py:81",
    "available_kv": "gpu_worker.py:560", "kv_size": "kv_cache_utils.py:2177", "kv_conc": "kv_cache_utils.py:2178",
    "graphs": "model_runner.py:747", "mem_summary": "gpu_worker.py:857", "init_took": "core.py:340",
    "tasks": "api_server.py:673", "chat_fmt": "hf.py:540", "starting": "api_server.py:677",
    "routes": "launcher.py:37", "route": "launcher.py:46", "failed_start": "core.py:1330",
    "fatal": "core.py:1332", "auto_fit": "kv_cache_utils.py:1398", "override_blocks": "kv_cache_utils.py:1221",
    "worker_failed": "multiproc_executor.py:781", "worker_exc": "multiproc_executor.py:852",
    "worker_parent": "multiproc_executor.py:741", "load_oom": "gpu_worker.py:412",
    "output_handler": "async_llm.py:704", "dead_client": "core_client.py:702",
    "sd_triggered": "launcher.py:100", "sd_stopping": "launcher.py:116", "mp_start": "core_client.py:655",
    "mp_stopping": "core_client.py:657", "mp_stopped": "core_client.py:659", "mp_cleanup": "core_client.py:660",
    "mp_complete": "core_client.py:662", "force_kill": "utils.py:626", "ec_signal": "core.py:1313",
    "ec_start": "core.py:1432", "ec_abort": "core.py:1441", "ec_teardown": "core.py:1463", "ec_exit": "core.py:1326",
    "client_stopped": "launcher.py:125", "signal_http": "launcher.py:128", "shutdown_http": "launcher.py:149",
    "proc_died": "core_client.py:564", "sampler": "topk_topp_sampler.py:39", "simulated": "simulator.py:1",
    "quant_convert": "awq_marlin.py:117", "version": "api_server.py:1839", "offloaded": "uva.py:58",
    "awq_kernel": "auto_awq.py:473", "gptq_kernel": "auto_gptq.py:357",
    "v1_graph_estimate": "gpu_model_runner.py:6737", "worker_died": "multiproc_executor.py:284",
    "ray_v2_died": "ray_executor_v2.py:514",
}
SRC_0_11 = {
    "version": "api_server.py:1839", "args": "utils.py:233", "arch": "model.py:547", "max_len": "model.py:1510",
    "chunked": "scheduler.py:205", "engine_init": "core.py:77", "ps_init": "parallel_state.py:1208",
    "ps_rank": "parallel_state.py:1394", "loading": "gpu_model_runner.py:2578", "attn_backend": "cuda.py:366",
    "load_took": "gpu_model_runner.py:2602", "cache_dir": "backends.py:548", "dynamo": "backends.py:559",
    "compiling": "backends.py:218", "load_graph": "backends.py:197", "compile_total": "monitor.py:34",
    "available_kv": "gpu_worker.py:298", "kv_size": "kv_cache_utils.py:1087", "kv_conc": "kv_cache_utils.py:1091",
    "graphs": "gpu_model_runner.py:3480", "init_took": "core.py:210", "tasks": "api_server.py:1637",
    "starting": "api_server.py:1912", "routes": "launcher.py:34", "route": "launcher.py:42",
    "failed_start": "core.py:708", "fatal": "core.py:719", "worker_failed": "multiproc_executor.py:585",
    "worker_exc": "multiproc_executor.py:646", "worker_parent": "multiproc_executor.py:557",
    "output_handler": "async_llm.py:480", "proc_died": "core_client.py:564",
}
SRC_0_8 = {
    "version": "api_server.py:1043", "args": "api_server.py:1044", "chunked": "config.py:2003",
    "engine_init": "core.py:58", "loading": "gpu_model_runner.py:1329", "load_took": "gpu_model_runner.py:1347",
    "cache_dir": "backends.py:420", "dynamo": "backends.py:430", "compiling": "backends.py:136",
    "load_graph": "backends.py:115", "compile_total": "monitor.py:33", "kv_size": "kv_cache_utils.py:634",
    "kv_conc": "kv_cache_utils.py:637", "graphs": "gpu_model_runner.py:1686", "init_took": "core.py:159",
    "starting": "api_server.py:1090", "routes": "launcher.py:28", "route": "launcher.py:36",
    "failed_start": "core.py:390", "fatal": "core.py:387", "output_handler": "async_llm.py:375",
    "proc_died": "core_client.py:420", "worker_died": "multiproc_executor.py:123",
}
# 0.34.0: the generated fixtures' file:line (tests/fixtures/generated/vllm-0.34.0/*.sources.txt), the
# rest read from the 0.34.0 wheel's source (the first line of each logging call).
SRC_0_34 = {
    "fi_ar_failed": "flashinfer_all_reduce.py:109", "offloaded": "uva.py:68",
    "awq_kernel": "auto_awq.py:457", "gptq_kernel": "auto_gptq.py:373", "mp_linear": "__init__.py:949",
    "logo": "startup.py:38", "args": "startup.py:96", "arch": "model.py:761", "max_len": "model.py:2214",
    "chunked": "scheduler.py:354", "engine_init": "core.py:153", "loading": "model_runner.py:412",
    "load_took": "model_runner.py:441", "compile_total": "monitor.py:62", "profile_run": "monitor.py:91",
    "available_kv": "gpu_worker.py:795", "graphs": "model_runner.py:1216", "mem_summary": "gpu_worker.py:1175",
    "warmup": "extensible_kv_cache.py:693", "extended": "extensible_kv_cache.py:536",
    "util_warning": "extensible_kv_cache.py:662", "kv_size": "kv_cache_utils.py:1168", "kv_conc": "kv_cache_utils.py:1168",
    "init_took": "core.py:451", "tasks": "entry.py:135", "starting": "entry.py:139", "routes": "launcher.py:188",
    "route": "launcher.py:197", "failed_start": "core.py:1757", "fatal": "core.py:1759",
    "output_handler": "async_llm.py:957", "dead_client": "core_client.py:869",
    "sd_triggered": "launcher.py:256", "sd_stopping": "launcher.py:269", "mp_start": "core_client.py:822",
    "mp_stopping": "core_client.py:824", "mp_stopped": "core_client.py:826", "mp_cleanup": "core_client.py:827",
    "mp_complete": "core_client.py:829", "force_kill": "utils.py:648", "client_stopped": "launcher.py:278",
    "signal_http": "launcher.py:281", "shutdown_http": "launcher.py:304", "dynamo": "backends.py:1167",
    "cache_graph": "backends.py:405", "compiling": "backends.py:421", "load_graph": "backends.py:314",
    "cache_dir": "backends.py:1110", "aot_saved": "decorators.py:752", "aot_load": "decorators.py:326",
    "flash_attn": "flash_attn.py:1131", "attn_backend": "cuda.py:549", "ps_rank": "parallel_state.py:2394",
    "worker_parent": "multiproc_executor.py:978", "ec_signal": "core.py:1698", "ec_start": "core.py:1889",
    "ec_abort": "core.py:1898",
    "ec_teardown": "core.py:1920", "ec_exit": "core.py:1746", "override_blocks": "kv_cache_planning.py:1627",
    "sampler": "topk_topp_sampler.py:89", "graph_estimate": "gpu_worker.py:809", "graph_pool": "gpu_worker.py:1112",
    "worker_failed": "multiproc_executor.py:1091", "worker_exc": "multiproc_executor.py:1223",
    "auto_fit": "kv_cache_planning.py:1478", "auto_fit_after": "kv_cache_planning.py:1506",
    "worker_died": "multiproc_executor.py:404", "ray_v2_died": "ray_executor_v2.py:522",
}
