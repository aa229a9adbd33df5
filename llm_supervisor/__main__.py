"""`python -m llm_supervisor` and the `supervisor` / `llm-supervisor` commands.

The entry point imports the CLI under a guard of its own: a Ctrl-C that lands while the command
line is still being imported (the first tenth of a second) ends the command with 130 and no
traceback, like one that lands later. While importing, SIGINT is only noted: raised as
KeyboardInterrupt inside a compiled extension's import (pydantic-core building a schema), Python
may report it as "Exception ignored" and go on, and the command would start as if never
interrupted.

After that, Ctrl-C raises KeyboardInterrupt as usual (until just before the daemon's event loop
is built: runtime/service.EarlySignals), except while a module is being imported (a command
imports its heavy parts on first use): there Python may report the exception as ignored and go on
(in a module lock's weakref callback), or pydantic-core may wrap it in a SchemaError while it
builds a schema. So inside an import the signal is sent again a moment later, until the import is
done.
"""

import os
import signal
import sys
import threading
from types import FrameType

RESEND_S = 0.05


def importing(frame: FrameType | None) -> bool:
    """Whether the code at `frame` runs inside an import (Python's import machinery is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT as KeyboardInterrupt, or, inside an import (where it would be swallowed or wrapped),
    the same signal again in RESEND_S."""
    if importing(frame):
        threading.Timer(RESEND_S, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


def main() -> None:
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        try:
            from llm_supervisor.cli import main as cli_main
        finally:
            signal.signal(signal.SIGINT, interrupt if previous is signal.default_int_handler else previous)
        if interrupted:
            sys.exit(130)
        cli_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
