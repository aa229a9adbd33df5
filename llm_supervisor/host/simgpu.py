"""The simulated GPU shared by the vLLM simulator and `--simulate` hardware detection.

Memory is shared across processes through a folder: every simulated engine process writes
`<pid>-<gpu>.mib` with what it holds, and a holder whose pid is gone no longer counts. So an
orphaned simulated EngineCore keeps "GPU memory" exactly as real vLLM's does, and the next
launch sees less free memory. Settings come from the environment:

  LLM_SUPERVISOR_SIM_GPU_NAME        default "NVIDIA GeForce RTX 4090 D"
  LLM_SUPERVISOR_SIM_GPU_COUNT       default 1
  LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB   default 24564 (a 24 GB card as NVML reports it)
  LLM_SUPERVISOR_SIM_GPU_OTHER_MIB   memory held by "other processes", default 0
  LLM_SUPERVISOR_SIM_GPU_DIR         the shared folder, default $TMPDIR/llm-supervisor-simgpu-<uid>
"""

from __future__ import annotations

import os
import tempfile
import uuid as uuidlib
from dataclasses import dataclass
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

    def env(self) -> dict[str, str]:
        """The variables that reproduce this config in a child process."""
        return {
            PREFIX + "NAME": self.name,
            PREFIX + "COUNT": str(self.count),
            PREFIX + "TOTAL_MIB": str(self.total_mib),
            PREFIX + "OTHER_MIB": str(self.other_mib),
            PREFIX + "DIR": str(self.folder),
        }


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


def held_mib(config: SimGpuConfig, gpu_index: int) -> int:
    """Memory held on one GPU by live simulated engine processes."""
    total = 0
    if not config.folder.is_dir():
        return 0
    for entry in config.folder.glob(f"*-{gpu_index}.mib"):
        try:
            pid = int(entry.name.split("-", 1)[0])
            mib = int(entry.read_text() or 0)
        except (ValueError, OSError):
            continue
        if _alive(pid):
            total += mib
        else:
            entry.unlink(missing_ok=True)
    return total


def hold(config: SimGpuConfig, gpu_index: int, mib: int, pid: int | None = None) -> None:
    """Record that `pid` (default: this process) now holds `mib` on a GPU (0 releases)."""
    config.folder.mkdir(parents=True, exist_ok=True)
    path = config.folder / f"{pid or os.getpid()}-{gpu_index}.mib"
    if mib <= 0:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(int(mib)))
    os.replace(tmp, path)


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
