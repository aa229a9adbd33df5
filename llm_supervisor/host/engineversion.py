"""Which vLLM the engine command runs, known before it runs (the plan sizes the KV cache the way
that version does). I/O: reads the command's files, runs a Python or `vllm --version` once.

Two ways, the cheaper first:

1. the installed distribution's metadata, read by the engine command's own Python
   (`importlib.metadata.version("vllm")`: vLLM itself is not imported, so it takes ~0.1 s). The
   Python is argv[0] when that is an interpreter (`python -m vllm.entrypoints…`), else the one the
   console script names in its `#!` line (pip's `vllm` script, also its `/bin/sh` trampoline for
   long paths);
2. `vllm --version` (vLLM's own CLI; it imports vLLM and torch: seconds), only when argv[0] is
   vLLM's CLI, with a timeout.

What the second way finds is cached in `<state_dir>/engine-versions.json`, per engine command and
the executable's identity (path, size, modification time), so an upgrade (pip rewrites the
script) is noticed and the slow way runs once per install. The first way is never cached: a
Python's own files do not change when vLLM is upgraded under it.

None of this runs with `--simulate`: the simulator's version is LLM_SUPERVISOR_SIM_VLLM_VERSION.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

CACHE_FILE = "engine-versions.json"
METADATA_TIMEOUT_S = 15.0
CLI_TIMEOUT_S = 90.0
SIM_VERSION_ENV = "LLM_SUPERVISOR_SIM_VLLM_VERSION"
_VERSION_RE = re.compile(r"^\s*v?(\d+\.\d+(?:\.\d+)?(?:[\w.+\-]*))\s*$")
_METADATA_CODE = "import importlib.metadata as m; print(m.version('vllm'))"
_PYTHON_NAME_RE = re.compile(r"^python(\d+(\.\d+)?)?$")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class EngineVersion:
    """The engine's vLLM version (None: could not tell) and how it was learned."""

    version: str | None
    source: str          # "simulator", "distribution metadata", "vllm --version", "cache", "unknown"
    detail: str = ""     # the interpreter or command asked, or why it could not tell

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "source": self.source, "detail": self.detail}

    def describe(self) -> str:
        if self.version is None:
            return f"unknown ({self.detail})" if self.detail else "unknown"
        return f"{self.version} ({self.source}{': ' + self.detail if self.detail else ''})"


def simulator_version(env: Mapping[str, str] | None = None, default: str | None = None) -> EngineVersion:
    """The version `--simulate` imitates: LLM_SUPERVISOR_SIM_VLLM_VERSION, else `default`."""
    raw = (env if env is not None else os.environ).get(SIM_VERSION_ENV, "").strip()
    if raw:
        return EngineVersion(raw.lstrip("v"), "simulator", f"{SIM_VERSION_ENV}={raw}")
    return EngineVersion(default, "simulator", "the simulator's default (the newest supported)")


def _clean(text: str) -> str | None:
    """The last line of `text` that is a bare version number."""
    for line in reversed(text.strip().splitlines()):
        m = _VERSION_RE.match(line)
        if m:
            return m.group(1)
    return None


def _is_python(path: str) -> bool:
    return bool(_PYTHON_NAME_RE.match(os.path.basename(path)))


