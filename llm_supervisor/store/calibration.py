"""This host's calibration file: the overheads learned from every vLLM start it has seen.

JSON in <state_dir>/calibration.json, written atomically (temporary file + os.replace); a
corrupt file is ignored with a warning, never a crash. What an observation means and how it is
used is llm_supervisor.vllm.calibration's business; this module only keeps them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from llm_supervisor.host.logfiles import parse_log_file
from llm_supervisor.store.atomic import atomic_write_json
from llm_supervisor.vllm.calibration import (
    CalibrationEntry, CalibrationError, Observation, calibration_facts, calibration_key, learn_from_facts, norm_gpu,
)

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


CALIBRATION_FORMAT = 1


class Calibration:
    """This host's learned overheads: JSON in <state_dir>/calibration.json, written atomically
    (temporary file + os.replace). A corrupt file is ignored with a warning, never a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.warnings: list[str] = []
        self._entries: dict[str, CalibrationEntry] = {}
        self.load()

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> "Calibration":
        return cls(Path(state_dir) / CALIBRATION_FILE)

    # --- reading

    def load(self) -> None:
        self._entries = self._read()

    def _read(self) -> dict[str, CalibrationEntry]:
        try:
            text = self.path.read_bytes()  # decoded by json.loads: bad UTF-8 is corruption too
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self._warn(f"{self.path}: cannot read calibration ({exc.__class__.__name__}); ignoring it")
            return {}
        try:
            try:
                data = json.loads(text)
            except RecursionError:
                raise ValueError("nested too deep") from None
            raw = data["entries"]
            if not isinstance(raw, dict):
                raise ValueError("entries is not an object")
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, planning goes on
            self._set_aside(f"calibration file is corrupt ({str(exc)[:200] or type(exc).__name__})")
            return {}
        out: dict[str, CalibrationEntry] = {}
        for key, value in raw.items():
            try:
                entry = CalibrationEntry.from_json(value)
            except Exception as exc:  # noqa: BLE001 - a bad entry is skipped, whatever is wrong with it
                self._warn(f"{self.path}: skipping a bad calibration entry {key!r} ({exc})")
                continue
            out[calibration_key(entry.model, entry.vllm_version, entry.gpu_name, entry.tensor_parallel)] = entry
        return out

    def _set_aside(self, why: str) -> None:
        """Move a corrupt file out of the way (kept for a person to look at), with a warning; the
        next observation starts a new file."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            self._warn(f"{self.path}: {why}; moved to {aside.name}, learning afresh")
        except OSError:
            self._warn(f"{self.path}: {why}; ignoring it")

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        log.warning("%s", text)

    def entries(self) -> list[CalibrationEntry]:
        return list(self._entries.values())

    def lookup(self, model: str, vllm_version: str | None, gpu_name: str | None,
               tensor_parallel: int) -> CalibrationEntry | None:
        """The entry for exactly this key, else the newest for the same model, GPU and TP under
        another vLLM version."""
        if not gpu_name:
            return None
        exact = self._entries.get(calibration_key(model, vllm_version, gpu_name, tensor_parallel))
        if exact is not None:
            return exact
        others = [e for e in self._entries.values()
                  if e.model == model and norm_gpu(e.gpu_name) == norm_gpu(gpu_name)
                  and e.tensor_parallel == tensor_parallel and e.latest is not None]
        return max(others, key=lambda e: e.latest.learned_at) if others else None  # type: ignore[union-attr]

    # --- writing

    def record(self, obs: Observation) -> CalibrationEntry:
        """Add an observation (re-reading the file first, so concurrent writers lose nothing
        but their own race) and write the file atomically."""
        current = self._read()
        entry = current.get(obs.key) or CalibrationEntry(obs.model, obs.vllm_version, obs.gpu_name, obs.tensor_parallel)
        entry.add(obs)
        current[obs.key] = entry
        self._entries = current
        self.save()
        return entry

    def save(self) -> None:
        data = {"format": CALIBRATION_FORMAT, "entries": {k: e.to_json() for k, e in sorted(self._entries.items())}}
        atomic_write_json(self.path, data)

    def learn_from_log(self, path: str | Path, *, model: str, gpu_name: str, gpu_total_gib: float | None = None,
                       tensor_parallel: int | None = None, save: bool = True, **overrides: Any) -> Observation:
        """Learn from a saved vLLM log and (by default) record it."""
        obs = learn_from_log(path, model=model, gpu_name=gpu_name, gpu_total_gib=gpu_total_gib,
                             tensor_parallel=tensor_parallel, **overrides)
        if save:
            self.record(obs)
        else:
            entry = self._entries.get(obs.key) or CalibrationEntry(obs.model, obs.vllm_version, obs.gpu_name, obs.tensor_parallel)
            entry.add(obs)
            self._entries[obs.key] = entry
        return obs


def read_log_facts(path: str | Path) -> dict[str, Any]:
    """What calibration needs from a saved log (see calibration.calibration_facts)."""
    p = Path(path)
    try:
        facts = parse_log_file(p).facts
    except (OSError, UnicodeError) as exc:
        raise CalibrationError("unreadable log", [f"{p}: cannot read ({exc.__class__.__name__}: {exc})"]) from None
    return calibration_facts(facts)


def learn_from_log(path: str | Path, *, model: str, gpu_name: str, gpu_total_gib: float | None = None,
                   tensor_parallel: int | None = None, **overrides: Any) -> Observation:
    """An Observation from a saved vLLM log (ready or failed after profiling)."""
    facts = read_log_facts(path)
    overrides.setdefault("now", time.time())
    return learn_from_facts(facts, model=model, gpu_name=gpu_name, gpu_total_gib=gpu_total_gib,
                            tensor_parallel=tensor_parallel, source=str(path), **overrides)
