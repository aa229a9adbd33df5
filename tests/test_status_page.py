"""The status page (`GET /`), the last hour it plots (`GET /status/series`) and the engine's output
(`GET /logs`, `supervisor logs`): in-process with the fakes, and the page in a real headless
Chromium against a simulated daemon (CI installs Debian's chromium; locally the test skips
without it)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from daemon_harness import DaemonRun, run_cli, wait_until
from fakes import FakeVllm, Harness, harnesses
from llm_supervisor.api.page import render_page
from llm_supervisor.api.server import create_app
from llm_supervisor.runtime.commands import Command
from llm_supervisor.runtime.series import Series
from llm_supervisor.vllm.metrics import EngineMetrics

TOKEN = "s3cret-admin-token"


@pytest.fixture
def make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Harness]:
    return harnesses(tmp_path, monkeypatch, (1, 2))


def client(h: Harness, token: str | None = None, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    app = create_app(h.daemon.status, h.daemon.command, token, series_source=h.daemon.series.to_json,
                     logs_source=h.daemon.open_logs)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(peer, 5000)), base_url="http://127.0.0.1:8900")


class Texts(HTMLParser):
    """The text under each element with an id, and each element's attributes by id."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    VOID = {"meta", "input", "br", "img", "link", "hr"}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        ident = dict(attrs).get("id")
        if ident:
            self.attrs[ident] = dict(attrs)
            self.text.setdefault(ident, "")
        self.stack.append(ident)
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            table = next((i for i in reversed(self.stack) if i), None)
            self.rows.setdefault(table or "", []).append(self._row)
            self._row = None
        if self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for ident in self.stack:
            if ident:
                self.text[ident] += data
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> Texts:
    t = Texts()
    t.feed(html)
    return t


# ---------------------------------------------------------------- the page, in-process


