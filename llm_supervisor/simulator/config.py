"""The simulated engine's resolved configuration, its timing and its fault switches.

Environment (all optional):

  LLM_SUPERVISOR_SIM_STARTUP_S       seconds a warm start takes, default 1.5 (a cold compile adds ~40%)
  LLM_SUPERVISOR_SIM_TOKENS_PER_S    a fixed step time of 1/R s (default: the GPU law of simulator/speed.py)
  LLM_SUPERVISOR_SIM_STEP_*          the GPU law's terms (simulator/speed.py)
  LLM_SUPERVISOR_SIM_RESPONSE_TOKENS reply length when a request sets no max_tokens, default 16
  LLM_SUPERVISOR_SIM_DEATH_GRACE_S   how long /health answers 503 after EngineCore died, default 3
  LLM_SUPERVISOR_SIM_MAX_RUNNING     cap on requests running at once (default: only vLLM's limits,
                                     max_num_seqs and the KV blocks)
  LLM_SUPERVISOR_SIM_VLLM_VERSION    the vLLM to imitate (log dialect, memory accounting, failures):
                                     0.8.5, 0.11.0, 0.26.0 or 0.34.0 (default, the newest); others
                                     behave as the nearest below (`--vllm-version` overrides it)
  LLM_SUPERVISOR_SIM_FAULT           comma-separated faults (see FAULTS)
  LLM_SUPERVISOR_SIM_GPU_*           the simulated GPU (llm_supervisor.host.simgpu)
  VLLM_CACHE_ROOT                    compile cache (cold vs warm start), default ~/.cache/vllm
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_supervisor.host import modelfiles, simgpu
from llm_supervisor.vllm import cudagraphs, gpuspecs, modelshape
from llm_supervisor.simulator import memory
from llm_supervisor.simulator.dialect import Dialect
from llm_supervisor.simulator.speed import StepLaw, model_params, step_law

ENV = "LLM_SUPERVISOR_SIM_"

FAULTS = {
    "oom_at_load": "torch OOM while loading weights",
    "oom_at_profile": "torch OOM during the profiling run",
    "oom_at_graph_capture": "torch OOM while capturing CUDA graphs",
    "hang_startup": "EngineCore stops making progress (=load|compile|profile|kv|graphs, default compile)",
    "die_after_ready": "EngineCore dies by itself SECONDS after ready (like SIGKILL)",
    "runtime_oom_after_ready": "EngineCore hits a CUDA OOM SECONDS after ready and dies",
    "ignore_sigterm": "the API server (and EngineCore, workers) ignore SIGTERM: only SIGKILL stops them",
    "stall_requests": "requests queue up and never progress",
    "allreduce_fusion": "with TP > 1 on Hopper/Blackwell (0.26+), the fused all-reduce finds no NVSwitch multicast"
                        " and the next cuBLAS call fails (unless fuse_allreduce_rms is off or --enforce-eager)",
}

# Share of a warm start spent in each phase (from the real 0.26 H100 timeline, 55 s warm);
# a cold start replaces compile_warm by compile_cold (22 s against 4 s).
PHASES = {
    "api_pre": 0.03, "spawn": 0.20, "init_device": 0.03, "load": 0.08, "compile_warm": 0.08,
    "compile_cold": 0.40, "profile": 0.02, "kv": 0.02, "graphs": 0.10, "warmup": 0.20, "api_ready": 0.04,
}
_WARM_SUM = sum(v for k, v in PHASES.items() if k != "compile_cold")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(ENV + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


@dataclass(frozen=True)
class Faults:
    active: dict[str, str] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, text: str | None = None) -> "Faults":
        raw = os.environ.get(ENV + "FAULT", "") if text is None else text
        active: dict[str, str] = {}
        unknown: list[str] = []
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            name, _, value = item.partition("=")
            name = name.strip().lower()
            if name in FAULTS:
                active[name] = value.strip()
            else:
                unknown.append(item)
        return cls(active, tuple(unknown))

    def __contains__(self, name: str) -> bool:
        return name in self.active

    def seconds(self, name: str, default: float = 1.0) -> float | None:
        if name not in self.active:
            return None
        try:
            return max(0.0, float(self.active[name]))
        except ValueError:
            return default


@dataclass(frozen=True)
class Timing:
    startup_s: float

    def phase(self, name: str) -> float:
        return self.startup_s * PHASES[name] / _WARM_SUM


class StartupError(Exception):
    """A failure of the API server before any engine starts (config validation, port, model).

    `final` is the exception line ("ValueError: …"); `pydantic` wraps it the way vLLM's pydantic
    configs print it."""

    def __init__(self, final: str, frames: list[Any]) -> None:
        super().__init__(final)
        self.final = final
        self.frames = frames


def pydantic_error(model: str, message: str, input_repr: str) -> str:
    return (f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {model}\n"
            f"  Value error, {message} [type=value_error, input_value={input_repr}, input_type=ArgsKwargs]\n"
            "    For further information visit https://errors.pydantic.dev/2.12/v/value_error")


@dataclass(frozen=True)
class SimConfig:
    """Everything the engine processes need, resolved once in the API server."""

    dialect: Dialect
    model: str
    served_names: tuple[str, ...]
    architecture: str
    shape: memory.ShapeFacts
    dtype_name: str  # torch.bfloat16 …
    quantization: str | None
    linear_kernel: str | None  # AWQ/GPTQ from 0.26: "MacheteLinearKernel" (Hopper) or "MarlinLinearKernel"
    kv_bytes_per_token: tuple[int, ...]  # per pipeline stage, one GPU
    layers_per_stage: tuple[int, ...]
    weights_per_stage: tuple[int, ...]  # bytes on one GPU of each stage, load overhead included, offload excluded
    offloaded_per_stage: tuple[int, ...]  # bytes in CPU memory (--cpu-offload-gb) per GPU of each stage
    largest_weight: int  # the biggest single tensor (what a load OOM "tried to allocate")
    max_model_len: int  # -1: auto-fit
    derived_max_model_len: int
    block_size: int
    util: float
    tp: int
    pp: int
    dp: int
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    kv_cache_dtype: str
    load_format: str
    enable_prefix_caching: bool
    disable_custom_all_reduce: bool
    kv_cache_memory_bytes: int | None
    num_gpu_blocks_override: int | None
    revision: str | None
    trust_remote_code: bool
    gpu: simgpu.SimGpuConfig
    devices: tuple[int, ...]  # physical simulated GPU of each visible device
    timing: Timing
    faults: Faults
    cache_root: Path | None
    step_law: StepLaw
    response_tokens: int
    host: str | None
    port: int
    api_keys: tuple[str, ...] = ()
    graph_sizes: tuple[int, ...] = ()  # the CUDA-graph batch sizes captured (none: eager)
    cpu_offload_gb: float = 0.0
    swap_space: float = 4.0
    executor_backend: str | None = None  # "ray": the ranks are Ray actors (raymode.py)
    extensible: bool = False  # 0.34's extensible KV cache: sized after warm-up from measured memory
    graph_estimate: bool = False  # 0.30+ (0.34 with the extensible cache off): graphs estimated into the budget
    util_given: bool = True  # --gpu-memory-utilization was passed (0.34's warning compares with "unset")
    fused_allreduce: bool = False  # pass_config.fuse_allreduce_rms in effect (TP > 1, Hopper/Blackwell, 0.26+)
    v2_runner: bool = False  # the V2 model runner: the default from 0.22 unless VLLM_USE_V2_MODEL_RUNNER=0

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def device_of(self, dp_rank: int, rank: int) -> tuple[int, int]:
        """(local device index, simulated GPU index) of a worker."""
        local = dp_rank * self.world_size + rank
        return local, self.devices[local]

    def compile_hash(self, rank: int) -> str:
        key = (f"{self.model}|{self.max_model_len}|{self.tp}|{self.pp}|{self.dtype_name}|{self.quantization}|"
               f"{self.max_num_batched_tokens}|{self.kv_cache_dtype}|{self.revision}")
        return hashlib.sha256(key.encode()).hexdigest()

    def compile_dir(self, rank: int) -> Path | None:
        if self.cache_root is None:
            return None
        return self.cache_root / "torch_compile_cache" / self.compile_hash(rank)[:10] / f"rank_{rank}_0" / "backbone"

    def aot_dir(self, rank: int) -> Path | None:
        if self.cache_root is None:
            return None
        digest = hashlib.sha256(("aot|" + self.compile_hash(rank)).encode()).hexdigest()
        return self.cache_root / "torch_compile_cache" / "torch_aot_compile" / digest / f"rank_{rank}_0" / "model"


def visible_devices(count: int) -> tuple[int, ...]:
    """Simulated GPU index of each CUDA device, honouring CUDA_VISIBLE_DEVICES."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return tuple(range(count))
    out: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if part.isdigit() and int(part) < count:
            out.append(int(part))
        elif not part.isdigit():
            # GPU-uuid form: match the simulated UUIDs
            for gpu in simgpu.gpus(simgpu.load_config()):
                if gpu.uuid == part or gpu.uuid.startswith(part):
                    out.append(gpu.index)
        else:
            break  # CUDA stops at the first invalid index
    return tuple(out)


