"""Who holds the GPU, and whether it is healthy.

NVML is read through a fake pynvml (running processes, Xid events, ECC counters, retired pages,
row remapping); the policy gets the faults and the tenants as inputs (pure); the daemon runs over
the simulated GPU, which can hold another program's memory (`simulator.tenant`), keep a leftover
EngineCore of a `vllm serve` started by hand, and inject faults (LLM_SUPERVISOR_SIM_GPU_XID, …).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import psutil
import pynvml
import pytest

from daemon_harness import REPO, DaemonRun, free_port, wait_until
from hardening_utils import alive
from llm_supervisor.config.loader import load_profile
from llm_supervisor.host import simgpu
from llm_supervisor.host.gpus import GpuHealth, GpuProcess, NvmlInventory
from llm_supervisor.host.tenants import is_vllm, name_process
from llm_supervisor.vllm.failures import Failure, FailureKind
from llm_supervisor.vllm.recovery import GiveUp, Relaunch, decide

PROFILES = REPO / "profiles"
MIB = 1024 * 1024


# ---------------------------------------------------------------- NVML, faked


class FaultyNvml:
    """The pynvml functions the health and process readers call, for one GPU."""

    NVMLError = pynvml.NVMLError
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
    NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
    NVML_FEATURE_ENABLED = pynvml.NVML_FEATURE_ENABLED

    def __init__(self) -> None:
        self.events: list[int] = []
        self.ecc = 0
        self.pending = False
        self.remap = (0, 0, 0, 0)
        self.lost = False
        self.procs = [SimpleNamespace(pid=4242, usedGpuMemory=6000 * MIB),
                      SimpleNamespace(pid=4243, usedGpuMemory=None)]

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, i): return "h0"
    def nvmlDeviceGetName(self, h): return b"NVIDIA H100 80GB HBM3"
    def nvmlDeviceGetUUID(self, h): return "GPU-h100"
    def nvmlDeviceGetIndex(self, h): return 0

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        if self.lost:
            raise pynvml.NVMLError_GpuIsLost()
        return SimpleNamespace(total=81559 * MIB, used=1000 * MIB, free=80559 * MIB)

    def nvmlDeviceGetComputeRunningProcesses(self, h): return self.procs
    def nvmlDeviceGetGraphicsRunningProcesses(self, h): raise pynvml.NVMLError_NotSupported()
    def nvmlEventSetCreate(self): return "set"
    def nvmlDeviceRegisterEvents(self, h, kinds, es): assert kinds == pynvml.nvmlEventTypeXidCriticalError

    def nvmlEventSetWait_v2(self, es, timeout):
        assert timeout == 0  # never waits
        if not self.events:
            raise pynvml.NVMLError_Timeout()
        return SimpleNamespace(device="h0", eventData=self.events.pop(0))

    def nvmlDeviceGetTotalEccErrors(self, h, kind, counter): return self.ecc
    def nvmlDeviceGetRetiredPages(self, h, cause): return [0x1000] if cause == 1 and self.pending else []
    def nvmlDeviceGetRetiredPagesPendingStatus(self, h): return 1 if self.pending else 0
    def nvmlDeviceGetRemappedRows(self, h): return self.remap


def test_nvml_health_reads_xids_ecc_pages_and_rows() -> None:
    nvml = FaultyNvml()
    inv = NvmlInventory(nvml)
    (h,) = inv.health()
    assert h.faults() == [] and h.ecc_uncorrected == 0 and h.retired_pending is False
    nvml.events = [79, 13]  # 13: an application's fault, not the GPU's
    nvml.ecc, nvml.pending, nvml.remap = 2, True, (0, 1, 1, 0)
    (h,) = inv.health()
    assert [x for x, _ in h.xids] == [79, 13]
    faults = h.faults()
    assert any("Xid 79 (the GPU has fallen off the bus)" in f for f in faults)
    assert not any("Xid 13" in f for f in faults)
    assert "GPU 0: 2 uncorrectable ECC error(s) since the driver loaded" in faults
    assert any("pending retirement" in f for f in faults) and any("pending remapping" in f for f in faults)
    assert h.retired_pages == 1
    nvml.lost = True
    (h,) = inv.health()
    assert h.lost and h.faults()[0].startswith("GPU 0 is lost")


def test_nvml_processes_by_pid_with_memory() -> None:
    procs = NvmlInventory(FaultyNvml()).processes()
    assert [(p.pid, p.used_mib) for p in procs] == [(4242, 6000), (4243, None)]


def test_faults_count_only_since_the_gpu_last_proved_usable() -> None:
    before = GpuHealth(0, "u", xids=[(79, 100.0)], ecc_uncorrected=3)
    now = GpuHealth(0, "u", xids=[(79, 100.0), (48, 300.0)], ecc_uncorrected=5)
    assert now.faults_since(before, since=200.0) == [
        f for f in now.faults_since(before, 200.0)]  # stable
    texts = now.faults_since(before, since=200.0)
    assert len(texts) == 2 and "Xid 48 (double-bit ECC error)" in texts[0]
    assert texts[1] == "GPU 0: 2 new uncorrectable ECC error(s) (5 since the driver loaded)"
    assert GpuHealth(0, "u", ecc_uncorrected=5).faults_since(GpuHealth(0, "u", ecc_uncorrected=5), 0) == []


def test_tenants_are_named_and_vllm_is_told_apart() -> None:
    assert is_vllm("VLLM::EngineCore", ["VLLM::EngineCore"])
    assert is_vllm("vllm", ["/usr/bin/python3", "/venv/bin/vllm", "serve", "Qwen/Qwen3-4B"])
    assert is_vllm("python3", ["python3", "-m", "vllm.entrypoints.openai.api_server"])
    assert not is_vllm("python3", ["python3", "train.py", "--model", "vllm-like"])
    me = name_process(GpuProcess(0, "u", os.getpid(), 123), ours={os.getpid()})
    assert me.visible and me.ours and me.used_mib == 123 and not me.vllm and me.started
    gone = name_process(GpuProcess(0, "u", 2 ** 22 + 12345, 7, "VLLM::EngineCore"))
    assert not gone.visible and gone.vllm and "not visible from here" in gone.describe()


def test_an_engine_of_another_running_supervisor_is_not_foreign(tmp_path) -> None:
    """Two supervisors sharing a GPU: each sees the other's engine, run by its guard, as that
    supervisor's (never ended by --end-foreign-engines); once that supervisor is gone, the engine
    left behind is an orphan like any other."""
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', "
            "'VLLM::EngineCore']); time.sleep(120)")
    guard = subprocess.Popen([sys.executable, "-c", code, "llm_supervisor.runtime.guard", "--parent-pid",
                              str(daemon.pid)], start_new_session=True)
    try:
        engine = wait_until(lambda: psutil.Process(guard.pid).children(), 30, what="the engine")[0]
        seen = name_process(GpuProcess(0, "u", engine.pid, 900))
        assert seen.vllm and not seen.ours and seen.supervisor_pid == daemon.pid and not seen.foreign_engine
        assert f"run by llm-supervisor pid {daemon.pid}" in seen.describe()
        assert name_process(GpuProcess(0, "u", engine.pid, 900), me=daemon.pid).supervisor_pid is None
        daemon.kill()
        daemon.wait(30)
        orphan = name_process(GpuProcess(0, "u", engine.pid, 900))
        assert orphan.supervisor_pid is None and orphan.foreign_engine
    finally:
        os.killpg(guard.pid, signal.SIGKILL)
        guard.wait(30)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(30)


# ---------------------------------------------------------------- the policy: faults and tenants are inputs


def _profile():
    return load_profile("4090d-qwen3-4b", PROFILES)


def test_a_failure_with_a_fault_gives_up_naming_the_fault() -> None:
    profile = _profile()
    failure = Failure(FailureKind.UNKNOWN, "RuntimeError: CUDA error: unknown error", {"exit_code": 1})
    plain = decide(failure, profile.vllm, profile, [], None)
    assert isinstance(plain, Relaunch)
    stopped = decide(failure, profile.vllm, profile, [], None, gpu_faults=["GPU 0: Xid 79 (the GPU has fallen off the bus)"])
    assert isinstance(stopped, GiveUp)
    assert stopped.reason.startswith("GPU hardware fault: GPU 0: Xid 79 (the GPU has fallen off the bus); the failure "
                                     "(unknown: RuntimeError: CUDA error: unknown error) coincides with it")
    # even a memory failure that would have a computed fix: the GPU comes first
    kv = Failure(FailureKind.KV_CACHE_TOO_SMALL, "…", {"needed_gib": 5.62, "available_gib": 1.61, "max_model_len": 40960,
                                                      "estimated_max_model_len": 11744})
    assert isinstance(decide(kv, profile.vllm, profile, [], None, gpu_faults=["GPU 0: 1 new uncorrectable ECC error(s)"]),
                      GiveUp)


def test_memory_decisions_name_the_other_tenants() -> None:
    profile = _profile()
    short = Failure(FailureKind.INSUFFICIENT_FREE_MEMORY, "Free memory on device (17.8/23.99 GiB) on startup is less than "
                    "desired GPU memory utilization (0.9, 21.59 GiB)",
                    {"free_gib": 17.8, "total_gib": 23.99, "requested_utilization": 0.9, "requested_gib": 21.59})
    who = ["pid 4242 (python train.py, user bob) holds 6,000 MiB on GPU 0"]
    d = decide(short, profile.vllm, profile, [], None, gpu_free_mib=17.8 * 1024, gpu_total_mib=23.99 * 1024, gpu_tenants=who)
    assert isinstance(d, Relaunch) and d.reason.endswith("; other processes hold memory on the GPU: " + who[0])
    # not for failures that have nothing to do with memory
    dead = Failure(FailureKind.ENGINE_DEAD, "EngineDeadError", {})
    assert "other processes" not in decide(dead, profile.vllm, profile, [], None, gpu_tenants=who).reason


# ---------------------------------------------------------------- the daemon over the simulated GPU


def test_a_launch_failure_on_a_faulty_gpu_stops_the_loop(daemons) -> None:
    run: DaemonRun = daemons(env={"LLM_SUPERVISOR_SIM_GPU_XID": "79", "LLM_SUPERVISOR_FAILED_LINGER_S": "60"}).start()
    status = run.wait_state("failed")
    assert status["attempt"] == 1 and status["restarts"] == 0  # no relaunch
    assert "GPU hardware fault: GPU 0: Xid 79 (the GPU has fallen off the bus)" in status["message"]
    assert "RuntimeError: CUDA error: unknown error" in status["message"]
    assert [h["event"] for h in status["history"]] == ["launch", "exit", "give_up"]
    assert any("Xid 79" in f for h in status["gpu_health"] for f in h["faults"])
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 3


def test_an_engine_death_with_a_new_fault_is_not_relaunched(daemons) -> None:
    run: DaemonRun = daemons(env={"LLM_SUPERVISOR_FAILED_LINGER_S": "60"}).start()
    run.wait_ready()
    core = wait_until(run.engine_core, what="EngineCore")
    config = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(run.gpu_dir)})
    simgpu.inject_fault(config, 0, xid=48, ecc_uncorrected=1)
    core.kill()
    status = run.wait_state("failed")
    assert status["attempt"] == 1
    assert "Xid 48 (double-bit ECC error)" in status["message"] and "1 new uncorrectable ECC error" in status["message"]
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 3


def _start_tenant(run: DaemonRun, mib: int, title: str) -> subprocess.Popen[bytes]:
    env = {**run.env}
    proc = subprocess.Popen([sys.executable, "-m", "llm_supervisor.simulator.tenant", "--mib", str(mib), "--title", title],
                            env=env, cwd=str(REPO), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stdout is not None and b"holding" in proc.stdout.readline()
    return proc


def test_another_program_is_named_in_status_and_in_the_recovery_reason(daemons) -> None:
    # vLLM 0.26 refuses a start when free memory is below the budget (0.34 sizes a smaller cache)
    run: DaemonRun = daemons(sets=["recovery.plan_first_launch=false"],
                             env={"LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"})
    tenant = _start_tenant(run, 6000, "python train.py")
    try:
        run.start()
        status = run.wait_ready()
        named = [t for t in status["gpu_tenants"] if t["pid"] == tenant.pid]
        assert named and named[0]["name"] == "python train.py" and not named[0]["vllm"] and named[0]["used_mib"] == 6000
        relaunch = [h for h in status["history"] if h["event"] == "relaunch"]
        assert relaunch and relaunch[0]["failure"]["kind"] == "insufficient_free_memory"
        assert f"other processes hold memory on the GPU: pid {tenant.pid} (python train.py" in relaunch[0]["reason"]
        assert "holds 6,000 MiB on GPU 0" in relaunch[0]["reason"]
        assert f"other processes on the GPU: pid {tenant.pid} (python train.py" in run.stderr()
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0
        assert tenant.poll() is None  # not ours: left alone
    finally:
        tenant.terminate()
        tenant.wait(10)


def _leftover_engine(run: DaemonRun) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """`vllm serve` started by hand (the simulator) on the same GPU, then its API server killed:
    its EngineCore stays, holding memory, as vLLM's does."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llm_supervisor.simulator", "serve", "Qwen/Qwen3-4B", "--port",
                               str(port), "--gpu-memory-utilization", "0.5", "--max-model-len", "4096"],
                              env={**run.env, "LLM_SUPERVISOR_SIM_STARTUP_S": "0.2"}, cwd=str(REPO),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              start_new_session=True)

    def core() -> psutil.Process | None:
        for child in psutil.Process(server.pid).children(recursive=True):
            try:
                if "VLLM::EngineCore" in " ".join(child.cmdline()) and simgpu.held_mib(
                        simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(run.gpu_dir)}), 0) > 5000:
                    return child
            except psutil.Error:
                continue
        return None

    engine_core = wait_until(core, 60, 0.05, "the hand-started EngineCore holding memory")
    server.kill()
    server.wait(10)
    assert alive([engine_core.pid])  # vLLM's EngineCore outlives its API server
    return server, engine_core


