"""What a new user trips over on the command line: the help text, `plan`'s hardware and target
lines, bad `plan` numbers, an ignored `affinity.cpus`, prose given to `diagnose`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_supervisor.config.loader import load_profile
from llm_supervisor.errors import BadInput
from llm_supervisor.host.logfiles import diagnose_file

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "llm_supervisor", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def plan_env(tmp_path: Path) -> dict[str, str]:
    return {"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state"), "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu")}


def test_help_shows_flags_as_flags() -> None:
    proc = cli("up", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "<bool>" not in proc.stdout
    simulate = next(line for line in proc.stdout.splitlines() if "--simulate" in line)
    assert simulate.split()[0] == "--simulate" and simulate.split()[1] == "run"  # no value after the flag
    assert "--set KEY=VALUE" in proc.stdout and "--profile NAME|PATH" in proc.stdout


def test_shell_completion_is_offered(tmp_path: Path) -> None:
    proc = cli("--help")
    assert "--install-completion" in proc.stdout
    # the completion script is for the shell the command runs in (found from its parent
    # processes): run it from bash, whatever runs the tests
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    proc = subprocess.run(["bash", "-c", '"$0" -m llm_supervisor --show-completion; exit $?', sys.executable],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "complete" in proc.stdout and "_COMPLETE" in proc.stdout
    from llm_supervisor.cli import _complete_profiles

    assert _complete_profiles("40") == ["4090d-qwen3-4b"] and _complete_profiles("zz") == []


@pytest.mark.parametrize("flag, value", [("--gpu-count", "0"), ("--gpu-count", "-2"), ("--gpu-memory-gib", "0")])
def test_plan_refuses_impossible_hardware(flag: str, value: str, plan_env: dict[str, str]) -> None:
    proc = cli("plan", "--profile", "4090d-qwen3-4b", "--simulate", flag, value, env=plan_env)
    assert proc.returncode == 2
    assert flag in proc.stderr and "Traceback" not in proc.stderr


def test_plan_says_which_gpu_it_planned_for_and_the_target_in_words(plan_env: dict[str, str]) -> None:
    proc = cli("plan", "--profile", "4090d-qwen3-4b", "--simulate", "--gpu-memory-gib", "80",
               "--set", "target={min_concurrency: 8, context: 8192}", env=plan_env)
    assert proc.returncode == 0, proc.stderr
    hardware = next(line for line in proc.stdout.splitlines() if line.startswith("hardware"))
    assert "planned for 1× RTX 4090 D with 80.0 GiB" in hardware and "found 1×" in hardware
    assert "target 8 requests of 8,192 tokens at once: met" in proc.stdout
    assert "{'min_concurrency'" not in proc.stdout
    plain = cli("plan", "--profile", "4090d-qwen3-4b", "--simulate", env=plan_env)
    assert "hardware  matches:" in plain.stdout and "80.0 GiB" not in plain.stdout


def test_affinity_cpus_without_explicit_mode_is_refused() -> None:
    with pytest.raises(BadInput) as info:
        load_profile("4090d-qwen3-4b", PROFILES, overrides=["affinity.cpus=[2,3]"])
    (line,) = info.value.lines()
    assert line.startswith("--set affinity.cpus: used only with affinity.mode: explicit (mode is auto)")
    assert "--set affinity.mode=explicit" in line
    prof = load_profile("4090d-qwen3-4b", PROFILES, overrides=["affinity.mode=explicit", "affinity.cpus=[2,3]"])
    assert prof.affinity.cpus == [2, 3]
    with pytest.raises(BadInput) as info:
        load_profile("4090d-qwen3-4b", PROFILES, overrides=["affinity.mode=none", "affinity.numa_nodes=[0]"])
    assert info.value.lines() == ["--set affinity.numa_nodes: used only with affinity.mode: explicit (mode is none); "
                                  "set affinity.mode: explicit (--set affinity.mode=explicit) or drop numa_nodes"]


PROSE = """# Recovery
To see recovery at work, ask for a context that cannot fit:
    supervisor up --profile 4090d-qwen3-4b --simulate
