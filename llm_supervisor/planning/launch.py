"""The launch plan: everything `up` decides before it starts the engine, and what `plan` shows.

It composes the other parts: the GPUs found (or the simulated GPU) matched against the
profile, the CPU/NUMA placement, the fit context (config.json, safetensors headers, this host's
calibration: read here, once) and its prediction, the launch checks, the last arguments known
to reach ready, and the engine's argv and environment. The plan decides the first launch's
`max_model_len`; after a failure only the recovery policy decides, with the same fit context.
"""

from __future__ import annotations

import math
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llm_supervisor.config.profile import Profile, VllmArgs
from llm_supervisor.config.settings import Settings, port_clash
from llm_supervisor.errors import BadInput, HardwareMismatch, PlanRefused, RuntimeFailure
from llm_supervisor.host import engineversion, gpus as hardware, hostmem, simgpu
from llm_supervisor.host.engineversion import EngineVersion
from llm_supervisor.host.logfiles import log_name
from llm_supervisor.host.modelfiles import ModelConfigNotFound, NotAModelFolder, load_shape, load_weight_inventory
from llm_supervisor.host.placement import Placement, plan_placement
from llm_supervisor.host.tenants import gpu_tenants
from llm_supervisor.host.topology import Topology
from llm_supervisor.store.calibration import Calibration
from llm_supervisor.store.state import StateStore, host_key
from llm_supervisor.vllm import cudagraphs, engine_args, memory, runner, speed
from llm_supervisor.vllm.cards import gpu_label, stated_total_gib
from llm_supervisor.vllm.fit import FitContext, Prediction, check_launch, weights_beyond_free
from llm_supervisor.vllm.lowmem import LowMemoryPlan, plan_low_memory
from llm_supervisor.vllm.modelshape import SafetensorsError
from llm_supervisor.vllm.target import TargetFit, fit_target

RECOVERABLE_KEYS = ("max_model_len", "gpu_memory_utilization", "enforce_eager", "max_num_seqs", "cpu_offload_gb",
                    "kv_cache_dtype")
SIMULATOR_COMMAND = [sys.executable, "-m", "llm_supervisor.simulator", "serve"]
ENGINE_HOST = "127.0.0.1"  # where the engine listens behind the front door


