"""What the supervisor knows about vLLM, as pure functions and data: its log lines, its failure
kinds, its memory model and the fit prediction, calibration from its logs, the recovery policy, its
command line and metrics. Nothing here does I/O (no files, processes, sockets or clocks).
"""
