"""Incremental parser of `vllm serve` output: startup facts, phases, readiness. Pure.

vLLM prints the numbers users care about once, in lines that scroll by: weight GiB, KV-cache GiB,
KV-cache tokens, maximum concurrency, CUDA-graph GiB, init time. This module reads them as the
lines arrive, across vLLM 0.8.5 → newest (see docs of each pattern below), whatever process
prefix (`(EngineCore_DP0 pid=N) `, `(Worker_TP1 pid=N) `, `(VllmWorker rank=1 pid=N) `…), ANSI
colour or `\\r` the line carries.

Speed matters (the daemon ingests ≥100k lines/s): every handler sits behind a plain substring
test, regexes run only on lines that passed it, and once the server is up the parser stops
looking at lines at all.

With tensor parallelism some lines repeat once per worker; a fact is set once (first value),
except the KV-cache size and concurrency, where the minimum wins as in vLLM (min over ranks).

What changed between versions (docs/vllm-versions.md): from 0.28 the KV size and the concurrency
share one line and the memory summary reads "… for consumed memory (weights + non-torch) …";
0.30-0.33 print the CUDA-graph estimate they subtracted ("CUDA graph pool memory: … (estimated)");
from 0.31 uvicorn, tqdm and raw traceback lines carry no process prefix; with HiSparse (0.32+) the
size line reads "GPU + host KV cache size"; in 0.34 (extensible KV cache) "Available KV cache
memory" is only the pre-warm-up estimate and the cache's size is the "(S GiB)" of the "Memory
after warmup" line, so `available_kv_cache_gib` takes that value once it is printed (the
estimate stays in `available_kv_cache_gib_before_warmup`). A fact a version does not print stays
None.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Protocol

from llm_supervisor.vllm.framing import is_frame

GIB = 1024**3

PHASES = ("loading_weights", "compiling", "profiling", "kv_cache", "capturing_graphs", "starting_server")

# The eight facts of CONTRACT's `diagnose --json`.
CONTRACT_FACTS = (
    "model_weights_gib", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency",
    "max_concurrency_context", "cuda_graph_gib", "engine_init_seconds", "tensor_parallel_size",
)


@dataclass
class Event:
    """Something the log just told: kind "fact" (name, value), "phase" (phase), "server_started" (url)."""

    kind: str
    data: dict[str, Any]


@dataclass
class StartupFacts:
    """What vLLM printed about this start. None: not printed (yet)."""

    vllm_version: str | None = None
    model: str | None = None
    model_weights_gib: float | None = None
    model_load_seconds: float | None = None
    model_runner: str | None = None                 # "v2": "Using V2 Model Runner" (0.22–0.33 print it)
    cpu_offloaded_gib: float | None = None          # "Total CPU offloaded parameters: 42.0" (GiB)
    available_kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    max_concurrency: float | None = None
    max_concurrency_context: int | None = None
    cuda_graph_gib: float | None = None
    cuda_graph_seconds: float | None = None
    cuda_graph_sizes: list[int] | None = None       # the config line's cudagraph_capture_sizes ([]: eager)
    engine_init_seconds: float | None = None
    compile_seconds: float | None = None
    compile_cached: bool | None = None
    tensor_parallel_size: int | None = None
    pipeline_parallel_size: int | None = None
    data_parallel_size: int | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool | None = None
    kv_cache_dtype: str | None = None
    quantization: str | None = None
    # Memory accounting: the 0.2x "Free memory on device … Actual usage is …" INFO line, the V0
    # "Memory profiling takes …" summary, or the V1 DEBUG summary.
    free_gpu_gib: float | None = None
    total_gpu_gib: float | None = None
    requested_utilization: float | None = None
    requested_gib: float | None = None
    profile_weights_gib: float | None = None
    peak_activation_gib: float | None = None
    non_torch_gib: float | None = None
    cudagraph_memory_gib: float | None = None
    consumed_gib: float | None = None               # 0.28+: "… for consumed memory (weights + non-torch)"
    cuda_graph_estimate_gib: float | None = None    # the estimate subtracted from the budget (0.30-0.33; V1 runner 0.21+)
    external_weights_gib: float | None = None       # 0.32+: weights held by another process (ipc_cache)
    # vLLM 0.34's extensible KV cache: the pre-warm-up estimate and the post-warm-up measurement
    available_kv_cache_gib_before_warmup: float | None = None
    kv_cache_blocks: int | None = None
    free_after_warmup_gib: float | None = None
    kv_committed_gib: float | None = None
    transient_gib: float | None = None
    kv_measured_after_warmup: bool = False
    non_kv_cache_gib: float | None = None
    suggested_kv_cache_memory_bytes: int | None = None
    cli_args: dict[str, Any] | None = None
    listen_url: str | None = None
    server_started: bool = False
    processes: dict[str, int] = field(default_factory=dict)

    def contract(self) -> dict[str, Any]:
        """The eight facts of CONTRACT's `diagnose --json`, in its order."""
        return {name: getattr(self, name) for name in CONTRACT_FACTS}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def kv_bytes_per_token(self) -> float | None:
        """Bytes of KV cache per token on one GPU, from the two KV lines (approximate: rounded GiB)."""
        if self.available_kv_cache_gib and self.kv_cache_tokens:
            return self.available_kv_cache_gib * GIB / self.kv_cache_tokens
        return None


