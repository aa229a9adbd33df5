"""The Ray cluster as the head sees it: nodes alive or dead with their GPUs, whether the cluster
can host the engine, which nodes an engine lost. Read from Ray's GCS by the probe
(llm_supervisor.cluster.probe) or, as a fallback, from `ray status` text. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    alive: bool
    gpus: float = 0.0
    cpus: float = 0.0
    is_head: bool = False
    hostname: str = ""
    death_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node_id": self.node_id, "address": self.address,
                               "state": "alive" if self.alive else "dead", "gpus": _num(self.gpus),
                               "cpus": _num(self.cpus), "is_head": self.is_head}
        if self.hostname:
            out["hostname"] = self.hostname
        if self.death_reason:
            out["death_reason"] = self.death_reason
        return out


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


@dataclass(frozen=True)
class ClusterView:
    """One reading of the cluster: every node Ray knows, alive or dead."""

    nodes: tuple[NodeInfo, ...] = ()
    per_node_gpus: bool = True  # False when read from `ray status` (totals only)
    total_gpus_alive: float | None = None  # set when per-node GPUs are unknown

    @property
    def alive(self) -> list[NodeInfo]:
        return [n for n in self.nodes if n.alive]

    @property
    def alive_gpus(self) -> float:
        if self.total_gpus_alive is not None:
            return self.total_gpus_alive
        return sum(n.gpus for n in self.alive)

    def to_json(self) -> list[dict[str, Any]]:
        return [n.to_json() for n in sorted(self.nodes, key=lambda n: (not n.alive, not n.is_head, n.address))]


@dataclass(frozen=True)
class Readiness:
    ready: bool
    gpu_nodes: int
    nodes_needed: int
    gpus: float
    gpus_needed: int
    reason: str


def readiness(view: ClusterView | None, nodes: int, per_node: int) -> Readiness:
    """Whether the cluster can host the engine: `nodes` live nodes with `per_node` GPUs each."""
    needed = nodes * per_node
    if view is None:
        return Readiness(False, 0, nodes, 0.0, needed, "no reading of the Ray cluster yet")
    if view.per_node_gpus:
        full = [n for n in view.alive if n.gpus >= per_node]
        count = len(full)
    else:
        count = len(view.alive)
    gpus = view.alive_gpus
    ready = count >= nodes and gpus >= needed
    text = (f"{count} of {nodes} node(s) with {per_node} GPU(s), {_num(gpus)} of {needed} GPU(s) in the Ray cluster")
    return Readiness(ready, count, nodes, gpus, needed, text)


def lost_nodes(before: ClusterView | None, now: ClusterView | None) -> list[NodeInfo]:
    """Nodes alive in `before` that are dead or gone in `now` (a restarted node has a new id)."""
    if before is None or now is None:
        return []
    alive_now = {n.node_id for n in now.alive}
    return [n for n in before.alive if n.node_id not in alive_now]


def describe(nodes: list[NodeInfo]) -> str:
    return ", ".join(f"{n.address} ({_num(n.gpus)} GPU{'s' if n.gpus != 1 else ''}"
                     f"{', head' if n.is_head else ''})" for n in nodes) or "none"


def view_from_json(data: dict[str, Any]) -> ClusterView | None:
    """rayprobe's JSON line → ClusterView (None for an error line)."""
    if not data.get("ok"):
        return None
    nodes = []
    for raw in data.get("nodes") or []:
        nodes.append(NodeInfo(
            node_id=str(raw.get("node_id", "")), address=str(raw.get("address", "")),
            alive=str(raw.get("state", "")).lower() == "alive", gpus=float(raw.get("gpus") or 0),
            cpus=float(raw.get("cpus") or 0), is_head=bool(raw.get("is_head")),
            hostname=str(raw.get("hostname") or ""), death_reason=str(raw.get("death_reason") or "")))
    total = data.get("total_gpus_alive")
    return ClusterView(tuple(nodes), per_node_gpus=bool(data.get("per_node_gpus", True)),
                       total_gpus_alive=float(total) if total is not None else None)


_NODE_LINE = re.compile(r"^\s*(?:\d+\s+)?(node_[0-9a-f]+)\s*(?:\((?P<ip>[^)]+)\))?\s*$")


_USAGE_LINE = re.compile(r"^\s*(?P<used>[\d.]+)/(?P<total>[\d.]+)\s+(?P<name>\S+)\s*$")


def parse_ray_status(text: str) -> ClusterView:
    """`ray status` text → the live nodes and the cluster's GPU total. `ray status` has no
    per-node resources, so readiness falls back to counting live nodes and total GPUs."""
    section = ""
    alive: list[str] = []
    dead: list[str] = []
    total_gpus = 0.0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith(":") and not stripped.startswith("("):
            section = stripped[:-1].lower()
            continue
        m = _NODE_LINE.match(line)
        if m and section in ("active", "idle"):
            alive.append(m.group(1))
        elif m and section == "recent failures":
            dead.append(m.group(1))
        elif section == "total usage":
            u = _USAGE_LINE.match(line)
            if u and u.group("name") == "GPU":
                total_gpus = float(u.group("total"))
    nodes = [NodeInfo(node_id=n.removeprefix("node_"), address="", alive=True) for n in alive]
    nodes += [NodeInfo(node_id=n.removeprefix("node_"), address="", alive=False) for n in dead]
    return ClusterView(tuple(nodes), per_node_gpus=False, total_gpus_alive=total_gpus)
