"""This machine: GPUs through NVML (or the simulated GPU), CPU/NUMA topology and placement, the
memory-policy syscalls, model files on disk, and `doctor`'s checks.
"""