def free_loopback_port(avoid: Iterable[int] = ()) -> int:
    """A TCP port on the loopback that nobody listens on now (the kernel's choice), none of `avoid`:
    the ports the supervisor itself is about to bind (the front door's and the API's, which may lie
    in the kernel's ephemeral range too) and the engine's last one."""
    taken = set(avoid)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((ENGINE_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def supervisor_ports(settings: Settings, profile: Profile) -> set[int]:
    """The ports the daemon binds itself: the engine's private port must be none of them."""
    return {profile.vllm.port, settings.api_port}


def engine_command(command: str, simulate: bool) -> list[str]:
    """The engine's command: the settings' (split like a shell would, run without one), or the
    bundled simulator."""
    return list(SIMULATOR_COMMAND) if simulate else shlex.split(command)


@dataclass
class LaunchPlan:
    settings: Settings
    profile: Profile
    simulate: bool
    command: list[str]
    args: VllmArgs
    gpus: list[hardware.Gpu]
    chosen: list[hardware.Gpu]
    hardware_match: hardware.HardwareMatch | None
    placement: Placement
    fit: FitContext | None
    prediction: Prediction | None
    gpu_total_gib: float
    gpu_count: int
    gpu_name: str | None
    base_env: dict[str, str]
    extra_env: dict[str, str]
    sim_config: simgpu.SimGpuConfig | None = None
    last_good: dict[str, Any] | None = None
    # With the front door the profile's vllm.host/port are the front door's, and the engine listens
    # on 127.0.0.1:engine_port (what `plan` shows; the daemon takes a fresh free one at each launch).
    engine_port: int | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    engine_version: EngineVersion = field(default_factory=lambda: EngineVersion(None, "unknown"))
    speed: speed.SpeedModel | None = None
    target_fit: TargetFit | None = None
    low_memory: LowMemoryPlan | None = None

    @property
    def vllm_version(self) -> str:
        """The vLLM version planned for: the engine's, else the newest supported."""
        return self.engine_version.version or memory.DEFAULT_VLLM_VERSION

    @property
    def accounting(self) -> memory.Accounting:
        """How that version sizes the KV cache with the launch's arguments."""
        return self.accounting_of(self.engine_version.version, self.args)

    def accounting_of(self, version: str | None, args: VllmArgs) -> memory.Accounting:
        """How `version` (None: the newest supported) sizes the KV cache with `args`, on the model
        runner those arguments run on."""
        return runner.accounting(version, args, self.profile.env.get(runner.RUNNER_ENV))

    @property
    def frontdoor(self) -> bool:
        return self.engine_port is not None

    def listen_args(self, args: VllmArgs, engine_port: int | None = None) -> VllmArgs:
        """`args` as the engine is launched with them: behind the front door it listens privately."""
        if not self.frontdoor:
            return args
        return args.model_copy(update={"host": ENGINE_HOST, "port": engine_port or self.engine_port})

    def argv_for(self, args: VllmArgs, engine_port: int | None = None) -> list[str]:
        return engine_args.engine_argv(self.profile, self.listen_args(args, engine_port), self.command)

    def env_for(self, args: VllmArgs) -> dict[str, str]:
        extra = {**self.extra_env, **runner.offload_env(self.engine_version.version, args.cpu_offload_gb,
                                                         self.profile.env)}
        return engine_args.engine_env(self.profile, args, self.base_env, extra)

    @property
    def hf_home(self) -> str:
        return self.extra_env.get("HF_HOME") or self.base_env.get("HF_HOME", "")

    def to_json(self) -> dict[str, Any]:
        env = engine_args.changed_env(self.env_for(self.args), self.base_env)
        predicted = self.prediction.to_json() if self.prediction else None
        if predicted is not None:
            predicted["max_model_len"] = self.args.max_model_len or predicted["max_model_len"]
        return {
            "profile": self.profile.name,
            "simulated": self.simulate,
            "model": self.profile.model.id,
            "vllm_version": self.vllm_version,
            "vllm_version_source": self.engine_version.to_json(),
            "accounting": str(self.accounting),
            "argv": engine_args.redact_argv(self.argv_for(self.args)),
            "frontdoor": ({"enabled": True, "host": self.args.host, "port": self.args.port,
                           "engine": f"{ENGINE_HOST}:{self.engine_port} (a fresh port at each launch)"}
                          if self.frontdoor else {"enabled": False}),
            "env": engine_args.redact_env(env),
            "cpus": list(self.placement.cpus),
            "memory_policy": {"mode": self.placement.memory_policy, "nodes": list(self.placement.nodes)},
            "placement": self.placement.to_json(),
            "hardware": {
                "match": self.hardware_match.match if self.hardware_match else False,
                "reasons": list(self.hardware_match.reasons) if self.hardware_match else ["no GPUs found"],
                "gpus": [g.to_json() for g in self.chosen or self.gpus],
                "planned_for": {"gpu_total_gib": round(self.gpu_total_gib, 2), "gpu_count": self.gpu_count,
                                "gpu_name": self.gpu_name},
            },
            "predicted": predicted,
            "speed": self.speed.summary() if self.speed is not None else None,
            "target_fit": self.target_fit.to_json() if self.target_fit is not None else None,
            "low_memory": self.low_memory.to_json() if self.low_memory is not None else None,
            "last_good": self.last_good,
            "notes": list(self.notes),
            "warnings": list(self.warnings) + list(self.placement.warnings),
        }


def simulated_gpu_config(profile: Profile) -> simgpu.SimGpuConfig:
    """A simulated GPU like the profile's card, unless LLM_SUPERVISOR_SIM_GPU_* say otherwise."""
    label = gpu_label(profile.hardware.gpu_name)
    name = label if label.upper().startswith("NVIDIA") else f"NVIDIA {'GeForce ' if 'RTX' in label.upper() else ''}{label}"
    return simgpu.load_config(
        name=name,
        count=profile.hardware.gpu_count,
        total_mib=int(stated_total_gib(profile.hardware) * 1024),
    )


def cache_env(settings: Settings, base: dict[str, str]) -> dict[str, str]:
    """vLLM's compile cache and the Hugging Face cache in persistent folders (the state dir
    unless the environment sets them), so a relaunch is a warm start."""
    out = {}
    if not base.get("VLLM_CACHE_ROOT"):
        out["VLLM_CACHE_ROOT"] = str(settings.state_dir / "cache" / "vllm")
    if not base.get("HF_HOME"):
        out["HF_HOME"] = str(settings.state_dir / "cache" / "huggingface")
    return out


def apply_last_good(profile: Profile, last_good: dict[str, Any] | None) -> tuple[VllmArgs, str | None]:
    """Start from the arguments that last reached ready, when the profile still asks for what it
    asked for then (a changed profile or --set wins)."""
    args = profile.vllm
    if not last_good:
        return args, None
    requested = {k: getattr(args, k) for k in RECOVERABLE_KEYS}
    if last_good.get("requested") != requested:
        return args, None
    saved = {k: v for k, v in (last_good.get("args") or {}).items() if k in RECOVERABLE_KEYS}
    changed = {k: v for k, v in saved.items() if getattr(args, k) != v}
    if not changed:
        return args, None
    args = args.model_copy(update=changed)
    text = ", ".join(f"{k} {requested[k]} → {v}" for k, v in changed.items())
    return args, f"starting from the arguments that last reached ready: {text}"


def fit_context(profile: Profile, gpu_total_gib: float, gpu_count: int, calibration: Calibration | None = None, *,
                gpu_name: str | None = None, hf_home: str | None = None, vllm_version: str | None = None,
                tensor_parallel: int | None = None, host_available_gib: float | None = None) -> FitContext:
    """The fit context of a profile: its model's shape (config.json) and, where the checkpoint is
    on disk, its safetensors headers; this host's calibration; the profile's bounds and target.
    Raises ModelConfigNotFound when no config.json can be found."""
    shape = load_shape(profile.model.id, hf_home)
    inventory = None
    notes = []
    try:
        inventory = load_weight_inventory(profile.model.id, hf_home)
    except SafetensorsError as exc:
        notes.append(f"safetensors headers unreadable ({exc}); weights estimated from config.json")
    return FitContext.of(shape, gpu_total_gib, gpu_count, calibration, profile.target, vllm_version,
                         recovery=profile.recovery, model=profile.model.id, gpu_name=gpu_name, inventory=inventory,
                         tensor_parallel=tensor_parallel or profile.vllm.tensor_parallel_size, notes=notes,
                         host_available_gib=host_available_gib, runner_env=profile.env.get(runner.RUNNER_ENV))


def own_engine_mib(inventory: hardware.GpuInventory, chosen: list[hardware.Gpu], daemon_pid: int) -> dict[int, int]:
    """GPU index → the MiB that the engine tree of the daemon `daemon_pid` holds there."""
    held: dict[int, int] = {}
    for tenant in gpu_tenants(inventory, [g.index for g in chosen]):
        if tenant.supervisor_pid == daemon_pid and tenant.used_mib:
            held[tenant.gpu_index] = held.get(tenant.gpu_index, 0) + tenant.used_mib
    return held


def build_plan(
    settings: Settings,
    profile: Profile,
    *,
    simulate: bool,
    gpu_memory_gib: float | None = None,
    gpu_count: int | None = None,
    calibrate_from: Path | None = None,
    ignore_hardware: bool = False,
    store: StateStore | None = None,
    for_launch: bool = False,
    root: Path = Path("/"),
    vllm_version: str | None = None,
    daemon_pid: int | None = None,
) -> LaunchPlan:
    """Everything needed to launch. `for_launch` turns soft findings (no GPU, hardware
    mismatch) into errors, as `up` needs; `plan` reports them instead. `vllm_version` names the
    engine's vLLM instead of finding it (host/engineversion.py; with `simulate`, the simulator's).
    `daemon_pid`: the daemon running with this state dir (`plan` beside it): the memory its engine
    holds is planned as free, as the launch planned would replace that engine."""
    clash = port_clash(settings, profile)
    if clash:
        raise BadInput("port clash", clash)
    base_env = dict(os.environ)
    notes: list[str] = []
    warnings: list[str] = []
    v = profile.vllm
    needed = v.tensor_parallel_size * v.pipeline_parallel_size * v.data_parallel_size

    sim_config = simulated_gpu_config(profile) if simulate else None
    if simulate:
        notes.append("SIMULATED: the bundled vLLM simulator runs on a simulated GPU; no real engine or GPU is used")
    inventory = hardware.inventory(simulate, sim_config)
    try:
        gpus, visible_note = hardware.visible_to_us(inventory.gpus(), base_env)
        if visible_note:
            notes.append(visible_note)
    except RuntimeFailure as exc:
        if for_launch and not gpu_memory_gib:
            if isinstance(exc, hardware.NoGpuFound) and not exc.problems:
                raise hardware.NoGpuFound(f"{exc.message}; without a GPU, --simulate runs the bundled vLLM "
                                          "simulator") from None
            raise
        gpus = []
        warnings.append(exc.message)

    match = hardware.match_profile(gpus, profile.hardware) if gpus else None
    if match is not None and not match.match:
        if for_launch and not ignore_hardware:
            raise HardwareMismatch("hardware does not match the profile", [
                f"profile {profile.name}: hardware: {r}" for r in match.reasons
            ] + ["use --ignore-hardware-mismatch to launch anyway"])
        warnings.extend(match.reasons)
    chosen = (match.chosen if match and match.chosen else gpus[:needed])

    topo = Topology.read(root, bus_ids=[g.sysfs_bus_id for g in chosen if g.sysfs_bus_id] or None)
    placement = plan_placement(profile.affinity, chosen, topo, v.tensor_parallel_size,
                                        v.data_parallel_size, v.pipeline_parallel_size)

    if gpu_memory_gib:
        total_gib = gpu_memory_gib
    elif chosen:
        total_gib = min(g.cuda_total_mib for g in chosen) / 1024  # what vLLM's utilization multiplies
    else:
        total_gib = stated_total_gib(profile.hardware)
        notes.append(f"no GPU here: planning for the profile's stated {profile.hardware.gpu_memory_gib:g} GB card")
    if profile.cluster is not None and not gpu_count:  # one engine over every host's GPUs (cluster.py)
        gpu_count = profile.cluster.nodes * (profile.cluster.gpus_per_node or profile.hardware.gpu_count)
    count = gpu_count or (len(chosen) if chosen else profile.hardware.gpu_count)
    gpu_name = chosen[0].name if chosen and not gpu_memory_gib else gpu_label(profile.hardware.gpu_name)

    extra_env = cache_env(settings, base_env)
    if chosen:
        extra_env.update(hardware.cuda_env(chosen))
    if sim_config is not None:
        extra_env.update(sim_config.env())

    # Which vLLM will run: the plan sizes the KV cache the way that version does.
    command = engine_command(settings.engine_command, simulate)
    if vllm_version is not None:
        engine = EngineVersion(vllm_version, "given")
    elif simulate:
        engine = engineversion.simulator_version(base_env, memory.NEWEST_SUPPORTED_VERSION)
    else:
        engine = engineversion.detect(command, state_dir=settings.state_dir, env=base_env)
    if simulate and engine.version:
        extra_env[engineversion.SIM_VERSION_ENV] = engine.version

    hf_home = extra_env.get("HF_HOME") or base_env.get("HF_HOME")

    # `plan` reads the file a running daemon owns: a corrupt one is reported, not moved (unless
    # --calibrate-from is about to write a new one)
    calibration = Calibration.in_state_dir(settings.state_dir, readonly=not for_launch and calibrate_from is None)
    warnings.extend(calibration.warnings)
    if calibrate_from is not None:
        calibration.learn_from_log(calibrate_from, model=profile.model.id, gpu_name=gpu_name or "",
                                   gpu_total_gib=total_gib, save=False)
        try:
            calibration.save()
            notes.append(f"calibrated from {log_name(calibrate_from)} (saved in {calibration.path})")
        except OSError as exc:
            notes.append(f"calibrated from {log_name(calibrate_from)} for this plan only (cannot save: {exc.strerror})")

    # The arguments that last reached ready on this host, keyed by the GPUs just chosen.
    last_good = store.last_good(host_key(profile.name, [g.name for g in chosen])) if store else None
    args, last_note = apply_last_good(profile, last_good)
    if last_note:
        notes.append(last_note)

    prediction = fit = None
    target_fit: TargetFit | None = None
    low: LowMemoryPlan | None = None
    free = None
    # what `bench --find-capacity` measured on this host (and where): calibrates every speed the plan gives
    measured: tuple[list[speed.MeasuredPoint], str] = ([], "")
    if chosen and not gpu_memory_gib:
        own = own_engine_mib(inventory, chosen, daemon_pid) if daemon_pid else {}
        free = min(g.memory_free_mib + own.get(g.index, 0) for g in chosen) / 1024
        if any(own.values()):
            notes.append(f"planned as if the engine of the daemon running with this state dir (pid {daemon_pid}) had "
                         f"let go of its {sum(own.values()):,} MiB, as a launch of this plan would replace it")
    try:
        fit = fit_context(profile, total_gib, count, calibration, gpu_name=gpu_name, hf_home=hf_home,
                          tensor_parallel=args.tensor_parallel_size, vllm_version=engine.version,
                          # the host's RAM matters only when planning for this host's GPUs
                          host_available_gib=hostmem.available_gib(simulate) if free is not None else None)
        measured = calibration.speed_points(fit.model, fit.vllm_version, fit.gpu_name, args.tensor_parallel_size)
        low = plan_low_memory(fit, args, free_gib=free, measured=measured[0])
        if low is not None and low.usable_now:
            if profile.recovery.plan_first_launch:
                args = low.args
                notes.append(low.summary())
            else:
                notes.append(f"{low.summary()} (recovery.plan_first_launch is off: launching as the profile says)")
        elif low is not None:
            notes.extend(low.refusal())
        problems = [*check_launch(fit.shape, profile, args, total_gib, count), *fit.capture_problems(args)]
        if problems and low is not None and not low.usable_now:
            # the weights alone exceed the budget: say what would fit instead
            problems = [p for p in problems if not p.startswith("weights need ")] + low.refusal()
        if problems:
            raise PlanRefused("the launch cannot work", problems)
        prediction = fit.predict(args)
        short = weights_beyond_free(fit, args, free)
        if short:
            warnings.append(f"{short}: the launch fails unless other processes free that memory first "
                            "(`supervisor doctor` names them)")
        if fit.target is not None:
            target_fit = fit_target(fit, args, free_gib=free)
            if profile.recovery.plan_first_launch:
                args, prediction = target_fit.args, target_fit.prediction
                notes.extend(target_fit.notes)
            else:
                notes.extend(f"{n} (recovery.plan_first_launch is off: launching as the profile says)"
                             for n in target_fit.notes)
    except NotAModelFolder as exc:
        warnings.append(f"{exc} (nor a Mistral-format params.json): vLLM will not load it and the launch fails "
                        "with model_not_found; give a model folder or a Hugging Face id")
    except ModelConfigNotFound as exc:
        notes.append(f"no prediction: {exc}")
    if prediction is not None and not last_note:
        asked = args.max_model_len or prediction.requested_max_model_len
        if not profile.recovery.plan_first_launch:
            # (when nothing fits at these arguments the low-memory note above already said what would)
            if prediction.fits and prediction.max_model_len and prediction.max_model_len != asked:
                notes.append(f"the planner predicts max_model_len {prediction.max_model_len:,} fits; launching with "
                             f"{asked:,} as asked (recovery.plan_first_launch is off)")
        elif prediction.max_model_len and prediction.max_model_len != asked:
            args = args.model_copy(update={"max_model_len": prediction.max_model_len})
            notes.append(f"the profile asks for max_model_len {asked:,}; the planner predicts "
                         f"{prediction.largest_context:,} fits, so the first launch uses {prediction.max_model_len:,}")

    model = None
    if fit is not None and prediction is not None:
        model = speed.speed_model(fit, args, prediction, *measured)
        if model is None:
            notes.append(f"no speed prediction: {gpu_name or 'this GPU'} is not in the GPU table (vllm/gpuspecs.py)")
        elif (dip := ungraphed_note(model, fit, args)) is not None:
            notes.append(dip)

    if runner.offload_env(engine.version, args.cpu_offload_gb, profile.env):
        notes.append(f"--cpu-offload-gb needs vLLM's V1 model runner "
                     f"{'on vLLM ' + engine.version if engine.version else 'when the version is not known'} "
                     f"(the default V2 runner offloads only from 0.28): the engine runs with {runner.RUNNER_ENV}=0")
    return LaunchPlan(
        settings=settings, profile=profile, simulate=simulate,
        command=command, args=args,
        gpus=gpus, chosen=chosen, hardware_match=match, placement=placement, fit=fit, prediction=prediction,
        gpu_total_gib=total_gib, gpu_count=count, gpu_name=gpu_name, base_env=base_env, extra_env=extra_env,
        sim_config=sim_config, last_good=last_good, notes=notes, warnings=warnings, engine_version=engine,
        engine_port=free_loopback_port(supervisor_ports(settings, profile)) if profile.frontdoor.enabled else None,
        speed=model, target_fit=target_fit, low_memory=low,
    )


def ungraphed_note(model: speed.SpeedModel, fit: FitContext, args: VllmArgs) -> str | None:
    """What `plan` says when the speed lines' load runs prompt steps beyond the CUDA graphs on a
    model small enough for the CPU's kernel launches to set their pace, and the flag that covers them."""
    dip = model.ungraphed_prompts()
    if dip is None:
        return None
    levels = " and ".join(f"{n:,}" for n in dip.users)
    text = (f"at {levels} users a {dip.prompt_tokens:,}-token prompt runs in a step of up to {dip.step_tokens:,} tokens "
            f"beside the others' decodes, beyond the CUDA graphs (captured to {dip.graph_tokens:,}); on this model "
            f"launching such a step from the CPU (~{dip.launch_s * 1000:.0f} ms) outlasts its GPU work "
            f"(~{dip.gpu_s * 1000:.0f} ms), so users may decode slower and wait longer for a first token than the "
            "speed lines say (measured for Qwen3-4B on an H100 and an H200: 9–23 % slower at 8–16 users, less or none "
            "from 32; first token p50 1.2–5.5× as long at 8 users)")
    if dip.capture_size is None:
        return text
    covering = cudagraphs.covering_args(args.extra_args, dip.capture_size, fit.batch_limits(args)[0])
    if covering is None:
        return text
    wider = args.model_copy(update={"extra_args": covering[0]})
    now, more = fit.graph_gib(args)[0], fit.graph_gib(wider)[0]
    budget = ", out of the KV cache" if fit.accounting(args).graphs_in_budget else ""
    return f"{text}; {covering[1]} covers them (CUDA graphs {more:.2f} GiB instead of {now:.2f}{budget})"


def _rate(x: float) -> str:
    return f"{x:.2g}" if x < 10 else f"{x:,.0f}"


def format_speed(summary: dict[str, Any]) -> list[str]:
    """`plan`'s speed lines from SpeedModel.summary()."""
    w = summary["workload"]
    pts = {p["users"]: p for p in summary["points"]}
    one = pts.get(1)
    head = "speed     "
    parts = []
    if one:
        parts.append(f"1 user {_rate(one['per_user_tokens_per_s'])} tok/s (first token {one['ttft_s']:.2f} s)")
    for users, p in pts.items():
        if users == 1:
            continue
        queue = f", {p['limited_by'].replace('_', ' ')} full: others wait" if p["limited_by"] else ""
        parts.append(f"{users} users {_rate(p['per_user_tokens_per_s'])} tok/s each ({_rate(p['tokens_per_s'])} total{queue})")
    lines = [head + "; ".join(parts)]
    why = {"speed": "", "kv_cache": ", then the KV cache is full", "max_num_seqs": ", then max_num_seqs is reached"}
    rates = [f"≥ {rate} tok/s each: {v['users']:,} users{why.get(v['limited_by'], '')}"
             for rate, v in summary["users_at_tokens_per_s"].items()]
    cal = "calibrated on this host" if summary["calibrated"] else "uncalibrated (±25 %)"
    lines.append(f"          {'; '.join(rates)} ({w['prompt_tokens']:,}-token prompts, {w['output_tokens']:,}-token"
                 f" replies; {summary['gpu']['name']}, {cal})")
    return lines


def _target_text(target: Any) -> str:
    """{'min_concurrency': 8.0, 'context': 8192} → '8 requests of 8,192 tokens at once'."""
    if isinstance(target, dict) and {"min_concurrency", "context"} <= target.keys():
        return f"{target['min_concurrency']:g} requests of {int(target['context']):,} tokens at once"
    return str(target)


def format_plan(plan: LaunchPlan) -> str:
    """A short human summary of the plan (the JSON has everything)."""
    data = plan.to_json()
    lines = []
    if plan.simulate:
        lines.append("SIMULATED run: the bundled vLLM simulator on a simulated GPU (no real engine)")
    lines.append(f"profile   {plan.profile.name}  model {plan.profile.model.id}")
    hw = data["hardware"]
    found = [g.cuda_total_mib / 1024 for g in plan.chosen]
    if found and (plan.gpu_count != len(found) or abs(plan.gpu_total_gib - min(found)) > 0.05):
        # --gpu-memory-gib / --gpu-count: the prediction is for those GPUs, not the ones found
        lines.append(f"hardware  planned for {plan.gpu_count}× {plan.gpu_name} with {plan.gpu_total_gib:.1f} GiB "
                     f"(--gpu-memory-gib / --gpu-count); found {len(found)}× {plan.chosen[0].name} "
                     f"with {min(found):.1f} GiB")
    else:
        lines.append(f"hardware  {'matches' if hw['match'] else 'DOES NOT MATCH'}: " + "; ".join(hw["reasons"]))
    pl = plan.placement
    cpus = data["placement"]["cpulist"] if pl.pinned else f"not pinned (allowed {data['placement']['allowed_cpus']})"
    ev = plan.engine_version
    known = ev.describe() if ev.version else f"{ev.describe()}: planned as {plan.vllm_version}"
    lines.append(f"vllm      {known}; KV cache accounting {plan.accounting}")
    lines.append(f"cpus      {cpus}; memory policy {pl.memory_policy}{' ' + ','.join(map(str, pl.nodes)) if pl.nodes and pl.memory_policy != 'none' else ''}")
    p = plan.prediction
    if p is not None:
        off = f" (+ {p.cpu_offload_gib:.2f} GiB in CPU memory)" if p.cpu_offload_gib else ""
        lines.append(f"predicted weights {p.weights_gib:.2f} GiB/GPU{off}, KV {p.available_kv_cache_gib:.2f} GiB/GPU "
                     f"= {p.kv_cache_tokens:,} tokens ({p.kv_bytes_per_token / 1024:g} KiB/token)")
        if p.available_kv_cache_gib_before_warmup is not None:
            lines.append(f"          (vLLM prints {p.available_kv_cache_gib_before_warmup:.2f} GiB as 'Available KV cache"
                         f" memory' before warm-up, then sizes the cache after it; CUDA graphs {p.cuda_graph_gib:.2f} GiB)")
        ctx = plan.args.max_model_len or p.max_model_len
        lines.append(f"          max concurrency {p.concurrency_at(ctx):.2f}x at {ctx:,} tokens; "
                     f"largest context that fits {p.largest_context:,}")
        if p.target is not None:
            t = p.target
            verdict = "met" if p.target_met else "NOT met"
            have = math.floor(p.concurrency_at(t["context"]) * 100) / 100
            lines.append(f"          target {_target_text(t)}: {verdict}"
                         f" ({have:.2f} fit at utilization {plan.args.gpu_memory_utilization:g})")
            if plan.target_fit is not None and plan.target_fit.would:
                lines.append("          it would with: " + "; or ".join(plan.target_fit.would))
        for note in p.notes:
            if note not in data["notes"]:
                lines.append(f"          · {note}")
    if plan.speed is not None:
        lines.extend(format_speed(plan.speed.summary()))
    door = data["frontdoor"]
    if door["enabled"]:
        lines.append(f"serving   clients at {door['host']}:{door['port']} through the front door; the engine listens on "
                     f"{door['engine']}")
    else:
        lines.append(f"serving   clients at {plan.args.host}:{plan.args.port}, the engine itself (frontdoor.enabled: false)")
    lines.append("argv      " + " ".join(data["argv"]))
    if data["env"]:
        lines.append("env       " + " ".join(f"{k}={v}" for k, v in sorted(data["env"].items())
                                             if not k.startswith("LLM_SUPERVISOR_SIM")))
    for note in data["notes"]:
        lines.append(f"note      {note}")
    for warn in data["warnings"]:
        lines.append(f"warning   {warn}")
    return "\n".join(lines)