def test_the_page_embeds_the_snapshot_and_reveals_no_secret(make) -> None:
    async def scenario() -> None:
        h = make(sets=["vllm.api_key=engine-key-123456", "model.served_name=q</script><script>alert(1)</script>"])
        h.start()
        await h.ready()
        async with client(h, TOKEN) as api:
            r = await api.get("/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            csp = r.headers["content-security-policy"]
            nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
            html = r.text
            assert html.count(f'nonce="{nonce}"') == 2 and "frame-ancestors 'none'" in csp
            assert "default-src 'none'" in csp and "http://" not in csp and "https://" not in csp
            assert TOKEN not in html and "engine-key-123456" not in html
            assert "<script>alert(1)" not in html  # the served name travels as JSON, escaped
            data = json.loads(parse(html).text["data"])
            assert data["admin"] == "token" and data["status"]["state"] == "ready"
            assert data["status"]["served_model_name"] == "q</script><script>alert(1)</script>"
            assert data["status"]["kv_cache_tokens"] == h.daemon.status()["kv_cache_tokens"]
            assert "log_tail" not in data["status"]
            again = await api.get("/")
            assert re.search(r"'nonce-([^']+)'", again.headers["content-security-policy"]).group(1) != nonce
            # the page asks /status and /status/series: both answer
            assert (await api.get("/status/series")).status_code == 200
        async with client(h, None) as local:
            assert json.loads(parse((await local.get("/")).text).text["data"])["admin"] == "loopback"
        async with client(h, None, peer="10.1.2.3") as remote:
            assert json.loads(parse((await remote.get("/")).text).text["data"])["admin"] == "none"
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()

    asyncio.run(scenario())


def test_the_page_draws_non_finite_figures_as_null() -> None:
    """A NaN or an infinity (no JSON for them) anywhere in the snapshot or the series becomes null;
    the page still renders."""
    status = {"state": "ready", "max_concurrency": float("inf"), "gpus": [{"util": float("nan"), "index": 0}],
              "kv_cache_tokens": 1024}
    series = {"tokens_per_s": [1.5, float("-inf")]}
    html, _ = render_page(status, series, admin="none")
    data = json.loads(parse(html).text["data"])
    assert data["status"]["max_concurrency"] is None and data["status"]["gpus"] == [{"util": None, "index": 0}]
    assert data["status"]["kv_cache_tokens"] == 1024 and data["series"] == {"tokens_per_s": [1.5, None]}


def test_admin_actions_refuse_other_web_pages(make) -> None:
    async def scenario() -> None:
        h = make().start()
        await h.ready()
        async with client(h, None) as api:
            r = await api.post("/restart", headers={"Origin": "http://evil.example"})
            assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
            r = await api.post("/restart", headers={"Origin": "http://evil.example:8900", "Host": "evil.example:8900"})
            assert r.status_code == 403  # a name rebound to 127.0.0.1: same origin, but not this machine's name
            r = await api.get("/logs", headers={"Sec-Fetch-Site": "same-origin", "Host": "evil.example:8900"})
            assert r.status_code == 403
            r = await api.post("/restart", headers={"Origin": "http://127.0.0.1:8900"})  # the page itself
            assert r.status_code == 202
        await h.ready(attempt=2)
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()

    asyncio.run(scenario())


# ---------------------------------------------------------------- the series


def test_the_series_samples_gpu_memory_requests_kv_usage_and_tokens_per_second(make) -> None:
    async def scenario() -> dict[str, Any]:
        h = make(series_interval_s=10)
        h.start()
        await h.ready()
        engine = h.engine
        engine.waiting = 2.0
        engine.kv_usage = 0.25
        start = h.clock.monotonic()

        async def load() -> None:  # 40 tokens a second while the test watches
            while True:
                await h.clock.sleep(1)
                engine.generated += 40
        task = asyncio.create_task(load())
        await h.until(lambda: h.clock.monotonic() > start + 60, what="a minute of load")
        task.cancel()
        series = h.daemon.series.to_json()
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()
        return series

    series = asyncio.run(scenario())
    n = len(series["t"])
    assert series["interval_s"] == 10 and series["window_s"] == 3600 and 6 <= n <= 12
    assert all(b - a == pytest.approx(10, abs=0.01) for a, b in zip(series["t"], series["t"][1:]))
    gpu = series["gpu_memory_used_mib"]["0"]
    assert series["gpu_memory_total_mib"] == {"0": 24564} and max(v for v in gpu if v) > 20000
    assert series["waiting"][-1] == 2.0 and series["running"][-1] == 0.0
    rates = [r for r in series["generation_tokens_per_s"] if r]
    assert rates and all(r == pytest.approx(40, abs=4.1) for r in rates[1:])
    assert series["kv_cache_usage"][-1] == pytest.approx(0.25)


def test_the_series_keeps_an_hour_and_a_relaunched_engine_does_not_count_negative() -> None:
    s = Series(10)
    for i in range(400):
        total = 100.0 * i if i < 200 else 50.0 * (i - 200)  # a relaunch at i=200 counts from 0 again
        s.add(1000.0 + 10 * i, [{"index": 0, "memory_used_mib": 5.0, "memory_total_mib": 10.0}],
              EngineMetrics(running=1, waiting=0, generation_tokens_total=total, kv_cache_usage=0.5))
    out = s.to_json()
    assert len(out["t"]) == 360 and out["t"][0] == 1000.0 + 10 * 40
    assert min(r for r in out["generation_tokens_per_s"] if r is not None) >= 0
    assert out["generation_tokens_per_s"][-1] == 5.0


# ---------------------------------------------------------------- the engine's output


def test_logs_by_attempt_follow_and_no_secret(make, tmp_path: Path) -> None:
    async def scenario() -> None:
        h = make(FakeVllm(faults={1: "exit_before_ready"}), sets=["vllm.api_key=engine-key-123456"], api_token=TOKEN)
        h.start()
        await h.ready(attempt=2)
        async with client(h, TOKEN) as api:
            r = await api.get("/logs")
            assert r.status_code == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            first = (await api.get("/logs", params={"attempt": 1}, headers=auth)).text
            second = (await api.get("/logs", headers=auth)).text
            assert first.lstrip().startswith("===== llm-supervisor attempt 1 at ")
            assert "===== engine exited with code 1" in first and "attempt 2" not in first
            assert second.lstrip().startswith("===== llm-supervisor attempt 2 at ") and "Application startup complete" in second
            last3 = (await api.get("/logs", params={"lines": 3}, headers=auth)).text
            assert last3.count("\n") == 3 and second.endswith(last3) and len(last3) < len(second)
            assert (await api.get("/logs", params={"lines": 0}, headers=auth)).text == ""
            assert (await api.get("/logs", params={"lines": 10**6}, headers=auth)).text == second
            assert (await api.get("/logs", params={"lines": -1}, headers=auth)).status_code == 422
            r = await api.get("/logs", params={"attempt": 5}, headers=auth)
            assert r.status_code == 404 and "--attempt 5: not in the engine log (the newest run has attempts 1–2)" in r.json()["detail"]

        # follow (the iterator the route streams; httpx's ASGI transport would wait for its end):
        # what is in the file, then what the engine writes next, a secret it prints masked
        stream = await h.daemon.open_logs(None, True)
        got = await stream.__anext__()
        assert b"attempt 2" in got
        h.engine._print("(APIServer pid=100) INFO a line written while following, key engine-key-123456")
        h.engine._print("(APIServer pid=100) INFO and another")
        while b"and another" not in got:
            got += await asyncio.wait_for(stream.__anext__(), 5)
        assert b"a line written while following, key ***" in got and b"engine-key-123456" not in got
        h.daemon.inbox.put(Command.STOP)
        async for chunk in stream:  # the stream ends when the daemon stops
            got += chunk
        assert got.count(b"a line written while following") == 1 and b"===== engine exited with code 0" in got
        assert await h.exit_code() == 0

    asyncio.run(scenario())


def test_logs_follow_from_the_last_lines(make) -> None:
    """`supervisor logs -n 0 -f`: nothing of what is in the file, then what the engine writes next."""
    async def scenario() -> None:
        h = make()
        h.start()
        await h.ready()
        stream = await h.daemon.open_logs(None, True, 0)
        h.engine._print("(APIServer pid=100) INFO the first new line")
        got = await asyncio.wait_for(stream.__anext__(), 5)
        assert got == b"(APIServer pid=100) INFO the first new line\n"
        h.daemon.inbox.put(Command.STOP)
        assert await h.exit_code() == 0

    asyncio.run(scenario())


def test_supervisor_logs_reads_the_file_when_no_daemon_runs(make, tmp_path: Path) -> None:
    async def scenario() -> Harness:
        h = make(FakeVllm(faults={1: "oom_at_load"}))
        h.start()
        await h.ready(attempt=2)
        h.daemon.inbox.put(Command.STOP)
        await h.exit_code()
        return h

    h = asyncio.run(scenario())
    env = {"PATH": os.environ["PATH"], "LLM_SUPERVISOR_STATE_DIR": str(h.settings.state_dir),
           "LLM_SUPERVISOR_API_PORT": "1", "HOME": str(tmp_path)}
    proc = run_cli(["logs", "--attempt", "1"], env)
    assert proc.returncode == 0, proc.stderr
    assert "no daemon answering" in proc.stderr and "4090d-qwen3-4b.log" in proc.stderr
    assert proc.stdout.lstrip().startswith("===== llm-supervisor attempt 1") and "CUDA out of memory" in proc.stdout
    assert "attempt 2" not in proc.stdout
    proc = run_cli(["logs"], env)
    assert "===== llm-supervisor attempt 2" in proc.stdout and "CUDA out of memory" not in proc.stdout
    whole = run_cli(["logs", "--attempt", "1"], env).stdout
    proc = run_cli(["logs", "--attempt", "1", "-n", "2"], env)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 2 and whole.endswith(proc.stdout), proc.stdout
    proc = run_cli(["logs", "--attempt", "3"], env)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("--attempt 3: not in the engine log (the newest run has attempts 1–2)")


# ---------------------------------------------------------------- the page in a real browser


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def browse(binary: str, url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile.mkdir(parents=True)
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_the_status_page_in_headless_chromium(daemons, tmp_path: Path) -> None:
    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the status page in Chromium: .ci/run installs Debian's chromium")
        pytest.skip("no Chromium here (Debian package chromium; .ci/run installs it)")
    run: DaemonRun = daemons(env={"LLM_SUPERVISOR_SERIES_INTERVAL_S": "0.5", "LLM_SUPERVISOR_SIM_TOKENS_PER_S": "40"})
    run.start()
    run.wait_ready()
    bench = run_cli(["bench", "--users", "4", "--requests", "16", "--max-tokens", "48"], run.env, timeout=120)
    assert bench.returncode == 0, bench.stderr
    assert "SIMULATED" in bench.stdout  # bench says what it measured
    wait_until(lambda: len([r for r in run.get("/status/series").json()["generation_tokens_per_s"] if r]) >= 3, 60,
               what="a few samples with tokens")
    for _ in range(3):  # clients use the profile's port: the front door
        r = httpx.post(f"http://127.0.0.1:{run.engine_port}/v1/completions", timeout=30,
                       json={"model": "qwen3-4b", "prompt": "hi", "max_tokens": 4})
        assert r.status_code == 200, r.text
    status = run.status()
    assert status is not None

    dom = browse(binary, run.url + "/", tmp_path / "chrome-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    text = page.text
    assert text["state"].strip() == "ready" and "badge ready" in (page.attrs["state"]["class"] or "")
    assert text["simulated"].strip() == "SIMULATED" and "hidden" not in page.attrs["simulated"]
    assert text["model"] == "Qwen/Qwen3-4B" and text["profile"] == "profile 4090d-qwen3-4b"
    assert text["card-kv-tokens"].startswith(f"{status['kv_cache_tokens']:,}")
    assert text["card-concurrency"].startswith(f"{status['max_concurrency']:.2f}×") and "at 40,960 tokens" in text["card-concurrency"]
    assert text["card-context"].startswith("40,960") and text["card-utilization"].startswith("0.9")
    assert text["card-weights"].startswith("7.56 GiB") and text["card-attempts"].startswith("1 · 0")
    gpu = status["gpus"][0]
    (row,) = [r for r in page.rows["gpus"] if r and r[0] == "0"]
    assert row[1] == "NVIDIA GeForce RTX 4090 D" and row[2].endswith(f"/ {gpu['memory_total_mib']:,}")
    assert " ".join(status["argv"]) == text["argv"]
    assert f"serving{status['url']}  (front door)" in text["model-table"].replace("\n", "")
    assert f"{status['engine_url']}  (pid {status['pid']})  behind the front door" in text["model-table"]
    assert [r[2] for r in page.rows["history"] if r[0] != "at"] == ["ready", "launch"]
    assert "CPUs" in text["placement"] and "memory policy" in text["placement"]
    assert int(page.attrs["plot-tokens"]["data-points"]) >= 3
    series = run.get("/status/series").json()
    used = [v for v in series["gpu_memory_used_mib"]["0"] if v is not None]
    assert re.fullmatch(r"[\d,]+ MiB", text["plot-gpu-last"]) and int(text["plot-gpu-last"][:-4].replace(",", "")) in used
    assert text["plot-kv-last"].endswith(" %") and re.fullmatch(r"[\d,.]+", text["plot-tokens-last"]), text["plot-tokens-last"]
    assert "no samples" not in text["plot-tokens"] and "polyline" in dom.stdout
    # the front door's counters, as /status has them (read before and after the page was drawn)
    after = run.status()
    assert after is not None and status["frontdoor"]["enabled"] and "hidden" not in page.attrs["frontdoor"]
    def shown(key: str) -> int:
        label, value = text[f"fd-{key}"].split(key.replace("_", " "), 1)
        return int(value.split("(")[0].replace(",", ""))

    for key in ("held", "in_flight", "queued", "completed", "retried", "cut_streams"):
        assert status["frontdoor"][key] <= shown(key) <= after["frontdoor"][key], (key, text[f"fd-{key}"])
    assert shown("completed") >= 3  # the requests sent to the profile's port
    assert shown("rejected") == sum(status["frontdoor"]["rejected"].values())
    assert page.attrs.get("restart") and page.attrs.get("stop")  # loopback browser, no token set: admin buttons

    shot = tmp_path / "status-page.png"
    taken = browse(binary, run.url + "/", tmp_path / "chrome-shot", "--window-size=1280,1500", f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert png_size(shot) == (1280, 1500) and shot.stat().st_size > 30_000
    keep = os.environ.get("LLM_SUPERVISOR_SCREENSHOT_TO")
    if keep:  # how docs/status-page.png is made
        shutil.copyfile(shot, keep)


def test_supervisor_logs_follows_a_running_daemon_across_a_relaunch(daemons, tmp_path: Path) -> None:
    import sys

    run: DaemonRun = daemons()
    run.start()
    run.wait_ready()
    out = tmp_path / "follow.out"
    with open(out, "wb") as sink:
        follower = subprocess.Popen([sys.executable, "-m", "llm_supervisor", "logs", "-f"], env=run.env,
                                    cwd=str(Path(__file__).resolve().parent.parent), stdout=sink,
                                    stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: b"Application startup complete" in out.read_bytes(), 30, what="the first launch's output")
        assert run.post("/restart").status_code == 202
        wait_until(lambda: b"Application startup complete" in out.read_bytes().split(b"attempt 2 at ")[-1]
                   and b"attempt 2 at " in out.read_bytes(), 60, what="the relaunch's output, followed")
        assert run.post("/stop").status_code == 202
        assert run.wait_exit(30) == 0
        assert follower.wait(30) == 0, follower.stderr.read() if follower.stderr else ""
    finally:
        if follower.poll() is None:
            follower.kill()
    text = out.read_bytes()
    assert text.count(b"===== llm-supervisor attempt 1 at ") == 1 and text.count(b"===== llm-supervisor attempt 2 at ") == 1
    assert b"===== engine exited with code 0" in text.split(b"attempt 2 at ")[-1]  # to the end of the engine's output
    whole = (run.state_dir / "logs" / "4090d-qwen3-4b.log").read_bytes()
    assert whole.endswith(text)  # exactly what the file holds, nothing twice
