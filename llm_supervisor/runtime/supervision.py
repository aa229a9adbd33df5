"""The one restart loop: launch, wait for the attempt to end, ask a policy what next, back off,
launch again — or stop, or give up. The engine daemon (runtime/daemon.py) and the Ray processes of
a cluster (cluster/process.py) are both this loop; they differ only in how one attempt runs and
which policy decides.

Every state change goes through `enter`, which checks the edge against states.ALLOWED and logs
it. Commands arrive through the inbox and are dispatched to `handle_restart` / `handle_stop`,
which only record and wake the loop; the loop acts.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from llm_supervisor.errors import EXIT_GAVE_UP, EXIT_OK
from llm_supervisor.clock import Clock, SystemClock, first_of
from llm_supervisor.runtime.commands import Command, Inbox
from llm_supervisor.runtime.launcher import EngineHandle, ExitInfo
from llm_supervisor.states import State, check_transition
from llm_supervisor.vllm.recovery import GiveUp

log = logging.getLogger("llm_supervisor")


@dataclass
class Outcome:
    """How one attempt ended. `failure` is the policy's business (the engine's is a classified
    vLLM failure); `requested` says the loop ended it on purpose."""

    exit: Any | None
    failure: Any | None
    reached_ready: bool
    requested: Command | None = None


class Retry(Protocol):
    """A decision to launch again after `delay_s` (recovery.Relaunch, or a plain Again)."""

    delay_s: float
    reason: str


@dataclass
class Again:
    """Launch the same thing again after `delay_s`."""

    delay_s: float
    reason: str


class RestartLoop:
    """Subclasses implement `run_attempt` and `decide`; the hooks say what else to record."""

    name = "engine"

    def __init__(self, clock: Clock | None = None, inbox: Inbox | None = None,
                 on_state: Callable[[State, str], None] | None = None) -> None:
        self.clock = clock or SystemClock()
        self.inbox = inbox or Inbox()
        self.on_state = on_state
        self.state = State.STOPPED
        self.reason = ""
        self.stop_requested = False
        self.restart_requested = False
        self.stop_signals = 0  # SIGTERM/SIGINT received
        self.hurried = False   # a second one came: what runs is stopped with SIGKILL at once
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ states
    def enter(self, new: State, why: str = "") -> None:
        """Assert the edge, change to it, say so."""
        if new is self.state:
            self.reason = why or self.reason
            return
        check_transition(self.state, new)
        log.info("%sstate %s -> %s%s", self._prefix(), self.state.value, new.value, f": {why}" if why else "",
                 extra={"event": True})  # a live view shows the state itself (runtime/events.py)
        self.state = new
        self.reason = why
        if self.on_state is not None:
            self.on_state(new, why)

    def _prefix(self) -> str:
        return "" if self.name == "engine" else f"{self.name}: "

    # ------------------------------------------------------------ commands
    async def dispatch_commands(self) -> None:
        """The one reader of the inbox, with `supervise` taking what waits before its first launch:
        each command to its handler."""
        while True:
            self.dispatch(await self.inbox.get())

    def dispatch(self, command: Command) -> None:
        getattr(self, f"handle_{command.value}")()

    def stop_signal(self, sig: signal.Signals, what: str, timeout_s: float, running: bool,
                    hurry: Callable[[], None]) -> None:
        """A SIGTERM/SIGINT asks the loop to stop. The first leaves `what` its staged stop (SIGTERM,
        then SIGKILL after `timeout_s`); a second one, or the first while a stop asked through the
        API runs (the person's second word), marks the loop hurried and calls `hurry` to end it now."""
        during = self.stop_signals == 0 and self.stop_requested
        self.stop_signals += 2 if during else 1
        if self.stop_signals == 1 and running:
            log.info("%s: stopping %s (SIGTERM, then SIGKILL after %g s; a second signal ends it now)",
                     sig.name, what, timeout_s)
        elif self.stop_signals == 2:
            log.warning("%s %s: ending %s now with SIGKILL instead of waiting up to %g s for it to exit", sig.name,
                        "during a stop" if during else "again", what, timeout_s)
            self.hurried = True
            hurry()
        self.inbox.put(Command.STOP)

    def hurry_tree(self, handle: EngineHandle | None) -> None:
        """Once hurried (a second stop signal), a running tree is SIGKILLed now, through its guard."""
        if self.hurried and handle is not None and handle.running:
            handle.hurry()

    async def stop_tree(self, handle: EngineHandle, timeout_s: float) -> ExitInfo:
        """The staged stop (SIGTERM, `timeout_s`, SIGKILL), or SIGKILL at once once hurried."""
        self.hurry_tree(handle)
        return await handle.stop(timeout_s)

    def handle_stop(self) -> None:
        self.stop_requested = True
        self.inbox.closed = True
        self._wake.set()

    def handle_restart(self) -> None:
        self.restart_requested = True
        self._wake.set()

    async def wait_for_command(self) -> Command:
        """Until a command was dispatched; STOP wins over RESTART."""
        await self._wake.wait()
        self._wake.clear()
        if self.stop_requested:
            return Command.STOP
        self.restart_requested = False
        return Command.RESTART

    def take_command(self) -> Command | None:
        """A command already dispatched, without waiting."""
        if not self._wake.is_set():
            return None
        self._wake.clear()
        if self.stop_requested:
            return Command.STOP
        self.restart_requested = False
        return Command.RESTART

    async def pause(self, seconds: float) -> Command | None:
        """Wait `seconds` on the clock, cut short by a command (which is returned)."""
        done, command = await first_of(self.clock, self.wait_for_command(), seconds)
        return command if done else None

    # ------------------------------------------------------------ what subclasses say
    async def run_attempt(self) -> Outcome:
        raise NotImplementedError

    async def decide(self, outcome: Outcome) -> Retry | GiveUp:
        raise NotImplementedError

    def on_restart_requested(self, outcome: Outcome) -> None:
        """An admin restart ended the attempt."""

    def on_relaunch(self, outcome: Outcome, decision: Retry) -> None:
        """The policy chose to launch again."""

    def on_give_up(self, outcome: Outcome, decision: GiveUp) -> None:
        """The policy chose to stop trying."""

    def starting_reason(self) -> str:
        """What the STARTING state says when a launch begins."""
        return f"starting {self.name}"

    def decision_text(self, decision: Retry | GiveUp) -> str:
        """What the RESTARTING or FAILED state says about the policy's decision."""
        return decision.reason

    def backoff_reason(self, decision: Retry) -> str:
        """What the BACKOFF state says while it waits."""
        return f"waiting {decision.delay_s:g} s"

    async def linger(self) -> bool:
        """After giving up: True to try again (a restart came in), False to end the loop."""
        return False

    # ------------------------------------------------------------ the loop
    async def supervise(self) -> int:
        """Run until a stop (EXIT_OK) or the policy gives up (EXIT_GAVE_UP)."""
        # Commands sent before the loop ran first: a Ctrl-C as it was built stops it before a
        # launch; a restart (SIGHUP) is the launch about to happen, not a reason to cut it short.
        while (waiting := self.inbox.take()) is not None:
            self.dispatch(waiting)
        self.take_command()
        while not self.stop_requested:
            self.enter(State.STARTING, self.starting_reason())
            outcome = await self.run_attempt()
            if outcome.requested is Command.STOP or self.stop_requested:
                break
            if outcome.requested is Command.RESTART:
                self.on_restart_requested(outcome)
                continue
            decision = await self.decide(outcome)
            if isinstance(decision, GiveUp):
                self.enter(State.FAILED, self.decision_text(decision))
                self.on_give_up(outcome, decision)
                if await self.linger():
                    continue
                return EXIT_GAVE_UP
            self.on_relaunch(outcome, decision)
            if decision.delay_s > 0:
                # implies (any engine state) -> BACKOFF
                self.enter(State.BACKOFF, self.backoff_reason(decision))
                if await self.pause(decision.delay_s) is Command.STOP:
                    break
            else:
                self.enter(State.RESTARTING, self.decision_text(decision))
        return EXIT_OK
