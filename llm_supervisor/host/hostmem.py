"""The host's memory as the planner needs it: how much RAM is free for weights offloaded to CPU
memory (`--cpu-offload-gb`). With `--simulate`, LLM_SUPERVISOR_SIM_HOST_AVAILABLE_GIB stands in
for the reading (unset: the real host's)."""

from __future__ import annotations

import os
from typing import Mapping

import psutil

SIM_AVAILABLE = "LLM_SUPERVISOR_SIM_HOST_AVAILABLE_GIB"


def available_gib(simulate: bool = False, env: Mapping[str, str] | None = None) -> float | None:
    """RAM the kernel could give a new process without swapping (MemAvailable), in GiB; None
    when it cannot be read."""
    env = os.environ if env is None else env
    if simulate and env.get(SIM_AVAILABLE):
        try:
            return max(0.0, float(env[SIM_AVAILABLE]))
        except ValueError:
            pass
    try:
        return psutil.virtual_memory().available / 1024**3
    except (OSError, RuntimeError):
        return None
