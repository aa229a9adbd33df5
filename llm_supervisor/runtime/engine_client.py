"""The daemon's HTTP client of the engine: `/health`, the one real 1-token request that makes an
engine ready, and `/metrics` (read by the one Prometheus parser, vllm/metrics.py).

A seam like httpx's own: tests pass `transport=httpx.MockTransport(handler)` and the daemon's
readiness and hang detection run without a server.
"""

from __future__ import annotations

import logging

import httpx
from pydantic import SecretStr

from llm_supervisor.vllm.metrics import EngineMetrics, engine_metrics

log = logging.getLogger("llm_supervisor")

PROBE_TIMEOUT_S = 60.0


class EngineClient:
    def __init__(self, base_url: str, served_name: str, api_key: SecretStr | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.base_url = base_url
        self.served_name = served_name
        self._headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key is not None else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=self._headers, transport=transport,
                                       timeout=httpx.Timeout(5.0, connect=2.0), trust_env=False)

    def retarget(self, base_url: str) -> None:
        """The next engine listens elsewhere (behind the front door, a fresh port each launch)."""
        self.base_url = base_url
        self._http.base_url = httpx.URL(base_url)

    async def health(self) -> bool:
        """`GET /health` answered 200."""
        try:
            r = await self._http.get("/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def probe(self) -> bool:
        """One real 1-token request: the engine is ready only when it can generate. A chat
        completion, or a plain completion when the model has no chat template."""
        body = {"model": self.served_name, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
        try:
            r = await self._http.post("/v1/chat/completions", json=body, timeout=PROBE_TIMEOUT_S)
            if r.status_code == 200:
                return True
            if r.status_code in (400, 404, 422):  # no chat template: plain completion
                r = await self._http.post("/v1/completions", timeout=PROBE_TIMEOUT_S,
                                          json={"model": self.served_name, "prompt": "Hi", "max_tokens": 1})
                return r.status_code == 200
            log.warning("smoke request answered %s: %s", r.status_code, r.text[:200])
        except httpx.HTTPError as exc:
            log.warning("smoke request failed: %s", exc)
        return False

    async def metrics(self) -> EngineMetrics | None:
        """The engine's `/metrics`, read; None when it does not answer."""
        try:
            r = await self._http.get("/metrics")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return engine_metrics(r.text)

    async def aclose(self) -> None:
        await self._http.aclose()
