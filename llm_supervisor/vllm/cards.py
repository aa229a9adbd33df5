"""GPU cards as sold: what NVML reports for their memory, and a card's name from a profile's
regular expression. Pure data; the planner uses it when no GPU is present to measure."""

from __future__ import annotations

import re

from llm_supervisor.config.profile import Hardware

# NVML's total memory for cards as sold (MiB); ECC on the A10 keeps 1/16 back
TYPICAL_NVML_TOTAL_MIB: tuple[tuple[str, int], ...] = (
    (r"4090", 24564),
    (r"\bA10\b", 23028),
    (r"3090", 24576),
    (r"3080", 20480),
    (r"L4\b", 23034),
    (r"A100.*80", 81920),
    (r"H100", 81559),
    (r"H200", 143771),
)


def gpu_label(pattern: str) -> str:
    """A profile's GPU regex as a card name: "RTX 4090 ?D" → "RTX 4090 D", "\\bA10\\b" → "A10"."""
    return re.sub(r"\\[bB]|[?^$()]|\\", "", pattern).strip()


def stated_total_gib(hardware: Hardware) -> float:
    """The memory NVML would report for the profile's stated card: known cards from a table,
    else the stated size less 0.1%."""
    label = gpu_label(hardware.gpu_name)
    for pattern, mib in TYPICAL_NVML_TOTAL_MIB:
        if re.search(pattern, label, re.I) and abs(mib / 1024 - hardware.gpu_memory_gib) < 4:
            return mib / 1024
    return hardware.gpu_memory_gib * 0.999
