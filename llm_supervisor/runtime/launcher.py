"""The only module that starts and signals engine processes.

An engine runs under its guard (guard.py) in a session of its own; its stdout and stderr share
one pipe that is always drained, in chunks, without ever blocking the event loop. Each chunk
goes, split into lines, to the caller's callback (the daemon writes it to its rotating log).

The pipe is the engine's, not the guard's: the guard passes it on and closes its own end, and
its control socket is close-on-exec. So the guard's exit is seen the moment it happens (nothing
of the engine keeps a descriptor of the guard open), and a guard that died without reporting an
exit (`kill -9`) is *lost*: its engine tree is ended here (every process of the guard's session:
SIGTERM, a short deadline, SIGKILL) before the exit is reported, with `ExitInfo.guard_lost`.

`Launcher` and `EngineHandle` are the seam the daemon takes (supervisord's `DummyOptions`,
honcho's `_child_ctor`): `GuardLauncher` starts real processes, tests pass fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from llm_supervisor.host.tenants import GUARD_MODULE, GUARD_PARENT_FLAG
from llm_supervisor.vllm.framing import GUARD_LOST, SIGKILL_CAUSES

MAX_LINE = 64 * 1024  # longer lines are cut (and marked) so one line never holds memory hostage
READ_CHUNK = 256 * 1024


@dataclass
class LaunchSpec:
    argv: list[str]
    env: dict[str, str]
    cpus: list[int] | None = None
    mems: list[int] | None = None
    mempolicy: str = "none"
    stop_timeout: float = 15.0
    cwd: str | None = None


@dataclass
class ExitInfo:
    code: int
    signal: int = 0
    # The guard died without reporting the engine's exit (the engine's own status is unknown):
    # `code`/`signal` are the guard's, `left` how many processes of its tree had to be ended.
    guard_lost: bool = False
    guard_pid: int | None = None
    left: int = 0

    @property
    def description(self) -> str:
        if self.guard_lost:
            how = f"killed by {_signame(self.signal)}" if self.signal else f"exited with code {self.code}"
            ended = f"ended the {self.left} engine process(es) it left" if self.left else "no engine process was left"
            return f"{GUARD_LOST} (pid {self.guard_pid}, {how}) without an exit report; {ended}"
        if self.signal:
            hint = f" ({SIGKILL_CAUSES})" if self.signal == signal.SIGKILL else ""
            return f"killed by {_signame(self.signal)}{hint}"
        return f"exited with code {self.code}"


def _signame(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)


class RotatingLog:
    """Raw engine output to <dir>/<name>.log, rotated at max_bytes keeping `backups` files."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "ab", buffering=64 * 1024)
        self._size = path.stat().st_size

    def write(self, data: bytes) -> None:
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self.rotate()
        self._fh.write(data)
        self._size += len(data)
        # Each chunk reaches the file as it is read (one write per chunk, not per line): a
        # SIGKILLed daemon loses no engine output, and the live file shows what the daemon saw.
        self._fh.flush()

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._fh.flush()

    def fileno(self) -> int:
        return self._fh.fileno()

    def position(self) -> tuple[int, int]:
        """(inode, size) of the file being written: what a reader that stats it sees."""
        return os.fstat(self._fh.fileno()).st_ino, self._size

    def rotate(self) -> None:
        self._fh.close()
        for index in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{index}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fh = open(self.path, "ab", buffering=64 * 1024)
        self._size = 0

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._fh.close()


