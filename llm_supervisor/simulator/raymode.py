"""`--distributed-executor-backend ray`: the simulated engine's GPU workers as real Ray actors.

What real vLLM does, and so this does (vllm/v1/executor/ray_utils.py, ray_executor.py):
- EngineCore connects to the running cluster (`ray.init(address=RAY_ADDRESS or "auto")`),
  creates a placement group of one `{"GPU": 1}` bundle per rank (the first pinned to the
  driver's own node, which must have a GPU), PACK strategy, and waits for it: a short cluster
  logs "Waiting for creating a placement group…" and fails after the timeout (vLLM's 1800 s;
  LLM_SUPERVISOR_SIM_RAY_PG_TIMEOUT_S here) with "Cannot provide a placement group…".
- One actor per bundle runs the rank's startup (the simulated GPU of the node it landed on: the
  actor reads LLM_SUPERVISOR_SIM_GPU_* from its raylet's environment, and CUDA_VISIBLE_DEVICES
  from Ray). Its log lines reach the driver through Ray's log forwarding, prefixed with the
  actor's class, "(RayWorkerProc pid=…)" (0.26+, RayExecutorV2: the lines inside also carry
  vLLM's worker prefix, "(Worker pid=…)") or "(RayWorkerWrapper pid=…, ip=…)" before; the
  driver prefixes its streams with the EngineCore's "(EngineCore pid=…)" as vLLM does.
- While serving, a dead actor (its node left the cluster, its process died) ends the engine:
  from 0.26 the executor's monitor logs "RayWorkerProc rank=[N] died unexpectedly, shutting down
  executor." and EngineCore fails with "Executor failed."; before, "EngineCore encountered a fatal
  error" with Ray's ActorDiedError. Either way EngineCore exits and the API server fails with
  EngineDeadError, as vLLM's would.

Declared GPUs are enough (`ray start --num-gpus N` on hosts without any): nothing touches CUDA.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from llm_supervisor.simulator import tracebacks as tb
from llm_supervisor.simulator.config import SimConfig, default_cache_root, env_float, visible_devices
from llm_supervisor.simulator.logs import Log, traceback_text

SRC = {"no_pg": "ray_utils.py:402", "pg_short": "ray_utils.py:407", "pg_wait": "ray_utils.py:313",
       "tp_spread": "ray_utils.py:213", "method_error": "worker_base.py:340", "executor": "ray_executor.py:179"}
PING_INTERVAL_S = 1.0
_RAY_FRAMES: list[tuple[str, int, str, str]] = [
    (f"{tb.VLLM}/v1/engine/core.py", 1080, "run_busy_loop", "self._process_engine_step()"),
    (f"{tb.VLLM}/v1/executor/ray_executor.py", 452, "execute_model", "return self._execute_dag(scheduler_output)"),
    ("/usr/local/lib/python3.12/dist-packages/ray/_private/worker.py", 2967, "get",
     "values, debugger_breakpoint = worker.get_objects("),
]


def prefix_streams(prefix: str) -> None:
    """vLLM's `_add_prefix`: every line this process writes through sys.stdout/sys.stderr (Ray's
    forwarded worker logs, Ray's own messages) starts with the process prefix."""
    if not prefix:
        return
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "_llm_supervisor_prefixed", False):
            continue
        raw_write = stream.write
        state = {"new_line": True}

        def write(text: str, _raw: Any = raw_write, _state: dict[str, bool] = state) -> int:
            if not text:
                return 0
            out = []
            for piece in text.splitlines(keepends=True):
                if _state["new_line"]:
                    out.append(prefix)
                out.append(piece)
                _state["new_line"] = piece.endswith("\n")
            _raw("".join(out))
            return len(text)

        try:
            stream.write = write  # type: ignore[method-assign]
            stream._llm_supervisor_prefixed = True  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            pass


