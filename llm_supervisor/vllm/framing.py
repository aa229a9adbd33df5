"""The lines the daemon writes around vLLM's output in its engine log (<LOG_DIR>/<profile>.log),
written and read here only. A launch opens with `===== llm-supervisor attempt N at TIME: ARGV` and
closes with `===== engine DESCRIPTION` (how it ended: "exited with code N", "killed by SIGKILL (…)",
"lost its guard …", "ignored SIGTERM for N s … and was killed"); other `===== llm-supervisor …`
lines mark a daemon's start or a follower that fell behind. They are the supervisor's, never
vLLM's: the parser and the classifier skip them, and `diagnose` reads the exit status off the
closing line. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PREFIX = "===== "
ATTEMPT_PATTERN = r"^===== llm-supervisor attempt (\d+) at "
_ATTEMPT_RE = re.compile(ATTEMPT_PATTERN)
_EXIT = "===== engine "
_OURS = ("===== llm-supervisor", _EXIT)
GUARD_LOST = "lost its guard"  # how an exit line begins when the engine's guard died without a report
_EXITED_RE = re.compile(r"exited with code (-?\d+)\b")
_KILLED_RE = re.compile(r"killed by (SIG[A-Z0-9]+|\d+)\b")

# The standard signals on Linux (x86-64 and arm64 number them alike), both ways: the launcher names
# a signal as Python's `signal.Signals` does, and every name it can write is read back here (the
# vLLM layer does no I/O, not even `import signal`).
SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
    8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
    14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP",
    20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ",
    26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}
_SIGNAL_NUMBERS = {name: number for number, name in SIGNAL_NAMES.items()}
# Who sends a SIGKILL the supervisor did not: said wherever an engine killed by one is reported.
SIGKILL_CAUSES = "`kill -9`, or the kernel's OOM killer when host memory ran out"


def attempt_line(attempt: int, at: str, argv_text: str) -> str:
    """The line that opens a launch's output (after a blank line)."""
    return f"\n===== llm-supervisor attempt {attempt} at {at}: {argv_text}\n"


def daemon_start_line(pid: int, at: str) -> str:
    """Written when a daemon opens the log (it checks the folder can take writes)."""
    return f"===== llm-supervisor (pid {pid}) starting at {at}\n"


def behind_line() -> str:
    """Ends the stream of a `logs -f` follower that could not keep up."""
    return "\n===== llm-supervisor: this follower fell behind the engine's output; follow again\n"


def exit_line(description: str) -> str:
    """The line that closes it: how the engine ended, as the launcher described it."""
    return f"{_EXIT}{description}\n"


@dataclass(frozen=True)
class Frame:
    kind: Literal["attempt", "exit", "other"]
    attempt: int | None = None
    exit_code: int | None = None  # an exit line's status (128 + N for a signal); None when it names none
    description: str | None = None  # an exit line's words after "===== engine "

    @property
    def guard_lost(self) -> bool:
        return self.kind == "exit" and (self.description or "").startswith(GUARD_LOST)


def read_frame(text: str) -> Frame | None:
    """The frame a line (without its newline) is, or None for a line of the engine's."""
    if not text.startswith(_OURS):
        return None
    if m := _ATTEMPT_RE.match(text):
        return Frame("attempt", attempt=int(m.group(1)))
    if text.startswith(_EXIT):
        how = text[len(_EXIT):]
        if how.startswith("exited") and (m := _EXITED_RE.match(how)):
            return Frame("exit", exit_code=int(m.group(1)), description=how)
        if how.startswith("killed") and (m := _KILLED_RE.match(how)):
            name = m.group(1)
            number = int(name) if name.isdigit() else _SIGNAL_NUMBERS.get(name)
            return Frame("exit", exit_code=None if number is None else 128 + number, description=how)
        return Frame("exit", description=how)
    return Frame("other")


def is_frame(proc: str | None, text: str) -> bool:
    """Whether a split line (logparse.split_line) is one of ours: unprefixed and framed."""
    return proc is None and text.startswith(PREFIX) and read_frame(text) is not None
