#!/usr/bin/env python3
"""Generate vLLM log fixtures from vLLM's own source text, one set per vLLM version.

For each version the script reads the released wheel's Python sources (never importing vLLM or
torch), finds every logging call and `raise` it needs by a distinctive substring of its format
string (so line numbers are found, not typed in), renders the format with the numbers of one
consistent scenario, wraps it the way that version's logger prints it, and writes:

    OUT/vllm-<version>/<scenario>.log           the log, as a supervisor reading stdout+stderr sees it
    OUT/vllm-<version>/<scenario>.sources.txt   for every line: version, source file:line, raw format
    OUT/vllm-<version>/expected.json            the facts and the failure a correct parser extracts

Usage (sources are downloaded with pip into the cache folder when missing):

    python scripts/vllm_log_formats.py --versions 0.8.5,0.26.0,0.28.0,0.30.0,0.31.0,0.32.0,0.33.0,0.34.0 \\
        --out tests/fixtures/generated --cache /work/cache-vllm-wheels

`--src DIR` reads already extracted sources from DIR/<version>/vllm/… instead.

The scenario (tests/fixtures/generated/README.md has the table): Qwen3-4B shapes (36 layers, 8 KV
heads, head_dim 128, bf16: 144 KiB of KV per token, 16-token blocks) on one H100 80 GB that torch
sees as 79.18 GiB. Physical quantities (weights, activation peak, non-torch memory, CUDA graphs)
are fixed; each version's own formula turns them into what that version prints.

Assumed runtime around the vLLM lines (not read from vLLM): CPython 3.12 traceback layout (caret
lines), uvicorn's default log format, tqdm's bar format, PyTorch's CUDA OOM text.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import string
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

GiB = 1 << 30
MiB = 1 << 20

# ----------------------------------------------------------------------------- the scenario

MODEL = "/models/Qwen3-4B"
SERVED_NAME = "qwen3-4b"
PORT = 8000
NUM_LAYERS = 36
NUM_KV_HEADS = 8
HEAD_DIM = 128
DTYPE_BYTES = 2
BLOCK_SIZE = 16
KV_BYTES_PER_TOKEN = NUM_LAYERS * 2 * NUM_KV_HEADS * HEAD_DIM * DTYPE_BYTES  # 147,456 = 144 KiB
BLOCK_BYTES = KV_BYTES_PER_TOKEN * BLOCK_SIZE  # all layers, one block
LAYER_BLOCK_BYTES = BLOCK_BYTES // NUM_LAYERS  # one layer's page
DEFAULT_MAX_LEN = 40960  # Qwen3-4B max_position_embeddings
MAX_NUM_BATCHED_TOKENS = 8192  # get_batch_defaults: >= 70 GiB, not A100, OpenAI server (all versions)
GRANULE = 2 * MiB  # CUDA VMM allocation granularity assumed for the extensible KV cache

TOTAL = int(79.18 * GiB)  # torch.cuda.mem_get_info()[1] of an H100 80GB HBM3
BASELINE = int(0.52 * GiB)  # this process's CUDA context + NCCL before the init snapshot
WEIGHTS = int(7.5586 * GiB)  # model_memory_usage after loading
NON_TORCH = int(0.22 * GiB)  # non-torch growth from init to after profiling
ACTIVATION = int(0.8044 * GiB)  # torch transient peak of the profiling run
GRAPHS = int(1.0 * GiB)  # free-memory drop across CUDA graph capture
GRAPH_ESTIMATE = int(0.96 * GiB)  # profile_cudagraph_memory() where a version estimates it
NVIDIA_SMI_OTHER = int(60.51 * GiB)  # another process's memory (free-memory-short scenario)

API_PID = 4100
ENGINE_PID = 4230
OTHER_PID = 3377
START = (12, 1, 10, 0, 0)  # month, day, hour, minute, second of the first line

SITE = "/usr/local/lib/python3.12/dist-packages"
STDLIB = "/usr/lib/python3.12"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def format_gib(num_bytes: float) -> str:
    """vLLM's format_gib (utils/mem_utils.py): `f"{round(b / GiB_bytes, 2)}"`."""
    return f"{round(num_bytes / GiB, 2)}"


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- source access


@dataclass(frozen=True)
class Located:
    """A line of vLLM source: relative path, 1-based line number, raw format, the code line."""

    path: str
    line: int
    raw: str
    code: str = ""
    caret_start: int = -1
    caret_end: int = -1
    indent: int = 0
    fstring_at: tuple[int, int] | None = None  # (line, col) of the f-string node, if any

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def where(self) -> str:
        return f"vllm/{self.path}:{self.line}"


_LOG_METHODS = frozenset({
    "debug", "info", "warning", "error", "exception", "critical",
    "info_once", "warning_once", "debug_once", "error_once",
})


class SourceError(LookupError):
    """An anchor did not match exactly once in a version's source."""


