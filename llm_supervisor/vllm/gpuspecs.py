"""What a GPU can move and compute: memory bandwidth, dense 16-bit tensor throughput, the host
link (PCIe) and the GPU-to-GPU link, for the cards people run vLLM on. Pure data; the speed
model (llm_supervisor.vllm.speed) reads it, and the memory facts stay in cards.py.

Every figure is the vendor's own, for the dense (no 2:4 sparsity) BF16/FP16 tensor-core rate
with FP32 accumulate, which is what vLLM's bf16/fp16 GEMMs run at:

  H200 SXM     NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200): 4.8 TB/s,
               BF16 1,979 TFLOPS with sparsity → 989 dense; PCIe Gen5 x16 (128 GB/s both ways).
  H100 SXM     NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): SXM 3.35 TB/s,
               BF16 1,979* → 989; PCIe card 2.0 TB/s, BF16 1,513* → 756; NVL 3.9 TB/s, 1,671* → 835;
               PCIe Gen5 x16.
  A100         NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf):
               BF16 312 dense; 80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s, 40GB 1,555 GB/s; PCIe Gen4 x16.
  L40S         NVIDIA L40S datasheet (resources.nvidia.com/en-us-l40s/l40s-datasheet-28413): 864 GB/s,
               BF16 733* → 362; PCIe Gen4 x16, no NVLink.
  L4           NVIDIA L4 Tensor Core GPU datasheet (resources.nvidia.com/en-us-data-center-overview/
               l4-gpu-datasheet): 300 GB/s, BF16 242* → 121; PCIe Gen4 x16.
  A10          NVIDIA A10 Tensor Core GPU datasheet (nvidia.com/content/dam/en-zz/Solutions/Data-Center/
               a10/pdf/a10-datasheet.pdf): 600 GB/s, BF16 125 dense (250*); PCIe Gen4 x16.
  RTX 4090     NVIDIA Ada GPU Architecture whitepaper v2.1 (images.nvidia.com/aem-dam/Solutions/geforce/
               ada/nvidia-ada-gpu-architecture.pdf), GeForce RTX 4090 table: 1,008 GB/s, peak FP16/BF16
               tensor TFLOPS with FP32 accumulate 165.2 dense; PCIe Gen4 x16.
  RTX 4090 D   NVIDIA's RTX 4090 D product page (nvidia.cn, GeForce RTX 4090 D specifications): 14,592
               CUDA cores (114 SMs) at 2.52 GHz boost, 24 GB GDDR6X at 21 Gbps on 384 bits = 1,008 GB/s;
               NVIDIA publishes no tensor figure: 165.2 × 114/128 SMs = 147.1 (same clocks as the 4090).
  RTX 3090     NVIDIA Ampere GA102 GPU Architecture whitepaper v2.0 (nvidia.com/content/PDF/nvidia-ampere-
               ga-102-gpu-architecture-whitepaper-v2.pdf), GeForce RTX 3090: 936 GB/s, peak BF16 tensor
               TFLOPS with FP32 accumulate 71 dense; PCIe Gen4 x16.
  RTX 3080     same whitepaper, GeForce RTX 3080: 760 GB/s (320-bit GDDR6X at 19 Gbps; the 20 GB boards
               keep the bus), BF16 with FP32 accumulate 59.5 dense; PCIe Gen4 x16.

PCIe per direction: Gen4 x16 31.5 GB/s, Gen5 x16 63 GB/s (PCI-SIG: 16 and 32 GT/s per lane,
128b/130b encoding). `fp8_kv`: the card runs vLLM's FP8 KV cache in its fast attention kernels
(compute capability 8.9 and up: Ada and Hopper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GB = 1e9

# GB/s per direction of one PCIe x16 link by generation (PCI-SIG; 128b/130b from Gen3 on)
PCIE_X16_GBS = {3: 15.75, 4: 31.5, 5: 63.0}


@dataclass(frozen=True)
class GpuSpec:
    name: str
    pattern: str                 # regular expression matched against NVML's name or a profile's label
    bandwidth_gbs: float         # memory bandwidth, GB/s (10^9 bytes)
    bf16_tflops: float           # dense BF16/FP16 tensor-core TFLOPS, FP32 accumulate
    pcie_gen: int
    nvlink: bool                 # GPUs of this kind talk over NVLink (SXM boards), else over PCIe
    compute_capability: tuple[int, int]
    source: str

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_gbs * GB

    @property
    def flops(self) -> float:
        """FLOP per second."""
        return self.bf16_tflops * 1e12

    @property
    def pcie_gbs(self) -> float:
        return PCIE_X16_GBS.get(self.pcie_gen, PCIE_X16_GBS[4])

    @property
    def pcie(self) -> float:
        """Host link, bytes per second per direction."""
        return self.pcie_gbs * GB

    @property
    def fp8_kv(self) -> bool:
        return self.compute_capability >= (8, 9)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "bandwidth_gbs": self.bandwidth_gbs, "bf16_tflops": self.bf16_tflops,
                "pcie_gbs": self.pcie_gbs, "nvlink": self.nvlink, "fp8_kv_cache": self.fp8_kv,
                "source": self.source}


_H200 = "NVIDIA H200 datasheet"
_H100 = "NVIDIA H100 datasheet"
_A100 = "NVIDIA A100 datasheet"
_ADA = "NVIDIA Ada GPU architecture whitepaper"
_GA102 = "NVIDIA Ampere GA102 whitepaper"

# Order matters: the first pattern that matches wins (4090 D before 4090, PCIe before SXM).
GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("H200 NVL", r"H200.*NVL", 4800, 835, 5, False, (9, 0), _H200),
    GpuSpec("H200", r"H200", 4800, 989, 5, True, (9, 0), _H200),
    GpuSpec("H100 PCIe", r"H100.*PCIe", 2000, 756, 5, False, (9, 0), _H100),
    GpuSpec("H100 NVL", r"H100.*NVL", 3900, 835, 5, False, (9, 0), _H100),
    GpuSpec("H100 SXM", r"H100", 3350, 989, 5, True, (9, 0), _H100),
    GpuSpec("A100 80GB PCIe", r"A100.*80GB.*PCIe|A100.*PCIe.*80", 1935, 312, 4, False, (8, 0), _A100),
    GpuSpec("A100 80GB SXM", r"A100.*80", 2039, 312, 4, True, (8, 0), _A100),
    GpuSpec("A100 40GB PCIe", r"A100.*PCIE", 1555, 312, 4, False, (8, 0), _A100),
    GpuSpec("A100 40GB SXM", r"A100", 1555, 312, 4, True, (8, 0), _A100),
    GpuSpec("L40S", r"L40S", 864, 362, 4, False, (8, 9), "NVIDIA L40S datasheet"),
    GpuSpec("L4", r"\bL4\b", 300, 121, 4, False, (8, 9), "NVIDIA L4 datasheet"),
    GpuSpec("A10", r"\bA10\b", 600, 125, 4, False, (8, 6), "NVIDIA A10 datasheet"),
    GpuSpec("RTX 4090 D", r"4090\s*D", 1008, 147.1, 4, False, (8, 9),
            "NVIDIA RTX 4090 D specifications (tensor rate scaled from the 4090 by 114/128 SMs)"),
    GpuSpec("RTX 4090", r"4090", 1008, 165.2, 4, False, (8, 9), _ADA),
    GpuSpec("RTX 3090", r"3090", 936, 71, 4, False, (8, 6), _GA102),
    GpuSpec("RTX 3080", r"3080", 760, 59.5, 4, False, (8, 6), _GA102),
)


def find_gpu(name: str | None) -> GpuSpec | None:
    """The card an NVML name ("NVIDIA GeForce RTX 4090 D", "NVIDIA H100 80GB HBM3") or a profile's
    label ("RTX 4090 D", "A10") names; None when it is not in the table."""
    if not name:
        return None
    for spec in GPUS:
        if re.search(spec.pattern, name, re.I):
            return spec
    return None


def compute_capability(name: str | None) -> tuple[int, int] | None:
    """The compute capability of the card `name` names; None when it is not in the table."""
    spec = find_gpu(name)
    return spec.compute_capability if spec else None
