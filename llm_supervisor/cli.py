"""Command line: the composition root, and the only place that prints errors and exits.

Every command builds settings and a profile, hands them to the module that owns the work,
and renders what comes back. Errors from below are SupervisorError subclasses: one line per
problem on stderr, the class's exit code, no traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from llm_supervisor import __version__
from llm_supervisor.errors import EXIT_BAD_INPUT, BadInput, RuntimeFailure, SupervisorError
from llm_supervisor.config.redaction import Redactor, is_secret_name
from llm_supervisor.config.settings import Settings, load_settings

if TYPE_CHECKING:
    from llm_supervisor.bench.capacity import Workload

app = typer.Typer(
    name="supervisor",
    help="Launch, pin, watch and recover vLLM's OpenAI server on bare GPU hosts.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help prints a type after every flag (`--simulate <bool>`).
    rich_markup_mode=None,
)
profiles_app = typer.Typer(help="List or show hardware profiles.", invoke_without_command=True, rich_markup_mode=None)
app.add_typer(profiles_app, name="profiles")

PIPE_WIDTH = 160  # tables written to a pipe or file: rich would squeeze them into 80 columns


class _TrimmedPipe:
    """stdout or stderr as a pipe or a file sees it: rich pads every table cell to its column's
    width, so lines end in spaces that a script reading `supervisor status` would have to strip.
    The stream is looked up at each write (a test runner swaps sys.stdout)."""

    _PADDED = re.compile(r"[ \t]+(?=\n)")

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    def _stream(self) -> Any:
        return sys.stderr if self._stderr else sys.stdout

    def write(self, text: str) -> int:
        self._stream().write(self._PADDED.sub("", text))
        return len(text)

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno: those of the stream
        return getattr(self._stream(), name)


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.file = _TrimmedPipe(stderr)
        if not os.environ.get("COLUMNS"):
            console.width = PIPE_WIDTH
    return console


out = _console()
err = _console(stderr=True)

def _complete_profiles(incomplete: str) -> list[str]:
    """Shell completion of --profile: the profile names found (never an error while typing)."""
    try:
        from llm_supervisor.config.loader import list_profile_names

        return [n for n in list_profile_names(load_settings().profiles_dir) if n.startswith(incomplete)]
    except Exception:  # noqa: BLE001
        return []


ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", metavar="NAME|PATH", autocompletion=_complete_profiles, help="shipped profile name or YAML path (default: LLM_SUPERVISOR_PROFILE)")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", metavar="ID|PATH", help="model id or folder, overriding the profile's")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="override a profile key: vllm.max_model_len=10000 (repeatable)")]
SimulateOpt = Annotated[bool, typer.Option("--simulate", help="run the bundled vLLM simulator on a simulated GPU instead of vLLM")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
UrlOpt = Annotated[Optional[str], typer.Option("--url", metavar="URL", help="daemon URL (default: from LLM_SUPERVISOR_API_HOST/PORT)")]
TokenOpt = Annotated[Optional[str], typer.Option("--token", metavar="TOKEN", help="admin token (default: LLM_SUPERVISOR_API_TOKEN)", show_default=False)]
IgnoreHwOpt = Annotated[bool, typer.Option("--ignore-hardware-mismatch", help="launch even when the GPUs do not match the profile")]


def _settings(**overrides: Any) -> Settings:
    return load_settings(**overrides)


def _redactor(settings: Settings, prof: Any = None) -> Redactor:
    """The one redaction of everything written (config/redaction.py): every secret value the
    settings, the profile and this environment hold."""
    return Redactor.from_inputs(settings, prof, os.environ)


def _profile(settings: Settings, name: str | None, model: str | None, sets: list[str] | None,
             check_model: bool = False):
    from llm_supervisor.config.loader import load_profile

    name = name or settings.profile
    if not name:
        raise BadInput("no profile", ["--profile: required (or set LLM_SUPERVISOR_PROFILE); see `supervisor profiles`"])
    prof = load_profile(name, settings.profiles_dir, overrides=sets or [], model=model)
    if prof.vllm.api_key is None and settings.engine_api_key is not None:
        prof = prof.model_copy(update={"vllm": prof.vllm.model_copy(update={"api_key": settings.engine_api_key})})
    if check_model:
        _check_local_model(prof.model.id, "--model" if model else f"{name}: model.id")
    return prof


def _check_local_model(model_id: str, source: str) -> None:
    """A model given as a local path (not a Hugging Face id) must exist: vLLM would only fail later."""
    if not model_id.startswith(("/", "./", "../", "~")):
        return
    path = Path(model_id).expanduser()
    if not path.exists():
        raise BadInput("no such model", [f"{source} {model_id}: no such folder (a local model is a folder "
                                         "with config.json; a Hugging Face id looks like Qwen/Qwen3-4B)"])


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str), indent=2) if sys.stdout.isatty() else print(json.dumps(data, indent=2, default=str))


def _show_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True, callback=_show_version)] = False,
) -> None:
    """Launch, pin, watch and recover vLLM's OpenAI server on bare GPU hosts."""


