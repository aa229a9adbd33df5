"""The tree draws the architecture: layers as packages, imports flowing one way, no cycles, and
the vLLM knowledge layer doing no I/O. docs/architecture.md draws the same picture; the README's
layout lists every file."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "llm_supervisor"

# Which layers each layer may import (besides itself). A lower layer never imports a higher one.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "states": set(),
    "clock": set(),
    "cpulist": set(),
    "config": {"errors", "cpulist"},
    "vllm": {"errors", "config"},
    "host": {"errors", "cpulist", "config", "vllm"},
    "store": {"errors", "config", "vllm", "host"},
    "planning": {"errors", "config", "vllm", "host", "store"},
    "api": {"errors", "states", "cpulist"},
    "frontdoor": {"errors", "clock", "config", "api"},
    "runtime": {"errors", "states", "clock", "config", "vllm", "host", "store", "planning", "api", "frontdoor"},
    "cluster": {"errors", "states", "clock", "config", "vllm", "host", "store", "planning", "api", "runtime"},
    "bench": {"errors", "clock", "config", "vllm", "api"},
    # the vLLM stand-in is a program of its own: it shares the simulated GPU and config.json parsing
    "simulator": {"host", "vllm"},
    "cli": {"errors", "states", "clock", "config", "vllm", "host", "store", "planning", "api", "frontdoor", "runtime",
            "cluster", "bench"},
    "__main__": {"cli"},
    "__init__": set(),
}
# What the vLLM knowledge layer may not import: anything that touches files, processes, sockets,
# threads or clocks.
IO_MODULES = {"os", "io", "socket", "subprocess", "pathlib", "shutil", "tempfile", "asyncio", "threading",
              "signal", "select", "time", "urllib", "http", "httpx", "psutil", "pynvml", "fcntl", "ctypes",
              "multiprocessing", "glob", "sys"}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            submodules = [n for n in names if n in KNOWN]
            found.update(submodules)
            if len(submodules) < len(names):
                found.add(node.module)
    return found


KNOWN = set(modules())


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_layers_import_only_below_them() -> None:
    known = modules()
    problems = []
    for name, path in known.items():
        mine = layer(name)
        assert mine in ALLOWED, f"{name}: layer {mine!r} is not in the architecture (tests/test_architecture.py)"
        for target in imports(path):
            if not target.startswith("llm_supervisor.") or target not in known:
                continue
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                problems.append(f"{name} imports {target} ({mine} → {theirs})")
    assert problems == []


def test_no_import_cycles() -> None:
    known = modules()
    graph = {name: {t for t in imports(path) if t in known and t != name} for name, path in known.items()}
    # a package's __init__ imported through `from pkg import mod` is the module itself
    state: dict[str, int] = defaultdict(int)
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif state[nxt] == 0:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    assert cycles == []


def test_the_vllm_knowledge_layer_does_no_io() -> None:
    problems = []
    for name, path in modules().items():
        if layer(name) != "vllm":
            continue
        for target in imports(path):
            if target.split(".")[0] in IO_MODULES:
                problems.append(f"{name} imports {target}")
    assert problems == []


def test_the_readme_layout_lists_every_file() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"[\w/]+\.py", section))
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py" and path.parent != PACKAGE:
            continue  # a package is listed by its folder and its modules
        assert rel in listed, f"README's layout lacks {rel}"
