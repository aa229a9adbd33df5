"""The simulated EngineCore process and its GPU workers.

EngineCore is forked by the API server (same process group, no session of its own, no death
signal: like vLLM's it survives a SIGKILLed API server and keeps its GPU memory). With TP×PP > 1
it forks one worker per GPU, each watching its channel to EngineCore as vLLM's death pipe: when
EngineCore dies, the workers log "Parent process exited" and exit.

Each GPU's memory goes through `simgpu.hold`, phase by phase, so another process (or an orphan)
sees it and every allocation can fail for real: weights, profiling activations, KV cache and CUDA
graphs each check the free memory first and raise PyTorch's OOM text when it is short.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from llm_supervisor.simulator import memory
from llm_supervisor.simulator import tracebacks as tb
from llm_supervisor.simulator.config import SimConfig, env_float
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.simulator.logs import Log, traceback_text
from llm_supervisor.simulator.memory import MIB, format_gib, torch_format_size
from llm_supervisor.simulator.proc import Channel, fork_child, set_title, sleep
from llm_supervisor.simulator.templates import ENGINE_CONFIG
from llm_supervisor.simulator.rank import OOM_TAIL, Rank, Shutdown, SimFailure, _hang_forever, gather_replies


# ---------------------------------------------------------------- one GPU


# ---------------------------------------------------------------- worker processes (TP×PP > 1)


def worker_main(cfg: SimConfig, dp_rank: int, rank: int, sock: socket.socket) -> int:
    d = cfg.dialect
    tp_rank, pp_rank = rank % cfg.tp, rank // cfg.tp
    set_title("VLLM::" + Dialect("0.26.0").worker_name(rank, tp_rank, pp_rank, cfg.pp, cfg.tp, dp_rank, cfg.dp))
    log = Log(d.worker_name(rank, tp_rank, pp_rank, cfg.pp, cfg.tp, dp_rank, cfg.dp), ansi=d.ansi_prefix,
              raw_prefix=not d.unprefixed_raw)
    me = Rank(cfg, log, dp_rank, rank)
    chan = Channel(sock)

    def on_term(signum: int, _frame: Any) -> None:
        me.release()
        os._exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore_sigterm" in cfg.faults else on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; EngineCore decides
    while True:
        msg = chan.recv()
        if msg is None:  # EngineCore is gone: vLLM's death pipe
            if d.at_least(0, 10, 1):
                log.info(d.src("worker_parent"), "Parent process exited, terminating worker")
            me.release()
            return 0
        op = msg.get("op", "")
        try:
            chan.send({"ok": me.call(op, msg.get("args") or {})})
        except SimFailure as exc:
            frames = (tb.WORKER_START_HEAD + tb.WORKER_FRAMES["init_device"][1:] if op == "init_device"
                      else tb.WORKER_BUSY_HEAD + tb.WORKER_FRAMES.get(exc.phase, []))
            what = "WorkerProc failed to start." if op == "init_device" else "WorkerProc hit an exception."
            src = d.src("worker_failed") if op == "init_device" else d.src("worker_exc")
            log.error(src, what + "\n" + traceback_text(frames, exc.final))
            chan.send({"err": {"phase": exc.phase, "final": exc.final}})
            if op == "init_device":
                me.release()
                return 1


class Ranks:
    """The GPUs of one engine: in-process (TP×PP = 1, vLLM's "uni" executor) or worker processes
    (vLLM's "mp" executor: any larger world, or one rank when `--distributed-executor-backend mp`
    asks for it)."""

    def __init__(self, cfg: SimConfig, log: Log, dp_rank: int) -> None:
        self.cfg = cfg
        self.dp_rank = dp_rank
        self.local: Rank | None = None
        self.workers: list[tuple[int, Channel]] = []
        if cfg.world_size == 1 and cfg.executor_backend != "mp":
            self.local = Rank(cfg, log, dp_rank, 0)
            return
        for rank in range(cfg.world_size):
            parent_end, child_end = socket.socketpair()
            pid = fork_child(lambda r=rank, s=child_end: worker_main(cfg, dp_rank, r, s), [child_end.fileno()])
            child_end.close()
            self.workers.append((pid, Channel(parent_end)))

    def call(self, op: str, args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self.local is not None:
            return [self.local.call(op, args or {})]
        for _pid, chan in self.workers:
            chan.send({"op": op, "args": args or {}})
        return gather_replies(op, (chan.recv() for _pid, chan in self.workers))

    def fds(self) -> list[int]:
        return [chan.fileno() for _pid, chan in self.workers]

    def died(self, fd: int) -> tuple[int, int | None]:
        """The rank whose channel `fd` closed and its exit code as vLLM's monitor reads it right
        away (multiprocessing's poll): None unless the process was already reaped."""
        rank, pid = next((r, pid) for r, (pid, chan) in enumerate(self.workers) if chan.fileno() == fd)
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return rank, None
        if not done:
            return rank, None
        return rank, (-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))

    def stop(self) -> None:
        if self.local is not None:
            self.local.release()
            return
        for pid, _chan in self.workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3
        for pid, _chan in self.workers:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done or time.monotonic() > deadline:
                    if not done:
                        try:
                            os.kill(pid, signal.SIGKILL)
                            os.waitpid(pid, 0)
                        except (ProcessLookupError, ChildProcessError):
                            pass
                    break
                time.sleep(0.01)


# ---------------------------------------------------------------- scheduling


@dataclass
class Request:
    rid: str
    prompt: int
    planned: int
    generated: int = 0

    def blocks(self, block: int) -> int:
        return memory.cdiv(self.prompt + self.planned, block)


@dataclass
class Scheduler:
    """Continuous batching under vLLM's two limits: max_num_seqs and the KV blocks. A request
    is admitted when the blocks for its prompt and its whole output are free (vLLM allocates as
    it goes and preempts; reserving up front gives the same steady state without preemption)."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_running: float = float("inf")  # LLM_SUPERVISOR_SIM_MAX_RUNNING: an extra cap for tests
    waiting: deque[Request] = field(default_factory=deque)
    running: dict[str, Request] = field(default_factory=dict)
    reserved: int = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    @property
    def unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def abort(self, rid: str) -> None:
        req = self.running.pop(rid, None)
        if req is not None:
            self.reserved -= req.blocks(self.block_size)
            return
        self.waiting = deque(r for r in self.waiting if r.rid != rid)

    def admit(self) -> list[str]:
        """Start waiting requests while max_num_seqs and the KV blocks allow; their ids."""
        started = []
        while self.waiting and len(self.running) < self.max_num_seqs and len(self.running) < self.max_running:
            req = self.waiting[0]
            need = req.blocks(self.block_size)
            if self.reserved + need > self.num_blocks and self.running:
                break
            self.waiting.popleft()
            self.running[req.rid] = req
            self.reserved += need
            started.append(req.rid)
        return started

    def step(self) -> tuple[dict[str, int], dict[str, str]]:
        out: dict[str, int] = {}
        done: dict[str, str] = {}
        for rid, req in list(self.running.items()):
            req.generated += 1
            out[rid] = 1
            if req.generated >= req.planned:
                done[rid] = "done"
                self.abort(rid)
        return out, done

    @property
    def context_tokens(self) -> int:
        """Tokens of KV cache the running requests read in a decode step."""
        return sum(r.prompt + r.generated for r in self.running.values())

    @property
    def usage(self) -> float:
        if self.num_blocks <= 0:
            return 0.0
        used = sum(memory.cdiv(r.prompt + r.generated, self.block_size) for r in self.running.values())
        return min(1.0, used / self.num_blocks)


# ---------------------------------------------------------------- EngineCore


class EngineCore:
    def __init__(self, cfg: SimConfig, dp_rank: int, sock: socket.socket) -> None:
        self.cfg = cfg
        self.dp_rank = dp_rank
        d = cfg.dialect
        self.name = d.engine_name(dp_rank, cfg.dp)
        self.log = Log(self.name, ansi=d.ansi_prefix, raw_prefix=not d.unprefixed_raw)
        self.api = Channel(sock)
        self.ranks: Ranks | None = None
        self.ready_at: float | None = None
        self.sched: Scheduler | None = None  # while serving: what a shutdown aborts

    # ------------------------------------------------------------ startup

    def config_line(self) -> str:
        """The real 0.26 "Initializing a V1 LLM engine" text with this run's values."""
        c = self.cfg
        mode, graphs = ("<CompilationMode.NONE: 0>", "<CUDAGraphMode.NONE: 0>") if c.enforce_eager else (
            "<CompilationMode.VLLM_COMPILE: 3>", "<CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>")
        sizes = list(c.graph_sizes)  # none with enforce_eager
        return ENGINE_CONFIG.format(
            version=c.dialect.version, model=c.model, revision=c.revision, trust_remote_code=c.trust_remote_code,
            dtype=c.dtype_name, max_seq_len=c.max_model_len, load_format=c.load_format, tp=c.tp, pp=c.pp, dp=c.dp,
            dcar=c.disable_custom_all_reduce, quantization=c.quantization, enforce_eager=c.enforce_eager,
            kv_cache_dtype=c.kv_cache_dtype, served=c.served_names[0], prefix_caching=c.enable_prefix_caching,
            mode=mode, batched=c.max_num_batched_tokens, graph_mode=graphs, max_capture=max(sizes or [0]),
            capture_sizes=sizes)

    def start(self) -> dict[str, Any]:
        """Bring the engine up; returns the handshake facts. Raises SimFailure."""
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        t0 = time.monotonic()
        log.info(d.src("engine_init"), self.config_line())
        if cfg.executor_backend == "ray":  # the ranks are Ray actors on the cluster's nodes
            from llm_supervisor.simulator.raymode import RayRanks

            self.ranks = RayRanks(cfg, log, self.dp_rank)  # type: ignore[assignment]
        else:
            self.ranks = Ranks(cfg, log, self.dp_rank)
        self.ranks.call("init_device")
        self.ranks.call("load")
        compiled = self.ranks.call("compile")
        compile_s = compiled[0].get("seconds") if compiled else None
        available = min(r["available"] for r in self.ranks.call("profile"))
        first = cfg.kv_bytes_per_token[0]
        layers0 = cfg.layers_per_stage[0]
        # the smallest stage's pool decides (vLLM takes the minimum over workers)
        sizings = [memory.KvSizing(available, kv, cfg.block_size, n)
                   for kv, n in zip(cfg.kv_bytes_per_token, cfg.layers_per_stage)]
        sizing = min(sizings, key=lambda s: s.num_blocks) if sizings else memory.KvSizing(available, first, cfg.block_size, layers0)
        hint = d.kv_hint(cfg.util, cfg.extensible, after_warmup=False)
        max_len = cfg.max_model_len
        if available <= 0:
            raise SimFailure("no_kv", "ValueError: " + d.no_kv_memory(hint), in_worker=False)
        # from 0.30 the check leaves out one block (the null block); what it prints is one block less
        checked = [self._usable(s) for s in sizings]
        if max_len == -1:
            full = cfg.derived_max_model_len
            if all(s.fits(full) for s in checked):
                max_len = full
                tentative = "; the final length is set after CUDA graph capture and warmup" if cfg.extensible else ""
                log.info(d.src("auto_fit"), f"Auto-fit max_model_len: full model context length {full} fits in "
                         "available GPU memory" if not d.extensible_kv_cache else
                         f"Auto-fit max_model_len: full model context length {full} fits in available KV cache memory "
                         f"({format_gib(available)} GiB GPU){tentative}")
            else:
                max_len = min(s.estimate_max_model_len(full) for s in checked)
                if max_len <= 0:
                    raise SimFailure("auto_fit", "ValueError: Cannot auto-fit max_model_len: not enough GPU memory "
                                     "available to serve even a single token. Try increasing "
                                     "`gpu_memory_utilization`.", in_worker=False)
                if d.extensible_kv_cache:
                    tentative = "; the final length is set after CUDA graph capture and warmup" if cfg.extensible else ""
                    log.info(d.src("auto_fit"), f"Auto-fit max_model_len: reduced from {full} to {max_len} to fit in "
                             f"available KV cache memory ({format_gib(available)} GiB GPU){tentative}")
                else:
                    log.info(d.src("auto_fit"), f"Auto-fit max_model_len: reduced from {full} to {max_len} to fit in "
                             f"available GPU memory ({format_gib(available)} GiB available for KV cache)")
        for s in checked:
            if not s.fits(max_len):
                raise SimFailure("kv_check", "ValueError: " + d.kv_too_small(
                    max_len, s.request_bytes(max_len), s.available_bytes, s.estimate_max_model_len(max_len), hint),
                    in_worker=False)
        num_blocks = sizing.num_blocks
        if cfg.num_gpu_blocks_override:
            log.info(d.src("override_blocks"), f"Overriding num_gpu_blocks={num_blocks} with "
                     f"num_gpu_blocks_override={cfg.num_gpu_blocks_override}")
            num_blocks = cfg.num_gpu_blocks_override
        if cfg.extensible:
            num_blocks, max_len = self._size_after_warmup(num_blocks, max_len)
        tokens = num_blocks * cfg.block_size
        concurrency = memory.max_concurrency(num_blocks, cfg.block_size, max_len)
        repeats = cfg.world_size if d.kv_lines_per_worker else 1
        for _ in range(repeats):
            lines = d.kv_size_lines(tokens, max_len, concurrency)
            log.info(d.src("kv_size"), lines[0])
            if len(lines) > 1:
                log.info(d.src("kv_conc"), lines[1])
        sleep(cfg.timing.phase("kv"))
        if cfg.extensible:
            self.ranks.call("extend_kv", {"num_blocks": num_blocks})
        else:
            self.ranks.call("allocate_kv", {"num_blocks": num_blocks})
            self.ranks.call("capture_graphs")
        if "hang_startup" in cfg.faults and cfg.faults.active["hang_startup"] == "warmup":
            _hang_forever()
        sleep(cfg.timing.phase("warmup"))
        log.info(d.src("init_took"), d.init_engine(time.monotonic() - t0, compile_s))
        return {"op": "ready", "num_gpu_blocks": num_blocks, "kv_tokens": tokens, "concurrency": concurrency,
                "max_model_len": max_len, "block_size": cfg.block_size, "pid": os.getpid()}

    def _usable(self, sizing: memory.KvSizing) -> memory.KvSizing:
        """What one request may use: from 0.30 all but the null block."""
        if not self.cfg.dialect.null_block_reserved or sizing.available_bytes <= 0:
            return sizing
        block = sizing.page_bytes * sizing.num_layers
        return memory.KvSizing(sizing.available_bytes - block, sizing.kv_bytes_per_token, sizing.block_size,
                               sizing.num_layers)

    def _size_after_warmup(self, capacity: int, max_len: int) -> tuple[int, int]:
        """0.34's extensible KV cache: commit the null block, capture CUDA graphs and warm up, then
        size the cache from the memory measured (the minimum over ranks) and check once more that
        one request fits (finalize_extensible_kv_cache); returns (blocks, max_model_len)."""
        cfg, d, log = self.cfg, self.cfg.dialect, self.log
        assert self.ranks is not None
        self.ranks.call("commit_kv", {"num_blocks": 1})
        self.ranks.call("capture_graphs")
        blocks = min(r["blocks"] for r in self.ranks.call("measure_kv", {"capacity": capacity}))
        hint = d.kv_hint(cfg.util, True, after_warmup=True)
        kv, layers = cfg.kv_bytes_per_token[0], cfg.layers_per_stage[0]
        usable = self._usable(memory.KvSizing(blocks * (kv // layers * cfg.block_size) * layers, kv, cfg.block_size, layers))
        if blocks <= 1:
            raise SimFailure("kv_check", "ValueError: " + d.no_kv_memory(hint), in_worker=False)
        if cfg.max_model_len == -1 and not usable.fits(max_len):
            fitted = usable.estimate_max_model_len(max_len)
            left = f"{format_gib(usable.available_bytes)} GiB GPU left for the KV cache after CUDA graph capture and warmup"
            if fitted >= 8192:
                log.info(d.src("auto_fit_after"), f"--max-model-len auto reduced max_model_len from {max_len} to {fitted} ({left}).")
            elif fitted > 0:
                advice = ("Increase `gpu_memory_utilization` or set --max-model-len explicitly." if cfg.util < 1.0
                          else "Use more GPUs or set --max-model-len explicitly.")
                log.warning(d.src("auto_fit_after"), f"--max-model-len auto reduced max_model_len from {max_len} to "
                            f"{fitted} ({left}). Requests longer than {fitted} tokens will be rejected. {advice}")
            max_len = fitted if fitted > 0 else max_len
        if not usable.fits(max_len):
            raise SimFailure("kv_check", "ValueError: " + d.kv_too_small(
                max_len, usable.request_bytes(max_len), usable.available_bytes, usable.estimate_max_model_len(max_len),
                hint), in_worker=False)
        return blocks, max_len

    # ------------------------------------------------------------ failure output

    def report_failure(self, exc: SimFailure) -> None:
        d, log, cfg = self.cfg.dialect, self.log, self.cfg
        remote = exc.remote
        frames = list(tb.ENGINE_HEAD)
        final = exc.final
        if remote and exc.phase == "init_device":
            frames += tb.ENGINE_WORKER_START
            final = tb.WORKER_START_FAILED
        elif remote:
            frames += tb.ENGINE_PHASE_FRAMES.get(exc.phase, []) + tb.rpc_frames(cfg.world_size)
            final = (f"RuntimeError: Worker failed with error '{exc.message}', please check the stack trace above "
                     "for the root cause")
        else:
            frames += tb.ENGINE_PHASE_FRAMES.get(exc.phase, [])
            if exc.phase in ("profile", "kv_alloc", "graphs"):
                frames += tb.rpc_frames(1)
            frames += tb.WORKER_FRAMES.get(exc.phase, []) if exc.in_worker else []
        log.error(d.src("failed_start"), "EngineCore failed to start.\n" + traceback_text(frames, final))
        label = self.name or d.engine_proc_label(self.dp_rank)
        log.raw(f"Process {label}:\n" + traceback_text(tb.MP_BOOTSTRAP + frames, final))
        stamp = time.strftime("%m%d %H:%M:%S") + f".{time.time_ns() % 1_000_000_000:09d}"
        log.bare(f"[rank0]:[W{stamp} ProcessGroupNCCL.cpp:1575] Warning: WARNING: destroy_process_group() was not "
                 "called before program exit, which can leak resources. For more info, please see "
                 "https://pytorch.org/docs/stable/distributed.html#shutdown (function operator())")

    def fatal_oom(self) -> None:
        """A CUDA OOM in the middle of serving: the engine logs it and dies."""
        d, log = self.cfg.dialect, self.log
        rank = self.ranks.local if self.ranks and self.ranks.local else None
        tried = memory.largest_activation_bytes(self.cfg.shape, self.cfg.tp, self.cfg.max_num_batched_tokens)
        if rank is not None:
            final = rank.oom_text(tried, min(rank.free_bytes(), tried // 3))
        else:
            final = (f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {torch_format_size(tried)}. "
                     f"GPU 0 has a total capacity of {torch_format_size(self.cfg.gpu.total_mib * MIB)} of which "
                     f"{torch_format_size(tried // 3)} is free. {OOM_TAIL}")
        log.error(d.src("fatal"), "EngineCore encountered a fatal error.\n" + traceback_text(tb.ENGINE_BUSY, final))
        label = self.name or d.engine_proc_label(self.dp_rank)
        log.raw(f"Process {label}:\n" + traceback_text(tb.MP_BOOTSTRAP[:2] + tb.ENGINE_BUSY, final))

    # ------------------------------------------------------------ shutdown

    def shutdown_lines(self, signum: int) -> None:
        d, log = self.cfg.dialect, self.log
        if not d.shutdown_lines:
            return
        log.info(d.src("ec_signal"), f"[shutdown] EngineCore: trigger received signal={signal.Signals(signum).name}")
        log.info(d.src("ec_start"), "[shutdown] EngineCore: start mode=abort timeout=0s")
        if self.sched is not None and self.sched.unfinished:
            log.info(d.src("ec_abort"), f"[shutdown] EngineCore: aborting in-flight requests count={self.sched.unfinished}")
        log.info(d.src("ec_teardown"), "[shutdown] EngineCore: request processing complete; starting resource teardown")
        log.info(d.src("ec_exit"), "[shutdown] EngineCore: exiting busy loop")

    def stop(self) -> None:
        if self.ranks is not None:
            self.ranks.stop()

    # ------------------------------------------------------------ serving

    def serve(self, facts: dict[str, Any]) -> int:
        cfg = self.cfg
        cap = env_float("MAX_RUNNING", 0.0)
        sched = self.sched = Scheduler(facts["num_gpu_blocks"], cfg.block_size, cfg.max_num_seqs,
                                       int(cap) if cap >= 1 else float("inf"))
        law = cfg.step_law
        self.ready_at = time.monotonic()
        die_at = cfg.faults.seconds("die_after_ready")
        oom_at = cfg.faults.seconds("runtime_oom_after_ready")
        stall = "stall_requests" in cfg.faults
        step_end: float | None = None  # when the step under way delivers its tokens
        started: list[str] = []
        poller = select.poll()
        api_fd = self.api.fileno()
        poller.register(api_fd, select.POLLIN)
        worker_fds = set(self.ranks.fds() if self.ranks else [])
        for fd in worker_fds:
            poller.register(fd, select.POLLIN)
        while True:
            now = time.monotonic()
            deadlines = [t for t in (step_end,) if t is not None]
            if die_at is not None:
                deadlines.append(self.ready_at + die_at)
            if oom_at is not None:
                deadlines.append(self.ready_at + oom_at)
            timeout = None if not deadlines else max(0.0, min(deadlines) - now)
            events = poller.poll(None if timeout is None else timeout * 1000)
            now = time.monotonic()
            if die_at is not None and now >= self.ready_at + die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if oom_at is not None and now >= self.ready_at + oom_at:
                self.fatal_oom()
                self.stop()
                return 1
            changed = False
            for fd, _ev in events:
                if fd in worker_fds and self.ranks is not None:
                    # a worker died: vLLM's executor monitor shuts the executor down, EngineCore fails
                    self.log.error(self.cfg.dialect.src("worker_died"), self.cfg.dialect.worker_died(*self.ranks.died(fd)))
                    self.log.error(self.cfg.dialect.src("fatal"), self.cfg.dialect.executor_failed())
                    self.stop()
                    return 1
                msgs = self.api.read_available()
                if msgs is None:  # the API server is gone: keep running, as vLLM's EngineCore does
                    poller.unregister(api_fd)
                    continue
                for msg in msgs:
                    op = msg.get("op")
                    if op == "add":
                        sched.add(Request(msg["id"], int(msg["prompt"]), max(1, int(msg["gen"]))))
                        changed = True
                    elif op == "abort":
                        sched.abort(msg["id"])
                        changed = True
            if step_end is not None and now >= step_end:
                # the step ends: every running request has one more token
                out, done = sched.step()
                self.api.send({"op": "step", "out": out, "fin": done, "start": started, "run": len(sched.running),
                               "wait": len(sched.waiting), "kv": sched.usage})
                changed = False
                step_end = None
            if step_end is None and not stall and (sched.waiting or sched.running):
                # the next step: admit what fits, prefill their prompts, decode everyone
                started = sched.admit()
                prefill = sum(sched.running[rid].prompt for rid in started)
                step_end = now + law.duration(len(sched.running), sched.context_tokens, prefill,
                                              len(sched.running) - len(started))
                if started:
                    changed = True
            if changed:
                self.api.send({"op": "step", "out": {}, "fin": {}, "start": [], "run": len(sched.running),
                               "wait": len(sched.waiting), "kv": sched.usage})


def engine_main(cfg: SimConfig, dp_rank: int, sock: socket.socket) -> int:
    """Body of the forked EngineCore process."""
    set_title("VLLM::EngineCore" if cfg.dp == 1 else f"VLLM::EngineCore_DP{dp_rank}")
    core = EngineCore(cfg, dp_rank, sock)

    def on_signal(signum: int, _frame: Any) -> None:
        raise Shutdown(signum)

    # ignore_sigterm: the whole tree ignores SIGTERM, so only SIGKILL ends it
    signal.signal(signal.SIGTERM, signal.SIG_IGN if "ignore_sigterm" in cfg.faults else on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sleep(cfg.timing.phase("spawn"))
        try:
            facts = core.start()
        except SimFailure as exc:
            core.report_failure(exc)
            core.stop()
            return 1
        core.api.send(facts)
        return core.serve(facts)
    except Shutdown as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        core.shutdown_lines(exc.signum)
        core.stop()
        return 0
    finally:
        if core.ranks is not None and core.ranks.local is not None:
            core.ranks.local.release()


def spawn_engine(cfg: SimConfig, dp_rank: int) -> tuple[int, socket.socket]:
    """Fork EngineCore `dp_rank`; returns (pid, the API server's end of its channel). The child
    closes every other descriptor, the API server's port included, so an orphan frees the port."""
    api_end, engine_end = socket.socketpair()
    pid = fork_child(lambda: engine_main(cfg, dp_rank, engine_end), [engine_end.fileno()])
    engine_end.close()
    return pid, api_end