# vLLM:  "… (5.62 GiB KV cache is needed, which is larger than the available KV cache memory
#         (1.61 GiB). Based on the available memory, the estimated maximum model length is 11744."
The EngineCore and the APIServer of `vllm serve` print to vllm/logs.
"""


def test_diagnose_refuses_prose_that_quotes_a_vllm_failure(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(PROSE, encoding="utf-8")
    with pytest.raises(BadInput) as info:
        diagnose_file(path)
    assert info.value.exit_code == 2 and len(info.value.lines()) == 1
    assert "does not look like a vLLM log" in info.value.lines()[0]
    proc = cli("diagnose", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "does not look like a vLLM log" in proc.stderr


H100_LOG = ROOT / "tests" / "fixtures" / "vllm-0.26.0-h100" / "kv-cache-too-small.log"


def test_diagnose_reads_a_log_through_a_pipe_whole(tmp_path: Path) -> None:
    """`journalctl … | supervisor diagnose -` and `diagnose <(kubectl logs …)`: a pipe can be read
    once, so the check that it is a log must not eat its first 64 KiB."""
    from_file = diagnose_file(H100_LOG)
    text = H100_LOG.read_text(encoding="utf-8")
    piped = subprocess.run([sys.executable, "-m", "llm_supervisor", "diagnose", "-", "--json"], input=text, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    result = json.loads(piped.stdout)
    assert result["failure"] == from_file["failure"] and result["facts"] == from_file["facts"]
    assert result["failure"]["kind"] == "kv_cache_too_small"
    read, write = os.pipe()  # as /dev/fd/N from a shell's <(…)
    with os.fdopen(write, "w") as pipe_in:
        pipe_in.write(text)
    try:
        assert diagnose_file(f"/dev/fd/{read}")["failure"] == from_file["failure"]
    finally:
        os.close(read)
    empty = subprocess.run([sys.executable, "-m", "llm_supervisor", "diagnose", "-"], input="", cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and empty.stderr.strip() == "error: stdin: empty file; does not look like a vLLM log"


@pytest.mark.parametrize("make, says", [
    (lambda d: d, "is a directory, not a log file"),
    (lambda d: d / "missing.log", "no such file"),
    (lambda d: (d / "empty.log").write_bytes(b"") and d / "empty.log", "empty file; does not look like a vLLM log"),
    (lambda d: (d / "bin.log").write_bytes(b"INFO \x00\x01") and d / "bin.log", "binary data; does not look like"),
])
def test_a_file_that_cannot_be_a_log_is_one_line(tmp_path: Path, make, says: str) -> None:
    path = make(tmp_path)
    with pytest.raises(BadInput) as info:
        diagnose_file(path)
    assert info.value.lines() == [f"{path}: {says}"] or info.value.lines()[0].startswith(f"{path}: {says}")


def test_calibrating_from_what_is_no_startup_log_says_why_in_one_line(tmp_path: Path) -> None:
    from llm_supervisor.store import calibration as calibration_store
    from llm_supervisor.vllm.calibration import CalibrationError

    prose = tmp_path / "notes.log"
    prose.write_text("INFO 12-03 10:00:00 [x.py:1] nothing about memory here\n", encoding="utf-8")
    with pytest.raises(CalibrationError) as err:
        calibration_store.learn_from_log(prose, model="m", gpu_name="g", gpu_total_gib=80)
    assert err.value.lines() == [f"{prose}: no vLLM startup figures in it (model weights, KV cache memory, "
                                 "utilization): not a vLLM log, or one that ended before vLLM profiled its memory"]
    with pytest.raises(CalibrationError) as err:  # an 80 GB card's log planned for a 24 GB one
        calibration_store.learn_from_log(H100_LOG, model="m", gpu_name="g", gpu_total_gib=24)
    assert err.value.lines() == [f"{H100_LOG}: the numbers do not add up (requested 0.12 × 24.00 GiB = 2.88 GiB < "
                                 "weights 7.56 + KV 0.92 GiB): was that run's GPU larger? plan with its total memory "
                                 "(--gpu-memory-gib)"]


def test_diagnose_still_reads_a_traceback_through_vllm(tmp_path: Path) -> None:
    path = tmp_path / "tb.log"
    path.write_text('Traceback (most recent call last):\n'
                    '  File "/usr/lib/python3/site-packages/vllm/v1/worker/gpu_worker.py", line 560, in f\n'
                    '    raise ValueError(msg)\n'
                    'ValueError: No available memory for the cache blocks. Try increasing '
                    '`gpu_memory_utilization` when initializing the engine.\n', encoding="utf-8")
    assert diagnose_file(path)["failure"]["kind"] == "no_kv_cache_memory"


def test_plan_starts_from_the_arguments_that_last_reached_ready_as_up_does(tmp_path: Path) -> None:
    """`plan` shows what `up` would launch: after a ready start, the arguments that reached it
    (when the profile still asks for the same); it reads the state file and never writes it."""
    from llm_supervisor.planning.launch import RECOVERABLE_KEYS
    from llm_supervisor.store.state import StateStore, host_key

    env = {"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state")}
    first = cli("plan", "--profile", "4090d-qwen3-4b", "--simulate", "--json", env=env)
    assert first.returncode == 0, first.stderr
    plan = json.loads(first.stdout)
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    key = host_key(profile.name, [g["name"] for g in plan["hardware"]["gpus"]])
    store = StateStore(tmp_path / "state")
    requested = {k: getattr(profile.vllm, k) for k in RECOVERABLE_KEYS}
    store.remember_ready(key, requested, {**requested, "max_model_len": 12288, "enforce_eager": True}, {})
    store.save()
    before = (tmp_path / "state" / "state.json").read_bytes()
    again = cli("plan", "--profile", "4090d-qwen3-4b", "--simulate", "--json", env=env)
    assert again.returncode == 0, again.stderr
    argv = json.loads(again.stdout)["argv"]
    assert argv[argv.index("--max-model-len") + 1] == "12288" and "--enforce-eager" in argv
    assert any("last reached ready" in n for n in json.loads(again.stdout)["notes"])
    assert (tmp_path / "state" / "state.json").read_bytes() == before


TABLE_OF_NINE = ("from rich.table import Table; from llm_supervisor import cli; t = Table(); "
                 "[t.add_column(f'heading {i}') for i in range(9)]; t.add_row(*[f'{i * 1111}' for i in range(9)]); "
                 "cli.out.print(t)")


def test_tables_piped_to_a_file_are_not_squeezed_into_80_columns() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run([sys.executable, "-c", TABLE_OF_NINE], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    assert "…" not in piped.stdout and all(f"heading {i}" in piped.stdout for i in range(9)), piped.stdout
    narrow = subprocess.run([sys.executable, "-c", TABLE_OF_NINE], cwd=ROOT,
                            env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "60"}, capture_output=True, text=True, timeout=60)
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60  # an explicit width is kept


STATUS_GRID = ("from llm_supervisor import cli; from llm_supervisor.api.client import format_status; "
               "cli.out.print(format_status({'state': 'ready', 'model': 'Qwen/Qwen3-4B', 'kv_cache_tokens': 123456, "
               "'max_model_len': 40960, 'gpu_memory_utilization': 0.9}))")


def test_status_piped_to_a_script_has_no_padded_lines() -> None:
    piped = subprocess.run([sys.executable, "-c", STATUS_GRID], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    lines = piped.stdout.splitlines()
    assert "KV cache     123,456 tokens" in lines and "utilization  0.9 of GPU memory" in lines, piped.stdout
    assert [line for line in lines if line != line.rstrip()] == []
