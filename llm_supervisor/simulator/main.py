"""Entry point: `python -m llm_supervisor.simulator [--vllm-version V] serve MODEL [flags]` (like
`vllm serve`). The version to imitate: `--vllm-version`, else LLM_SUPERVISOR_SIM_VLLM_VERSION, else
the newest supported (dialect.DEFAULT_VERSION)."""

from __future__ import annotations

import os
import sys

from llm_supervisor.simulator.config import ENV
from llm_supervisor.simulator.dialect import DEFAULT_VERSION, Dialect, parse_version

USAGE = "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ..."
SUBCOMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")


def _own_version_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """The simulator's own `--vllm-version V` (or `=V`) before the subcommand: which vLLM to be."""
    rest: list[str] = []
    version = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if rest and not rest[0].startswith("-"):
            rest.append(arg)  # past the subcommand: vLLM's own arguments
        elif arg == "--vllm-version" and i + 1 < len(argv):
            version = argv[i + 1]
            i += 1
        elif arg.startswith("--vllm-version="):
            version = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return version, rest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flag, argv = _own_version_flag(argv)
    version = flag or os.environ.get(ENV + "VLLM_VERSION") or DEFAULT_VERSION
    try:
        parse_version(version)
    except ValueError as exc:
        where = "--vllm-version" if flag else f"{ENV}VLLM_VERSION"
        print(f"vllm: error: {where}: {exc}", file=sys.stderr)
        return 2
    version = version.strip().lstrip("v")
    # the engine processes it forks read the version from their environment
    os.environ[ENV + "VLLM_VERSION"] = version
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

    # 0.34: None (1.0 with the extensible KV cache, 0.92 without: resolved in config.resolve)
    default_util = None if dialect.extensible_kv_cache else 0.92 if dialect.at_least(0, 21) else 0.9
    try:
        ns, shown = args.parse(argv[1:], default_util, extensible=dialect.extensible_kv_cache)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    return apiserver.run(ns, shown, dialect)
