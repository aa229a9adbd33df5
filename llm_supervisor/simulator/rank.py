"""One simulated GPU worker (a TP/PP rank): what it allocates on the simulated GPU in each startup
phase, the lines it prints, and how it fails (SimFailure with the exception line Python would
print). Used by the EngineCore's local and multiprocess workers and by the Ray workers."""

from __future__ import annotations
import math
import os
import signal
import time
from collections.abc import Iterable
from typing import Any
from llm_supervisor.host import simgpu
from llm_supervisor.simulator import memory
from llm_supervisor.simulator.config import SimConfig
from llm_supervisor.simulator.logs import Log
from llm_supervisor.simulator.memory import GIB, MIB, format_gib, torch_format_size
from llm_supervisor.simulator.proc import sleep


OOM_TAIL = ("If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
            " to avoid fragmentation.  See documentation for Memory Management "
            " (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")


class Shutdown(Exception):
    """SIGTERM/SIGINT arrived (raised from the signal handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SimFailure(Exception):
    """A startup failure of one phase, with the exception line Python would print."""

    def __init__(self, phase: str, final: str, in_worker: bool = True) -> None:
        super().__init__(final)
        self.phase = phase
        self.final = final
        self.in_worker = in_worker
        self.remote = False  # raised in a worker process or actor and relayed to EngineCore

    @property
    def message(self) -> str:
        return self.final.split(": ", 1)[1] if ": " in self.final else self.final


def gather_replies(op: str, replies: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The ranks' answers to one call, every reply read; the first failure (a rank's error, or None:
    a worker gone) is raised instead, marked as relayed."""
    results: list[dict[str, Any]] = []
    failure: SimFailure | None = None
    for msg in replies:
        if msg is None:
            failure = failure or SimFailure(op, "RuntimeError: Worker proc died unexpectedly", in_worker=False)
        elif "err" in msg:
            failure = failure or SimFailure(msg["err"]["phase"], msg["err"]["final"])
        else:
            results.append(msg["ok"])
    if failure is not None:
        failure.remote = True
        raise failure
    return results


def _hang_forever() -> None:
    while True:
        time.sleep(3600)