@app.command()
def up(
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    simulate: SimulateOpt = False,
    ignore_hardware: IgnoreHwOpt = False,
    role: Annotated[Optional[str], typer.Option("--role", help="head|worker, for a profile with a cluster section (default: LLM_SUPERVISOR_ROLE, then cluster.role)")] = None,
    end_foreign_engines: Annotated[bool, typer.Option("--end-foreign-engines", help="end leftover vLLM engine processes that are not this supervisor's but hold memory on its GPUs, before each launch (recovery.end_foreign_engines)")] = False,
) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    settings = _settings()
    prof = _profile(settings, profile, model, set_, check_model=True)
    if prof.cluster is not None or role:  # a multi-host deployment on Ray (cluster/)
        from llm_supervisor.cluster.node import run_node

        raise typer.Exit(run_node(settings, prof, role=role, simulate=simulate, ignore_hardware=ignore_hardware))
    from llm_supervisor.runtime.daemon import run_daemon

    progress = None
    if sys.stdout.isatty():  # a live line; elsewhere (systemd, Docker, pipes) timestamped log lines
        from llm_supervisor.runtime.progress import TerminalProgress

        progress = TerminalProgress(Console(highlight=False))
    raise typer.Exit(run_daemon(settings, prof, simulate=simulate, ignore_hardware=ignore_hardware, progress=progress,
                                redactor=_redactor(settings, prof), end_foreign_engines=end_foreign_engines))