class VllmSource:
    """The `vllm/` package of one version, read as text and parsed with `ast` on demand."""

    def __init__(self, version: str, root: Path) -> None:
        self.version = version
        self.root = root
        self._trees: dict[str, tuple[str, ast.Module]] = {}

    def _load(self, path: str) -> tuple[str, ast.Module]:
        if path not in self._trees:
            text = (self.root / path).read_text(encoding="utf-8")
            self._trees[path] = (text, ast.parse(text))
        return self._trees[path]

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()

    def first_existing(self, paths: Sequence[str]) -> str:
        for path in paths:
            if self.exists(path):
                return path
        raise SourceError(f"{self.version}: none of {list(paths)} exists")

    @staticmethod
    def _segment(text: str, node: ast.AST) -> str:
        return ast.get_source_segment(text, node) or ""

    @staticmethod
    def _string_of(text: str, node: ast.AST | None) -> str | None:
        """A string constant's value, or an f-string as a template: `{expr}` for each field."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(_template_parts(text, node))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            # "message" + (optional suffix): the message is the left operand
            return VllmSource._string_of(text, node.left)
        return None

    @staticmethod
    def _fpos(node: ast.AST | None) -> tuple[int, int] | None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return VllmSource._fpos(node.left)
        return (node.lineno, node.col_offset) if isinstance(node, ast.JoinedStr) else None

    def log(self, paths: str | Sequence[str], *anchors: str, call: str | None = None,
            exclude: Sequence[str] = (), raw: str | None = None) -> Located:
        """The logging call whose format string contains every anchor (or whose call text
        contains `call`), exactly one in the first of `paths` that has one."""
        errors: list[str] = []
        for path in [paths] if isinstance(paths, str) else paths:
            if not self.exists(path):
                errors.append(f"{path}: missing")
                continue
            text, tree = self._load(path)
            hits: list[tuple[ast.Call, str]] = []
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in _LOG_METHODS and node.args):
                    continue
                fmt = self._string_of(text, node.args[0])
                seg = self._segment(text, node)
                if call is not None:
                    if call not in seg:
                        continue
                elif fmt is None or not all(a in fmt for a in anchors):
                    continue
                if any(e in (fmt or seg) for e in exclude):
                    continue
                hits.append((node, fmt if fmt is not None else seg))
            if not hits:
                hit = self._via_variable(path, anchors, exclude)
                if hit is not None:
                    return hit
            if len(hits) == 1:
                node, fmt = hits[0]
                return Located(path, node.lineno, raw if raw is not None else fmt,
                               fstring_at=self._fpos(node.args[0]))
            errors.append(f"{path}: {len(hits)} matches")
        raise SourceError(f"{self.version}: log {anchors or call!r}: {'; '.join(errors)}")

    def _via_variable(self, path: str, anchors: Sequence[str], exclude: Sequence[str]) -> Located | None:
        """`msg = (f"…anchor…")` followed by `logger.info(msg)` in the same function."""
        if not anchors:
            return None
        text, tree = self._load(path)
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)):
                    continue
                fmt = self._string_of(text, node.value)
                if fmt is None or not all(a in fmt for a in anchors) or any(e in fmt for e in exclude):
                    continue
                name = node.targets[0].id
                calls = [
                    c for c in ast.walk(func)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                    and c.func.attr in _LOG_METHODS and c.args
                    and isinstance(c.args[0], ast.Name) and c.args[0].id == name
                    and c.lineno > node.lineno
                ]
                if calls:
                    first = min(calls, key=lambda c: c.lineno)
                    return Located(path, first.lineno, fmt, fstring_at=self._fpos(node.value))
        return None

    def raise_(self, path: str, *anchors: str) -> Located:
        """The `raise X(…)` whose message contains every anchor."""
        text, tree = self._load(path)
        hits = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                msg = self._string_of(text, node.exc.args[0])
                if msg is not None and all(a in msg for a in anchors):
                    hits.append((node, msg))
        if len(hits) != 1:
            raise SourceError(f"{self.version}: raise {anchors!r} in {path}: {len(hits)} matches")
        node, msg = hits[0]
        return Located(path, node.lineno, msg, fstring_at=self._fpos(node.exc.args[0]))

    def string(self, path: str, *anchors: str) -> Located:
        """A string constant (or f-string) containing every anchor, e.g. a message default."""
        text, tree = self._load(path)
        hits = []
        for node in ast.walk(tree):
            value = self._string_of(text, node) if isinstance(node, (ast.Constant, ast.JoinedStr)) else None
            if value is not None and all(a in value for a in anchors):
                hits.append((node, value))
        # an f-string's constant parts are nodes too: keep the outermost
        hits = [h for h in hits if not any(o is not h and o[0].lineno <= h[0].lineno
                                           and isinstance(o[0], ast.JoinedStr)
                                           and h[1] in o[1] for o in hits)] or hits
        if len(hits) != 1:
            raise SourceError(f"{self.version}: string {anchors!r} in {path}: {len(hits)} matches")
        node, value = hits[0]
        return Located(path, node.lineno, value, fstring_at=self._fpos(node))

    def fstring_parts(self, loc: Located) -> list[tuple[str, str | None, str]]:
        """The f-string at `loc` as (literal, expression source or None, format spec) parts."""
        text, tree = self._load(loc.path)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and (node.lineno, node.col_offset) == loc.fstring_at:
                parts: list[tuple[str, str | None, str]] = []
                for value in node.values:
                    if isinstance(value, ast.Constant):
                        parts.append((str(value.value), None, ""))
                    elif isinstance(value, ast.FormattedValue):
                        spec = ""
                        if value.format_spec is not None:
                            spec = "".join(str(v.value) for v in value.format_spec.values
                                           if isinstance(v, ast.Constant))
                        expr = self._segment(text, value.value)
                        if value.conversion == ord("r"):
                            expr += "!r"
                        parts.append(("", expr, spec))
                return parts
        raise SourceError(f"{self.version}: no f-string at {loc.where}")

    def frame(self, paths: str | Sequence[str], qualname: str, expr: str) -> Located:
        """A traceback frame: the first call/await/raise/with in function `qualname` whose
        source starts with `expr`; carets as CPython 3.12 prints them."""
        for path in [paths] if isinstance(paths, str) else paths:
            if not self.exists(path):
                continue
            text, tree = self._load(path)
            func = self._function(tree, qualname)
            if func is None:
                continue
            lines = text.splitlines()
            best: tuple[int, int, ast.AST] | None = None
            for node in self._own_nodes(func):
                if not isinstance(node, (ast.Call, ast.Await, ast.Raise, ast.With, ast.AsyncWith)):
                    continue
                seg = self._segment(text, node)
                target = node
                if isinstance(node, (ast.With, ast.AsyncWith)):
                    target = node.items[0].context_expr
                    seg = lines[node.lineno - 1].strip()
                if seg.startswith(expr) or (isinstance(node, (ast.With, ast.AsyncWith)) and expr in seg):
                    key = (node.lineno, node.col_offset)
                    if best is None or key < best[:2]:
                        best = (node.lineno, node.col_offset, node if not isinstance(
                            node, (ast.With, ast.AsyncWith)) else target)
            if best is None:
                continue
            node = best[2]
            line = lines[node.lineno - 1]
            start, end = self._caret_span(line, node, isinstance(node, ast.Raise))
            indent = len(line) - len(line.lstrip())
            return Located(path, node.lineno, f"frame {qualname}", line.strip(), start, end, indent)
        raise SourceError(f"{self.version}: frame {qualname} {expr!r} not found in {paths}")

    @staticmethod
    def _own_nodes(func: ast.AST) -> Iterable[ast.AST]:
        """Nodes of a function body, not of functions nested in it."""
        stack = list(ast.iter_child_nodes(func))
        while stack:
            node = stack.pop()
            yield node
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                stack.extend(ast.iter_child_nodes(node))

    @staticmethod
    def _function(tree: ast.Module, qualname: str) -> ast.AST | None:
        parts = qualname.split(".")
        scope: list[ast.stmt] = tree.body
        found: ast.AST | None = None
        for part in parts:
            found = next((n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                               ast.AsyncFunctionDef))
                          and n.name == part), None)
            if found is None:
                return None
            scope = found.body  # type: ignore[attr-defined]
        return found

    @staticmethod
    def _caret_span(line: str, node: ast.AST, whole: bool) -> tuple[int, int]:
        """Character columns of CPython 3.12's `^` line, or (-1, -1) when it prints none."""
        if whole:
            return -1, -1
        raw = line.encode("utf-8")
        start = len(raw[: node.col_offset].decode("utf-8"))
        if node.end_lineno == node.lineno and node.end_col_offset is not None:
            end = len(raw[: node.end_col_offset].decode("utf-8"))
        else:
            end = len(line.rstrip())
        stripped = line.strip()
        if end - start >= len(stripped):
            return -1, -1
        return start, end


def _template_parts(text: str, node: ast.JoinedStr) -> list[str]:
    out: list[str] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            out.append(str(value.value))
        elif isinstance(value, ast.FormattedValue):
            expr = ast.get_source_segment(text, value.value) or "?"
            conv = "!r" if value.conversion == ord("r") else ""
            spec = ""
            if value.format_spec is not None:
                spec = ":" + "".join(str(v.value) for v in value.format_spec.values
                                     if isinstance(v, ast.Constant))
            out.append("{" + expr + conv + spec + "}")
    return out


# ----------------------------------------------------------------------------- rendering


def render_percent(fmt: str, args: Sequence[Any]) -> str:
    """A `%`-style logging format with its arguments, as logging does."""
    return fmt % tuple(args) if args else fmt


def render_fstring(src: VllmSource, loc: Located, values: dict[str, Any]) -> str:
    """An f-string from the source with a value for each expression (keyed by its source text)."""
    out: list[str] = []
    missing: list[str] = []
    for literal, expr, spec in src.fstring_parts(loc):
        if expr is None:
            out.append(literal)
            continue
        if expr not in values:
            missing.append(expr)
            continue
        value = values[expr]
        out.append(format(value, spec) if spec else str(value))
    if missing:
        raise SourceError(f"{src.version}: {loc.where}: no value for {missing}")
    return "".join(out)


# ----------------------------------------------------------------------------- log records


@dataclass
class Line:
    """One physical output line and where it comes from."""

    text: str
    where: str
    raw: str


@dataclass
class Emitter:
    """Builds one scenario log the way a given vLLM version writes it."""

    src: VllmSource
    lines: list[Line] = field(default_factory=list)
    clock: float = 0.0

    @property
    def v(self) -> tuple[int, ...]:
        return version_tuple(self.src.version)

    def at(self, seconds: float) -> Emitter:
        self.clock = max(self.clock, seconds)
        return self

    def _stamp(self) -> str:
        month, day, hour, minute, second = START
        total = hour * 3600 + minute * 60 + second + int(self.clock)
        return f"{month:02d}-{day:02d} {total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}"

    def prefix(self, proc: str | None, record: bool) -> str:
        """The process prefix of a line: none before 0.10.1; on every line a decorated process
        writes (stdout/stderr wrapped) in 0.26–0.30; on log records only from 0.31."""
        if proc is None or self.v < (0, 10, 1):
            return ""
        name = {"api": "APIServer", "engine": "EngineCore"}[proc]
        pid = {"api": API_PID, "engine": ENGINE_PID}[proc]
        if self.v >= (0, 31) and not record:
            return ""
        return f"({name} pid={pid}) "

    def record(self, proc: str, level: str, loc: Located, message: str, *, exc: str | None = None) -> None:
        """A vLLM logger record: `LEVEL mm-dd hh:mm:ss [file.py:N] message`; a `\\n` inside
        becomes `\\r\\n` + the header again (NewLineFormatter), a traceback follows for
        logger.exception."""
        head = f"{self.prefix(proc, True)}{level} {self._stamp()} [{loc.filename}:{loc.line}] "
        body = message if exc is None else f"{message}\n{exc}"
        parts = body.split("\n")
        for i, part in enumerate(parts):
            end = "\r" if i < len(parts) - 1 else ""
            raw = loc.raw if i == 0 else "(continuation of the record above: NewLineFormatter)"
            self.lines.append(Line(f"{head}{part}{end}", loc.where, raw))

    def raw(self, proc: str | None, text: str, where: str, raw: str) -> None:
        """A line not written through vLLM's logger (uvicorn, tqdm, an uncaught traceback)."""
        self.lines.append(Line(f"{self.prefix(proc, False)}{text}", where, raw))

    def traceback_text(self, frames: Sequence[Located | tuple[str, int, str, str, str]]) -> list[tuple[str, str, str]]:
        """CPython 3.12 traceback lines (text, where, raw) for resolved vLLM frames and fixed
        external ones given as (file, line, function, code, carets)."""
        out: list[tuple[str, str, str]] = [("Traceback (most recent call last):", "CPython traceback", "Traceback header")]
        for frame in frames:
            if isinstance(frame, Located):
                func = frame.raw.split(" ", 1)[1].rsplit(".", 1)[-1]
                out.append((f'  File "{SITE}/vllm/{frame.path}", line {frame.line}, in {func}',
                            frame.where, "traceback frame"))
                out.append((f"    {frame.code}", frame.where, "traceback source line"))
                if frame.caret_start >= 0:
                    out.append(("    " + " " * (frame.caret_start - frame.indent)
                                + "^" * (frame.caret_end - frame.caret_start), frame.where, "traceback carets"))
            else:
                path, line, func, code, carets = frame
                out.append((f'  File "{path}", line {line}, in {func}', f"external: {path}:{line}",
                            "traceback frame"))
                if code:
                    out.append((f"    {code}", f"external: {path}:{line}", "traceback source line"))
                if carets:
                    out.append((carets, f"external: {path}:{line}", "traceback carets"))
        return out


