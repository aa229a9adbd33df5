"""Classify why a vLLM start or run failed, from its output lines. Pure.

The three memory errors need opposite fixes (lower utilization when free memory is short; raise it
or cut context when the KV cache does not fit), so the classifier keeps them apart and parses the
numbers each message carries, in every wording vLLM used from 0.8.5 to 0.34 (see
docs/vllm-versions.md §3): the `models's` typo, the 0.8.4/0.8.5 message that lost its
estimate (double space), `format_gib` numbers (`24.0`), the docs URL, the CPU-backend note,
0.32's free-memory check against "the engine's budget after excluding external process's
weights" and its "Externally held weights … exceed" (a budget too small even for the weights:
`no_kv_cache_memory`), 0.34's hints about the extensible KV cache, and 0.34's KV errors raised
after warm-up (the same texts; the facts say whether the "Memory after warmup" line came first).

Lines repeat: every TP worker raises the same error, and each traceback appears twice (prefixed on
stdout by vLLM's logger, raw on stderr from multiprocessing). A failure is recorded once; a later
sighting of the same kind only fills values the first one lacked.

`FailureKind.BAD_ARGUMENTS` is ours (argparse's "unrecognized arguments"/"invalid choice",
exit 2, and pydantic config errors that are not about memory), and so is
`FailureKind.MULTI_GPU_COMM`: the GPUs of one engine could not set up or run their collectives
(cuBLAS's CUBLAS_STATUS_INTERNAL_ERROR, NCCL errors, the custom all-reduce's CUDA IPC), as on
Hopper with tensor parallelism where vLLM 0.26+ enables flashinfer's fused all-reduce by itself
("Auto-selected flashinfer allreduce backend: mnnvl", which needs NVSwitch multicast). The
backend vLLM printed is kept in the values. CUBLAS_STATUS_ALLOC_FAILED is memory (`cuda_oom`).
CONTRACT's `diagnose --json` knows only its own kinds, so `Failure.to_json()` reports these as
"unknown" (the message still says what was wrong); everything inside the supervisor (recovery,
history) sees the precise kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llm_supervisor.vllm.framing import SIGKILL_CAUSES, SIGNAL_NAMES, is_frame
from llm_supervisor.vllm.logparse import split_line, strip_header


class FailureKind(str, Enum):
    KV_CACHE_TOO_SMALL = "kv_cache_too_small"
    NO_KV_CACHE_MEMORY = "no_kv_cache_memory"
    INSUFFICIENT_FREE_MEMORY = "insufficient_free_memory"
    CUDA_OOM = "cuda_oom"
    MAX_MODEL_LEN_TOO_LARGE = "max_model_len_too_large"
    ENGINE_DEAD = "engine_dead"
    PORT_IN_USE = "port_in_use"
    MODEL_NOT_FOUND = "model_not_found"
    BAD_ARGUMENTS = "bad_arguments"
    MULTI_GPU_COMM = "multi_gpu_comm"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def contract_kind(self) -> str:
        """The kind as CONTRACT's `diagnose --json` names it (ours → unknown)."""
        return "unknown" if self in (FailureKind.BAD_ARGUMENTS, FailureKind.MULTI_GPU_COMM) else self.value


MEMORY_KINDS = frozenset({
    FailureKind.KV_CACHE_TOO_SMALL, FailureKind.NO_KV_CACHE_MEMORY,
    FailureKind.INSUFFICIENT_FREE_MEMORY, FailureKind.CUDA_OOM,
})

# Which sighting wins when a log shows several: a precise cause beats a consequence.
_PRIORITY = {
    FailureKind.KV_CACHE_TOO_SMALL: 100,
    FailureKind.NO_KV_CACHE_MEMORY: 100,
    FailureKind.INSUFFICIENT_FREE_MEMORY: 100,
    FailureKind.MAX_MODEL_LEN_TOO_LARGE: 100,
    FailureKind.MODEL_NOT_FOUND: 90,
    FailureKind.PORT_IN_USE: 90,
    FailureKind.BAD_ARGUMENTS: 80,
    FailureKind.CUDA_OOM: 70,
    FailureKind.MULTI_GPU_COMM: 60,
    FailureKind.ENGINE_DEAD: 20,
    FailureKind.UNKNOWN: 10,
}

