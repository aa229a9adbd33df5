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


def test_a_runs_logs_travel_as_one_archive(tmp_path: Path) -> None:
    """The device machine brings back a few files: logs, summaries and profiles are packed, the
    compile cache and lock files are not, nor the archive itself when it lies in the folder."""
    import tarfile

    out = tmp_path / "out"
    (out / "mp1" / "state" / "logs").mkdir(parents=True)
    (out / "cache" / "vllm").mkdir(parents=True)
    (out / "mp1" / "daemon.log").write_text("ready\n")
    (out / "mp1" / "state" / "logs" / "qwen3-8b-mp1.log").write_text("GPU KV cache size: 1 tokens\n")
    (out / "summary.json").write_text("{}")
    (out / "mp1" / "state" / "daemon.lock").write_text("")
    (out / "cache" / "vllm" / "graph.json").write_text("{}")
    dest = out / "logs.tar.gz"
    assert gpu_validate.archive_logs([out], dest) == 3
    with tarfile.open(dest) as tar:
        assert sorted(tar.getnames()) == ["out/mp1/daemon.log", "out/mp1/state/logs/qwen3-8b-mp1.log", "out/summary.json"]