class LineSink(Protocol):
    def feed_parts(self, proc: str | None, text: str) -> None: ...


# ---------------------------------------------------------------- line cleaning

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_HEADER_RE = re.compile(
    r"(?P<lvl>DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ?"
)
HEADER_RE = _HEADER_RE
_UVICORN_LEVEL_RE = re.compile(r"(?P<lvl>DEBUG|INFO|WARNING|ERROR|CRITICAL):\s+")


def split_line(line: str) -> tuple[str | None, str]:
    """(process prefix or None, text): strips ANSI, the `(Name pid=N) ` prefixes and `\\r`.

    Prefixes nest where one process forwards another's output: EngineCore prefixes what Ray
    forwards from its worker actors, which Ray prefixes with the actor and vLLM's worker with its
    own name (`(EngineCore pid=1) (RayWorkerProc pid=9) (Worker pid=9) INFO …`); the line is the
    innermost process's. tqdm rewrites its bar with bare `\\r`; only what follows the last one is
    what a terminal shows.
    """
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)
    if line.endswith(("\n", "\r")):
        line = line.rstrip("\r\n")
    if line.startswith("\r"):
        line = line.lstrip("\r")
    proc = None
    while line.startswith("("):
        end = line.find(")", 1)
        if end <= 0 or " pid=" not in line[1:end]:
            break
        proc = line[1:end]
        line = line[end + 2:] if line.startswith(" ", end + 1) else line[end + 1:]
    if "\r" in line:
        line = line[line.rfind("\r") + 1:]
    return proc, line


def strip_header(text: str) -> tuple[str | None, str]:
    """(level or None, message) without vLLM's `LEVEL mm-dd hh:mm:ss [file.py:N] ` or uvicorn's `LEVEL:  `."""
    if text[:1] in ("D", "I", "W", "E", "C"):
        m = _HEADER_RE.match(text)
        if m:
            return m.group("lvl"), text[m.end():]
        m = _UVICORN_LEVEL_RE.match(text)
        if m:
            return m.group("lvl"), text[m.end():]
    return None, text


def proc_name(proc: str) -> str:
    """`EngineCore_DP0 pid=12` → `EngineCore_DP0`; `VllmWorker rank=1 pid=9` → `VllmWorker rank=1`."""
    return proc.split(" pid=", 1)[0]


_TP_RANK_RE = re.compile(r"(?:TP|rank=)(\d+)")


def tp_rank(proc: str) -> int | None:
    """The tensor-parallel rank a worker prefix names (`Worker_TP1`, `VllmWorker TP1`, `VllmWorker rank=1`)."""
    if "Worker" not in proc:
        return None
    m = _TP_RANK_RE.search(proc_name(proc))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- patterns