def default_cache_root() -> Path | None:
    if os.environ.get("VLLM_DISABLE_COMPILE_CACHE") == "1":
        return None
    root = os.environ.get("VLLM_CACHE_ROOT")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vllm"


def _dtype(shape: modelshape.ModelShape, requested: str) -> tuple[str, int]:
    name = requested
    if name == "auto":
        name = shape.torch_dtype.replace("torch.", "")
        if name in ("float32", "float"):
            name = "bfloat16"
    name = {"half": "float16", "float": "float32"}.get(name, name)
    return f"torch.{name}", {"float32": 4}.get(name, 2)


def _weights(shape: modelshape.ModelShape, model: str, tp: int, pp: int, dtype: str,
             quantization: str | None) -> tuple[list[int], int]:
    """Weight bytes per GPU of each stage: the safetensors headers when the files are on disk,
    else the shape estimate; plus the loader's own buffers."""
    per_stage: list[int] | None = None
    try:
        inv = modelfiles.load_weight_inventory(model)
        if inv is not None:
            per_stage = list(inv.per_gpu_bytes(shape, tp, pp, quantization))
    except Exception:  # unreadable checkpoint: fall back to the estimate
        per_stage = None
    if per_stage is None:
        per_stage = list(shape.weight_bytes_per_stage(tp, pp, dtype, quantization))
    largest = int(shape.vocab_size * shape.hidden_size * (2 if dtype != "float32" else 4) / tp)
    return [b + memory.LOAD_OVERHEAD_BYTES for b in per_stage], largest


