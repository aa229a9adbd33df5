"""Another program on the simulated GPU: holds memory until it is ended, like a training job or a
notebook sharing the card (`python -m llm_supervisor.simulator.tenant --mib 6000 --title train.py`).

Its process title is what NVML and psutil would name it; the simulated GPU lists it among the
GPU's processes, so the supervisor's tenant report and free-memory recovery see it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from llm_supervisor.host import simgpu
from llm_supervisor.simulator.proc import set_title


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_supervisor.simulator.tenant")
    parser.add_argument("--gpu", type=int, default=0, help="simulated GPU index")
    parser.add_argument("--mib", type=int, required=True, help="memory to hold")
    parser.add_argument("--title", default="", help="process title (what `ps` shows)")
    args = parser.parse_args(argv)
    if args.title:
        set_title(args.title)
    config = simgpu.load_config()
    simgpu.hold(config, args.gpu, args.mib, title=args.title or "tenant")
    print(f"holding {args.mib} MiB on simulated GPU {args.gpu}", flush=True)

    def leave(signum: int, frame: object) -> None:
        simgpu.hold(config, args.gpu, 0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
