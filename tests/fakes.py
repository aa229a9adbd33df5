"""Fakes for testing the daemon in-process, in virtual time (supervisord's DummyOptions, honcho's
FakeClock and FakeProcess, httpx's MockTransport):

* `VirtualClock`: `sleep` returns when virtual time has advanced; time moves only when every task
  is waiting, so minutes of backoff, hang timeouts and watchdog pings take milliseconds.
* `FakeVllm`: a vLLM 0.26 or 0.34 stand-in (`version`). From each launch's argv it decides, with
  its own small memory model, what real vLLM would print and how it would end (0.26's lines as in
  the H100 fixtures; 0.34's as in the logs generated from its source: the extensible KV cache,
  sized after warm-up, no free-memory check), and it answers `/health`, the 1-token probe and
  `/metrics` through an `httpx.MockTransport` while it serves.
* `FakeLauncher` / `FakeEngine`: the launcher seam; each engine runs as a task on the virtual clock.
* `RecordingNotifier`, `FakeGpus`: sd_notify and NVML as lists the test can read.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import httpx

from llm_supervisor.clock import first_of
from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.settings import load_settings
from llm_supervisor.frontdoor import Drained
from llm_supervisor.host.gpus import Gpu
from llm_supervisor.planning.launch import build_plan
from llm_supervisor.runtime.daemon import Daemon
from llm_supervisor.runtime.engine_client import EngineClient
from llm_supervisor.runtime.launcher import ExitInfo, LaunchSpec, OutputCallback
from llm_supervisor.store.state import StateStore

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
GIB = 1024**3
IDLE_SPINS = 50


# ---------------------------------------------------------------- time


class VirtualClock:
    """Virtual monotonic and wall time; `sleep` waits for virtual time, which a driver task moves
    to the earliest pending deadline once the loop has nothing else to run, and no work it handed
    to a thread is still under way (`watch_threads`): however slow the machine, the daemon's
    thread work (file writes, GPU reads) takes no virtual time."""

    def __init__(self, epoch: float = 1_800_000_000.0) -> None:
        self.now = 0.0
        self.epoch = epoch
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._driver: asyncio.Task | None = None
        self._in_threads = 0

    def watch_threads(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the loop's executor calls (`asyncio.to_thread` goes through them) until each
        one's result is back on the loop."""
        submit = loop.run_in_executor

        def counted(executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            fut = submit(executor, func, *args)
            self._in_threads += 1
            fut.add_done_callback(self._thread_done)
            return fut
        loop.run_in_executor = counted  # type: ignore[method-assign]

    def _thread_done(self, _fut: asyncio.Future[Any]) -> None:
        self._in_threads -= 1

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._seq), fut))
        if self._driver is None or self._driver.done():
            self._driver = asyncio.create_task(self._drive())
        await fut

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.Task:
        async def later() -> None:
            await self.sleep(when - self.now)
            callback()
        return asyncio.create_task(later())

    async def _drive(self) -> None:
        while True:
            for _ in range(IDLE_SPINS):  # let every runnable task run before time moves
                await asyncio.sleep(0)
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)
            if not self._timers:
                return
            if self._in_threads:  # a thread works for the daemon: real time passes, virtual time not
                await asyncio.sleep(0.001)
                continue
            self.now = max(self.now, self._timers[0][0])
            while self._timers and self._timers[0][0] <= self.now:
                fut = heapq.heappop(self._timers)[2]
                if not fut.done():
                    fut.set_result(None)


# ---------------------------------------------------------------- vLLM, imitated


def _flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


@dataclass
class Launch:
    """What one launch asked for."""

    argv: list[str]
    util: float
    max_model_len: int
    enforce_eager: bool
    max_num_seqs: int | None
    port: int
    cpu_offload_gb: float = 0.0
    kv_cache_dtype: str = "auto"

    @classmethod
    def parse(cls, argv: list[str]) -> "Launch":
        seqs = _flag(argv, "--max-num-seqs")
        return cls(argv, float(_flag(argv, "--gpu-memory-utilization", "0.9")),
                   int(_flag(argv, "--max-model-len", "40960")), "--enforce-eager" in argv,
                   int(seqs) if seqs else None, int(_flag(argv, "--port", "8000")),
                   float(_flag(argv, "--cpu-offload-gb", "0")), str(_flag(argv, "--kv-cache-dtype", "auto")))


API = "(APIServer pid=100) {level} 12-03 10:00:00 [{src}] {msg}"
CORE = "(EngineCore pid=101) {level} 12-03 10:00:00 [{src}] {msg}"
# vLLM's create_server_socket when its port is taken: the bare exception, no port in it
BIND_FAILED = ["Traceback (most recent call last):",
               '  File "/usr/local/lib/python3.12/dist-packages/vllm/entrypoints/openai/api_server.py", line 690, '
               "in create_server_socket",
               "    sock.bind(addr)",
               "OSError: [Errno 98] Address already in use"]
