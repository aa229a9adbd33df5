"""The real-GPU validation scripts' own judgement: the process scan that decides "no engine left"
picks vLLM's processes and the guard, never a shell whose command line only mentions them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_validate  # noqa: E402

CASES = [
    (["VLLM::EngineCore"], True),
    (["VLLM::Worker_TP0"], True),
    (["/usr/bin/python3", "-m", "vllm.entrypoints.openai.api_server", "--port", "8000"], True),
    (["/opt/venv/bin/python", "/opt/venv/bin/vllm", "serve", "/models/qwen3-8b"], True),
    (["/opt/venv/bin/vllm", "serve", "/models/qwen3-8b"], True),
    (["/usr/bin/python3", "-m", "llm_supervisor.runtime.guard", "--control-fd", "5"], True),
    (["bash", "-c", "python3 scripts/gpu_validate.py; pgrep -f 'vllm serve' VLLM:: llm_supervisor.runtime.guard"], False),
    (["python3", "scripts/gpu_multi.py", "--only", "mp1"], False),
    (["/opt/venv/bin/vllm", "--version"], False),
]


@pytest.mark.parametrize(("argv", "engine"), CASES, ids=[" ".join(a)[:40] for a, _ in CASES])
def test_engine_scan_judges_the_program_not_the_text(monkeypatch: pytest.MonkeyPatch, argv: list[str], engine: bool) -> None:
    def scan(match):  # procs_anywhere over one process
        return ["1 x"] if match(argv, Path(argv[0]).name) else []

    monkeypatch.setattr(gpu_validate, "procs_anywhere", scan)
    assert bool(gpu_validate.engine_procs_anywhere()) is engine
