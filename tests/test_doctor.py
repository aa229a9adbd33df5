"""`supervisor doctor` on this machine (simulated GPU), with a port taken, a bad directory, a
missing engine command, and NVML failing."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llm_supervisor.host import doctor, gpus as hardware
from llm_supervisor.host.tenants import Tenant
from llm_supervisor.host.topology import Topology
from llm_supervisor.errors import RuntimeFailure
from llm_supervisor.store.lock import DaemonLock
from llm_supervisor.host.doctor import Check, format_checks, port_free, run_doctor
from llm_supervisor.config.loader import load_profile
from llm_supervisor.config.settings import Settings

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "simgpu"))
    for name in ("NAME", "COUNT", "TOTAL_MIB", "OTHER_MIB"):
        monkeypatch.delenv(f"LLM_SUPERVISOR_SIM_GPU_{name}", raising=False)


def settings_for(tmp_path: Path, **kw) -> Settings:
    values = {"state_dir": tmp_path / "state", "api_port": free_port(), "profiles_dir": PROFILES, **kw}
    return Settings(**values)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_simulate_on_this_machine(tmp_path, sim_env):
    profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=[f"vllm.port={free_port()}"])
    checks = run_doctor(settings_for(tmp_path), profile, simulate=True)
    got = by_name(checks)
    assert list(got) == ["gpu driver", "gpus vs profile", "gpu processes", "gpu health", "cpus", "numa_balancing",
                         "placement", "numactl", "mempolicy", "engine command", "engine version", "api port",
                         "engine port", "state dir", "log dir"]
    assert all(c.status in ("ok", "warn", "fail") for c in checks)
    assert got["gpu driver"].status == "ok" and "simulated GPU" in got["gpu driver"].detail
    assert "NVIDIA GeForce RTX 4090 D" in got["gpu driver"].detail
    assert got["gpus vs profile"].status == "ok"
    assert got["gpu processes"].status == "ok" and got["gpu health"].status == "ok"
    assert got["cpus"].status in ("ok", "warn")
    assert got["mempolicy"].status in ("ok", "warn")
    simulator = importlib.util.find_spec("llm_supervisor.simulator") is not None
    assert got["engine command"].status == ("ok" if simulator else "fail")
    assert got["api port"].status == "ok" and got["engine port"].status == "ok"
    assert got["state dir"].status == "ok" and (tmp_path / "state").is_dir()
    assert got["log dir"].status == "ok" and (tmp_path / "state" / "logs").is_dir()
    assert [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".doctor-")] == []
    text = format_checks(checks)
    assert len(text.splitlines()) == len(checks) + 1
    assert text.splitlines()[0].startswith("ok    gpu driver")
    assert "[" not in text  # the CLI prints through rich, which would take [words] for markup


def test_port_in_use_is_a_failure(tmp_path, sim_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert port_free("127.0.0.1", port)[0] is False
        checks = by_name(run_doctor(settings_for(tmp_path, api_port=port), None, simulate=True))
        assert checks["api port"].status == "fail"
        assert f"127.0.0.1:{port} cannot be bound" in checks["api port"].detail
        assert "LLM_SUPERVISOR_API_PORT" in checks["api port"].fix
        assert checks["api port"].detail.endswith(f"pid {os.getpid()} listens there")  # who holds it, named
        assert "fix: stop it or change LLM_SUPERVISOR_API_PORT" in format_checks(list(checks.values()))
    assert port_free("127.0.0.1", port)[0] is True
    assert checks["gpus vs profile"].status == "warn"  # no profile: nothing to compare


def test_engine_port_in_use(tmp_path, sim_env, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        profile = load_profile("4090d-qwen3-4b", PROFILES, overrides=[f"vllm.port={port}"])
        checks = by_name(run_doctor(settings_for(tmp_path), profile, simulate=True))
        monkeypatch.setattr(doctor, "port_holder", lambda port: None)  # a listener of another user: not visible
        unseen = by_name(run_doctor(settings_for(tmp_path), profile, simulate=True))["engine port"]
    assert checks["engine port"].status == "fail"
    assert "vllm.port" in checks["engine port"].fix
    assert unseen.status == "fail" and unseen.detail == f"127.0.0.1:{port} cannot be bound (Address already in use)"
    assert unseen.fix.startswith(f"stop what listens there (ss -ltnp 'sport = :{port}'")


def test_unwritable_state_dir_and_missing_engine(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fake = hardware.SimulatedInventory(hardware.simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path)}))
    monkeypatch.setattr(hardware, "inventory", lambda simulate, sim_config=None: fake)
    settings = settings_for(tmp_path, state_dir=blocker / "state", engine_command="no-such-engine-xyz serve")
    checks = by_name(run_doctor(settings, None, simulate=False))
    assert checks["state dir"].status == "fail" and "not writable" in checks["state dir"].detail
    assert checks["engine command"].status == "fail"
    assert "no-such-engine-xyz not found on PATH" in checks["engine command"].detail
    settings = settings_for(tmp_path, engine_command=f"{sys.executable} -m vllm.entrypoints.openai.api_server")
    assert by_name(run_doctor(settings, None, simulate=False))["engine command"].status == "ok"


def test_no_gpu_and_profile_mismatch(tmp_path, sim_env, monkeypatch):
    class Broken:
        def gpus(self):
            raise hardware.NoGpuFound("no NVIDIA GPU found (NVML: Driver Not Loaded)")

        def driver_version(self):
            return None

    monkeypatch.setattr(hardware, "inventory", lambda simulate, sim_config=None: Broken())
    profile = load_profile("3080x2-qwen3-8b", PROFILES, overrides=[f"vllm.port={free_port()}"])
    checks = by_name(run_doctor(settings_for(tmp_path), profile, simulate=False))
    assert checks["gpu driver"].status == "fail"
    assert checks["gpu driver"].detail == "no NVIDIA GPU found (NVML: Driver Not Loaded)"
    assert "nvidia-smi" in checks["gpu driver"].fix
    assert checks["gpus vs profile"].status == "fail"
    monkeypatch.undo()
    monkeypatch.setenv("LLM_SUPERVISOR_SIM_GPU_DIR", str(tmp_path / "simgpu"))
    checks = by_name(run_doctor(settings_for(tmp_path), profile, simulate=True))  # one simulated 4090 D
    assert checks["gpus vs profile"].status == "fail"
    assert "expected 2× /RTX 3080/ with 20 GiB, found 1× NVIDIA GeForce RTX 4090 D with 24.0 GiB" in checks["gpus vs profile"].detail


def test_numa_balancing_and_quota_checks():
    two = Topology(nodes={0: [0, 1], 1: [2, 3]}, allowed_cpus=[0, 1, 2, 3], numa_balancing=1, cpu_quota=1.5)
    assert doctor._check_balancing(two).status == "warn"
    assert "kernel.numa_balancing=0" in doctor._check_balancing(two).fix
    one = Topology(nodes={0: [0, 1]}, allowed_cpus=[0, 1], numa_balancing=1)
    assert doctor._check_balancing(one).status == "ok"
    cpus = doctor._check_cpus(two)
    assert cpus.status == "warn" and "quota 1.5 CPUs" in cpus.detail


def test_a_crashing_check_is_reported_not_raised(tmp_path, sim_env, monkeypatch):
    monkeypatch.setattr(doctor, "_check_numactl", lambda: 1 / 0)
    checks = by_name(run_doctor(settings_for(tmp_path), None, simulate=True))
    assert checks["numactl"].status == "fail" and "ZeroDivisionError" in checks["numactl"].detail


# ---------------------------------------------------------------- a daemon runs with this state dir


def test_the_state_dirs_lock_names_the_daemon_that_holds_it(tmp_path):
    lock = DaemonLock(tmp_path / "state")
    assert lock.holder() is None and not lock.path.exists()  # asking creates nothing
    lock.acquire()
    try:
        assert DaemonLock(tmp_path / "state").holder() == os.getpid()
        with pytest.raises(RuntimeFailure, match=rf"another llm-supervisor \(pid {os.getpid()}\) is running"):
            DaemonLock(tmp_path / "state").acquire()
    finally:
        lock.release()
    assert DaemonLock(tmp_path / "state").holder() is None


def test_ports_held_by_this_state_dirs_daemon_or_its_engine_are_expected(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mine = doctor._check_port("api port", "127.0.0.1", port, "LLM_SUPERVISOR_API_PORT", daemon_pid=os.getpid())
        theirs = doctor._check_port("api port", "127.0.0.1", port, "LLM_SUPERVISOR_API_PORT", daemon_pid=None)
    assert mine.status == "warn"
    assert mine.detail == f"127.0.0.1:{port} is in use by the llm-supervisor running with this state dir, pid {os.getpid()}"
    assert theirs.status == "fail" and theirs.detail.endswith(f"pid {os.getpid()} listens there")
    assert "LLM_SUPERVISOR_API_PORT" in theirs.fix
    engine = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n"
                               "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                               "print(s.getsockname()[1], flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        child_port = int(engine.stdout.readline())
        check = doctor._check_port("engine port", "127.0.0.1", child_port, "--set vllm.port=…", daemon_pid=os.getpid())
    finally:
        engine.kill()
        engine.wait()
    assert check.status == "warn" and check.detail.endswith(f"pid {os.getpid()} (its engine, pid {engine.pid})")


def test_the_engine_of_this_state_dirs_daemon_on_the_gpu_is_no_warning(monkeypatch):
    def tenant(pid: int, supervisor_pid: int | None) -> Tenant:
        return Tenant(gpu_index=0, pid=pid, used_mib=20_000, name="VLLM::EngineCore", cmdline="", user="me",
                      vllm=True, ours=False, visible=True, supervisor_pid=supervisor_pid)

    held = [tenant(200, 100)]
    monkeypatch.setattr(hardware, "inventory", lambda simulate, sim_config=None: object())
    monkeypatch.setattr(doctor, "gpu_tenants", lambda inventory: held)
    mine = doctor._check_tenants(True, daemon_pid=100)
    assert mine.status == "ok" and mine.detail.startswith("the engine of the llm-supervisor running with this state dir: pid 200")
    assert doctor._check_tenants(True, daemon_pid=None).status == "warn"
    held.append(tenant(300, 999))  # another supervisor's engine on the same GPU still warns
    both = doctor._check_tenants(True, daemon_pid=100)
    assert both.status == "warn" and both.detail.startswith("engines of running supervisors: pid 300")
    assert "this state dir: pid 200" in both.detail