WORKER = "(Worker_TP1 pid=103) {level} 12-03 10:00:00 [{src}] {msg}"


def fused_allreduce_fails(launch: "Launch") -> list[str] | None:
    """The `allreduce_fusion` fault: with TP > 1 and the fused all-reduce on (vLLM's default on
    Hopper), flashinfer's mnnvl workspace finds no multicast and the next cuBLAS call fails."""
    tp = int(_flag(launch.argv, "--tensor-parallel-size", "1") or 1)
    if tp <= 1 or '"fuse_allreduce_rms": false' in " ".join(launch.argv):
        return None
    return [
        WORKER.format(level="INFO", src="flashinfer_all_reduce.py:121",
                      msg="Auto-selected flashinfer allreduce backend: mnnvl"),
        WORKER.format(level="WARNING", src="flashinfer_all_reduce.py:70",
                      msg="Failed to initialize FlashInfer All Reduce workspace: multicast is not supported on this "
                          "device. This is expected on GPUs without NVSwitch (e.g., NVLink bridge-only or PCIe topologies)."),
        WORKER.format(level="ERROR", src="multiproc_executor.py:839",
                      msg="WorkerProc hit an exception."),
        "(Worker_TP1 pid=103) RuntimeError: CUDA error: CUBLAS_STATUS_INTERNAL_ERROR when calling `cublasCreate(handle)`",
        CORE.format(level="ERROR", src="core.py:1330",
                    msg="RuntimeError: Worker failed with error 'CUDA error: CUBLAS_STATUS_INTERNAL_ERROR when calling "
                        "`cublasCreate(handle)`', please check the stack trace above for the root cause"),
        API.format(level="ERROR", src="core_client.py:600",
                   msg="RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"),
    ]


