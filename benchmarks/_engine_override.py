"""`python benchmarks/_engine_override.py up … --simulate`: the real daemon, with the engine
command taken from BENCH_ENGINE_COMMAND instead of the bundled simulator.

`--simulate` gives the simulated GPU (no NVML needed on a benchmark host); this wrapper only
swaps which program the daemon launches, so the launcher, the output drain and the parsers are
the daemon's own. Used by overhead.py to feed the daemon a chatty fake engine.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_supervisor.planning import launch  # noqa: E402


def _command(command: str, simulate: bool) -> list[str]:
    return shlex.split(os.environ["BENCH_ENGINE_COMMAND"])


launch.engine_command = _command

if __name__ == "__main__":
    from llm_supervisor.cli import main

    main(sys.argv[1:])