@app.command()
def plan(
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    set_: SetOpt = None,
    simulate: SimulateOpt = False,
    gpu_memory_gib: Annotated[Optional[float], typer.Option("--gpu-memory-gib", min=1, max=4096, help="plan for GPUs of this size instead of the ones found")] = None,
    gpu_count: Annotated[Optional[int], typer.Option("--gpu-count", min=1, max=1024, help="plan for this many GPUs instead of the ones found")] = None,
    calibrate_from: Annotated[Optional[Path], typer.Option("--calibrate-from", help="learn this host's overhead from an earlier vLLM log")] = None,
    vllm_version: Annotated[Optional[str], typer.Option("--vllm-version", help="plan for this vLLM version instead of the engine's (e.g. 0.26.0)")] = None,
    ignore_hardware: IgnoreHwOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Everything `up` would do, without launching: argv, env, CPUs, memory policy, hardware, fit."""
    settings = _settings()
    prof = _profile(settings, profile, model, set_, check_model=True)
    from llm_supervisor.cluster import spec as cluster_spec
    from llm_supervisor.planning.launch import build_plan, format_plan

    if prof.cluster is not None:  # what the head launches; per-host layout below
        prof = cluster_spec.engine_profile(prof, cluster_spec.resolve_node_ip(prof.cluster))

    from llm_supervisor.store.lock import DaemonLock
    from llm_supervisor.store.state import StateStore

    # what `up` would start from: the arguments that last reached ready here (read, never written)
    store = StateStore(settings.state_dir, readonly=True)
    result = build_plan(
        settings, prof, simulate=simulate, gpu_memory_gib=gpu_memory_gib, gpu_count=gpu_count,
        calibrate_from=calibrate_from, ignore_hardware=ignore_hardware, vllm_version=vllm_version,
        store=store, daemon_pid=DaemonLock(settings.state_dir).holder(),
    )
    result.warnings.extend(store.warnings)  # a corrupt or unreadable state file: planned without it
    section = cluster_spec.plan_section(prof, result.hf_home) if prof.cluster is not None else None
    redactor = _redactor(settings, prof)
    if as_json:
        _print_json(redactor.value(result.to_json() | ({"cluster": section} if section else {})))
    else:
        out.print(redactor.text(format_plan(result)))
        if section:
            out.print(redactor.text(cluster_spec.format_plan_section(section)), markup=False)


@app.command()
def diagnose(
    logfile: Annotated[Path, typer.Argument(help="a saved vLLM log (stdout and stderr)")],
    as_json: JsonOpt = False,
) -> None:
    """Read a vLLM log: startup facts, the failure class and the remedy."""
    from llm_supervisor.host.logfiles import diagnose_file
    from llm_supervisor.vllm.diagnosis import format_diagnosis

    result = diagnose_file(logfile)
    if as_json:
        _print_json(result)
    else:
        out.print(format_diagnosis(result), markup=False)


@app.command()
def status(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Ask a running daemon how the engine is doing."""
    from llm_supervisor.api.client import format_status, get_status

    settings = _settings()
    result = get_status(url or settings.url)
    if as_json:
        _print_json(result)
    else:
        out.print(format_status(result))


def _admin(action: str, url: str | None, token: str | None) -> None:
    from llm_supervisor.api.client import post_action

    settings = _settings()
    secret = token or (settings.api_token.get_secret_value() if settings.api_token else None)
    result = post_action(url or settings.url, action, secret)
    out.print(f"{action}: {result.get('detail', 'accepted')}")


@app.command()
def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing what the engine writes next")] = False,
    attempt: Annotated[Optional[int], typer.Option("--attempt", min=1, metavar="N", help="launch N of the newest run (default: the newest launch)")] = None,
    lines: Annotated[Optional[int], typer.Option("--lines", "-n", min=0, max=1_000_000, metavar="N", help="only the last N lines of that launch (then, with -f, what comes next)")] = None,
    profile: ProfileOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """The engine's output: through the daemon's API when it runs, else from its log file."""
    from llm_supervisor.api.client import stream_logs
    from llm_supervisor.errors import DaemonUnreachable

    settings = _settings()
    secret = token or (settings.api_token.get_secret_value() if settings.api_token else None)
    sink = sys.stdout.buffer
    try:
        try:
            for chunk in stream_logs(url or settings.url, secret, attempt, follow, lines=lines):
                sink.write(chunk)
                sink.flush()
            return
        except DaemonUnreachable as exc:
            if url:
                raise
            from llm_supervisor.host.logfiles import attempt_section, follow_file, read_ranges, tail_ranges

            path = _engine_log(settings, profile)
            err.print(f"{exc.message}; reading {path}", markup=False, style="dim")
            _, ranges = attempt_section(path, attempt)
            for chunk in read_ranges(ranges if lines is None else tail_ranges(ranges, lines)):
                sink.write(chunk)
            sink.flush()
            if follow:
                for chunk in follow_file(path):
                    sink.write(chunk)
                    sink.flush()
    except BrokenPipeError:  # `supervisor logs | head`
        sys.stderr.close()


def _engine_log(settings: Settings, profile: str | None) -> Path:
    """<LOG_DIR>/<profile>.log: the profile named (or LLM_SUPERVISOR_PROFILE), else the only log there."""
    name = profile or settings.profile
    if name:
        if name.endswith((".yaml", ".yml")) or "/" in name:
            name = _profile(settings, name, None, None).name
        return settings.logs / f"{name}.log"
    found = sorted(settings.logs.glob("*.log"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise BadInput("no engine log", [f"{settings.logs}: no engine log (no daemon has launched an engine with "
                                         "this LLM_SUPERVISOR_STATE_DIR / LOG_DIR)"])
    raise BadInput("which engine log", ["--profile: required: engine logs for " + ", ".join(p.stem for p in found)])


@app.command()
def restart(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Ask the daemon to restart the engine (same arguments)."""
    _admin("restart", url, token)


@app.command()
def stop(url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Ask the daemon to stop the engine and exit."""
    _admin("stop", url, token)


@profiles_app.callback()
def profiles_list(ctx: typer.Context) -> None:
    """List the shipped profiles."""
    if ctx.invoked_subcommand:
        return
    from llm_supervisor.config.loader import list_profile_names, load_profile

    settings = _settings()
    names = list_profile_names(settings.profiles_dir)
    if not names:
        out.print(f"no profiles in {settings.profiles_dir}")
        return
    for name in names:
        try:
            prof = load_profile(name, settings.profiles_dir)
            out.print(f"{name:<24} {prof.description}")
        except SupervisorError as exc:
            out.print(f"{name:<24} [red]invalid[/red]: {exc.lines()[0]}")


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="profile name or YAML path")],
    set_: SetOpt = None,
    model: ModelOpt = None,
) -> None:
    """Print a profile as the daemon would use it (overrides applied, secrets masked)."""
    from llm_supervisor.config.loader import load_profile, profile_to_yaml

    settings = _settings()
    print(profile_to_yaml(load_profile(name, settings.profiles_dir, overrides=set_ or [], model=model,
                                       label="profiles show NAME")), end="")


@app.command()
def doctor(profile: ProfileOpt = None, simulate: SimulateOpt = False) -> None:
    """Check this host: NVML, GPUs vs profile, NUMA, ports, engine command, directories."""
    from llm_supervisor.host.doctor import format_checks, run_doctor
    from llm_supervisor.store.lock import DaemonLock

    settings = _settings()
    name = profile or settings.profile
    prof = _profile(settings, name, None, None) if name else None
    checks = run_doctor(settings, prof, simulate=simulate, daemon_pid=DaemonLock(settings.state_dir).holder())
    out.print(format_checks(checks))
    if any(c.status == "fail" for c in checks):
        raise typer.Exit(1)


@app.command()
def bench(
    users: Annotated[int, typer.Option("--users", "-u", min=1, max=10000, help="concurrent streaming clients")] = 8,
    requests: Annotated[Optional[int], typer.Option("--requests", "-n", min=1, help="requests in all (default: 4 per user)")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="tokens to generate per request")] = 128,
    prompt: Annotated[Optional[str], typer.Option("--prompt", help="the user message to send")] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="OpenAI-compatible base URL (default: the address the daemon serves clients on, its front door when on)")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="served model name (default: asked from /v1/models)")] = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="OPENAI_API_KEY", help="bearer key for the endpoint", show_default=False)] = None,
    find_capacity: Annotated[bool, typer.Option("--find-capacity", help="search for the most users that meet --slo")] = False,
    slo: Annotated[Optional[str], typer.Option("--slo", help="with --find-capacity: ttft_p95=2s,tpot_p95=60ms, user_tps=20, latency_p99=30s, success_rate=0.99")] = None,
    prompt_tokens: Annotated[Optional[str], typer.Option("--prompt-tokens", help="prompts of random tokens of this length: 1024, 512-2048 or 256,1024 (with --find-capacity: default 512)", show_default=False)] = None,
    output_tokens: Annotated[Optional[str], typer.Option("--output-tokens", help="reply length, same forms (default: --max-tokens; with --find-capacity: 128)", show_default=False)] = None,
    workload: Annotated[Optional[Path], typer.Option("--workload", help="a JSONL file of real requests (messages or prompt, max_tokens)")] = None,
    max_users: Annotated[int, typer.Option("--max-users", min=1, max=10000, help="with --find-capacity: the most users to try")] = 256,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=20, help="with --find-capacity: measured requests per user and level")] = 2,
    max_seconds: Annotated[float, typer.Option("--max-seconds", min=10, help="with --find-capacity: time budget of the search")] = 900.0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="with --find-capacity: write the SVG plot here (default: under the state dir)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Concurrency test against the served model: success, tokens/s, TTFT and latency percentiles;
    with --find-capacity, the largest load that meets an SLO."""
    settings = _settings()
    if find_capacity or slo:
        _bench_capacity(settings, slo, find_capacity, url=url, model=model, api_key=api_key,
                        prompt_tokens=prompt_tokens or "512", output_tokens=output_tokens or "128", workload=workload,
                        max_users=max_users, rounds=rounds, max_seconds=max_seconds, plot=plot, as_json=as_json)
        return
    from llm_supervisor.bench.run import all_failed, format_bench, run_bench

    result = run_bench(
        settings, url=url, users=users, requests=requests, max_tokens=max_tokens,
        prompt=prompt, model=model, api_key=api_key, progress=not as_json,
        workload=_bench_workload(prompt, prompt_tokens, output_tokens, workload, max_tokens),
    )
    if as_json:
        _print_json(result)
    else:
        out.print(format_bench(result))
    if (errors := all_failed(result)) is not None:  # a script must not take this for a measurement
        raise RuntimeFailure(f"bench: none of {result['requests']} requests succeeded ({errors})")


def _bench_workload(prompt: str | None, prompt_tokens: str | None, output_tokens: str | None,
                    workload: Path | None, max_tokens: int) -> "Workload | None":
    """Plain `bench`'s requests when they are not one prompt: prompts of a length (random tokens,
    fresh each run) or a file of real requests; replies of --output-tokens, else --max-tokens."""
    problems = [f"--prompt: not with {name}" for name, given in (("--prompt-tokens", prompt_tokens),
                                                                  ("--workload", workload))
                if prompt is not None and given is not None]
    if prompt_tokens is not None and workload is not None:
        problems.append("--prompt-tokens: not with --workload (its requests are the prompts)")
    if output_tokens is not None and prompt_tokens is None and workload is None:
        problems.append("--output-tokens: with --prompt-tokens or --workload (one prompt's reply is --max-tokens)")
    if problems:
        raise BadInput("bad bench options", problems)
    from llm_supervisor.bench import capacity

    replies = output_tokens or str(max_tokens)
    if workload is not None:
        return capacity.Workload.from_jsonl(workload, replies)
    if prompt_tokens is not None:
        return capacity.Workload.synthetic(prompt_tokens, replies)
    return None


def _bench_capacity(settings: Settings, slo_text: str | None, find: bool, *, url: str | None, model: str | None,
                    api_key: str | None, prompt_tokens: str, output_tokens: str, workload: Path | None,
                    max_users: int, rounds: int, max_seconds: float, plot: Path | None, as_json: bool) -> None:
    """`bench --find-capacity`: search, then keep the result (state file, calibration, plot)."""
    import re
    import time

    from llm_supervisor.bench import capacity
    from llm_supervisor.store.calibration import Calibration
    from llm_supervisor.store.state import StateStore

    if not find:
        raise BadInput("bad bench options", ["--slo: only with --find-capacity"])
    if not slo_text:
        raise BadInput("bad bench options", ["--find-capacity: needs --slo, e.g. --slo ttft_p95=2s,tpot_p95=60ms"])
    slo = capacity.parse_slo(slo_text)
    work = (capacity.Workload.from_jsonl(workload, output_tokens) if workload is not None
            else capacity.Workload.synthetic(prompt_tokens, output_tokens))
    options = capacity.SearchOptions(max_users=max_users, rounds=rounds, max_seconds=max_seconds)
    result = capacity.find_capacity(settings, slo, work, url=url, model=model, api_key=api_key, options=options,
                                    progress=not as_json)
    if (why := capacity.nothing_measured(result)) is not None:
        if as_json:
            _print_json(result)
        else:
            out.print(capacity.format_capacity(result))
        raise RuntimeFailure(f"bench --find-capacity: {why}; nothing was kept")
    key = capacity.engine_key(result)
    target = plot or settings.state_dir / "capacity" / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".svg")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(capacity.render_svg(result), encoding="utf-8")
        result["plot"] = str(target)
    except OSError as exc:
        result["plot"] = None
        err.print(f"warning: cannot write the plot to {target}: {exc.strerror}", markup=False)
    try:
        StateStore(settings.state_dir).save_capacity(key, result)
    except OSError as exc:
        err.print(f"warning: cannot keep the result in {settings.state_dir}: {exc}", markup=False)
    engine = result.get("engine") or {}
    points = capacity.calibration_points(result, work)
    gpus = engine.get("gpus") or []
    if points and engine.get("model") and gpus:
        argv = engine.get("argv") or []
        tp = int(argv[argv.index("--tensor-parallel-size") + 1]) if "--tensor-parallel-size" in argv else 1
        try:
            Calibration.in_state_dir(settings.state_dir).record_speed(
                engine["model"], engine.get("vllm_version"), gpus[0], tp, points, now=time.time(),
                source=f"bench --find-capacity {time.strftime('%Y-%m-%d %H:%M')}")
        except OSError as exc:
            err.print(f"warning: cannot keep the speed calibration: {exc}", markup=False)
    if as_json:
        _print_json(result)
    else:
        out.print(capacity.format_capacity(result))


_SECRET_OPTIONS = (b"--token", b"--api-key")


def mask_secret_args(args: list[bytes]) -> list[bytes]:
    """The same arguments with each secret value turned into '*' of the same length: `--token X`,
    `--api-key=X`, `--set vllm.api_key=X`, `--set env.HF_TOKEN=X`. Only those positions change."""
    out = list(args)
    for i, arg in enumerate(args):
        if arg in _SECRET_OPTIONS:
            if i + 1 < len(args):
                out[i + 1] = b"*" * len(args[i + 1])
        elif arg.startswith(tuple(o + b"=" for o in _SECRET_OPTIONS)):
            flag, _, value = arg.partition(b"=")
            out[i] = flag + b"=" + b"*" * len(value)
        elif arg.startswith(b"--set=") or (i > 0 and args[i - 1] == b"--set"):
            key, eq, value = arg.removeprefix(b"--set=").partition(b"=")
            if eq and value and is_secret_name(key.rsplit(b".", 1)[-1].decode(errors="replace")):
                out[i] = arg[: len(arg) - len(value)] + b"*" * len(value)
    return out


def hide_secret_args() -> bool:
    """Overwrite secret values in this process's own argv area (what `ps` and /proc/PID/cmdline
    show) with '*', as MySQL's client does with -pPASSWORD; True when something was hidden. Best
    effort: they were visible until now, which is why the environment (LLM_SUPERVISOR_ENGINE_API_KEY,
    LLM_SUPERVISOR_API_TOKEN) or the profile file is the supported way."""
    given = [arg.encode(errors="surrogateescape") for arg in sys.argv]
    if mask_secret_args(given) == given:
        return False  # nothing to hide: leave /proc/self/mem alone
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat(5) fields 48, 49)
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            hidden = b"\0".join(mask_secret_args(area.split(b"\0")))
            if hidden == area:
                return False
            mem.seek(start)
            mem.write(hidden)
        return True
    except (OSError, ValueError, IndexError):
        return False


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, render SupervisorError once, exit with its code."""
    if argv is None:
        if hide_secret_args() and "up" in sys.argv[1:]:
            err.print("warning: a secret on the command line is visible in `ps` while the daemon starts; "
                      "set LLM_SUPERVISOR_ENGINE_API_KEY (engine key) or LLM_SUPERVISOR_API_TOKEN instead",
                      markup=False)
    try:
        # With standalone_mode off, `raise typer.Exit(n)` comes back as the return value.
        code = app(args=argv, standalone_mode=False)
    except SupervisorError as exc:
        for line in exc.lines():
            err.print(f"error: {line}", markup=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as exc:
        # Usage errors from the option parser (click, vendored by newer typer) show themselves.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(EXIT_BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
