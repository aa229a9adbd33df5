"""A real Ray cluster on loopback: head and worker daemons as separate processes, the simulator
in Ray mode (its ranks are Ray actors on both "hosts"), GPUs declared with `ray start --num-gpus`.

The worker "host" uses 127.0.0.2 as its node IP, so Ray sees two nodes on one machine. Skipped
only when Ray is not installed (it is in the `test` extra, so CI runs this).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")]

REPO = Path(__file__).resolve().parent.parent
WORKER_IP = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_command() -> str:
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else "ray"


class Node:
    """One supervisor daemon (head or worker) as its own process, with its own state dir."""

    def __init__(self, root: Path, name: str, profile: Path, role: str, *sets: str) -> None:
        self.root = root / name
        self.root.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.gpu_dir = str(self.root / "gpu")
        self.args = ["up", "--profile", str(profile), "--simulate", "--role", role, *sets]
        self.log_path = self.root / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.start_env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> "Node":
        env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_SUPERVISOR_STATE_DIR": str(self.root / "state"),
               "LLM_SUPERVISOR_API_PORT": str(self.api_port), "LLM_SUPERVISOR_SIM_GPU_DIR": self.gpu_dir,
               "LLM_SUPERVISOR_SIM_STARTUP_S": "0.5", "LLM_SUPERVISOR_SIM_RAY_PG_TIMEOUT_S": "30",
               "RAY_DISABLE_USAGE_STATS": "1", "RAY_gcs_rpc_server_reconnect_timeout_s": "5", **self.start_env}
        for key in ("LLM_SUPERVISOR_PROFILE", "LLM_SUPERVISOR_ROLE", "RAY_ADDRESS", "NOTIFY_SOCKET"):
            env.pop(key, None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "llm_supervisor", *self.args], cwd=REPO, env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            r = httpx.get(self.url + "/status", timeout=5, trust_env=False)
            return r.json() if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{what}: the daemon exited with {self.proc.returncode}\n{self.tail()}")
            last = self.status()
            if last is not None and pred(last):
                return last
            time.sleep(0.5)
        pytest.fail(f"{what}: not within {timeout:g} s; last state "
                    f"{last and (last.get('state'), last.get('message'))}\n{self.tail()}")

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def ours(markers: set[str]) -> list[psutil.Process]:
    """Live processes whose environment names one of our simulated-GPU folders: every process
    of our trees inherits it (daemons, guards, `ray start`, raylets, Ray workers, simulator)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
            if env.get("LLM_SUPERVISOR_SIM_GPU_DIR") in markers and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def wait_none(markers: set[str], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = ours(markers)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = ours(markers)
    return left


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A profile for two one-GPU hosts (PP 2) with a short Ray temp dir; kills whatever of ours
    is left at the end, whatever the test did."""
    ray_tmp = tempfile.mkdtemp(prefix="lsr", dir="/tmp")  # Ray's socket paths must stay short
    nodes: list[Node] = []
    gcs = free_port()

    def profile(vllm: dict[str, Any] | None = None, **cluster_over: Any) -> Path:
        data = {
            "name": "loopback-pp2",
            "hardware": {"gpu_name": "RTX 4090", "gpu_count": 1, "gpu_memory_gib": 24},
            "model": {"id": "Qwen/Qwen3-4B", "served_name": "q4b"},
            "vllm": {"port": free_port(), "tensor_parallel_size": 1, "pipeline_parallel_size": 2,
                     "max_model_len": 4096, "gpu_memory_utilization": 0.8, **(vllm or {})},
            "recovery": {"max_attempts": 3, "backoff_initial_s": 0.5},
            "cluster": {"nodes": 2, "head_address": f"127.0.0.1:{gcs}", "ray_command": ray_command(),
                        "num_cpus": 1, "object_store_memory_bytes": 80_000_000, "temp_dir": ray_tmp,
                        "poll_interval_s": 0.5, "join_timeout_s": 120, "restart_backoff_initial_s": 0.5,
                        **cluster_over},
        }
        path = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def node(name: str, path: Path, role: str, *sets: str) -> Node:
        n = Node(tmp_path, name, path, role, *sets)
        nodes.append(n)
        return n

    yield {"profile": profile, "node": node, "gcs": gcs, "ray_tmp": ray_tmp, "nodes": nodes}
    for n in nodes:
        if n.proc is not None and n.proc.poll() is None:
            with contextlib.suppress(Exception):
                n.stop(60)
    for proc in ours({n.gpu_dir for n in nodes}):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_head_and_worker_serve_lose_a_node_recover_and_stop_clean(cluster_env: dict[str, Any]) -> None:
    profile = cluster_env["profile"]()
    head = cluster_env["node"]("head", profile, "head").start()
    worker = cluster_env["node"]("worker", profile, "worker", "--set", f"cluster.node_ip={WORKER_IP}").start()

    # The head launches vLLM on Ray only once the worker joined, then reaches ready.
    st = head.wait_status(lambda s: s["state"] == "ready", 180, "head ready")
    alive = {n["address"]: n for n in st["nodes"] if n["state"] == "alive"}
    assert WORKER_IP in alive and alive[WORKER_IP]["gpus"] == 1 and not alive[WORKER_IP]["is_head"]
    assert len(alive) == 2 and st["cluster"]["complete"] is True and st["cluster"]["gpus_alive"] == 2
    assert st["argv"][st["argv"].index("--distributed-executor-backend") + 1] == "ray"
    events = [h["event"] for h in st["history"]]
    assert events.index("cluster_complete") < events.index("launch")  # waited for the worker first
    ws = worker.wait_status(lambda s: s["state"] == "ready", 30, "worker joined")
    assert ws["role"] == "worker" and ws["pid"] and ws["cluster"]["node_ip"] == WORKER_IP

    # One real request through the pipeline; each host's simulated GPU holds its stage.
    r = httpx.post(st["engine_url"] + "/v1/completions", json={"model": "q4b", "prompt": "Hi", "max_tokens": 2},
                   timeout=30, trust_env=False)
    assert r.status_code == 200, r.text
    from llm_supervisor.host import simgpu

    for gpu_dir in (head.gpu_dir, worker.gpu_dir):
        held = simgpu.held_mib(simgpu.load_config({"LLM_SUPERVISOR_SIM_GPU_DIR": gpu_dir}), 0)
        assert held > 3000, f"{gpu_dir}: {held} MiB"  # ~2 GiB weights + KV cache per stage

    # The worker host dies (SIGKILL of its daemon): its guard ends Ray there, the head degrades.
    tree = worker.tree()
    assert any("raylet" in " ".join(p.cmdline()) for p in tree if p.is_running())
    worker.proc.kill()  # type: ignore[union-attr]
    worker.proc.wait(10)  # type: ignore[union-attr]
    st = head.wait_status(lambda s: s["state"] == "degraded", 60, "head degraded")
    assert WORKER_IP in st["message"]
    gone = time.monotonic() + 30
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree) and time.monotonic() < gone:
        time.sleep(0.3)
    assert not [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    # the engine stopped, then the head waits for the cluster (two steps: a reading may fall between)
    st = head.wait_status(lambda s: s["pid"] is None and "waiting for the Ray cluster" in s["message"] and any(
        n["address"] == WORKER_IP and n["state"] == "dead" for n in s["nodes"]), 30, "engine stopped, node dead")
    assert st["state"] == "degraded" and WORKER_IP in st["message"]

    # It comes back: the head relaunches the engine on the whole cluster.
    worker.start()
    st = head.wait_status(lambda s: s["state"] == "ready" and s["attempt"] >= 2, 180, "head ready again")
    relaunch = [h for h in st["history"] if h["event"] == "relaunch"]
    assert relaunch and relaunch[-1]["failure"]["kind"] == "engine_dead"
    assert "left the cluster" in relaunch[-1]["reason"]
    assert "node_lost" in [h["event"] for h in st["history"]]

    # The head goes away: the worker's Ray notices, the worker waits and rejoins a new head.
    assert head.stop() == 0
    worker.wait_status(lambda s: s["state"] in ("starting", "backoff") and s["pid"] is None, 60,
                       "worker waiting for the head")
    head.start()
    head.wait_status(lambda s: s["state"] == "ready", 180, "new head ready")
    worker.wait_status(lambda s: s["state"] == "ready", 30, "worker rejoined")

    # Stop everything: no Ray, simulator, probe or guard process of ours is left on any "host".
    assert worker.stop() == 0
    assert head.stop() == 0
    left = wait_none({head.gpu_dir, worker.gpu_dir}, 20)
    assert not left, [(p.pid, p.name()) for p in left]


def test_short_cluster_simulator_refuses_and_head_gives_up(cluster_env: dict[str, Any]) -> None:
    head = cluster_env["node"]("head", cluster_env["profile"](join_timeout_s=25), "head").start()
    st = head.wait_status(lambda s: any(n["state"] == "alive" for n in s["nodes"])
                          and "1 of 2 node(s)" in s["message"], 90, "Ray head up, waiting for the worker")
    assert st["state"] == "starting" and st["pid"] is None and st["cluster"]["complete"] is False

    # vLLM (the simulator) on this one-GPU cluster with PP 2: the placement group never fits.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": f"127.0.0.1:{cluster_env['gcs']}",
           "LLM_SUPERVISOR_SIM_GPU_DIR": head.gpu_dir, "LLM_SUPERVISOR_SIM_STARTUP_S": "0.2",
           "LLM_SUPERVISOR_SIM_RAY_PG_TIMEOUT_S": "3", "RAY_DISABLE_USAGE_STATS": "1"}
    proc = subprocess.run([sys.executable, "-m", "llm_supervisor.simulator", "serve", "Qwen/Qwen3-4B",
                           "--port", str(free_port()), "--pipeline-parallel-size", "2", "--max-model-len", "4096",
                           "--distributed-executor-backend", "ray"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "The number of required GPUs exceeds the total number of available GPUs in the placement group." in out
    assert "ValueError: Cannot provide a placement group requiring 2 GPUs" in out
    assert "Engine core initialization failed" in out

    # Nobody joins: the head fails clearly after cluster.join_timeout_s, and leaves nothing.
    assert head.proc.wait(90) == 3  # type: ignore[union-attr]
    log = head.log_path.read_text()
    assert "giving up: the Ray cluster stayed short" in log and "1 of 2 node(s)" in log
    left = wait_none({head.gpu_dir}, 20)
    assert not left, [(p.pid, p.name()) for p in left]


def test_one_node_a_killed_actor_ends_the_engine_as_real_vllm_0_26_does(cluster_env: dict[str, Any]) -> None:
    """The rank as a `RayWorkerProc` actor (vLLM 0.26's RayExecutorV2) on a one-node cluster: its
    `kill -9` is logged the way real vLLM logged it on an H200 (tests/fixtures/vllm-0.26.0/
    h200-8b-ray1-actor-killed.log), and the daemon relaunches."""
    from test_simulator import lines, shape_regex

    profile = cluster_env["profile"]({"pipeline_parallel_size": 1}, nodes=1)
    head = cluster_env["node"]("solo", profile, "head")
    head.start_env = {"LLM_SUPERVISOR_SIM_VLLM_VERSION": "0.26.0"}
    head.start()
    st = head.wait_status(lambda s: s["state"] == "ready", 180, "ready")
    actor = next(p for p in head.tree() if p.is_running() and (p.cmdline() or [""])[0].startswith("ray::RayWorkerProc"))
    actor.kill()
    st = head.wait_status(lambda s: s["state"] == "ready" and s["attempt"] >= 2, 180, "ready again")
    relaunch = [h for h in st["history"] if h["event"] == "relaunch"]
    assert relaunch and relaunch[-1]["failure"]["kind"] == "engine_dead"
    out = lines((head.root / "state" / "logs" / "loopback-pp2.log").read_text(errors="replace"))
    real = (REPO / "tests" / "fixtures" / "vllm-0.26.0" / "h200-8b-ray1-actor-killed.log").read_text()
    for needle in ("[ray_executor_v2.py:514] RayWorkerProc rank=[0] died unexpectedly",
                   "[core.py:1332] RuntimeError: Executor failed.", "(Worker pid=", "GPU KV cache size"):
        line = next(ln for ln in lines(real) if needle in ln)
        if needle == "(Worker pid=":  # three prefixes deep; the ANSI colour and the message aside
            assert any(re.match(r"^\(EngineCore pid=\d+\) \x1b\[36m\(RayWorkerProc pid=\d+\)\x1b\[0m \(Worker pid=\d+\) INFO ",
                                ln) for ln in out)
            continue
        pattern = shape_regex(line)
        assert any(pattern.match(ln) for ln in out), f"no line shaped like {pattern.pattern}"
    assert head.stop() == 0
    assert not wait_none({head.gpu_dir}, 20)
