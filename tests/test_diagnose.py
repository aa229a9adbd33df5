"""`supervisor diagnose`: CONTRACT's JSON from real and synthetic vLLM logs, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_supervisor.host.logfiles import diagnose_file
from llm_supervisor.vllm.diagnosis import format_diagnosis
from llm_supervisor.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "vllm-0.26.0-h100"
FACT_KEYS = {"model_weights_gib", "available_kv_cache_gib", "kv_cache_tokens", "max_concurrency",
             "max_concurrency_context", "cuda_graph_gib", "engine_init_seconds", "tensor_parallel_size"}
CONTRACT_KINDS = {"kv_cache_too_small", "no_kv_cache_memory", "insufficient_free_memory", "cuda_oom",
                  "max_model_len_too_large", "engine_dead", "port_in_use", "model_not_found", "unknown"}


def check_shape(result: dict) -> None:
    assert set(result) == {"vllm_version", "outcome", "facts", "failure", "remedy"}
    assert result["outcome"] in ("ready", "failed", "incomplete")
    assert set(result["facts"]) == FACT_KEYS
    if result["failure"] is not None:
        assert set(result["failure"]) == {"kind", "message", "values"}
        assert result["failure"]["kind"] in CONTRACT_KINDS
    if result["remedy"] is not None:
        assert "why" in result["remedy"]
        assert set(result["remedy"]) <= {"max_model_len", "gpu_memory_utilization", "enforce_eager", "max_num_seqs", "why"}
    json.dumps(result)


def test_kv_cache_too_small_fixture() -> None:
    result = diagnose_file(FIXTURES / "kv-cache-too-small.log")
    check_shape(result)
    why = result["remedy"].pop("why")
    message = result["failure"].pop("message")
    assert result == {
        "vllm_version": "0.26.0",
        "outcome": "failed",
        "facts": {"model_weights_gib": 7.56, "available_kv_cache_gib": 0.92, "kv_cache_tokens": None,
                  "max_concurrency": None, "max_concurrency_context": None, "cuda_graph_gib": None,
                  "engine_init_seconds": None, "tensor_parallel_size": 1},
        "failure": {"kind": "kv_cache_too_small",
                    "values": {"needed_gib": 5.62, "available_gib": 0.92, "max_model_len": 40960,
                               "estimated_max_model_len": 6688}},
        "remedy": {"max_model_len": 6688},
    }
    assert message.startswith("ValueError: To serve at least one request with the model's max seq len (40960)")
    assert "40960 → 6688" in why


@pytest.mark.parametrize("name, tokens", [("ready-then-sigterm.log", 111808), ("apiserver-sigkilled.log", 111808)])
def test_ready_fixtures(name: str, tokens: int) -> None:
    result = diagnose_file(FIXTURES / name)
    check_shape(result)
    assert result["outcome"] == "ready"
    assert result["failure"] is None and result["remedy"] is None
    assert result["facts"]["kv_cache_tokens"] == tokens
    assert result["facts"]["max_concurrency"] == 11.18


def test_engine_killed_fixture() -> None:
    result = diagnose_file(FIXTURES / "ready-then-enginecore-killed.log")
    check_shape(result)
    assert result["outcome"] == "failed"
    assert result["failure"]["kind"] == "engine_dead"
    assert "EngineDeadError" in result["failure"]["message"]
    assert set(result["remedy"]) == {"why"}
    assert "same arguments" in result["remedy"]["why"]
    assert result["facts"]["kv_cache_tokens"] == 110464


def write(tmp_path: Path, lines: list[str], name: str = "vllm.log") -> Path:
    path = tmp_path / name
    path.write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    return path


FREE_MEMORY_LOG = [
    "(APIServer pid=10) INFO 11-21 07:30:00 [api_utils.py:345]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.26.0",
    "(APIServer pid=10) INFO 11-21 07:30:00 [api_utils.py:273] non-default args: {'model_tag': '/m', 'port': 8004, "
    "'model': '/m', 'max_model_len': 10000, 'gpu_memory_utilization': 0.3}",
    "(EngineCore pid=11) INFO 11-21 07:30:14 [core.py:116] Initializing a V1 LLM engine (v0.26.0) with config: "
    "model='/m', max_seq_len=10000, tensor_parallel_size=1, enforce_eager=False",
    "(EngineCore pid=11) ERROR 11-21 07:30:33 [core.py:1330] EngineCore failed to start.",
    "(EngineCore pid=11) ERROR 11-21 07:30:33 [core.py:1330] ValueError: Free memory on device cuda:0 (9.49/79.18 GiB) "
    "on startup is less than desired GPU memory utilization (0.3, 23.75 GiB). Decrease GPU memory utilization or "
    "reduce GPU memory used by other processes.",
    "(EngineCore pid=11) ValueError: Free memory on device cuda:0 (9.49/79.18 GiB) on startup is less than desired GPU "
    "memory utilization (0.3, 23.75 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
    "(APIServer pid=10) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
]


def test_insufficient_free_memory_remedy(tmp_path: Path) -> None:
    result = diagnose_file(write(tmp_path, FREE_MEMORY_LOG))
    check_shape(result)
    assert result["failure"]["kind"] == "insufficient_free_memory"
    assert result["failure"]["values"] == {"free_gib": 9.49, "total_gib": 79.18, "requested_utilization": 0.3,
                                           "requested_gib": 23.75}
    assert result["remedy"]["gpu_memory_utilization"] == 0.08  # (9.49 − 1.58 − 1.0 graphs)/79.18
    assert "max_model_len" not in result["remedy"]


def test_default_utilization_follows_the_version(tmp_path: Path) -> None:
    """No util in the args: vLLM's default (0.92 from v0.21); the KV remedy does not touch it."""
    lines = [
        "(APIServer pid=1) INFO 05-15 1:00:00 [api_server.py:1] vLLM API server version 0.21.0",
        "(EngineCore pid=2) ERROR 05-15 1:00:09 [core.py:1] ValueError: No available memory for the cache blocks. Try "
        "increasing `gpu_memory_utilization` when initializing the engine. See https://docs.vllm.ai/en/latest/"
        "configuration/conserving_memory/ for more details.",
    ]
    result = diagnose_file(write(tmp_path, lines))
    assert result["failure"]["kind"] == "no_kv_cache_memory"
    assert result["vllm_version"] == "0.21.0"
    # nothing else printed: one step up (0.92 + 0.05), capped at the 0.95 bound
    assert result["remedy"]["gpu_memory_utilization"] == 0.95
    assert "0.92 → 0.95" in result["remedy"]["why"]


