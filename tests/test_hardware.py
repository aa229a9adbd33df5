"""GPU inventory through a fake NVML injected at the module boundary, the simulated GPU, and
matching GPUs against a profile's hardware section."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from llm_supervisor.host import gpus as hardware, simgpu
from llm_supervisor.host.gpus import (
    Gpu,
    NoGpuFound,
    NvmlInventory,
    SimulatedInventory,
    cuda_env,
    cuda_visible_devices,
    decode_mask,
    gpu_memory,
    match_profile,
    nvml_to_sysfs_bus_id,
)
from llm_supervisor.config.profile import Hardware

MIB = 1024 * 1024


class FakeNvml:
    """The functions of pynvml that NvmlInventory calls, with NVML's real error classes."""

    NVMLError = pynvml.NVMLError

    def __init__(self, devices: list[dict], init_error: Exception | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: list[str] = []
        self.cpu_words_asked: list[int] = []

    def _log(self, name: str) -> None:
        self.calls.append(name)

    def nvmlInit(self):
        self._log("init")
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self._log("shutdown")

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.devices[i]

    def nvmlDeviceGetName(self, h):
        self._log("name")
        return h["name"]

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=h["busId"])

    nvmlMemory_v2 = pynvml.nvmlMemory_v2

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        self._log("memory")
        if version is not None:
            if "reserved_mib" not in h:  # an old driver: v2 not supported
                raise pynvml.NVMLError_NotSupported()
            return SimpleNamespace(total=h["total_mib"] * MIB, reserved=h["reserved_mib"] * MIB,
                                   used=h["used_mib"] * MIB, free=(h["total_mib"] - h["used_mib"]) * MIB)
        return SimpleNamespace(total=h["total_mib"] * MIB, used=h["used_mib"] * MIB,
                               free=(h["total_mib"] - h["used_mib"]) * MIB)

    def nvmlDeviceGetCpuAffinity(self, h, n):
        self.cpu_words_asked.append(n)
        words = list(h["cpu_words"])[:n]
        return words + [0] * (n - len(words))

    def nvmlDeviceGetMemoryAffinity(self, h, n, scope):
        assert scope == 0  # NVML_AFFINITY_SCOPE_NODE
        if h.get("mem_words") is None:
            raise pynvml.NVMLError_NotSupported()
        return list(h["mem_words"])[:n] + [0] * max(0, n - len(h["mem_words"]))

    def nvmlDeviceGetNumaNodeId(self, h):
        if h.get("numa_node") is None:
            raise pynvml.NVMLError_NotSupported()  # what x86 hosts answer
        return h["numa_node"]


def a10(i: int, bus: str, cpu_words: list[int], mem_words: list[int] | None = None, numa_node: int | None = None) -> dict:
    return {"name": "NVIDIA A10", "uuid": f"GPU-a10-{i}", "busId": bus, "total_mib": 23028, "used_mib": 512,
            "cpu_words": cpu_words, "mem_words": mem_words, "numa_node": numa_node}


# ---------------------------------------------------------------- pure helpers


def test_decode_mask():
    assert decode_mask([]) == []
    assert decode_mask([0]) == []
    assert decode_mask([0x3, 0x3]) == [0, 1, 64, 65]
    assert decode_mask([1 << 63]) == [63]
    assert decode_mask([0, 1]) == [64]
    assert decode_mask([0xFFFFFFFF]) == list(range(32))  # the H200 VM's mask
    assert decode_mask([0, 0, 0xF0]) == [132, 133, 134, 135]


def test_nvml_to_sysfs_bus_id():
    assert nvml_to_sysfs_bus_id("00000000:3B:00.0") == "0000:3b:00.0"
    assert nvml_to_sysfs_bus_id("00000001:C1:00.1") == "0001:c1:00.1"
    assert nvml_to_sysfs_bus_id("0000:3b:00.0") == "0000:3b:00.0"
    with pytest.raises(ValueError):
        nvml_to_sysfs_bus_id("GPU-1234")


# ---------------------------------------------------------------- NVML through a fake module


