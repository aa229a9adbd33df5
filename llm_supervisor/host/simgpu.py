"""The simulated GPU shared by the vLLM simulator and `--simulate` hardware detection.

Memory is shared across processes through a folder: every simulated engine process writes
`<pid>-<gpu>.mib` with what it holds (and, after a tab, what it is: its title), and a holder whose
pid is gone no longer counts. So an orphaned simulated EngineCore keeps "GPU memory" exactly as
real vLLM's does, and the next launch sees less free memory; `holders()` lists them by pid, as
NVML's running-process list does (`python -m llm_supervisor.simulator.tenant` is another program
holding memory on the GPU). Hardware faults can be injected, by environment for the whole run or
by `inject_fault()` (a file in the folder) at any moment: Xid events, uncorrectable ECC errors,
pages pending retirement. The simulated engine fails on a faulty GPU as CUDA does.

  LLM_SUPERVISOR_SIM_GPU_NAME        default "NVIDIA GeForce RTX 4090 D"
  LLM_SUPERVISOR_SIM_GPU_COUNT       default 1
  LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB   default 24564 (a 24 GB card as NVML reports it)
  LLM_SUPERVISOR_SIM_GPU_OTHER_MIB   memory held by "other processes", default 0
  LLM_SUPERVISOR_SIM_GPU_DIR         the shared folder, default $TMPDIR/llm-supervisor-simgpu-<uid>
  LLM_SUPERVISOR_SIM_GPU_XID         Xid events: "79" (every GPU) or "79@0,48@1" (GPU index after @)
  LLM_SUPERVISOR_SIM_GPU_ECC_UNCORRECTED  volatile uncorrectable ECC errors per GPU, default 0
  LLM_SUPERVISOR_SIM_GPU_RETIRED_PENDING  1: pages are pending retirement on every GPU
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

PREFIX = "LLM_SUPERVISOR_SIM_GPU_"
DEFAULT_NAME = "NVIDIA GeForce RTX 4090 D"
DEFAULT_TOTAL_MIB = 24564


@dataclass(frozen=True)
class SimGpuConfig:
    name: str
    count: int
    total_mib: int
    other_mib: int
    folder: Path
    xid: str = ""
    ecc_uncorrected: int = 0
    retired_pending: bool = False

    def env(self) -> dict[str, str]:
        """The variables that reproduce this config in a child process."""
        out = {
            PREFIX + "NAME": self.name,
            PREFIX + "COUNT": str(self.count),
            PREFIX + "TOTAL_MIB": str(self.total_mib),
            PREFIX + "OTHER_MIB": str(self.other_mib),
            PREFIX + "DIR": str(self.folder),
        }
        if self.xid:
            out[PREFIX + "XID"] = self.xid
        if self.ecc_uncorrected:
            out[PREFIX + "ECC_UNCORRECTED"] = str(self.ecc_uncorrected)
        if self.retired_pending:
            out[PREFIX + "RETIRED_PENDING"] = "1"
        return out


@dataclass(frozen=True)
class SimGpu:
    index: int
    name: str
    uuid: str
    bus_id: str
    total_mib: int
    used_mib: int

    @property
    def free_mib(self) -> int:
        return max(0, self.total_mib - self.used_mib)


def load_config(env: Mapping[str, str] | None = None, **defaults: object) -> SimGpuConfig:
    """Config from the environment; `defaults` (name, count, total_mib) fill what env leaves unset."""
    env = os.environ if env is None else env
    folder = env.get(PREFIX + "DIR") or str(Path(tempfile.gettempdir()) / f"llm-supervisor-simgpu-{os.getuid()}")
    return SimGpuConfig(
        name=env.get(PREFIX + "NAME") or str(defaults.get("name") or DEFAULT_NAME),
        count=int(env.get(PREFIX + "COUNT") or defaults.get("count") or 1),
        total_mib=int(env.get(PREFIX + "TOTAL_MIB") or defaults.get("total_mib") or DEFAULT_TOTAL_MIB),
        other_mib=int(env.get(PREFIX + "OTHER_MIB") or defaults.get("other_mib") or 0),
        folder=Path(folder),
        xid=(env.get(PREFIX + "XID") or "").strip(),
        ecc_uncorrected=int(env.get(PREFIX + "ECC_UNCORRECTED") or 0),
        retired_pending=(env.get(PREFIX + "RETIRED_PENDING") or "0").strip() not in ("", "0"),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it holds no memory
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@dataclass(frozen=True)
class SimHolder:
    """A live process holding memory on a simulated GPU, as NVML lists running processes."""

    pid: int
    mib: int
    title: str = ""


def holders(config: SimGpuConfig, gpu_index: int) -> list[SimHolder]:
    """Live processes holding memory on one GPU (entries of dead ones are swept)."""
    out: list[SimHolder] = []
    if not config.folder.is_dir():
        return out
    for entry in config.folder.glob(f"*-{gpu_index}.mib"):
        try:
            pid = int(entry.name.split("-", 1)[0])
            mib_text, _, title = entry.read_text().partition("\t")
            mib = int(mib_text or 0)
        except (ValueError, OSError):
            continue
        if _alive(pid):
            out.append(SimHolder(pid, mib, title.strip()))
        else:
            entry.unlink(missing_ok=True)
    return sorted(out, key=lambda h: h.pid)


def held_mib(config: SimGpuConfig, gpu_index: int) -> int:
    """Memory held on one GPU by live simulated engine processes."""
    return sum(h.mib for h in holders(config, gpu_index))


def hold(config: SimGpuConfig, gpu_index: int, mib: int, pid: int | None = None, title: str = "") -> None:
    """Record that `pid` (default: this process) now holds `mib` on a GPU (0 releases); `title`
    says what it is when its pid cannot be looked at."""
    config.folder.mkdir(parents=True, exist_ok=True)
    path = config.folder / f"{pid or os.getpid()}-{gpu_index}.mib"
    if mib <= 0:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(str(int(mib)) + (f"\t{title}" if title else ""))
    os.replace(tmp, path)


# ---------------------------------------------------------------- faults


@dataclass(frozen=True)
class SimFaults:
    """What NVML would report about one GPU's health."""

    xids: list[tuple[int, float]] = field(default_factory=list)  # (Xid, when: epoch seconds)
    ecc_uncorrected: int = 0
    retired_pending: bool = False
    retired_pages: int = 0

    @property
    def hardware(self) -> bool:
        return bool(self.xids or self.ecc_uncorrected or self.retired_pending)

    def cuda_error(self) -> str | None:
        """What CUDA says to a process that starts on this GPU, or None when it works."""
        if any(x == 79 for x, _ in self.xids):
            return "RuntimeError: CUDA error: unknown error"  # fallen off the bus: error 999
        if self.ecc_uncorrected or self.retired_pending or any(x in (48, 63, 64, 94, 95) for x, _ in self.xids):
            return "RuntimeError: CUDA error: uncorrectable ECC error encountered"
        return None