_NUM = r"(-?\d+(?:\.\d+)?)"
_OFFLOADED_RE = re.compile(r"Total CPU offloaded parameters: " + _NUM)
_WEIGHTS_RE = re.compile(r"Model loading took " + _NUM + r" ?Gi?B(?: memory)? and " + _NUM + r" ?s")
_AVAIL_RE = re.compile(r"Available KV cache memory: " + _NUM + r" ?GiB")
_KV_TOKENS_RE = re.compile(r"(?:GPU|GPU \+ host|\w+) KV cache size: ([\d,]+) tokens")
_CONC_RE = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")
_BLOCKS_RE = re.compile(r"# (?:cuda|GPU|gpu|CUDA|npu|xpu|hpu|tpu|neuron) blocks: (\d+)")
_GRAPH_RE = re.compile(r"Graph capturing finished in " + _NUM + r" secs?, took " + _NUM + r" ?GiB")
_INIT_RE = re.compile(
    r"init engine \(profile, create kv cache, warmup model\) took " + _NUM + r" ?s(?:econds)?"
    r"(?: \(compilation: " + _NUM + r" ?s)?"
)
_TORCH_COMPILE_RE = re.compile(r"torch\.compile takes? " + _NUM + r" ?s in total")
_VERSION_RES = (
    re.compile(r"vLLM (?:API )?server version (v?\d+\.\d+[\w.+\-]*)"),
    re.compile(r"LLM engine \(v(\d+\.\d+[\w.+\-]*)\)"),
)
_LOGO_VERSION_RE = re.compile(r"\bversion (v?\d+\.\d+[\w.+\-]*)")
_LOGO_MODEL_RE = re.compile(r"\bmodel\s+(\S+)\s*$")
_SERVING_MODEL_RE = re.compile(r"serving model (\S+)")
_CONFIG_INT_RES = {
    name: re.compile(rf"\b{key}=(\d+)")
    for name, key in (
        ("tensor_parallel_size", "tensor_parallel_size"),
        ("pipeline_parallel_size", "pipeline_parallel_size"),
        ("data_parallel_size", "data_parallel_size"),
        ("max_model_len", "max_seq_len"),
    )
}
_CONFIG_EAGER_RE = re.compile(r"\benforce_eager=(True|False)")
_CONFIG_CAPTURE_RE = re.compile(r"'cudagraph_capture_sizes': \[([\d, ]*)\]")
_CONFIG_KVDTYPE_RE = re.compile(r"\bkv_cache_dtype=([\w]+)")
_CONFIG_QUANT_RE = re.compile(r"\bquantization=([\w\-]+)")
_CONFIG_MODEL_RE = re.compile(r"with config: model='([^']*)'")
_FREE_INFO_RE = re.compile(r"Free memory on device(?: \S+)? \(" + _NUM + r"/" + _NUM + r" ?GiB\)")
_DESIRED_RE = re.compile(
    r"(?:Desired GPU memory utilization is|desired GPU memory utilization) \(" + _NUM + r", " + _NUM + r" ?GiB\)"
)
_ACTUAL_RE = re.compile(
    r"Actual usage is " + _NUM + r" ?GiB for weight, " + _NUM + r" ?GiB for peak activation, "
    + _NUM + r" ?GiB for non-torch memory(?:, and " + _NUM + r" ?GiB for CUDAGraph memory)?"
)
_CONSUMED_RE = re.compile(
    r"Actual usage is " + _NUM + r" ?GiB for consumed memory \(weights \+ non-torch\), " + _NUM
    + r" ?GiB for peak activation(?:, and " + _NUM + r" ?GiB for CUDAGraph memory)?"
)
_GRAPH_ESTIMATE_RE = re.compile(r"Estimated CUDA graph memory: " + _NUM + r" ?GiB")
_GRAPH_POOL_RE = re.compile(r"CUDA graph pool memory: " + _NUM + r" ?GiB \(actual\), " + _NUM + r" ?GiB \(estimated\)")
_WARMUP_RE = re.compile(
    r"Memory after warmup: " + _NUM + r" ?GiB free, " + _NUM + r" ?GiB committed to the KV cache, " + _NUM
    + r" ?GiB kept for transient activations.*?; (\d+) KV cache blocks \(" + _NUM + r" ?GiB\) fit within the requested "
    + _NUM + r" ?GiB"
)
_EXTERNAL_RE = re.compile(r"of the " + _NUM + r" ?GiB utilization budget, " + _NUM + r" ?GiB is externally held")
_SUGGEST_RE = re.compile(r"--kv-cache-memory=(\d+)`? \(" + _NUM + r" ?GiB\) to fit into requested memory")
_V1_PROFILE_RE = re.compile(
    r"Total non KV cache memory: " + _NUM + r" ?GiB; torch peak memory increase: " + _NUM
    + r" ?GiB; (?:non-torch forward increase memory|total consumed \(from mem_get_info\)): " + _NUM
    + r" ?GiB; weights memory: " + _NUM + r" ?GiB"
)
_V0_TOTAL_RE = re.compile(
    r"total_gpu_memory \(" + _NUM + r" ?GiB\) x gpu_memory_utilization \(" + _NUM + r"\) = " + _NUM + r" ?GiB"
)
_V0_PARTS_RE = re.compile(
    r"model weights take " + _NUM + r" ?GiB; non_torch_memory takes " + _NUM
    + r" ?GiB; PyTorch activation peak memory takes " + _NUM
    + r" ?GiB; the rest of the memory reserved for KV Cache is " + _NUM + r" ?GiB"
)
_MAX_LEN_RE = re.compile(r"Using max model len (\d+)")
_AUTOFIT_RE = re.compile(
    r"(?:Auto-fit max_model_len: (?:reduced from \d+ to (\d+)|full model context length (\d+)|using max_model_len=(\d+))"
    r"|--max-model-len auto reduced max_model_len from \d+ to (\d+))"
)
_BATCHED_RE = re.compile(r"max_num_batched_tokens=(\d+)")
_LISTEN_RE = re.compile(r"(?:Starting vLLM (?:API )?server(?: \d+)? on|Uvicorn running on) (\S+)")
_NAMESPACE_KEYS = (
    "model", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size",
    "data_parallel_size", "max_num_seqs", "max_num_batched_tokens", "block_size", "enforce_eager",
    "kv_cache_dtype", "dtype", "quantization", "port", "host", "enable_prefix_caching", "load_format",
)
_NAMESPACE_RES = {key: re.compile(rf"[(, ]{key}=('[^']*'|[^,)]+)") for key in _NAMESPACE_KEYS}