def split_lines(buffer: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """Append a chunk to the partial line in `buffer`; return complete lines and the new rest."""
    data = buffer + chunk
    parts = data.split(b"\n")
    rest = parts.pop()
    if len(rest) > MAX_LINE:
        parts.append(rest[:MAX_LINE] + b" [line cut by llm-supervisor]")
        rest = b""
    lines = []
    for part in parts:
        if len(part) > MAX_LINE:
            part = part[:MAX_LINE] + b" [line cut by llm-supervisor]"
        lines.append(part.decode("utf-8", "replace"))
    return lines, rest


# Called with each chunk and its complete lines. It may return an awaitable to pace the reading:
# the next chunk is read once it is done (the daemon's log writer uses it while it catches up).
OutputCallback = Callable[[bytes, list[str]], "Awaitable[None] | None"]


class EngineHandle(Protocol):
    """A running engine tree, as the daemon sees it."""

    engine_pid: int | None
    placement: str | None

    @property
    def guard_pid(self) -> int: ...

    @property
    def running(self) -> bool: ...

    async def wait(self) -> ExitInfo: ...

    async def stop(self, timeout: float) -> ExitInfo: ...

    def hurry(self) -> None:
        """SIGKILL the tree now, even while a staged `stop` waits for it (a second stop signal)."""


class Launcher(Protocol):
    async def start(self, spec: LaunchSpec, on_output: OutputCallback) -> EngineHandle: ...


class GuardLauncher:
    """Engines under the guard, for real."""

    async def start(self, spec: LaunchSpec, on_output: OutputCallback) -> "EngineProcess":
        return await start(spec, on_output)


@dataclass
class EngineProcess:
    """A running engine tree under its guard."""

    guard: asyncio.subprocess.Process
    control: socket.socket
    spec: LaunchSpec
    engine_pid: int | None = None
    placement: str | None = None
    backstop: str | None = None
    exit_info: ExitInfo | None = None
    output: asyncio.BaseTransport | None = None
    _pid_known: asyncio.Event = field(default_factory=asyncio.Event)
    _placed: asyncio.Event = field(default_factory=asyncio.Event)
    _exited: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def guard_pid(self) -> int:
        return self.guard.pid

    async def wait(self) -> ExitInfo:
        await self._exited.wait()
        assert self.exit_info is not None
        return self.exit_info

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    async def stop(self, timeout: float) -> ExitInfo:
        """Staged stop: the guard sends SIGTERM to the tree, waits `timeout`, then SIGKILLs it."""
        if self.running:
            self._tell(b"stop\n")
            try:
                await asyncio.wait_for(self._exited.wait(), timeout + 8)
            except asyncio.TimeoutError:
                self.kill_now()
                try:
                    await asyncio.wait_for(self._exited.wait(), 15)
                except asyncio.TimeoutError:
                    # Nothing more can be done from here: say so instead of raising.
                    self.exit_info = self.exit_info or ExitInfo(128 + signal.SIGKILL, signal.SIGKILL)
                    self._exited.set()
        return await self.wait()

    def hurry(self) -> None:
        """The guard SIGKILLs the tree now (it also reaps it and reports the exit); without a
        guard to tell, the daemon kills the group itself."""
        if self.running and not self._tell(b"kill\n"):
            self.kill_now()

    def _tell(self, line: bytes) -> bool:
        writer = getattr(self, "_writer", None)
        try:
            if writer is not None:
                if writer.is_closing():
                    return False
                writer.write(line)
            else:
                self.control.sendall(line)
        except (OSError, RuntimeError):
            return False
        return True

    def kill_now(self) -> None:
        """Last resort from the daemon itself: SIGKILL the engine's group and the guard."""
        if self.engine_pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.engine_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.guard.pid, signal.SIGKILL)

    async def _read_control(self) -> None:
        # Keep the writer: dropping it closes the transport, which the guard reads as our death.
        reader, self._writer = await asyncio.open_connection(sock=self.control)
        guard_code: ExitInfo | None = None
        while True:
            raw = await reader.readline()
            if not raw:
                break
            kind, _, value = raw.decode(errors="replace").strip().partition(" ")
            if kind == "pid" and value.isdigit():
                self.engine_pid = int(value)
                self._pid_known.set()
            elif kind == "placement":
                self.placement = value
                self._placed.set()
            elif kind == "backstop":
                self.backstop = value
            elif kind == "exit":
                code, _, sig = value.partition(" ")
                guard_code = ExitInfo(int(code), int(sig or 0))
        self._control_exit = guard_code
        self._placed.set()

    async def _watch_exit(self, drained: asyncio.Task, control: asyncio.Task) -> None:
        code = await self.guard.wait()  # at once: the guard's process has no pipe to wait for
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(control), 2)
        reported = getattr(self, "_control_exit", None)
        if reported is None:
            # Lost: the guard died without a word (kill -9, OOM killer). Its engine tree runs on
            # with nobody to stop it; end it before saying the engine is gone.
            left = await asyncio.to_thread(end_session, self.guard.pid, min(self.spec.stop_timeout, 5.0))
            sig = -code if code < 0 else 0
            reported = ExitInfo(128 + sig if sig else code, sig, guard_lost=True, guard_pid=self.guard.pid, left=left)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(drained), 5)
        if not drained.done() and self.output is not None:
            # A process that left the guard's session still holds the pipe: stop reading it.
            self.output.close()
        self.exit_info = reported
        self._pid_known.set()
        self._placed.set()
        self._exited.set()
        # Close the control socket through its transport. Closing the socket object under a
        # live transport frees the fd while the loop still maps it to that transport; the next
        # socket to get that number (an httpx connection to the engine, say) then fails with
        # "RuntimeError: File descriptor N is used by transport" and the daemon dies.
        writer = getattr(self, "_writer", None)
        with contextlib.suppress(OSError, RuntimeError):
            if writer is not None:
                writer.close()
            else:
                self.control.close()


