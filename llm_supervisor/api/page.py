"""The status page at `GET /`: one HTML file (page.html, shipped in the package) with its style
and script inline, no build step, nothing from another site. The daemon's snapshot and the last
hour's series are embedded at request time, so the page draws at once (and headless browsers and
`curl` see the numbers); then it asks `/status` and `/status/series` every few seconds.

Every value reaches the DOM as text, never as markup; the script runs only with the nonce of its
own response (the Content-Security-Policy says so). No secret is in the snapshot to begin with:
argv is redacted and the token never leaves the browser's tab.
"""

from __future__ import annotations

import json
import math
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from llm_supervisor import __version__

REFRESH_MS = 5000
# /status fields the page does not draw (and need not carry twice)
_NOT_DRAWN = ("log_tail",)


@lru_cache(maxsize=1)
def _template() -> str:
    return (Path(__file__).resolve().parent / "page.html").read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside <script>: no `</script>`, no `<!--`, no line separators that end a JS string."""
    text = json.dumps(data, default=str, allow_nan=False, separators=(",", ":")) if data is not None else "null"
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _finite(value: Any) -> Any:
    """inf/NaN (no JSON for them) as null, all the way down."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def render_page(status: dict[str, Any], series: dict[str, Any] | None, *, admin: str) -> tuple[str, str]:
    """(the page, the nonce its CSP must allow). `admin`: "token" (the daemon has one: the page
    asks for it before showing restart/stop), "loopback" (no token, and this browser is on the
    daemon's machine: the API lets it act), or "none" (no admin actions from here)."""
    nonce = secrets.token_urlsafe(18)
    data = {
        "status": _finite({k: v for k, v in status.items() if k not in _NOT_DRAWN}),
        "series": _finite(series),
        "admin": admin,
        "version": __version__,
        "refresh_ms": REFRESH_MS,
    }
    html = _template().replace("__NONCE__", nonce).replace("__DATA__", _script_json(data))
    return html, nonce
