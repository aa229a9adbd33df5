"""This host's calibration file: the overheads learned from every vLLM start it has seen, and
the speeds `bench --find-capacity` measured.

JSON in <state_dir>/calibration.json, written atomically (temporary file + os.replace); a
corrupt file is ignored with a warning, never a crash. What an observation means and how it is
used is llm_supervisor.vllm.calibration's business (memory) and llm_supervisor.vllm.speed's
(speed: `MeasuredPoint`s under the same key, in the file's `speed` section); this module only
keeps them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from llm_supervisor.host.logfiles import log_name, parse_log_file
from llm_supervisor.store.atomic import atomic_write_json
from llm_supervisor.vllm.calibration import (
    CalibrationEntry, Observation, calibration_facts, calibration_key, learn_from_facts, norm_gpu,
)
from llm_supervisor.vllm.speed import MeasuredPoint

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


CALIBRATION_FORMAT = 1
SPEED_POINTS_KEPT = 24


class Calibration:
    """This host's learned overheads: JSON in <state_dir>/calibration.json, written atomically
    (temporary file + os.replace). A corrupt file is ignored with a warning, never a crash.

    readonly: a reader beside a running daemon (`plan`): a corrupt file is reported and left where
    it is (the daemon, which owns it, sets it aside)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.warnings: list[str] = []
        self._entries: dict[str, CalibrationEntry] = {}
        self._speed: dict[str, dict[str, Any]] = {}
        self.load()

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, *, readonly: bool = False) -> "Calibration":
        return cls(Path(state_dir) / CALIBRATION_FILE, readonly=readonly)

    # --- reading

    def load(self) -> None:
        self._entries = self._read()
        self._speed = self._read_speed()

    def _read_json(self, quiet: bool = False) -> dict[str, Any] | None:
        try:
            text = self.path.read_bytes()  # decoded by json.loads: bad UTF-8 is corruption too
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not quiet:
                self._warn(f"{self.path}: cannot read calibration ({exc.__class__.__name__}); ignoring it")
            return None
        try:
            try:
                data = json.loads(text)
            except RecursionError:
                raise ValueError("nested too deep") from None
            if not isinstance(data, dict) or not isinstance(data["entries"], dict):
                raise ValueError("entries is not an object")
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, planning goes on
            if not quiet:
                self._set_aside(f"calibration file is corrupt ({str(exc)[:200] or type(exc).__name__})")
            return None
        return data

    def _read_speed(self) -> dict[str, dict[str, Any]]:
        data = self._read_json(quiet=True) or {}
        raw = data.get("speed")
        return {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}

    def _read(self) -> dict[str, CalibrationEntry]:
        data = self._read_json()
        if data is None:
            return {}
        raw = data["entries"]
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
        next observation starts a new file. A read-only reader only says so."""
        if self.readonly:
            self._warn(f"{self.path}: {why}; ignoring it")
            return
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
        self._speed = self._read_speed()
        self.save()
        return entry

    def save(self) -> None:
        data: dict[str, Any] = {"format": CALIBRATION_FORMAT,
                                "entries": {k: e.to_json() for k, e in sorted(self._entries.items())}}
        if self._speed:
            data["speed"] = dict(sorted(self._speed.items()))
        atomic_write_json(self.path, data)

    # --- speed

    def speed_points(self, model: str, vllm_version: str | None, gpu_name: str | None,
                     tensor_parallel: int) -> tuple[list[MeasuredPoint], str]:
        """What `bench --find-capacity` measured for this key (else for the same model, GPU and TP
        under another vLLM version), newest first, and where it came from."""
        if not gpu_name:
            return [], ""
        record = self._speed.get(calibration_key(model, vllm_version, gpu_name, tensor_parallel))
        if record is None:
            others = [r for r in self._speed.values() if r.get("model") == model
                      and norm_gpu(str(r.get("gpu_name"))) == norm_gpu(gpu_name) and r.get("tensor_parallel") == tensor_parallel]
            record = max(others, key=lambda r: r.get("measured_at") or 0, default=None)
        if record is None:
            return [], ""
        points = []
        for raw in record.get("points") or []:
            try:
                points.append(MeasuredPoint.from_json(raw))
            except (KeyError, TypeError, ValueError):
                continue
        return points, str(record.get("source") or "")

    def record_speed(self, model: str, vllm_version: str | None, gpu_name: str, tensor_parallel: int,
                     points: list[MeasuredPoint], *, now: float, source: str = "") -> None:
        """Keep one capacity search's measured points (newest first, with the earlier ones of the
        key after them, up to SPEED_POINTS_KEPT) and write the file atomically."""
        self._entries = self._read()
        self._speed = self._read_speed()
        key = calibration_key(model, vllm_version, gpu_name, tensor_parallel)
        old = (self._speed.get(key) or {}).get("points") or []
        self._speed[key] = {
            "model": model, "vllm_version": vllm_version, "gpu_name": gpu_name, "tensor_parallel": tensor_parallel,
            "measured_at": now, "source": source,
            "points": ([p.to_json() for p in points] + list(old))[:SPEED_POINTS_KEPT],
        }
        self.save()

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
    return calibration_facts(parse_log_file(path, checked=True).facts)


def learn_from_log(path: str | Path, *, model: str, gpu_name: str, gpu_total_gib: float | None = None,
                   tensor_parallel: int | None = None, **overrides: Any) -> Observation:
    """An Observation from a saved vLLM log (ready or failed after profiling)."""
    facts = read_log_facts(path)
    overrides.setdefault("now", time.time())
    return learn_from_facts(facts, model=model, gpu_name=gpu_name, gpu_total_gib=gpu_total_gib,
                            tensor_parallel=tensor_parallel, source=log_name(path), **overrides)
