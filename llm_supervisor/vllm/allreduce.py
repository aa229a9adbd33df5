"""How vLLM's GPUs of one engine reduce across each other, and the switches that turn the fragile
paths off. Pure.

With tensor parallelism vLLM picks an all-reduce by itself. From 0.26 (present in 0.26.0 and
0.34.0; vllm/config/vllm.py `enable_allreduce_rms_fusion`) it also fuses the all-reduce with the
RMSNorm after it on Hopper and Blackwell when flashinfer is installed, and flashinfer's backend
"mnnvl" needs NVSwitch multicast: on hosts where that is off (NCCL_NVLS_ENABLE=0, VMs, PCIe
cards) the workspace fails and the CUDA context can be left broken, so the next cuBLAS call
raises CUBLAS_STATUS_INTERNAL_ERROR. The remedies, cheapest first:

1. `--compilation-config '{"pass_config": {"fuse_allreduce_rms": false}}'`: no fused all-reduce
   (a few percent of decode speed);
2. `--disable-custom-all-reduce`: NCCL for every all-reduce (vLLM's own CUDA-IPC kernel off).
"""

from __future__ import annotations

from llm_supervisor.vllm.engine_args import compilation_config, with_compilation_config
from llm_supervisor.vllm.memory import parse_version

FUSION_PASS = "fuse_allreduce_rms"
FUSION_SINCE = (0, 26)  # the oldest version known to have the pass under this name


def has_fusion_pass(version: str | None) -> bool:
    """Whether this vLLM takes pass_config.fuse_allreduce_rms (unknown: assume the newest)."""
    parsed = parse_version(version)
    return parsed is None or parsed[:2] >= FUSION_SINCE


def fusion_disabled(extra_args: list[str]) -> bool:
    """Whether the arguments already turn the fused all-reduce off."""
    cc = compilation_config(extra_args)
    if cc is None or not isinstance(cc[2], dict):
        return False
    passes = cc[2].get("pass_config")
    return isinstance(passes, dict) and passes.get(FUSION_PASS) is False


def without_fusion(extra_args: list[str]) -> list[str] | None:
    """extra_args with the fused all-reduce off, merged into a --compilation-config already there;
    None when one is there that is not a JSON object (an optimization level, a file): changing it
    is the operator's call."""
    cc = compilation_config(extra_args)
    passes = cc[2].get("pass_config") if cc is not None and isinstance(cc[2], dict) else None
    return with_compilation_config(extra_args, {"pass_config": {**(passes if isinstance(passes, dict) else {}),
                                                                FUSION_PASS: False}})
