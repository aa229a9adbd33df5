"""Recovery policy: from a classified failure to the next launch's arguments, or a reasoned stop. Pure.

`decide()` never guesses blindly: each change is computed from the numbers vLLM printed (and the
GPU memory NVML reports, when the caller has it), stays inside the profile's recovery bounds, and
comes with a sentence that carries those numbers. It never relaunches an argument set that already
failed before ready, and it stops after `recovery.max_attempts` launches in one failure streak.

A streak is the run of launches since the last stable one. An attempt is stable when it reached
ready and stayed up at least STABLE_UPTIME_S (from `ended_at`, or the next launch's `at`); a
vLLM that becomes ready and dies again and again (flapping) therefore exhausts the streak.

`history` is every launch of this supervisor run, oldest first; the attempt that just failed may
be its last element (matched by arguments) or absent, in which case it is added here.

One policy for every vLLM version, with version-specific inputs (`_Ctx.accounting`, from the
version the log printed, else the plan's): where CUDA graphs sit (above the budget in 0.26, inside
it from 0.30, measured after warm-up in 0.34), whether vLLM refuses a start when free memory is
below the budget (0.9-0.33; 0.34's extensible KV cache does not: a short free memory shows as a
smaller cache or a KV error after warm-up, which a higher or lower utilization does not fix), and
whether a KV error's numbers are 0.34's pre-warm-up estimate (the cache after warm-up will be
smaller by the CUDA graphs) or the measurement after it.

GPUs that cannot set up their collectives (`multi_gpu_comm`) get the fragile all-reduce paths
turned off one at a time (llm_supervisor.vllm.allreduce), never a memory change.

What the GPU said is an input too, read by the caller: `gpu_faults` (hardware faults that
coincide with the failure: Xid events, new uncorrectable ECC errors, pages waiting for a reset)
stop the restart loop, since relaunching on a faulty GPU makes things worse; `gpu_tenants`
(other processes holding memory on the GPU) are named in the reason of a memory decision.

`fit`, the plan's FitContext, lets the policy use the same memory model as the plan. With it,
a model that does not fit the card at all (no KV cache memory, or out of memory while loading
the weights) gets the low-memory planner's answer (llm_supervisor.vllm.lowmem): the least CPU
offload that fits a usable context, when recovery.max_cpu_offload_gb allows it, else a stop
that says what would fit. And two rules make a relaunch the last one:

* a context cut that vLLM estimated during a warm start is shortened by what a cold compile
  costs more (the relaunch always compiles cold: vLLM keys its compile cache by max_model_len);
* when a decision moves utilization but not the context, the context is fitted to the new
  budget, as the plan fitted the first launch (only when recovery.plan_first_launch lets the
  supervisor choose the context).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Sequence, Union

from llm_supervisor.config.profile import Profile, Recovery, VllmArgs
from llm_supervisor.vllm import allreduce, memory, runner
from llm_supervisor.vllm.failures import MEMORY_KINDS, Failure, FailureKind
from llm_supervisor.vllm.fit import FitContext, overhead_for, weights_beyond_free
from llm_supervisor.vllm.logparse import StartupFacts
from llm_supervisor.vllm.lowmem import plan_low_memory
from llm_supervisor.vllm.memory import (
    CUDA_CONTEXT_GIB, FREE_CHECK_MARGIN_GIB, PRINT_ROUNDING_GIB, ceil2 as _ceil2, floor2 as _floor2,
)

STABLE_UPTIME_S = 600.0
UTIL_STEP = 0.05
DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default when neither the GPU nor the version is known
MIN_MAX_NUM_SEQS = 8
GIB_PER_MIB = 1 / 1024


@dataclass
class Attempt:
    """One launch: when (`at`, epoch seconds), with what, how it ended, and why it was made."""

    at: float
    args: VllmArgs
    failure: FailureKind | str | None = None
    change: dict[str, list[Any]] = field(default_factory=dict)
    reason: str = ""
    reached_ready: bool = False
    ended_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at, "failure": None if self.failure is None else str(FailureKind(self.failure).value),
            "change": self.change, "reason": self.reason, "reached_ready": self.reached_ready,
            "ended_at": self.ended_at,
        }


@dataclass
class Relaunch:
    args: VllmArgs
    delay_s: float
    reason: str
    change: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class GiveUp:
    reason: str


Decision = Union[Relaunch, GiveUp]


def backoff_delay(initial_s: float, max_s: float, streak: int) -> float:
    """initial_s × 2^(streak−1), capped at max_s; 0 before any failure. The one backoff formula:
    the engine's relaunches and the Ray processes' restarts both wait by it."""
    if streak <= 0:
        return 0.0
    return float(min(max_s, initial_s * 2.0 ** min(streak - 1, 60)))


# ---------------------------------------------------------------- helpers


def _key(args: VllmArgs) -> str:
    return json.dumps(args.model_dump(mode="json"), sort_keys=True)


def _kind(value: FailureKind | str | None) -> FailureKind | None:
    return None if value is None else FailureKind(value)


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 1000 else f"{x:.0f}"


@dataclass
class _Ctx:
    failure: Failure
    kind: FailureKind
    args: VllmArgs
    profile: Profile
    rec: Recovery
    facts: StartupFacts
    attempts: list[Attempt]
    streak: list[Attempt]
    free_gib: float | None
    total_gib: float | None
    kv_gib_per_token: float | None
    fit: FitContext | None = None
    accounting: memory.Accounting = memory.Accounting.BUDGET_0_26
    graph_gib: float = memory.CUDA_GRAPH_ESTIMATE_GIB   # CUDA graphs to expect with these arguments
    version: str | None = None
    engine_port: int | None = None  # the private port of this launch, behind the front door

    @property
    def extensible(self) -> bool:
        return self.accounting is memory.Accounting.EXTENSIBLE_0_34

    @property
    def engine(self) -> memory.EngineMemory:
        """The memory figures of the vLLM that failed; a log that never says which vLLM wrote it
        (and no plan to say) reads as 0.26, as its accounting does."""
        return _engine_for(self.version, self.fit)

    @property
    def block_size(self) -> int:
        """The KV block size the failed launch ran with (its argument, else the version's default)."""
        return self.args.block_size or self.engine.block_size

    @property
    def seqs(self) -> int:
        """The max_num_seqs the failed launch ran with: its argument, else vLLM's default there."""
        if self.args.max_num_seqs:
            return self.args.max_num_seqs
        if self.fit is not None:
            return self.fit.batch_limits(self.args)[1]
        if self.total_gib:
            return memory.default_batch_limits(self.total_gib, None, self.facts.vllm_version)[1]
        return DEFAULT_MAX_NUM_SEQS

    def warmup_growth_gib(self) -> float:
        """0.34: how far torch's reservation grows past the profiled activation peak, which the
        cache gives up after warm-up (memory.EngineMemory.kept_for_transients_gib); the peak as
        printed, else the plan's overhead for this launch."""
        peak = self.facts.peak_activation_gib
        if not peak and self.fit is not None:
            peak = overhead_for(self.fit, self.args, cold=True).activation_gib
        return self.engine.kept_for_transients_gib(peak or 0.0) - (peak or 0.0)

    @property
    def before_warmup(self) -> bool:
        """0.34: the failure came before the post-warm-up measurement (its numbers are the estimate)."""
        return self.extensible and not self.facts.kv_measured_after_warmup

    def measured(self) -> memory.ExtensibleSizing | None:
        """0.34: the post-warm-up measurement as the log printed it, when it did."""
        f = self.facts
        if not (self.extensible and f.kv_measured_after_warmup and f.free_gpu_gib is not None
                and f.free_after_warmup_gib is not None and f.requested_gib is not None):
            return None
        return memory.extensible_sizing_from_log(f.free_gpu_gib, f.free_after_warmup_gib, f.kv_committed_gib or 0.0,
                                                 f.requested_gib, f.transient_gib or 0.0)

    @property
    def failed_keys(self) -> set[str]:
        return {_key(a.args) for a in self.attempts if a.failure is not None and not a.reached_ready}

    def relaunch(self, changes: dict[str, Any], reason: str, delay_s: float = 0.0) -> Relaunch | None:
        """A relaunch with `changes`, or None when that argument set already failed before ready."""
        data = self.args.model_dump()
        data.update(changes)
        new = VllmArgs.model_validate(data)
        if changes and _key(new) in self.failed_keys:
            return None
        change = {k: [getattr(self.args, k), v] for k, v in changes.items() if getattr(self.args, k) != v}
        return Relaunch(new, float(delay_s), reason, change)

    def _free_margin(self) -> float:
        """Free memory a budget must leave: vLLM's refusal margin, or with 0.34's extensible cache
        (which never refuses) the new engine's CUDA context and the 1 GiB it keeps free: above that
        a higher budget adds nothing to the cache."""
        if self.extensible:
            return CUDA_CONTEXT_GIB + memory.KV_MARGIN_FLOOR_GIB
        return FREE_CHECK_MARGIN_GIB

    def free_allows(self, util: float) -> bool:
        """vLLM refuses to start unless free memory ≥ utilization × total (0.9-0.33); 0.34 starts,
        but gives the cache no more than the free memory holds."""
        if self.free_gib is None or self.total_gib is None:
            return True
        return util * self.total_gib <= self.free_gib - self._free_margin()

    def max_free_util(self) -> float:
        """The highest utilization within bounds that the free memory allows."""
        top = self.rec.max_gpu_memory_utilization
        if self.free_gib is not None and self.total_gib:
            top = min(top, _floor2((self.free_gib - self._free_margin()) / self.total_gib))
        return top

    def delay(self) -> float:
        return backoff_delay(self.rec.backoff_initial_s, self.rec.backoff_max_s, len(self.streak))


def _stable(attempt: Attempt, next_at: float | None) -> bool:
    if not attempt.reached_ready:
        return False
    end = attempt.ended_at if attempt.ended_at is not None else next_at
    return end is not None and end - attempt.at >= STABLE_UPTIME_S


def failure_streak(attempts: list[Attempt]) -> list[Attempt]:
    """The launches since the last stable one (the last attempt, stable or not, included)."""
    if not attempts:
        return []
    if _stable(attempts[-1], None):
        return [attempts[-1]]
    start = 0
    for i in range(len(attempts) - 1):
        if _stable(attempts[i], attempts[i + 1].at):
            start = i + 1
    return attempts[start:]


def _with_current(history: Iterable[Attempt], args: VllmArgs, failure: Failure) -> list[Attempt]:
    attempts = list(history)
    if attempts and _key(attempts[-1].args) == _key(args):
        last = attempts[-1]
        if last.failure is None:
            attempts[-1] = Attempt(last.at, last.args, failure.kind, last.change, last.reason,
                                   last.reached_ready or _was_ready(failure), last.ended_at)
        return attempts
    at = attempts[-1].at if attempts else 0.0
    attempts.append(Attempt(at, args, failure.kind, reached_ready=_was_ready(failure)))
    return attempts


def _was_ready(failure: Failure) -> bool:
    return failure.stage == "runtime" or bool(failure.values.get("runtime"))


# ---------------------------------------------------------------- the policy


def _engine_for(version: str | None, fit: FitContext | None) -> memory.EngineMemory:
    if version is None and fit is None:
        return memory.BASELINE_ENGINE
    return memory.engine_memory(version)


def decide(
    failure: Failure,
    args: VllmArgs,
    profile: Profile,
    history: list[Attempt],
    facts: StartupFacts | None,
    gpu_free_mib: float | None = None,
    gpu_total_mib: float | None = None,
    *,
    fit: FitContext | None = None,
    kv_bytes_per_token: float | None = None,
    hardware_total: bool = True,
    gpu_faults: Sequence[str] = (),
    gpu_tenants: Sequence[str] = (),
    engine_port: int | None = None,
) -> Relaunch | GiveUp:
    """The next launch after `failure` of a launch with `args`, or why there is none.

    gpu_free_mib / gpu_total_mib: NVML's view of the engine's GPU now (after the failed engine
    exited), when the caller has it. fit: the plan's FitContext (the model, the GPU, what this
    host learned), when the model's config is known. kv_bytes_per_token: from the model's config
    when there is no fit context. hardware_total: whether the profile's `hardware.gpu_memory_gib`
    may stand in for the GPU's total when neither NVML nor the log gives it (False for profiles
    made up from a log). gpu_faults: hardware faults seen since the GPU last proved usable, one
    phrase each. gpu_tenants: the other processes holding memory on the GPU, one phrase each.
    engine_port: the port the supervisor chose for this launch's API server behind its front door
    (a fresh one at each launch); None when vLLM listens on the profile's port itself.
    """
    kind = FailureKind(failure.kind)
    facts = facts or StartupFacts()
    attempts = _with_current(history, args, failure)
    streak = failure_streak(attempts)
    rec = profile.recovery
    v = failure.values
    total = None
    if gpu_total_mib:
        total = gpu_total_mib * GIB_PER_MIB
    elif v.get("total_gib"):
        total = float(v["total_gib"])
    elif facts.total_gpu_gib:
        total = facts.total_gpu_gib
    elif hardware_total and profile.hardware.gpu_memory_gib:
        total = float(profile.hardware.gpu_memory_gib)
    free = gpu_free_mib * GIB_PER_MIB if gpu_free_mib is not None else None
    per_token = None
    if fit is not None:
        kv_bytes_per_token = fit.kv_bytes_per_token(args)
    if kv_bytes_per_token:
        per_token = kv_bytes_per_token / 1024**3
    elif facts.kv_bytes_per_token:
        per_token = facts.kv_bytes_per_token / 1024**3
    version = facts.vllm_version or (fit.vllm_version if fit is not None else None)
    if facts.kv_measured_after_warmup:
        accounting = memory.Accounting.EXTENSIBLE_0_34  # the log shows the post-warm-up measurement
    elif version is not None or fit is not None:
        # the V1 runner shows in the log before the KV line ("Estimated CUDA graph memory", offload)
        accounting = runner.accounting(version, args, profile.env.get(runner.RUNNER_ENV), v1_seen=runner.v1_seen(facts))
    else:
        accounting = memory.Accounting.BUDGET_0_26  # a log that never says which vLLM wrote it
    if args.enforce_eager:
        graphs = 0.0
    elif accounting.graph_estimate and facts.cuda_graph_estimate_gib:
        graphs = float(facts.cuda_graph_estimate_gib)  # what vLLM took out of the budget
    elif facts.cuda_graph_gib:
        graphs = float(facts.cuda_graph_gib)
    elif fit is not None:
        graphs = fit.graph_gib(args)[0]
    else:
        graphs = memory.estimate_graph_gib(engine=_engine_for(version, fit))
    ctx = _Ctx(failure, kind, args, profile, rec, facts, attempts, streak, free, total, per_token, fit,
               accounting, graphs, version, engine_port)

    if gpu_faults:
        return GiveUp(
            f"GPU hardware fault: {'; '.join(gpu_faults)}; the failure ({kind.value}: {_cut(failure.message)}) "
            "coincides with it, and relaunching on a faulty GPU makes things worse, so no relaunch: check "
            "`nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER` and the kernel log (`dmesg | grep -i xid`), reset "
            "the GPU (`nvidia-smi -r`) or reboot, then start the supervisor again"
        )
    decision = _decide(ctx, kind, failure, streak, rec)
    if gpu_tenants and kind in MEMORY_KINDS:
        others = f"; other processes hold memory on the GPU: {'; '.join(gpu_tenants)}"
        if isinstance(decision, GiveUp):
            return GiveUp(decision.reason + others)
        decision.reason += others
    return decision


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decide(ctx: _Ctx, kind: FailureKind, failure: Failure, streak: list[Attempt], rec: Recovery) -> Relaunch | GiveUp:
    fatal = _non_recoverable(ctx)
    if fatal is not None:
        return fatal
    if len(streak) >= rec.max_attempts:
        readies = sum(1 for a in streak if a.reached_ready)
        what = (f"vLLM became ready and then died {readies} times" if readies >= 2
                else f"{len(streak)} launches failed")
        return GiveUp(
            f"giving up: {what} in a row (recovery.max_attempts = {rec.max_attempts}); "
            f"last failure: {kind.value}: {failure.message}" + _low_memory_advice(ctx)
        )
    handler = _HANDLERS.get(kind, _same_args)
    decision = handler(ctx)
    if isinstance(decision, Relaunch):
        decision = _after_warm_start(ctx, decision)
        decision = _fit_context_to_budget(ctx, decision)
    return decision


# ------------------------------------------------------------ what the next launch will be like


def _after_warm_start(ctx: _Ctx, decision: Relaunch) -> Relaunch:
    """Shorten a context cut that vLLM estimated during a warm start.

    vLLM keys its torch.compile cache by max_model_len (among others), so the relaunch with a
    shorter context compiles cold, and a cold compile's profiling run peaks higher (vLLM 0.26,
    H100, Qwen3-4B: 0.80 GiB against 0.62 GiB warm). An estimate printed by a warm start is then
    too long by that difference and the relaunch fails again (seen on an H100:
    tests/fixtures/vllm-0.26.0/kv-cache-too-small-recovered.log)."""
    fit, args = ctx.fit, decision.args
    if (fit is None or ctx.kind is not FailureKind.KV_CACHE_TOO_SMALL or "max_model_len" not in decision.change
            or not ctx.facts.compile_cached or args.enforce_eager or not args.max_model_len):
        return decision
    extra_gib = fit.cold_compile_extra_gib(args)
    per_token = fit.kv_bytes_per_token(args) / 1024**3
    bs = ctx.block_size
    new_len = (args.max_model_len - math.ceil(extra_gib / per_token)) // bs * bs
    if new_len < ctx.rec.min_max_model_len:
        return decision
    before = decision.change["max_model_len"][0]
    reason = (f"{decision.reason}; then → {new_len}: that estimate came from a warm start, and the relaunch "
              f"compiles cold (vLLM's compile cache is keyed by max_model_len), which takes about "
              f"{extra_gib:.2f} GiB more activation memory")
    return Relaunch(args.model_copy(update={"max_model_len": new_len}), decision.delay_s, reason,
                    {**decision.change, "max_model_len": [before, new_len]})


def _fit_context_to_budget(ctx: _Ctx, decision: Relaunch) -> Relaunch:
    """When a decision moves utilization but not the context, fit the context to the new budget
    with the plan's memory model, as the plan did for the first launch: after a raise, give back
    context an earlier cut took (up to what the profile asks); after a cut, avoid a launch that
    cannot hold it. Only when the profile lets the supervisor choose (recovery.plan_first_launch)."""
    fit = ctx.fit
    if (fit is None or not ctx.rec.plan_first_launch or "max_model_len" in decision.change
            or "gpu_memory_utilization" not in decision.change or not decision.args.max_model_len):
        return decision
    current = decision.args.max_model_len
    asked = ctx.profile.vllm.max_model_len
    new = fit.predict(decision.args.model_copy(update={"max_model_len": asked})).max_model_len
    if not new or new == current:
        return decision
    util = decision.args.gpu_memory_utilization
    reason = (f"{decision.reason}; max_model_len {current:,} → {new:,}: what the planner predicts "
              f"utilization {util:g} holds" + (f" (the profile asks for {asked:,})" if asked else ""))
    return Relaunch(decision.args.model_copy(update={"max_model_len": new}), decision.delay_s, reason,
                    {**decision.change, "max_model_len": [current, new]})


def _offload(ctx: _Ctx, head: str, why: str, only_if_needed: bool = False) -> Relaunch | GiveUp | None:
    """The low-memory planner's answer for a model that does not fit: relaunch with the least CPU
    offload (and the levers that lower it) with which a usable context fits, when the profile
    allows it; else a stop that says why and what would fit. `only_if_needed`: only when the plan
    sees no way without offload and the profile allows offload (else None, and the caller's own
    steps, from vLLM's numbers, go first: the memory model may be wrong). None without a fit
    context, or when the memory model thinks the arguments fit."""
    fit = ctx.fit
    if fit is None or (only_if_needed and not ctx.rec.max_cpu_offload_gb):
        return None
    if fit.recovery != ctx.rec:
        fit = replace(fit, recovery=ctx.rec)  # the bounds of the profile being recovered
    low = plan_low_memory(fit, ctx.args, free_gib=ctx.free_gib)
    measured, predicted = ctx.facts.model_weights_gib, fit.predict(ctx.args).weights_gib
    # vLLM measured more weights on the GPU than the memory model says: offload that too
    extra = math.ceil(measured - predicted) if measured and measured > predicted + 0.25 else 0
    if low is None:
        if only_if_needed or not extra or not ctx.rec.max_cpu_offload_gb:
            return None
        x = float((ctx.args.cpu_offload_gb or 0) + extra)
        text = (f"{head}: {why}; vLLM's weights on the GPU ({measured:.2f} GiB) are {measured - predicted:.2f} GiB more"
                f" than the memory model's, so cpu_offload_gb {ctx.args.cpu_offload_gb or 0:g} → {x:g}")
        if x > ctx.rec.max_cpu_offload_gb:
            return GiveUp(f"{text} would be needed, above recovery.max_cpu_offload_gb"
                          f" ({ctx.rec.max_cpu_offload_gb:g}): raise it to {x:g} or more")
        return ctx.relaunch({"cpu_offload_gb": x}, text) or GiveUp(text + ", and that already failed")
    if only_if_needed and low.fits and not low.offload_gib:
        return None
    if low.fits and extra > 0 and (low.offload_gib or low.args.cpu_offload_gb):
        # the plan (new offload, or levers on top of the offload already asked) holds for the
        # model's weights: offload what vLLM measured beyond them too
        low.offload_gib = float((low.args.cpu_offload_gb or 0) + extra)
        low.args = low.args.model_copy(update={"cpu_offload_gb": low.offload_gib})
        if low.offload_gib > ctx.rec.max_cpu_offload_gb and low.allowed:
            low.allowed = False
            low.problems.append(f"recovery.max_cpu_offload_gb is {ctx.rec.max_cpu_offload_gb:g}: set it to"
                                f" {low.offload_gib:g} or more to allow it")
    if not low.usable_now:
        return GiveUp(f"{head}: {why}; " + " ".join(low.refusal()))
    changes = {k: v for k, v in low.args.model_dump().items()
               if k in ("gpu_memory_utilization", "kv_cache_dtype", "enforce_eager", "max_num_seqs", "cpu_offload_gb",
                        "max_model_len") and getattr(ctx.args, k) != v}
    if low.offload_gib and (ctx.args.max_model_len or 0) > low.context:
        changes["max_model_len"] = low.context
    r = ctx.relaunch(changes, f"{head}: {why}; {low.summary()}")
    return r if r is not None else GiveUp(f"{head}: {why}; {low.summary()}, and that already failed")


def _low_memory_advice(ctx: _Ctx) -> str:
    """After memory failures: what the low-memory planner says would fit ("" when nothing)."""
    if ctx.fit is None or ctx.kind not in (FailureKind.NO_KV_CACHE_MEMORY, FailureKind.CUDA_OOM):
        return ""
    fit = ctx.fit if ctx.fit.recovery == ctx.rec else replace(ctx.fit, recovery=ctx.rec)
    low = plan_low_memory(fit, ctx.args, free_gib=ctx.free_gib)
    if low is None or not low.fits:
        return ""
    return "; " + " ".join(low.refusal())


def _non_recoverable(ctx: _Ctx) -> GiveUp | None:
    kind, msg = ctx.kind, ctx.failure.message
    if kind is FailureKind.MODEL_NOT_FOUND:
        return GiveUp(
            f"vLLM cannot find the model {ctx.profile.model.id!r} ({msg}); no argument change fixes that: "
            "check model.id (a Hugging Face id or a local folder with config.json), HF_TOKEN for gated "
            "models, and network access or HF_HOME for offline use"
        )
    if kind is FailureKind.BAD_ARGUMENTS and ctx.failure.values.get("engine_command"):
        return GiveUp(f"the engine command {msg}; no argument change fixes that: check LLM_SUPERVISOR_ENGINE_COMMAND "
                      "(is vLLM installed in the daemon's environment, and on its PATH?)")
    if kind is FailureKind.BAD_ARGUMENTS:
        return GiveUp(f"vLLM rejected its arguments ({msg}); fix the profile's vllm section or extra_args")
    if kind in MEMORY_KINDS and runner.offload_ignored(ctx.facts, ctx.args.cpu_offload_gb):
        return GiveUp(runner.offload_ignored_reason(ctx.facts, float(ctx.args.cpu_offload_gb or 0)))
    if kind is FailureKind.PORT_IN_USE and _port_taken(ctx) == "profile":
        return GiveUp(
            f"port {ctx.args.port} is already in use by another process ({msg}); stop that process "
            "or set vllm.port to a free port"
        )
    return None


def _same_args(ctx: _Ctx) -> Relaunch | GiveUp:
    """Unknown failures and internal port races: one more try with the same arguments, with backoff.
    "Twice the same way" counts only the failures since the last launch that reached ready: a
    start that worked in between means the earlier failure was not this one repeating."""
    since_ready: list[Attempt] = []
    for attempt in reversed(ctx.streak[:-1]):
        if attempt.reached_ready:
            break
        since_ready.append(attempt)
    before_ready = [a for a in since_ready if _key(a.args) == _key(ctx.args) and _kind(a.failure) is ctx.kind]
    if before_ready and not ctx.streak[-1].reached_ready:
        return GiveUp(
            f"vLLM failed twice the same way with the same arguments ({ctx.kind.value}: "
            f"{ctx.failure.message}); not retrying it blindly"
        )
    delay = ctx.delay()
    reason = (f"{ctx.kind.value}: {ctx.failure.message}; retrying once with the same arguments "
              f"in {_fmt(delay)} s")
    return Relaunch(ctx.args, delay, reason, {})


def _port_taken(ctx: _Ctx) -> str:
    """Whose port another process held at vLLM's bind: "profile" (vllm.port, where vLLM listens
    itself without the front door), "private" (the port the supervisor chose for this launch behind
    the front door, which holds the profile's), or "internal" (another one named in the message,
    such as torch.distributed's). vLLM's own bind error names no port."""
    port = ctx.failure.values.get("port")
    listening = ctx.engine_port if ctx.engine_port is not None else ctx.args.port
    if port is not None and port != listening:
        return "internal"
    return "private" if ctx.engine_port is not None else "profile"


def _port_race(ctx: _Ctx) -> Relaunch | GiveUp:
    """Another process took a port between its choice and vLLM's bind (the profile's own port
    gives up at once, in _non_recoverable). The private port behind the front door is chosen afresh
    at each launch, so the next launch binds another one; an internal port is retried once as an
    unknown failure is."""
    if _port_taken(ctx) != "private":
        return _same_args(ctx)
    delay = ctx.delay()
    return Relaunch(ctx.args, delay, f"port_in_use: another process took the engine's private port {ctx.engine_port} "
                    f"(behind the front door) before vLLM bound it; relaunching on a fresh port in {_fmt(delay)} s", {})


def _engine_dead(ctx: _Ctx) -> Relaunch | GiveUp:
    delay = ctx.delay()
    n = len(ctx.streak)
    when = "after it was ready" if ctx.streak[-1].reached_ready else "during startup"
    reason = (f"the engine died {when} ({ctx.failure.message}); restarting with the same arguments "
              f"in {_fmt(delay)} s (launch {n + 1} of at most {ctx.rec.max_attempts} in this streak)")
    return Relaunch(ctx.args, delay, reason, {})


# ------------------------------------------------------------ the GPUs of one engine cannot talk


def _multi_gpu_comm(ctx: _Ctx) -> Relaunch | GiveUp:
    """cuBLAS/NCCL/IPC failing while the ranks set up their collectives: turn the fragile
    all-reduce paths off, cheapest first (llm_supervisor.vllm.allreduce), then stop with what to
    check; on one GPU there is no collective to change."""
    args, msg = ctx.args, ctx.failure.message
    world = args.tensor_parallel_size * args.pipeline_parallel_size
    if world <= 1:
        return GiveUp(f"a CUDA library failed on a single-GPU engine ({msg}); no argument changes that: check the "
                      "driver and the GPU (nvidia-smi, dmesg)")
    backend = ctx.failure.values.get("flashinfer_allreduce")
    chose = f" (vLLM chose flashinfer's {backend} all-reduce)" if backend else ""
    if args.tensor_parallel_size > 1 and allreduce.has_fusion_pass(ctx.version) \
            and not allreduce.fusion_disabled(args.extra_args):
        extra = allreduce.without_fusion(args.extra_args)
        if extra is not None:
            r = ctx.relaunch({"extra_args": extra},
                             f"the {world} GPUs failed to set up their all-reduce{chose}: {msg}; relaunching without "
                             "the fused all-reduce (--compilation-config pass_config.fuse_allreduce_rms=false; "
                             "put it in vllm.extra_args to skip this failed start next time)")
            if r is not None:
                return r
    if not args.disable_custom_all_reduce:
        r = ctx.relaunch({"disable_custom_all_reduce": True},
                         f"the {world} GPUs failed in their collectives{chose}: {msg}; relaunching with NCCL for every "
                         "all-reduce (vllm.disable_custom_all_reduce: true)")
        if r is not None:
            return r
    return GiveUp(f"the {world} GPUs still fail in their collectives with the fused and the custom all-reduce off "
                  f"({msg}): check peer access between them (nvidia-smi topo -m), try NCCL_P2P_DISABLE=1 in the "
                  "profile's env, and the driver")


# ------------------------------------------------------------ KV cache too small


def _kv_too_small(ctx: _Ctx) -> Relaunch | GiveUp:
    v, args, rec = ctx.failure.values, ctx.args, ctx.rec
    length = int(v.get("max_model_len") or args.max_model_len or ctx.facts.max_model_len or 0)
    need = v.get("needed_gib")
    avail = v.get("available_gib")
    est = v.get("estimated_max_model_len")
    bs = ctx.block_size
    u = args.gpu_memory_utilization

    per_token = ctx.kv_gib_per_token
    if need and length:
        per_token = (need + PRINT_ROUNDING_GIB) / length
    elif avail and est:
        per_token = avail / est
    if est:
        fit = int(est)
        how = f"vLLM estimates {fit} tokens fit"
    elif need and avail and length:
        fit = int(length * max(avail - PRINT_ROUNDING_GIB, 0.0) / (need + PRINT_ROUNDING_GIB))
        how = (f"{length} × {_fmt(avail)}/{_fmt(need)} GiB (allowing for vLLM's rounding to 0.01 GiB) "
               f"= {fit} tokens fit")
    elif v.get("kv_cache_tokens"):
        fit = int(v["kv_cache_tokens"])
        how = f"the KV cache holds {fit} tokens"
    elif avail is not None and per_token:
        fit = int(avail / per_token)
        how = f"{_fmt(avail)} GiB holds {fit} tokens"
    else:
        return GiveUp(f"the KV cache is too small for max_model_len {length or 'default'} but vLLM printed "
                      f"no numbers to fit it by ({ctx.failure.message}); set vllm.max_model_len lower by hand")
    room = avail  # the KV memory a relaunch at this utilization will have for one request
    if ctx.before_warmup and per_token:
        # 0.34 checked its pre-warm-up estimate; after warm-up it sizes the cache again from
        # measured memory, without the CUDA graphs that estimate still counts and in whole pages
        lost = ctx.graph_gib + memory.committed_null_block_gib(_layers(ctx)) + ctx.warmup_growth_gib()
        base = avail if avail is not None else fit * per_token
        room = base - PRINT_ROUNDING_GIB - lost  # below 0 when even that estimate's rest goes to them
        after = min(fit, int(max(room, 0.0) / per_token))
        how += (f"; vLLM {ctx.version or '0.34'} sizes the cache again after warm-up, without the ~{lost:.2f} GiB of "
                f"CUDA graphs, torch's reservation growth and page rounding that estimate still counts: {after} tokens")
        fit = after
    device = ctx.measured()
    if device is not None and device.bound == "device":
        released = _released_for(ctx, device, need)
        if released is not None:
            return released
    fit_b = fit // bs * bs
    upper = (length - 1) // bs * bs if length else fit_b
    if rec.max_max_model_len is not None:
        upper = min(upper, rec.max_max_model_len)
    what = (f"one {length}-token request needs {_fmt(need)} GiB of KV cache but only {_fmt(avail)} GiB is "
            f"available (utilization {_fmt(u)})" if need and avail is not None
            else f"max_model_len {length} does not fit in the KV cache (utilization {_fmt(u)})")
    if device is not None and device.bound == "device":
        what += (f"; after warm-up free device memory, not the utilization, limited the cache (other processes hold "
                 f"GPU memory: {_fmt(ctx.facts.free_gpu_gib or 0)} GiB was free at start)")

    target = ctx.profile.target
    if target is not None:
        return _kv_fit_target(ctx, fit, fit_b, upper, per_token, room, what, how)

    new_len = min(fit_b, upper)
    if new_len >= rec.min_max_model_len:
        reason = f"{what}; {how}, so max_model_len {length} → {new_len} (a multiple of the {bs}-token block)"
        if rec.max_max_model_len is not None and new_len == rec.max_max_model_len < fit_b:
            reason += ", capped by recovery.max_max_model_len"
        r = ctx.relaunch({"max_model_len": new_len}, reason)
        if r is not None:
            return r
        new_len -= bs
        if new_len >= rec.min_max_model_len:
            r = ctx.relaunch({"max_model_len": new_len}, reason.replace(f"→ {new_len + bs}", f"→ {new_len}")
                             + f" (one block less: {new_len + bs} already failed)")
            if r is not None:
                return r
    return _raise_util_for(ctx, rec.min_max_model_len, per_token, room, what,
                           f"even recovery.min_max_model_len ({rec.min_max_model_len}) does not fit ({how})")


def _kv_fit_target(ctx: _Ctx, fit: int, fit_b: int, upper: int, per_token: float | None,
                   avail: float | None, what: str, how: str) -> Relaunch | GiveUp:
    """Fit so that `min_concurrency` requests of `context` tokens run at once.

    The KV pool holds about `fit` tokens (what one request could use). vLLM's "maximum
    concurrency" is pool / max_model_len, so max_model_len = pool / C (≥ context) keeps C
    requests of up to max_model_len tokens in memory together; when pool < C × context the
    target needs more memory: raise utilization if bounds and free memory allow, else say so.
    """
    assert ctx.profile.target is not None
    rec, args = ctx.rec, ctx.args
    bs = ctx.block_size
    conc, context = ctx.profile.target.min_concurrency, ctx.profile.target.context
    per_request = -(-context // bs) * bs
    len_for_target = int(fit / conc) // bs * bs
    goal = f"the target of {_fmt(conc)} requests of {context} tokens needs {math.ceil(conc * per_request)} tokens"
    if len_for_target >= context:
        new_len = max(min(fit_b, len_for_target, upper), rec.min_max_model_len)
        reason = (f"{what}; {how}; {goal}, so max_model_len {args.max_model_len or ctx.failure.values.get('max_model_len')}"
                  f" → {new_len} keeps {fit / new_len:.2f}× concurrency at that length")
        r = ctx.relaunch({"max_model_len": new_len}, reason)
        if r is not None:
            return r
    # Not enough KV memory for the target at this utilization: how much more would do?
    short = ""
    if per_token and avail is not None and ctx.total_gib:
        need_gib = conc * per_request * per_token
        util = _ceil2(args.gpu_memory_utilization + (need_gib - max(avail - PRINT_ROUNDING_GIB, 0)) / ctx.total_gib + 0.01)
        if util <= ctx.rec.max_gpu_memory_utilization and ctx.free_allows(util) and not _device_bound(ctx):
            new_len = min(max(context, rec.min_max_model_len), upper if upper >= context else context)
            reason = (f"{what}; {how}; {goal} ({need_gib:.2f} GiB), so gpu_memory_utilization "
                      f"{_fmt(args.gpu_memory_utilization)} → {_fmt(util)} and max_model_len → {new_len}")
            r = ctx.relaunch({"gpu_memory_utilization": util, "max_model_len": new_len}, reason)
            if r is not None:
                return r
        short = (f"; it would need utilization {_fmt(util)} (bounds allow ≤ {_fmt(ctx.rec.max_gpu_memory_utilization)}"
                 + (f", {ctx.free_gib:.2f} GiB free" if ctx.free_gib is not None else "") + ")")
    new_len = min(fit_b, per_request, upper)
    if new_len < rec.min_max_model_len:
        return _raise_util_for(ctx, rec.min_max_model_len, per_token, avail, what,
                               f"even recovery.min_max_model_len ({rec.min_max_model_len}) does not fit ({how})")
    reason = (f"{what}; {how}; the target cannot be met on this GPU: {goal} but the KV cache holds about "
              f"{fit}, {fit / per_request:.2f} requests of {context}{short}; using max_model_len {new_len}")
    r = ctx.relaunch({"max_model_len": new_len}, reason)
    return r if r is not None else GiveUp(reason + "; that already failed")


def _layers(ctx: _Ctx) -> int:
    """Layers on one GPU (the fit context's model; else a large model's, for a safe rounding)."""
    if ctx.fit is not None:
        return max(ctx.fit.shape.layers_per_stage(ctx.args.pipeline_parallel_size))
    return 64


def _released_for(ctx: _Ctx, device: memory.ExtensibleSizing, need_gib: float | None) -> Relaunch | None:
    """0.34, cache bound by free device memory: when NVML now shows enough memory released for
    the same arguments, retry them (a lower or higher utilization would not change that bound)."""
    f = ctx.facts
    if ctx.free_gib is None or f.free_gpu_gib is None or f.free_after_warmup_gib is None or not need_gib:
        return None
    non_kv = f.free_gpu_gib - f.free_after_warmup_gib - (f.kv_committed_gib or 0.0)
    transient = f.transient_gib or 0.0
    now = memory.extensible_sizing(f.requested_gib or 0.0, ctx.free_gib - CUDA_CONTEXT_GIB, non_kv, transient)
    if now.available_gib < need_gib + PRINT_ROUNDING_GIB:
        return None
    delay = ctx.delay()
    return Relaunch(ctx.args, delay,
                    f"after warm-up only {device.by_device_gib:.2f} GiB of free device memory was left for the KV cache "
                    f"(other processes held memory), but {ctx.free_gib:.2f} GiB is free now, enough for "
                    f"{_fmt(need_gib)} GiB; retrying the same arguments in {_fmt(delay)} s", {})


def _device_bound(ctx: _Ctx) -> bool:
    device = ctx.measured()
    return device is not None and device.bound == "device"


def _raise_util_for(ctx: _Ctx, want_len: int, per_token: float | None, avail: float | None,
                    what: str, why: str) -> Relaunch | GiveUp:
    """Raise utilization just enough for `want_len` tokens, within bounds and free memory."""
    args, rec = ctx.args, ctx.rec
    bs = ctx.block_size
    if _device_bound(ctx):
        device = ctx.measured()
        assert device is not None
        return GiveUp(
            f"{what}; {why}: after warm-up vLLM {ctx.version or '0.34'} found only {device.by_device_gib:.2f} GiB of free "
            f"device memory for the KV cache (its {_fmt(args.gpu_memory_utilization)} budget would allow "
            f"{device.by_budget_gib:.2f} GiB): other processes hold the GPU's memory, and no utilization changes that; "
            "free it (see nvidia-smi) or lower recovery.min_max_model_len"
        )
    if not per_token or avail is None or not ctx.total_gib:
        return GiveUp(f"{what}; {why}, and the numbers to compute a higher utilization are missing; "
                      "raise vllm.gpu_memory_utilization or lower recovery.min_max_model_len")
    want_b = -(-want_len // bs) * bs
    need_gib = want_b * per_token
    # a negative `avail` (0.34: the graphs and growth after warm-up exceed the estimate's rest) is
    # a deficit the higher utilization must cover too
    avail_lo = max(avail - PRINT_ROUNDING_GIB, 0.0) if avail >= 0 else avail
    util = _ceil2(args.gpu_memory_utilization + (need_gib - avail_lo) / ctx.total_gib + 0.01)
    if util > rec.max_gpu_memory_utilization:
        return GiveUp(
            f"{what}; {why}: {want_len} tokens need {need_gib:.2f} GiB of KV cache, which takes utilization "
            f"≥ {_fmt(util)} on this {ctx.total_gib:.2f} GiB GPU, above recovery.max_gpu_memory_utilization "
            f"({_fmt(rec.max_gpu_memory_utilization)}); use a smaller model or quantization, a fp8 KV cache, "
            "more GPUs, or lower recovery.min_max_model_len"
        )
    if not ctx.free_allows(util):
        return GiveUp(
            f"{what}; {why}: {want_len} tokens need utilization {_fmt(util)} ({util * ctx.total_gib:.2f} GiB) "
            f"but only {ctx.free_gib:.2f} GiB of the GPU is free; free memory used by other processes"
        )
    gained = (util - args.gpu_memory_utilization) * ctx.total_gib
    new_len = int((avail_lo + gained) / per_token) // bs * bs
    cap = args.max_model_len or ctx.failure.values.get("max_model_len") or new_len
    if rec.max_max_model_len is not None:
        cap = min(cap, rec.max_max_model_len)
    new_len = max(min(new_len, cap), want_len)
    reason = (f"{what}; {why}, so gpu_memory_utilization {_fmt(args.gpu_memory_utilization)} → {_fmt(util)} "
              f"(+{gained:.2f} GiB) and max_model_len → {new_len}")
    r = ctx.relaunch({"gpu_memory_utilization": util, "max_model_len": new_len}, reason)
    return r if r is not None else GiveUp(reason + "; that already failed")


# ------------------------------------------------------------ free memory short at start


def _insufficient_free(ctx: _Ctx) -> Relaunch | GiveUp:
    v, args, rec = ctx.failure.values, ctx.args, ctx.rec
    total = ctx.total_gib or v.get("total_gib")
    reported_free = v.get("free_gib")
    free = ctx.free_gib if ctx.free_gib is not None else reported_free
    u = args.gpu_memory_utilization
    if not total or free is None:
        step = _floor2(u - UTIL_STEP)
        if step < rec.min_gpu_memory_utilization:
            return GiveUp(f"not enough free GPU memory for utilization {_fmt(u)} ({ctx.failure.message}) and "
                          f"recovery.min_gpu_memory_utilization is {_fmt(rec.min_gpu_memory_utilization)}")
        r = ctx.relaunch({"gpu_memory_utilization": step},
                         f"not enough free GPU memory for utilization {_fmt(u)}; stepping down to {_fmt(step)}")
        return r or GiveUp(f"not enough free GPU memory for utilization {_fmt(u)}; {_fmt(step)} already failed")
    requested = v.get("requested_gib") or u * total
    # 0.32+ with weights held by another process: the check compares free memory with the budget
    # less those weights ("the engine's budget after excluding external process's weights")
    external = u * total - requested if v.get("requested_gib") and u * total - requested > 0.05 else 0.0
    # vLLM 0.26 captures CUDA graphs outside the utilization budget (the H100 fixtures: 1.0 GiB
    # above 23.75 GiB requested), so the new budget must leave room for them too; from 0.30 they
    # are inside it.
    graphs = 0.0 if ctx.accounting.graphs_in_budget else memory.graph_headroom_gib(args.enforce_eager, None, ctx.graph_gib)
    margin = max(0.5, 0.02 * total) + graphs
    if ctx.free_gib is not None and ctx.free_gib >= requested + margin:
        delay = ctx.delay()
        return Relaunch(args, delay,
                        f"only {_fmt(reported_free or 0)} GiB was free at start for {_fmt(requested)} GiB requested, "
                        f"but {ctx.free_gib:.2f} GiB is free now (memory was released); retrying the same "
                        f"arguments in {_fmt(delay)} s", {})
    if reported_free is not None and ctx.free_gib is not None:
        # NVML's figure after the engine exited still counts the memory the new engine's own CUDA
        # context will take; vLLM's figure was measured after it. Close together: trust vLLM's;
        # far apart: the other process let go meanwhile, so NVML's, less a context.
        close = ctx.free_gib - reported_free <= 2 * CUDA_CONTEXT_GIB
        free = min(ctx.free_gib, reported_free) if close else ctx.free_gib - CUDA_CONTEXT_GIB
    util = min(_floor2((free - margin + external) / total), rec.max_gpu_memory_utilization)
    if util >= u:
        util = _floor2(u - 0.01)
    head = (f"only {_fmt(free)} of {_fmt(total)} GiB is free on the GPU, less than utilization {_fmt(u)} asks "
            f"({_fmt(requested)} GiB" + (f" besides {external:.2f} GiB of weights another process holds" if external else "")
            + ")")
    if util < rec.min_gpu_memory_utilization:
        return GiveUp(
            f"{head}; keeping a {margin:.2f} GiB margin leaves utilization {_fmt(max(util, 0))}, below "
            f"recovery.min_gpu_memory_utilization ({_fmt(rec.min_gpu_memory_utilization)}); free GPU memory "
            "used by other processes (see nvidia-smi) or lower the minimum"
        )
    reason = (f"{head}; gpu_memory_utilization {_fmt(u)} → {_fmt(util)} = ({_fmt(free)} − {margin:.2f} GiB margin"
              f"{f', {graphs:.2f} of it for CUDA graphs' if graphs else ''}"
              f"{f' + {external:.2f} GiB of external weights' if external else ''}) / {_fmt(total)} GiB, rounded down")
    r = ctx.relaunch({"gpu_memory_utilization": util}, reason)
    if r is None:
        util = _floor2(util - 0.01)
        if util >= rec.min_gpu_memory_utilization:
            r = ctx.relaunch({"gpu_memory_utilization": util}, reason + f" (then one step lower, {_fmt(util)})")
    return r or GiveUp(reason + "; that already failed")


# ------------------------------------------------------------ no memory left for the KV cache


def _no_kv_memory(ctx: _Ctx) -> Relaunch | GiveUp:
    args, rec, facts = ctx.args, ctx.rec, ctx.facts
    u = args.gpu_memory_utilization
    total = ctx.total_gib
    v = ctx.failure.values
    weights = facts.model_weights_gib or facts.profile_weights_gib or v.get("external_weights_gib")
    head = f"no memory is left for the KV cache at utilization {_fmt(u)}"
    # 0.34: the cache also gives up what CUDA graphs take (measured after warm-up); its
    # pre-warm-up estimate does not count them yet
    graphs_after = ctx.graph_gib if ctx.before_warmup else 0.0
    graph_text = f" and {graphs_after:.2f} GiB of CUDA graphs after warm-up" if graphs_after else ""
    measured = ctx.measured()
    if weights and total and weights >= rec.max_gpu_memory_utilization * total:
        why = (f"the weights alone take {_fmt(weights)} GiB, more than {_fmt(rec.max_gpu_memory_utilization)} × "
               f"{_fmt(total)} GiB")
        offload = _offload(ctx, head, why)
        if offload is not None:
            return offload
        return GiveUp(
            f"{head}: {why}; this model cannot fit this GPU: use a "
            "quantized model, tensor parallelism over more GPUs, or a larger GPU"
        )
    futile = _offload(ctx, head, "no change within the recovery bounds leaves room for a usable context",
                      only_if_needed=True)
    if futile is not None:
        return futile
    non_kv = None
    if total and measured is not None:
        non_kv = u * total - measured.by_budget_gib
        how = (f"after warm-up {non_kv:.2f} GiB goes to weights, non-torch memory, CUDA graphs and activations "
               "(as vLLM measured them)")
    elif total and facts.available_kv_cache_gib is not None and facts.available_kv_cache_gib <= 0:
        non_kv = u * total - facts.available_kv_cache_gib + graphs_after
        how = f"{non_kv:.2f} GiB goes to weights, activations{graph_text or ' and graphs'}"
    elif total and weights and facts.peak_activation_gib is not None and facts.non_torch_gib is not None:
        overhead = facts.peak_activation_gib + facts.non_torch_gib
        non_kv = weights + overhead + graphs_after
        how = (f"the weights take {_fmt(weights)} GiB, plus {overhead:.2f} GiB of peak activation and non-torch "
               f"memory (as vLLM measured them){graph_text}")
    elif total and weights and ctx.fit is not None:
        overhead = overhead_for(ctx.fit, args, cold=True).total_gib
        non_kv = weights + overhead + (ctx.graph_gib if ctx.accounting.graphs_in_budget else 0.0)
        how = (f"the weights take {_fmt(weights)} GiB, plus about {overhead:.2f} GiB of peak activation and "
               "non-torch memory (the memory model's estimate)"
               + (f" and {ctx.graph_gib:.2f} GiB of CUDA graphs" if ctx.accounting.graphs_in_budget and ctx.graph_gib else ""))
    options: list[tuple[dict[str, Any], str]] = []
    want_len = min(args.max_model_len or ctx.facts.max_model_len or rec.min_max_model_len, rec.min_max_model_len)
    if non_kv is not None and total:
        want_kv = want_len * ctx.kv_gib_per_token if ctx.kv_gib_per_token else max(1.0, 0.05 * total)
        util = _ceil2((non_kv + want_kv) / total + 0.01)
        if u < util <= rec.max_gpu_memory_utilization and ctx.free_allows(util):
            options.append(({"gpu_memory_utilization": util},
                            f"{head}: {how}; gpu_memory_utilization {_fmt(u)} → {_fmt(util)} leaves about "
                            f"{_fmt(util * total - non_kv)} GiB for the KV cache"))
    else:
        util = min(_ceil2(u + UTIL_STEP), ctx.max_free_util())
        if util > u:
            options.append(({"gpu_memory_utilization": util},
                             f"{head}; gpu_memory_utilization {_fmt(u)} → {_fmt(util)}"))
    top = max(ctx.max_free_util(), u)
    top_change: dict[str, Any] = {"gpu_memory_utilization": top} if top > u else {}
    top_text = f" at utilization {_fmt(top)}" if top > u else ""
    # where the graphs were inside the budget and the numbers are known, eager mode is tried only
    # when what it frees holds the usable context (else the next launch fails the same way)
    eager_short = (non_kv is not None and total and ctx.accounting.graphs_in_budget and ctx.graph_gib
                   and ctx.kv_gib_per_token
                   and top * total - (non_kv - ctx.graph_gib) < want_len * ctx.kv_gib_per_token)
    if not args.enforce_eager and not eager_short:
        options.append(({**top_change, "enforce_eager": True},
                        f"{head}; enforce_eager saves the CUDA-graph memory{top_text}"))
    seqs = ctx.seqs
    if seqs // 2 >= MIN_MAX_NUM_SEQS:
        options.append(({**top_change, "enforce_eager": True, "max_num_seqs": seqs // 2},
                        f"{head}; fewer sequences ({seqs} → {seqs // 2}) shrink the warm-up activations{top_text}"))
    if (args.max_model_len or 0) > rec.min_max_model_len:
        options.append(({**top_change, "max_model_len": rec.min_max_model_len},
                        f"{head}; cutting max_model_len to recovery.min_max_model_len ({rec.min_max_model_len}) "
                        f"shrinks the profiling batch{top_text}"))
    for changes, reason in options:
        r = ctx.relaunch(changes, reason)
        if r is not None:
            return r
    detail = f": {how}" if non_kv is not None else ""
    offload = _offload(ctx, head, how if non_kv is not None else "every change within the recovery bounds failed")
    if offload is not None:
        return offload
    return GiveUp(
        f"{head}{detail}; no change within the recovery bounds (utilization ≤ "
        f"{_fmt(rec.max_gpu_memory_utilization)}"
        + (f", {ctx.free_gib:.2f} GiB free" if ctx.free_gib is not None else "")
        + ") leaves room; use a smaller or quantized model, more GPUs, or raise the bounds"
    )


# ------------------------------------------------------------ CUDA out of memory


def _cuda_oom(ctx: _Ctx) -> Relaunch | GiveUp:
    args, rec = ctx.args, ctx.rec
    runtime = ctx.streak[-1].reached_ready
    msg = ctx.failure.message
    if runtime:
        runtime_ooms = sum(1 for a in ctx.streak if a.reached_ready and _kind(a.failure) is FailureKind.CUDA_OOM)
        if runtime_ooms <= 1:
            delay = ctx.delay()
            return Relaunch(args, delay, f"CUDA ran out of memory while serving ({msg}); restarting with the "
                            f"same arguments in {_fmt(delay)} s (a second time will step down)", {})
    u = args.gpu_memory_utilization
    where = "while serving" if runtime else _oom_stage(ctx)
    head = f"CUDA ran out of memory {where}"
    if where == "while loading the weights":
        offload = _offload(ctx, head, "the weights do not fit the GPU's budget", only_if_needed=True)
        if offload is not None:
            return offload
        taken = weights_beyond_free(ctx.fit, args, ctx.free_gib) if ctx.fit is not None else None
        if taken is not None:
            # read after the failed engine's tree ended: the memory is other processes'; stepping
            # through eager mode and fewer sequences would only leave a slower engine behind
            return GiveUp(f"{head}: {taken}; no argument change makes room for them"
                          + ("" if rec.max_cpu_offload_gb else " (recovery.max_cpu_offload_gb is 0: no CPU offload)")
                          + ": free the memory other processes hold on the GPU (`supervisor doctor` names them), "
                          "then `supervisor restart`")
    step = _floor2(u - UTIL_STEP)
    if ctx.free_gib is not None and ctx.total_gib and u * ctx.total_gib > ctx.free_gib - FREE_CHECK_MARGIN_GIB:
        margin = max(0.5, 0.02 * ctx.total_gib)
        step = min(step, _floor2((ctx.free_gib - margin) / ctx.total_gib))
    seqs = ctx.seqs
    options: list[tuple[dict[str, Any], str] | None] = [
        ({"gpu_memory_utilization": step},
         f"{head}; gpu_memory_utilization {_fmt(u)} → {_fmt(step)} leaves more headroom outside vLLM's budget")
        if step >= rec.min_gpu_memory_utilization else None,
        ({"enforce_eager": True}, f"{head}; enforce_eager skips CUDA-graph capture and its memory")
        if not args.enforce_eager else None,
        ({"max_num_seqs": seqs // 2}, f"{head}; max_num_seqs {seqs} → {seqs // 2} shrinks warm-up and graph batches")
        if seqs // 2 >= MIN_MAX_NUM_SEQS else None,
    ]
    if ctx.failure.stage and ctx.failure.stage.endswith("_warmup"):
        options = [options[2], options[0], options[1]]
    if ctx.extensible and not runtime:
        # 0.34 sizes the KV cache after loading, profiling, graph capture and warm-up, from what is
        # left: a lower utilization frees nothing before then, so it is not a step here
        why = (f" (vLLM {ctx.version or '0.34'} sizes its KV cache after warm-up from what is left, so a lower "
               "utilization would free nothing before then)")
        options = [(o[0], o[1] + why) for o in options if o is not None and "gpu_memory_utilization" not in o[0]]
    # How many step-downs this streak already took: launches after an OOM with other arguments.
    prior = sum(
        1 for before, after in zip(ctx.streak, ctx.streak[1:])
        if _kind(before.failure) is FailureKind.CUDA_OOM and _key(before.args) != _key(after.args)
    )
    n = len(options)
    for i in range(n):
        option = options[(prior + i) % n]
        if option is None:
            continue
        r = ctx.relaunch(*option)
        if r is not None:
            return r
    return GiveUp(
        f"{head} ({msg}); every step within the recovery bounds is spent (utilization ≥ "
        f"{_fmt(rec.min_gpu_memory_utilization)}, enforce_eager, max_num_seqs ≥ {MIN_MAX_NUM_SEQS}); free GPU "
        "memory used by other processes or use a smaller model"
    )


def _oom_stage(ctx: _Ctx) -> str:
    stage, facts = ctx.failure.stage, ctx.facts
    if stage == "load" or (stage is None and facts.model_weights_gib is None):
        return "while loading the weights"
    if stage and stage.endswith("_warmup"):
        return f"while warming up the {stage.removesuffix('_warmup')}"
    if facts.kv_cache_tokens is None and facts.available_kv_cache_gib is None:
        return "while profiling"
    return "while capturing CUDA graphs or warming up"


# ------------------------------------------------------------ max_model_len above the model's


def _too_long(ctx: _Ctx) -> Relaunch | GiveUp:
    v, rec = ctx.failure.values, ctx.rec
    derived = v.get("derived_max_model_len")
    asked = v.get("max_model_len") or ctx.args.max_model_len
    if not derived:
        return GiveUp(f"max_model_len {asked} is above the model's limit ({ctx.failure.message}); set "
                      "vllm.max_model_len to the model's max_position_embeddings")
    new_len = int(derived)
    if rec.max_max_model_len is not None:
        new_len = min(new_len, rec.max_max_model_len)
    if new_len < rec.min_max_model_len:
        return GiveUp(f"the model's limit is {derived} tokens, below recovery.min_max_model_len "
                      f"({rec.min_max_model_len}); lower that bound")
    extra = (" (VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 was not in effect)" if rec.allow_long_context
             else "; set recovery.allow_long_context and VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 to force more")
    reason = f"max_model_len {asked} is above the model's limit of {derived} tokens (config.json), so → {new_len}{extra}"
    r = ctx.relaunch({"max_model_len": new_len}, reason)
    return r if r is not None else GiveUp(reason + "; that already failed")


_HANDLERS = {
    FailureKind.KV_CACHE_TOO_SMALL: _kv_too_small,
    FailureKind.NO_KV_CACHE_MEMORY: _no_kv_memory,
    FailureKind.INSUFFICIENT_FREE_MEMORY: _insufficient_free,
    FailureKind.CUDA_OOM: _cuda_oom,
    FailureKind.MAX_MODEL_LEN_TOO_LARGE: _too_long,
    FailureKind.ENGINE_DEAD: _engine_dead,
    FailureKind.MULTI_GPU_COMM: _multi_gpu_comm,
    FailureKind.PORT_IN_USE: _port_race,
    FailureKind.UNKNOWN: _same_args,
}
