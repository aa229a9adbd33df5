"""The exception tree, rendered once by the CLI (the only place that exits).

* SupervisorError            anything this package raises on purpose
  + BadInput                 a problem the user can fix in a file, flag or setting (exit 2)
    - ProfileError           a profile file or `--set` override is invalid
    - SettingsError          an LLM_SUPERVISOR_* setting or env file is invalid
    - PlanRefused            the planner proved the launch cannot work (TP vs heads, …)
    - HardwareMismatch       the GPUs found do not match the profile
  + RuntimeFailure           something went wrong while running (exit 1)
    - DaemonUnreachable      `status`/`restart`/`stop` could not reach a daemon
    - EngineGaveUp           the daemon stopped retrying; the engine is `failed`

Each BadInput carries one line per problem: "file: key: what is wrong (allowed: …)".
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
# The daemon gave up for a reason a restart cannot fix; systemd's
# RestartPreventExitStatus= names it so the unit does not crash-loop.
EXIT_GAVE_UP = 3


class SupervisorError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[str] = list(problems or [])

    def lines(self) -> list[str]:
        """What the CLI prints: one line per problem, or the message alone."""
        return self.problems or [self.message]


class BadInput(SupervisorError):
    exit_code = EXIT_BAD_INPUT


class ProfileError(BadInput):
    pass


class SettingsError(BadInput):
    pass


class PlanRefused(BadInput):
    pass


class HardwareMismatch(BadInput):
    pass


class RuntimeFailure(SupervisorError):
    exit_code = EXIT_RUNTIME


class DaemonUnreachable(RuntimeFailure):
    pass


class EngineGaveUp(RuntimeFailure):
    exit_code = EXIT_GAVE_UP