MAX_MESSAGE = 2000
# What the guard prints when the engine command cannot be executed (runtime/guard.py).
ENGINE_CANNOT_START = "llm-supervisor guard: cannot start "


@dataclass
class Failure:
    """kind; message: the key error line, without prefixes; values: the numbers it carried.

    stage (not part of CONTRACT's JSON): where it happened when the message says so
    ("load", "sampler_warmup", "runtime"); recovery infers the rest from the startup facts.
    """

    kind: FailureKind
    message: str
    values: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": FailureKind(self.kind).contract_kind, "message": self.message, "values": dict(self.values)}


# ---------------------------------------------------------------- patterns

_NUM = r"(\d+(?:\.\d+)?)"
_KV_RE = re.compile(
    r"max seq len \((\d+)\), \(" + _NUM + r" GiB KV cache is needed, which is larger than the available "
    r"KV cache memory \(" + _NUM + r" GiB\)\.(?:\s+Based on the available memory,(?:\s+the estimated "
    r"maximum model length is (\d+)\.)?)?"
)
_V0_KV_RE = re.compile(
    r"max seq len \((\d+)\) is larger than the maximum number of tokens that can be stored in KV cache \((\d+)\)"
)
_FREE_RE = re.compile(
    r"Free memory on device(?: \S+)? \(" + _NUM + r"/" + _NUM + r" ?GiB\) on startup is less than (?:desired "
    r"GPU memory utilization|the engine's budget after excluding external process's weights) \(" + _NUM + r", "
    + _NUM + r" ?GiB\)"
)
# 0.32+ with weights held by another process (`--load-format ipc_cache`): the budget cannot hold them
_EXTERNAL_RE = re.compile(
    r"Externally held weights on device(?: \S+)? \(" + _NUM + r"/" + _NUM + r" ?GiB\) exceed the desired GPU memory "
    r"utilization \(" + _NUM + r", " + _NUM + r" ?GiB\)"
)
_UNIT = r"(bytes|[KMGT]i?B)"
_OOM_TRIED_RE = re.compile(r"Tried to allocate " + _NUM + r" ?" + _UNIT)
_OOM_TOTAL_RE = re.compile(r"total capacity of " + _NUM + r" ?" + _UNIT + r"|" + _NUM + r" ?" + _UNIT + r" total capacity")
_OOM_FREE_RE = re.compile(r"of which " + _NUM + r" ?" + _UNIT + r" is free|; " + _NUM + r" ?" + _UNIT + r" free;")
_OOM_GPU_RE = re.compile(r"\bGPU (\d+)")
_WARMUP_RE = re.compile(r"warming up (\w+).*? with (\d+) dummy requests")
_TOO_LONG_RE = re.compile(
    r"User-specified max_model_len \((\d+)\) is greater than the derived max_model_len "
    r"\((?:(\w+)=)?(\d+(?:\.\d+)?)"
)
_PORT_RES = (
    re.compile(r"\('[^']*', (\d+)\)"),
    re.compile(r"\bport:? (\d+)", re.IGNORECASE),
)
_FAILED_PROCS_RE = re.compile(r"Failed core proc\(s\): \{([^}]*)\}")
_EXC_RE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)): ?(.*)$")
_VALIDATION_RE = re.compile(r"(\d+) validation errors? for (\w+)")
_ARGPARSE_RE = re.compile(r"^(?:[\w./\- ]+): error: (.+)$")

