"""The generated vLLM log fixtures are well-formed: every log has its sources file with one entry
per line, and each version's expected.json parses and names every log. No parsing of the logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parent / "fixtures" / "generated"
VERSIONS = sorted(p for p in ROOT.glob("vllm-*") if p.is_dir())
FACTS = {"model_weights_gib", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency",
         "max_concurrency_context", "cuda_graph_gib", "engine_init_seconds", "tensor_parallel_size"}
KINDS = {"kv_cache_too_small", "no_kv_cache_memory", "insufficient_free_memory", "cuda_oom",
         "max_model_len_too_large", "engine_dead", "port_in_use", "model_not_found", "unknown"}


def test_versions_present() -> None:
    names = {p.name for p in VERSIONS}
    assert {"vllm-0.8.5", "vllm-0.26.0", "vllm-0.28.0", "vllm-0.31.0", "vllm-0.33.0", "vllm-0.34.0"} <= names


@pytest.mark.parametrize("folder", VERSIONS, ids=lambda p: p.name)
def test_every_log_has_sources(folder: Path) -> None:
    for log in sorted(folder.glob("*.log")):
        sources = log.with_suffix(".sources.txt")
        assert sources.is_file(), f"{log.name} has no sources file"
        lines = log.read_bytes().split(b"\n")
        assert lines[-1] == b"", f"{log.name} does not end with a newline"
        entries = [e for e in sources.read_text(encoding="utf-8").splitlines() if not e.startswith("#")]
        assert len(entries) == len(lines) - 1, f"{sources.name}: {len(entries)} entries, {len(lines) - 1} lines"
        for number, entry in enumerate(entries, start=1):
            fields = entry.split("\t")
            assert len(fields) == 4 and fields[0] == str(number), f"{sources.name}:{number}: {entry!r}"
            assert fields[1] == folder.name.removeprefix("vllm-")
            assert fields[2].startswith(("vllm/", "external: ", "CPython")), f"{sources.name}:{number}"


@pytest.mark.parametrize("folder", VERSIONS, ids=lambda p: p.name)
def test_expected_json(folder: Path) -> None:
    data = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    version = folder.name.removeprefix("vllm-")
    assert data["vllm_version"] == version
    logs = {p.name for p in folder.glob("*.log")}
    assert set(data["scenarios"]) == logs
    for name, entry in data["scenarios"].items():
        assert entry["vllm_version"] == version
        assert entry["outcome"] in {"ready", "failed", "incomplete"}, name
        assert set(entry["facts"]) == FACTS, name
        failure = entry["failure"]
        if failure is not None:
            assert failure["kind"] in KINDS, name
            assert isinstance(failure["values"], dict), name