async def _drain(stream: asyncio.StreamReader, on_output: OutputCallback) -> None:
    rest = b""
    while True:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            break
        lines, rest = split_lines(rest, chunk)
        paced = on_output(chunk, lines)
        if paced is not None:
            await paced
    if rest:
        paced = on_output(b"", [rest.decode("utf-8", "replace")])
        if paced is not None:
            await paced


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`, from /proc, other than this one."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def end_session(sid: int, term_timeout: float) -> int:
    """End every process of a lost guard's session (the guard was its leader: sid = its pid):
    SIGTERM, wait up to `term_timeout`, SIGKILL, wait. Blocking (run it in a thread); returns how
    many processes there were."""
    members = session_members(sid)
    for sig, wait in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, 5.0)):
        left = session_members(sid)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.05)
    return len(members)


def end_foreign(tenants: list[Any], timeout: float) -> str:
    """End processes that are not ours (host/tenants.Tenant: pid and start time), each only if the
    pid is still the process that was named: SIGTERM, wait up to `timeout`, SIGKILL. Blocking;
    returns what could not be ended, said in words ('' when all are gone)."""
    procs = []
    refused = []
    for tenant in tenants:
        try:
            proc = psutil.Process(tenant.pid)
            if tenant.started is not None and abs(proc.create_time() - tenant.started) > 0.01:
                continue  # that process is gone; the pid is another one's now
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            refused.append(f"pid {tenant.pid} (not allowed: another user's)")
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=5)
    refused += [f"pid {p.pid} (survived SIGKILL)" for p in alive]
    return ", ".join(refused)


def guard_argv(spec: LaunchSpec, control_fd: int, output_fd: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", GUARD_MODULE, "--control-fd", str(control_fd),
            GUARD_PARENT_FLAG, str(os.getpid()),
            "--stop-timeout", f"{spec.stop_timeout:g}", "--mempolicy", spec.mempolicy]
    if output_fd is not None:
        argv += ["--output-fd", str(output_fd)]
    if spec.cpus:
        argv += ["--cpus", ",".join(str(c) for c in spec.cpus)]
    if spec.mems:
        argv += ["--mems", ",".join(str(m) for m in spec.mems)]
    return [*argv, "--", *spec.argv]


async def start(spec: LaunchSpec, on_output: Callable[[bytes, list[str]], None]) -> EngineProcess:
    """Start the engine under a guard in a new session; output goes to `on_output(raw, lines)`."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    out_r, out_w = os.pipe()
    env = dict(spec.env)
    pkg_root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        # The guard's own stdout is nothing and its stderr the daemon's (its rare complaints);
        # the engine writes to `out_w`, a pipe the guard only hands on.
        proc = await asyncio.create_subprocess_exec(
            *guard_argv(spec, theirs.fileno(), out_w),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=None,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
            pass_fds=(theirs.fileno(), out_w),
        )
    except BaseException:
        os.close(out_r)
        raise
    finally:
        theirs.close()
        os.close(out_w)
    engine = EngineProcess(guard=proc, control=ours, spec=spec)
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
    engine.output, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream, loop=loop),
                                                    os.fdopen(out_r, "rb", buffering=0))
    drained = asyncio.create_task(_drain(stream, on_output), name="engine-output")
    control = asyncio.create_task(engine._read_control(), name="engine-control")
    watcher = asyncio.create_task(engine._watch_exit(drained, control), name="engine-exit")
    engine._tasks = [drained, control, watcher]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(engine._pid_known.wait(), 10)
    # The guard reports the placement its child applied right after the pid (before exec);
    # wait for that line too, so the caller can log and report it.
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(engine._placed.wait(), 5)
    return engine
