"""What the daemon remembers between runs, per profile and host: the arguments that last
reached ready, and the history of attempts; and the capacity `bench --find-capacity` last
measured (its own section, written by the bench's process). Written atomically (temp file,
fsync, rename), so a crash mid-write leaves the old file or the new one, never a torn one; a
corrupt file is set aside with a warning, whatever its content (JSON nested deeper than the
parser goes too), never a crash.

Every decision is on disk as soon as it is made: `save_soon()` takes a snapshot (redacted, on
the caller's thread, so the loop's later changes cannot tear it) and one writer thread writes the
newest snapshot; the event loop never waits for the disk. History is bounded (HISTORY_LIMIT
events per profile and host, PROFILES_LIMIT of those). Writers of the file (the daemon's thread,
the bench's process) take an flock around read-merge-write, and each write keeps the newest
capacity result of every key found on disk, so neither drops the other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from llm_supervisor.config.redaction import Redactor
from llm_supervisor.store.atomic import atomic_write

log = logging.getLogger("llm_supervisor")
HISTORY_LIMIT = 200
PROFILES_LIMIT = 100


MAX_DEPTH = 16  # a history entry is a few levels deep; anything deeper is not ours


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in `value` (iterative: any depth is safe to measure)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level + 1) for child in node)
    return deepest


def host_key(profile_name: str, gpu_names: list[str]) -> str:
    gpus = ",".join(gpu_names) or "nogpu"
    return f"{profile_name}@{socket.gethostname()}[{gpus}]"


class StateStore:
    def __init__(self, state_dir: Path, redactor: Redactor | None = None, *, readonly: bool = False) -> None:
        """readonly: a reader beside a running daemon (`plan`): it sweeps no temporaries, sets no
        corrupt file aside and never writes."""
        self.path = state_dir / "state.json"
        self.redactor = redactor or Redactor()
        self.readonly = readonly
        self.warnings: list[str] = []
        self.data: dict[str, Any] = self._load()
        self._cond = threading.Condition()
        self._pending: str | None = None
        self._queued = 0
        self._written = 0
        self._writer: threading.Thread | None = None
        self._warned: str | None = None

    def _sweep_temporaries(self) -> None:
        """Temporary files of writers killed mid-write (`.state.json.<pid>.tmp`): never read, and
        one daemon per state dir (DaemonLock) means none of them is being written now."""
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def _load(self) -> dict[str, Any]:
        if not self.readonly:
            self._sweep_temporaries()
        try:
            text = self.path.read_bytes()  # decoded by json.loads: bad UTF-8 is corruption too
        except FileNotFoundError:
            return {"version": 1, "profiles": {}}
        except OSError as exc:
            self.warnings.append(f"{self.path}: unreadable ({exc.strerror}); starting without remembered state")
            return {"version": 1, "profiles": {}}
        try:
            try:
                data = json.loads(text)
            except RecursionError:
                raise ValueError("nested too deep") from None
            if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
                raise ValueError("not a state object")
            self._sanitize(data["profiles"])
            return data
        except Exception as exc:  # noqa: BLE001 - whatever is in the file, it must not stop the daemon
            if self.readonly:
                self.warnings.append(f"{self.path}: corrupt ({exc}); ignoring it")
                return {"version": 1, "profiles": {}}
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
            history = entry.get("history") or []
            kept = [h for h in history[-HISTORY_LIMIT:] if isinstance(h, dict) and _depth(h) <= MAX_DEPTH]
            if len(kept) < min(len(history), HISTORY_LIMIT):
                self.warnings.append(f"{self.path}: dropped {min(len(history), HISTORY_LIMIT) - len(kept)} malformed "
                                     f"history entries of {key!r}")
            if "history" in entry:
                entry["history"] = kept
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
        profiles = self.data["profiles"]
        if key not in profiles:
            for old in list(profiles)[: max(0, len(profiles) + 1 - PROFILES_LIMIT)]:
                del profiles[old]
        return profiles.setdefault(key, {})

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

    # --- capacity measured by `bench --find-capacity`

    def remember_capacity(self, key: str, result: dict[str, Any]) -> None:
        """A capacity search's result (in memory: `save()` writes it)."""
        if not isinstance(self.data.get("capacity"), dict):
            self.data["capacity"] = {}
        self.data["capacity"][key] = result

    def save_capacity(self, key: str, result: dict[str, Any]) -> None:
        """Keep a capacity result from another process than the daemon (the bench): under the
        lock, re-read the file and change only its capacity section, so nothing the daemon wrote
        meanwhile is lost."""
        with self._writing():
            self.data = self._load()
            self.remember_capacity(key, result)
            try:
                atomic_write(self.path, self.dump())
            except OSError as exc:
                log.warning("cannot save state to %s: %s", self.path, exc.strerror or exc)

    def capacity(self, key: str) -> dict[str, Any] | None:
        section = self.data.get("capacity")
        value = section.get(key) if isinstance(section, dict) else None
        return value if isinstance(value, dict) else None

    def _disk_capacity(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        section = data.get("capacity") if isinstance(data, dict) else None
        return section if isinstance(section, dict) else {}

    def read_capacity(self, key: str) -> dict[str, Any] | None:
        """The newest result for `key`, from disk (another process writes it) or memory."""
        disk = self._disk_capacity().get(key)
        mine = self.capacity(key)
        candidates = [c for c in (disk, mine) if isinstance(c, dict)]
        return max(candidates, key=lambda c: c.get("measured_at") or 0, default=None)

    @contextlib.contextmanager
    def _writing(self):  # type: ignore[no-untyped-def]
        """An flock around read-merge-write: the bench's process and the daemon save one after
        the other, so neither drops the other's capacity result."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError:
            yield  # an unwritable dir: the write fails and says so
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _with_disk_capacity(self, text: str) -> str:
        """The snapshot `text` with the newer capacity results another process wrote meanwhile."""
        disk = self._disk_capacity()
        if not disk:
            return text
        data = json.loads(text)
        mine = data.get("capacity") if isinstance(data.get("capacity"), dict) else {}
        changed = False
        for key, value in disk.items():
            cur = mine.get(key)
            if isinstance(value, dict) and (value.get("measured_at") or 0) > (
                    (cur.get("measured_at") or 0) if isinstance(cur, dict) else -1):
                mine[key], changed = value, True
        if not changed:
            return text
        data["capacity"] = mine
        return json.dumps(data, indent=1, default=str)

    # --- writing

    def dump(self) -> str:
        """The file's text now, secrets masked."""
        return json.dumps(self.redactor.value(self.data), indent=1, default=str)

    def save(self, timeout: float = 30.0) -> None:
        """Write now and wait for it (blocking: from a thread, or where no loop runs)."""
        self.save_soon()
        self.flush(timeout)

    def save_soon(self) -> None:
        """Snapshot now; the writer thread writes it (the newest snapshot wins). Never blocks on
        the disk."""
        if self.readonly:
            return
        text = self.dump()
        with self._cond:
            self._pending = text
            self._queued += 1
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="state-writer", daemon=True)
                self._writer.start()
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every snapshot taken so far is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._written < self._queued:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    if not self._cond.wait(60):
                        self._writer = None
                        return
                text, upto = self._pending, self._queued
                self._pending = None
            try:
                with self._writing():
                    atomic_write(self.path, self._with_disk_capacity(text))
                if self._warned:
                    log.info("state file %s written again", self.path)
                    self._warned = None
            except OSError as exc:
                # Said once per kind of failure, not on every event (a full disk stays full).
                problem = exc.strerror or str(exc)
                if problem != self._warned:
                    log.warning("cannot save state to %s: %s", self.path, problem)
                    self._warned = problem
            with self._cond:
                self._written = max(self._written, upto)
                self._cond.notify_all()