def test_truncated_log_is_incomplete(tmp_path: Path) -> None:
    lines = (FIXTURES / "ready-then-sigterm.log").read_text(encoding="utf-8").split("\n")[:25]
    result = diagnose_file(write(tmp_path, lines))
    check_shape(result)
    assert result["outcome"] == "incomplete"
    assert result["failure"] is None and result["remedy"] is None
    assert result["facts"]["model_weights_gib"] == 7.56


def test_last_run_of_an_appended_log_counts(tmp_path: Path) -> None:
    failed = (FIXTURES / "kv-cache-too-small.log").read_bytes()
    ready = (FIXTURES / "ready-then-sigterm.log").read_bytes()
    path = tmp_path / "appended.log"
    path.write_bytes(failed + ready)
    result = diagnose_file(path)
    assert result["outcome"] == "ready"
    assert result["failure"] is None
    assert result["facts"]["available_kv_cache_gib"] == 15.36


def test_bad_arguments_reported_as_unknown_kind(tmp_path: Path) -> None:
    lines = [
        "INFO 05-01 10:00:00 [__init__.py:239] Automatically detected platform cuda.",
        "usage: vllm serve [model_tag] [options]",
        "vllm serve: error: unrecognized arguments: --max-modle-len 4096",
    ]
    result = diagnose_file(write(tmp_path, lines))
    check_shape(result)
    assert result["failure"] == {"kind": "unknown", "message": "vllm serve: error: unrecognized arguments: "
                                 "--max-modle-len 4096", "values": {}}
    assert "--max-modle-len" in result["remedy"]["why"]


def test_v0_ready_log(tmp_path: Path) -> None:
    lines = [
        "INFO 05-01 10:00:01 [api_server.py:1043] vLLM API server version 0.8.5",
        "INFO 05-01 10:00:10 [model_runner.py:1140] Model loading took 7.5635 GiB and 3.123456 seconds",
        "INFO 05-01 10:00:15 [executor_base.py:112] # cuda blocks: 5525, # CPU blocks: 1820",
        "INFO 05-01 10:00:15 [executor_base.py:117] Maximum concurrency for 32768 tokens per request: 2.70x",
        "INFO 05-01 10:00:31 [api_server.py:1090] Starting vLLM API server on http://0.0.0.0:8000",
    ]
    result = diagnose_file(write(tmp_path, lines))
    assert result["outcome"] == "ready"
    assert result["facts"]["kv_cache_tokens"] == 88400


