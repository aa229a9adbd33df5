"""The front door in front of the bundled vLLM simulator (real processes). The test plays the
daemon: it starts simulated engines, kills their EngineCore, and calls engine_starting /
engine_ready / engine_down / drain as the daemon will.

Every simulator runs in a session of its own with its own simulated GPU under tmp_path, and is
killed (its whole process group, plus any stray naming tmp_path) when the test ends. Waiting is
polling against generous deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from frontdoor_fakes import DEADLINE_S, chat, client, door_running, events, run, until

from llm_supervisor.frontdoor import FrontDoorConfig

REPO = Path(__file__).resolve().parent.parent
MODEL = "qwen3-4b"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sim:
    """One simulated `vllm serve` (API server, EngineCore) on its own port and simulated GPU."""

    def __init__(self, tmp: Path, name: str, **env: str) -> None:
        self.tmp = tmp
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_SUPERVISOR_", "VLLM_"))}
        base.update({
            "PYTHONPATH": str(REPO) + (os.pathsep + base["PYTHONPATH"] if base.get("PYTHONPATH") else ""),
            "LLM_SUPERVISOR_SIM_GPU_DIR": str(tmp / f"simgpu-{name}"),
            "LLM_SUPERVISOR_SIM_STARTUP_S": "0.3",
            "LLM_SUPERVISOR_SIM_DEATH_GRACE_S": "0.5",
            "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
            "HF_HOME": str(tmp / "hf"),
        })
        base.update(env)
        self.env = base
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sim:
        argv = [sys.executable, "-m", "llm_supervisor.simulator", "serve", "Qwen/Qwen3-4B", "--port", str(self.port),
                "--served-model-name", MODEL, "--disable-log-stats"]
        with open(self.tmp / f"sim-{self.name}.log", "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    async def wait_ready(self) -> None:
        async with client(timeout=2.0) as c:
            async def healthy() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"simulator {self.name} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    return (await c.get(self.url + "/health")).status_code == 200
                except httpx.HTTPError:
                    return False
            deadline = asyncio.get_running_loop().time() + DEADLINE_S
            while not await healthy():
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"simulator {self.name} not ready:\n{self.log()}")
                await asyncio.sleep(0.05)

    async def load(self) -> int:
        """Requests the simulated API server is working on (its /load)."""
        async with client(timeout=2.0) as c:
            return int((await c.get(self.url + "/load")).json()["server_load"])

    def engine_core(self) -> psutil.Process:
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                    return child
        raise AssertionError(f"no EngineCore under simulator {self.name}")

    async def wait_exit(self) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, DEADLINE_S)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.tmp / f"sim-{self.name}.log").read_text(errors="replace").splitlines()[-30:])
        return ""

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    made: list[Sim] = []

    def make(name: str, **env: str) -> Sim:
        sim = Sim(tmp_path, name, **env)
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.kill()
    marker = str(tmp_path)
    strays = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(marker in v for v in proc.environ().values()):
                strays.append(proc)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(strays, timeout=10)


async def read_stream(c: httpx.AsyncClient, url: str, body: dict[str, Any],
                      first: asyncio.Event | None = None) -> tuple[int, bytes]:
    async with c.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        raw = b""
        async for chunk in resp.aiter_raw():
            raw += chunk
            if first is not None and b'"content":"' in raw:
                first.set()
        return resp.status_code, raw


def tokens_in(raw: bytes) -> int:
    return sum(1 for e in events(raw) if e.startswith(b"{") and b'"delta":{"content":' in e)


# ---------------------------------------------------------------------- holding across starts


def test_requests_are_held_during_the_first_start(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        sim = sims("a", LLM_SUPERVISOR_SIM_STARTUP_S="1.0")
        async with door_running() as (door, url), client() as c:
            door.engine_starting(eta_s=20)
            plain = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat(max_tokens=5)))
            streamed = asyncio.ensure_future(read_stream(c, url, chat(stream=True, max_tokens=5)))
            models = asyncio.ensure_future(c.get(url + "/v1/models"))
            await until(lambda: door.stats()["held"] == 3, what="three held requests")
            sim.start()
            await sim.wait_ready()
            door.engine_ready(sim.url)
            resp = await plain
            assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 5
            status, raw = await streamed
            assert status == 200 and tokens_in(raw) == 5 and events(raw)[-1] == b"[DONE]"
            assert (await models).json()["data"][0]["id"] == MODEL
            assert door.stats()["completed"] == 3
    run(scenario())


def test_engine_death_holds_and_resends_what_was_not_answered(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        first, second = sims("a").start(), sims("b")
        await first.wait_ready()
        async with door_running() as (door, url), client() as c:
            door.engine_ready(first.url)
            streaming_started = asyncio.Event()
            streamed = asyncio.ensure_future(read_stream(c, url, chat(stream=True, max_tokens=500), streaming_started))
            plain = [asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat(max_tokens=300)))
                     for _ in range(3)]
            await asyncio.wait_for(streaming_started.wait(), DEADLINE_S)
            await until_async(lambda: first.load(), lambda n: n == 4, "four requests at the engine")
            first.engine_core().kill()  # kill -9 of the simulated EngineCore

            status, raw = await streamed
            assert status == 200 and b'"error"' in raw and events(raw)[-1] == b"[DONE]", \
                "a stream under way ends with an error event, then [DONE]"
            late = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat(max_tokens=5)))
            await until(lambda: door.stats()["held"] == 4, what="the unanswered requests held for a re-send")

            # the daemon's part: notice the exit, relaunch, say ready
            await first.wait_exit()
            door.engine_down("the engine died (EngineCore killed)", eta_s=20)
            second.start()
            await second.wait_ready()
            door.engine_ready(second.url)

            for resp in [*(await asyncio.gather(*plain)), await late]:
                assert resp.status_code == 200, resp.text
                assert resp.json()["object"] == "chat.completion"
            stats = door.stats()
            assert stats["retried"] == 4 and stats["held"] == 0 and stats["in_flight"] == 0
    run(scenario())


def test_drain_before_a_restart_loses_nothing(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        old, new = sims("a").start(), sims("b")
        await old.wait_ready()
        async with door_running() as (door, url), client() as c:
            door.engine_ready(old.url)
            plain = [asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat(max_tokens=40)))
                     for _ in range(4)]
            streamed = [asyncio.ensure_future(read_stream(c, url, chat(stream=True, max_tokens=40)))
                        for _ in range(2)]
            await until_async(lambda: old.load(), lambda n: n == 6, "six requests at the engine")
            drain = asyncio.ensure_future(door.drain(grace_s=DEADLINE_S))
            await until(lambda: door.stats()["state"] == "draining")
            newcomers = [asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat(max_tokens=3)))
                         for _ in range(3)]
            result = await drain
            assert result.completed == 6 and result.cut == 0 and result.still_at_engine == 0
            assert door.stats()["held"] == 3

            assert old.proc is not None
            old.proc.send_signal(signal.SIGTERM)
            await old.wait_exit()
            door.engine_starting(eta_s=10)
            new.start()
            await new.wait_ready()
            door.engine_ready(new.url)

            for resp in [*(await asyncio.gather(*plain)), *(await asyncio.gather(*newcomers))]:
                assert resp.status_code == 200, resp.text
            for status, raw in await asyncio.gather(*streamed):
                assert status == 200 and tokens_in(raw) == 40 and b'"error"' not in raw
            assert door.stats()["retried"] == 0
    run(scenario())


# ---------------------------------------------------------------------- refusing honestly


def test_429_when_the_queue_is_full_and_503_once_failed(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        sim = sims("a").start()
        await sim.wait_ready()
        config = FrontDoorConfig(max_in_flight=1, max_queued=1)
        async with door_running(config) as (door, url), client() as c:
            door.engine_ready(sim.url)
            started = asyncio.Event()
            busy = asyncio.ensure_future(read_stream(c, url, chat(stream=True, max_tokens=2000), started))
            await asyncio.wait_for(started.wait(), DEADLINE_S)
            queued = asyncio.ensure_future(c.post(url + "/v1/chat/completions", json=chat()))
            await until(lambda: door.stats()["queued"] == 1)
            refused = await c.post(url + "/v1/chat/completions", json=chat())
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == 429

            door.engine_failed("recovery gave up: the model does not fit this GPU")
            for resp in (await queued, await c.get(url + "/v1/models")):
                assert resp.status_code == 503 and "retry-after" not in resp.headers
                assert "does not fit this GPU" in resp.json()["error"]["message"]
            status, raw = await busy
            assert status == 200 and events(raw)[-1] == b"[DONE]" and b'"error"' in raw
    run(scenario())


def test_503_with_retry_after_past_the_hold_deadline() -> None:
    async def scenario() -> None:
        async with door_running(FrontDoorConfig(hold_timeout_s=0.5)) as (door, url), client() as c:
            door.engine_starting(eta_s=90)
            resp = await c.post(url + "/v1/chat/completions", json=chat())
            assert resp.status_code == 503 and 1 <= int(resp.headers["retry-after"]) <= 90
            assert resp.json()["error"]["type"] == "ServiceUnavailableError"
    run(scenario())


# ---------------------------------------------------------------------- passing through


def test_a_client_that_leaves_cancels_the_engine_request(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        sim = sims("a").start()
        await sim.wait_ready()
        async with door_running() as (door, url):
            door.engine_ready(sim.url)
            async with client() as c, c.stream("POST", url + "/v1/chat/completions",
                                               json=chat(stream=True, max_tokens=3000)) as resp:
                async for chunk in resp.aiter_raw():
                    if b'"content":"' in chunk:
                        break
                assert await sim.load() == 1
            # the client closed its connection after the first token: a 60 s generation must stop
            await until_async(lambda: sim.load(), lambda n: n == 0, "the engine to drop the request")
            await until(lambda: door.stats()["client_disconnects"] == 1)
    run(scenario())


ID = re.compile(rb"(chatcmpl|cmpl)-[0-9a-f]{32}")
CREATED = re.compile(rb'"created": ?\d+')


def normalized(raw: bytes) -> bytes:
    """The simulator's per-request id and timestamp replaced; every other byte kept."""
    return CREATED.sub(b'"created":0', ID.sub(rb"\1-ID", raw))