# Phase markers, by the first phase they announce. Phases only move forward.
_PHASE_MARKERS: tuple[tuple[str, str], ...] = (
    ("Starting to load model", "loading_weights"),
    ("Loading model from scratch", "loading_weights"),
    ("Loading weights", "loading_weights"),
    ("Loading safetensors checkpoint shards", "loading_weights"),
    ("Dynamo bytecode transform", "compiling"),
    ("for vLLM's torch.compile", "compiling"),
    ("Compiling a graph", "compiling"),
    ("Directly load the compiled graph", "compiling"),
    ("torch.compile took", "profiling"),
    ("Initial profiling/warmup run", "profiling"),
    ("Memory profiling takes", "profiling"),
    ("Available KV cache memory", "kv_cache"),
    ("KV cache size:", "kv_cache"),
    (" blocks: ", "kv_cache"),
    ("Capturing CUDA graph", "capturing_graphs"),
    ("Capturing cudagraphs", "capturing_graphs"),
    ("Capturing the model for CUDA graphs", "capturing_graphs"),
    ("init engine (profile", "starting_server"),
    ("Supported tasks", "starting_server"),
    ("Starting vLLM", "starting_server"),
    ("Available routes are", "starting_server"),
    ("Started server process", "starting_server"),
)
_PHASE_INDEX = {name: i for i, name in enumerate(PHASES)}


def _f(text: str) -> float:
    return float(text)


def _i(text: str) -> int:
    return int(text.replace(",", ""))


def parse_arg_dict(text: str) -> dict[str, Any]:
    """`{'port': 8003, 'gpu_memory_utilization': 0.12, …}` (vLLM's "non-default args") as a dict.

    Values that are not Python literals (enum reprs) are kept as their text.
    """
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return {}
    body = text[start:end + 1]
    try:
        value = ast.literal_eval(body)
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    out: dict[str, Any] = {}
    for m in re.finditer(r"'(\w+)': ('[^']*'|[^,{}\[\]]+|\[[^\]]*\])", body):
        raw = m.group(2).strip()
        try:
            out[m.group(1)] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[m.group(1)] = raw
    return out