def test_format_diagnosis_names_the_flags() -> None:
    text = format_diagnosis(diagnose_file(FIXTURES / "kv-cache-too-small.log"))
    assert "vLLM 0.26.0: failed" in text
    assert "Failure: kv_cache_too_small" in text
    assert "Remedy: --max-model-len 6688" in text
    assert "--set vllm.max_model_len=6688" in text
    assert "7.56 GiB" in text


def test_format_diagnosis_eager_and_util_flags() -> None:
    text = format_diagnosis({
        "vllm_version": None, "outcome": "failed", "facts": {},
        "failure": {"kind": "no_kv_cache_memory", "message": "m", "values": {}},
        "remedy": {"gpu_memory_utilization": 0.95, "enforce_eager": True, "why": "w"},
    })
    assert "Remedy: --gpu-memory-utilization 0.95 --enforce-eager" in text
    assert "vllm.enforce_eager=true" in text


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "empty"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "binary"),
        (b"just some notes\nnothing to see here\n", "does not look like a vLLM log"),
    ],
)
def test_not_a_vllm_log(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(content)
    with pytest.raises(BadInput) as info:
        diagnose_file(path)
    assert info.value.exit_code == 2
    assert len(info.value.lines()) == 1 and words in info.value.lines()[0] and str(path) in info.value.lines()[0]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        diagnose_file(tmp_path / "nope.log")
    with pytest.raises(BadInput, match="directory"):
        diagnose_file(tmp_path)


# ---------------------------------------------------------------- the command line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "llm_supervisor", "diagnose", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_json() -> None:
    proc = run_cli(str(FIXTURES / "kv-cache-too-small.log"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == diagnose_file(FIXTURES / "kv-cache-too-small.log")
    assert result["failure"]["kind"] == "kv_cache_too_small"
    assert result["remedy"]["max_model_len"] == 6688


def test_cli_text_and_bad_input(tmp_path: Path) -> None:
    proc = run_cli(str(FIXTURES / "kv-cache-too-small.log"))
    assert proc.returncode == 0, proc.stderr
    assert "--max-model-len 6688" in proc.stdout
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list\n[/b] milk\n", encoding="utf-8")
    proc = run_cli(str(notes))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "does not look like a vLLM log" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_text_with_brackets_in_messages(tmp_path: Path) -> None:
    """Messages carry `[Errno 98]` and `[/…]`; the text output must print them as they are."""
    path = write(tmp_path, ["(APIServer pid=1) ERROR:    [Errno 98] error while attempting to bind on address "
                            "('0.0.0.0', 8000): address already in use [/x]"])
    proc = run_cli(str(path))
    assert proc.returncode == 0, proc.stderr
    assert "[Errno 98]" in proc.stdout and "[/x]" in proc.stdout


def test_prose_about_vllm_or_other_tools_is_not_a_log(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("We run vLLM on the 4090.\nusage: make [target]\nmake: error: no rule\n", encoding="utf-8")
    with pytest.raises(BadInput, match="does not look like a vLLM log"):
        diagnose_file(path)


def test_bare_vllm_error_paste_is_diagnosed(tmp_path: Path) -> None:
    path = write(tmp_path, ["ValueError: No available memory for the cache blocks. Try increasing "
                            "`gpu_memory_utilization` when initializing the engine."])
    result = diagnose_file(path)
    assert result["outcome"] == "failed" and result["failure"]["kind"] == "no_kv_cache_memory"


def test_no_kv_memory_log_without_gpu_total(tmp_path: Path) -> None:
    """util 0.08 below the weights (0.26 on an H100); the log never says the GPU's size: one step up."""
    lines = [
        "(APIServer pid=1) INFO 11-21 07:29:00 [api_utils.py:273] non-default args: {'model': '/m', "
        "'gpu_memory_utilization': 0.08, 'max_model_len': 10000}",
        "(EngineCore pid=2) INFO 11-21 07:29:18 [model_runner.py:305] Model loading took 7.56 GiB and 1.8 seconds",
        "(EngineCore pid=2) INFO 11-21 07:29:42 [gpu_worker.py:560] Available KV cache memory: -1.41 GiB",
        "(EngineCore pid=2) ERROR 11-21 07:29:42 [core.py:1330] ValueError: No available memory for the cache blocks. "
        "Try increasing `gpu_memory_utilization` when initializing the engine (this flag also controls CPU memory "
        "reservation on the CPU backend, despite its name). See https://docs.vllm.ai/en/latest/configuration/"
        "conserving_memory/ for more details.",
    ]
    result = diagnose_file(write(tmp_path, lines))
    assert result["facts"]["available_kv_cache_gib"] == -1.41
    assert result["failure"]["kind"] == "no_kv_cache_memory"
    assert result["remedy"]["gpu_memory_utilization"] == 0.13
