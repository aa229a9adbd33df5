"""A front door in a process of its own, driven by lines on stdin (the daemon's calls):

    python benchmarks/_frontdoor_runner.py --port 0 [--set max_in_flight=64 …]

prints `{"port": P}` once listening, then reads commands, one per line, and answers each with one
JSON line: `starting ETA`, `ready URL`, `down REASON`, `drain [GRACE]`, `failed REASON`,
`stats`, `stop`. Benchmarks use it so the front door's CPU time is its own process's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_supervisor.frontdoor import FrontDoor, FrontDoorConfig  # noqa: E402


def _config(sets: list[str]) -> FrontDoorConfig:
    values: dict[str, object] = {}
    for item in sets:
        key, _, raw = item.partition("=")
        values[key] = None if raw in ("", "none", "None") else json.loads(raw) if raw[:1].isdigit() else raw
    return FrontDoorConfig(**values)


async def main(args: argparse.Namespace) -> None:
    door = FrontDoor(_config(args.set))
    await door.start(args.host, args.port)
    print(json.dumps({"port": door.port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break
        cmd, _, arg = line.partition(" ")
        answer: object = "ok"
        if cmd == "starting":
            door.engine_starting(float(arg) if arg else None)
        elif cmd == "ready":
            door.engine_ready(arg)
        elif cmd == "down":
            door.engine_down(arg or "engine died", None)
        elif cmd == "failed":
            door.engine_failed(arg or "gave up")
        elif cmd == "drain":
            answer = (await door.drain(float(arg) if arg else None)).to_json()
        elif cmd == "stats":
            answer = door.stats()
        elif cmd == "stop":
            break
        print(json.dumps(answer), flush=True)
    await door.stop()
    print(json.dumps("stopped"), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="FrontDoorConfig field=value")
    asyncio.run(main(parser.parse_args()))
