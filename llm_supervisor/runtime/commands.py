"""Admin commands (REST API, SIGHUP, SIGTERM/SIGINT) into the daemon: an enum and one inbox.

Whoever asks (an API route, a signal handler) only records the command; the daemon's one
dispatcher takes it and calls `handle_<name>` (gunicorn's `handle_<signal>` shape). Nothing else
reads the inbox.
"""

from __future__ import annotations

import asyncio
from enum import Enum

from llm_supervisor.errors import RuntimeFailure


class Command(str, Enum):
    RESTART = "restart"  # stop the engine and launch it again (the same arguments)
    RELOAD = "reload"    # SIGHUP (`systemctl reload`): a restart that systemd sees as a reload
    STOP = "stop"        # stop the engine, then the daemon

    def __str__(self) -> str:
        return self.value


# What the REST API may ask for.
ACTIONS = (Command.RESTART, Command.STOP)


class Inbox:
    """Commands waiting for the daemon's dispatcher."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Command] = asyncio.Queue()
        self.closed = False  # the daemon is stopping: new commands are refused

    def submit(self, name: str | Command) -> None:
        """What the REST API's admin routes call: refuse what cannot be done, queue the rest."""
        try:
            command = Command(name)
        except ValueError:
            command = None
        if command not in ACTIONS:
            raise RuntimeFailure(f"unknown command {name!r}")
        if self.closed:
            raise RuntimeFailure("the daemon is already stopping")
        self._queue.put_nowait(command)
        if command is Command.STOP:
            # From now on nothing else is taken (a restart after a stop would be answered 202 and
            # then dropped by a daemon on its way out).
            self.closed = True

    def put(self, command: Command) -> None:
        """From a signal handler: always taken (a second SIGTERM is harmless)."""
        self._queue.put_nowait(command)

    async def get(self) -> Command:
        return await self._queue.get()

    def take(self) -> Command | None:
        """The next command if one waits, without waiting."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
