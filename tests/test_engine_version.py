"""Knowing the engine's vLLM before launch (host/engineversion.py) and showing it: the
distribution metadata of the engine command's Python, else `vllm --version` once, cached per
command in the state dir; `plan` (text and --json) names the version and the accounting it
planned with, `--simulate` takes the simulator's (LLM_SUPERVISOR_SIM_VLLM_VERSION, default the
newest supported), `doctor` reports it.

The fake installs are small scripts in tmp_path: a "python" that answers the metadata query, a
console script whose `#!` line names it, and a `vllm` CLI that counts how often it ran."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.settings import load_settings
from llm_supervisor.host import engineversion
from llm_supervisor.host.doctor import run_doctor
from llm_supervisor.planning.launch import build_plan, format_plan
from llm_supervisor.vllm import memory

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "profiles"


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_python(folder: Path, version: str | None) -> Path:
    """A `python3` that answers `-c "…importlib.metadata… version('vllm')"` like a venv with (or
    without) vLLM installed, and otherwise runs the real interpreter."""
    folder.mkdir(parents=True, exist_ok=True)
    answer = f'echo {version}; exit 0' if version else 'echo "PackageNotFoundError: vllm" >&2; exit 1'
    return script(folder / "python3", f'#!/bin/sh\ncase "$2" in *"version(\'vllm\')"*) {answer};; esac\n'
                                      f'exec {sys.executable} "$@"\n')


def fake_cli(folder: Path, python: Path | None, version: str, counter: Path) -> Path:
    """pip's console script `vllm`: its `#!` names the venv's python; `--version` prints after log noise."""
    shebang = f"#!{python}" if python else "#!/bin/sh"
    body = (f'echo x >> {counter}\necho "INFO 12-01 10:00:00 [__init__.py:1] Automatically detected platform cuda."\n'
            f'echo {version}\n')
    if python:  # a Python console script: run the shell body through /bin/sh
        return script(folder / "vllm", f"{shebang}\nimport subprocess, sys\nsys.exit(subprocess.call(['/bin/sh', '-c', {body!r}]))\n")
    return script(folder / "vllm", f"{shebang}\n{body}")


def test_metadata_of_the_console_scripts_python(tmp_path: Path) -> None:
    python = fake_python(tmp_path / "venv" / "bin", "0.34.0")
    counter = tmp_path / "cli-runs"
    fake_cli(tmp_path / "venv" / "bin", python, "9.9.9", counter)
    env = {**os.environ, "PATH": f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    found = engineversion.detect(["vllm", "serve"], state_dir=tmp_path / "state", env=env)
    assert (found.version, found.source, found.detail) == ("0.34.0", "distribution metadata", str(python))
    assert not counter.exists()  # the slow `vllm --version` never ran
    # `python -m vllm.entrypoints…`: the interpreter is argv[0] itself
    direct = engineversion.detect([str(python), "-m", "vllm.entrypoints.openai.api_server"], state_dir=None, env=env)
    assert direct.version == "0.34.0"


def test_pips_sh_trampoline_names_the_python(tmp_path: Path) -> None:
    python = fake_python(tmp_path / "a very long venv path" / "bin", "0.26.0")
    launcher = script(tmp_path / "vllm", f"#!/bin/sh\n'''exec' \"{python}\" \"$0\" \"$@\"\n' '''\nimport sys\n")
    assert engineversion.script_python(str(launcher)) == [str(python)]
    assert engineversion.detect([str(launcher), "serve"], state_dir=None).version == "0.26.0"


def test_vllm_version_runs_once_per_install_and_is_cached(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counter = tmp_path / "cli-runs"
    cli = fake_cli(bin_dir, None, "0.33.0", counter)  # a shell wrapper: no Python to ask
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    state = tmp_path / "state"
    first = engineversion.detect(["vllm", "serve"], state_dir=state, env=env)
    assert (first.version, first.source) == ("0.33.0", "vllm --version")
    again = engineversion.detect(["vllm", "serve"], state_dir=state, env=env)
    assert (again.version, again.source) == ("0.33.0", "cache")
    assert counter.read_text().count("x") == 1
    assert json.loads((state / engineversion.CACHE_FILE).read_text())  # kept in the state dir
    # an upgrade rewrites the script: its identity changes, and the version is asked again
    cli.write_text(cli.read_text().replace("0.33.0", "0.34.0"))
    os.utime(cli, ns=(cli.stat().st_atime_ns, cli.stat().st_mtime_ns + 10**9))
    assert engineversion.detect(["vllm", "serve"], state_dir=state, env=env).version == "0.34.0"
    assert counter.read_text().count("x") == 2


def test_what_cannot_tell_says_why(tmp_path: Path) -> None:
    missing = engineversion.detect(["no-such-vllm-xyz", "serve"], state_dir=tmp_path)
    assert missing.version is None and "not found on PATH" in missing.detail
    other = engineversion.detect(["/bin/true", "serve"], state_dir=tmp_path)
    assert other.version is None and "is not vLLM's CLI" in other.detail  # never runs an unknown program with --version
    python = fake_python(tmp_path / "bare" / "bin", None)
    bare = engineversion.detect([str(python), "-m", "vllm.entrypoints.openai.api_server"], state_dir=tmp_path)
    assert bare.version is None and "has no vllm distribution" in bare.detail
    slow = script(tmp_path / "vllm", "#!/bin/sh\nsleep 5\necho 0.34.0\n")
    timed = engineversion.detect([str(slow), "serve"], state_dir=tmp_path, cli_timeout_s=0.5)
    assert timed.version is None and "took more than 0.5 s" in timed.detail


def _settings(tmp_path: Path, **kw: object):
    return load_settings(state_dir=tmp_path / "state", **kw)


def test_plan_names_the_version_and_the_accounting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "gpu"))
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    monkeypatch.delenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", raising=False)
    plan = build_plan(_settings(tmp_path), profile, simulate=True)
    data = plan.to_json()
    assert (data["vllm_version"], data["accounting"]) == (memory.NEWEST_SUPPORTED_VERSION, "extensible-0.34")
    assert data["vllm_version_source"]["source"] == "simulator"
    assert data["predicted"]["accounting"] == "extensible-0.34" and data["predicted"]["vllm_version"] == "0.34.0"
    assert plan.extra_env["LLM_SUPERVISOR_SIM_VLLM_VERSION"] == "0.34.0"  # the simulator speaks what was planned
    text = format_plan(plan)
    assert "vllm      0.34.0 (simulator" in text and "accounting extensible-0.34" in text
    assert "before warm-up" in text  # 0.34's two numbers: the estimate it prints, the cache after warm-up
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.26.0")
    old = build_plan(_settings(tmp_path), profile, simulate=True).to_json()
    assert (old["vllm_version"], old["accounting"]) == ("0.26.0", "budget-0.26")
    assert old["predicted"]["kv_cache_tokens"] > data["predicted"]["kv_cache_tokens"]  # graphs outside 0.26's budget


def test_plan_without_a_known_version_plans_for_the_newest_and_says_so(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    plan = build_plan(_settings(tmp_path, engine_command="no-such-vllm-xyz serve"), profile, simulate=False)
    data = plan.to_json()
    assert data["vllm_version"] == memory.NEWEST_SUPPORTED_VERSION
    assert data["vllm_version_source"]["version"] is None
    assert any("not known before launch" in n for n in data["predicted"]["notes"])
    assert "not found on PATH" in format_plan(plan)


def test_up_without_a_gpu_points_at_the_simulator_and_plan_still_plans(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_supervisor.host import gpus as hardware

    class NoDriver:
        def gpus(self) -> list:
            raise hardware.NoGpuFound("no NVIDIA GPU found (NVML: Driver Not Loaded)")

    monkeypatch.setattr(hardware, "inventory", lambda simulate, sim_config=None: NoDriver())
    profile = load_profile("4090d-qwen3-4b", PROFILES)
    with pytest.raises(hardware.NoGpuFound) as exc:
        build_plan(_settings(tmp_path), profile, simulate=False, for_launch=True)
    assert exc.value.lines() == ["no NVIDIA GPU found (NVML: Driver Not Loaded); without a GPU, --simulate runs the "
                                 "bundled vLLM simulator"]
    plan = build_plan(_settings(tmp_path), profile, simulate=False)  # `plan` reports it and plans for the card
    assert "no NVIDIA GPU found (NVML: Driver Not Loaded)" in plan.warnings


def test_plan_json_from_the_command_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_SUPERVISOR_", "VLLM_"))}
    env.update({"PYTHONPATH": str(ROOT), "LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state"),
                "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"), "LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"})
    done = subprocess.run([sys.executable, "-m", "llm_supervisor", "plan", "--profile", "4090d-qwen3-4b",
                           "--simulate", "--json"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["vllm_version"], data["accounting"]) == ("0.26.0", "budget-0.26")


def test_doctor_reports_the_engine_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "gpu"))
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.34.0")
    checks = {c.name: c for c in run_doctor(_settings(tmp_path), None, simulate=True)}
    assert checks["engine version"].status == "ok" and "extensible-0.34" in checks["engine version"].detail
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_VLLM_VERSION", "0.36.0")
    newer = {c.name: c for c in run_doctor(_settings(tmp_path), None, simulate=True)}["engine version"]
    assert newer.status == "warn" and "newer than the newest" in newer.detail
    unknown = {c.name: c for c in run_doctor(_settings(tmp_path, engine_command="no-such-vllm-xyz serve"), None,
                                             simulate=False)}["engine version"]
    assert unknown.status == "warn" and "not found on PATH" in unknown.detail


def test_status_text_names_the_vllm_that_runs() -> None:
    from rich.console import Console

    from llm_supervisor.api.client import format_status

    console = Console(record=True, width=120, color_system=None)
    console.print(format_status({"state": "ready", "vllm": {"version": "0.26.0", "printed": "0.26.0", "planned": "0.34.0",
                                                            "planned_source": "unknown", "accounting": "budget-0.26"}}))
    text = console.export_text()
    assert "0.26.0 (printed by the engine, planned for 0.34.0); KV accounting budget-0.26" in text


def test_a_model_folder_vllm_cannot_load_is_a_plan_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder without config.json fails vLLM's launch with model_not_found: `plan` and `up` say so
    first. A Mistral-format folder (params.json) loads in vLLM: no warning, only no prediction."""
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "gpu"))
    folder = tmp_path / "model"
    folder.mkdir()
    plan = build_plan(_settings(tmp_path), load_profile("4090d-qwen3-4b", PROFILES, overrides=[f"model.id={folder}"]),
                      simulate=True)
    assert any(f"{folder}: folder has no config.json" in w and "model_not_found" in w for w in plan.warnings)
    (folder / "params.json").write_text("{}")
    plan = build_plan(_settings(tmp_path), load_profile("4090d-qwen3-4b", PROFILES, overrides=[f"model.id={folder}"]),
                      simulate=True)
    assert not any("model_not_found" in w for w in plan.warnings)
    assert any("no prediction" in n and "params.json" in n for n in plan.notes)
