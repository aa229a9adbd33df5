"""`supervisor doctor`: check this host before `up` does, and say how to fix what is wrong.

Each check is independent and never raises: a problem becomes a `fail` (up would not work) or a
`warn` (up works, but not as well as it could).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llm_supervisor.host import engineversion, gpus as hardware
from llm_supervisor.host.placement import plan_placement
from llm_supervisor.host.tenants import describe, gpu_tenants, port_holder
from llm_supervisor.host.topology import Topology
from llm_supervisor.errors import SupervisorError
from llm_supervisor.cpulist import format_cpulist
from llm_supervisor.vllm import memory
from llm_supervisor.config.profile import Profile
from llm_supervisor.config.settings import Settings


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def run_doctor(settings: Settings, profile: Profile | None, simulate: bool, root: Path = Path("/"),
               daemon_pid: int | None = None) -> list[Check]:
    """Every check, in the order a user would fix them. `daemon_pid`: the llm-supervisor that runs
    with this state dir now, if one does (its ports are in use, as they should be)."""
    checks: list[Check] = []
    gpus = _guard(checks, "gpu driver", lambda: _check_nvml(checks, simulate))
    _guard(checks, "gpus vs profile", lambda: checks.append(_check_profile(profile, gpus)))
    if gpus:
        _guard(checks, "gpu processes", lambda: checks.append(_check_tenants(simulate, daemon_pid)))
        _guard(checks, "gpu health", lambda: checks.append(_check_health(simulate, root)))
    topo = _guard(checks, "cpus", lambda: Topology.read(root, bus_ids=[g.sysfs_bus_id for g in gpus or []]))
    if topo is not None:
        _guard(checks, "cpus", lambda: checks.append(_check_cpus(topo)))
        _guard(checks, "numa_balancing", lambda: checks.append(_check_balancing(topo)))
        if profile is not None:
            _guard(checks, "placement", lambda: checks.append(_check_placement(profile, gpus or [], topo)))
    _guard(checks, "numactl", lambda: checks.append(_check_numactl()))
    _guard(checks, "mempolicy", lambda: checks.append(_check_mempolicy(topo)))
    _guard(checks, "engine command", lambda: checks.append(_check_engine(settings, simulate)))
    _guard(checks, "engine version", lambda: checks.append(_check_engine_version(settings, simulate)))
    _guard(checks, "api port", lambda: checks.append(_check_port(
        "api port", settings.api_host, settings.api_port, "LLM_SUPERVISOR_API_PORT", daemon_pid)))
    if profile is not None:
        _guard(checks, "engine port", lambda: checks.append(_check_port(
            "engine port", profile.vllm.host, profile.vllm.port, "--set vllm.port=…", daemon_pid)))
    _guard(checks, "state dir", lambda: checks.append(_check_dir("state dir", settings.state_dir, "LLM_SUPERVISOR_STATE_DIR")))
    if daemon_pid is not None and checks[-1].status == "ok":
        checks[-1].detail += f"; llm-supervisor pid {daemon_pid} runs with it"
    _guard(checks, "log dir", lambda: checks.append(_check_dir("log dir", settings.logs, "LLM_SUPERVISOR_LOG_DIR")))
    return checks


def _guard(checks: list[Check], name: str, run: Callable[[], Any]) -> Any:
    """A check that breaks unexpectedly is a failed check, not a traceback."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - doctor reports everything
        checks.append(Check(name, "fail", f"check crashed: {exc.__class__.__name__}: {exc}"))
        return None


