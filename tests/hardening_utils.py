"""Small helpers for the hardening tests (tests/test_hardening_*.py).

The daemon runs through tests/daemon_harness.py's DaemonRun; this adds what only the hardening
tests need: a clean environment for one-shot CLI runs, a fake engine (tests/fake_engine.py)
launched through the real daemon, process-tree snapshots and a secret scanner.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from daemon_harness import DaemonRun, wait_until

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
FAKE_ENGINE = TESTS / "fake_engine.py"
DRIVER = TESTS / "hardening_driver.py"


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any LLM_SUPERVISOR_*/VLLM_* variable, with the
    checkout on PYTHONPATH and the state and simulated GPU under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_SUPERVISOR_", "VLLM_"))
           and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["LLM_SUPERVISOR_STATE_DIR"] = str(tmp / "state")
    env["LLM_SUPERVISOR_SIM_GPU_DIR"] = str(tmp / "simgpu")
    env["HF_HOME"] = str(tmp / "hf")
    env.update(extra)
    return env


def cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llm_supervisor", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_bad_input(result: subprocess.CompletedProcess[str], expected_lines: int | None = None) -> list[str]:
    """Exit 2, no traceback, every stderr line `error: …`; returns the lines."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    both = result.stdout + result.stderr
    assert "Traceback" not in both, both[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines, "no error line"
    for line in lines:
        assert line.startswith("error: "), line
    if expected_lines is not None:
        assert len(lines) == expected_lines, lines
    return lines


class FakeEngineRun(DaemonRun):
    """The real daemon (`up --simulate`: simulated GPU, real launcher, guard, API) whose engine
    command is tests/fake_engine.py instead of the simulator. `mode` picks its misbehaviour."""

    def __init__(self, tmp: Path, mode: str, **kw: Any) -> None:
        env = dict(kw.pop("env", {}) or {})
        env["HARDENING_FAKE_ENGINE"] = f"{sys.executable} {FAKE_ENGINE}"
        env["FAKE_ENGINE_MODE"] = mode
        super().__init__(tmp, env=env, **kw)

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(DRIVER), *super().argv[3:]]


def alive(pids: Iterable[int]) -> list[int]:
    """The pids of `pids` that still run (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def poll(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    return wait_until(predicate, timeout, interval, what)


def find_secrets(secrets: Iterable[str], texts: dict[str, str | bytes]) -> list[str]:
    """Where any secret occurs: ["<source>: <secret prefix>…", …] (empty when clean)."""
    hits = []
    for name, text in texts.items():
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        for secret in secrets:
            if secret.encode() in data:
                hits.append(f"{name}: {secret[:6]}…")
    return hits
