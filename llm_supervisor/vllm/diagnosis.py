"""`supervisor diagnose LOGFILE`: startup facts, the failure class and the remedy from a saved vLLM log.

The remedy is what the recovery policy would do next, computed with a profile rebuilt from the
log itself: the API server's "non-default args: {…}" (or the old "args: Namespace(…)") line,
else what vLLM reported using, else vLLM's defaults (utilization 0.9, 0.92 from v0.21, 1.0 with
0.34's extensible KV cache; 0.9 when the log names no version). The
bounds are wide (utilization 0.05–0.95, context ≥ min(2048, the log's)) since a log says nothing
about the user's limits; the remedy is advice, the daemon applies the profile's own bounds.

Outcome: "failed" when a failure was classified (also a death after ready), "ready" when the
server came up and nothing failed, "incomplete" otherwise (a log cut off during startup). A file
that shows nothing of vLLM is BadInput (exit 2); host/logfiles.py reads files (and refuses empty or
binary ones).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Iterable

from llm_supervisor.errors import BadInput
from llm_supervisor.vllm import framing, memory
from llm_supervisor.vllm.failures import Failure, FailureClassifier, FailureKind, guard_lost_failure
from llm_supervisor.vllm.logparse import CONTRACT_FACTS, HEADER_RE, LogParser, StartupFacts, split_line
from llm_supervisor.config.profile import Hardware, Model, Profile, Recovery, VllmArgs
from llm_supervisor.vllm.recovery import GiveUp, Relaunch, decide

# Each vLLM start prints one of these first; a second one in the same file starts a new run.
_RUN_MARKERS = ("vLLM API server version", "vLLM server version")
# A frame of a traceback through vLLM's own code, as Python prints it.
_VLLM_FRAME_RE = re.compile(r'^\s*File "[^"]*[/\\]vllm[/\\][^"]*", line \d+')
# The last line of a Python traceback: `ValueError: …`, `torch.OutOfMemoryError: …`.
_EXCEPTION_RE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception): ")
_ARG_KEYS = (
    "host", "port", "gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "pipeline_parallel_size",
    "data_parallel_size", "max_num_seqs", "max_num_batched_tokens", "block_size", "enforce_eager",
    "enable_prefix_caching", "dtype", "kv_cache_dtype", "quantization", "load_format", "disable_custom_all_reduce",
    "cpu_offload_gb",
)
_FLAGS = (
    ("max_model_len", "--max-model-len"),
    ("gpu_memory_utilization", "--gpu-memory-utilization"),
    ("enforce_eager", "--enforce-eager"),
    ("max_num_seqs", "--max-num-seqs"),
    # beyond CONTRACT's keys, for the multi-GPU collectives (reported as kind "unknown")
    ("disable_custom_all_reduce", "--disable-custom-all-reduce"),
)


def _bad(line: str) -> BadInput:
    return BadInput(line, [line])


def _is_vllm_line(proc: str | None, text: str) -> bool:
    """A line vLLM printed, by its form: a process prefix (`(EngineCore pid=7) `), vLLM's log
    header (`INFO 12-03 10:00:00 [file.py:12] `), its start banner, or a traceback frame in vLLM's
    code. Prose that only quotes vLLM's words (a README, an issue) has none of these."""
    return (proc is not None or HEADER_RE.match(text) is not None or _run_start(text)
            or _VLLM_FRAME_RE.match(text) is not None)


def _run_start(line: str) -> bool:
    """The first line each `vllm serve` prints: its version (plain, or in the logo)."""
    return any(m in line for m in _RUN_MARKERS) or ("█" in line and " version " in line)