_STARTED = time.time()


def _env_xids(config: SimGpuConfig, gpu_index: int) -> list[tuple[int, float]]:
    out = []
    for part in config.xid.replace(" ", "").split(","):
        if not part:
            continue
        xid, _, where = part.partition("@")
        try:
            if not where or int(where) == gpu_index:
                out.append((int(xid), _STARTED))
        except ValueError:
            continue
    return out


def _fault_file(config: SimGpuConfig, gpu_index: int) -> Path:
    return config.folder / f"faults-{gpu_index}.json"


def faults(config: SimGpuConfig, gpu_index: int) -> SimFaults:
    """The environment's faults and those injected since (inject_fault)."""
    xids = _env_xids(config, gpu_index)
    ecc, pending, retired = config.ecc_uncorrected, config.retired_pending, 0
    try:
        data = json.loads(_fault_file(config, gpu_index).read_text())
        xids += [(int(x), float(at)) for x, at in data.get("xids", [])]
        ecc += int(data.get("ecc_uncorrected", 0))
        pending = pending or bool(data.get("retired_pending"))
        retired = int(data.get("retired_pages", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return SimFaults(xids, ecc, pending, retired + (1 if pending else 0))


def inject_fault(config: SimGpuConfig, gpu_index: int, *, xid: int | None = None, ecc_uncorrected: int = 0,
                 retired_pending: bool = False) -> None:
    """Add a fault to one simulated GPU now (clear_faults removes what was injected)."""
    config.folder.mkdir(parents=True, exist_ok=True)
    path = _fault_file(config, gpu_index)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if xid is not None:
        data.setdefault("xids", []).append([int(xid), time.time()])
    data["ecc_uncorrected"] = int(data.get("ecc_uncorrected", 0)) + int(ecc_uncorrected)
    data["retired_pending"] = bool(data.get("retired_pending")) or retired_pending
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def clear_faults(config: SimGpuConfig, gpu_index: int) -> None:
    _fault_file(config, gpu_index).unlink(missing_ok=True)


def gpus(config: SimGpuConfig) -> list[SimGpu]:
    out = []
    for index in range(config.count):
        used = min(config.total_mib, config.other_mib + held_mib(config, index) + 300)  # 300: driver/context baseline
        out.append(SimGpu(
            index=index,
            name=config.name,
            uuid="GPU-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"llm-supervisor-sim-{index}")),
            bus_id=f"00000000:{0x17 + index * 0x10:02X}:00.0",
            total_mib=config.total_mib,
            used_mib=used,
        ))
    return out