def test_nvml_inventory_reads_everything_and_survives_not_supported():
    devices = [
        a10(0, "00000000:17:00.0", [0x0000FFFF, 0x0000FFFF], mem_words=[0x1]),
        # CPUs 80-95 and 208-223 (≥64, second and fourth words), NUMA node from memory affinity 1
        a10(1, "00000000:98:00.0", [0, 0xFFFF0000, 0, 0xFFFF0000], mem_words=[0x2]),
        # GB200-style: GetNumaNodeId answers (the GPU's memory node)
        {**a10(2, "00000008:01:00.0", [0xFF], mem_words=[0x5], numa_node=2), "name": b"NVIDIA GB200"},
    ]
    nvml = FakeNvml(devices)
    inv = NvmlInventory(nvml, cpu_words=4)
    assert inv.driver_version() == "550.54.15"
    gpus = inv.gpus()
    assert [g.index for g in gpus] == [0, 1, 2]
    g0, g1, g2 = gpus
    assert (g0.uuid, g0.name, g0.bus_id, g0.sysfs_bus_id) == ("GPU-a10-0", "NVIDIA A10", "00000000:17:00.0", "0000:17:00.0")
    assert (g0.memory_total_mib, g0.memory_used_mib, g0.memory_free_mib) == (23028, 512, 22516)
    assert g0.cpu_affinity == list(range(16)) + list(range(64, 80))
    assert g0.memory_nodes == [0]
    assert g0.numa_node is None  # NVMLError_NotSupported on x86
    assert g1.cpu_affinity == list(range(80, 96)) + list(range(208, 224))
    assert g1.memory_nodes == [1]
    assert g2.name == "NVIDIA GB200" and g2.sysfs_bus_id == "0008:01:00.0"
    assert (g2.numa_node, g2.memory_nodes) == (2, [0, 2])
    assert set(nvml.cpu_words_asked) == {4}


def test_nvml_affinity_not_supported_is_none():
    dev = a10(0, "00000000:17:00.0", [])
    nvml = FakeNvml([dev])
    nvml.nvmlDeviceGetCpuAffinity = lambda h, n: (_ for _ in ()).throw(pynvml.NVMLError_NotSupported())
    g = NvmlInventory(nvml).gpus()[0]
    assert (g.cpu_affinity, g.memory_nodes, g.numa_node) == (None, None, None)


def test_default_cpu_words_cover_every_cpu(monkeypatch):
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 192)
    nvml = FakeNvml([a10(0, "00000000:17:00.0", [1, 0, 0, 1])])
    g = NvmlInventory(nvml).gpus()[0]
    assert nvml.cpu_words_asked[0] >= 3
    assert g.cpu_affinity[0] == 0


@pytest.mark.parametrize("error, words", [
    (pynvml.NVMLError_LibraryNotFound(), "libnvidia-ml.so.1 is not installed"),
    (pynvml.NVMLError_DriverNotLoaded(), "Driver Not Loaded"),
    (pynvml.NVMLError_Unknown(), "NVML: Unknown Error"),
])
def test_nvml_failures_become_no_gpu_found(error, words):
    inv = NvmlInventory(FakeNvml([], init_error=error))
    with pytest.raises(NoGpuFound) as exc:
        inv.gpus()
    assert exc.value.message.startswith("no NVIDIA GPU found (")
    assert words in exc.value.message
    assert exc.value.exit_code == 1


def test_nvml_zero_devices_is_no_gpu_found():
    with pytest.raises(NoGpuFound, match="NVML reports 0 devices"):
        NvmlInventory(FakeNvml([])).gpus()


def test_real_pynvml_on_this_machine_answers_or_says_why():
    """No mock: on a host without a driver, the real library's failure becomes a clear message."""
    inv = NvmlInventory()
    try:
        gpus = inv.gpus()
    except NoGpuFound as exc:
        assert exc.message.startswith("no NVIDIA GPU found (")
    else:
        assert gpus and all(g.uuid.startswith("GPU-") for g in gpus)
    finally:
        inv.close()


def test_memory_snapshot_is_one_call_per_gpu():
    nvml = FakeNvml([a10(0, "00000000:17:00.0", [1]), a10(1, "00000000:31:00.0", [1])])
    inv = NvmlInventory(nvml)
    first = gpu_memory(inv)
    assert first == [
        {"index": 0, "name": "NVIDIA A10", "memory_used_mib": 512, "memory_total_mib": 23028},
        {"index": 1, "name": "NVIDIA A10", "memory_used_mib": 512, "memory_total_mib": 23028},
    ]
    nvml.calls.clear()
    nvml.devices[1]["used_mib"] = 20000
    assert gpu_memory(inv)[1]["memory_used_mib"] == 20000
    assert nvml.calls == ["memory", "memory"]  # no re-init, no name lookups
    inv.close()
    assert nvml.calls[-1] == "shutdown"


# ---------------------------------------------------------------- simulated


