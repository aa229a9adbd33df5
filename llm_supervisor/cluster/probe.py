"""Read a Ray cluster's nodes and GPUs, one JSON line per poll, for the head daemon.

Usage: python -m llm_supervisor.cluster.probe --address HOST:PORT [--interval S] [--once]

A separate process on purpose: importing Ray costs ~100 MB and a few hundred ms of CPU, which
the daemon (≤ 80 MB RSS) must not pay. The probe asks Ray's GCS directly (`GcsClient`, the
client `ray status` uses, no driver, no job) and falls back to parsing `ray status` when that
private API is missing. Each line is either
  {"ok": true, "source": "gcs", "nodes": [{"node_id", "address", "state", "gpus", …}], …}
or {"ok": false, "error": "…"}.

A GCS that is down makes Ray's client block for ~40 s, so every poll first checks that the
GCS port accepts a TCP connection. The probe exits when its reader goes away.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from llm_supervisor.cluster.view import parse_ray_status
from llm_supervisor.config.cluster import parse_address


def _emit(data: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os._exit(0)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class GcsReader:
    """Node table through ray._raylet.GcsClient (kept between polls, dropped on any error)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client: Any = None
        from ray._raylet import GcsClient  # noqa: F401 - ImportError selects the fallback
        from ray.core.generated import gcs_pb2

        self._state_name = gcs_pb2.GcsNodeInfo.GcsNodeState.Name

    def read(self, timeout: float) -> dict[str, Any]:
        from ray._raylet import GcsClient

        if self.client is None:
            self.client = GcsClient(address=self.address)
        try:
            info = self.client.get_all_node_info(timeout=timeout)
        except Exception:
            self.client = None
            raise
        nodes = []
        for node_id, n in info.items():
            resources = dict(n.resources_total)
            death = ""
            if n.HasField("death_info"):
                death = n.death_info.reason_message or str(n.death_info.reason)
            nodes.append({
                "node_id": node_id.hex() if hasattr(node_id, "hex") else str(node_id),
                "address": n.node_manager_address,
                "hostname": n.node_manager_hostname,
                "state": "alive" if self._state_name(n.state) == "ALIVE" else "dead",
                "is_head": bool(n.is_head_node),
                "gpus": resources.get("GPU", 0.0),
                "cpus": resources.get("CPU", 0.0),
                "death_reason": death,
            })
        return {"ok": True, "source": "gcs", "per_node_gpus": True, "nodes": nodes}


def read_with_ray_status(address: str, timeout: float) -> dict[str, Any]:
    """Fallback: `ray status` (no per-node GPUs: readiness counts nodes and the GPU total)."""
    ray = os.environ.get("LLM_SUPERVISOR_RAY_COMMAND", "ray").split()
    proc = subprocess.run([*ray, "status", "--address", address], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"ok": False, "error": f"ray status: {tail[0]}"}
    view = parse_ray_status(proc.stdout)
    return {"ok": True, "source": "ray status", "per_node_gpus": False, "total_gpus_alive": view.alive_gpus,
            "nodes": view.to_json()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm_supervisor.cluster.probe")
    parser.add_argument("--address", required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    host, port = parse_address(args.address)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    reader: GcsReader | None
    try:
        reader = GcsReader(args.address)
    except ImportError:
        reader = None
    while True:
        started = time.monotonic()
        if not port_open(host, port):
            if reader is not None:
                reader.client = None
            _emit({"ok": False, "error": f"the Ray GCS at {args.address} does not accept connections"})
        else:
            try:
                _emit(reader.read(max(2.0, args.interval)) if reader is not None
                      else read_with_ray_status(args.address, max(10.0, args.interval * 3)))
            except Exception as exc:  # noqa: BLE001 - any Ray error is one failed reading
                _emit({"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        if args.once:
            return 0
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))


if __name__ == "__main__":
    sys.exit(main())
