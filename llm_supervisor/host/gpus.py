"""GPU inventory behind a seam, and the check of a profile's hardware against it.

NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES, so everything here is keyed
by UUID and PCI bus id, and the engine gets `CUDA_VISIBLE_DEVICES=GPU-<uuid>,…` together with
`CUDA_DEVICE_ORDER=PCI_BUS_ID` so CUDA counts the same way.

`pynvml` is the module of the `nvidia-ml-py` distribution (the `pynvml` distribution on PyPI is
deprecated and only re-exports it); it is imported lazily so a host without a driver can still
plan, diagnose and simulate.

Besides memory, an inventory may say who holds each GPU (`processes()`: NVML's running compute
and graphics processes, by pid; host/tenants.py names them) and how healthy it is (`health()`:
Xid events seen since it started watching, volatile uncorrectable ECC errors, retired pages and
pages pending retirement, row remapping). Both are optional: an inventory without them reports
nothing rather than failing.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from llm_supervisor.host import simgpu
from llm_supervisor.errors import RuntimeFailure
from llm_supervisor.config.profile import Hardware

MIB = 1024 * 1024
# Cards are sold in round "GB" but report less (a 24 GB card: 23028-24564 MiB) or a bit more.
MEMORY_TOLERANCE_LOW = 0.10
MEMORY_TOLERANCE_HIGH = 0.05
# NVML's affinity scope NVML_AFFINITY_SCOPE_NODE.
_SCOPE_NODE = 0
# Words asked for NVML's NUMA node mask: 256 nodes is more than any host has.
_NODE_MASK_WORDS = 4


class NoGpuFound(RuntimeFailure):
    """NVML is missing, failed, or sees no GPU."""


@dataclass
class Gpu:
    index: int
    uuid: str
    name: str
    bus_id: str  # NVML form: "00000000:3B:00.0"
    sysfs_bus_id: str  # sysfs form: "0000:3b:00.0"
    memory_total_mib: int
    memory_used_mib: int
    memory_free_mib: int
    cpu_affinity: list[int] | None = None  # NVML's CPUs local to the GPU (host topology, not our cgroup)
    memory_nodes: list[int] | None = None  # NVML's NUMA nodes local to the GPU
    numa_node: int | None = None  # NVML GetNumaNodeId: the GPU's own memory node (GB200), else None
    memory_reserved_mib: int = 0  # NVML v2 `reserved`: the driver's, never visible to CUDA

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_mib / 1024

    @property
    def cuda_total_mib(self) -> int:
        """The total CUDA (torch, vLLM) sees: NVML's less what the driver reserves (H100: 81,559 −
        480 = 81,079 MiB = vLLM's 79.18 GiB). vLLM's utilization is a fraction of this."""
        return self.memory_total_mib - self.memory_reserved_mib

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GpuProcess:
    """A process with memory on a GPU, as NVML lists it (no name: NVML knows pids only)."""

    gpu_index: int
    gpu_uuid: str
    pid: int
    used_mib: int | None = None  # None: the driver does not say (WDDM, some containers)
    title: str = ""  # what the simulated GPU was told the process is; empty from NVML


# Xids that are a GPU's or its driver's hardware trouble, not an application's mistake (NVIDIA's
# Xid catalogue: 13, 31, 43, 45 and 69 are raised by faulty CUDA programs, 68 by video decoders).
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 69})
XID_NAMES = {
    48: "double-bit ECC error", 63: "ECC page retirement or row remapping", 64: "ECC page retirement or row "
    "remapping failure", 74: "NVLink error", 79: "the GPU has fallen off the bus", 92: "high single-bit ECC "
    "error rate", 94: "contained ECC error", 95: "uncontained ECC error", 119: "GSP RPC timeout",
    120: "GSP error", 140: "unrecovered ECC error",
}
XIDS_KEPT = 100


@dataclass
class GpuHealth:
    """One GPU's health as NVML reports it; None where the GPU or driver does not say."""

    index: int
    uuid: str
    xids: list[tuple[int, float]] = field(default_factory=list)  # (Xid, epoch seconds), since watching began
    ecc_uncorrected: int | None = None  # volatile: since the driver last loaded
    retired_pages: int | None = None
    retired_pending: bool | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    lost: str | None = None  # NVML cannot reach the GPU at all

    def faults(self, since: float = 0.0) -> list[str]:
        """The hardware faults, one phrase each: conditions present now, and hardware Xids seen at
        or after `since` (epoch seconds)."""
        out = []
        where = f"GPU {self.index}"
        if self.lost:
            out.append(f"{where} is lost ({self.lost})")
        for xid, at in self.xids:
            if xid not in APPLICATION_XIDS and at >= since:
                name = XID_NAMES.get(xid)
                out.append(f"{where}: Xid {xid}" + (f" ({name})" if name else "") + f" at {time.strftime('%H:%M:%S', time.localtime(at))}")
        if self.ecc_uncorrected:
            out.append(f"{where}: {self.ecc_uncorrected} uncorrectable ECC error(s) since the driver loaded")
        if self.retired_pending:
            out.append(f"{where}: memory pages are pending retirement (a reset or reboot retires them)")
        if self.remap_pending:
            out.append(f"{where}: memory rows are pending remapping (a reset or reboot remaps them)")
        if self.remap_failure:
            out.append(f"{where}: row remapping failed (the GPU needs service)")
        return out

    def faults_since(self, baseline: "GpuHealth | None", since: float) -> list[str]:
        """What is wrong now that was not when the GPU last proved usable (`baseline`, taken when
        an engine became ready; None: never): lost, hardware Xids at or after `since`, more
        uncorrectable ECC errors than then, pages or rows waiting for a reset, a failed remap."""
        out = [f for f in self.faults(since) if "uncorrectable ECC" not in f]
        before = (baseline.ecc_uncorrected or 0) if baseline is not None else 0
        if self.ecc_uncorrected and self.ecc_uncorrected > before:
            out.append(f"GPU {self.index}: {self.ecc_uncorrected - before} new uncorrectable ECC error(s)"
                       + (f" ({self.ecc_uncorrected} since the driver loaded)" if before else ""))
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["xids"] = [{"xid": x, "at": at} for x, at in self.xids]
        data["faults"] = self.faults()
        return data