class RayWorkerWrapper:
    """One rank on one GPU of some node (made a Ray actor class at run time)."""

    def __init__(self, cfg: SimConfig, dp_rank: int, rank: int) -> None:
        self.cfg = cfg
        self.dp_rank = dp_rank
        self.rank_index = rank
        self.me: Any = None

    def node_info(self) -> tuple[str, str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), os.getpid()

    def setup(self, local_rank: int) -> None:
        """Build the rank on this node's simulated GPU (the one Ray gave this actor)."""
        from llm_supervisor.host import simgpu
        from llm_supervisor.simulator.rank import Rank

        base = self.cfg.gpu
        gpu = simgpu.load_config(name=base.name, count=base.count, total_mib=base.total_mib)
        devices = visible_devices(gpu.count) or (0,)
        world = self.cfg.world_size * max(1, self.cfg.dp)
        cfg = replace(self.cfg, gpu=gpu, devices=(devices[0],) * world, cache_root=default_cache_root())
        d = cfg.dialect
        tp_rank, pp_rank = self.rank_index % cfg.tp, self.rank_index // cfg.tp
        # RayExecutorV2's actors are vLLM worker processes and prefix their lines as such
        name = d.worker_name(self.rank_index, tp_rank, pp_rank, cfg.pp, cfg.tp, self.dp_rank, cfg.dp) \
            if d.ray_executor_v2 else None
        self.me = Rank(cfg, Log(name), self.dp_rank, self.rank_index)
        self.me.local = local_rank
        self.me.prints = cfg.dialect.load_lines_per_worker or local_rank == 0

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        from llm_supervisor.simulator.rank import SimFailure

        try:
            return {"ok": self.me.call(op, args)}
        except SimFailure as exc:
            Log(None).error(SRC["method_error"], f"Error executing method {op!r}. This might cause deadlock in "
                            "distributed execution.")
            return {"err": {"phase": exc.phase, "final": exc.final}}

    def ping(self) -> bool:
        return True

    def release(self) -> None:
        if self.me is not None:
            self.me.release()


