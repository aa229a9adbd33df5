"""One line a person reads: a failure with its numbers, a recovery decision as "failure → change".

vLLM's own messages run to 400–500 characters and the recovery policy's reasons repeat them;
those stay whole in `/status` history and the state file. These lines are what the daemon's log,
the terminal and `supervisor status` show. Pure.
"""

from __future__ import annotations

from typing import Any, Mapping

BRIEF_CHARS = 160  # a message without numbers we know is cut here


def _n(value: Any) -> str:
    """Tokens with thousands separators, GiB with two decimals, the rest as Python prints them."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}" if value < 10 else f"{value:,.2f}".rstrip("0").rstrip(".")
    return str(value)


def _gib(value: Any) -> str:
    return f"{float(value):.2f} GiB"


def _cut(text: str, limit: int = BRIEF_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def failure_brief(kind: str, values: Mapping[str, Any] | None, message: str = "") -> str:
    """What went wrong, with the numbers vLLM printed, in one short clause (no kind prefix)."""
    v = dict(values or {})
    try:
        if kind == "kv_cache_too_small" and "needed_gib" in v and "available_gib" in v:
            text = (f"one {_n(int(v['max_model_len']))}-token request needs {_gib(v['needed_gib'])} of KV cache, "
                    f"{_gib(v['available_gib'])} available")
            if v.get("estimated_max_model_len"):
                text += f" (vLLM estimates {_n(int(v['estimated_max_model_len']))} tokens fit)"
            return text
        if kind == "kv_cache_too_small" and "kv_cache_tokens" in v:
            return f"max_model_len {_n(int(v['max_model_len']))} is more than the {_n(int(v['kv_cache_tokens']))} KV-cache tokens"
        if kind == "insufficient_free_memory" and "free_gib" in v:
            return (f"{_gib(v['free_gib'])} free of {_gib(v['total_gib'])}, below utilization "
                    f"{_n(v['requested_utilization'])} ({_gib(v['requested_gib'])})")
        if kind == "cuda_oom" and v:
            text = "CUDA out of memory"
            if "tried_to_allocate_mib" in v:
                text += f" allocating {float(v['tried_to_allocate_mib']):,.0f} MiB"
            free = f"{float(v['free_mib']):,.0f} MiB free" if "free_mib" in v else ""
            total = f"of {_gib(v['total_gib'])}" if "total_gib" in v else ""
            if free or total:
                text += f" ({' '.join(p for p in (free, total) if p)})"
            return text
        if kind == "max_model_len_too_large" and "derived_max_model_len" in v:
            return (f"max_model_len {_n(int(v['max_model_len']))} is above the model's "
                    f"{_n(int(v['derived_max_model_len']))}")
        if kind == "no_kv_cache_memory" and not message:
            return "no GPU memory left for the KV cache"
        if kind == "port_in_use" and "port" in v:
            return f"port {v['port']} is in use"
    except (TypeError, ValueError, KeyError):
        pass
    return _cut(message) if message else kind


def change_brief(change: Mapping[str, Any] | None) -> str:
    """{'max_model_len': [40960, 11744]} → 'max_model_len 40,960 → 11,744'."""
    parts = []
    for key, value in (change or {}).items():
        if key == "extra_args" and isinstance(value, (list, tuple)) and len(value) == 2:
            old, new = list(value[0] or []), list(value[1] or [])
            added = new[len(old):] if new[:len(old)] == old else new
            parts.append("extra_args + " + " ".join(map(str, added)))
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            parts.append(f"{key} {_n(value[0])} → {_n(value[1])}")
        else:
            parts.append(f"{key} → {_n(value)}")
    return ", ".join(parts)


def decision_brief(kind: str, values: Mapping[str, Any] | None, message: str, change: Mapping[str, Any] | None,
                   delay_s: float = 0.0) -> str:
    """'kv_cache_too_small: one 40,960-token request needs 5.62 GiB of KV cache, 1.61 GiB available
    → max_model_len 40,960 → 11,744': the failure and what the next launch changes."""
    what = change_brief(change) or "the same arguments"
    after = f" in {delay_s:g} s" if delay_s > 0 else ""
    return f"{kind}: {failure_brief(kind, values, message)} → {what}{after}"
