"""What the daemon remembers between runs, per profile and host: the arguments that last
reached ready, and the history of attempts. Written atomically (temp file, fsync, rename), so
a crash mid-write leaves the old file or the new one, never a torn one; a corrupt file is set
aside with a warning, never a crash.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from llm_supervisor.store.atomic import atomic_write

log = logging.getLogger("llm_supervisor")
HISTORY_LIMIT = 200


def host_key(profile_name: str, gpu_names: list[str]) -> str:
    gpus = ",".join(gpu_names) or "nogpu"
    return f"{profile_name}@{socket.gethostname()}[{gpus}]"


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "state.json"
        self.warnings: list[str] = []
        self.data: dict[str, Any] = self._load()

    def _sweep_temporaries(self) -> None:
        """Temporary files of writers killed mid-write (`.state.json.<pid>.tmp`): never read, and
        one daemon per state dir (DaemonLock) means none of them is being written now."""
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def _load(self) -> dict[str, Any]:
        self._sweep_temporaries()
        try:
            text = self.path.read_bytes()  # decoded by json.loads: bad UTF-8 is corruption too
        except FileNotFoundError:
            return {"version": 1, "profiles": {}}
        except OSError as exc:
            self.warnings.append(f"{self.path}: unreadable ({exc.strerror}); starting without remembered state")
            return {"version": 1, "profiles": {}}
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
                raise ValueError("not a state object")
            self._sanitize(data["profiles"])
            return data
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(self.path, aside)
            except OSError:
                aside = self.path
            self.warnings.append(f"{self.path}: corrupt ({exc}); moved to {aside.name}, starting fresh")
            return {"version": 1, "profiles": {}}

    def _sanitize(self, profiles: dict[str, Any]) -> None:
        """Valid JSON of the wrong shape (a hand edit, an old format): drop what would crash the
        daemon later, with a warning, and keep the rest."""
        for key, entry in list(profiles.items()):
            if not isinstance(entry, dict):
                del profiles[key]
                self.warnings.append(f"{self.path}: entry {key!r} is not an object; ignoring it")
                continue
            if "history" in entry and not isinstance(entry["history"], list):
                entry["history"] = []
                self.warnings.append(f"{self.path}: history of {key!r} is not a list; starting it afresh")
            if "last_good" in entry and self._valid_last_good(entry["last_good"]) is None:
                del entry["last_good"]
                self.warnings.append(f"{self.path}: last good arguments of {key!r} are invalid; ignoring them")

    @staticmethod
    def _valid_last_good(value: Any) -> dict[str, Any] | None:
        """A last_good record whose arguments still validate as vLLM arguments, else None."""
        from llm_supervisor.config.profile import VllmArgs

        if not isinstance(value, dict) or not isinstance(value.get("args"), dict) \
                or not isinstance(value.get("requested"), dict):
            return None
        known = {k: v for k, v in value["args"].items() if k in VllmArgs.model_fields}
        try:
            VllmArgs.model_validate(known)
        except ValueError:
            return None
        return value

    def entry(self, key: str) -> dict[str, Any]:
        return self.data["profiles"].setdefault(key, {})

    def last_good(self, key: str) -> dict[str, Any] | None:
        entry = self.data["profiles"].get(key)
        return self._valid_last_good(entry.get("last_good")) if isinstance(entry, dict) else None

    def remember_ready(self, key: str, requested: dict[str, Any], args: dict[str, Any], facts: dict[str, Any],
                       ready_seconds: float | None = None) -> None:
        """The arguments that reached ready, and how long the launch took to (in memory: `save()`
        writes them)."""
        self.entry(key)["last_good"] = {"requested": requested, "args": args, "facts": facts, "at": time.time(),
                                        "ready_seconds": ready_seconds}

    def record(self, key: str, event: dict[str, Any]) -> None:
        history = self.entry(key).setdefault("history", [])
        history.append(event)
        del history[:-HISTORY_LIMIT]

    def save(self) -> None:
        try:
            atomic_write(self.path, json.dumps(self.data, indent=1, default=str))
        except OSError as exc:
            log.warning("cannot save state to %s: %s", self.path, exc)


