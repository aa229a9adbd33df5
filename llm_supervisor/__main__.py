"""`python -m llm_supervisor` and the `supervisor` / `llm-supervisor` commands.

The entry point imports the CLI under a guard of its own: a Ctrl-C that lands while the command
line is still being imported (the first tenth of a second) ends the command with 130 and no
traceback, like one that lands later. While importing, SIGINT is only noted: raised as
KeyboardInterrupt inside a compiled extension's import (pydantic-core building a schema), Python
may report it as "Exception ignored" and go on, and the command would start as if never
interrupted.
"""

import signal
import sys


def main() -> None:
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        try:
            from llm_supervisor.cli import main as cli_main
        finally:
            signal.signal(signal.SIGINT, previous)
        if interrupted:
            sys.exit(130)
        cli_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
