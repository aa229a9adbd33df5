"""The front door end to end, as a user runs it: `supervisor up --simulate` owns the profile's
address, clients stream chat completions at it in a loop, the simulated EngineCore is killed with
SIGKILL and then `supervisor restart` runs under load. Clients never see a refused connection;
requests that had not started are answered by the relaunched engine; a planned restart loses
nothing. (The front door's own behaviour, request by request: test_frontdoor_*.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from dataclasses import dataclass

import httpx

from daemon_harness import DaemonRun, wait_until

BODY = json.dumps({"model": "qwen3-4b", "stream": True, "max_tokens": 8,
                   "messages": [{"role": "user", "content": "Hello"}]}).encode()


@dataclass
class Outcome:
    start: float
    end: float
    kind: str  # ok | refused | connect | http_<status> | error_event | cut


class Clients:
    """`n` clients, each streaming one request after another at `url`, in a thread of its own."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.n = n
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, http: httpx.AsyncClient) -> Outcome:
        start = time.monotonic()
        try:
            async with http.stream("POST", self.url + "/v1/chat/completions", content=BODY,
                                   headers={"content-type": "application/json"}) as resp:
                data = b"".join([chunk async for chunk in resp.aiter_bytes()])
                if resp.status_code != 200:
                    kind = f"http_{resp.status_code}"
                elif b'data: {"error"' in data:
                    kind = "error_event"
                else:
                    kind = "ok" if b"data: [DONE]" in data else "cut"
        except httpx.ConnectError as exc:
            kind = "refused" if "refused" in str(exc).lower() else "connect"
        except httpx.HTTPError:
            kind = "cut"
        return Outcome(start, time.monotonic(), kind)

    async def _client(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=5), trust_env=False) as http:
            while not self._stop.is_set():
                self.outcomes.append(await self._one(http))

    async def _main(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(self.n)))

    def __enter__(self) -> "Clients":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(180)

    def since(self, t: float) -> list[Outcome]:
        return [o for o in list(self.outcomes) if o.start >= t]


def test_clients_see_no_outage_across_an_engine_death_and_a_restart(daemons) -> None:
    run: DaemonRun = daemons(startup_s=1.0, sets=["recovery.backoff_initial_s=0.5"]).start()
    url = f"http://127.0.0.1:{run.engine_port}"
    # held from the first second: the front door answers before the engine is up
    wait_until(lambda: (run.status() or {}).get("state") == "starting", 60, what="the first start")
    with Clients(url, 8) as clients:
        first = run.wait_ready(60)
        assert first["frontdoor"]["enabled"] is True and first["url"] == url
        wait_until(lambda: sum(o.kind == "ok" for o in clients.outcomes) >= 16, 60, what="requests answered")
        early = [o for o in clients.outcomes if o.start < time.monotonic() and o.kind != "ok"]
        assert early == [], early  # the requests held during the first start were answered

        # --- the EngineCore dies under load
        core = run.engine_core()
        assert core is not None
        killed_at = time.monotonic()
        os.kill(core.pid, signal.SIGKILL)
        run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 2, 60, "ready again")
        wait_until(lambda: sum(o.kind == "ok" and o.start > killed_at for o in clients.outcomes) >= 16, 60,
                   what="requests answered by the relaunched engine")
        after_kill = [o for o in clients.outcomes if o.end >= killed_at]
        kinds = {o.kind for o in after_kill}
        assert not kinds & {"refused", "connect"}, kinds  # never a refused connection
        # only the streams under way at the kill may end with an error event (one per client at most)
        assert {o.kind for o in after_kill if o.kind != "ok"} <= {"error_event"}, kinds
        assert sum(o.kind == "error_event" for o in after_kill) <= clients.n
        # requests that had not started were held and answered by the relaunched engine
        during = [o for o in after_kill if o.start > killed_at + 0.05]
        assert during and all(o.kind == "ok" for o in during), [o.kind for o in during]
        door = run.status()["frontdoor"]
        assert door["completed"] > 0 and door["state"] == "ready", door

        # --- a planned restart under load loses nothing
        restarted_at = time.monotonic()
        assert run.post("/restart").status_code == 202
        run.wait_status(lambda s: s["state"] == "ready" and s["attempt"] == 3, 60, "ready after the restart")
        wait_until(lambda: sum(o.kind == "ok" and o.start > restarted_at for o in clients.outcomes) >= 16, 60,
                   what="requests answered after the restart")
    around_restart = [o for o in clients.outcomes if o.end >= restarted_at]
    assert around_restart and all(o.kind == "ok" for o in around_restart), \
        sorted({o.kind for o in around_restart})
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