@dataclass
class FakeVllm:
    """A vLLM 0.26 (or 0.34) on one GPU, with a transparent memory model: budget = total ×
    utilization; KV = budget − weights on the GPU (less `--cpu-offload-gb`) − overhead (cold
    compile: `cold_overhead_gib`, warm: `warm_overhead_gib`); CUDA graphs `graph_gib` above the
    budget; `other_gib` held by other processes. With version 0.34 that KV is only the pre-warm-up
    estimate; after warm-up the cache gets min(budget, free at start − 1 GiB margin) − weights −
    non-torch − graphs − activation.

    `faults`: per launch number (1-based), a fault name, e.g. {1: "oom_at_load"}; `fault` applies
    to every launch. Names: oom_at_load, oom_at_graph_capture (unless --enforce-eager),
    model_not_found, port_in_use, bind_failed (the same, as real vLLM says it: no port in the
    message), hang_startup, exit_before_ready, allreduce_fusion (0.26 dialect; with TP > 1 unless
    the fused all-reduce is off)."""

    total_gib: float = 24564 / 1024
    weights_gib: float = 7.56
    # peak activation + non-torch of Qwen3-4B at a 24 GB card's batch limits (2048 tokens, 256
    # sequences), graphs, blocks: None takes the version's own (VERSION_DEFAULTS)
    cold_overhead_gib: float | None = None
    warm_overhead_gib: float | None = None
    graph_gib: float | None = None
    other_gib: float = 0.0
    kv_bytes_per_token: int = 147456
    model_limit: int = 40960
    block: int | None = None
    line_interval_s: float = 0.2
    non_torch_gib: float | None = None
    version: str = "0.26.0"
    # one decoder layer's parameters (GiB, in module order): `--cpu-offload-gb` moves whole ones, as
    # vLLM's offloader does (empty: exactly the asked amount)
    layer_params_gib: tuple[float, ...] = ()
    fault: str | None = None
    faults: dict[int, str] = field(default_factory=dict)
    compiled: set[int] = field(default_factory=set)  # max_model_len values with a warm compile cache
    launches: list[Launch] = field(default_factory=list)
    engines: list["FakeEngine"] = field(default_factory=list)
    reservation_growth: float | None = None  # 0.34: torch's reservation growth kept past the activation peak

    # per field, (0.26, 0.34), as the planner's memory model has them: 0.26 spends 0.22 cold + 0.22
    # non-torch, 0.17 warm + 0.22; 0.34 (memory.ENGINE_0_34, measured on an H200) 0.26 GiB of
    # activation cold or warm + 0.80 non-torch, 0.69 GiB of graphs, 64-token blocks
    VERSION_DEFAULTS: ClassVar[dict[str, tuple[float, float]]] = {
        "cold_overhead_gib": (0.44, 0.80 + 0.26), "warm_overhead_gib": (0.39, 0.80 + 0.26),
        "non_torch_gib": (0.22, 0.80), "graph_gib": (1.0, 0.69), "block": (16, 64), "reservation_growth": (1.0, 1.12)}

    def __post_init__(self) -> None:
        for name, (v026, v034) in self.VERSION_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, v034 if self.extensible else v026)

    # -------------------------------------------------------- the engine's numbers
    def overhead_gib(self, launch: Launch) -> float:
        warm = launch.max_model_len in self.compiled and not launch.enforce_eager
        return self.warm_overhead_gib if warm else self.cold_overhead_gib

    def offloaded_gib(self, launch: Launch) -> float:
        want, moved = launch.cpu_offload_gb, 0.0
        if not self.layer_params_gib:
            return want
        while moved < want:
            for size in self.layer_params_gib:
                if moved >= want:
                    break
                moved += size
        return moved

    def gpu_weights_gib(self, launch: Launch) -> float:
        return max(self.weights_gib - self.offloaded_gib(launch), 0.0)

    def available_gib(self, launch: Launch) -> float:
        return launch.util * self.total_gib - self.gpu_weights_gib(launch) - self.overhead_gib(launch)

    def kv_bytes(self, launch: Launch) -> int:
        return self.kv_bytes_per_token // 2 if launch.kv_cache_dtype.startswith("fp8") else self.kv_bytes_per_token

    @property
    def extensible(self) -> bool:
        return self.version.startswith("0.34")

    def blocks(self, launch: Launch, gib: float) -> int:
        return int(max(gib, 0) * GIB // (self.kv_bytes(launch) * self.block))

    def after_warmup_gib(self, launch: Launch, free_at_start: float) -> float:
        """0.34: what the cache gets after warm-up (the margin binds where the device does)."""
        act = (self.overhead_gib(launch) - self.non_torch_gib) * self.reservation_growth
        graphs = 0.0 if launch.enforce_eager else self.graph_gib
        non_kv = self.gpu_weights_gib(launch) + self.non_torch_gib + graphs
        margin = max(1.0, 0.75 * act)
        return min(launch.util * self.total_gib - non_kv, free_at_start - non_kv - margin) - act

    def kv_tokens(self, launch: Launch) -> int:
        if self.extensible:
            return self.blocks(launch, self.after_warmup_gib(launch, self.free_gib())) * self.block
        return self.blocks(launch, self.available_gib(launch)) * self.block

    def free_gib(self) -> float:
        held = sum(e.held_gib for e in self.engines if e.running)
        return self.total_gib - self.other_gib - held

    @property
    def serving(self) -> "FakeEngine | None":
        return next((e for e in reversed(self.engines) if e.running and e.serving), None)

    # -------------------------------------------------------- what it prints
    def script(self, number: int, launch: Launch) -> tuple[list[str], int | None, float]:
        """(lines to print, exit code or None to serve, GPU memory held) for one launch."""
        if self.extensible:
            return self.script_0_34(number, launch)
        fault = self.faults.get(number, self.fault)
        lines = [API.format(level="INFO", src="api_utils.py:345", msg="vLLM API server version 0.26.0"),
                 API.format(level="INFO", src="api_utils.py:273",
                            msg=f"non-default args: {{'gpu_memory_utilization': {launch.util}, "
                                f"'max_model_len': {launch.max_model_len}}}")]
        early = self._refused_before_the_engine(fault, launch, "model.py:1788")
        if early is not None:
            return lines + early, 1, 0.0
        requested = launch.util * self.total_gib
        free = self.free_gib()
        if requested > free:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1330",
                msg=f"ValueError: Free memory on device cuda:0 ({free:.2f}/{self.total_gib:.2f} GiB) on startup is less "
                    f"than desired GPU memory utilization ({launch.util}, {requested:.2f} GiB). Decrease GPU memory "
                    "utilization or reduce GPU memory used by other processes.")], 1, 0.0
        lines.append(CORE.format(level="INFO", src="model_runner.py:284", msg="Loading model from scratch..."))
        if fault == "oom_at_load" or self.gpu_weights_gib(launch) > free:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1330",
                msg=f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 304.00 MiB. GPU 0 has a total "
                    f"capacity of {self.total_gib:.2f} GiB of which 120.00 MiB is free.")], 1, self.weights_gib / 2
        lines.append(CORE.format(level="INFO", src="model_runner.py:305",
                                 msg=f"Model loading took {self.gpu_weights_gib(launch):.2f} GiB and 1.74 seconds"))
        if fault == "allreduce_fusion" and (failed_comm := fused_allreduce_fails(launch)):
            return lines + failed_comm, 1, self.gpu_weights_gib(launch)
        if launch.max_model_len in self.compiled:
            lines.append(CORE.format(level="INFO", src="backends.py:292",
                                     msg="Directly load the compiled graph(s) for compile range (1, 2048) from the cache"))
        else:
            lines.append(CORE.format(level="INFO", src="backends.py:1155", msg="Dynamo bytecode transform time: 2.39 s"))
            lines.append(CORE.format(level="INFO", src="backends.py:371",
                                     msg="Compiling a graph for compile range (1, 2048) takes 9.93 s"))
        if fault == "hang_startup":
            return lines, -1, self.gpu_weights_gib(launch)
        avail = self.available_gib(launch)
        lines.append(CORE.format(level="INFO", src="gpu_worker.py:560", msg=f"Available KV cache memory: {avail:.2f} GiB"))
        if avail <= 0:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1330",
                msg="ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                    "when initializing the engine.")], 1, requested
        tokens = self.kv_tokens(launch)
        need_gib = launch.max_model_len * self.kv_bytes(launch) / GIB
        if tokens < launch.max_model_len:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1330",
                msg=f"ValueError: To serve at least one request with the model's max seq len ({launch.max_model_len}), "
                    f"({need_gib:.2f} GiB KV cache is needed, which is larger than the available KV cache memory "
                    f"({avail:.2f} GiB). Based on the available memory, the estimated maximum model length is "
                    f"{tokens}. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when "
                    "initializing the engine."),
                API.format(level="ERROR", src="core_client.py:600",
                           msg="RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
            ], 1, requested
        conc = tokens / launch.max_model_len
        lines += [CORE.format(level="INFO", src="kv_cache_utils.py:2177", msg=f"GPU KV cache size: {tokens:,} tokens"),
                  CORE.format(level="INFO", src="kv_cache_utils.py:2178",
                              msg=f"Maximum concurrency for {launch.max_model_len:,} tokens per request: {conc:.2f}x")]
        if fault == "oom_at_graph_capture" and not launch.enforce_eager:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1330",
                msg=f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total "
                    f"capacity of {self.total_gib:.2f} GiB of which 200.00 MiB is free.")], 1, requested
        graphs = 0.0 if launch.enforce_eager else self.graph_gib
        if not launch.enforce_eager:
            lines.append(CORE.format(level="INFO", src="model_runner.py:747",
                                     msg=f"Graph capturing finished in 4 secs, took {self.graph_gib:.2f} GiB"))
        lines += [CORE.format(level="INFO", src="core.py:340",
                              msg="init engine (profile, create kv cache, warmup model) took 21.92 s"),
                  API.format(level="INFO", src="api_server.py:677", msg=f"Starting vLLM server on http://0.0.0.0:{launch.port}"),
                  API.format(level="INFO", src="on.py:62", msg="Application startup complete.")]
        if fault == "exit_before_ready":
            return lines, 1, requested + graphs
        if fault == "port_in_use":
            return lines[:-1] + [API.format(
                level="ERROR", src="api_server.py:690",
                msg=f"OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', {launch.port}): "
                    "address already in use")], 1, 0.0

        self.compiled.add(launch.max_model_len)
        return lines, None, requested + graphs

    def script_0_34(self, number: int, launch: Launch) -> tuple[list[str], int | None, float]:
        """vLLM 0.34 with its extensible KV cache: no free-memory check at start; a pre-warm-up
        estimate checked first; the cache sized after warm-up and checked again."""
        fault = self.faults.get(number, self.fault)
        lines = [API.format(level="INFO", src="startup.py:38",
                            msg=" ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.34.0"),
                 API.format(level="INFO", src="startup.py:96",
                            msg=f"non-default args: {{'gpu_memory_utilization': {launch.util}, "
                                f"'max_model_len': {launch.max_model_len}}}")]
        failed = API.format(level="ERROR", src="utils.py:1477",
                            msg="RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}")
        early = self._refused_before_the_engine(fault, launch, "model.py:2214")
        if early is not None:
            return lines + early, 1, 0.0
        weights = self.gpu_weights_gib(launch)
        free = self.free_gib()
        requested = launch.util * self.total_gib
        lines.append(CORE.format(level="INFO", src="model_runner.py:412", msg="Loading model from scratch..."))
        if fault == "oom_at_load" or free < weights:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1757",
                msg=f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 304.00 MiB. GPU 0 has a total "
                    f"capacity of {self.total_gib:.2f} GiB of which 120.00 MiB is free."), failed], 1, min(free, weights)
        lines.append(CORE.format(level="INFO", src="model_runner.py:441",
                                 msg=f"Model loading took {weights:.2f} GiB memory and 1.74 seconds"))
        if launch.max_model_len in self.compiled:
            lines.append(CORE.format(level="INFO", src="backends.py:314",
                                     msg="Directly load the compiled graph(s) for compile range (1, 2048) from the cache"))
        else:
            lines.append(CORE.format(level="INFO", src="backends.py:421",
                                     msg="Compiling a graph for compile range (1, 2048) takes 9.93 s"))
        if fault == "hang_startup":
            return lines, -1, weights
        pre = self.available_gib(launch)
        lines.append(CORE.format(level="INFO", src="gpu_worker.py:795", msg=f"Available KV cache memory: {pre:.2f} GiB"))
        hint = (f"The KV cache gets what is left after the model and its activations within `gpu_memory_utilization`="
                f"{launch.util}; increase it (with the extensible KV cache it defaults to 1.0) or decrease `max_model_len`"
                " or `max_num_seqs`.")
        if pre <= 0:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1757",
                msg=f"ValueError: No available memory for the cache blocks. {hint} See "
                    "https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."), failed], 1, requested
        usable = self.blocks(launch, pre) - 1  # the null block
        need_gib = launch.max_model_len * self.kv_bytes_per_token / GIB
        if usable * self.block < launch.max_model_len:
            return lines + [self._kv_error(launch, need_gib, usable, hint), failed], 1, weights + self.non_torch_gib
        if fault == "oom_at_graph_capture" and not launch.enforce_eager:
            return lines + [CORE.format(
                level="ERROR", src="core.py:1757",
                msg=f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a total "
                    f"capacity of {self.total_gib:.2f} GiB of which 200.00 MiB is free."), failed], 1, weights
        graphs = 0.0 if launch.enforce_eager else self.graph_gib
        if not launch.enforce_eager:
            lines.append(CORE.format(level="INFO", src="model_runner.py:1216",
                                     msg=f"Graph capturing finished in 4 secs, took {self.graph_gib:.2f} GiB"))
        act = self.overhead_gib(launch) - self.non_torch_gib
        lines.append(CORE.format(
            level="INFO", src="gpu_worker.py:1175",
            msg=f"Free memory on device ({free:.2f}/{self.total_gib:.2f} GiB) on startup. Desired GPU memory utilization "
                f"is ({launch.util}, {requested:.2f} GiB). Actual usage is {weights + self.non_torch_gib:.2f} GiB "
                f"for consumed memory (weights + non-torch), {act:.2f} GiB for peak activation, and {graphs:.2f} GiB for "
                f"CUDAGraph memory. Current kv cache memory in use is {pre:.2f} GiB."))
        after = self.after_warmup_gib(launch, free)
        blocks = self.blocks(launch, after)
        free_after = free - weights - self.non_torch_gib - graphs - 0.07
        lines.append(CORE.format(
            level="INFO", src="extensible_kv_cache.py:693",
            msg=f"Memory after warmup: {free_after:.2f} GiB free, 0.07 GiB committed to the KV cache, "
                f"{act * self.reservation_growth:.2f} GiB kept for transient activations ({act:.2f} GiB allocated at peak, "
                f"{act * self.reservation_growth if self.reservation_growth > 1 else 0.0:.2f} GiB of torch reservation growth); "
                f"{blocks} KV cache blocks ({blocks * self.block * self.kv_bytes_per_token / GIB:.2f} GiB) fit within the "
                f"requested {requested:.2f} GiB. Torch may reserve up to 9.0 GiB."))
        if (blocks - 1) * self.block < launch.max_model_len:
            after_hint = hint.replace("the model and its activations", "the model, its activations, CUDA graphs and warmup")
            return lines + [self._kv_error(launch, need_gib, blocks - 1, after_hint), failed], 1, requested
        tokens = blocks * self.block
        kv = tokens * self.kv_bytes_per_token / GIB
        conc = tokens / launch.max_model_len
        lines += [CORE.format(level="INFO", src="kv_cache_utils.py:1168",
                              msg=f"GPU KV cache size: {tokens:,} tokens, Maximum concurrency for "
                                  f"{launch.max_model_len:,} tokens per request: {conc:.2f}x"),
                  CORE.format(level="INFO", src="extensible_kv_cache.py:536",
                              msg=f"Extended KV cache to {blocks} blocks ({kv:.2f} GiB)."),
                  CORE.format(level="INFO", src="core.py:451",
                              msg="init engine (profile, create kv cache, warmup model) took 21.92 s (compilation: 9.93 s)"),
                  API.format(level="INFO", src="entry.py:139", msg=f"Starting vLLM server on http://0.0.0.0:{launch.port}"),
                  "INFO:     Application startup complete."]
        held = weights + self.non_torch_gib + graphs + act + kv
        if fault == "exit_before_ready":
            return lines, 1, held
        if fault == "port_in_use":
            return lines[:-1] + ["ERROR:    [Errno 98] error while attempting to bind on address "
                                 f"('0.0.0.0', {launch.port}): address already in use"], 1, 0.0

        self.compiled.add(launch.max_model_len)
        return lines, None, held

    def _refused_before_the_engine(self, fault: str | None, launch: Launch, model_src: str) -> list[str] | None:
        """What the API server prints when it exits before building an engine: a model it cannot
        find, a port it cannot bind, a context longer than the model's (None: it goes on)."""
        if fault == "model_not_found":
            return [API.format(level="ERROR", src="api_server.py:90",
                               msg="OSError: Invalid repository ID or local directory specified")]
        if fault == "bind_failed":  # the API server binds its socket before it builds the engine
            return list(BIND_FAILED)
        if launch.max_model_len > self.model_limit:
            return [API.format(
                level="ERROR", src=model_src,
                msg=f"pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"
                    f"  Value error, User-specified max_model_len ({launch.max_model_len}) is greater than the "
                    f"derived max_model_len (max_position_embeddings={self.model_limit} or model_max_length=None "
                    "in model's config.json).")]
        return None

    def _kv_error(self, launch: Launch, need_gib: float, usable_blocks: int, hint: str) -> str:
        usable = max(usable_blocks, 0)
        estimate = min(usable * self.block, launch.max_model_len)
        est = f"Based on the available memory, the estimated maximum model length is {estimate}. " if estimate > 0 else ""
        return CORE.format(
            level="ERROR", src="core.py:1757",
            msg=f"ValueError: To serve at least one request with the model's max seq len ({launch.max_model_len}), "
                f"({need_gib:.2f} GiB KV cache is needed, which is larger than the available KV cache memory "
                f"({usable * self.block * self.kv_bytes_per_token / GIB:.2f} GiB). {est}{hint} Decreasing `max_model_len`"
                " also reduces what is needed. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for"
                " more details.")

    # -------------------------------------------------------- its HTTP side
    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            engine = self.serving
            if engine is None:
                raise httpx.ConnectError("connection refused", request=request)
            path = request.url.path
            if path == "/health":
                return httpx.Response(200 if engine.healthy else 503)
            if path in ("/v1/chat/completions", "/v1/completions"):
                engine.requests += 1
                return httpx.Response(200, json={"choices": [{"text": "x"}]})
            if path == "/metrics":
                tokens = engine.kv_tokens
                conc = tokens / engine.launch.max_model_len if tokens else 0
                body = (f'vllm:cache_config_info{{kv_cache_size_tokens="{tokens}",kv_cache_max_concurrency="{conc}"}} 1.0\n'
                        f'vllm:num_requests_waiting{{engine="0"}} {engine.waiting}\n'
                        f'vllm:num_requests_running{{engine="0"}} 0.0\n'
                        f'vllm:kv_cache_usage_perc{{engine="0"}} {engine.kv_usage}\n'
                        f'vllm:generation_tokens_total{{engine="0"}} {engine.generated}\n')
                return httpx.Response(200, text=body)
            return httpx.Response(404)
        return httpx.MockTransport(handle)