@pytest.mark.slow
def test_a_leftover_engine_is_reported_and_ended_only_when_asked(daemons) -> None:
    first: DaemonRun = daemons()
    server, core = _leftover_engine(first)
    try:
        first.start()
        status = first.wait_status(lambda s: s["attempt"] >= 1 and s["gpu_tenants"], what="the tenants")
        mine = [t for t in status["gpu_tenants"] if t["pid"] == core.pid]
        assert mine and mine[0]["vllm"] and not mine[0]["ours"] and mine[0]["name"].startswith("VLLM::EngineCore")
        wait_until(lambda: f"leftover vLLM engine processes that are not ours hold GPU memory: pid {core.pid} "
                           "(VLLM::EngineCore" in first.stderr(), 30, what="the warning")
        assert alive([core.pid])  # reported, not ended
        first.signal(signal.SIGTERM)
        first.wait_exit(30)
        assert alive([core.pid])

        second: DaemonRun = daemons(args=["--end-foreign-engines"], api_port=first.api_port,
                                    engine_port=first.engine_port)
        second.gpu_dir, second.env["LLM_SUPERVISOR_SIM_GPU_DIR"] = first.gpu_dir, str(first.gpu_dir)
        second.start()
        status = second.wait_ready()
        assert not alive([core.pid])
        ended = [h for h in status["history"] if h["event"] == "foreign_engines_ended"]
        assert ended and f"pid {core.pid} (VLLM::EngineCore" in ended[0]["reason"]
        assert status["attempt"] == 1  # the launch had the GPU to itself
        second.signal(signal.SIGTERM)
        assert second.wait_exit(30) == 0
    finally:
        if alive([core.pid]):
            core.kill()


def test_end_foreign_engines_leaves_another_running_supervisors_engine_alone(daemons) -> None:
    """Seen on a real H200: a second supervisor started with --end-foreign-engines ended the
    engine of a running one on the same GPU. Now it names that engine as the other supervisor's."""
    first: DaemonRun = daemons()
    first.start()
    ready = first.wait_ready()
    engine_pid = ready["pid"]
    second: DaemonRun = daemons(args=["--end-foreign-engines"])
    second.gpu_dir, second.env["LLM_SUPERVISOR_SIM_GPU_DIR"] = first.gpu_dir, str(first.gpu_dir)
    second.start()
    status = second.wait_status(lambda s: s["attempt"] >= 1 and s["gpu_tenants"], what="the tenants")
    theirs = [t for t in status["gpu_tenants"] if t["supervisor_pid"] == first.proc.pid]
    assert theirs and all(t["vllm"] and not t["ours"] for t in theirs)
    assert not any(h["event"] == "foreign_engines_ended" for h in status["history"])
    assert "ending leftover vLLM engine" not in second.stderr()
    assert alive([engine_pid]) and first.status()["state"] == "ready"
    second.signal(signal.SIGTERM)
    second.wait_exit(30)
    assert alive([engine_pid])
