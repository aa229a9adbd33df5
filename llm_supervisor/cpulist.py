"""The kernel's list format for CPUs and NUMA nodes ("0-3,8,10-11"), read and written (leaf).

Profiles, sysfs and /proc speak it, and so do the status views: one home for both directions.
Standard library only: the placement code that uses it runs between fork and exec.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_CPU_ID = 16383  # beyond any kernel's NR_CPUS (8192 with MAXSMP)
MAX_NODE_ID = 1023  # the kernel's MAX_NUMNODES at most


def parse_cpulist(text: str, limit: int = MAX_CPU_ID) -> list[int]:
    """Parse the kernel's list format ("0-3,8,10-11") into sorted numbers from 0 to `limit`."""
    cpus: set[int] = set()
    if len(text) > 100_000:
        raise ValueError("a list longer than 100,000 characters")
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        if not (lo.isascii() and lo.isdigit() and (not dash or (hi.isascii() and hi.isdigit()))):
            raise ValueError(f"{part!r} is not a number or a range like 0-7")
        if max(len(lo), len(hi)) > 9:
            raise ValueError(f"{part} goes above {limit}, the highest number allowed")
        first, last = int(lo), int(hi) if dash else int(lo)
        if first > last:
            raise ValueError(f"range {part} runs backwards")
        if last > limit:
            raise ValueError(f"{last} is above {limit}, the highest number allowed")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 5] → "0-2,5" (the kernel's list format); nothing → ""."""
    out: list[str] = []
    items = sorted(set(cpus))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)