# ----------------------------------------------------------------------------- memory model


@dataclass(frozen=True)
class Launch:
    """What one scenario launches with and what else holds GPU memory."""

    util: float
    max_len: int | None  # None: not passed, the model's 40960
    other: int = 0  # bytes another process holds before the start
    external_weights: int = 0  # weights held by a weight-cache daemon (0.32+ ipc_cache)

    @property
    def model_len(self) -> int:
        return self.max_len if self.max_len is not None else DEFAULT_MAX_LEN


@dataclass
class Memory:
    """What one version computes for one launch. Bytes unless named otherwise."""

    requested: int
    init_free: int
    available: int  # the KV budget the profiling step gives (the "Available KV cache memory")
    graph_estimate: int  # applied to the budget (0 where the version does not estimate)
    num_blocks: int  # blocks the KV cache finally holds
    measured: dict[str, int] = field(default_factory=dict)  # 0.34 post-warm-up terms

    def tokens(self, v: tuple[int, ...], max_len: int) -> int:
        if v < (0, 26):
            return self.num_blocks * BLOCK_SIZE
        return int(self.concurrency(max_len) * max_len)

    def concurrency(self, max_len: int) -> float:
        return self.num_blocks / cdiv(max_len, BLOCK_SIZE)


def estimates_graphs(v: tuple[int, ...]) -> bool:
    """Model runner V2 returns a real profile_cudagraph_memory() from 0.30 (0 in 0.26/0.28);
    0.8.5's V1 runner has none. With the extensible KV cache (0.34) it returns 0."""
    return (0, 30) <= v < (0, 34)


def requested_bytes(v: tuple[int, ...], launch: Launch) -> int:
    if v < (0, 26):
        return int(TOTAL * launch.util)  # total_gpu_memory * gpu_memory_utilization, no ceil
    return math.ceil(TOTAL * launch.util)