def test_simulated_inventory(tmp_path):
    config = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path), "LLM_SUPERVISOR_SIM_GPU_COUNT": "2",
                                 "LLM_SUPERVISOR_SIM_GPU_NAME": "NVIDIA GeForce RTX 3080",
                                 "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": "20480"})
    simgpu.hold(config, 1, 4000)
    inv = SimulatedInventory(config)
    gpus = inv.gpus()
    assert [g.sysfs_bus_id for g in gpus] == ["0000:17:00.0", "0000:27:00.0"]
    assert [g.bus_id for g in gpus] == ["00000000:17:00.0", "00000000:27:00.0"]
    assert [g.memory_used_mib for g in gpus] == [300, 4300]
    assert gpus[1].memory_free_mib == 20480 - 4300
    assert all(g.cpu_affinity is None and g.memory_nodes is None for g in gpus)
    assert inv.driver_version() == "simulated"
    assert hardware.detect(True, config) == gpus
    assert gpu_memory(inv)[1] == {"index": 1, "name": "NVIDIA GeForce RTX 3080", "memory_used_mib": 4300,
                                  "memory_total_mib": 20480}
    simgpu.hold(config, 1, 0)


def test_detect_with_zero_simulated_gpus(tmp_path):
    config = simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path), "LLM_SUPERVISOR_SIM_GPU_COUNT": "0"})
    with pytest.raises(NoGpuFound, match="no NVIDIA GPU found"):
        hardware.detect(True, config)


# ---------------------------------------------------------------- matching profiles


def card(index: int, name: str, mib: int) -> Gpu:
    return Gpu(index=index, uuid=f"GPU-{index}", name=name, bus_id=f"00000000:{index + 1:02X}:00.0",
               sysfs_bus_id=f"0000:{index + 1:02x}:00.0", memory_total_mib=mib, memory_used_mib=0, memory_free_mib=mib)


P4090D = Hardware(gpu_name="RTX 4090 ?D", gpu_count=1, gpu_memory_gib=24)
P3080X2 = Hardware(gpu_name="RTX 3080", gpu_count=2, gpu_memory_gib=20)
PA10X8 = Hardware(gpu_name=r"\bA10\b", gpu_count=8, gpu_memory_gib=24)


def test_h100_does_not_match_4090d_profile():
    result = match_profile([card(0, "NVIDIA H100 80GB HBM3", 81559)], P4090D)
    assert not result.match and result.chosen == []
    assert result.reasons[0] == "expected 1× /RTX 4090 ?D/ with 24 GiB, found 1× NVIDIA H100 80GB HBM3 with 79.6 GiB"
    assert "no GPU name matches" in result.reasons[1]


@pytest.mark.parametrize("name, mib", [("NVIDIA GeForce RTX 4090 D", 24564), ("NVIDIA GeForce RTX 4090D", 24564),
                                       ("nvidia geforce rtx 4090 d", 23028)])
def test_4090d_matches(name, mib):
    result = match_profile([card(0, name, mib)], P4090D)
    assert result.match and [g.index for g in result.chosen] == [0]


def test_memory_tolerance_bounds():
    low, high = hardware.memory_range_mib(24)
    assert low <= 23028 and 24564 <= high  # what "24 GB" cards report
    assert not match_profile([card(0, "NVIDIA GeForce RTX 4090 D", 16384)], P4090D).match
    assert not match_profile([card(0, "NVIDIA GeForce RTX 4090 D", 49140)], P4090D).match


def test_3080_count_and_memory_reasons():
    one = match_profile([card(0, "NVIDIA GeForce RTX 3080", 20480)], P3080X2)
    assert not one.match
    assert one.reasons[0] == "expected 2× /RTX 3080/ with 20 GiB, found 1× NVIDIA GeForce RTX 3080 with 20.0 GiB"
    assert "only 1 of the 2 GPUs needed match" in one.reasons
    small = match_profile([card(0, "NVIDIA GeForce RTX 3080", 10240), card(1, "NVIDIA GeForce RTX 3080", 10240)], P3080X2)
    assert not small.match
    assert small.reasons[0] == "expected 2× /RTX 3080/ with 20 GiB, found 2× NVIDIA GeForce RTX 3080 with 10.0 GiB"
    assert "2 of them report memory outside 18.0-21.0 GiB" in small.reasons[1]


def test_first_n_matching_are_chosen():
    gpus = [card(0, "Tesla T4", 15360)] + [card(i, "NVIDIA A10", 23028) for i in range(1, 10)]
    result = match_profile(gpus, PA10X8)
    assert result.match
    assert [g.index for g in result.chosen] == list(range(1, 9))
    assert "left out" in result.reasons[1]
    # \bA10\b must not take an A100
    assert not match_profile([card(i, "NVIDIA A100-SXM4-80GB", 81920) for i in range(8)], PA10X8).match