@runtime_checkable
class GpuInventory(Protocol):
    def gpus(self) -> list[Gpu]: ...

    def driver_version(self) -> str | None: ...


# ---------------------------------------------------------------- pure helpers


def decode_mask(words: list[int]) -> list[int]:
    """NVML's affinity mask (64 bits per word; bit k%64 of word k//64 is CPU or node k) → numbers."""
    out: list[int] = []
    for w, word in enumerate(words):
        word = int(word)
        bit = 0
        while word:
            if word & 1:
                out.append(w * 64 + bit)
            word >>= 1
            bit += 1
    return out


_NVML_BUS_RE = re.compile(r"^([0-9A-Fa-f]{4,8}):([0-9A-Fa-f]{2}):([0-9A-Fa-f]{2})\.([0-7])$")


def nvml_to_sysfs_bus_id(bus_id: str) -> str:
    """"00000000:3B:00.0" → "0000:3b:00.0" (sysfs uses a 16-bit domain, lower case)."""
    match = _NVML_BUS_RE.match(bus_id.strip())
    if not match:
        raise ValueError(f"not a PCI bus id: {bus_id!r}")
    domain, bus, device, function = match.groups()
    return f"{int(domain, 16):04x}:{bus.lower()}:{device.lower()}.{function}"


def visible_to_us(gpus: list[Gpu], env: Mapping[str, str]) -> tuple[list[Gpu], str | None]:
    """The GPUs the supervisor may use: all, or those its own CUDA_VISIBLE_DEVICES names (NVML
    ignores the variable, so two supervisors on one host need it to keep to their own cards),
    in the order given, and a note saying so. Entries are NVML indexes (PCI order, as nvidia-smi
    numbers them) or UUIDs (a unique prefix, as CUDA accepts: `GPU-3a1…`); like CUDA, the list
    stops at the first entry that names no GPU."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None or not raw.strip():
        return gpus, None
    picked: list[Gpu] = []
    for item in (x.strip() for x in raw.split(",")):
        found = None
        if item.isdigit():
            found = next((g for g in gpus if g.index == int(item)), None)
        elif item:
            matches = [g for g in gpus if g.uuid.startswith(item) or f"GPU-{g.uuid}".startswith(item)]
            found = matches[0] if len(matches) == 1 else None
        if found is None:
            break
        if found not in picked:
            picked.append(found)
    shown = ", ".join(str(g.index) for g in picked) or "none of them"
    return picked, f"CUDA_VISIBLE_DEVICES={raw}: using GPU {shown} of the {len(gpus)} found (NVML index, PCI order)"


def cuda_visible_devices(chosen: list[Gpu]) -> str:
    """The chosen GPUs by UUID, so CUDA's numbering cannot pick other cards."""
    return ",".join(g.uuid if g.uuid.startswith(("GPU-", "MIG-")) else f"GPU-{g.uuid}" for g in chosen)


