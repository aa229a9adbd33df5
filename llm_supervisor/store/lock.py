"""One daemon per state dir: an flock held for the daemon's life, with its pid in the file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from llm_supervisor.errors import RuntimeFailure, SettingsError


class DaemonLock:
    """One daemon per state dir: an flock held for the daemon's life."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "daemon.lock"
        self._fh: Any = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")
        except (FileExistsError, NotADirectoryError):
            raise SettingsError("state dir is not a folder", [
                f"settings: LLM_SUPERVISOR_STATE_DIR: {self.path.parent}: a part of this path is a file, not a "
                "folder"]) from None
        except OSError as exc:
            raise RuntimeFailure(f"state dir {self.path.parent} is not writable: {exc.strerror} "
                                 "(set LLM_SUPERVISOR_STATE_DIR)") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid(fh)
            fh.close()
            raise RuntimeFailure(f"another llm-supervisor (pid {holder or 'unknown'}) is running with state dir "
                                 f"{self.path.parent}; stop it or set LLM_SUPERVISOR_STATE_DIR") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        except OSError as exc:  # a full disk: say so in one line, not a traceback
            fh.close()
            raise RuntimeFailure(f"state dir {self.path.parent}: cannot write ({exc.strerror or exc}): free space "
                                 "there or set LLM_SUPERVISOR_STATE_DIR") from None
        self._fh = fh

    def holder(self) -> int | None:
        """The pid of the daemon that holds this state dir now; None when none does. Creates
        nothing and takes nothing: a shared lock that is refused means the daemon's is held."""
        try:
            fh = open(self.path)
        except OSError:
            return None
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _pid(fh)
            except OSError:
                return None
            fcntl.flock(fh, fcntl.LOCK_UN)
        return None

    def release(self) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh, fcntl.LOCK_UN)
                self._fh.close()
            finally:
                self._fh = None


def _pid(fh: Any) -> int | None:
    """The pid the holding daemon wrote into the lock file."""
    fh.seek(0)
    text = fh.read().strip()
    return int(text) if text.isdigit() else None