class Rank:
    """What one vLLM worker does on its GPU during startup."""

    def __init__(self, cfg: SimConfig, log: Log, dp_rank: int, rank: int) -> None:
        self.cfg = cfg
        self.log = log
        self.dp_rank = dp_rank
        self.rank = rank
        self.tp_rank = rank % cfg.tp
        self.pp_rank = rank // cfg.tp
        self.local, self.gpu_index = cfg.device_of(dp_rank, rank)
        self.layers = cfg.layers_per_stage[self.pp_rank]
        self.weights = cfg.weights_per_stage[self.pp_rank]
        self.kv_per_token = cfg.kv_bytes_per_token[self.pp_rank]
        d = cfg.dialect
        # 0.18+: "Model loading took"/"Available KV"/graph lines once per node (local rank 0)
        self.prints = d.load_lines_per_worker or self.local == 0
        self.parts: dict[str, int] = {}
        self.total = cfg.gpu.total_mib * MIB
        self.requested = memory.requested_bytes(cfg.gpu.total_mib, cfg.util)
        self.init_free = 0
        self.cold = False
        self.activation = 0
        self.non_torch = 0
        self.graphs = 0
        self.estimate = 0  # 0.30+: the CUDA-graph estimate taken out of the budget
        self.available = 0

    # ------------------------------------------------------------ memory

    @property
    def held(self) -> int:
        return sum(self.parts.values())

    def _publish(self) -> None:
        simgpu.hold(self.cfg.gpu, self.gpu_index, math.ceil(self.held / MIB))

    def free_bytes(self) -> int:
        return simgpu.gpus(self.cfg.gpu)[self.gpu_index].free_mib * MIB

    def oom_text(self, tried: int, free: int | None = None) -> str:
        free = self.free_bytes() if free is None else free
        torch_alloc = self.held - self.parts.get("context", 0) - self.parts.get("non_torch", 0)
        return (f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {torch_format_size(tried)}. "
                f"GPU {self.local} has a total capacity of {torch_format_size(self.total)} of which "
                f"{torch_format_size(free)} is free. Including non-PyTorch memory, this process has "
                f"{torch_format_size(self.held)} memory in use. Of the allocated memory "
                f"{torch_format_size(max(0, torch_alloc))} is allocated by PyTorch, and "
                f"{torch_format_size(20 * MIB)} is reserved by PyTorch but unallocated. {OOM_TAIL}")

    def alloc(self, part: str, nbytes: int, tried: int, phase: str, forced: bool = False) -> None:
        free = self.free_bytes()
        if forced or nbytes > free:
            shown = free if not forced else min(free, int(tried * 0.77))
            raise SimFailure(phase, self.oom_text(tried, shown))
        self.parts[part] = self.parts.get(part, 0) + nbytes
        self._publish()

    def release(self) -> None:
        self.parts.clear()
        simgpu.hold(self.cfg.gpu, self.gpu_index, 0)

    def _hang_if(self, phase: str) -> None:
        if "hang_startup" in self.cfg.faults and (self.cfg.faults.active["hang_startup"] or "compile") == phase:
            _hang_forever()

    # ------------------------------------------------------------ phases

    def init_device(self) -> dict[str, Any]:
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        sleep(cfg.timing.phase("init_device"))
        self.parts["context"] = memory.CONTEXT_BYTES
        self._publish()
        world = cfg.world_size
        log.info(d.src("ps_init"), f"world_size={world} rank={self.rank} local_rank={self.local} "
                 f"distributed_init_method=tcp://127.0.0.1:{40000 + (os.getppid() % 20000)} backend=nccl")
        if d.at_least(0, 11):
            log.info(d.src("ps_rank"), f"rank {self.rank} in world size {world} is assigned as DP rank {self.dp_rank}, "
                     f"PP rank {self.pp_rank}, PCP rank 0, TP rank {self.tp_rank}, EP rank N/A, EPLB rank N/A")
        fault = simgpu.faults(cfg.gpu, self.gpu_index).cuda_error()
        if fault is not None:  # CUDA refuses a GPU with a hardware fault (Xid 79, uncorrectable ECC)
            raise SimFailure("init_device", fault)
        self.init_free = self.free_bytes()
        # 0.34 skips this check while the extensible KV cache is on: the budget is only a cap
        if d.free_memory_check and not cfg.extensible and self.init_free < self.requested:
            raise SimFailure("init_device", "ValueError: " + d.free_memory(
                self.local, self.init_free, self.total, cfg.util, self.requested))
        if d.v2_runner_line and cfg.v2_runner:
            log.info(d.src("v2_runner"), "Using V2 Model Runner")
        self._hang_if("init_device")
        return {}

    def load(self) -> dict[str, Any]:
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        if cfg.v2_runner:
            log.info(d.src("loading"), "Loading model from scratch...")
        else:
            log.info(d.src("loading"), f"Starting to load model {cfg.model}...")
        if cfg.quantization in ("awq_marlin", "gptq_marlin") and self.rank == 0:
            if cfg.linear_kernel:  # 0.26+: AutoAWQ/AutoGPTQ pick a mixed-precision kernel per GPU
                awq = cfg.quantization == "awq_marlin"
                if d.at_least(0, 34):
                    log.info(d.src("mp_linear"), f"Using {cfg.linear_kernel} for mixed-precision linear")
                log.info(d.src("awq_kernel" if awq else "gptq_kernel"),
                         f"Using {cfg.linear_kernel} for {'AutoAWQMarlinLinearMethod' if awq else 'AutoGPTQLinearMethod'}")
            else:
                log.info(d.src("quant_convert"), f"The model is convertible to {cfg.quantization} during runtime. "
                         f"Using {cfg.quantization} kernel.")
        fa3 = any(x in cfg.gpu.name for x in ("H100", "H200", "H20", "H800", "GH200"))
        log.info(d.src("attn_backend"), "Using FLASH_ATTN attention backend out of potential backends: "
                 "['FLASH_ATTN', 'FLASHINFER', 'TRITON_ATTN', 'FLEX_ATTENTION'].")
        if d.at_least(0, 11):
            log.info(d.src("flash_attn"), f"Using FlashAttention version {3 if fa3 else 2}")
        offloaded = cfg.offloaded_per_stage[self.pp_rank]
        if offloaded and self.prints and d.at_least(0, 26):
            log.info(d.src("offloaded"), f"Total CPU offloaded parameters: {round(offloaded / (1 << 30), 2)}")
        self._hang_if("load")
        start = time.monotonic()
        sleep(cfg.timing.phase("load"))
        forced = "oom_at_load" in cfg.faults
        try:
            self.alloc("weights", self.weights, cfg.largest_weight, "load", forced=forced)
        except SimFailure as exc:
            if d.load_oom_line:
                log.error(d.src("load_oom"), "Failed to load model - not enough GPU memory. Try lowering "
                          "--gpu-memory-utilization to free memory for weights, increasing --tensor-parallel-size, "
                          "or using --quantization. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/"
                          f" for more tips. (original error: {exc.message})")
            raise
        if self.prints:
            log.info(d.src("load_took"), d.model_loading(self.weights, time.monotonic() - start, cfg.v2_runner))
        if cfg.v2_runner and self.rank == 0:
            log.info(d.src("sampler"), "FlashInfer top-p/top-k sampling disabled via VLLM_USE_FLASHINFER_SAMPLER=0.")
        return {}

    def _fused_allreduce_workspace(self) -> None:
        """The fusion pass creates flashinfer's all-reduce workspace (backend "mnnvl" by default).
        With the `allreduce_fusion` fault the host has no NVSwitch multicast: the workspace fails,
        vLLM falls back to "trtllm", and the CUDA context is left broken for cuBLAS."""
        d, log = self.cfg.dialect, self.log
        if not d.at_least(0, 34):
            log.info(d.src("fi_ar_backend"), "Auto-selected flashinfer allreduce backend: mnnvl")
        if "allreduce_fusion" not in self.cfg.faults:
            return
        log.warning(d.src("fi_ar_failed"), "Failed to initialize FlashInfer All Reduce workspace: [CUDA] multicast "
                    "object creation failed: operation not supported. This is expected on GPUs without NVSwitch "
                    "(e.g., NVLink bridge-only or PCIe topologies).")
        if not d.at_least(0, 34):
            log.warning(d.src("fi_ar_fallback"), "FlashInfer mnnvl allreduce workspace unavailable (likely no NVSwitch "
                        "multicast support); falling back to trtllm backend for single node.")
        raise SimFailure("compile", "RuntimeError: CUDA error: CUBLAS_STATUS_INTERNAL_ERROR when calling "
                         "`cublasCreate(handle)`")

    def compile(self) -> dict[str, Any]:
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        if cfg.enforce_eager:
            self._hang_if("compile")
            return {"seconds": None}
        start = time.monotonic()
        folder = cfg.compile_dir(self.rank)
        aot = cfg.aot_dir(self.rank)
        marker = folder / "simulated-compile.json" if folder else None
        self.cold = not (marker and marker.is_file())
        if folder is not None:
            log.info(d.src("cache_dir"), f"Using cache directory: {folder} for vLLM's torch.compile")
        self._hang_if("compile")
        if cfg.fused_allreduce:
            self._fused_allreduce_workspace()
        b = cfg.max_num_batched_tokens
        bytecode = cfg.timing.phase("compile_warm") * (0.55 if not self.cold else 0.2)
        sleep(bytecode)
        log.info(d.src("dynamo"), f"Dynamo bytecode transform time: {time.monotonic() - start:.2f} s")
        if self.cold:
            rest = cfg.timing.phase("compile_cold") - bytecode
            sleep(rest * 0.45)
            if d.at_least(0, 22):
                log.info(d.src("cache_graph"), f"Cache the graph of compile range (1, {b}) for later use")
            t = time.monotonic()
            sleep(rest * 0.4)
            what = f"compile range (1, {b})" if d.at_least(0, 22) else "dynamic shape"
            log.info(d.src("compiling"), f"Compiling a graph for {what} takes {time.monotonic() - t:.2f} s")
            sleep(rest * 0.15)
            if marker is not None:
                try:
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text('{"simulated": true}\n')
                    if aot is not None:
                        aot.mkdir(parents=True, exist_ok=True)
                except OSError:
                    pass
            if d.at_least(0, 22) and aot is not None:
                log.info(d.src("aot_saved"), f"saved AOT compiled function to {aot}")
        else:
            t = time.monotonic()
            sleep(cfg.timing.phase("compile_warm") - bytecode)
            what = f"compile range (1, {b})" if d.at_least(0, 22) else "dynamic shape"
            log.info(d.src("load_graph"), f"Directly load the compiled graph(s) for {what} from the cache, "
                     f"took {time.monotonic() - t:.3f} s")
            if d.at_least(0, 22) and aot is not None:
                log.info(d.src("aot_load"), f"Directly load AOT compilation from path {aot}")
        seconds = time.monotonic() - start
        verb = "took" if d.at_least(0, 22) else "takes"
        log.info(d.src("compile_total"), f"torch.compile {verb} {seconds:.2f} s in total")
        return {"seconds": seconds}

    def profile(self) -> dict[str, Any]:
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        self._hang_if("profile")
        start = time.monotonic()
        sleep(cfg.timing.phase("profile"))
        tp = cfg.tp
        self.activation = memory.activation_bytes(cfg.shape, tp, cfg.max_num_batched_tokens, self.cold, d.memory_0_34)
        self.non_torch = memory.non_torch_bytes(cfg.world_size, cfg.disable_custom_all_reduce, d.memory_0_34)
        if not cfg.v2_runner and d.at_least(0, 22):
            # the V1 runner where V2 is the default warms its whole sampler
            self.activation = max(self.activation, memory.v1_sampler_bytes(cfg.shape, cfg.max_num_seqs))
        if cfg.offloaded_per_stage[self.pp_rank]:
            self.non_torch += memory.OFFLOAD_NON_TORCH_BYTES
        tried = memory.largest_activation_bytes(cfg.shape, tp, cfg.max_num_batched_tokens)
        forced = "oom_at_profile" in cfg.faults
        self.alloc("non_torch", self.non_torch, tried, "profile", forced=False)
        self.alloc("activation", self.activation, tried, "profile", forced=forced)
        if d.at_least(0, 22) and not cfg.enforce_eager:
            log.info(d.src("profile_run"), f"Initial profiling/warmup run took {time.monotonic() - start:.2f} s")
        if cfg.kv_cache_memory_bytes:
            self.available = int(cfg.kv_cache_memory_bytes)
        else:
            self.available = self.requested - self.weights - self.activation - self.non_torch
            if cfg.graph_estimate and not cfg.enforce_eager:
                # 0.30+: a throwaway capture estimates the graphs, taken out before the cache is sized
                self.estimate = memory.graph_estimate_bytes(memory.graph_bytes(cfg.shape, cfg.tp, self.layers, False, d.memory_0_34,
                                                                                 cfg.graph_sizes),
                                                            v1_runner=not cfg.v2_runner and not d.estimates_graphs)
                self.available -= self.estimate
                if self.prints and not cfg.v2_runner and not d.at_least(0, 34):
                    log.info(d.src("v1_graph_estimate"), f"Estimated CUDA graph memory: {self.estimate / (1 << 30):.2f} GiB total")
        if self.prints and d.available_kv_line:
            log.info(d.src("available_kv"), d.available_kv(self.available))
            if self.estimate:
                shift = self.estimate / self.total
                log.info(d.src("graph_estimate"), "CUDA graph memory profiling is enabled (default since v0.21.0). The "
                         f"current --gpu-memory-utilization={cfg.util:.4f} is equivalent to --gpu-memory-utilization="
                         f"{cfg.util - shift:.4f} without CUDA graph memory profiling. To maintain the same effective KV "
                         f"cache size as before, increase --gpu-memory-utilization to {cfg.util + shift:.4f}. To disable, "
                         "set VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=0.")
        return {"available": self.available}

    def page_bytes(self) -> int:
        return self.kv_per_token // max(1, self.layers) * self.cfg.block_size

    def allocate_kv(self, num_blocks: int) -> dict[str, Any]:
        self._hang_if("kv")
        nbytes = num_blocks * self.page_bytes() * self.layers
        per_layer = num_blocks * self.page_bytes()
        self.alloc("kv", nbytes, per_layer, "kv_alloc")
        return {}

    # ------------------------------------------------------------ 0.34: the extensible KV cache

    def commit_kv(self, num_blocks: int) -> dict[str, Any]:
        """Map physical pages for the first `num_blocks` blocks (the address space is reserved)."""
        self._hang_if("kv")
        target = memory.physical_bytes_for(num_blocks, self.page_bytes(), self.layers)
        more = target - self.parts.get("kv", 0)
        if more > 0:
            self.alloc("kv", more, max(more // self.layers, memory.GRANULE_BYTES), "kv_alloc")
        return {}

    def measure_kv(self, capacity: int) -> dict[str, Any]:
        """After warm-up and graph capture: size the cache from the memory measured now
        (measure_kv_cache_blocks): the budget's rest, capped by the free memory less a margin."""
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        # torch.accelerator.empty_cache(): the profiling peak's cached blocks go back first
        self.parts.pop("activation", None)
        self._publish()
        free = self.free_bytes()
        committed = self.parts.get("kv", 0)
        peak = self.activation
        growth = int(peak * memory.V034_RESERVATION_GROWTH) if d.memory_0_34 else 0
        transient = max(peak, growth)
        available = memory.measure_kv_cache_bytes(self.init_free, free, committed, self.requested, transient)
        if cfg.util_given and 0.7 < cfg.util < 1.0 and self.prints:
            withheld = memory.measure_kv_cache_bytes(self.init_free, free, committed, self.init_free, transient) - available
            if withheld >= memory.WITHHELD_WARNING_BYTES:
                log.warning(d.src("util_warning"), f"gpu_memory_utilization={cfg.util} caps this instance at "
                            f"{format_gib(self.requested)} GiB, keeping {format_gib(withheld)} GiB of free device memory "
                            "out of the KV cache. The extensible KV cache is sized from the memory measured after warmup "
                            "and CUDA graph capture, so vLLM's own use needs no headroom below 1.0. Leave "
                            "gpu_memory_utilization unset unless it leaves room for memory vLLM does not measure: other "
                            "processes sharing the GPU (including ones that allocate on it later), the CPU on a "
                            "unified-memory device, weight transfer buffers for weight updates, or a KV connector's own "
                            "device buffers.")
        page = self.page_bytes()
        blocks = memory.blocks_within(available, page, self.layers, capacity)
        left_free = (free - (memory.physical_bytes_for(blocks, page, self.layers) - committed)
                     - memory.KV_CACHE_NON_TORCH_RESERVE_BYTES)
        torch_limit = self.weights + self.graphs + max(left_free, 0)
        if self.prints:
            log.info(d.src("warmup"), f"Memory after warmup: {format_gib(free)} GiB free, {format_gib(committed)} GiB "
                     f"committed to the KV cache, {format_gib(transient)} GiB kept for transient activations "
                     f"({format_gib(peak)} GiB allocated at peak, {format_gib(growth)} GiB of torch reservation growth); {blocks} KV "
                     f"cache blocks ({format_gib(blocks * page * self.layers)} GiB) fit within the requested "
                     f"{format_gib(self.requested)} GiB. Torch may reserve up to {format_gib(torch_limit)} GiB.")
        return {"blocks": blocks}

    def extend_kv(self, num_blocks: int) -> dict[str, Any]:
        """Commit the measured cache, then torch takes its activations back as requests run."""
        d, log = self.cfg.dialect, self.log
        self.commit_kv(num_blocks)
        if self.prints:
            log.info(d.src("extended"), f"Extended KV cache to {num_blocks} blocks "
                     f"({num_blocks * self.page_bytes() * self.layers / GIB:.2f} GiB).")
        self.parts["activation"] = self.activation
        self._publish()
        return {}

    def capture_graphs(self) -> dict[str, Any]:
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        if cfg.enforce_eager:
            # no capture; vLLM still states its memory use (0 GiB of CUDA graphs)
            if self.prints and d.memory_summary_line:
                log.info(d.src("mem_summary"), self.summary())
            return {}
        self._hang_if("graphs")
        start = time.monotonic()
        self.graphs = memory.graph_bytes(cfg.shape, cfg.tp, self.layers, False, d.memory_0_34, cfg.graph_sizes)
        sizes = len(cfg.graph_sizes)
        if self.rank == 0 and self.dp_rank == 0:
            for mode in ("PIECEWISE", "FULL"):
                log.raw(_tqdm(f"Capturing CUDA graphs ({mode})", sizes, cfg.timing.phase("graphs") / 2))
        sleep(cfg.timing.phase("graphs") * (0.1 if self.rank == 0 else 1.0))
        self.alloc("graphs", self.graphs, max(2 * MIB, self.graphs // sizes), "graphs",
                   forced="oom_at_graph_capture" in cfg.faults)
        if self.prints:
            log.info(d.src("graphs"), f"Graph capturing finished in {time.monotonic() - start:.0f} secs, "
                     f"took {self.graphs / GIB:.2f} GiB")
            if self.estimate:
                diff = self.graphs - self.estimate
                log.info(d.src("graph_pool"), f"CUDA graph pool memory: {format_gib(self.graphs)} GiB (actual), "
                         f"{format_gib(self.estimate)} GiB (estimated), difference: {format_gib(diff)} GiB "
                         f"({100 * diff / max(self.graphs, 1):.1f}%).")
            if d.memory_summary_line:
                log.info(d.src("mem_summary"), self.summary())
        return {}

    def summary(self) -> str:
        """The INFO line about memory use and `--kv-cache-memory` suggestions (0.26's split, or
        0.28+'s "consumed memory"; from 0.30 "peak activation" includes the graph estimate)."""
        peak = self.activation + self.estimate
        non_kv = self.weights + peak + self.non_torch + self.graphs
        fit = self.requested - non_kv - memory.REDUNDANCY_BUFFER_BYTES
        full = self.init_free - non_kv - memory.REDUNDANCY_BUFFER_BYTES
        if self.cfg.dialect.consumed_summary:
            usage = (f"Actual usage is {format_gib(self.weights + self.non_torch)} GiB for consumed memory (weights + "
                     f"non-torch), {format_gib(peak)} GiB for peak activation, and {format_gib(self.graphs)} GiB for "
                     "CUDAGraph memory.")
        else:
            usage = (f"Actual usage is {format_gib(self.weights)} GiB for weight, {format_gib(self.activation)} GiB for peak "
                     f"activation, {format_gib(self.non_torch)} GiB for non-torch memory, and {format_gib(self.graphs)} GiB "
                     "for CUDAGraph memory.")
        return (f"Free memory on device ({round(self.init_free / GIB, 2)}/{round(self.total / GIB, 2)} GiB) on startup. "
                f"Desired GPU memory utilization is ({self.cfg.util}, {round(self.requested / GIB, 2)} GiB). "
                f"{usage} Replace gpu_memory_utilization config with `--kv-cache-memory={fit}` "
                f"({format_gib(fit)} GiB) to fit into requested memory, or `--kv-cache-memory={full}` "
                f"({format_gib(full)} GiB) to fully utilize gpu memory. Current kv cache memory in use is "
                f"{format_gib(self.available)} GiB.")

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        fn = {"init_device": self.init_device, "load": self.load, "compile": self.compile, "profile": self.profile,
              "capture_graphs": self.capture_graphs}.get(op)
        if op == "allocate_kv":
            return self.allocate_kv(int(args["num_blocks"]))
        if op == "commit_kv":
            return self.commit_kv(int(args["num_blocks"]))
        if op == "measure_kv":
            return self.measure_kv(int(args["capacity"]))
        if op == "extend_kv":
            return self.extend_kv(int(args["num_blocks"]))
        if fn is None:
            raise ValueError(f"unknown op {op}")
        return fn()


def _tqdm(label: str, total: int, seconds: float) -> str:
    rate = total / max(seconds, 1e-3)
    frames = [f"\r{label}:   0%|          | 0/{total} [00:00<?, ?it/s]"]
    for done in (total // 2, total):
        pct = int(100 * done / total)
        bar = "█" * (pct // 10) + " " * (10 - pct // 10)
        frames.append(f"\r{label}: {pct:3d}%|{bar}| {done}/{total} [00:00<00:00, {rate:.2f}it/s]")
    frames.append(frames[-1])
    return "".join(frames)
