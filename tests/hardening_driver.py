"""`python tests/hardening_driver.py up …`: the real CLI and daemon, with the simulator's command
replaced by $HARDENING_FAKE_ENGINE (a misbehaving engine for the hardening tests).

`--simulate` is what gives the daemon a GPU on a machine without one; in that mode the engine
command is always the bundled simulator, so the tests swap that one constant and nothing else.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_supervisor import cli  # noqa: E402
from llm_supervisor.planning import launch  # noqa: E402

if os.environ.get("HARDENING_FAKE_ENGINE"):
    launch.SIMULATOR_COMMAND[:] = shlex.split(os.environ["HARDENING_FAKE_ENGINE"])

if __name__ == "__main__":
    cli.main()