def test_cuda_env_keys_by_uuid():
    chosen = [card(3, "NVIDIA A10", 23028), card(5, "NVIDIA A10", 23028)]
    chosen[1].uuid = "5f0a-no-prefix"
    assert cuda_visible_devices(chosen) == "GPU-3,GPU-5f0a-no-prefix"
    assert cuda_env(chosen) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "GPU-3,GPU-5f0a-no-prefix"}


def test_cuda_total_is_nvml_total_less_the_driver_reserve():
    # What a real H100 80GB HBM3 answered (driver 580.159.04): NVML v1 total 81,559 MiB with 480
    # "used", v2 reserved 480, torch.cuda.mem_get_info total 81,079 MiB = vLLM's 79.18 GiB.
    h100 = {**a10(0, "00000000:17:00.0", [0xFF], mem_words=[0x1]), "name": b"NVIDIA H100 80GB HBM3",
            "total_mib": 81559, "used_mib": 480, "reserved_mib": 480}
    old_driver = {**a10(1, "00000000:18:00.0", [0xFF], mem_words=[0x1])}
    g_h100, g_old = NvmlInventory(FakeNvml([h100, old_driver]), cpu_words=4).gpus()
    assert (g_h100.memory_total_mib, g_h100.memory_reserved_mib, g_h100.cuda_total_mib) == (81559, 480, 81079)
    assert round(g_h100.cuda_total_mib / 1024, 2) == 79.18
    assert (g_old.memory_reserved_mib, g_old.cuda_total_mib) == (0, g_old.memory_total_mib)


# ---------------------------------------------------------------- the supervisor's own CUDA_VISIBLE_DEVICES


def test_the_daemons_cuda_visible_devices_keeps_it_to_those_gpus() -> None:
    """NVML lists every GPU whatever CUDA_VISIBLE_DEVICES says; two supervisors on one host keep
    to their own cards through it: indexes (nvidia-smi's), UUIDs or unique prefixes, in order."""
    cards = [card(i, "NVIDIA GeForce RTX 3080", 20480) for i in range(4)]
    cards[2] = Gpu(**{**cards[2].__dict__, "uuid": "GPU-3a1f0c9e-77aa"})
    assert hardware.visible_to_us(cards, {}) == (cards, None)
    assert hardware.visible_to_us(cards, {"CUDA_VISIBLE_DEVICES": " "})[0] == cards
    picked, note = hardware.visible_to_us(cards, {"CUDA_VISIBLE_DEVICES": "3,1"})
    assert [g.index for g in picked] == [3, 1]
    assert note == "CUDA_VISIBLE_DEVICES=3,1: using GPU 3, 1 of the 4 found (NVML index, PCI order)"
    assert [g.index for g in hardware.visible_to_us(cards, {"CUDA_VISIBLE_DEVICES": "GPU-3a1"})[0]] == [2]
    # like CUDA, the list ends at the first entry that names no GPU
    assert [g.index for g in hardware.visible_to_us(cards, {"CUDA_VISIBLE_DEVICES": "0,7,1"})[0]] == [0]
    assert hardware.visible_to_us(cards, {"CUDA_VISIBLE_DEVICES": "GPU-"})[0] == []  # ambiguous prefix
    match = hardware.match_profile(hardware.visible_to_us(cards, {"CUDA_VISIBLE_DEVICES": "2,3"})[0], P3080X2)
    assert match.match and [g.index for g in match.chosen] == [2, 3]
    assert hardware.cuda_visible_devices(match.chosen) == "GPU-3a1f0c9e-77aa,GPU-3"


def test_plan_uses_the_gpu_the_daemons_environment_names(tmp_path) -> None:
    from daemon_harness import run_cli

    env = {"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "state"), "LLM_SUPERVISOR_SIM_GPU_COUNT": "2",
           "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"), "CUDA_VISIBLE_DEVICES": "1"}
    done = run_cli(["plan", "--profile", "4090d-qwen3-4b", "--simulate", "--json"], env)
    assert done.returncode == 0, done.stderr
    import json

    plan = json.loads(done.stdout)
    sim = simgpu.gpus(simgpu.load_config(env))
    assert plan["env"]["CUDA_VISIBLE_DEVICES"] == hardware.cuda_visible_devices([sim[1]])
    assert any(n.startswith("CUDA_VISIBLE_DEVICES=1: using GPU 1 of the 2 found") for n in plan["notes"])