def parse_namespace(text: str) -> dict[str, Any]:
    """The arguments we reason about from an old `args: Namespace(…)` line (vLLM ≤ 0.10)."""
    out: dict[str, Any] = {}
    for key, rx in _NAMESPACE_RES.items():
        m = rx.search(text)
        if not m:
            continue
        raw = m.group(1).strip()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if value is not None:
            out[key] = value
    return out


# ---------------------------------------------------------------- the parser


class LogParser:
    """Feed it vLLM's output one line at a time; read `.facts`; act on the returned events.

    `sink` (e.g. a FailureClassifier) receives each cleaned line too, so a caller that wants
    both facts and failures strips prefixes once.
    """

    def __init__(self, sink: LineSink | None = None, block_size: int = 16) -> None:
        self.facts = StartupFacts()
        self.sink = sink
        self.block_size = block_size
        self.phase: str | None = None
        self.lines = 0
        self._phase_i = -1
        self._done = False
        self._last_proc: str | None = None
        self._tp_ranks: set[int] = set()
        self._tp_from_config = False
        self._v0_blocks: int | None = None

    # ------------------------------------------------------------ feeding

    def feed(self, line: str) -> list[Event]:
        """One line of output (prefix, ANSI, `\\r` and the newline allowed). Returns what it told."""
        self.lines += 1
        proc, text = split_line(line)
        if is_frame(proc, text):  # the supervisor's own lines around the engine's output
            return []
        if proc is not None and proc != self._last_proc:
            self._note_proc(proc)
        if self.sink is not None:
            self.sink.feed_parts(proc, text)
        if self._done or not text:
            return []
        events: list[Event] = []
        for needle, handler in _HANDLERS:
            if needle in text:
                handler(self, text, events)
        if self._phase_i < 5:
            for needle, phase in _PHASE_MARKERS:
                if needle in text:
                    self._enter(phase, events)
                    break
        return events

    def feed_lines(self, lines: Iterable[str]) -> list[Event]:
        out: list[Event] = []
        for line in lines:
            out.extend(self.feed(line))
        return out

    # ------------------------------------------------------------ helpers

    def _set(self, name: str, value: Any, events: list[Event], mode: str = "first") -> None:
        old = getattr(self.facts, name)
        if old is not None:
            if mode == "first" or old == value:
                return
            if mode == "min" and value >= old:
                return
        setattr(self.facts, name, value)
        events.append(Event("fact", {"name": name, "value": value}))

    def _enter(self, phase: str, events: list[Event]) -> None:
        index = _PHASE_INDEX[phase]
        if index > self._phase_i:
            self._phase_i = index
            self.phase = phase
            events.append(Event("phase", {"phase": phase}))

    def _note_proc(self, proc: str) -> None:
        self._last_proc = proc
        name, _, pid = proc.partition(" pid=")
        pid_digits = pid.split(",", 1)[0].strip()
        if name not in self.facts.processes and pid_digits.isdigit():
            self.facts.processes[name] = int(pid_digits)
        rank = tp_rank(proc)
        if rank is not None and rank not in self._tp_ranks:
            self._tp_ranks.add(rank)
            if not self._tp_from_config:
                self.facts.tensor_parallel_size = max(self._tp_ranks) + 1

    def _started(self, events: list[Event], via: str) -> None:
        if not self.facts.server_started:
            self.facts.server_started = True
            self._enter("starting_server", events)
            events.append(Event("server_started", {"url": self.facts.listen_url, "via": via}))

    # ------------------------------------------------------------ handlers

    def _h_weights(self, text: str, events: list[Event]) -> None:
        m = _WEIGHTS_RE.search(text)
        if m:
            self._set("model_weights_gib", _f(m.group(1)), events)
            self._set("model_load_seconds", _f(m.group(2)), events)

    def _h_runner(self, text: str, events: list[Event]) -> None:
        self._set("model_runner", "v2", events)

    def _h_offloaded(self, text: str, events: list[Event]) -> None:
        m = _OFFLOADED_RE.search(text)
        if m:
            self._set("cpu_offloaded_gib", _f(m.group(1)), events)

    def _h_avail(self, text: str, events: list[Event]) -> None:
        m = _AVAIL_RE.search(text)
        if m:
            value = _f(m.group(1))
            self._set("available_kv_cache_gib_before_warmup", value, events, mode="min")
            if not self.facts.kv_measured_after_warmup:
                self._set("available_kv_cache_gib", value, events, mode="min")

    def _h_warmup(self, text: str, events: list[Event]) -> None:
        """0.34: the cache's size, measured after warm-up, replaces the pre-warm-up estimate."""
        m = _WARMUP_RE.search(text)
        if not m:
            return
        size = _f(m.group(5))
        if not self.facts.kv_measured_after_warmup:
            self.facts.kv_measured_after_warmup = True
            self.facts.available_kv_cache_gib = None
            self.facts.kv_cache_blocks = None
        self._set("available_kv_cache_gib", size, events, mode="min")
        self._set("kv_cache_blocks", int(m.group(4)), events, mode="min")
        self._set("free_after_warmup_gib", _f(m.group(1)), events)
        self._set("kv_committed_gib", _f(m.group(2)), events)
        self._set("transient_gib", _f(m.group(3)), events)
        self._set("requested_gib", _f(m.group(6)), events)

    def _h_graph_pool(self, text: str, events: list[Event]) -> None:
        m = _GRAPH_POOL_RE.search(text)
        if m:
            self._set("cuda_graph_estimate_gib", _f(m.group(2)), events)

    def _h_graph_estimate(self, text: str, events: list[Event]) -> None:
        m = _GRAPH_ESTIMATE_RE.search(text)
        if m:
            self._set("cuda_graph_estimate_gib", _f(m.group(1)), events)

    def _h_external(self, text: str, events: list[Event]) -> None:
        m = _EXTERNAL_RE.search(text)
        if m:
            self._set("external_weights_gib", _f(m.group(2)), events)

    def _h_kv_tokens(self, text: str, events: list[Event]) -> None:
        m = _KV_TOKENS_RE.search(text)
        if m:
            self._set("kv_cache_tokens", _i(m.group(1)), events, mode="min")

    def _h_concurrency(self, text: str, events: list[Event]) -> None:
        m = _CONC_RE.search(text)
        if m:
            self._set("max_concurrency_context", _i(m.group(1)), events)
            self._set("max_concurrency", _f(m.group(2)), events, mode="min")

    def _h_blocks(self, text: str, events: list[Event]) -> None:
        m = _BLOCKS_RE.search(text)
        if m:
            blocks = int(m.group(1))
            self._v0_blocks = blocks if self._v0_blocks is None else min(self._v0_blocks, blocks)
            self._set("kv_cache_tokens", blocks * self.block_size, events, mode="min")

    def _h_graph(self, text: str, events: list[Event]) -> None:
        m = _GRAPH_RE.search(text)
        if m:
            self._set("cuda_graph_seconds", _f(m.group(1)), events)
            self._set("cuda_graph_gib", _f(m.group(2)), events)

    def _h_init(self, text: str, events: list[Event]) -> None:
        m = _INIT_RE.search(text)
        if m:
            self._set("engine_init_seconds", _f(m.group(1)), events)
            if m.group(2) is not None:
                self._set("compile_seconds", _f(m.group(2)), events)

    def _h_torch_compile(self, text: str, events: list[Event]) -> None:
        m = _TORCH_COMPILE_RE.search(text)
        if m:
            self._set("compile_seconds", _f(m.group(1)), events)

    def _h_version(self, text: str, events: list[Event]) -> None:
        if self.facts.vllm_version is not None:
            return
        for rx in _VERSION_RES:
            m = rx.search(text)
            if m:
                self._set("vllm_version", m.group(1).lstrip("v"), events)
                break
        else:
            if "█" in text or "▀" in text or "▄" in text:
                m = _LOGO_VERSION_RE.search(text)
                if m:
                    self._set("vllm_version", m.group(1).lstrip("v"), events)
        if self.facts.model is None and "serving model" in text:
            m = _SERVING_MODEL_RE.search(text)
            if m:
                self._set("model", m.group(1).rstrip(","), events)

    def _h_logo_model(self, text: str, events: list[Event]) -> None:
        if self.facts.model is None and ("█" in text or "▀" in text):
            m = _LOGO_MODEL_RE.search(text)
            if m:
                self._set("model", m.group(1), events)

    def _h_config(self, text: str, events: list[Event]) -> None:
        self._h_version(text, events)
        for name, rx in _CONFIG_INT_RES.items():
            m = rx.search(text)
            if not m:
                continue
            value = int(m.group(1))
            if name == "tensor_parallel_size":
                # The engine's config is authoritative over the worker ranks seen so far.
                self._tp_from_config = True
                if self.facts.tensor_parallel_size != value:
                    self.facts.tensor_parallel_size = value
                    events.append(Event("fact", {"name": name, "value": value}))
            else:
                self._set(name, value, events)
        m = _CONFIG_EAGER_RE.search(text)
        if m:
            self._set("enforce_eager", m.group(1) == "True", events)
        m = _CONFIG_CAPTURE_RE.search(text)
        if m:
            self._set("cuda_graph_sizes", sorted(int(n) for n in m.group(1).replace(",", " ").split()), events)
        m = _CONFIG_KVDTYPE_RE.search(text)
        if m:
            self._set("kv_cache_dtype", m.group(1), events)
        m = _CONFIG_QUANT_RE.search(text)
        if m and m.group(1) != "None":
            self._set("quantization", m.group(1), events)
        m = _CONFIG_MODEL_RE.search(text)
        if m:
            self._set("model", m.group(1), events)

    def _h_compiled_cached(self, text: str, events: list[Event]) -> None:
        if self.facts.compile_cached is None:
            self._set("compile_cached", True, events)

    def _h_compiling(self, text: str, events: list[Event]) -> None:
        if self.facts.compile_cached is not False:
            self.facts.compile_cached = False
            events.append(Event("fact", {"name": "compile_cached", "value": False}))

    def _h_free_memory(self, text: str, events: list[Event]) -> None:
        m = _FREE_INFO_RE.search(text)
        if m:
            self._set("free_gpu_gib", _f(m.group(1)), events)
            self._set("total_gpu_gib", _f(m.group(2)), events)
        m = _DESIRED_RE.search(text)
        if m:
            self._set("requested_utilization", _f(m.group(1)), events)
            self._set("requested_gib", _f(m.group(2)), events)
        if "Actual usage is" in text:
            m = _ACTUAL_RE.search(text)
            if m:
                self._set("profile_weights_gib", _f(m.group(1)), events)
                self._set("peak_activation_gib", _f(m.group(2)), events)
                self._set("non_torch_gib", _f(m.group(3)), events)
                if m.group(4) is not None:
                    self._set("cudagraph_memory_gib", _f(m.group(4)), events)
            m = _CONSUMED_RE.search(text)
            if m:
                # 0.28+: weights and non-torch together; "peak activation" includes the CUDA-graph
                # estimate where the version applies one (0.30-0.33)
                self._set("consumed_gib", _f(m.group(1)), events)
                self._set("peak_activation_gib", _f(m.group(2)), events)
                if m.group(3) is not None:
                    self._set("cudagraph_memory_gib", _f(m.group(3)), events)
            m = _SUGGEST_RE.search(text)
            if m:
                self._set("suggested_kv_cache_memory_bytes", int(m.group(1)), events)

    def _h_v1_profile(self, text: str, events: list[Event]) -> None:
        m = _V1_PROFILE_RE.search(text)
        if m:
            self._set("non_kv_cache_gib", _f(m.group(1)), events)
            self._set("peak_activation_gib", _f(m.group(2)), events)
            self._set("non_torch_gib", _f(m.group(3)), events)
            self._set("profile_weights_gib", _f(m.group(4)), events)

    def _h_v0_total(self, text: str, events: list[Event]) -> None:
        m = _V0_TOTAL_RE.search(text)
        if m:
            self._set("total_gpu_gib", _f(m.group(1)), events)
            self._set("requested_utilization", _f(m.group(2)), events)
            self._set("requested_gib", _f(m.group(3)), events)

    def _h_v0_parts(self, text: str, events: list[Event]) -> None:
        m = _V0_PARTS_RE.search(text)
        if m:
            self._set("profile_weights_gib", _f(m.group(1)), events)
            self._set("non_torch_gib", _f(m.group(2)), events)
            self._set("peak_activation_gib", _f(m.group(3)), events)
            self._set("available_kv_cache_gib", _f(m.group(4)), events, mode="min")

    def _h_cli_args(self, text: str, events: list[Event]) -> None:
        if self.facts.cli_args is not None:
            return
        if "non-default args:" in text:
            args = parse_arg_dict(text[text.find("non-default args:"):])
        else:
            args = parse_namespace(text)
        self.facts.cli_args = args
        events.append(Event("fact", {"name": "cli_args", "value": args}))
        block = args.get("block_size")
        if isinstance(block, int) and block > 0:
            self.block_size = block
        if isinstance(args.get("model"), str):
            self._set("model", args["model"], events)

    def _h_max_len(self, text: str, events: list[Event]) -> None:
        m = _MAX_LEN_RE.search(text)
        if m:
            self._set("max_model_len", int(m.group(1)), events)

    def _h_autofit(self, text: str, events: list[Event]) -> None:
        m = _AUTOFIT_RE.search(text)
        if m:
            value = int(next(g for g in m.groups() if g is not None))
            if self.facts.max_model_len != value:
                self.facts.max_model_len = value
                events.append(Event("fact", {"name": "max_model_len", "value": value}))

    def _h_batched(self, text: str, events: list[Event]) -> None:
        m = _BATCHED_RE.search(text)
        if m:
            self._set("max_num_batched_tokens", int(m.group(1)), events)

    def _h_listen(self, text: str, events: list[Event]) -> None:
        m = _LISTEN_RE.search(text)
        if m:
            self._set("listen_url", m.group(1), events)
            self._started(events, "listen")

    def _h_startup_complete(self, text: str, events: list[Event]) -> None:
        self._started(events, "startup_complete")
        self._done = True