def test_streams_and_bodies_pass_through_byte_for_byte(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        sim = sims("a").start()
        await sim.wait_ready()
        async with door_running() as (door, url), client() as c:
            door.engine_ready(sim.url)
            body = chat(stream=True, max_tokens=20) | {"stream_options": {"include_usage": True}}
            _s, direct = await read_stream(c, sim.url, body)
            _s, through = await read_stream(c, url, body)
            assert tokens_in(through) == 20
            assert normalized(through) == normalized(direct)
            plain_direct = await c.post(sim.url + "/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                                            "max_tokens": 7})
            plain_through = await c.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                                         "max_tokens": 7})
            assert normalized(plain_through.content) == normalized(plain_direct.content)
            assert plain_through.headers["content-type"] == plain_direct.headers["content-type"]
    run(scenario())


def test_a_large_upload_and_answer_go_through_whole(sims: Callable[..., Sim]) -> None:
    async def scenario() -> None:
        sim = sims("a").start()
        await sim.wait_ready()
        config = FrontDoorConfig(retry_body_limit_bytes=64 * 1024)
        async with door_running(config) as (door, url), client() as c:
            door.engine_ready(sim.url)
            prompt = "abcd" * (512 * 1024)  # 2 MiB, streamed to the engine (above the retry limit)
            resp = await c.post(url + "/tokenize", json={"model": MODEL, "prompt": prompt})
            assert resp.status_code == 200
            answer = resp.json()
            assert answer["count"] == math.ceil(len(prompt) / 4) == len(answer["tokens"])
    run(scenario())


async def until_async(probe: Callable[[], Any], check: Callable[[Any], bool], what: str) -> Any:
    """Poll an async `probe` until `check(value)`; fail after the deadline."""
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = await probe()
            if check(last):
                return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")