_UNIT_MIB = {"bytes": 1 / 1024**2, "B": 1 / 1024**2, "KiB": 1 / 1024, "KB": 1 / 1024, "MiB": 1.0, "MB": 1.0,
             "GiB": 1024.0, "GB": 1024.0, "TiB": 1024.0**2, "TB": 1024.0**2}

# Generic wrappers: they say *that* startup failed, never *why*.
_GENERIC = (
    "Engine core initialization failed", "WorkerProc initialization failed", "EngineDeadError",
    "See root cause above", "See stack trace", "EngineCore encountered an issue",
    "WorkerProc failed to start", "EngineCore failed to start",
)
_FATAL_MARKERS = (
    "Engine core initialization failed", "EngineCore failed to start", "WorkerProc initialization failed",
    "WorkerProc failed to start", "Timed out waiting for engine core",
)
_MODEL_NOT_FOUND = (
    "Invalid repository ID or local directory specified",
    "Repository Not Found for url",
    "RepositoryNotFoundError",
    "is not a local folder and is not a valid model identifier",
    "Can't load the configuration of",
    "HFValidationError: Repo id must be",
    "GatedRepoError",
    "Cannot access gated repo",
    "RevisionNotFoundError",
    "LocalEntryNotFoundError",
    "does not appear to have a file named config.json",
    "Cannot find the requested files in the local cache",
)
_DEATH = (
    "EngineDeadError", "died unexpectedly", "exited unexpectedly", "EngineCore encountered an issue",
)
# The GPUs of one engine failing to talk to each other (set-up or first use of a collective).
_COMM = (
    "CUBLAS_STATUS_INTERNAL_ERROR", "CUBLAS_STATUS_NOT_INITIALIZED", "CUBLAS_STATUS_EXECUTION_FAILED",
    "NCCL error", "DistBackendError", "ncclUnhandledCudaError", "ncclInternalError", "ncclSystemError",
    "ncclRemoteError", "cudaIpcOpenMemHandle", "cudaIpcGetMemHandle", "peer access is not supported",
)
_FI_BACKEND_RE = re.compile(r"(?:Auto-selected|Using) flashinfer allreduce backend: (\w+)")


def _mib(number: str, unit: str) -> float:
    return round(float(number) * _UNIT_MIB.get(unit, 1.0), 3)


def _gib(number: str, unit: str) -> float:
    return round(float(number) * _UNIT_MIB.get(unit, 1.0) / 1024, 3)


def _device_budget(rx: re.Pattern[str], msg: str, first: str) -> dict[str, Any]:
    """The figures of vLLM's "(X/total GiB) … (utilization, budget GiB)" start-up checks: `first`
    names X (free memory, or weights another process holds)."""
    m = rx.search(msg)
    names = (first, "total_gib", "requested_utilization", "requested_gib")
    return dict(zip(names, map(float, m.groups()))) if m else {}


def _clean(message: str) -> str:
    message = message.strip()
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE - 1] + "…"