def _args_from_log(facts: StartupFacts, failure: Failure | None) -> VllmArgs:
    cli = facts.cli_args or {}
    data: dict[str, Any] = {}
    for key in _ARG_KEYS:
        if key in cli and cli[key] is not None:
            try:
                VllmArgs.model_validate({key: cli[key]})
            except ValueError:
                continue
            data[key] = cli[key]
    values = failure.values if failure else {}
    if "gpu_memory_utilization" not in data:
        util = facts.requested_utilization or values.get("requested_utilization")
        if util is None:
            # what turns 0.34's extensible KV cache (and its default of 1.0) off
            off = [flag for flag, on in (("--no-enable-extensible-kv-cache", cli.get("enable_extensible_kv_cache") is False),
                                         ("--kv-cache-memory-bytes", bool(cli.get("kv_cache_memory_bytes"))),
                                         ("--num-gpu-blocks-override", bool(cli.get("num_gpu_blocks_override"))))
                   if on]
            util = memory.default_utilization(facts.vllm_version, off) if facts.vllm_version else 0.9
        data["gpu_memory_utilization"] = util
    if "max_model_len" not in data:
        length = facts.max_model_len or values.get("max_model_len")
        if length:
            data["max_model_len"] = int(length)
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "enforce_eager"):
        if key not in data and getattr(facts, key) is not None:
            data[key] = getattr(facts, key)
    if "kv_cache_dtype" not in data and facts.kv_cache_dtype:
        data["kv_cache_dtype"] = facts.kv_cache_dtype
    try:
        return VllmArgs.model_validate(data)
    except ValueError:
        keep = {k: data[k] for k in ("gpu_memory_utilization", "max_model_len") if k in data}
        return VllmArgs.model_validate(keep)


def _profile_for(args: VllmArgs, facts: StartupFacts, failure: Failure) -> Profile:
    total = facts.total_gpu_gib or failure.values.get("total_gib") or 80.0
    gpus = args.tensor_parallel_size * args.pipeline_parallel_size * args.data_parallel_size
    min_len = min(2048, args.max_model_len or 2048)
    return Profile(
        name="diagnose",
        hardware=Hardware(gpu_name=".*", gpu_count=gpus, gpu_memory_gib=float(total)),
        model=Model(id=facts.model or "unknown"),
        vllm=args,
        recovery=Recovery(
            min_max_model_len=max(16, min_len),
            min_gpu_memory_utilization=0.05,
            max_gpu_memory_utilization=max(0.95, args.gpu_memory_utilization),
        ),
    )


def _remedy(failure: Failure, facts: StartupFacts) -> dict[str, Any] | None:
    args = _args_from_log(facts, failure)
    try:
        profile = _profile_for(args, facts, failure)
    except ValueError:
        return None
    total_gib = facts.total_gpu_gib or failure.values.get("total_gib")
    try:
        decision = decide(failure, args, profile, [], facts, gpu_total_mib=total_gib * 1024 if total_gib else None,
                          hardware_total=False)
    except ValueError:  # an argument set the log's own values make invalid: no advice rather than a crash
        return None
    if isinstance(decision, GiveUp):
        return {"why": decision.reason}
    assert isinstance(decision, Relaunch)
    remedy: dict[str, Any] = {}
    for key, _ in _FLAGS:
        if key in decision.change:
            remedy[key] = decision.change[key][1]
    if "extra_args" in decision.change:
        old, new = decision.change["extra_args"]
        remedy["extra_args"] = list(new)[len(old):] if list(new)[:len(old)] == list(old) else list(new)
    remedy["why"] = decision.reason
    return remedy


