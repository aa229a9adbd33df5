"""Entry point: `python -m llm_supervisor.simulator serve MODEL [flags]` (like `vllm serve`)."""

from __future__ import annotations

import os
import sys

from llm_supervisor.simulator.config import ENV
from llm_supervisor.simulator.dialect import DEFAULT_VERSION, Dialect, parse_version

USAGE = "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ..."
SUBCOMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    version = os.environ.get(ENV + "VLLM_VERSION") or DEFAULT_VERSION
    try:
        parse_version(version)
    except ValueError as exc:
        print(f"vllm: error: {ENV}VLLM_VERSION: {exc}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        print("\nvLLM CLI (simulated by llm-supervisor: no GPU is used)\n\npositional arguments:\n"
              "  {chat,complete,serve,bench,collect-env,run-batch}\n    serve    Launch a local OpenAI-compatible API "
              "server to serve LLM completions via HTTP.")
        return 0 if argv else 2
    if argv[0] in ("-v", "--version"):
        print(version)
        return 0
    if argv[0] != "serve":
        print(USAGE, file=sys.stderr)
        choices = ", ".join(f"'{c}'" for c in SUBCOMMANDS)
        print(f"vllm: error: argument subparser: invalid choice: '{argv[0]}' (choose from {choices})", file=sys.stderr)
        return 2
    dialect = Dialect(version)
    from llm_supervisor.simulator import apiserver, args

    default_util = 0.92 if dialect.at_least(0, 21) else 0.9
    try:
        ns, shown = args.parse(argv[1:], default_util)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    return apiserver.run(ns, shown, dialect)