class FakeTree:
    """A launched process tree as the launcher's handle shows it, on the virtual clock: it exits,
    stops (SIGTERM; a tree that ignores it is SIGKILLed at the guard's deadline, unless a `hurry`
    kills it first) and records each stop and hurry. Subclasses run their output in `_run`."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.stops: list[float] = []
        self.hurried: list[float] = []
        self.ignore_sigterm = False
        self.exit_info: ExitInfo | None = None
        self._exited = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    def _exit(self, info: ExitInfo) -> None:
        if self._exited.is_set():
            return
        self.exit_info = info
        self._task.cancel()
        self._exited.set()

    async def wait(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    async def stop(self, timeout: float) -> ExitInfo:
        self.stops.append(self.clock.monotonic())
        if self.running:
            if self.ignore_sigterm:
                # the guard's deadline, unless a `hurry` kills it first
                await first_of(self.clock, self._exited.wait(), timeout)
                self._exit(ExitInfo(128 + 9, 9))
            else:
                await self.clock.sleep(0.1)
                self._exit(ExitInfo(0))
        return await self.wait()

    def hurry(self) -> None:
        self.hurried.append(self.clock.monotonic())
        self._exit(ExitInfo(128 + 9, 9))


class FakeEngine(FakeTree):
    """One launched engine: prints its script on the virtual clock, then exits or serves."""

    _pids = itertools.count(5000)

    def __init__(self, vllm: FakeVllm, spec: LaunchSpec, on_output: OutputCallback, clock: VirtualClock) -> None:
        self.vllm = vllm
        self.spec = spec
        self.launch = Launch.parse(spec.argv)
        vllm.launches.append(self.launch)
        self.number = len(vllm.launches)
        self.kv_tokens = vllm.kv_tokens(self.launch)
        self.lines, self.exit_code, self.held_gib = vllm.script(self.number, self.launch)
        self.on_output = on_output
        self.engine_pid = next(self._pids)
        self._guard_pid = next(self._pids)
        self.placement: str | None = None
        self.serving = False
        self.healthy = True
        self.requests = 0
        self.waiting = 0.0
        self.generated = 0.0
        self.kv_usage = 0.0
        super().__init__(clock)

    @property
    def guard_pid(self) -> int:
        return self._guard_pid

    def _print(self, *lines: str) -> None:
        text = "".join(line + "\n" for line in lines)
        self.on_output(text.encode(), list(lines))

    async def _run(self) -> None:
        for line in self.lines:
            await self.clock.sleep(self.vllm.line_interval_s)
            self._print(line)
        if self.exit_code == -1:  # hangs: prints nothing more until stopped
            return
        if self.exit_code is not None:
            self._exit(ExitInfo(self.exit_code))
            return
        self.serving = True

    def _exit(self, info: ExitInfo) -> None:
        if self.running:
            self.serving = False
        super()._exit(info)

    def die(self, linger_s: float = 0.0) -> None:
        """EngineCore killed while serving: vLLM's API server (0.26 and 0.34 alike) logs it and exits with 0,
        `linger_s` later (its watchdog: up to 5 s; /health answers 503 meanwhile)."""
        self._print(CORE.format(level="ERROR", src="core.py:900", msg="EngineCore encountered an issue. See stack trace"),
                    API.format(level="ERROR", src="async_llm.py:480", msg="EngineDeadError: EngineCore encountered an issue."))
        if linger_s <= 0:
            self._exit(ExitInfo(0))
            return
        self.healthy = False
        self.clock.call_at(self.clock.monotonic() + linger_s, lambda: self._exit(ExitInfo(0)))

    def guard_killed(self) -> None:
        """`kill -9` of the guard: the launcher finds no exit report and ends what the guard left."""
        self._exit(ExitInfo(128 + 9, 9, guard_lost=True, guard_pid=self._guard_pid, left=2))

    def runtime_oom(self) -> None:
        """A CUDA OOM while serving: EngineCore logs it and dies; the API server exits 0."""
        self._print(CORE.format(level="ERROR", src="core.py:1759", msg="EngineCore encountered a fatal error."),
                    CORE.format(level="ERROR", src="core.py:1759",
                                msg="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 304.00 MiB. GPU 0 has a "
                                    f"total capacity of {self.vllm.total_gib:.2f} GiB of which 101.00 MiB is free."),
                    API.format(level="ERROR", src="async_llm.py:957", msg="EngineDeadError: EngineCore encountered an issue."))
        self._exit(ExitInfo(0))

class FakeLauncher:
    def __init__(self, vllm: FakeVllm, clock: VirtualClock) -> None:
        self.vllm = vllm
        self.clock = clock
        self.specs: list[LaunchSpec] = []

    async def start(self, spec: LaunchSpec, on_output: OutputCallback) -> FakeEngine:
        self.specs.append(spec)
        engine = FakeEngine(self.vllm, spec, on_output, self.clock)
        self.vllm.engines.append(engine)
        return engine


class RecordingNotifier:
    """sd_notify as a list of (virtual time, key, value)."""

    def __init__(self, clock: VirtualClock, watchdog_s: float | None = None, enabled: bool = True) -> None:
        self.clock = clock
        self.watchdog_s = watchdog_s
        self.enabled = enabled
        self.sent: list[tuple[float, str, str]] = []

    def _send(self, key: str, value: str = "1") -> bool:
        self.sent.append((self.clock.monotonic(), key, value))
        return True

    def ready(self, status: str | None = None) -> bool:
        if status:
            self._send("STATUS", status)
        return self._send("READY")

    def status(self, text: str) -> bool:
        return self._send("STATUS", text)

    def watchdog(self) -> bool:
        return self._send("WATCHDOG")

    def stopping(self, status: str | None = None) -> bool:
        return self._send("STOPPING")

    def reloading(self) -> bool:
        return self._send("RELOADING")

    def extend_timeout(self, seconds: float) -> bool:
        return self._send("EXTEND_TIMEOUT_USEC", str(int(seconds * 1e6)))

    def watchdog_interval_s(self) -> float | None:
        return self.watchdog_s

    def keys(self, key: str) -> list[tuple[float, str, str]]:
        return [s for s in self.sent if s[1] == key]


class RecordingDoor:
    """The front door as a list of the calls the daemon made (its own behaviour is tested in
    tests/test_frontdoor_*.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def start(self, host: str, port: int) -> None:
        self.calls.append(("start", host, port))

    async def stop(self) -> None:
        self.calls.append(("stop",))

    def engine_starting(self, eta_s: float | None) -> None:
        self.calls.append(("starting", eta_s))

    def engine_ready(self, upstream: str) -> None:
        self.calls.append(("ready", upstream))

    def engine_down(self, reason: str, eta_s: float | None) -> None:
        self.calls.append(("down", reason, eta_s))

    def engine_failed(self, reason: str) -> None:
        self.calls.append(("failed", reason))

    async def drain(self, grace_s: float | None = None) -> Drained:
        self.calls.append(("drain",))
        return Drained(grace_s=30.0 if grace_s is None else grace_s, waited_s=0.0, at_engine=0, completed=0)

    def stats(self) -> dict[str, Any]:
        return {"held": 0, "in_flight": 0}

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeGpus:
    """NVML over the fake vLLM's GPU (with the uuid the plan chose)."""

    def __init__(self, vllm: FakeVllm, uuid: str) -> None:
        self.vllm = vllm
        self.uuid = uuid

    def gpus(self) -> list[Gpu]:
        total_mib = int(self.vllm.total_gib * 1024)
        free_mib = int(self.vllm.free_gib() * 1024)
        return [Gpu(index=0, uuid=self.uuid, name="NVIDIA GeForce RTX 4090 D", bus_id="00000000:01:00.0",
                    sysfs_bus_id="0000:01:00.0", memory_total_mib=total_mib, memory_used_mib=total_mib - free_mib,
                    memory_free_mib=free_mib)]

    def driver_version(self) -> str | None:
        return "fake"


# ---------------------------------------------------------------- the daemon under test


class Harness:
    """A Daemon wired to the fakes, for one test: `await h.until(predicate)` advances virtual time."""

    def __init__(self, tmp: Path, vllm: FakeVllm | None = None, *, sets: list[str] = (), env: dict[str, str] | None = None,
                 watchdog_s: float | None = None, notify: bool = False, **settings: Any) -> None:
        self.vllm = vllm or FakeVllm()
        self.clock = VirtualClock()
        self.tmp = tmp
        base = {"state_dir": tmp / "state", "failed_linger_s": 0, "stop_timeout_s": 10}
        base.update(settings)
        self.settings = load_settings(**base)
        self.profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=list(sets))
        self.store = StateStore(self.settings.state_dir)
        self.plan = build_plan(self.settings, self.profile, simulate=True, for_launch=True, store=self.store,
                               vllm_version=self.vllm.version)
        self.notifier = RecordingNotifier(self.clock, watchdog_s, enabled=notify)
        self.door = RecordingDoor()
        self.launcher = FakeLauncher(self.vllm, self.clock)
        self.daemon = Daemon(self.settings, self.profile, self.plan, launcher=self.launcher, clock=self.clock,
                             engine_client=EngineClient("http://engine", self.profile.served_name,
                                                        transport=self.vllm.transport()),
                             notifier=self.notifier, store=self.store,  # type: ignore[arg-type]
                             gpus=FakeGpus(self.vllm, self.plan.chosen[0].uuid),
                             door=self.door if self.plan.frontdoor else None)  # type: ignore[arg-type]
        self.task: asyncio.Task | None = None

    def start(self) -> "Harness":
        self.clock.watch_threads(asyncio.get_running_loop())
        self.task = asyncio.create_task(self.daemon.serve())
        return self

    async def until(self, predicate: Callable[[], Any], virtual_s: float = 3600.0, what: str = "condition") -> Any:
        """Let the daemon run (in virtual time) until `predicate()` is truthy."""
        deadline = self.clock.monotonic() + virtual_s
        while True:
            value = predicate()
            if value:
                return value
            if self.task is not None and self.task.done():
                raise AssertionError(f"the daemon ended (code {self.task.result()}) before {what}; "
                                     f"{self.events()}")
            if self.clock.monotonic() > deadline:
                raise AssertionError(f"no {what} within {virtual_s:g} virtual s; state {self.daemon.state.value}, "
                                     f"{self.events()}")
            await self.clock.sleep(0.05)

    async def ready(self, attempt: int | None = None) -> dict[str, Any]:
        await self.until(lambda: self.daemon.state.value == "ready" and (attempt is None or self.daemon.attempt == attempt),
                         what=f"ready (attempt {attempt})")
        return self.daemon.status()

    async def exit_code(self) -> int:
        assert self.task is not None
        await self.until(lambda: self.task.done(), what="the daemon to end")
        return self.task.result()

    def events(self) -> list[tuple[str, str | None]]:
        return [(h["event"], (h["failure"] or {}).get("kind")) for h in self.daemon.history]

    def relaunches(self) -> list[dict[str, Any]]:
        return [h for h in self.daemon.history if h["event"] == "relaunch"]

    @property
    def engine(self) -> FakeEngine:
        return self.vllm.engines[-1]


def harnesses(tmp: Path, monkeypatch: Any, backoff: tuple[float, float | None] = (1, 2),
              env: dict[str, str] | None = None) -> Callable[..., Harness]:
    """A `make(vllm, sets, state=None, **settings)` for a test's Harnesses: one simulated GPU folder,
    a state folder per Harness, and a short recovery backoff (initial, max; virtual seconds)."""
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp / "simgpu"))
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    count = itertools.count()
    short = [f"recovery.backoff_initial_s={backoff[0]:g}"]
    if backoff[1] is not None:
        short.append(f"recovery.backoff_max_s={backoff[1]:g}")

    def make(vllm: FakeVllm | None = None, sets: list[str] = (), state: Path | None = None, **kw: Any) -> Harness:
        return Harness(state or tmp / f"run{next(count)}", vllm, sets=[*short, *sets], **kw)
    return make


def cmdline(spec: LaunchSpec) -> str:
    return shlex.join(spec.argv)


def floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-9) / 100


_ = re  # the module's patterns live in FakeVllm's f-strings
