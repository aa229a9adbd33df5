"""The bundled vLLM simulator: `python -m llm_supervisor.simulator [--vllm-version V] serve MODEL [vllm flags]`.

A test double for `vllm serve` 0.34 (default) and 0.26 (also 0.8.5, 0.11) and the `--simulate`
mode: it prints vLLM's log lines (per
process, with the real prefixes and formats), runs as the same process tree (API server →
EngineCore → one worker per GPU with TP > 1), sizes the KV cache with vLLM's memory math on a
simulated GPU (llm_supervisor.host.simgpu, shared across processes so orphans hold memory), fails the
way vLLM fails, and serves the OpenAI API with tokens at a configured rate. It says plainly that it
is simulated: a WARNING line at start, and `"simulated": true` in /version.

Modules: args (CLI), config (resolution, env, faults), memory (the memory model), dialect (per
version texts), engine (EngineCore and workers), apiserver (HTTP and lifecycle).
"""

from llm_supervisor.simulator.main import main

__all__ = ["main"]
