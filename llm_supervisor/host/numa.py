"""Apply a CPU set and a NUMA memory policy to the calling process, just before it execs.

Standard library only: this runs in a freshly forked child (or a guard process) between fork
and exec, where importing third-party code is slow and unsafe. Affinity and memory policy are
per thread, inherited across fork/clone and kept across execve, so setting them here reaches the
engine, all its threads, and every process it starts. Setting them after spawn would not:
sched_setaffinity(pid) changes one thread, and pages already touched stay where they are.

set_mempolicy has no Python wrapper, so it goes through libc's syscall(). The libc handle is
resolved at import, in the parent, so the child does not dlopen after fork.
"""

from __future__ import annotations

import ctypes
import errno
import os

from llm_supervisor.cpulist import format_cpulist

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
POLICIES = {"preferred": MPOL_PREFERRED, "bind": MPOL_BIND, "interleave": MPOL_INTERLEAVE}
_POLICY_NAMES = {MPOL_DEFAULT: "default", MPOL_PREFERRED: "preferred", MPOL_BIND: "bind", MPOL_INTERLEAVE: "interleave"}

# (set_mempolicy, get_mempolicy) by machine.
_SYSCALLS = {"x86_64": (238, 239), "aarch64": (237, 236), "arm64": (237, 236)}
_NR = _SYSCALLS.get(os.uname().machine)

try:
    _syscall = ctypes.CDLL(None, use_errno=True).syscall
    _syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # no libc handle: CPUs can still be set
    _syscall = None


def _node_mask(nodes: list[int]) -> tuple[ctypes.Array, int]:
    """A bitmask of nodes in unsigned longs, and maxnode as libnuma passes it (bits + 1)."""
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    words = max(nodes) // bits + 1
    mask = (ctypes.c_ulong * words)()
    for node in nodes:
        mask[node // bits] |= 1 << (node % bits)
    return mask, words * bits + 1


def set_mempolicy(mode: int, nodes: list[int]) -> int:
    """Set the calling thread's memory policy; 0 on success, else the errno."""
    if _syscall is None or _NR is None:
        return errno.ENOSYS
    if mode == MPOL_DEFAULT:
        ret = _syscall(ctypes.c_long(_NR[0]), ctypes.c_int(mode), None, ctypes.c_ulong(0))
    else:
        if not nodes or min(nodes) < 0:
            return errno.EINVAL
        mask, maxnode = _node_mask(nodes)
        ret = _syscall(ctypes.c_long(_NR[0]), ctypes.c_int(mode), ctypes.byref(mask), ctypes.c_ulong(maxnode))
    if ret != 0:
        return ctypes.get_errno() or errno.EINVAL
    return 0


def get_mempolicy(max_nodes: int = 1024) -> tuple[str, list[int]]:
    """The calling thread's memory policy, e.g. ("bind", [0]); ("unknown", []) if it cannot be read."""
    if _syscall is None or _NR is None:
        return "unknown", []
    mode = ctypes.c_int(0)
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    mask = (ctypes.c_ulong * ((max_nodes + bits - 1) // bits))()
    maxnode = len(mask) * bits + 1
    ret = _syscall(ctypes.c_long(_NR[1]), ctypes.byref(mode), ctypes.byref(mask), ctypes.c_ulong(maxnode),
                   None, ctypes.c_ulong(0))
    if ret != 0:
        return "unknown", []
    nodes = [w * bits + b for w in range(len(mask)) for b in range(bits) if mask[w] >> b & 1]
    # The top bits carry mode flags (MPOL_F_STATIC_NODES, …); the low ones the mode.
    return _POLICY_NAMES.get(mode.value & 0xFF, str(mode.value)), nodes


def apply_placement(cpus: list[int] | None, nodes: list[int] | None, policy: str) -> str:
    """Pin this process to `cpus` and set its memory policy on `nodes`. Never raises for the
    kernel's refusals: a refused memory policy keeps the CPU pinning and says so; a refused CPU
    set leaves the CPUs alone and says so. Returns one line for the log and status."""
    parts: list[str] = []
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
            parts.append(f"cpus {format_cpulist(sorted(os.sched_getaffinity(0)))}")
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            parts.append(f"cpus {format_cpulist(cpus)} not set ({name}): CPUs unchanged")
    else:
        parts.append("cpus unchanged")
    mode = POLICIES.get(policy)
    if mode is None or not nodes:
        parts.append("mempolicy none")
        return ", ".join(parts)
    err = set_mempolicy(mode, list(nodes))
    if err == 0:
        parts.append(f"mempolicy {policy}:{format_cpulist(nodes)}")
    else:
        name = errno.errorcode.get(err, str(err))
        what = "not permitted" if err in (errno.EPERM, errno.EACCES) else "refused" if err == errno.EINVAL else "unavailable"
        parts.append(f"mempolicy {what} ({name}): CPUs only")
    return ", ".join(parts)


def probe_mempolicy(node: int = 0) -> tuple[bool, str]:
    """May this process set a memory policy? Sets MPOL_PREFERRED on `node`, then back to default.
    Meant for a throwaway child: doctor runs it in one."""
    err = set_mempolicy(MPOL_PREFERRED, [node])
    if err:
        return False, errno.errorcode.get(err, str(err))
    set_mempolicy(MPOL_DEFAULT, [])
    return True, "ok"