def format_checks(checks: list[Check]) -> str:
    """One line per check: status, name, what was found, and the fix where there is one."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.status:<4}  {c.name:<{width}}  {c.detail}"
        if c.fix and c.status != "ok":
            line += f"; fix: {c.fix}"
        lines.append(line)
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return "\n".join(lines)


# ---------------------------------------------------------------- checks


def _check_nvml(checks: list[Check], simulate: bool) -> list[hardware.Gpu] | None:
    inv = hardware.inventory(simulate)
    try:
        gpus, visible_note = hardware.visible_to_us(inv.gpus(), os.environ)
        driver = inv.driver_version()
    except hardware.NoGpuFound as exc:
        checks.append(Check("gpu driver", "fail", exc.message,
                            "install the NVIDIA driver and check `nvidia-smi`, or try the supervisor with --simulate"))
        return None
    finally:
        close = getattr(inv, "close", None)
        if callable(close):
            close()
    if not gpus:
        checks.append(Check("gpu driver", "fail", visible_note or "no NVIDIA GPU found",
                            "fix CUDA_VISIBLE_DEVICES (NVML indexes or GPU UUIDs)" if visible_note else "check `nvidia-smi`"))
        return None
    what = "simulated GPU" if simulate else f"NVML, driver {driver or 'unknown'}"
    listing = "; ".join(f"{g.index}: {g.name}, {g.memory_total_gib:.1f} GiB, {g.memory_used_mib} MiB used" for g in gpus)
    checks.append(Check("gpu driver", "ok", f"{what}: {listing}" + (f" ({visible_note})" if visible_note else "")))
    return gpus


def _check_profile(profile: Profile | None, gpus: list[hardware.Gpu] | None) -> Check:
    if profile is None:
        return Check("gpus vs profile", "warn", "no profile given: nothing to compare",
                     "pass --profile NAME (or set LLM_SUPERVISOR_PROFILE)")
    if gpus is None:
        return Check("gpus vs profile", "fail", f"profile {profile.name}: no GPU to compare", "see the gpu driver check")
    result = hardware.match_profile(gpus, profile.hardware)
    if result.match:
        return Check("gpus vs profile", "ok", f"profile {profile.name}: " + "; ".join(result.reasons))
    return Check("gpus vs profile", "fail", f"profile {profile.name}: " + "; ".join(result.reasons),
                 "pick a profile written for these GPUs (supervisor profiles), or edit its hardware section")


def _check_tenants(simulate: bool, daemon_pid: int | None = None) -> Check:
    """Who holds the GPUs: a leftover vLLM engine (another launcher's, or an orphan) fails the
    check, other programs warn; each with pid, name and memory. The engine of the daemon that runs
    with this state dir (`daemon_pid`) is where it should be."""
    inv = hardware.inventory(simulate)
    try:
        tenants = gpu_tenants(inv)
    finally:
        close = getattr(inv, "close", None)
        if callable(close):
            close()
    if not tenants:
        return Check("gpu processes", "ok", "no process holds GPU memory")
    this = [t for t in tenants if daemon_pid is not None and t.supervisor_pid == daemon_pid]
    engines = [t for t in tenants if t.foreign_engine]
    supervised = [t for t in tenants if t.vllm and not t.foreign_engine and t not in this]
    others = [t for t in tenants if not t.vllm and t not in this]
    parts = ([f"vLLM engine processes nobody supervises: {describe(engines)}"] if engines else []) + \
            ([f"engines of running supervisors: {describe(supervised)}"] if supervised else []) + \
            ([f"other processes: {describe(others)}"] if others else [])
    mine = f"the engine of the llm-supervisor running with this state dir: {describe(this)}" if this else ""
    if not parts:
        return Check("gpu processes", "ok", mine)
    parts += [mine] if mine else []
    if engines:
        return Check("gpu processes", "fail", "; ".join(parts),
                     "end them (kill PID), or start with `up --end-foreign-engines` "
                     "(recovery.end_foreign_engines: true) to end them before launching; engines of running "
                     "supervisors are never ended")
    return Check("gpu processes", "warn", "; ".join(parts),
                 "memory they hold is not available to vLLM: lower vllm.gpu_memory_utilization or stop them")


def xids_from_kernel_log(root: Path = Path("/")) -> tuple[list[str], str | None]:
    """NVIDIA's Xid lines from the kernel's log (/dev/kmsg, read without waiting), or why not
    (reading it needs CAP_SYSLOG where kernel.dmesg_restrict is 1)."""
    path = root / "dev" / "kmsg"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return [], f"kernel log not readable ({exc.strerror})"
    found: list[str] = []
    try:
        for _ in range(200_000):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: records overwritten while reading; go on
                continue
            if not record:
                break
            text = record.decode(errors="replace")
            if "NVRM: Xid" in text:
                found.append(" ".join(text.split(";", 1)[-1].split()))
    finally:
        os.close(fd)
    return found[-20:], None


def _check_health(simulate: bool, root: Path) -> Check:
    """ECC errors, retired or pending pages, row remapping (NVML), and Xids in the kernel log."""
    inv = hardware.inventory(simulate)
    try:
        health = inv.health() if callable(getattr(inv, "health", None)) else []
    finally:
        close = getattr(inv, "close", None)
        if callable(close):
            close()
    faults = [f for h in health for f in h.faults()]
    xids, why = ([], None) if simulate else xids_from_kernel_log(root)
    retired = sum(h.retired_pages or 0 for h in health)
    detail = "; ".join(faults) if faults else f"no fault on {len(health)} GPU(s)"
    if retired:
        detail += f"; {retired} page(s) retired so far"
    if xids:
        detail += f"; kernel log: {len(xids)} Xid line(s), the last: {xids[-1]}"
    elif why:
        detail += f"; {why}, Xids not checked"
    if faults:
        return Check("gpu health", "fail", detail, "check `nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER` and "
                     "`dmesg | grep -i xid`; reset the GPU (`nvidia-smi -r`) or reboot before starting vLLM")
    if xids:
        return Check("gpu health", "warn", detail, "look at the Xid lines (`dmesg | grep -i xid`): a GPU that "
                     "logged hardware Xids may fail again")
    return Check("gpu health", "ok", detail)


def _check_cpus(topo: Topology) -> Check:
    allowed = topo.allowed
    nodes = ", ".join(f"node {n}: {format_cpulist(c) or 'memory only'}" for n, c in sorted(topo.nodes.items()))
    detail = f"{len(allowed)} CPUs allowed ({format_cpulist(allowed)}), {len(topo.cores(allowed))} physical cores; {nodes}"
    if topo.cgroup_cpus is not None and set(topo.cgroup_cpus) != {c for cs in topo.nodes.values() for c in cs}:
        detail += f"; cgroup v{topo.cgroup_version} cpuset {format_cpulist(topo.cgroup_cpus)}"
    if topo.cpu_quota is not None:
        return Check("cpus", "warn", f"{detail}; cgroup CPU quota {topo.cpu_quota:g} CPUs",
                     "a quota throttles the engine's busy loop whatever its CPU set: raise or remove it "
                     "(CPUQuota= in systemd, cpu limits in Kubernetes)")
    return Check("cpus", "ok", detail + "; no CPU quota")


def _check_balancing(topo: Topology) -> Check:
    value = topo.numa_balancing
    if value is None:
        return Check("numa_balancing", "ok", "not available on this kernel")
    if value == 0:
        return Check("numa_balancing", "ok", "0 (off)")
    if len(topo.cpu_nodes()) <= 1:
        return Check("numa_balancing", "ok", f"{value} (on), harmless with one NUMA node")
    return Check("numa_balancing", "warn", f"{value} (on): the kernel migrates pages of NUMA-bound work",
                 "sysctl -w kernel.numa_balancing=0 (host-wide, as root; the supervisor never changes it)")


def _check_placement(profile: Profile, gpus: list[hardware.Gpu], topo: Topology) -> Check:
    chosen = gpus
    if gpus:
        match = hardware.match_profile(gpus, profile.hardware)
        chosen = match.chosen or gpus
    v = profile.vllm
    try:
        p = plan_placement(profile.affinity, chosen, topo, v.tensor_parallel_size, v.data_parallel_size,
                           v.pipeline_parallel_size)
    except SupervisorError as exc:
        return Check("placement", "fail", "; ".join(exc.lines()), "fix the profile's affinity section")
    where = f"cpus {format_cpulist(p.cpus)}" if p.pinned else "not pinned"
    policy = f"mempolicy {p.memory_policy}" + (f":{format_cpulist(p.nodes)}" if p.memory_policy != "none" else "")
    detail = "; ".join([f"{where}, {policy}", *p.notes, *p.warnings])
    return Check("placement", "warn" if p.warnings else "ok", detail,
                 "see the warnings; set affinity.mode: explicit with cpus/numa_nodes to choose" if p.warnings else "")


def _check_numactl() -> Check:
    path = shutil.which("numactl")
    if path:
        return Check("numactl", "ok", path)
    return Check("numactl", "warn", "not installed: the supervisor pins without it, but vLLM's --numa-bind needs it",
                 "apt-get install numactl (or dnf install numactl)")


def _check_mempolicy(topo: Topology | None) -> Check:
    """set_mempolicy in a throwaway child: the parent's policy stays untouched, and a seccomp
    refusal (containers without CAP_SYS_NICE) shows up as it would for the engine."""
    node = (topo.mems_allowed or [0])[0] if topo is not None else 0
    package_parent = str(Path(__file__).resolve().parent.parent.parent)
    code = (f"import sys; sys.path.insert(0, {package_parent!r}); from llm_supervisor.host import numa; "
            f"ok, why = numa.probe_mempolicy({node}); print('ok' if ok else why)")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("mempolicy", "warn", f"could not probe set_mempolicy ({exc})")
    answer = proc.stdout.strip()
    if not answer:
        errors = proc.stderr.strip().splitlines()
        answer = errors[-1] if errors else ""
    if proc.returncode == 0 and answer == "ok":
        return Check("mempolicy", "ok", f"set_mempolicy permitted (node {node})")
    if answer in ("EPERM", "EACCES"):
        return Check("mempolicy", "warn", f"set_mempolicy not permitted ({answer}): the engine gets CPU pinning only",
                     "in a container, add --cap-add SYS_NICE (Docker and containerd seccomp allow it only then)")
    return Check("mempolicy", "warn", f"set_mempolicy failed ({answer or proc.returncode}): the engine gets CPU pinning only")


def _check_engine(settings: Settings, simulate: bool) -> Check:
    if simulate:
        try:
            found = importlib.util.find_spec("llm_supervisor.simulator") is not None
        except (ImportError, ValueError):
            found = False
        if found:
            return Check("engine command", "ok", "simulator: python -m llm_supervisor.simulator")
        return Check("engine command", "fail", "llm_supervisor.simulator is not importable",
                     "reinstall the package (pip install -e .)")
    try:
        argv = shlex.split(settings.engine_command)
    except ValueError as exc:
        return Check("engine command", "fail", f"cannot parse {settings.engine_command!r}: {exc}",
                     "fix LLM_SUPERVISOR_ENGINE_COMMAND")
    path = shutil.which(argv[0]) if argv else None
    if path:
        return Check("engine command", "ok", f"{settings.engine_command} ({path})")
    return Check("engine command", "fail", f"{argv[0] if argv else '(empty)'} not found on PATH",
                 "pip install vllm in this environment, or set LLM_SUPERVISOR_ENGINE_COMMAND")


def _check_engine_version(settings: Settings, simulate: bool) -> Check:
    """Which vLLM the engine command runs, and whether this supervisor knows its log and memory
    accounting (host/engineversion.py; the planner sizes the KV cache the way that version does)."""
    if simulate:
        found = engineversion.simulator_version(default=memory.NEWEST_SUPPORTED_VERSION)
    else:
        try:
            argv = shlex.split(settings.engine_command)
        except ValueError:
            return Check("engine version", "warn", "the engine command cannot be parsed", "see the engine command check")
        found = engineversion.detect(argv, state_dir=settings.state_dir)
    if found.version is None:
        return Check("engine version", "warn", f"unknown ({found.detail}): `plan` assumes the newest supported,"
                     f" {memory.NEWEST_SUPPORTED_VERSION}, until the engine prints its own",
                     "install vLLM in the engine command's environment (pip install vllm)")
    accounting = memory.accounting_for(found.version)
    detail = f"vLLM {found.describe()}; KV cache accounting {accounting}"
    caveats = memory.version_notes(found.version)
    if caveats:
        return Check("engine version", "warn", detail + "; " + "; ".join(caveats),
                     f"versions read and tested: {', '.join(memory.SUPPORTED_VERSIONS)}")
    return Check("engine version", "ok", detail)


def port_free(host: str, port: int) -> tuple[bool, str]:
    """Can a server listen on host:port now? Bound as a server would (SO_REUSEADDR: TIME_WAIT is fine)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return False, f"cannot resolve {host!r}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return False, exc.strerror or str(exc)
    return True, "free"


def _check_port(name: str, host: str, port: int, setting: str, daemon_pid: int | None = None) -> Check:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if port == 0:
        return Check(name, "ok", f"{where}: any free port")
    free, why = port_free(host, port)
    if free:
        return Check(name, "ok", f"{where} is free")
    holder = port_holder(port)
    if holder is None:
        return Check(name, "fail", f"{where} cannot be bound ({why})",
                     f"stop what listens there (ss -ltnp 'sport = :{port}'; a running supervisor?) or change {setting}")
    pid, what, ancestors = holder
    if daemon_pid is not None and daemon_pid in (pid, *ancestors):
        through = "" if pid == daemon_pid else f" (its engine, pid {pid})"
        return Check(name, "warn", f"{where} is in use by the llm-supervisor running with this state dir, pid "
                     f"{daemon_pid}{through}", "expected while it runs (`supervisor status` asks it); stop it before "
                     f"starting another, or change {setting}")
    return Check(name, "fail", f"{where} cannot be bound ({why}): {what} pid {pid} listens there",
                 f"stop it or change {setting}" + (" (another llm-supervisor: `supervisor status --url` asks it)"
                                                    if what == "llm-supervisor" else ""))


def _check_dir(name: str, path: Path, setting: str) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(name, "fail", f"{path} is not writable ({exc.strerror or exc})",
                     f"create it for this user (mkdir -p {path}; chown {_user()} {path}) or set {setting}")
    return Check(name, "ok", f"{path} is writable")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