def memory_for(v: tuple[int, ...], launch: Launch) -> Memory:
    init_free = TOTAL - BASELINE - launch.other - launch.external_weights
    requested = requested_bytes(v, launch)
    estimate = GRAPH_ESTIMATE if estimates_graphs(v) else 0
    if v < (0, 26):
        # 0.8.5 gpu_worker.determine_available_memory: util*total - torch peak (weights +
        # activations) - everything else in use on the device (incl. other processes)
        used_not_torch = (TOTAL - (init_free - WEIGHTS - NON_TORCH)) - WEIGHTS
        available = int(requested - (WEIGHTS + ACTIVATION) - used_not_torch)
    else:
        engine_weights = WEIGHTS if launch.external_weights == 0 else 0
        budget = requested - launch.external_weights
        available = budget - (engine_weights + NON_TORCH + ACTIVATION) - estimate
    blocks = max(available // BLOCK_BYTES, 0)
    memory = Memory(requested, init_free, available, estimate, blocks)
    if v >= (0, 34):
        measure_extensible(memory)
    return memory


def physical_bytes_for(num_blocks: int) -> int:
    """ExtensibleKVCache.physical_bytes_for: each layer segment rounded up to the granule."""
    per_layer = cdiv(num_blocks * LAYER_BLOCK_BYTES, GRANULE) * GRANULE
    return per_layer * NUM_LAYERS


def blocks_within(num_bytes: int, capacity: int) -> int:
    blocks = min(num_bytes // BLOCK_BYTES, capacity)
    while blocks > 0 and physical_bytes_for(blocks) > num_bytes:
        blocks -= 1
    return max(blocks, 0)


def measure_extensible(memory: Memory) -> None:
    """0.34 measure_kv_cache_bytes / measure_kv_cache_blocks after warm-up and capture."""
    committed = physical_bytes_for(1)  # min_committed_blocks: the null block
    free = memory.init_free - WEIGHTS - NON_TORCH - GRAPHS - committed
    transient = ACTIVATION  # reserved_headroom_bytes: the profiled peak (warm-up reached no more)
    growth = 0
    non_kv_used = memory.init_free - free - committed
    headroom = free + committed
    margin = max(1 * GiB, int(transient * 0.75))
    available = min(memory.requested - non_kv_used, headroom - margin)
    available -= max(transient, growth)
    available = max(available, 0)
    capacity = max(memory.available // BLOCK_BYTES, 0)
    blocks = blocks_within(available, capacity)
    reserved = WEIGHTS + GRAPHS  # torch.accelerator.memory_reserved(): weights + graph pool
    left_free = free - (physical_bytes_for(blocks) - committed) - 512 * MiB
    memory.measured = {
        "free": free, "committed": committed, "transient": transient, "growth": growth,
        "available": available, "capacity": capacity, "blocks": blocks,
        "torch_limit": reserved + max(left_free, 0),
    }
    memory.num_blocks = blocks


def check_memory(v: tuple[int, ...], available: int) -> int:
    """What the KV-fit check compares with: from 0.30 one block (the null block) less."""
    return available - BLOCK_BYTES if v >= (0, 30) else available


def needed_bytes(max_len: int) -> int:
    return cdiv(max_len, BLOCK_SIZE) * BLOCK_BYTES


def estimate_max_len(available: int, max_len: int) -> int:
    """estimate_max_model_len's binary search, closed form for one full-attention group."""
    return min((available // BLOCK_BYTES) * BLOCK_SIZE, max_len)


# ----------------------------------------------------------------------------- scenario builder

API_FRAMES_EXTERNAL_HEAD = [
    ("/usr/local/bin/vllm", 8, "<module>", "sys.exit(main())", "             ^^^^^^"),
]
UVLOOP_FRAMES = [
    (f"{SITE}/uvloop/__init__.py", 96, "run", "return __asyncio.run(", "           ^^^^^^^^^^^^^^"),
    (f"{STDLIB}/asyncio/runners.py", 194, "run", "return runner.run(main)", "           ^^^^^^^^^^^^^^^^"),
    (f"{STDLIB}/asyncio/runners.py", 118, "run", "return self._loop.run_until_complete(task)",
     "           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^"),
    ("uvloop/loop.pyx", 1515, "uvloop.loop.Loop.run_until_complete", "", ""),
    (f"{SITE}/uvloop/__init__.py", 48, "wrapper", "return await main", "           ^^^^^^^^^^"),
]
AENTER = (f"{STDLIB}/contextlib.py", 210, "__aenter__", "return await anext(self.gen)",
          "           ^^^^^^^^^^^^^^^^^^^^^")
EXIT = (f"{STDLIB}/contextlib.py", 144, "__exit__", "next(self.gen)", "")
MP_FRAMES = [
    (f"{STDLIB}/multiprocessing/process.py", 314, "_bootstrap", "self.run()", ""),
    (f"{STDLIB}/multiprocessing/process.py", 108, "run", "self._target(*self._args, **self._kwargs)", ""),
]
EXTERNAL = {
    "uvicorn": "external: uvicorn (default log config: '%(levelprefix)s %(message)s')",
    "tqdm": "external: tqdm progress bar (desc from vLLM)",
    "torch": "external: PyTorch c10/cuda/CUDACachingAllocator.cpp (OutOfMemoryError text)",
    "mp": "external: CPython multiprocessing/process.py (uncaught exception in a Process)",
    "python": "external: CPython (uncaught exception at top level)",
}


class Builder:
    """Writes the lines of one scenario for one version, in the order the processes print them."""

    def __init__(self, src: VllmSource) -> None:
        self.src = src
        self.out = Emitter(src)
        self.v = version_tuple(src.version)

    # ------------------------------------------------------------------ helpers

    def info(self, proc: str, loc: Located, *args: Any, level: str = "INFO") -> None:
        self.out.record(proc, level, loc, render_percent(loc.raw, args))

    def uvicorn(self, message: str, level: str = "INFO") -> None:
        self.out.raw("api", f"{level}:     {message}", EXTERNAL["uvicorn"], message)

    # ------------------------------------------------------------------ API server start

    def api_start(self, launch: Launch, extra_args: dict[str, Any] | None = None) -> None:
        src = self.src
        self.out.at(0)
        if self.v < (0, 26):
            loc = src.log("entrypoints/openai/api_server.py", "vLLM API server version %s")
            self.info("api", loc, self.src.version)
            args = src.log("entrypoints/openai/api_server.py", "args: %s")
            self.info("api", args, self._namespace(launch))
        else:
            path = src.first_existing(["entrypoints/common/startup.py", "entrypoints/serve/utils/api_utils.py"])
            logo = src.string(path, "▄▄", "version ${w}%s")
            loc = src.log(path, call="lgr.info(message, version, model_name)", raw=logo.raw)
            message = string.Template(logo.raw).substitute(w="", o="", b="", r="")
            self.out.record("api", "INFO", loc, message % (self.src.version, MODEL))
            loc = src.log(path, "non-default args: %s")
            self.info("api", loc, self._non_default(launch, extra_args))
            loc = src.log("config/model.py", "Using max model len %s")
            self.info("api", loc, launch.model_len)
        loc = src.log(["config/scheduler.py", "config.py"], "Chunked prefill is enabled with max_num_batched_tokens")
        self.info("api", loc, MAX_NUM_BATCHED_TOKENS)

    def _non_default(self, launch: Launch, extra: dict[str, Any] | None) -> str:
        args: dict[str, Any] = {"model_tag": MODEL, "model": MODEL}
        if launch.max_len is not None:
            args["max_model_len"] = launch.max_len
        args["served_model_name"] = [SERVED_NAME]
        if extra:
            args.update(extra)
        args["gpu_memory_utilization"] = launch.util
        return repr(args)

    def _namespace(self, launch: Launch) -> str:
        # argparse.Namespace repr, abbreviated to the arguments a supervisor reads
        fields = [("subparser", "'serve'"), ("model_tag", repr(MODEL)), ("host", "None"), ("port", str(PORT)),
                  ("model", repr(MODEL)), ("max_model_len", str(launch.max_len)),
                  ("tensor_parallel_size", "1"), ("gpu_memory_utilization", repr(launch.util)),
                  ("served_model_name", repr([SERVED_NAME])), ("enforce_eager", "False")]
        return "Namespace(" + ", ".join(f"{k}={v}" for k, v in fields) + ")"

    # ------------------------------------------------------------------ EngineCore start

    def engine_start(self, launch: Launch, *, load_format: str = "auto") -> None:
        src = self.src
        self.out.at(14)
        loc = src.log("v1/engine/core.py", "Initializing a V1 LLM engine (v%s) with config: %s")
        self.info("engine", loc, self.src.version, self._config(launch, load_format))
        if self.v < (0, 26):
            loc = src.log("v1/worker/gpu_model_runner.py", "Starting to load model %s...")
            self.info("engine", loc, MODEL)
        else:
            if self.v < (0, 34):
                self.info("engine", src.log("v1/worker/gpu_worker.py", "Using V2 Model Runner"))
            self.info("engine", src.log("v1/worker/gpu/model_runner.py", "Loading model from scratch..."))

    def _config(self, launch: Launch, load_format: str) -> str:
        path = "config/vllm.py" if self.src.exists("config/vllm.py") else "config.py"
        loc = self.src.string(path, "model={self.model_config.model!r}, ")
        values: dict[str, Any] = {}
        by_name = {
            "model": repr(MODEL), "tokenizer": repr(MODEL), "speculative_config": "None",
            "skip_tokenizer_init": "False", "tokenizer_mode": "auto", "revision": "None",
            "tokenizer_revision": "None", "trust_remote_code": "False", "dtype": "torch.bfloat16",
            "max_model_len": str(launch.model_len), "download_dir": "None", "load_format": load_format,
            "tensor_parallel_size": "1", "pipeline_parallel_size": "1", "data_parallel_size": "1",
            "decode_context_parallel_size": "1", "dcp_comm_backend": "ag_rs",
            "disable_custom_all_reduce": "False", "quantization": "None", "enforce_eager": "False",
            "cache_dtype": "auto", "device": "cuda", "seed": "0", "served_model_name": SERVED_NAME,
            "enable_prefix_caching": "True", "enable_chunked_prefill": "True",
            "use_async_output_proc": "True", "compilation_config": "{'level': 3, 'cudagraph_mode': "
            "<CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>, 'max_cudagraph_capture_size': 512}",
        }
        for _, expr, _ in self.src.fstring_parts(loc):
            if expr is None:
                continue
            name = expr.removesuffix("!r").rsplit(".", 1)[-1]
            values[expr] = by_name.get(name, "None")
        return render_fstring(self.src, loc, values)

    def engine_loaded(self) -> None:
        src = self.src
        self.out.at(16)
        if self.v < (0, 26):
            loc = src.log("v1/worker/gpu_model_runner.py", "Model loading took")
            self.info("engine", loc, round(WEIGHTS / GiB, 4), 1.944633)
        else:
            loc = src.log("v1/worker/gpu/model_runner.py", "Model loading took")
            self.info("engine", loc, format_gib(WEIGHTS), 1.944633)

    def engine_compiled(self) -> None:
        src = self.src
        self.out.at(38)
        if self.v < (0, 26):
            self.info("engine", src.log("compilation/monitor.py", "torch.compile takes %.2f s in total"), 22.21)
            return
        message = src.string("compilation/monitor.py", "torch.compile took %.2f s in total")
        loc = src.log("compilation/monitor.py", call="(message, ", raw=message.raw)
        args: tuple[Any, ...] = ("", 22.21) if "%s" in message.raw else (22.21,)
        self.info("engine", loc, *args)
        loc = src.log("compilation/monitor.py", "Initial profiling/warmup run took")
        args = ("", 0.46) if loc.raw.startswith("%s") else (0.46,)
        self.info("engine", loc, *args)

    def engine_available(self, memory: Memory, launch: Launch) -> None:
        if self.v < (0, 26):
            return
        src = self.src
        self.out.at(39)
        self.info("engine", src.log("v1/worker/gpu_worker.py", "Available KV cache memory: %s GiB"),
                  format_gib(memory.available))
        if memory.graph_estimate > 0:
            loc = src.log("v1/worker/gpu_worker.py", "CUDA graph memory profiling is enabled")
            delta = memory.graph_estimate / TOTAL
            self.info("engine", loc, launch.util, round(launch.util - delta, 4), min(round(launch.util + delta, 4), 1.0))

    def kv_size(self, memory: Memory, launch: Launch, *, pools: str = "GPU") -> None:
        src = self.src
        tokens = memory.tokens(self.v, launch.model_len)
        conc = memory.concurrency(launch.model_len) if self.v >= (0, 26) else tokens / launch.model_len
        if self.v < (0, 28):
            path = "v1/core/kv_cache_utils.py"
            a = src.log(path, "GPU KV cache size: %s tokens", exclude=("Maximum",))
            b = src.log(path, "Maximum concurrency for %s tokens per request: %.2fx", exclude=("KV cache size",))
            self.info("engine", a, f"{tokens:,}")
            self.info("engine", b, f"{launch.model_len:,}", conc)
        else:
            loc = src.log("v1/core/kv_cache_utils.py", "KV cache size: %s tokens, ", "Maximum concurrency")
            args: tuple[Any, ...] = (f"{tokens:,}", f"{launch.model_len:,}", conc)
            if loc.raw.startswith("%s"):
                args = (pools,) + args
            self.info("engine", loc, *args)

    def graphs(self, memory: Memory) -> None:
        src = self.src
        self.out.at(44)
        if self.v >= (0, 26):
            for mode, count in (("PIECEWISE", 51), ("FULL", 51)):
                bar = f"Capturing CUDA graphs ({mode}): 100%|██████████| {count}/{count} [00:02<00:00, 23.08it/s]"
                self.out.raw("engine", bar, EXTERNAL["tqdm"], "tqdm(descs, desc=f\"{progress_bar_desc} ({mode.name})\")")
            loc = src.log("v1/worker/gpu/model_runner.py", "Graph capturing finished in")
        else:
            loc = src.log("v1/worker/gpu_model_runner.py", "Graph capturing finished in")
        self.info("engine", loc, 4, GRAPHS / GiB)
        if memory.graph_estimate > 0:
            loc = src.log("v1/worker/gpu_worker.py", "CUDA graph pool memory: %s GiB (actual)")
            diff = abs(GRAPHS - memory.graph_estimate)
            self.info("engine", loc, round(GRAPHS / GiB, 2), round(memory.graph_estimate / GiB, 2),
                      round(diff / GiB, 2), 100 * diff / max(GRAPHS, 1))

    def summary(self, memory: Memory, launch: Launch) -> None:
        """The INFO 'Free memory on device … Actual usage is …' line (0.26+)."""
        if self.v < (0, 26):
            return
        src = self.src
        if self.v < (0, 28):
            loc = src.log("v1/worker/gpu_worker.py", "GiB for weight, ")
            peak = ACTIVATION
            non_kv = WEIGHTS + peak + NON_TORCH + GRAPHS
        else:
            loc = src.log("v1/worker/gpu_worker.py", "GiB for consumed memory (weights + non-torch)")
            peak = ACTIVATION + memory.graph_estimate
            non_kv = WEIGHTS + NON_TORCH + peak + GRAPHS
        buffer = 150 * MiB
        to_requested = int(memory.requested) - non_kv - buffer
        to_gpu = memory.init_free - non_kv - buffer
        util_expr = ("self.cache_config.resolved_gpu_memory_utilization" if self.v >= (0, 34)
                     else "self.cache_config.gpu_memory_utilization")
        values = {
            "format_gib(self.init_snapshot.free_memory)": format_gib(memory.init_free),
            "format_gib(self.init_snapshot.total_memory)": format_gib(TOTAL),
            util_expr: launch.util,
            "format_gib(self.requested_memory)": format_gib(memory.requested),
            "format_gib(self.model_runner.model_memory_usage)": format_gib(WEIGHTS),
            "format_gib(self.total_consumed)": format_gib(WEIGHTS + NON_TORCH),
            "format_gib(self.peak_activation_memory)": format_gib(peak),
            "format_gib(self.non_torch_memory)": format_gib(NON_TORCH),
            "format_gib(cuda_graph_memory_bytes)": format_gib(GRAPHS),
            "kv_cache_memory_bytes_to_requested_limit": to_requested,
            "format_gib(kv_cache_memory_bytes_to_requested_limit)": format_gib(to_requested),
            "kv_cache_memory_bytes_to_gpu_limit": to_gpu,
            "format_gib(kv_cache_memory_bytes_to_gpu_limit)": format_gib(to_gpu),
            "format_gib(self.available_kv_cache_memory_bytes)": format_gib(memory.available),
        }
        self.out.record("engine", "INFO", loc, render_fstring(src, loc, values))

    def extensible(self, memory: Memory, launch: Launch) -> None:
        """0.34: the post-warm-up measurement, the capacity line, the extension."""
        src = self.src
        m = memory.measured
        loc = src.log("v1/worker/extensible_kv_cache.py", "Memory after warmup: ")
        self.info("engine", loc, format_gib(m["free"]), format_gib(m["committed"]),
                  format_gib(max(m["transient"], m["growth"])), format_gib(m["transient"]),
                  format_gib(m["growth"]), m["blocks"], format_gib(m["blocks"] * BLOCK_BYTES),
                  format_gib(memory.requested), format_gib(m["torch_limit"]))

    def extended(self, memory: Memory) -> None:
        loc = self.src.log("v1/worker/extensible_kv_cache.py", "Extended KV cache to %d blocks")
        self.info("engine", loc, memory.num_blocks, physical_bytes_for(memory.num_blocks) / GiB)

    def init_done(self) -> None:
        src = self.src
        self.out.at(54)
        if self.v < (0, 26):
            self.info("engine", src.log("v1/engine/core.py", "init engine (profile, create kv cache, "), 40.26)
        else:
            loc = src.log("v1/engine/core.py", "(compilation: %.2f s)", exclude=("language_model",))
            self.info("engine", loc, 40.26, 22.21)

    # ------------------------------------------------------------------ API server serving

    def api_serving(self) -> None:
        src = self.src
        self.out.at(55)
        if self.v < (0, 26):
            loc = src.log("entrypoints/openai/api_server.py", "Starting vLLM API server on http%s://%s:%d")
            self.info("api", loc, "", "0.0.0.0", PORT)
            launcher = "entrypoints/launcher.py"
        else:
            api = src.first_existing(["entrypoints/launchers/api_server/entry.py", "entrypoints/openai/api_server.py"])
            self.info("api", src.log(api, "Supported tasks: %s"), ["generate"])
            starts = src.log(api, "Starting vLLM server on %s", exclude=("render",)) if api.endswith("entry.py") \
                else self._first_of(api, "Starting vLLM server on %s")
            self.info("api", starts, f"http://0.0.0.0:{PORT}")
            launcher = src.first_existing(["entrypoints/launchers/launcher.py", "entrypoints/launcher.py"])
        self.info("api", src.log(launcher, "Available routes are:"))
        route = src.log(launcher, "Route: %s, Methods: %s")
        for path, methods in (("/health", "GET"), ("/v1/models", "GET"), ("/v1/chat/completions", "POST")):
            self.info("api", route, path, methods)
        self.uvicorn(f"Started server process [{API_PID}]")
        self.uvicorn("Waiting for application startup.")
        self.uvicorn("Application startup complete.")

    def _first_of(self, path: str, anchor: str) -> Located:
        """The first of several identical logging calls (0.26/0.28 log the listen line twice)."""
        text, tree = self.src._load(path)
        calls = sorted(
            (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "info" and n.args and isinstance(n.args[0], ast.Constant)
             and isinstance(n.args[0].value, str) and anchor in n.args[0].value),
            key=lambda n: n.lineno)
        if not calls:
            raise SourceError(f"{self.src.version}: {anchor!r} not in {path}")
        return Located(path, calls[0].lineno, anchor)

    # ------------------------------------------------------------------ failures

    def engine_failed(self, frames: Sequence[Located | tuple[str, int, str, str, str]], exc_line: str,
                      exc_where: str, exc_raw: str) -> None:
        """EngineCore: logger.exception('EngineCore failed to start.') with the traceback, then
        multiprocessing's own copy on stderr."""
        src = self.src
        failed = src.log("v1/engine/core.py", "EngineCore failed to start.")
        tb = self.out.traceback_text(frames)
        text = "\n".join(t for t, _, _ in tb) + "\n" + exc_line
        head_len = len(self.out.lines)
        self.out.record("engine", "ERROR", failed, "EngineCore failed to start.", exc=text)
        # point each traceback line of the record at its own source
        for i, (_, where, raw) in enumerate(tb + [("", exc_where, exc_raw)], start=1):
            line = self.out.lines[head_len + i]
            line.where, line.raw = where, raw
        raise_e = src.frame("v1/engine/core.py", "EngineCoreProc.run_engine_core", "raise e")
        name = "EngineCore_0" if self.v < (0, 26) else "EngineCore"
        self.out.raw("engine", f"Process {name}:", EXTERNAL["mp"], "Process {self.name}:")
        copy = self.out.traceback_text([*MP_FRAMES, raise_e, *frames])
        for text_line, where, raw in copy:
            self.out.raw("engine", text_line, where, raw)
        self.out.raw("engine", exc_line, exc_where, exc_raw)

    def api_failed(self) -> None:
        """API server: the uncaught RuntimeError of the engine start-up wait (exit code 1)."""
        src = self.src
        api = src.first_existing(["entrypoints/launchers/api_server/entry.py", "entrypoints/openai/api_server.py"])
        apis = [api, "entrypoints/openai/api_server.py"]
        frames: list[Located | tuple[str, int, str, str, str]] = [*API_FRAMES_EXTERNAL_HEAD]
        frames.append(src.frame("entrypoints/cli/main.py", "main", "args.dispatch_function(args)"))
        frames.append(src.frame("entrypoints/cli/serve.py", "ServeSubcommand.cmd", "uvloop.run(run_server(args))"))
        frames.extend(UVLOOP_FRAMES)
        if self.v < (0, 26):
            frames.append(src.frame(apis, "run_server", "async with build_async_engine_client"))
        else:
            frames.append(src.frame(apis, "run_server", "await run_server_worker("))
            frames.append(src.frame(apis, "run_server_worker", "async with build_async_engine_client"))
        frames.append(AENTER)
        frames.append(src.frame(apis, "build_async_engine_client", "async with build_async_engine_client_from_engine_args"))
        frames.append(AENTER)
        frames.append(src.frame(apis, "build_async_engine_client_from_engine_args", "AsyncLLM.from_vllm_config("))
        frames.append(src.frame("v1/engine/async_llm.py", "AsyncLLM.from_vllm_config", "cls("))
        if self.v < (0, 26):
            frames.append(src.frame("v1/engine/async_llm.py", "AsyncLLM.__init__", "core_client_class("))
        else:
            frames.append(src.frame("v1/engine/async_llm.py", "AsyncLLM.__init__",
                                    "EngineCoreClient.make_async_mp_client("))
            frames.append(src.frame("v1/engine/core_client.py", "EngineCoreClient.make_async_mp_client",
                                    "AsyncMPClient("))
        frames.append(src.frame("v1/engine/core_client.py", "AsyncMPClient.__init__", "super().__init__("))
        if self.v < (0, 26):
            frames.append(src.frame("v1/engine/core_client.py", "MPClient.__init__", "self._wait_for_engine_startup("))
            raise_loc = src.raise_("v1/engine/core_client.py", "Engine core initialization failed. ")
            frames.append(src.frame("v1/engine/core_client.py", "MPClient._wait_for_engine_startup", "raise RuntimeError"))
            message = raise_loc.raw
        else:
            frames.append(src.frame("v1/engine/core_client.py", "MPClient.__init__", "with launch_core_engines("))
            frames.append(EXIT)
            frames.append(src.frame("v1/engine/utils.py", "launch_core_engines", "wait_for_engine_startup("))
            frames.append(src.frame("v1/engine/utils.py", "wait_for_engine_startup", "raise RuntimeError"))
            raise_loc = src.raise_("v1/engine/utils.py", "Engine core initialization failed. ")
            message = raise_loc.raw
            if raise_loc.fstring_at is not None:
                fields = [e for _, e, _ in src.fstring_parts(raise_loc) if e is not None]
                message = render_fstring(src, raise_loc, {e: "{}" for e in fields})
        self.out.at(self.out.clock + 1)
        for text_line, where, raw in self.out.traceback_text(frames):
            self.out.raw("api", text_line, where, raw)
        self.out.raw("api", f"RuntimeError: {message}", raise_loc.where, raise_loc.raw)

    def engine_frames_to_kv_check(self, check_anchor: str) -> tuple[list[Located], Located]:
        """run_engine_core → … → the KV-fit check's raise (startup, before warm-up)."""
        src = self.src
        core = "v1/engine/core.py"
        frames: list[Located] = [
            src.frame(core, "EngineCoreProc.run_engine_core", "EngineCoreProc("),
            src.frame(core, "EngineCoreProc.__init__", "super().__init__("),
            src.frame(core, "EngineCore.__init__", "self._initialize_kv_caches("),
        ]
        if self.v < (0, 26):
            frames.append(src.frame(core, "EngineCore._initialize_kv_caches", "get_kv_cache_config("))
            path = "v1/core/kv_cache_utils.py"
            frames.append(src.frame(path, "get_kv_cache_config", "check_enough_kv_cache_memory("))
            check_func = "check_enough_kv_cache_memory"
        else:
            frames.append(src.frame(core, "EngineCore._initialize_kv_caches", "get_kv_cache_configs("))
            path = src.first_existing(["v1/core/kv_cache_planning.py", "v1/core/kv_cache_utils.py"]) \
                if self._planning_has("get_kv_cache_configs") else "v1/core/kv_cache_utils.py"
            frames.append(src.frame(path, "get_kv_cache_configs", "_check_enough_kv_cache_memory("))
            check_func = "_check_enough_kv_cache_memory"
        raise_loc = src.raise_(path, check_anchor)
        frames.append(src.frame(path, check_func, "raise ValueError"))
        # the raise frame must be the one carrying the anchor
        if frames[-1].line != raise_loc.line:
            frames[-1] = Located(raise_loc.path, raise_loc.line, f"frame {check_func}", "raise ValueError(")
        return frames, raise_loc

    def _planning_has(self, name: str) -> bool:
        path = "v1/core/kv_cache_planning.py"
        return self.src.exists(path) and f"def {name}(" in (self.src.root / path).read_text()



# ----------------------------------------------------------------------------- scenarios

READY = Launch(util=0.3, max_len=10000)
KV_TOO_SMALL = Launch(util=0.14, max_len=None)
NO_KV_MEMORY = Launch(util=0.08, max_len=10000)
FREE_SHORT = Launch(util=0.3, max_len=10000, other=NVIDIA_SMI_OTHER)
FREE_SHORT_0_34_ERROR = Launch(util=0.3, max_len=10000, other=TOTAL - BASELINE - int(11.5 * GiB))
EXTERNAL_WEIGHTS = Launch(util=0.3, max_len=10000, other=int(56.0 * GiB), external_weights=WEIGHTS)


@dataclass
class Scenario:
    """One generated log and what a correct parser must get from it."""

    name: str
    lines: list[Line]
    expected: dict[str, Any]


def facts(**values: Any) -> dict[str, Any]:
    names = ("model_weights_gib", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency",
             "max_concurrency_context", "cuda_graph_gib", "engine_init_seconds", "tensor_parallel_size")
    return {name: values.get(name) for name in names}


def gib2(num_bytes: float) -> float:
    return round(num_bytes / GiB, 2)


def loaded_facts(v: tuple[int, ...]) -> dict[str, Any]:
    return {"model_weights_gib": round(WEIGHTS / GiB, 4) if v < (0, 26) else gib2(WEIGHTS),
            "tensor_parallel_size": 1}


def startup(b: Builder, launch: Launch, memory: Memory, *, extra_args: dict[str, Any] | None = None) -> None:
    """Everything up to the KV-cache sizing (shared by the ready and the failing starts)."""
    b.api_start(launch, extra_args)
    b.engine_start(launch)
    b.engine_loaded()
    b.engine_compiled()
    b.engine_available(memory, launch)


def ready_lines(b: Builder, launch: Launch, memory: Memory) -> None:
    startup(b, launch, memory)
    if b.v < (0, 34):
        b.kv_size(memory, launch)
    b.graphs(memory)
    b.summary(memory, launch)
    if b.v >= (0, 34):
        b.extensible(memory, launch)
        b.kv_size(memory, launch)
        b.extended(memory)
    b.init_done()
    b.api_serving()


def ready_expected(v: tuple[int, ...], launch: Launch, memory: Memory) -> dict[str, Any]:
    tokens = memory.tokens(v, launch.model_len)
    conc = tokens / launch.model_len if v < (0, 26) else memory.concurrency(launch.model_len)
    available = None
    if (0, 26) <= v < (0, 34):
        available = gib2(memory.available)
    elif v >= (0, 34):
        available = gib2(memory.num_blocks * BLOCK_BYTES)
    out = {
        "outcome": "ready",
        "exit_code": None,
        "facts": facts(**loaded_facts(v), available_kv_cache_gib=available, kv_cache_tokens=tokens,
                       max_concurrency=float(f"{conc:.2f}"), max_concurrency_context=launch.model_len,
                       cuda_graph_gib=gib2(GRAPHS), engine_init_seconds=40.26),
        "failure": None,
    }
    if v >= (0, 34):
        out["extra"] = {
            "available_kv_cache_gib_before_warmup": gib2(memory.available),
            "kv_cache_blocks": memory.num_blocks,
            "note": "0.34's extensible KV cache: 'Available KV cache memory' is the pre-warm-up "
                    "estimate; the cache holds the blocks of the 'Memory after warmup' line.",
        }
    return out


def scenario_ready(src: VllmSource) -> Scenario:
    b = Builder(src)
    memory = memory_for(b.v, READY)
    ready_lines(b, READY, memory)
    return Scenario("ready", b.out.lines, ready_expected(b.v, READY, memory))


def scenario_kv_fail(src: VllmSource, name: str, launch: Launch) -> Scenario:
    """A start that fails the KV-fit check before warm-up (too small or no memory at all)."""
    b = Builder(src)
    v = b.v
    memory = memory_for(v, launch)
    startup(b, launch, memory)
    checked = check_memory(v, memory.available)
    max_len = launch.model_len
    if checked <= 0:
        frames, loc = b.engine_frames_to_kv_check("No available memory for the cache blocks")
        message = loc.raw
        if loc.fstring_at is not None:
            message = render_fstring(src, loc, {"hint": kv_hint(v, launch)})
        failure = {"kind": "no_kv_cache_memory", "values": {}}
    else:
        frames, loc = b.engine_frames_to_kv_check("KV cache is needed, which is larger")
        needed = needed_bytes(max_len)
        estimate = estimate_max_len(checked, max_len)
        message = render_fstring(src, loc, kv_values(v, launch, needed, checked, estimate))
        values: dict[str, Any] = {"needed_gib": round(needed / GiB, 2), "available_gib": round(checked / GiB, 2),
                                  "max_model_len": max_len}
        if v >= (0, 9) and estimate > 0:
            values["estimated_max_model_len"] = estimate
        failure = {"kind": "kv_cache_too_small", "values": values}
    b.out.at(40)
    b.engine_failed(frames, f"ValueError: {message}", loc.where, loc.raw)
    b.api_failed()
    expected = {
        "outcome": "failed", "exit_code": 1,
        "facts": facts(**loaded_facts(v),
                       available_kv_cache_gib=gib2(memory.available) if v >= (0, 26) else None),
        "failure": failure,
    }
    return Scenario(name, b.out.lines, expected)


def kv_hint(v: tuple[int, ...], launch: Launch, after_warmup: bool = False) -> str:
    """0.34 _more_kv_cache_memory_hint with the extensible KV cache on."""
    used_by = "the model, its activations, CUDA graphs and warmup" if after_warmup \
        else "the model and its activations"
    graphs = (" CUDA graphs take less with fewer or smaller capture sizes in the compilation config."
              if after_warmup else "")
    return (f"The KV cache gets what is left after {used_by} within `gpu_memory_utilization`={launch.util}; "
            "increase it (with the extensible KV cache it defaults to 1.0) or decrease `max_model_len` "
            f"or `max_num_seqs`.{graphs}")


def kv_values(v: tuple[int, ...], launch: Launch, needed: int, available: int, estimate: int,
              after_warmup: bool = False) -> dict[str, Any]:
    if v < (0, 9):
        estimated_msg = " Based on the available memory,"  # 0.8.4/0.8.5: the estimate is dropped
    elif estimate > 0:
        estimated_msg = ("Based on the available memory, "
                         f"the estimated maximum model length is {estimate}. ")
    else:
        estimated_msg = ""
    return {
        "max_model_len": launch.model_len,
        "needed_memory/GiB_bytes": needed / GiB,
        "available_memory/GiB_bytes": available / GiB,
        "format_gib(needed_memory)": format_gib(needed),
        "format_gib(available_memory)": format_gib(available),
        "estimated_msg": estimated_msg,
        "hint": kv_hint(v, launch, after_warmup),
    }


def scenario_free_short(src: VllmSource, name: str, launch: Launch) -> Scenario:
    """Another process holds most of the GPU before the start."""
    b = Builder(src)
    v = b.v
    memory = memory_for(v, launch)
    if v < (0, 26):
        # 0.8.5 has no free-memory check: the other process's memory is charged as non-torch
        # memory during profiling, so the KV budget goes negative.
        return scenario_kv_fail(src, name, launch)
    if v >= (0, 34):
        return scenario_extensible_short(src, name, launch)
    extra = {"load_format": "ipc_cache"} if launch.external_weights else None
    b.api_start(launch, extra)
    b.engine_start(launch, load_format="ipc_cache" if launch.external_weights else "auto")
    path = "v1/worker/utils.py"
    if launch.external_weights:
        loc = src.raise_(path, "is less than the engine's budget after excluding")
        engine_memory = memory.requested - launch.external_weights
        requested_shown = engine_memory
    else:
        loc = src.raise_(path, "is less than desired GPU memory utilization")
        requested_shown = memory.requested
    util_expr = "gpu_memory_utilization" if "{gpu_memory_utilization}" in loc.raw \
        else "cache_config.gpu_memory_utilization"
    values = {
        "init_snapshot.device_": "cuda:0",
        "format_gib(init_snapshot.free_memory)": format_gib(memory.init_free),
        "format_gib(init_snapshot.total_memory)": format_gib(TOTAL),
        util_expr: launch.util,
        "format_gib(requested_memory)": format_gib(requested_shown),
        "format_gib(engine_memory)": format_gib(requested_shown),
    }
    message = render_fstring(src, loc, values)
    core = "v1/engine/core.py"
    frames: list[Located] = [
        src.frame(core, "EngineCoreProc.run_engine_core", "EngineCoreProc("),
        src.frame(core, "EngineCoreProc.__init__", "super().__init__("),
        src.frame(core, "EngineCore.__init__", "executor_class(vllm_config)"),
        src.frame("v1/executor/abstract.py", "Executor.__init__", "self._init_executor("),
        src.frame("v1/executor/uniproc_executor.py", "UniProcExecutor._init_executor", "self.driver_worker.init_device("),
        src.frame("v1/worker/worker_base.py", "WorkerWrapperBase.init_device", "self.worker.init_device("),
    ]
    frames.append(src.frame("v1/worker/gpu_worker.py", "Worker.init_device", "request_memory("))
    func = "request_memory"
    frames.append(Located(path, loc.line, f"frame {func}", "raise ValueError("))
    b.out.at(16)
    b.engine_failed(frames, f"ValueError: {message}", loc.where, loc.raw)
    b.api_failed()
    failure_values = {"free_gib": round(memory.init_free / GiB, 2), "total_gib": round(TOTAL / GiB, 2),
                      "requested_utilization": launch.util, "requested_gib": round(requested_shown / GiB, 2)}
    expected = {"outcome": "failed", "exit_code": 1, "facts": facts(tensor_parallel_size=1),
                "failure": {"kind": "insufficient_free_memory", "values": failure_values}}
    return Scenario(name, b.out.lines, expected)


def scenario_extensible_short(src: VllmSource, name: str, launch: Launch) -> Scenario:
    """0.34: no start-up check; the measured cache is smaller, or it fails after warm-up."""
    b = Builder(src)
    v = b.v
    memory = memory_for(v, launch)
    if memory.num_blocks - 1 >= cdiv(launch.model_len, BLOCK_SIZE):
        ready_lines(b, launch, memory)
        return Scenario(name, b.out.lines, ready_expected(v, launch, memory))
    startup(b, launch, memory)
    b.graphs(memory)
    b.summary(memory, launch)
    b.extensible(memory, launch)
    checked = (memory.num_blocks - 1) * BLOCK_BYTES
    planning = "v1/core/kv_cache_planning.py"
    core = "v1/engine/core.py"
    frames: list[Located] = [
        src.frame(core, "EngineCoreProc.run_engine_core", "EngineCoreProc("),
        src.frame(core, "EngineCoreProc.__init__", "super().__init__("),
        src.frame(core, "EngineCore.__init__", "self._initialize_kv_caches("),
        src.frame(core, "EngineCore._initialize_kv_caches", "finalize_extensible_kv_cache("),
        src.frame(planning, "finalize_extensible_kv_cache", "shrink_kv_cache_configs("),
        src.frame(planning, "shrink_kv_cache_configs", "_check_enough_kv_cache_memory("),
    ]
    if checked <= 0:
        loc = src.raise_(planning, "No available memory for the cache blocks")
        message = render_fstring(src, loc, {"hint": kv_hint(v, launch, after_warmup=True)})
        failure: dict[str, Any] = {"kind": "no_kv_cache_memory", "values": {}}
    else:
        loc = src.raise_(planning, "KV cache is needed, which is larger")
        needed = needed_bytes(launch.model_len)
        estimate = estimate_max_len(checked, launch.model_len)
        message = render_fstring(src, loc, kv_values(v, launch, needed, checked, estimate, after_warmup=True))
        failure = {"kind": "kv_cache_too_small",
                   "values": {"needed_gib": round(needed / GiB, 2), "available_gib": round(checked / GiB, 2),
                              "max_model_len": launch.model_len, "estimated_max_model_len": estimate}}
    frames.append(Located(planning, loc.line, "frame _check_enough_kv_cache_memory", "raise ValueError("))
    b.out.at(50)
    b.engine_failed(frames, f"ValueError: {message}", loc.where, loc.raw)
    b.api_failed()
    expected = {"outcome": "failed", "exit_code": 1,
                "facts": facts(**loaded_facts(v),
                               available_kv_cache_gib=gib2(memory.num_blocks * BLOCK_BYTES),
                               cuda_graph_gib=gib2(GRAPHS)),
                "failure": failure,
                "extra": {"available_kv_cache_gib_before_warmup": gib2(memory.available),
                          "note": "The pre-warm-up 'Available KV cache memory' passed the check; the "
                                  "post-warm-up measurement did not."}}
    return Scenario(name, b.out.lines, expected)


def torch_oom(v: tuple[int, ...]) -> str:
    """PyTorch's allocator message (torch 2.6 for vLLM 0.8.5; the newer documentation link as
    printed by torch 2.11 under vLLM 0.26.0 for the rest)."""
    url = ("https://pytorch.org/docs/stable/notes/cuda.html#environment-variables" if v < (0, 26)
           else "https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf")
    return ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 304.00 MiB. GPU 0 has a total "
            "capacity of 79.18 GiB of which 234.62 MiB is free. Process 3377 has 70.29 GiB memory in use. "
            "Including non-PyTorch memory, this process has 8.66 GiB memory in use. Of the allocated memory "
            "8.19 GiB is allocated by PyTorch, and 8.79 MiB is reserved by PyTorch but unallocated. If "
            "reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF="
            "expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  "
            f"({url})")


def scenario_cuda_oom(src: VllmSource) -> Scenario:
    b = Builder(src)
    v = b.v
    b.api_start(READY)
    b.engine_start(READY)
    b.engine_loaded()
    core = "v1/engine/core.py"
    frames: list[Located] = [
        src.frame(core, "EngineCoreProc.run_engine_core", "EngineCoreProc("),
        src.frame(core, "EngineCoreProc.__init__", "super().__init__("),
        src.frame(core, "EngineCore.__init__", "self._initialize_kv_caches("),
        src.frame(core, "EngineCore._initialize_kv_caches", "self.model_executor.determine_available_memory("),
    ]
    b.out.at(30)
    b.engine_failed(frames, torch_oom(v), EXTERNAL["torch"], "CUDA out of memory. Tried to allocate …")
    b.api_failed()
    expected = {"outcome": "failed", "exit_code": 1, "facts": facts(**loaded_facts(v)),
                "failure": {"kind": "cuda_oom", "values": {"tried_to_allocate_mib": 304.0, "total_gib": 79.18,
                                                           "free_mib": 234.62}}}
    return Scenario("cuda-oom", b.out.lines, expected)


def scenario_engine_dead(src: VllmSource) -> Scenario:
    b = Builder(src)
    v = b.v
    memory = memory_for(v, READY)
    ready_lines(b, READY, memory)
    b.out.at(60)
    b.uvicorn('127.0.0.1:50312 - "POST /v1/chat/completions HTTP/1.1" 200 OK')
    expected = ready_expected(v, READY, memory)
    if v < (0, 26):
        # 0.8.5: nothing watches the EngineCore process; a SIGKILLed engine leaves no line and
        # /health keeps answering 200 (AsyncLLM.check_health is a no-op).
        b.out.at(75)
        b.uvicorn('127.0.0.1:50320 - "GET /health HTTP/1.1" 200 OK')
        expected["note"] = ("vLLM 0.8.5 does not notice a SIGKILLed EngineCore: no EngineDeadError, "
                            "the API server keeps running and /health stays 200.")
        return Scenario("engine-dead", b.out.lines, expected)
    b.out.at(75)
    client = "v1/engine/core_client.py"
    b.info("api", src.log(client, "[shutdown] MPClient: engine core exited unexpectedly"), level="WARNING")
    handler = src.log("v1/engine/async_llm.py", "AsyncLLM output_handler failed.")
    frames = [_output_handler_frame(src),
              src.frame(client, "AsyncMPClient.get_output_async", "raise self._format_exception(")]
    tb = b.out.traceback_text(frames)
    dead = "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause."
    head = len(b.out.lines)
    b.out.record("api", "ERROR", handler, "AsyncLLM output_handler failed.",
                 exc="\n".join(t for t, _, _ in tb) + "\n" + dead)
    exc_src = src.string("v1/engine/exceptions.py", "EngineCore encountered an issue")
    for i, (_, where, raw) in enumerate(tb + [("", exc_src.where, exc_src.raw)], start=1):
        b.out.lines[head + i].where, b.out.lines[head + i].raw = where, raw
    for _ in range(2):
        b.uvicorn('127.0.0.1:50320 - "GET /health HTTP/1.1" 503 Service Unavailable')
    for message in ("Shutting down", "Waiting for application shutdown.", "Application shutdown complete.",
                    f"Finished server process [{API_PID}]"):
        b.uvicorn(message)
    expected["outcome"] = "failed"
    expected["exit_code"] = 0
    expected["failure"] = {"kind": "engine_dead", "values": {}}
    return Scenario("engine-dead", b.out.lines, expected)


def _output_handler_frame(src: VllmSource) -> Located:
    """The nested output_handler coroutine of AsyncLLM (its enclosing method varies)."""
    text, tree = src._load("v1/engine/async_llm.py")
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "output_handler":
            for call in VllmSource._own_nodes(node):
                if isinstance(call, ast.Await) and "get_output_async(" in (ast.get_source_segment(text, call) or ""):
                    line = text.splitlines()[call.lineno - 1]
                    start, end = VllmSource._caret_span(line, call, False)
                    return Located("v1/engine/async_llm.py", call.lineno, "frame output_handler", line.strip(),
                                   start, end, len(line) - len(line.lstrip()))
    raise SourceError(f"{src.version}: output_handler not found")


def scenario_hisparse(src: VllmSource) -> Scenario:
    """0.32+: the KV size line with HiSparse's host pool (numbers of the ready scenario)."""
    b = Builder(src)
    memory = memory_for(b.v, READY)
    b.out.at(40)
    b.kv_size(memory, READY, pools="GPU + host")
    tokens = memory.tokens(b.v, READY.model_len)
    expected = {"outcome": "incomplete", "exit_code": None,
                "facts": facts(kv_cache_tokens=tokens,
                               max_concurrency=float(f"{memory.concurrency(READY.model_len):.2f}"),
                               max_concurrency_context=READY.model_len),
                "failure": None,
                "note": "One line only: HiSparse needs a sparse-attention model; the numbers are the "
                        "ready scenario's, to show the wording."}
    return Scenario("hisparse-kv-size-line", b.out.lines, expected)


def scenarios_for(src: VllmSource) -> list[Scenario]:
    v = version_tuple(src.version)
    out = [
        scenario_ready(src),
        scenario_kv_fail(src, "kv-cache-too-small", KV_TOO_SMALL),
        scenario_kv_fail(src, "no-kv-cache-memory", NO_KV_MEMORY),
        scenario_free_short(src, "insufficient-free-memory", FREE_SHORT),
        scenario_cuda_oom(src),
        scenario_engine_dead(src),
    ]
    if (0, 32) <= v < (0, 34):
        out.append(scenario_free_short(src, "insufficient-free-memory-external-weights", EXTERNAL_WEIGHTS))
    if v >= (0, 34):
        out.append(scenario_extensible_short(src, "kv-cache-too-small-after-warmup", FREE_SHORT_0_34_ERROR))
    if v >= (0, 32):
        out.append(scenario_hisparse(src))
    return out


# ----------------------------------------------------------------------------- output


def write_version(src: VllmSource, out_dir: Path) -> None:
    folder = out_dir / f"vllm-{src.version}"
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, Any] = {"vllm_version": src.version, "scenarios": {}}
    for scenario in scenarios_for(src):
        log_name = f"{scenario.name}.log"
        with open(folder / log_name, "w", encoding="utf-8", newline="") as fh:
            for line in scenario.lines:
                fh.write(line.text + "\n")
        with open(folder / f"{scenario.name}.sources.txt", "w", encoding="utf-8", newline="\n") as fh:
            fh.write(f"# {log_name}: one entry per log line: line number, vLLM version, source, raw format\n")
            for number, line in enumerate(scenario.lines, start=1):
                raw = line.raw.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
                fh.write(f"{number}\t{src.version}\t{line.where}\t{raw}\n")
        entry = {"vllm_version": src.version, **scenario.expected}
        expected["scenarios"][log_name] = entry
    with open(folder / "expected.json", "w", encoding="utf-8") as fh:
        json.dump(expected, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def ensure_sources(version: str, cache: Path, src_dir: Path | None) -> Path:
    """The extracted `vllm/` folder of a version: from --src, or downloaded with pip into the cache."""
    if src_dir is not None:
        root = src_dir / version / "vllm"
        if not root.is_dir():
            raise SystemExit(f"{root} does not exist")
        return root
    root = cache / "src" / version / "vllm"
    if root.is_dir():
        return root
    wheels = list(cache.glob(f"vllm-{version}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"vllm=={version}",
                        "-d", str(cache)], check=True)
        wheels = list(cache.glob(f"vllm-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [n for n in wheel.namelist() if n.startswith("vllm/") and n.endswith(".py")]
        wheel.extractall(cache / "src" / version, members)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", default="0.8.5,0.26.0,0.28.0,0.30.0,0.31.0,0.32.0,0.33.0,0.34.0")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/generated"))
    parser.add_argument("--cache", type=Path, default=Path("/work/cache-vllm-wheels"),
                        help="where wheels are downloaded and extracted (outside the repository)")
    parser.add_argument("--src", type=Path, default=None, help="already extracted sources: SRC/<version>/vllm")
    args = parser.parse_args(argv)
    for version in args.versions.split(","):
        root = ensure_sources(version.strip(), args.cache, args.src)
        write_version(VllmSource(version.strip(), root), args.out)
        print(f"vllm-{version.strip()}: written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
