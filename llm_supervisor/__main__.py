"""`python -m llm_supervisor` and the `supervisor` / `llm-supervisor` commands.

The entry point imports the CLI inside a guard of its own: a Ctrl-C that lands while the
command line is still being imported (the first tenth of a second) ends the command with 130 and
no traceback, like one that lands later.
"""

import sys


def main() -> None:
    try:
        from llm_supervisor.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
