"""The cluster section of a profile and the pure helpers of cluster.py (no Ray needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_supervisor.cluster import spec
from llm_supervisor.cluster import view as cluster_view
from llm_supervisor.config import cluster as cluster_config
from llm_supervisor.cluster.view import ClusterView, NodeInfo
from llm_supervisor.errors import ProfileError
from llm_supervisor.config.loader import load_profile, validate_profile

REPO = Path(__file__).resolve().parent.parent

# `ray status` of Ray 2.60 with a head (1 GPU) and a worker (2 GPUs) on loopback.
RAY_STATUS = """======== Autoscaler status: 2026-11-21 08:12:13.158944 ========
Node status
---------------------------------------------------------------
Active:
 1 node_31d0a25d06cf3296c8a89c19f0b4fd5c395b0c01ed78a66c14a515df
 1 node_6e466fe71d7a196eaf25a0ad7571bc7aee77c480f521cfbc251b09f5
Pending:
 (no pending nodes)
Recent failures:
 (no failures)

Resources
---------------------------------------------------------------
Total Usage:
 0.0/2.0 CPU
 0.0/3.0 GPU
 0B/46.16GiB memory
 0B/152.59MiB object_store_memory

From request_resources:
 (none)
Pending Demands:
 (no resource demands)
"""


def _data(**cluster_over: object) -> dict:
    data = {
        "name": "two-hosts",
        "hardware": {"gpu_name": "A10", "gpu_count": 4, "gpu_memory_gib": 24},
        "model": {"id": "Qwen/Qwen3-32B"},
        "vllm": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "max_model_len": 8192},
        "cluster": {"nodes": 2, "head_address": "10.0.0.1"},
    }
    data["cluster"].update(cluster_over)
    return data


def test_cluster_profile_valid_and_defaults() -> None:
    prof = validate_profile(_data(), "t.yaml")
    cfg = prof.cluster
    assert cfg is not None
    assert (cfg.gcs_host, cfg.gcs_port, cfg.ray_address) == ("10.0.0.1", 6379, "10.0.0.1:6379")
    assert cfg.role == "head" and cfg.include_dashboard is False
    assert spec.gpus_per_node(prof) == 4 and spec.total_gpus(prof) == 8


@pytest.mark.parametrize("vllm, cl, needle", [
    ({"tensor_parallel_size": 4, "pipeline_parallel_size": 1}, {}, "must be equal"),
    ({"tensor_parallel_size": 8, "pipeline_parallel_size": 1}, {}, "tensor parallel stays within a host"),
    ({"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "data_parallel_size": 2}, {}, "data_parallel_size must be 1"),
    ({"tensor_parallel_size": 4, "pipeline_parallel_size": 2}, {"gpus_per_node": 8}, "more than hardware.gpu_count"),
    ({"tensor_parallel_size": 3, "pipeline_parallel_size": 4}, {"nodes": 3, "gpus_per_node": 4},
     "would straddle two hosts"),
    ({"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "extra_args": ["--distributed-executor-backend", "mp"]},
     {}, "a cluster needs ray"),
])
def test_cluster_profile_layout_errors(vllm: dict, cl: dict, needle: str) -> None:
    data = _data(**cl)
    data["vllm"] = vllm
    with pytest.raises(ProfileError) as err:
        validate_profile(data, "t.yaml")
    assert any(needle in line for line in err.value.problems), err.value.problems


@pytest.mark.parametrize("field, value, needle", [
    ("head_address", "10.0.0.1:99999", "bad port"),
    ("head_address", "a b", "bad host"),
    ("node_ip", "10.0.0.300", "not an IP address"),
    ("interface", "eth0; rm -rf /", "not a network interface name"),
    ("resources", {"GPU": 2}, "one of Ray's own resources"),
    ("colour", "blue", "unknown key (allowed: nodes, gpus_per_node, head_address"),
])
def test_cluster_section_field_errors(field: str, value: object, needle: str) -> None:
    with pytest.raises(ProfileError) as err:
        validate_profile(_data(**{field: value}), "t.yaml")
    assert any(line.startswith("t.yaml: cluster.") and needle in line for line in err.value.problems), err.value.problems


def test_parse_address_forms() -> None:
    assert cluster_config.parse_address("head") == ("head", 6379)
    assert cluster_config.parse_address("10.1.2.3:6400") == ("10.1.2.3", 6400)
    assert cluster_config.parse_address("[fd00::1]:7000") == ("fd00::1", 7000)
    assert cluster_config.parse_address("fd00::1") == ("fd00::1", 6379)


def test_ray_start_argv_per_role() -> None:
    prof = validate_profile(_data(node_ip="10.0.0.2", num_cpus=16, object_store_memory_bytes=10**9,
                                  resources={"nvme": 1}, node_manager_port=6380), "t.yaml")
    cfg = prof.cluster
    assert cfg is not None
    head = spec.ray_start_argv(cfg, "head", 4, "10.0.0.1")
    worker = spec.ray_start_argv(cfg, "worker", 4, "10.0.0.2")
    assert head[:3] == ["ray", "start", "--block"]
    assert head[head.index("--port") + 1] == "6379" and "--head" in head
    assert head[head.index("--include-dashboard") + 1] == "false"
    assert "--head" not in worker and worker[worker.index("--address") + 1] == "10.0.0.1:6379"
    assert worker[worker.index("--num-gpus") + 1] == "4"
    assert worker[worker.index("--node-ip-address") + 1] == "10.0.0.2"
    assert worker[worker.index("--num-cpus") + 1] == "16"
    assert json.loads(worker[worker.index("--resources") + 1]) == {"nvme": 1}
    assert worker[worker.index("--node-manager-port") + 1] == "6380"


def test_node_ip_and_env_from_interface() -> None:
    prof = validate_profile(_data(interface="eth1"), "t.yaml")
    cfg = prof.cluster
    assert cfg is not None
    ip = spec.resolve_node_ip(cfg, {"eth1": ["fe80::1", "192.168.7.2"], "lo": ["127.0.0.1"]})
    assert ip == "192.168.7.2"
    env = spec.node_env(cfg, ip)
    assert env["VLLM_HOST_IP"] == "192.168.7.2"
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth1"
    assert spec.resolve_node_ip(cfg, {}) is None  # no such interface here: run_node refuses


def test_engine_profile_uses_ray_backend() -> None:
    prof = validate_profile(_data(node_ip="10.0.0.1"), "t.yaml")
    eng = spec.engine_profile(prof, "10.0.0.1")
    args = eng.vllm.extra_args
    assert args[args.index("--distributed-executor-backend") + 1] == "ray"
    assert eng.env["RAY_ADDRESS"] == "10.0.0.1:6379" and eng.env["VLLM_HOST_IP"] == "10.0.0.1"
    assert spec.engine_profile(eng, "10.0.0.1").vllm.extra_args.count("--distributed-executor-backend") == 1


def test_readiness_counts_nodes_with_enough_gpus() -> None:
    head = NodeInfo("a", "10.0.0.1", True, gpus=4, is_head=True)
    small = NodeInfo("b", "10.0.0.2", True, gpus=2)
    full = NodeInfo("c", "10.0.0.3", True, gpus=4)
    dead = NodeInfo("d", "10.0.0.4", False, gpus=4)
    assert not cluster_view.readiness(None, 2, 4).ready
    r = cluster_view.readiness(ClusterView((head, small, dead)), 2, 4)
    assert (r.ready, r.gpu_nodes, r.gpus) == (False, 1, 6)
    assert "1 of 2 node(s)" in r.reason
    assert cluster_view.readiness(ClusterView((head, full)), 2, 4).ready


def test_lost_nodes_and_rejoin_with_new_id() -> None:
    before = ClusterView((NodeInfo("a", "h", True, 1, is_head=True), NodeInfo("b", "w", True, 1)))
    gone = ClusterView((NodeInfo("a", "h", True, 1, is_head=True), NodeInfo("b", "w", False, 1)))
    back = ClusterView((NodeInfo("a", "h", True, 1, is_head=True), NodeInfo("b", "w", False, 1),
                        NodeInfo("c", "w", True, 1)))
    assert [n.node_id for n in cluster_view.lost_nodes(before, gone)] == ["b"]
    assert [n.node_id for n in cluster_view.lost_nodes(before, back)] == ["b"]  # the engine's actor was on "b"
    assert cluster_view.lost_nodes(gone, back) == []
    assert cluster_view.describe(cluster_view.lost_nodes(before, gone)) == "w (1 GPU)"


def test_view_from_probe_json() -> None:
    line = {"ok": True, "source": "gcs", "per_node_gpus": True, "nodes": [
        {"node_id": "n1", "address": "192.0.2.2", "state": "alive", "is_head": True, "gpus": 1.0, "cpus": 1.0},
        {"node_id": "n2", "address": "127.0.0.2", "state": "dead", "gpus": 1.0, "death_reason": "SIGTERM"}]}
    view = cluster_view.view_from_json(line)
    assert view is not None and [n.address for n in view.alive] == ["192.0.2.2"]
    assert view.to_json()[1] == {"node_id": "n2", "address": "127.0.0.2", "state": "dead", "gpus": 1, "cpus": 0,
                                 "is_head": False, "death_reason": "SIGTERM"}
    assert cluster_view.view_from_json({"ok": False, "error": "down"}) is None


def test_parse_ray_status_totals() -> None:
    view = cluster_view.parse_ray_status(RAY_STATUS)
    assert len(view.alive) == 2 and not view.per_node_gpus
    assert view.alive_gpus == 3.0
    assert cluster_view.readiness(view, 2, 1).ready
    assert not cluster_view.readiness(view, 2, 2).ready  # 3 GPUs in all, 4 needed


def test_layout_pipeline_stages_across_hosts() -> None:
    prof = validate_profile(_data(), "t.yaml")
    plans = spec.layout(prof, [32, 32], [9 * 1024**3, 10 * 1024**3])
    assert [(p.role, [(s.pp_rank, s.first_layer, s.layers) for s in p.stages]) for p in plans] == [
        ("head", [(0, 0, 32)]), ("worker", [(1, 32, 32)])]
    four = validate_profile(_data(nodes=2) | {"vllm": {"tensor_parallel_size": 2, "pipeline_parallel_size": 4}}, "t")
    assert [[s.pp_rank for s in p.stages] for p in spec.layout(four, [16] * 4)] == [[0, 1], [2, 3]]


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "llm_supervisor", *args], capture_output=True, text=True,
                          cwd=REPO, env=full, timeout=120)


def test_plan_json_shows_the_cluster(tmp_path: Path) -> None:
    path = _write(tmp_path, _data())
    proc = _cli("plan", "--profile", str(path), "--simulate", "--json",
                env={"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "s"), "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "g")})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    argv = data["argv"]
    assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
    assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
    assert data["env"]["RAY_ADDRESS"] == "10.0.0.1:6379"
    section = data["cluster"]
    assert section["total_gpus"] == 8
    assert [n["stages"][0]["layer_range"] for n in section["layout"]] == [[0, 31], [32, 63]]
    assert section["ray_start"]["worker"][section["ray_start"]["worker"].index("--address") + 1] == "10.0.0.1:6379"
    assert data["predicted"] is not None  # the planner saw 8 GPUs, not this host's 4


def test_role_without_cluster_is_bad_input(tmp_path: Path) -> None:
    proc = _cli("up", "--profile", "4090d-qwen3-4b", "--simulate", "--role", "worker",
                env={"LLM_SUPERVISOR_STATE_DIR": str(tmp_path / "s"), "LLM_SUPERVISOR_API_PORT": "0"})
    assert proc.returncode == 2
    assert "has no cluster section" in proc.stderr and "Traceback" not in proc.stderr


def test_role_from_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llm_supervisor.cluster.node import resolve_role
    from llm_supervisor.config.settings import load_settings

    prof = load_profile(str(_write(tmp_path, _data(role="worker"))), tmp_path)
    monkeypatch.setenv("LLM_SUPERVISOR_ROLE", "head")
    assert resolve_role(prof, None, load_settings()) == "head"
    assert resolve_role(prof, "worker", load_settings()) == "worker"
    monkeypatch.delenv("LLM_SUPERVISOR_ROLE")
    assert resolve_role(prof, None, load_settings()) == "worker"
