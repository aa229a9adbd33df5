"""A Ray process (`ray start --block`, the cluster probe) under a guard, restarted with backoff
when it exits on its own: the daemon's restart loop (runtime/supervision.py) with the simplest
policy — same command again, backoff by the one formula, give up after `max_failures` starts in
a row that never came up.

`ready_marker`: an output line that means the process is up (`ray start` prints "Ray runtime
started"); exits before it count as failed starts. `wait_for`: (host, port) that must accept TCP
connections before each start (a worker waits for the head's GCS).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_supervisor.cluster.probe import port_open
from llm_supervisor.runtime import launcher as launching
from llm_supervisor.clock import Clock, iso
from llm_supervisor.runtime.outputlog import EngineLog
from llm_supervisor.runtime.commands import Command
from llm_supervisor.states import State
from llm_supervisor.runtime.supervision import Again, Outcome, RestartLoop
from llm_supervisor.vllm.recovery import GiveUp, backoff_delay

RING_LINES = 40
RAY_STOP_TIMEOUT_S = 5.0  # Ray keeps nothing worth a longer grace; `ray stop --force` does not wait at all



class ProcessLoop(RestartLoop):
    def __init__(self, name: str, argv: list[str], env: dict[str, str], *,
                 placement: tuple[list[int] | None, list[int] | None, str] = (None, None, "none"),
                 log_path: Path | None = None, log_max_bytes: int = 20 * 1024 * 1024, log_backups: int = 3,
                 ready_marker: str | None = None, wait_for: tuple[str, int] | None = None,
                 backoff: tuple[float, float] = (2.0, 30.0), max_failures: int | None = None,
                 stop_timeout: float = RAY_STOP_TIMEOUT_S,
                 on_line: Callable[[str], None] | None = None,
                 on_state: Callable[[State, str], None] | None = None,
                 clock: Clock | None = None, launcher: launching.Launcher | None = None) -> None:
        super().__init__(clock, on_state=on_state)
        self.name = name
        self.argv = argv
        self.env = env
        self.placement = placement
        self.log_path = log_path
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.ready_marker = ready_marker
        self.wait_for = wait_for
        self.backoff = backoff
        self.max_failures = max_failures
        self.stop_timeout = stop_timeout
        self.on_line = on_line
        self.launcher = launcher or launching.GuardLauncher()
        self.ready = False
        self.proc: launching.EngineHandle | None = None
        self.starts = 0
        self.restarts = 0
        self.streak = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.last_exit: str | None = None
        self.placement_applied: str | None = None
        self.ring: collections.deque[str] = collections.deque(maxlen=RING_LINES)
        self._task: asyncio.Task | None = None
        self._log: EngineLog | None = None

    # ------------------------------------------------------------ control
    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._run(), name=f"supervise-{self.name}")
        return self._task

    async def stop(self) -> None:
        self.inbox.put(Command.STOP)
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout + 20)
        elif self.proc is not None and self.proc.running:
            await self.stop_tree(self.proc, self.stop_timeout)

    def hurry(self) -> None:
        """A second stop signal: from now on stopping the process is a SIGKILL of its tree (through
        its guard), not a staged stop, and a staged stop under way is cut short. A process not
        being stopped keeps running until its stop comes (so it is not taken for a crash)."""
        self.hurried = True
        if self.stop_requested:
            self.hurry_tree(self.proc)

    def restart(self) -> None:
        """End the running process (staged stop) and start it again at once."""
        self.inbox.put(Command.RESTART)

    @property
    def pid(self) -> int | None:
        return self.proc.engine_pid if self.proc is not None and self.proc.running else None

    @property
    def failed(self) -> bool:
        return self.state is State.FAILED

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "reason": self.reason, "pid": self.pid,
                "guard_pid": self.proc.guard_pid if self.proc is not None and self.proc.running else None,
                "argv": list(self.argv), "starts": self.starts, "restarts": self.restarts,
                "last_exit": self.last_exit, "up_since": iso(self.ready_at, "seconds") if self.ready_at and self.ready else None,
                "placement": self.placement_applied, "log_tail": list(self.ring)[-10:]}

    # ------------------------------------------------------------ the loop's parts
    def _on_output(self, raw: bytes, lines: list[str]) -> Any:
        if raw and self._log is not None:
            self._log.write(raw)
        for line in lines:
            if self.on_line is not None:
                self.on_line(line)
            if line.strip():
                self.ring.append(line)
            if not self.ready and self.ready_marker and self.ready_marker in line:
                self._up(f"{self.name} is up (pid {self.pid})")
        return self._log.room() if self._log is not None and self._log.backlogged() else None

    def _up(self, why: str) -> None:
        self.ready = True
        self.ready_at = self.clock.time()
        self.enter(State.READY, why)

    async def _wait_for_port(self) -> bool:
        """Until wait_for accepts connections; True when a stop came in meanwhile."""
        if self.wait_for is None:
            return False
        host, port = self.wait_for
        said = False
        while not await asyncio.to_thread(port_open, host, port, 1.0):
            if not said:
                self.enter(State.STARTING, f"waiting for {host}:{port} to accept connections")
                said = True
            if await self.pause(1.0) is Command.STOP:
                return True
        return self.stop_requested

    async def run_attempt(self) -> Outcome:
        if await self._wait_for_port():
            return Outcome(None, None, False, Command.STOP)
        self.ready = False
        self.starts += 1
        self.started_at = self.clock.time()
        self.enter(State.STARTING, f"starting {self.name}")
        if self._log is not None:
            self._log.write(f"\n===== llm-supervisor start {self.starts} at {iso(self.clock.time(), 'seconds')}: "
                            f"{' '.join(self.argv)}\n".encode())
        cpus, mems, policy = self.placement
        spec = launching.LaunchSpec(argv=self.argv, env=self.env, cpus=cpus, mems=mems, mempolicy=policy,
                                    stop_timeout=self.stop_timeout)
        self.proc = proc = await self.launcher.start(spec, self._on_output)
        self.placement_applied = proc.placement
        if self.ready_marker is None:
            self._up(f"{self.name} is running (pid {proc.engine_pid})")
        waiter = asyncio.create_task(proc.wait())
        command = asyncio.create_task(self.wait_for_command())
        await asyncio.wait({waiter, command}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # a stop or a restart was asked for
            requested = command.result()
            self.enter(State.STOPPING if requested is Command.STOP else State.RESTARTING, f"stopping {self.name}")
            info = await self.stop_tree(proc, self.stop_timeout)
            self.last_exit = info.description
            return Outcome(info, None, self.ready, requested)
        command.cancel()
        info = waiter.result()
        self.last_exit = info.description
        return Outcome(info, None, self.ready, None)

    async def decide(self, outcome: Outcome) -> Again | GiveUp:
        self.streak = 0 if outcome.reached_ready else self.streak + 1
        tail = next((ln.strip() for ln in reversed(self.ring) if ln.strip()), "")
        what = f"{self.name} {self.last_exit}" + (f" (last output: {tail[-300:]})" if tail else "")
        if self.max_failures and self.streak >= self.max_failures:
            return GiveUp(f"{what}; {self.streak} starts in a row failed")
        delay = backoff_delay(self.backoff[0], self.backoff[1], max(1, self.streak))
        return Again(delay, f"{what}; starting it again in {delay:g} s")

    def on_restart_requested(self, outcome: Outcome) -> None:
        self.restarts += 1
        self.streak = 0

    def on_relaunch(self, outcome: Outcome, decision: Again) -> None:  # type: ignore[override]
        self.restarts += 1

    def backoff_reason(self, decision: Again) -> str:  # type: ignore[override]
        return decision.reason

    async def _run(self) -> None:
        if self.log_path is not None:
            # never holds Ray up on a full disk: dropped, counted and said once (runtime/outputlog.py)
            self._log = EngineLog(self.log_path, self.log_max_bytes, self.log_backups)
        dispatcher = asyncio.create_task(self.dispatch_commands())
        try:
            await self.supervise()
        finally:
            dispatcher.cancel()
            if self.proc is not None and self.proc.running:
                with contextlib.suppress(Exception):
                    await self.stop_tree(self.proc, self.stop_timeout)
            if self.state is not State.FAILED:
                if self.state is not State.STOPPING:
                    self.enter(State.STOPPING, f"stopping {self.name}")
                self.enter(State.STOPPED, f"{self.name} stopped")
            if self._log is not None:
                await asyncio.to_thread(self._log.close, 2.0)