class FailureClassifier:
    """Feed every output line; call `classify(exit_code, was_ready)` when the engine has exited.

    `failure` tells early (before exit) what was seen so far, if anything precise.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._best: Failure | None = None
        self._death: str | None = None
        self._death_values: dict[str, Any] = {}
        self._death_reported = False
        self._root: str | None = None
        self._last_error: str | None = None
        self._last_other: str | None = None  # the last line that was not INFO/DEBUG: a cause of last resort
        self._fatal = False
        self._shutdown_requested = False
        self._pending: dict[str | None, tuple[str, str | None, int]] = {}
        self._allreduce: str | None = None  # the flashinfer all-reduce backend vLLM selected

    @property
    def failure(self) -> Failure | None:
        return self._best

    @property
    def engine_death_reported(self) -> bool:
        """vLLM said its engine is dead, in an ERROR line or an exception ("EngineDeadError", "Worker
        proc … died unexpectedly"): its API server exits only after a watchdog of up to 5 s, but
        nothing it serves from then on can answer. (Not from an INFO line: a logged prompt may quote
        anything.)"""
        return self._death_reported

    @property
    def shutdown_requested(self) -> bool:
        """vLLM logged a signal-triggered shutdown (SIGTERM/SIGINT), sent by us or by someone else."""
        return self._shutdown_requested

    # ------------------------------------------------------------ feeding

    def feed(self, line: str) -> None:
        proc, text = split_line(line)
        if not is_frame(proc, text):  # the supervisor's own lines around the engine's
            self.feed_parts(proc, text)

    def feed_parts(self, proc: str | None, text: str) -> None:
        """A line already split by logparse.split_line (the LogParser forwards these, frames
        already left out)."""
        if not text:
            return
        if text.startswith("(raylet"):
            # Ray's node manager forwards its own agents' fate ("killed by the OS (e.g., out of
            # memory)"): about Ray's processes, never the engine's GPU memory.
            return
        first = text[0]
        if (first == "I" or first == "D") and text.startswith(("INFO", "DEBUG")):
            # Nothing fatal is logged at INFO; one exception: a signal-triggered shutdown. And the
            # all-reduce backend vLLM chose, which a multi-GPU failure is read against.
            if "shutdown triggered" in text or "received signal=SIG" in text:
                self._shutdown_requested = True
            elif "allreduce backend" in text:
                m = _FI_BACKEND_RE.search(text)
                if m:
                    self._allreduce = m.group(1)
            return
        level, msg = strip_header(text)
        if msg.strip() and not msg.startswith(("Traceback", "  ", "\t")):
            self._last_other = msg
        if msg.startswith(" ") or msg.startswith("\t"):
            # Traceback body (source lines, carets) or pydantic detail lines.
            if self._pending and proc in self._pending:
                self._validation_detail(proc, msg.strip())
            elif "Value error," in msg:
                self._signature(proc, msg.strip().split(",", 1)[1].strip(), None)
            return
        if not msg:
            return
        if self._pending and proc in self._pending:
            if self._validation_detail(proc, msg.strip()):
                return
        if level == "WARNING":
            # Warnings only advise; but 0.26 warns when the engine core dies under the API server.
            if any(needle in msg for needle in _DEATH):
                self._note_death(msg)
            return
        self._match(proc, level, msg)

    # ------------------------------------------------------------ matching

    def _match(self, proc: str | None, level: str | None, msg: str) -> None:
        exc = None
        if "Error" in msg or "Exception" in msg:
            exc = _EXC_RE.match(msg)
        elif msg.startswith("KeyboardInterrupt"):
            self._shutdown_requested = True
        if level is None and msg.startswith("Traceback (most recent call last)"):
            self._fatal = True
        for marker in _FATAL_MARKERS:
            if marker in msg:
                self._fatal = True
                break
        if self._signature(proc, msg, exc):
            return
        if any(needle in msg for needle in _DEATH):
            self._note_death(msg)
            if level in ("ERROR", "CRITICAL") or exc is not None:
                self._death_reported = True
        if "Failed core proc(s)" in msg:
            self._failed_procs(msg)
        if exc is not None:
            if self._root is None and not any(g in msg for g in _GENERIC):
                self._root = _clean(msg)
        elif level in ("ERROR", "CRITICAL") and not any(g in msg for g in _GENERIC):
            self._last_error = _clean(msg)

    def _signature(self, proc: str | None, msg: str, exc: re.Match[str] | None) -> bool:
        """Record a precise failure if `msg` carries one; True when it did."""
        if msg.startswith(ENGINE_CANNOT_START):
            # The guard could not exec the engine command (exit 127): no argument change helps.
            self._record(FailureKind.BAD_ARGUMENTS, msg.removeprefix("llm-supervisor guard: "), {"engine_command": 1})
            return True
        if "KV cache is needed" in msg:
            m = _KV_RE.search(msg)
            values: dict[str, Any] = {}
            if m:
                values = {"needed_gib": float(m.group(2)), "available_gib": float(m.group(3)),
                          "max_model_len": int(m.group(1))}
                if m.group(4) is not None and int(m.group(4)) > 0:
                    values["estimated_max_model_len"] = int(m.group(4))
            self._record(FailureKind.KV_CACHE_TOO_SMALL, msg, values)
            return True
        if "No available memory for the cache blocks" in msg or "Cannot auto-fit max_model_len" in msg:
            self._record(FailureKind.NO_KV_CACHE_MEMORY, msg, {})
            return True
        if "that can be stored in KV cache" in msg:
            m = _V0_KV_RE.search(msg)
            values = {}
            if m:
                tokens = int(m.group(2))
                values = {"max_model_len": int(m.group(1)), "kv_cache_tokens": tokens}
                if tokens > 0:
                    values["estimated_max_model_len"] = tokens
            self._record(FailureKind.KV_CACHE_TOO_SMALL, msg, values)
            return True
        if "Externally held weights on device" in msg:
            self._record(FailureKind.NO_KV_CACHE_MEMORY, msg, _device_budget(_EXTERNAL_RE, msg, "external_weights_gib"))
            return True
        if "on startup is less than desired" in msg or "on startup is less than the engine's budget" in msg:
            self._record(FailureKind.INSUFFICIENT_FREE_MEMORY, msg, _device_budget(_FREE_RE, msg, "free_gib"))
            return True
        if "User-specified max_model_len" in msg:
            m = _TOO_LONG_RE.search(msg)
            values = {}
            if m:
                values = {"max_model_len": int(m.group(1)), "derived_max_model_len": int(float(m.group(3)))}
            self._record(FailureKind.MAX_MODEL_LEN_TOO_LARGE, msg, values)
            return True
        if ("out of memory" in msg or "OutOfMemoryError" in msg or "not enough GPU memory" in msg
                or "CUBLAS_STATUS_ALLOC_FAILED" in msg):
            self._oom(msg)
            return True
        if (exc is not None or "NCCL" in msg) and any(needle in msg for needle in _COMM):
            values = {"flashinfer_allreduce": self._allreduce} if self._allreduce else {}
            self._record(FailureKind.MULTI_GPU_COMM, msg, values)
            return True
        if "ddress already in use" in msg or "EADDRINUSE" in msg or "Errno 98]" in msg or "Errno 48]" in msg:
            values = {}
            for rx in _PORT_RES:
                m = rx.search(msg)
                if m:
                    values["port"] = int(m.group(1))
                    break
            self._record(FailureKind.PORT_IN_USE, msg, values)
            return True
        for needle in _MODEL_NOT_FOUND:
            if needle in msg:
                self._record(FailureKind.MODEL_NOT_FOUND, msg, {})
                return True
        if "No such file or directory" in msg and "config.json" in msg:
            self._record(FailureKind.MODEL_NOT_FOUND, msg, {})
            return True
        if ": error: " in msg:
            m = _ARGPARSE_RE.match(msg)
            if m:
                self._record(FailureKind.BAD_ARGUMENTS, msg, {})
                return True
        if "unexpected keyword argument" in msg and exc is not None and exc.group(1).endswith("TypeError"):
            self._record(FailureKind.BAD_ARGUMENTS, msg, {})
            return True
        if "are mutually exclusive" in msg and exc is not None and exc.group(1).endswith("ValueError"):
            # EngineArgs refusing two arguments together (e.g. a flag and its compilation config key)
            self._record(FailureKind.BAD_ARGUMENTS, msg, {})
            return True
        if "ValidationError" in msg:
            m = _VALIDATION_RE.search(msg)
            if m:
                # A config error; the next lines say which field and why (they may change the kind).
                head = _clean(msg)
                self._pending[proc] = (head, None, 6)
                self._record(FailureKind.BAD_ARGUMENTS, head, {})
                return True
        return False

    def _oom(self, msg: str) -> None:
        values: dict[str, Any] = {}
        m = _OOM_TRIED_RE.search(msg)
        if m:
            values["tried_to_allocate_mib"] = _mib(m.group(1), m.group(2))
        m = _OOM_TOTAL_RE.search(msg)
        if m:
            number, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            values["total_gib"] = _gib(number, unit)
        m = _OOM_FREE_RE.search(msg)
        if m:
            number, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            values["free_mib"] = _mib(number, unit)
        if values:
            m = _OOM_GPU_RE.search(msg)
            if m:
                values["gpu"] = int(m.group(1))
        stage = None
        if "Failed to load model" in msg:
            stage = "load"
        elif "warming up" in msg:
            stage = "sampler_warmup"
            m = _WARMUP_RE.search(msg)
            if m:
                values["warmup_requests"] = int(m.group(2))
                if m.group(1) != "sampler":
                    stage = f"{m.group(1)}_warmup"
        self._record(FailureKind.CUDA_OOM, msg, values, stage)

    def _validation_detail(self, proc: str | None, detail: str) -> bool:
        """A line after pydantic's `ValidationError: N validation error(s) for X`: the field or the reason."""
        head, field_name, budget = self._pending[proc]
        if budget <= 1:
            del self._pending[proc]
        else:
            self._pending[proc] = (head, field_name, budget - 1)
        if not detail or detail.startswith("For further information"):
            return True
        if detail.startswith("Value error,") or detail.startswith("Assertion failed,"):
            reason = detail.split(",", 1)[1].strip()
        elif " " not in detail and not detail.endswith(":"):
            # pydantic names the field on its own line before the reason
            self._pending[proc] = (head, detail, max(budget - 1, 1))
            return True
        elif detail.startswith(("Input should", "Field required", "Extra inputs", "Value should")) or "[type=" in detail:
            reason = detail
        else:
            return False
        reason = reason.split(" [type=", 1)[0].strip()
        self._pending.pop(proc, None)
        if self._signature(proc, reason, None):
            return True
        where = head.split(":", 1)[0].rsplit(".", 1)[-1]
        m = _VALIDATION_RE.search(head)
        model = m.group(2) if m else "config"
        text = _clean(f"{where}: {model}" + (f".{field_name}" if field_name else "") + f": {reason}")
        best = self._best
        if best is not None and best.kind is FailureKind.BAD_ARGUMENTS and best.message == head:
            best.message = text
        else:
            self._record(FailureKind.BAD_ARGUMENTS, text, {})
        return True

    def _note_death(self, msg: str) -> None:
        if self._death is None or ("EngineDeadError" in msg and "EngineDeadError" not in self._death):
            self._death = _clean(msg)

    def _failed_procs(self, msg: str) -> None:
        m = _FAILED_PROCS_RE.search(msg)
        if not m:
            return
        codes = [int(c) for c in re.findall(r":\s*(-?\d+)", m.group(1))]
        killed = [c for c in codes if c < 0]
        if killed:
            self._death_values["engine_exit_code"] = killed[0]
            self._note_death(msg)

    def _record(self, kind: FailureKind, msg: str, values: dict[str, Any], stage: str | None = None) -> None:
        best = self._best
        if best is None or _PRIORITY[kind] > _PRIORITY[best.kind]:
            self._best = Failure(kind, _clean(msg), dict(values), stage)
            return
        if best.kind is kind:
            for key, value in values.items():
                best.values.setdefault(key, value)
            if best.stage is None and stage is not None:
                best.stage = stage
            if kind is FailureKind.MODEL_NOT_FOUND and "http" in msg and "http" not in best.message:
                best.message = _clean(f"{best.message}; {msg}")

    # ------------------------------------------------------------ verdict

    def classify(self, exit_code: int | None, was_ready: bool) -> Failure | None:
        """Why the engine stopped. exit_code None: still running or unknown (a saved log).

        None means nothing went wrong that the output shows: still starting, still serving, or
        stopped cleanly on a signal. After ready, any exit is `engine_dead` (vLLM 0.26 exits 0
        when its EngineCore is killed), unless the output names a precise cause.
        """
        best = self._best
        root = self._root
        if best is not None and best.kind is FailureKind.MULTI_GPU_COMM and (was_ready or self._death is not None):
            # collectives fail on every rank once one rank is gone: the death is the cause
            root, best = root or best.message, None
        if best is not None:
            failure = Failure(best.kind, best.message, dict(best.values), best.stage)
            if failure.kind is FailureKind.CUDA_OOM and was_ready and failure.stage is None:
                failure.stage = "runtime"
            if failure.kind is FailureKind.CUDA_OOM and was_ready:
                failure.values["runtime"] = 1
            return failure
        values: dict[str, Any] = dict(self._death_values)
        if exit_code is not None:
            values["exit_code"] = exit_code
        if self._death is not None:
            message = self._death
            if root and root not in message:
                message = f"{message} (root cause: {root})"
            return Failure(FailureKind.ENGINE_DEAD, _clean(message), values, "runtime" if was_ready else None)
        when = "after it was ready" if was_ready else "before it was ready"
        killed = None if exit_code is None else _killed(exit_code, when)
        if was_ready:
            if exit_code is None:
                return None
            if killed is not None:  # a child's shutdown lines do not explain the main process's kill
                message = killed
            elif self._shutdown_requested:
                message = f"vLLM shut down on a signal after it was ready (exit code {exit_code})"
            else:
                message = f"vLLM exited with code {exit_code} after it was ready"
            if root:
                message += f"; last error: {root}"
            return Failure(FailureKind.ENGINE_DEAD, _clean(message), values, "runtime")
        cause = root or self._last_error
        if exit_code is None:
            if self._fatal:
                return Failure(FailureKind.UNKNOWN, cause or "vLLM failed during startup (no cause printed)", values)
            return None
        if exit_code == 2 and root is None:
            return Failure(FailureKind.BAD_ARGUMENTS, cause or "vLLM exited with code 2 (bad command-line arguments)", values)
        if killed is not None:
            return Failure(FailureKind.UNKNOWN, _clean(killed + (f"; last error: {cause}" if cause else "")), values)
        if exit_code == 0:
            message = "vLLM exited with code 0 before it was ready"
            if self._shutdown_requested:
                message = "vLLM shut down on a signal before it was ready"
            return Failure(FailureKind.UNKNOWN, message, values)
        if cause is None and self._last_other:
            cause = _clean(f"vLLM exited with code {exit_code} before it was ready; its last words: {self._last_other}")
        return Failure(FailureKind.UNKNOWN, cause or f"vLLM exited with code {exit_code} before it was ready", values)


def _killed(exit_code: int, when: str) -> str | None:
    """"vLLM was killed by … {when} (…)" for an exit status that says a signal ended the process:
    negative (Python's returncode) or 128 + N (the shell's and the guard's convention); None for a
    plain exit."""
    number = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code <= 128 + 64 else None
    if number is None:
        return None
    notes = [f"exit code {exit_code}"] if exit_code > 0 else []
    if number == 9:
        notes.append(SIGKILL_CAUSES)
    text = f"vLLM was killed by {SIGNAL_NAMES.get(number, f'signal {number}')} {when}"
    return text + (f" ({': '.join(notes)})" if notes else "")


def guard_lost_failure(description: str, was_ready: bool) -> Failure:
    """The engine's guard died without reporting the engine's exit: whatever the engine printed
    last, it did not end by itself. `description` is the launcher's ("lost its guard (pid …) …")."""
    return Failure(FailureKind.ENGINE_DEAD, f"the engine {description}", {"guard_lost": 1},
                   "runtime" if was_ready else None)