def cuda_env(chosen: list[Gpu]) -> dict[str, str]:
    """The engine's CUDA device variables for these GPUs."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": cuda_visible_devices(chosen)}


# ---------------------------------------------------------------- NVML


def _nvml_reason(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if "Library Not Found" in text or "libnvidia-ml" in text:
        return "the NVIDIA driver's libnvidia-ml.so.1 is not installed or not on the library path"
    if "Driver Not Loaded" in text:
        return "NVML: Driver Not Loaded (is the nvidia kernel module loaded?)"
    return f"NVML: {text}"


class NvmlInventory:
    """GPUs as NVML reports them. `nvml` is the pynvml module (tests pass a fake one)."""

    def __init__(self, nvml: Any = None, cpu_words: int | None = None) -> None:
        self._nvml = nvml
        # 64 CPUs per word; one spare word for sparse CPU numbering.
        self._cpu_words = cpu_words or ((os.cpu_count() or 64) + 63) // 64 + 1
        self._ready = False
        self._lock = threading.Lock()
        self._handles: list[Any] = []
        self._names: list[str] = []
        self._events: Any = None  # NVML event set for Xids (False: not available)
        self._xids: dict[int, list[tuple[int, float]]] = {}

    def _lib(self) -> Any:
        """Load and initialise NVML once; NoGpuFound says why it could not."""
        with self._lock:
            if self._ready:
                return self._nvml
            try:
                if self._nvml is None:
                    import pynvml  # nvidia-ml-py

                    self._nvml = pynvml
                nvml = self._nvml
                nvml.nvmlInit()
                count = int(nvml.nvmlDeviceGetCount())
                handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
                names = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]
            except ImportError as exc:
                raise NoGpuFound(f"no NVIDIA GPU found (nvidia-ml-py is not installed: {exc})") from None
            except Exception as exc:  # pynvml.NVMLError and its subclasses, OSError from ctypes
                raise NoGpuFound(f"no NVIDIA GPU found ({_nvml_reason(exc)})") from None
            if not handles:
                raise NoGpuFound("no NVIDIA GPU found (NVML reports 0 devices)")
            self._handles, self._names, self._ready = handles, names, True
            return nvml

    def driver_version(self) -> str | None:
        nvml = self._lib()
        try:
            return _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            return None

    def gpus(self) -> list[Gpu]:
        nvml = self._lib()
        words = self._cpu_words
        out = []
        for index, handle in enumerate(self._handles):
            try:
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:
                raise NoGpuFound(f"no NVIDIA GPU found (GPU {index}: {_nvml_reason(exc)})") from None
            reserved = _optional(lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2).reserved))
            try:
                sysfs = nvml_to_sysfs_bus_id(bus_id)
            except ValueError:
                sysfs = bus_id.lower()
            out.append(Gpu(
                index=index,
                uuid=uuid,
                name=self._names[index],
                bus_id=bus_id,
                sysfs_bus_id=sysfs,
                memory_total_mib=int(mem.total) // MIB,
                memory_used_mib=int(mem.used) // MIB,
                memory_free_mib=int(mem.free) // MIB,
                cpu_affinity=_optional(lambda: decode_mask(list(nvml.nvmlDeviceGetCpuAffinity(handle, words)))) or None,
                memory_nodes=_optional(lambda: decode_mask(list(
                    nvml.nvmlDeviceGetMemoryAffinity(handle, _NODE_MASK_WORDS, _SCOPE_NODE)))) or None,
                numa_node=_optional(lambda: int(nvml.nvmlDeviceGetNumaNodeId(handle))),
                memory_reserved_mib=(reserved or 0) // MIB,
            ))
        return out

    def memory_snapshot(self) -> list[dict[str, Any]]:
        """Memory per GPU with one NVML call each (handles and names are cached)."""
        nvml = self._lib()
        out = []
        for index, handle in enumerate(self._handles):
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                used, total = int(mem.used) // MIB, int(mem.total) // MIB
            except Exception:
                used = total = None  # type: ignore[assignment]
            out.append({"index": index, "name": self._names[index], "memory_used_mib": used, "memory_total_mib": total})
        return out

    def _uuid(self, index: int, handle: Any) -> str:
        return str(_optional(lambda: _text(self._nvml.nvmlDeviceGetUUID(handle))) or f"GPU {index}")

    def processes(self) -> list[GpuProcess]:
        """Every process NVML sees on each GPU (compute and graphics), with its memory."""
        nvml = self._lib()
        out = []
        for index, handle in enumerate(self._handles):
            uuid = self._uuid(index, handle)
            seen: dict[int, int | None] = {}
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for proc in _optional(lambda g=getter: getattr(nvml, g)(handle)) or []:
                    used = getattr(proc, "usedGpuMemory", None)
                    mib = int(used) // MIB if used is not None and 0 <= int(used) < 1 << 62 else None
                    pid = int(proc.pid)
                    seen[pid] = mib if seen.get(pid) is None else max(seen[pid] or 0, mib or 0)
            out += [GpuProcess(index, uuid, pid, mib) for pid, mib in sorted(seen.items())]
        return out

    def _poll_xids(self) -> None:
        """Xid events since the last look (registered on the first: NVML reports only later ones)."""
        nvml = self._nvml
        if self._events is None:
            try:
                events = nvml.nvmlEventSetCreate()
                registered = 0
                for handle in self._handles:
                    try:
                        nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                        registered += 1
                    except Exception:  # NotSupported on some GPUs and in some containers
                        pass
                self._events = events if registered else False
            except Exception:
                self._events = False
        if not self._events:
            return
        for _ in range(1000):
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except Exception:  # NVMLError_Timeout: nothing more
                return
            index = _optional(lambda: int(nvml.nvmlDeviceGetIndex(data.device)))
            if index is not None:
                kept = self._xids.setdefault(index, [])
                kept.append((int(data.eventData), time.time()))
                del kept[:-XIDS_KEPT]

    def health(self) -> list[GpuHealth]:
        nvml = self._lib()
        with self._lock:
            self._poll_xids()
        out = []
        for index, handle in enumerate(self._handles):
            h = GpuHealth(index, self._uuid(index, handle), list(self._xids.get(index, [])))
            try:
                nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # GPU is lost, unknown error: the GPU cannot be reached
                h.lost = _nvml_reason(exc)
                out.append(h)
                continue
            h.ecc_uncorrected = _optional(lambda: int(nvml.nvmlDeviceGetTotalEccErrors(
                handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC)))
            pages = [_optional(lambda c=cause: len(nvml.nvmlDeviceGetRetiredPages(handle, c)))
                     for cause in (nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
                                   nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)]
            h.retired_pages = sum(p for p in pages if p is not None) if any(p is not None for p in pages) else None
            h.retired_pending = _optional(lambda: int(nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
                                          == int(nvml.NVML_FEATURE_ENABLED))
            rows = _optional(lambda: nvml.nvmlDeviceGetRemappedRows(handle))
            if rows is not None and len(rows) >= 4:
                h.remap_pending, h.remap_failure = bool(rows[2]), bool(rows[3])
            out.append(h)
        return out

    def close(self) -> None:
        with self._lock:
            if self._ready:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
                self._ready = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional(call: Any) -> Any:
    """NVML's optional queries: NotSupported (x86 GetNumaNodeId), old drivers, … → None."""
    try:
        return call()
    except Exception:
        return None