_Handler = Callable[[LogParser, str, list[Event]], None]

# needle → handler; a line runs every handler whose needle it contains (the newest vLLM prints
# the KV size and the concurrency on one line).
_HANDLERS: tuple[tuple[str, _Handler], ...] = (
    ("Model loading took", LogParser._h_weights),
    ("Using V2 Model Runner", LogParser._h_runner),
    ("Total CPU offloaded parameters", LogParser._h_offloaded),
    ("Available KV cache memory", LogParser._h_avail),
    ("Memory after warmup", LogParser._h_warmup),
    ("CUDA graph pool memory", LogParser._h_graph_pool),
    ("Estimated CUDA graph memory", LogParser._h_graph_estimate),
    ("is externally held", LogParser._h_external),
    ("KV cache size:", LogParser._h_kv_tokens),
    ("Maximum concurrency for", LogParser._h_concurrency),
    (" blocks: ", LogParser._h_blocks),
    ("Graph capturing finished", LogParser._h_graph),
    ("init engine (profile", LogParser._h_init),
    ("torch.compile take", LogParser._h_torch_compile),
    ("server version", LogParser._h_version),
    ("  version ", LogParser._h_version),
    ("  model ", LogParser._h_logo_model),
    ("LLM engine (v", LogParser._h_config),
    ("Directly load the compiled graph", LogParser._h_compiled_cached),
    ("Compiling a graph", LogParser._h_compiling),
    ("Free memory on device", LogParser._h_free_memory),
    ("Total non KV cache memory", LogParser._h_v1_profile),
    ("total_gpu_memory (", LogParser._h_v0_total),
    ("model weights take", LogParser._h_v0_parts),
    ("non-default args:", LogParser._h_cli_args),
    ("args: Namespace(", LogParser._h_cli_args),
    ("Using max model len", LogParser._h_max_len),
    ("Auto-fit max_model_len", LogParser._h_autofit),
    ("--max-model-len auto reduced", LogParser._h_autofit),
    ("Chunked prefill is enabled with", LogParser._h_batched),
    ("Starting vLLM", LogParser._h_listen),
    ("Uvicorn running on", LogParser._h_listen),
    ("Application startup complete", LogParser._h_startup_complete),
)


