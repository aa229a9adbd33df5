"""The planner and the simulator agree: the planner's prediction for a launch is what the
simulator prints when it starts with those arguments, for each vLLM version the simulator speaks
(0.26's budget accounting, 0.34's extensible KV cache). The two keep separate memory models."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_supervisor.host import modelfiles
from llm_supervisor.vllm import fit
from llm_supervisor.config.profile import VllmArgs

REPO = Path(__file__).resolve().parent.parent
KV_LINE = re.compile(r"GPU KV cache size: ([\d,]+) tokens")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def simulated_kv_tokens(tmp_path: Path, model: str, total_mib: int, count: int, name: str, args: list[str],
                        version: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp_path / "gpu"),
           "LLM_SUPERVISOR_SIM_VLLM_VERSION": version,
           "LLM_SUPERVISOR_SIM_GPU_TOTAL_MIB": str(total_mib), "LLM_SUPERVISOR_SIM_GPU_COUNT": str(count),
           "LLM_SUPERVISOR_SIM_GPU_NAME": name, "LLM_SUPERVISOR_SIM_STARTUP_S": "0.2",
           "VLLM_CACHE_ROOT": str(tmp_path / "cache")}  # a fresh cache: a cold compile, as the planner assumes
    argv = [sys.executable, "-m", "llm_supervisor.simulator", "serve", model, "--port", str(_free_port()), *args]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        for line in proc.stdout:
            match = KV_LINE.search(line)
            if match:
                return int(match.group(1).replace(",", ""))
            assert time.monotonic() < deadline, "no KV line in time"
        raise AssertionError(f"simulator exited ({proc.wait()}) without a KV line")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


CASES = [
    # model, NVML-visible total MiB, GPUs, name, tensor parallel, utilization, max_model_len
    ("Qwen/Qwen3-4B", 24564, 1, "NVIDIA GeForce RTX 4090 D", 1, 0.9, 40960),
    ("Qwen/Qwen3-4B", 81079, 1, "NVIDIA H100 80GB HBM3", 1, 0.3, 10000),
    ("Qwen/Qwen3-8B", 20480, 2, "NVIDIA GeForce RTX 3080", 2, 0.9, 16384),
]


@pytest.mark.parametrize("version", ["0.26.0", "0.34.0"])
@pytest.mark.parametrize("model,total_mib,count,name,tp,util,length", CASES)
def test_planner_predicts_what_the_simulator_prints(tmp_path, model, total_mib, count, name, tp, util, length,
                                                    version) -> None:
    args = VllmArgs(gpu_memory_utilization=util, max_model_len=length, tensor_parallel_size=tp)
    shape = modelfiles.load_shape(model)
    predicted = fit.predict(shape, args, total_mib / 1024, count, gpu_name=name, model=model, vllm_version=version)
    printed = simulated_kv_tokens(tmp_path, model, total_mib, count, name,
                                  ["--gpu-memory-utilization", str(util), "--max-model-len", str(length),
                                   "--tensor-parallel-size", str(tp)], version)
    if version == "0.34.0" and tp > 1:
        # CUDA graphs sit inside 0.34's budget; how they scale with tensor parallelism was never
        # measured: the planner keeps its per-layer figure (1.00 GiB per 36 layers), the simulator
        # divides by TP. The planner errs low (the safe side), by less than 4%.
        assert printed * 0.96 <= predicted.kv_cache_tokens <= printed, (predicted.kv_cache_tokens, printed)
        return
    assert predicted.kv_cache_tokens == pytest.approx(printed, rel=0.02), (predicted.kv_cache_tokens, printed)