# ---------------------------------------------------------------- simulated


class SimulatedInventory:
    """The simulated GPU of `--simulate` (no topology: affinity is unknown)."""

    def __init__(self, config: simgpu.SimGpuConfig | None = None) -> None:
        self.config = config or simgpu.load_config()

    def driver_version(self) -> str | None:
        return "simulated"

    def processes(self) -> list[GpuProcess]:
        return [GpuProcess(g.index, g.uuid, h.pid, h.mib, h.title)
                for g in simgpu.gpus(self.config) for h in simgpu.holders(self.config, g.index)]

    def health(self) -> list[GpuHealth]:
        out = []
        for g in simgpu.gpus(self.config):
            f = simgpu.faults(self.config, g.index)
            out.append(GpuHealth(g.index, g.uuid, list(f.xids), f.ecc_uncorrected, f.retired_pages,
                                 f.retired_pending, False, False))
        return out

    def gpus(self) -> list[Gpu]:
        out = []
        for g in simgpu.gpus(self.config):
            out.append(Gpu(
                index=g.index,
                uuid=g.uuid,
                name=g.name,
                bus_id=g.bus_id,
                sysfs_bus_id=nvml_to_sysfs_bus_id(g.bus_id),
                memory_total_mib=g.total_mib,
                memory_used_mib=g.used_mib,
                memory_free_mib=g.free_mib,
            ))
        return out