class RayRanks:
    """The GPUs of one engine as Ray actors; the interface of engine.Ranks."""

    def __init__(self, cfg: SimConfig, log: Log, dp_rank: int) -> None:
        from llm_supervisor.simulator.rank import SimFailure

        self.cfg = cfg
        self.log = log
        self.dp_rank = dp_rank
        self.local = None  # no rank runs inside EngineCore
        self.actors: list[Any] = []
        self.pg: Any = None
        self._closing = False
        self._watcher: threading.Thread | None = None
        prefix_streams(log.prefix)
        try:
            import ray
        except ImportError:
            raise SimFailure("ray_init", 'ImportError: Ray is not installed. Please install Ray to use multi-node '
                             'inference: `pip install ray`.', in_worker=False) from None
        self.ray = ray
        address = os.environ.get("RAY_ADDRESS") or "auto"
        try:
            ray.init(address=address, log_to_driver=True, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SimFailure("ray_init", f"{type(exc).__name__}: {exc}", in_worker=False) from None
        self.pg = self._placement_group()
        self._start_actors()

    # ------------------------------------------------------------ placement group
    def _placement_group(self) -> Any:
        from ray.util.placement_group import placement_group, remove_placement_group

        from llm_supervisor.simulator.rank import SimFailure

        ray, log, world = self.ray, self.log, self.cfg.world_size
        log.info(SRC["no_pg"], "No current placement group found. Creating a new placement group.")
        if world > ray.cluster_resources().get("GPU", 0):
            log.warning(SRC["pg_short"], "The number of required GPUs exceeds the total number of available GPUs "
                        "in the placement group.")
        node_id = ray.get_runtime_context().get_node_id()
        node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
        resources = dict(node.get("Resources") or {})
        ip = node.get("NodeManagerAddress") or ray.util.get_node_ip_address()
        if resources.get("GPU", 0) < 1:
            raise SimFailure("ray_init", f"ValueError: Current node has no GPU available. current_node_resource="
                             f"{resources!r}. vLLM engine cannot start without GPU. Make sure you have at least 1 GPU "
                             f"available in a node current_node_id={node_id!r} current_ip={ip!r}.", in_worker=False)
        specs: list[dict[str, float]] = [{"GPU": 1.0} for _ in range(world)]
        specs[0][f"node:{ip}"] = 0.001
        pg = placement_group(specs, strategy="PACK")
        timeout = env_float("RAY_PG_TIMEOUT_S", 1800.0)
        start = time.monotonic()
        interval = min(10.0, max(0.5, timeout / 4))
        ready_ref = pg.ready()
        while time.monotonic() - start < timeout:
            left = timeout - (time.monotonic() - start)
            done, _ = ray.wait([ready_ref], timeout=max(0.1, min(interval, left)))
            if done:
                break
            interval *= 2
            log.info(SRC["pg_wait"], f"Waiting for creating a placement group of specs for "
                     f"{int(time.monotonic() - start)} seconds. specs={specs}. Check `ray status` and `ray list nodes` "
                     "to see if you have enough resources, and make sure the IP addresses used by ray cluster are the "
                     "same as VLLM_HOST_IP environment variable specified in each node if you are running on a "
                     "multi-node.")
        else:
            remove_placement_group(pg)
            total = sum(s.get("GPU", 0) for s in specs)
            if total > 1:
                text = (f"Cannot provide a placement group requiring {total:g} GPUs (placement_group_specs={specs}) "
                        f"within {timeout:g} seconds.\nTensor parallel size may exceed available GPUs in your cluster. "
                        "Check resources with `ray status` and `ray list nodes`.\nIf running on K8s with limited "
                        "GPUs, consider reducing --tensor-parallel-size to match available GPU resources.")
            else:
                text = (f"Cannot provide a placement group of placement_group_specs={specs} within {timeout:g} "
                        "seconds. See `ray status` and `ray list nodes` to make sure the cluster has enough resources.")
            raise SimFailure("ray_init", "ValueError: " + text, in_worker=False)
        return pg

    def _start_actors(self) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ray, cfg = self.ray, self.cfg
        # Ray names the actor (its process title, its log prefix) after the class
        name = "RayWorkerProc" if cfg.dialect.ray_executor_v2 else "RayWorkerWrapper"
        actor_cls = ray.remote(num_cpus=0, num_gpus=1)(type(name, (RayWorkerWrapper,), {}))
        for rank in range(cfg.world_size):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank)
            self.actors.append(actor_cls.options(scheduling_strategy=strategy).remote(cfg, self.dp_rank, rank))
        infos = self._get([a.node_info.remote() for a in self.actors], "init_device")
        per_node: dict[str, int] = {}
        local_ranks = []
        for node_id, _ip, _pid in infos:
            local_ranks.append(per_node.get(node_id, 0))
            per_node[node_id] = per_node.get(node_id, 0) + 1
        for node_id, count in per_node.items():
            if cfg.tp > count:
                self.log.warning(SRC["tp_spread"], f"tensor_parallel_size={cfg.tp} is bigger than a reserved number of "
                                 f"GPUs ({count} GPUs) in a node {node_id}. Tensor parallel workers can be spread out "
                                 "to 2+ nodes which can degrade the performance unless you have fast interconnect "
                                 "across nodes, like Infiniband. To resolve this issue, make sure you have more than "
                                 f"{cfg.tp} GPUs available at each node.")
        self._get([a.setup.remote(lr) for a, lr in zip(self.actors, local_ranks)], "init_device")

    def _get(self, refs: list[Any], op: str) -> list[Any]:
        from llm_supervisor.simulator.rank import SimFailure

        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayActorError as exc:
            raise SimFailure(op, f"{_exc_name(exc)}: {exc}", in_worker=False) from None

    # ------------------------------------------------------------ engine.Ranks interface
    def call(self, op: str, args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        from llm_supervisor.simulator.rank import gather_replies

        return gather_replies(op, self._get([a.call.remote(op, args or {}) for a in self.actors], op))

    def fds(self) -> list[int]:
        """EngineCore asks once, when it starts serving: from then on a dead actor is fatal."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="ray-actor-watch", daemon=True)
            self._watcher.start()
        return []

    def _watch(self) -> None:
        ray = self.ray
        while not self._closing:
            time.sleep(PING_INTERVAL_S)
            try:
                ray.get([a.ping.remote() for a in self.actors], timeout=30)
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError as exc:
                if not self._closing:
                    self._fatal(exc, self._dead_ranks())
                return
            except Exception:  # noqa: BLE001 - shutting down, or a transient Ray error
                if self._closing:
                    return

    def _dead_ranks(self) -> list[int]:
        dead = []
        for rank, actor in enumerate(self.actors):
            try:
                self.ray.get(actor.ping.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - dead, or not answering: vLLM's monitor sees its run() end
                dead.append(rank)
        return dead or [0]

    def _fatal(self, exc: BaseException, dead: list[int]) -> None:
        d = self.cfg.dialect
        if d.ray_executor_v2:
            self.log.error(d.src("ray_v2_died"), f"RayWorkerProc rank={dead} died unexpectedly, shutting down executor.")
            self.log.error(d.src("fatal"), d.executor_failed())
        else:
            final = f"ray.exceptions.{_exc_name(exc)}: {exc}"
            self.log.error(d.src("fatal"), "EngineCore encountered a fatal error.\n"
                           + traceback_text(tb.ENGINE_BUSY + _RAY_FRAMES, final))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # EngineCore dies; the API server turns that into EngineDeadError

    def stop(self) -> None:
        self._closing = True
        ray = self.ray
        try:
            if self.actors:
                ray.wait([a.release.remote() for a in self.actors], num_returns=len(self.actors), timeout=3)
            for actor in self.actors:
                ray.kill(actor)
            if self.pg is not None:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - the cluster may already be gone
            pass
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            pass


def _exc_name(exc: BaseException) -> str:
    return type(exc).__name__