def script_python(script: str, path: str | None = None) -> list[str] | None:
    """The interpreter a console script runs under: its `#!` line, or the `exec` line of pip's
    `/bin/sh` trampoline (`path`: where `#!/usr/bin/env python3` looks). None for a binary or a
    file that names none."""
    try:
        with open(script, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    lines = head.decode("utf-8", "replace").splitlines()
    shebang = lines[0][2:].strip().split()
    if not shebang:
        return None
    if os.path.basename(shebang[0]) == "env" and len(shebang) > 1:
        found = shutil.which(shebang[1], path=path)
        return [found] if found and _is_python(shebang[1]) else None
    if _is_python(shebang[0]):
        return [shebang[0]]
    if os.path.basename(shebang[0]) == "sh" and len(lines) > 1:
        m = re.search(r"""'''exec' (?:"([^"]+)"|(\S+))""", lines[1])
        found = m and (m.group(1) or m.group(2))
        if found and _is_python(found):
            return [found]
    return None


def engine_python(argv: Sequence[str], path: str | None = None) -> list[str] | None:
    """The Python that runs the engine command, when one can be named without running it
    (`path`: the PATH to look argv[0] up in)."""
    if not argv:
        return None
    exe = shutil.which(argv[0], path=path) or (argv[0] if os.path.isfile(argv[0]) else None)
    if exe is None:
        return None
    if _is_python(argv[0]) or _is_python(exe):
        return [exe]
    return script_python(exe, path)


def _identity(path: str) -> dict[str, Any] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class VersionCache:
    """`<state_dir>/engine-versions.json`: what `vllm --version` said, per command and executable."""

    def __init__(self, state_dir: str | Path | None) -> None:
        self.path = Path(state_dir) / CACHE_FILE if state_dir is not None else None

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def key(argv: Sequence[str], identity: Mapping[str, Any]) -> str:
        return json.dumps({"argv": list(argv), **identity}, sort_keys=True)

    def get(self, key: str) -> str | None:
        entry = self._read().get(key)
        return entry.get("version") if isinstance(entry, dict) and isinstance(entry.get("version"), str) else None

    def put(self, key: str, version: str) -> None:
        if self.path is None:
            return
        data = self._read()
        data[key] = {"version": version}
        tmp: str | None = None
        try:  # a temporary file renamed over the old one: never half a file
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:  # a cache: losing it costs one more `vllm --version`
            log.debug("cannot write %s: %s", self.path, exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def detect(argv: Sequence[str], *, state_dir: str | Path | None = None, env: Mapping[str, str] | None = None,
           run: Runner = subprocess.run, metadata_timeout_s: float = METADATA_TIMEOUT_S,
           cli_timeout_s: float = CLI_TIMEOUT_S) -> EngineVersion:
    """The vLLM version `argv` (the engine command, e.g. ["vllm", "serve"]) would run."""
    if not argv:
        return EngineVersion(None, "unknown", "no engine command")
    run_env = dict(env if env is not None else os.environ)
    search = run_env.get("PATH")
    python = engine_python(argv, search)
    why = []
    if python is not None:
        try:
            done = run([*python, "-c", _METADATA_CODE], capture_output=True, text=True, timeout=metadata_timeout_s,
                       env=run_env, stdin=subprocess.DEVNULL)
            version = _clean(done.stdout) if done.returncode == 0 else None
            if version:
                return EngineVersion(version, "distribution metadata", python[0])
            why.append(f"{python[0]} has no vllm distribution")
        except (OSError, subprocess.SubprocessError) as exc:
            why.append(f"{python[0]}: {exc.__class__.__name__}")
    exe = shutil.which(argv[0], path=search)
    if exe is None or not os.path.basename(argv[0]).startswith("vllm"):
        why.append(f"{argv[0]} is not vLLM's CLI" if exe else f"{argv[0]} not found on PATH")
        return EngineVersion(None, "unknown", "; ".join(why))
    identity = _identity(exe) or {"path": exe}
    cache = VersionCache(state_dir)
    key = VersionCache.key([argv[0], "--version"], identity)
    cached = cache.get(key)
    if cached:
        return EngineVersion(cached, "cache", f"`{argv[0]} --version` earlier, {cache.path}")
    try:
        done = run([exe, "--version"], capture_output=True, text=True, timeout=cli_timeout_s, env=run_env,
                   stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        why.append(f"`{argv[0]} --version` took more than {cli_timeout_s:g} s")
        return EngineVersion(None, "unknown", "; ".join(why))
    except (OSError, subprocess.SubprocessError) as exc:
        why.append(f"`{argv[0]} --version`: {exc.__class__.__name__}")
        return EngineVersion(None, "unknown", "; ".join(why))
    version = _clean(done.stdout) if done.returncode == 0 else None
    if not version:
        why.append(f"`{argv[0]} --version` exited {done.returncode} without a version")
        return EngineVersion(None, "unknown", "; ".join(why))
    cache.put(key, version)
    return EngineVersion(version, "vllm --version", exe)