def inventory(simulate: bool, sim_config: simgpu.SimGpuConfig | None = None) -> GpuInventory:
    return SimulatedInventory(sim_config) if simulate else NvmlInventory()


def detect(simulate: bool, sim_config: simgpu.SimGpuConfig | None = None) -> list[Gpu]:
    """The GPUs of this host (or the simulated ones); NoGpuFound when there are none."""
    found = inventory(simulate, sim_config).gpus()
    if not found:
        raise NoGpuFound("no NVIDIA GPU found (none configured)")
    return found


def gpu_memory(inv: GpuInventory) -> list[dict[str, Any]]:
    """Memory per GPU for status: {index, name, memory_used_mib, memory_total_mib}. Blocking; run it
    in a thread."""
    snapshot = getattr(inv, "memory_snapshot", None)
    if callable(snapshot):
        return snapshot()
    return [{"index": g.index, "name": g.name, "memory_used_mib": g.memory_used_mib,
             "memory_total_mib": g.memory_total_mib} for g in inv.gpus()]


# ---------------------------------------------------------------- matching a profile


@dataclass
class HardwareMatch:
    match: bool
    reasons: list[str] = field(default_factory=list)
    chosen: list[Gpu] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"match": self.match, "reasons": list(self.reasons),
                "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name, "bus_id": g.bus_id} for g in self.chosen]}


def memory_range_mib(gpu_memory_gib: float) -> tuple[float, float]:
    """What a card sold with this many GiB may report, in MiB."""
    mib = gpu_memory_gib * 1024
    return mib * (1 - MEMORY_TOLERANCE_LOW), mib * (1 + MEMORY_TOLERANCE_HIGH)


def _describe(gpus: list[Gpu]) -> str:
    """"2× NVIDIA A10 with 22.5 GiB and 1× NVIDIA T4 with 15.0 GiB", in PCI order of first sight."""
    if not gpus:
        return "no GPU"
    groups: dict[tuple[str, str], int] = {}
    for g in gpus:
        key = (g.name, f"{g.memory_total_gib:.1f}")
        groups[key] = groups.get(key, 0) + 1
    return " and ".join(f"{n}× {name} with {gib} GiB" for (name, gib), n in groups.items())


def match_profile(gpus: list[Gpu], hardware: Hardware) -> HardwareMatch:
    """Do the GPUs found satisfy the profile? Chooses the first `gpu_count` that do."""
    pattern = re.compile(hardware.gpu_name, re.IGNORECASE)
    low, high = memory_range_mib(hardware.gpu_memory_gib)
    named = [g for g in gpus if pattern.search(g.name)]
    fitting = [g for g in named if low <= g.memory_total_mib <= high]
    expected = f"{hardware.gpu_count}× /{hardware.gpu_name}/ with {hardware.gpu_memory_gib:g} GiB"
    if len(fitting) >= hardware.gpu_count:
        chosen = fitting[: hardware.gpu_count]
        reasons = [f"expected {expected}, using {_describe(chosen)} (GPU {', '.join(str(g.index) for g in chosen)})"]
        if len(gpus) > len(chosen):
            reasons.append(f"{len(gpus) - len(chosen)} other GPU(s) left out: {_describe([g for g in gpus if g not in chosen])}")
        return HardwareMatch(True, reasons, chosen)
    reasons = [f"expected {expected}, found {_describe(gpus)}"]
    if gpus and not named:
        reasons.append(f"no GPU name matches /{hardware.gpu_name}/ (case-insensitive search)")
    elif len(named) > len(fitting):
        reasons.append(
            f"{len(named)} GPU(s) match the name but {len(named) - len(fitting)} of them report memory outside "
            f"{low / 1024:.1f}-{high / 1024:.1f} GiB"
        )
    if gpus and fitting:
        reasons.append(f"only {len(fitting)} of the {hardware.gpu_count} GPUs needed match")
    return HardwareMatch(False, reasons, [])