def diagnose_lines(lines: Iterable[str], source: str) -> dict[str, Any]:
    """A vLLM log's lines (stdout and stderr) → CONTRACT's `diagnose --json` object. A log that
    shows nothing of vLLM is BadInput naming `source`. With several runs in one file, the last
    substantive one counts."""
    classifier = FailureClassifier()
    parser = LogParser(sink=classifier)
    vllm_seen = exception_seen = False
    exit_code: int | None = None
    lost: str | None = None  # the closing line when the engine's guard died without a report
    for line in lines:
        if line.startswith(framing.PREFIX) and (frame := framing.read_frame(line.rstrip("\r\n"))) is not None:
            # The supervisor's engine log: a launch begins a run; its closing line says how it ended.
            if frame.kind == "attempt":
                exit_code, lost = None, None
                if _substantive(parser, classifier):
                    classifier = FailureClassifier()
                    parser = LogParser(sink=classifier)
            elif frame.kind == "exit":
                # 0 can be a stop the supervisor asked for: only a failing status tells something
                exit_code = None if frame.guard_lost else frame.exit_code or None
                lost = frame.description if frame.guard_lost else None
            continue
        starts = _run_start(line)
        if not vllm_seen or starts:
            proc, text = split_line(line)
            if not vllm_seen and text:
                vllm_seen = _is_vllm_line(proc, text)
                exception_seen = exception_seen or _EXCEPTION_RE.match(text) is not None
            if starts and _substantive(parser, classifier):
                classifier = FailureClassifier()
                parser = LogParser(sink=classifier)
        parser.feed(line)
    facts = parser.facts
    precise = classifier.failure is not None and classifier.failure.kind not in (
        FailureKind.BAD_ARGUMENTS, FailureKind.UNKNOWN)
    # No line of vLLM's: refused, even when the text quotes a failure (a README does). A bare
    # paste of the exception line that ends vLLM's traceback (`ValueError: No available memory
    # for the cache blocks…`) is still vLLM's output when it names a failure vLLM prints.
    if not vllm_seen and not (exception_seen and precise):
        raise _bad(f"{source}: does not look like a vLLM log (no line printed by vLLM: no process prefix, "
                   "log header or traceback)")
    failure = classifier.classify(exit_code, facts.server_started)
    if failure is None and lost is not None:
        failure = guard_lost_failure(lost, facts.server_started)
    outcome = "failed" if failure else ("ready" if facts.server_started else "incomplete")
    return {
        "vllm_version": facts.vllm_version,
        "outcome": outcome,
        "facts": facts.contract(),
        "failure": failure.to_json() if failure else None,
        "remedy": _remedy(failure, facts) if failure else None,
    }


def _substantive(parser: LogParser, classifier: FailureClassifier) -> bool:
    facts = parser.facts
    return (facts.model_weights_gib is not None or facts.server_started or classifier.failure is not None
            or facts.vllm_version is not None)


# ---------------------------------------------------------------- human text

_FACT_LABELS = {
    "model_weights_gib": ("model weights", "GiB"),
    "available_kv_cache_gib": ("KV cache memory", "GiB"),
    "kv_cache_tokens": ("KV cache size", "tokens"),
    "max_concurrency": ("max concurrency", "x"),
    "max_concurrency_context": ("  at context", "tokens"),
    "cuda_graph_gib": ("CUDA graphs", "GiB"),
    "engine_init_seconds": ("engine init", "s"),
    "tensor_parallel_size": ("tensor parallel", ""),
}


def _show(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and unit == "tokens":
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    if unit == "x":
        return text + "x"
    return f"{text} {unit}".rstrip()


def format_diagnosis(result: dict[str, Any]) -> str:
    """A short text for people: facts, the failure, and the flags that fix it."""
    lines = [f"vLLM {result.get('vllm_version') or '(version not printed)'}: {result.get('outcome')}"]
    facts = result.get("facts") or {}
    lines.append("Startup facts:")
    for name in CONTRACT_FACTS:
        label, unit = _FACT_LABELS[name]
        lines.append(f"  {label:<18} {_show(facts.get(name), unit)}")
    failure = result.get("failure")
    if failure:
        lines.append(f"Failure: {failure['kind']}")
        lines.append(f"  {failure['message']}")
        if failure.get("values"):
            lines.append("  " + ", ".join(f"{k}={v}" for k, v in failure["values"].items()))
    remedy = result.get("remedy")
    if remedy:
        flags = []
        sets = []
        for key, flag in _FLAGS:
            if key in remedy:
                value = remedy[key]
                if isinstance(value, bool):
                    flags.append(flag if value else f"--no-{flag[2:]}")
                else:
                    flags.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
                sets.append(f"--set vllm.{key}={str(value).lower() if isinstance(value, bool) else value}")
        if remedy.get("extra_args"):
            flags += [shlex.quote(a) for a in remedy["extra_args"]]
            sets.append("(vllm.extra_args += " + json.dumps(remedy["extra_args"]) + ")")
        if flags:
            lines.append("Remedy: " + " ".join(flags))
            lines.append("  (supervisor: " + " ".join(sets) + ")")
        else:
            lines.append("Remedy: no argument change")
        lines.append(f"  why: {remedy['why']}")
    elif result.get("outcome") == "incomplete":
        lines.append("The log ends before vLLM was ready and shows no failure.")
    return "\n".join(lines)