def _layer_params(shape: modelshape.ModelShape, tp: int, dtype_bytes: int) -> list[int]:
    """Bytes of one decoder layer's parameters on one GPU, in vLLM's module order (qkv_proj,
    o_proj, q/k norms, gate_up_proj, down_proj, the two layer norms)."""
    lin = modelshape.linear_bytes_per_element(shape.quant_method, shape.quant_bits, shape.quant_group_size, dtype_bytes)
    h, hd = shape.hidden_size, shape.head_dim
    heads, kv = shape.num_heads / tp, max(1, shape.num_kv_heads // tp)
    inter = shape.intermediate_size / tp
    return [int(h * (heads + 2 * kv) * hd * lin), int(heads * hd * h * lin), 2 * hd * dtype_bytes,
            int(2 * inter * h * lin), int(inter * h * lin), 2 * h * dtype_bytes]


def _layers(shape: modelshape.ModelShape, pp: int) -> list[int]:
    split = getattr(shape, "layers_per_stage", None)
    if split is not None:
        return list(split(pp))
    base, extra = divmod(shape.num_layers, pp)
    return [base + (1 if i < extra else 0) for i in range(pp)]


def resolve(ns: Any, dialect: Dialect) -> SimConfig:
    """Build the engine config from parsed args, raising StartupError for what vLLM's config
    validation refuses in the API server."""
    model = ns.model
    try:
        raw_config, _ = modelfiles.find_model_config(model)
        shape = modelshape.ModelShape.from_config(raw_config)
    except (modelfiles.ModelConfigNotFound, KeyError, TypeError, ValueError):
        raise StartupError(pydantic_error("ModelConfig", invalid_repo_message(model), _args_repr(ns)),
                           _api_frames_config()) from None

    tp, pp, dp = ns.tensor_parallel_size, ns.pipeline_parallel_size, ns.data_parallel_size
    gpu = simgpu.load_config()
    # 0.34: the extensible KV cache is on unless turned off or sized by hand (VllmConfig
    # ._resolve_extensible_kv_cache); then utilization defaults to 1.0, else 0.92
    extensible = (dialect.extensible_kv_cache and getattr(ns, "enable_extensible_kv_cache", None) is not False
                  and not ns.kv_cache_memory_bytes and not ns.num_gpu_blocks_override)
    util_given = ns.gpu_memory_utilization is not None
    util = ns.gpu_memory_utilization if util_given else (1.0 if extensible else 0.92)
    if not (0 < util <= 1):
        bound = "greater than 0" if util <= 0 else "less than or equal to 1"
        kind = "greater_than" if util <= 0 else "less_than_equal"
        raise StartupError(
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig\n"
            f"gpu_memory_utilization\n  Input should be {bound} [type={kind}, input_value={util}, input_type=float]\n"
            f"    For further information visit https://errors.pydantic.dev/2.12/v/{kind}",
            _api_frames_config())
    derived = int(getattr(shape, "context_limit", 0) or shape.max_position_embeddings)
    max_len = ns.max_model_len if ns.max_model_len is not None else derived
    if max_len == -1 and not dialect.auto_fit:
        max_len = derived
    if max_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":
        raise StartupError(pydantic_error("ModelConfig", dialect.max_len_too_large(max_len, derived), _args_repr(ns)),
                           _api_frames_config())
    if max_len != -1 and max_len < 1:
        raise StartupError(pydantic_error("ModelConfig", f"max_model_len ({max_len}) must be at least 1.",
                                          _args_repr(ns)), _api_frames_config())
    if tp < 1 or pp < 1 or dp < 1:
        raise StartupError("ValueError: parallel sizes must be at least 1", _api_frames_config())
    if shape.num_heads % tp:
        msg = (f"Total number of attention heads ({shape.num_heads}) must be divisible by tensor parallel size"
               f" ({tp}).")
        raise StartupError(pydantic_error("VllmConfig", msg, "ArgsKwargs((), {...})"), _api_frames_vllm_config())
    if pp > shape.num_layers:
        raise StartupError(f"ValueError: pipeline parallel size ({pp}) is larger than the number of layers"
                           f" ({shape.num_layers}).", _api_frames_vllm_config())
    devices = visible_devices(gpu.count)
    world = tp * pp * dp
    if world > len(devices) and ns.distributed_executor_backend != "ray":  # Ray: GPUs of the whole cluster
        raise StartupError(
            f"ValueError: World size ({world}) is larger than the number of available GPUs ({len(devices)}) in this"
            " node. If this is intentional and you are using:\n- ray, set '--distributed-executor-backend ray'.\n"
            "- multiprocessing, set '--nnodes' appropriately.", _api_frames_vllm_config())

    quant = ns.quantization
    model_quant = shape.quant_method
    if quant and model_quant and quant.replace("_marlin", "") != model_quant.replace("_marlin", ""):
        raise StartupError(pydantic_error(
            "ModelConfig", f"Quantization method specified in the model config ({model_quant}) does not match the"
            f" quantization method specified in the `quantization` argument ({quant}).", _args_repr(ns)),
            _api_frames_config())
    if quant in ("awq", "gptq", "awq_marlin", "gptq_marlin") and not model_quant:
        raise StartupError(f"ValueError: Cannot find the config file for {quant.replace('_marlin', '')}",
                           _api_frames_config())
    effective_quant = quant or model_quant
    if effective_quant in ("awq", "gptq"):
        effective_quant += "_marlin"  # vLLM upgrades on CUDA
    if quant and not model_quant and quant in ("fp8", "bitsandbytes", "fbgemm_fp8"):
        shape = replace(shape, quant_method=quant, quant_bits=8 if quant != "bitsandbytes" else 4)

    dtype_name, dtype_bytes = _dtype(shape, ns.dtype)
    kv_dtype = ns.kv_cache_dtype
    kv_elem = "fp8" if kv_dtype.startswith("fp8") else ("auto" if kv_dtype == "auto" else kv_dtype)
    layers = _layers(shape, pp)
    kv_per_token = []
    for n in layers:
        try:
            kv_per_token.append(shape.kv_bytes_per_token(tp, kv_elem, dtype_name.replace("torch.", ""), layers=n))
        except TypeError:
            kv_per_token.append(shape.kv_bytes_per_token(tp, kv_elem) * n // shape.num_layers)
    weights, largest = _weights(shape, model, tp, pp, dtype_name.replace("torch.", ""), quant)
    capability = gpuspecs.compute_capability(gpu.name)
    # Machete's 16-bit zero points (Hopper, 0.26+)
    unpacked = modelshape.unpacked_zero_point_bytes_per_stage(shape, capability, dialect.v, tp, pp,
                                                              dtype_name.replace("torch.", ""))
    weights = [w + int(u) for w, u in zip(weights, unpacked)]
    v2_runner = dialect.v2_runner and os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower() not in (
        "0", "false")
    # before 0.28 the V2 runner never installs the weight offloader: --cpu-offload-gb is ignored
    offload_gb = 0.0 if v2_runner and not dialect.at_least(0, 28) else (ns.cpu_offload_gb or 0)
    offloaded = [memory.offloaded_bytes(_layer_params(shape, tp, dtype_bytes), n, int(offload_gb * memory.GIB))
                 for n in layers]
    offloaded = [min(o, max(0, w - memory.LOAD_OVERHEAD_BYTES)) for o, w in zip(offloaded, weights)]
    weights = [w - o for w, o in zip(weights, offloaded)]

    facts = memory.ShapeFacts(
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_heads=shape.num_heads, num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
        vocab_size=shape.vocab_size, dtype_bytes=dtype_bytes)
    # vLLM's batch defaults for the API server: larger on ≥70 GiB GPUs other than the A100, and
    # from 0.28 larger again on ≥160 GiB
    big = gpu.total_mib / 1024 >= 70 and "a100" not in gpu.name.lower()
    huge = dialect.large_gpu_batch_default and gpu.total_mib / 1024 >= 160
    batched = ns.max_num_batched_tokens or (16384 if huge else 8192 if big else 2048)
    seqs = ns.max_num_seqs or (1024 if big else 256)
    compilation = _compilation_config(ns.compilation_config)
    graph_sizes = _graph_sizes(ns, seqs, None if ns.enforce_eager else batched, compilation)
    keys = tuple(ns.api_key or ()) or ((os.environ["VLLM_API_KEY"],) if os.environ.get("VLLM_API_KEY") else ())
    return SimConfig(
        dialect=dialect, model=model, served_names=tuple(ns.served_model_name or [model]),
        architecture=shape.architecture, shape=facts, dtype_name=dtype_name, quantization=effective_quant,
        linear_kernel=modelshape.linear_kernel(shape, capability, dialect.v),
        kv_bytes_per_token=tuple(kv_per_token), layers_per_stage=tuple(layers), weights_per_stage=tuple(weights),
        offloaded_per_stage=tuple(offloaded), cpu_offload_gb=float(ns.cpu_offload_gb or 0), v2_runner=v2_runner,
        swap_space=float(ns.swap_space),
        largest_weight=largest, max_model_len=max_len, derived_max_model_len=derived,
        block_size=ns.block_size or (memory.V034_BLOCK_SIZE if dialect.memory_0_34 else 16), util=util, tp=tp, pp=pp, dp=dp, max_num_seqs=seqs,
        max_num_batched_tokens=batched, enforce_eager=bool(ns.enforce_eager), kv_cache_dtype=kv_dtype,
        graph_sizes=graph_sizes,
        load_format=ns.load_format, enable_prefix_caching=ns.enable_prefix_caching is not False,
        disable_custom_all_reduce=bool(ns.disable_custom_all_reduce),
        kv_cache_memory_bytes=ns.kv_cache_memory_bytes, num_gpu_blocks_override=ns.num_gpu_blocks_override,
        revision=ns.revision, trust_remote_code=bool(ns.trust_remote_code), gpu=gpu, devices=devices,
        timing=Timing(env_float("STARTUP_S", 1.5)), faults=Faults.from_env(), cache_root=default_cache_root(),
        step_law=step_law(env_float, gpu_name=gpu.name, weight_bytes=float(sum(weights)),
                          offloaded_bytes=float(sum(offloaded)),
                          params=model_params(facts.num_layers, facts.hidden_size, facts.intermediate_size,
                                              facts.num_heads, facts.num_kv_heads, facts.head_dim, facts.vocab_size),
                          tensor_parallel=tp, kv_bytes_per_token=float(sum(kv_per_token)), layers=max(layers),
                          graph_sizes=graph_sizes),
        response_tokens=max(1, int(env_float("RESPONSE_TOKENS", 16))), host=ns.host, port=ns.port,
        api_keys=keys, executor_backend=ns.distributed_executor_backend, extensible=extensible,
        # the V1 model runner estimates the graphs into the budget from 0.21; the V2 runner from 0.30
        graph_estimate=(dialect.estimates_graphs or (not v2_runner and dialect.at_least(0, 21))) and not extensible,
        util_given=util_given,
        fused_allreduce=_fused_allreduce(dialect, gpu.name, tp, compilation))


def _compilation_config(text: str | None) -> Any:
    """The parsed --compilation-config (None when absent or not JSON)."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _graph_sizes(ns: Any, seqs: int, batched: int | None, config: Any) -> tuple[int, ...]:
    """The sizes vLLM captures (batched None: eager, none): the flags merged into the compilation
    config, which may not give the same key twice (EngineArgs.create_engine_config, eager or not)
    nor a largest size other than the sizes' (VllmConfig._set_cudagraph_sizes, a pydantic error)."""
    ask = cudagraphs.merged_ask(ns.max_cudagraph_capture_size, ns.cudagraph_capture_sizes, config)
    errors = ask.vllm_errors(batched)
    if ask.both_given:
        raise StartupError("ValueError: " + errors[0], _api_frames_engine_args())
    if errors:
        raise StartupError(pydantic_error("VllmConfig", errors[0], "ArgsKwargs((), {...})"), _api_frames_vllm_config())
    return () if batched is None else tuple(cudagraphs.capture_sizes(seqs, batched, ask.max_size, ask.sizes or ()))


_HOPPER_OR_BLACKWELL = ("h100", "h200", "h800", "h20", "gh200", "b100", "b200", "gb200", "b300")


def _fused_allreduce(dialect: Dialect, gpu_name: str, tp: int, compilation_config: Any) -> bool:
    """vLLM 0.26+'s enable_allreduce_rms_fusion: TP > 1 on compute capability 9.0 or 10.x (with
    flashinfer, which vLLM's wheel brings), unless --compilation-config turns it off."""
    name = gpu_name.lower()
    if tp <= 1 or not dialect.at_least(0, 26) or not any(f" {g}" in f" {name}" for g in _HOPPER_OR_BLACKWELL):
        return False
    passes = compilation_config.get("pass_config") if isinstance(compilation_config, dict) else None
    return not isinstance(passes, dict) or passes.get("fuse_allreduce_rms", True) is not False


def invalid_repo_message(model: str) -> str:
    return (f"Invalid repository ID or local directory specified: '{model}'.\n"
            "Please verify the following requirements:\n"
            "1. Provide a valid Hugging Face repository ID.\n"
            "2. Specify a local directory that contains a recognized configuration file.\n"
            "   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
            "   - For Mistral models: ensure the presence of a 'params.json'.\n"
            "3. For GGUF: pass the local path of the GGUF checkpoint.\n"
            "   Loading GGUF from a remote repo directly is not yet supported.\n")


def _args_repr(ns: Any) -> str:
    return f"ArgsKwargs((), {{'model': {ns.model!r}, 'runner': 'auto', 'tokenizer': {ns.model!r}, ...}})"


def _api_frames_config() -> list[Any]:
    from llm_supervisor.simulator import tracebacks as tb

    return tb.API_SERVER_STARTUP + tb.API_ENGINE_CLIENT + tb.API_CONFIG


def _api_frames_engine_args() -> list[Any]:
    from llm_supervisor.simulator import tracebacks as tb

    return tb.API_SERVER_STARTUP + tb.API_ENGINE_CLIENT + tb.API_ENGINE_ARGS


def _api_frames_vllm_config() -> list[Any]:
    from llm_supervisor.simulator import tracebacks as tb

    return tb.API_SERVER_STARTUP + tb.API_ENGINE_CLIENT + tb.API_VLLM_CONFIG

