"""Talk to a running daemon's REST API (`supervisor status|restart|stop`) and render its status.

Network and HTTP failures become SupervisorError subclasses with one clear line, so the CLI
prints them once and exits with the right code. `transport=` is the test seam (httpx's
MockTransport), as in httpx itself.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterator
from typing import Any

import httpx
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from llm_supervisor.cpulist import format_cpulist
from llm_supervisor.errors import BadInput, DaemonUnreachable, RuntimeFailure

__all__ = ["ACTIONS", "format_status", "get_status", "post_action", "stream_logs"]

ACTIONS = ("restart", "stop")
TOKEN_HINT = "token missing/wrong (LLM_SUPERVISOR_API_TOKEN or --token)"

STATE_STYLE = {
    "ready": "bold green",
    "starting": "bold cyan",
    "degraded": "bold yellow",
    "restarting": "bold yellow",
    "backoff": "bold yellow",
    "stopping": "bold magenta",
    "stopped": "bold",
    "failed": "bold white on red",
}

HISTORY_ROWS = 6


# --------------------------------------------------------------------------- HTTP


def _base(url: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def _is_loopback(url: str) -> bool:
    try:
        host = httpx.URL(url).host
    except Exception:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _request(method: str, url: str, path: str, *, timeout: float, headers: dict[str, str] | None = None,
             transport: httpx.BaseTransport | None = None) -> httpx.Response:
    base = _base(url)
    try:
        # Proxy variables must not route a local admin call elsewhere.
        with httpx.Client(timeout=timeout, transport=transport, trust_env=not _is_loopback(base)) as client:
            return client.request(method, base + path, headers=headers)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise BadInput("bad daemon URL", [f"--url: {url!r} is not a usable http:// URL ({exc})"]) from None
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise DaemonUnreachable(
            f"no daemon answering at {base} (is `supervisor up` running? set --url or LLM_SUPERVISOR_API_PORT)"
        ) from None
    except httpx.TimeoutException:
        raise DaemonUnreachable(f"the daemon at {base} did not answer within {timeout:g} s") from None
    except httpx.TransportError as exc:
        raise DaemonUnreachable(f"the connection to the daemon at {base} failed: {exc or type(exc).__name__}") from None


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:200] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:200]


def _json(resp: httpx.Response, base: str) -> dict:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RuntimeFailure(f"{base} did not answer with a JSON object; is it the supervisor's API?")
    return body


def get_status(url: str, timeout: float = 5, *, transport: httpx.BaseTransport | None = None) -> dict:
    """`GET /status` of the daemon at `url`."""
    base = _base(url)
    resp = _request("GET", url, "/status", timeout=timeout, transport=transport)
    if resp.status_code == 404:
        raise RuntimeFailure(f"{base} answers HTTP but has no /status; is it the supervisor's API?")
    if resp.status_code != 200:
        raise RuntimeFailure(f"the daemon at {base} answered {resp.status_code}: {_detail(resp)}")
    return _json(resp, base)


def post_action(url: str, action: str, token: str | None, timeout: float = 10,
                *, transport: httpx.BaseTransport | None = None) -> dict:
    """`POST /restart` or `POST /stop`; the daemon answers 202 once the command is queued."""
    if action not in ACTIONS:
        raise BadInput("unknown action", [f"action: {action!r} is not one of {', '.join(ACTIONS)}"])
    base = _base(url)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    resp = _request("POST", url, f"/{action}", timeout=timeout, headers=headers, transport=transport)
    if resp.status_code == 401:
        raise RuntimeFailure(f"{TOKEN_HINT}: the daemon at {base} requires a token")
    if resp.status_code == 403:
        raise RuntimeFailure(f"{TOKEN_HINT}: the daemon at {base} refused: {_detail(resp)}")
    if resp.status_code == 409:
        raise RuntimeFailure(_detail(resp))
    if resp.status_code not in (200, 202):
        raise RuntimeFailure(f"the daemon at {base} answered {resp.status_code} to {action}: {_detail(resp)}")
    return _json(resp, base)


def stream_logs(url: str, token: str | None, attempt: int | None = None, follow: bool = False, timeout: float = 10,
                *, lines: int | None = None, transport: httpx.BaseTransport | None = None) -> Iterator[bytes]:
    """`GET /logs`: the engine's output as the daemon streams it (the admin actions' token rule).
    DaemonUnreachable when no daemon answers (the caller may read the file instead)."""
    base = _base(url)
    params: dict[str, Any] = {}
    if attempt is not None:
        params["attempt"] = attempt
    if follow:
        params["follow"] = "true"
    if lines is not None:
        params["lines"] = lines
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, read=None if follow else timeout), transport=transport,
                          trust_env=not _is_loopback(base)) as client:
            with client.stream("GET", base + "/logs", params=params, headers=headers) as resp:
                if resp.status_code != 200:
                    resp.read()
                    _logs_refused(resp, base)
                yield from resp.iter_raw()
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise BadInput("bad daemon URL", [f"--url: {url!r} is not a usable http:// URL ({exc})"]) from None
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise DaemonUnreachable(f"no daemon answering at {base}") from None
    except httpx.TimeoutException:
        raise DaemonUnreachable(f"the daemon at {base} did not answer within {timeout:g} s") from None
    except httpx.RemoteProtocolError:
        return  # the daemon stopped while we followed it: its output ends here
    except httpx.TransportError as exc:
        raise DaemonUnreachable(f"the connection to the daemon at {base} failed: {exc or type(exc).__name__}") from None


def _logs_refused(resp: httpx.Response, base: str) -> None:
    if resp.status_code == 401:
        raise RuntimeFailure(f"{TOKEN_HINT}: the daemon at {base} requires a token")
    if resp.status_code == 403:
        raise RuntimeFailure(f"{TOKEN_HINT}: the daemon at {base} refused: {_detail(resp)}")
    if resp.status_code == 404 and _detail(resp) == "Not Found":  # no such route: the router's own answer
        raise RuntimeFailure(f"the daemon at {base} has no /logs (an older llm-supervisor?)")
    if resp.status_code in (404, 422):
        raise BadInput("no such log", [_detail(resp)])
    raise RuntimeFailure(f"the daemon at {base} answered {resp.status_code} to /logs: {_detail(resp)}")


# --------------------------------------------------------------------------- rendering


def users_meet(users: Any) -> str:
    """The capacity line's verb, for `users` who meet an SLO (in `status` and bench's report)."""
    return "user meets" if users == 1 else "users meet"


def _int(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "?"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def _duration(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return "?"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _cpulist(cpus: Any) -> str:
    """[0,1,2,3,8,9] -> '0-3,8-9' (the kernel's cpulist form); what is not a list of numbers as it came."""
    try:
        nums = {int(c) for c in cpus}
    except (TypeError, ValueError):
        return str(cpus)
    return format_cpulist(nums) or "none"


def _when(at: Any) -> str:
    stamp: float | None = None
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        stamp = float(at)
    elif isinstance(at, str):
        try:
            parsed = _dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
            stamp = parsed.timestamp()
        except ValueError:
            return at
    if stamp is None:
        return ""
    fmt = "%H:%M:%S" if abs(time.time() - stamp) < 86400 else "%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(stamp))


def _placement(placement: dict) -> str:
    """What the engine tree got ("cpus 0-7, mempolicy bind:0"), else what was planned, and for an
    engine left unpinned the reason."""
    applied = placement.get("applied")
    if isinstance(applied, str) and applied and applied != "none":
        return applied
    line = f"{'pinned' if placement.get('pinned') else 'not pinned'}, memory policy {placement.get('memory_policy') or 'none'}"
    warnings = placement.get("warnings") or []
    if not placement.get("pinned") and warnings and isinstance(warnings[0], str):
        line += f" ({warnings[0]})"
    return line


def _failure(failure: Any) -> str:
    if not failure:
        return ""
    if isinstance(failure, dict):
        kind = str(failure.get("kind") or "")
        # The daemon's one line with the numbers; else the numbers vLLM printed; else the start of
        # the message (vLLM's run to 500 characters and repeat themselves).
        message = str(failure.get("brief") or "")
        values = failure.get("values")
        if not message and isinstance(values, dict) and values:
            message = ", ".join(f"{k} {_int(v) if isinstance(v, int) else v}" for k, v in values.items())
        if not message:
            message = " ".join(str(failure.get("message") or failure.get("reason") or "").split())
            if len(message) > 120:
                message = message[:119] + "…"
        return f"{kind}: {message}" if kind and message else kind or message
    return str(failure)


def _change(change: Any) -> str:
    if not change:
        return ""
    if not isinstance(change, dict):
        return str(change)
    parts = []
    for key, value in change.items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            parts.append(f"{key} {value[0]}→{value[1]}")
        elif isinstance(value, dict) and ({"from", "to"} <= value.keys() or {"old", "new"} <= value.keys()):
            old, new = (value["from"], value["to"]) if "from" in value else (value["old"], value["new"])
            parts.append(f"{key} {old}→{new}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _concurrency(status: dict) -> str | None:
    conc = status.get("max_concurrency")
    if conc is None:
        return None
    context = status.get("max_concurrency_context") or status.get("max_model_len")
    try:
        text = f"{float(conc):.2f}×"
    except (TypeError, ValueError):
        text = f"{conc}×"
    return f"{text} at {_int(context)} tokens" if context else text


def _gpu_line(gpu: dict) -> str:
    used, total = gpu.get("memory_used_mib"), gpu.get("memory_total_mib")
    name = gpu.get("name") or "GPU"
    line = f"{name}: {_int(used)} / {_int(total)} MiB"
    try:
        line += f" ({float(used) / float(total):.0%})"
    except (TypeError, ValueError, ZeroDivisionError):
        pass
    return line


def format_status(status: dict) -> RenderableType:
    """One screen: what a person asks first (state, model, capacity), then the details."""
    state = str(status.get("state") or "unknown")
    header = Text()
    header.append(f" {state.upper()} ", style=STATE_STYLE.get(state, "bold"))
    model = status.get("model")
    served = status.get("served_model_name")
    if model:
        header.append(f"  {model}", style="bold")
    if served and served != model:
        header.append(f" served as {served!r}")
    if status.get("profile"):
        header.append(f"  profile {status['profile']}", style="dim")
    parts: list[RenderableType] = [header]
    if status.get("simulated"):
        parts.append(Text(" SIMULATED: the bundled vLLM simulator on a simulated GPU (no real model, no real GPU) ",
                          style="bold black on yellow"))
    if status.get("message"):
        parts.append(Text(str(status["message"]), style="bold red" if state == "failed" else "italic"))

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()

    def row(label: str, value: Any) -> None:
        if value not in (None, ""):
            grid.add_row(label, value if isinstance(value, Text) else Text(str(value)))

    if status.get("kv_cache_tokens") is not None:
        row("KV cache", Text(f"{_int(status['kv_cache_tokens'])} tokens", style="bold"))
    conc = _concurrency(status)
    if conc:
        row("max concurrency", Text(conc, style="bold"))
    if status.get("max_model_len") is not None:
        row("context", f"{_int(status['max_model_len'])} tokens (max_model_len)")
    if status.get("gpu_memory_utilization") is not None:
        row("utilization", f"{status['gpu_memory_utilization']} of GPU memory")
    facts = status.get("facts") if isinstance(status.get("facts"), dict) else {}
    mem = [f"{label} {facts[key]:.2f} GiB" for key, label in (
        ("model_weights_gib", "weights"), ("available_kv_cache_gib", "KV cache"), ("cuda_graph_gib", "CUDA graphs"))
        if isinstance(facts.get(key), (int, float))]
    if mem:
        row("memory", " · ".join(mem))
    for gpu in status.get("gpus") or []:
        if isinstance(gpu, dict):
            row(f"GPU {gpu.get('index', '?')}", _gpu_line(gpu))
    faults = [f for h in status.get("gpu_health") or [] if isinstance(h, dict) for f in h.get("faults") or []]
    if faults:
        row("GPU faults", Text("; ".join(str(f) for f in faults), style="bold red"))
    others = [t for t in status.get("gpu_tenants") or [] if isinstance(t, dict) and not t.get("ours")]
    if others:
        row("GPU also used by", "; ".join(
            f"pid {t.get('pid')} ({t.get('name')}{', vLLM not ours' if t.get('vllm') else ''}) "
            f"{_int(t.get('used_mib'))} MiB" for t in others))
    log_state = status.get("engine_log")
    if isinstance(log_state, dict) and log_state.get("ok") is False:
        row("engine log", Text(f"{log_state.get('error')}; {_int(log_state.get('dropped_bytes'))} bytes dropped",
                               style="bold red"))
    if status.get("cpus") is not None:
        cpus = status["cpus"]
        count = f" ({len(cpus)})" if isinstance(cpus, (list, tuple)) else ""
        row("CPUs", f"{_cpulist(cpus)}{count}")
    placement = status.get("placement")
    if placement and not isinstance(placement, (dict, list)):
        row("placement", placement)
    elif isinstance(placement, dict):
        row("placement", _placement(placement))
    door = status.get("frontdoor") if isinstance(status.get("frontdoor"), dict) else {}
    if status.get("url"):
        row("serving", f"{status['url']}" + (
            f" (front door {door.get('state', '?')}: {_int(door.get('in_flight'))} in flight, "
            f"{_int(door.get('held'))} held, {_int(door.get('queued'))} queued)" if door.get("enabled") else ""))
    engine = []
    if status.get("pid") is not None:
        engine.append(f"pid {status['pid']}")
    if status.get("uptime_s") is not None and state in ("ready", "degraded"):  # only a serving engine is "up"
        engine.append(f"up {_duration(status['uptime_s'])}")
    if status.get("engine_url"):
        engine.append(str(status["engine_url"]) + (" (behind the front door)" if door.get("enabled") else ""))
    row("engine", ", ".join(engine))
    vllm = status.get("vllm") if isinstance(status.get("vllm"), dict) else {}
    if vllm.get("version"):
        how = "printed by the engine" if vllm.get("printed") else f"planned ({vllm.get('planned_source') or 'default'})"
        planned = (f", planned for {vllm['planned']}" if vllm.get("printed") and vllm.get("planned")
                   and vllm["planned"] != vllm["printed"] else "")
        row("vLLM", f"{vllm['version']} ({how}{planned}); KV accounting {vllm.get('accounting') or '?'}")
    attempts = []
    if status.get("attempt") is not None:
        attempts.append(f"attempt {status['attempt']}")
    if status.get("restarts") is not None:
        restarts = f"restarts {status['restarts']}"
        by_reason = status.get("restarts_by_reason") or {}
        if by_reason:
            restarts += " (" + ", ".join(f"{k} ×{v}" for k, v in sorted(by_reason.items())) + ")"
        attempts.append(restarts)
    row("launches", " · ".join(attempts))
    if isinstance(status.get("target"), dict) and status["target"]:
        row("target", ", ".join(f"{k}={v}" for k, v in status["target"].items()))
    cap = status.get("capacity")
    if isinstance(cap, dict) and cap.get("users") is not None:
        line = f"{_int(cap['users'])} {users_meet(cap['users'])} {cap.get('slo') or 'the SLO'}"
        if isinstance(cap.get("tokens_per_s"), (int, float)):
            line += f": {cap['tokens_per_s']:,.0f} tokens/s"
        if cap.get("saturation"):
            line += f"; saturated at {cap.get('saturated_at_users')} users ({str(cap['saturation']).replace('_', ' ')})"
        if cap.get("measured_at"):
            line += f" · measured {_when(cap['measured_at'])}"
        row("capacity", line)
    parts.append(grid)

    history = [h for h in status.get("history") or [] if isinstance(h, dict)]
    if history:
        table = Table(title=f"last {min(len(history), HISTORY_ROWS)} of {len(history)} events", title_justify="left",
                      box=None, padding=(0, 1), show_header=True, header_style="dim")
        table.add_column("at", no_wrap=True)
        table.add_column("event", no_wrap=True)
        table.add_column("failure", overflow="fold")
        table.add_column("change", overflow="fold")
        above = ""
        for entry in history[-HISTORY_ROWS:]:
            event = str(entry.get("event") or "")
            failure = _failure(entry.get("failure"))
            change = _change(entry.get("change"))
            shown = failure
            if event in ("relaunch", "give_up") and failure and failure == above:
                shown = ""  # the decision about the exit just above: its failure once is enough
                change = change or ("same arguments" if event == "relaunch" else "")
            above = failure
            table.add_row(_when(entry.get("at")), event, Text(shown, style="red") if shown else "", change)
        parts.append(table)
    return Group(*parts)
