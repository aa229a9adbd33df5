"""Who holds the GPU: the processes with memory on each GPU (the inventory lists pids, as NVML
does), named through psutil, and what they are: a vLLM engine (this supervisor's or not) or
another program. Reading only; ending a process is the runtime's business.

A leftover vLLM engine of another launcher (an EngineCore that outlived its `vllm serve`, a
worker of a crashed run) holds its memory until it is ended; an engine of another running
llm-supervisor (two profiles sharing a GPU) is that supervisor's and is never ended from here, and vLLM's own memory checks count
it against the next start; other programs (a notebook, a training job) make free memory short.
Both are named before each launch, in `doctor` and in `/status`, and in the reason of a
free-memory recovery. The same goes for a port the engine needs: who listens there is named.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from llm_supervisor.host.gpus import GpuInventory, GpuProcess

# What vLLM's processes look like to `ps`: setproctitle titles (VLLM::EngineCore, VLLM::Worker_TP0),
# the API server's command line, Ray's worker actors, and the bundled simulator standing in for vLLM.
_VLLM_TITLES = ("VLLM::", "RayWorkerProc", "RayWorkerWrapper", "llm_supervisor.simulator serve")
_VLLM_MODULES = ("vllm.entrypoints",)


@dataclass
class Tenant:
    gpu_index: int
    pid: int
    used_mib: int | None
    name: str  # the process title or command name
    cmdline: str  # cut to 200 characters
    user: str | None
    vllm: bool  # a vLLM engine process
    ours: bool  # in this supervisor's engine tree
    visible: bool  # psutil could look at it (a pid of another pid namespace cannot be)
    started: float | None = None  # psutil's create_time: the same pid later is another process
    supervisor_pid: int | None = None  # another live llm-supervisor daemon whose engine tree this is

    @property
    def foreign_engine(self) -> bool:
        """A vLLM engine nobody supervises (an orphan, a `vllm serve` started by hand): not ours,
        not another running supervisor's."""
        return self.vllm and not self.ours and self.supervisor_pid is None

    def describe(self) -> str:
        what = self.name if self.visible else "not visible from here"
        who = f", user {self.user}" if self.user else ""
        mem = f"{self.used_mib:,} MiB" if self.used_mib is not None else "memory unknown"
        by = f", run by llm-supervisor pid {self.supervisor_pid}" if self.supervisor_pid else ""
        return f"pid {self.pid} ({what}{who}{by}) holds {mem} on GPU {self.gpu_index}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = "vllm" if self.vllm else "other"
        return data


def is_vllm(name: str, cmdline: list[str]) -> bool:
    """Does a process look like one of vLLM's (API server, EngineCore, worker)?"""
    text = " ".join(cmdline)
    if any(t in name or t in text for t in _VLLM_TITLES) or any(m in text for m in _VLLM_MODULES):
        return True
    words = [w.rsplit("/", 1)[-1] for w in cmdline[:4]]
    return "vllm" in words and "serve" in cmdline[:6]


# How the daemon's guard looks to `ps` (runtime/launcher.py builds its command line from these),
# so that another supervisor can tell whose engine tree a process is in.
GUARD_MODULE = "llm_supervisor.runtime.guard"
GUARD_PARENT_FLAG = "--parent-pid"
_MAX_ANCESTORS = 8


def is_daemon(cmdline: list[str]) -> bool:
    """`supervisor up …` or `python -m llm_supervisor up …`."""
    head = [w.rsplit("/", 1)[-1] for w in cmdline[:4]]
    return "up" in cmdline[1:6] and ("supervisor" in head or "llm_supervisor" in head or "llm-supervisor" in head)


def supervisor_of(ps: psutil.Process, me: int | None = None) -> int | None:
    """The live llm-supervisor daemon (other than `me`) whose engine tree `ps` is in: its guard
    names it (`--parent-pid N`), or the daemon is an ancestor itself. None for an orphan (its
    guard and daemon gone: reparented to init) or a process nobody supervises."""
    try:
        parents = ps.parents()[:_MAX_ANCESTORS]
    except (psutil.Error, OSError):
        return None
    for parent in parents:
        try:
            cmdline = parent.cmdline()
        except (psutil.Error, OSError):
            continue
        pid = None
        if any(GUARD_MODULE in part for part in cmdline):
            try:
                pid = int(cmdline[cmdline.index(GUARD_PARENT_FLAG) + 1])
            except (ValueError, IndexError):
                pid = parent.pid
        elif is_daemon(cmdline):
            pid = parent.pid
        if pid is not None:
            return pid if pid != me and psutil.pid_exists(pid) else None
    return None


def name_process(proc: GpuProcess, ours: Collection[int] = (), me: int | None = None) -> Tenant:
    try:
        ps = psutil.Process(proc.pid)
        with ps.oneshot():
            cmdline = ps.cmdline()
            if not cmdline:
                name = ps.name() or proc.title
            elif cmdline[0].startswith("VLLM::") or len(cmdline) == 1:  # a title (setproctitle)
                name = cmdline[0].split(" ")[0] if cmdline[0].startswith("VLLM::") else cmdline[0]
            else:
                name = " ".join(w.rsplit("/", 1)[-1] for w in cmdline[:3])
            name = name[:80]
            try:
                user: str | None = ps.username()
            except (psutil.Error, KeyError):
                user = None
            started = ps.create_time()
        vllm, mine = is_vllm(name, cmdline), proc.pid in ours
        by = supervisor_of(ps, me) if vllm and not mine else None
        return Tenant(proc.gpu_index, proc.pid, proc.used_mib, name, " ".join(cmdline)[:200], user,
                      vllm, mine, True, started, by)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return Tenant(proc.gpu_index, proc.pid, proc.used_mib, proc.title or "gone", "", None,
                      is_vllm(proc.title, [proc.title]), proc.pid in ours, False)
    except (psutil.AccessDenied, OSError):
        return Tenant(proc.gpu_index, proc.pid, proc.used_mib, proc.title or "access denied", "", None,
                      is_vllm(proc.title, [proc.title]), proc.pid in ours, False)


def gpu_tenants(inventory: GpuInventory | None, gpu_indexes: Iterable[int] | None = None,
                ours: Collection[int] = (), me: int | None = None) -> list[Tenant]:
    """The processes holding memory on these GPUs (all when None), named. Blocking (NVML, /proc):
    run it in a thread. An inventory that cannot list processes lists none. me: the calling
    daemon's pid (its own engines are `ours`, never another supervisor's)."""
    listing = getattr(inventory, "processes", None)
    if not callable(listing):
        return []
    wanted = None if gpu_indexes is None else set(gpu_indexes)
    procs = [p for p in listing() if wanted is None or p.gpu_index in wanted]
    return [name_process(p, ours, me) for p in procs]


def describe(tenants: Iterable[Tenant]) -> str:
    return "; ".join(t.describe() for t in tenants)


def port_holder(port: int) -> tuple[int, str, list[int]] | None:
    """Who listens on TCP `port`: its pid, what it is (llm-supervisor, vLLM, or its name) and its
    ancestors' pids. None when nobody does or the listener is not visible to this user."""
    try:
        listening = [c for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
    except (psutil.Error, OSError):
        return None
    if not listening:
        return None
    pid = listening[0].pid
    try:
        proc = psutil.Process(pid)
        name, cmdline, ancestors = proc.name(), proc.cmdline(), [p.pid for p in proc.parents()]
    except (psutil.Error, OSError):
        return pid, "unknown", []
    what = "llm-supervisor" if is_daemon(cmdline) else "vLLM" if is_vllm(name, cmdline) else name
    return pid, what, ancestors
