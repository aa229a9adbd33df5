"""sd_notify against a real daemon: a test-bound AF_UNIX datagram socket stands in for systemd.

With SO_PASSCRED every datagram carries its sender's pid, so the test also proves that only the
daemon (systemd's NotifyAccess=main) speaks, never the engine it starts.
"""

from __future__ import annotations

import array
import os
import shutil
import signal
import socket
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from daemon_harness import DaemonRun, daemons, wait_until  # noqa: F401 - `daemons` is a fixture

SO_PASSCRED = getattr(socket, "SO_PASSCRED", 16)
SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class FakeSystemd:
    """Receives notify datagrams: (monotonic time, sender pid, {KEY: VALUE}, /status state at
    receipt when the datagram says READY=1)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, int | None, dict[str, str], dict | None]] = []
        self.status_url: str | None = None
        self.engine_port: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._http = httpx.Client(timeout=3, trust_env=False)

    def _loop(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(creds_size))
            except (socket.timeout, OSError):
                continue
            at = time.monotonic()
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS:
                    pid = array.array("i", payload[:creds_size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            seen = None
            if fields.get("READY") == "1" and self.status_url:
                # what the daemon and the engine say at the moment systemd would mark us started
                seen = {"status": self._http.get(self.status_url).json(),
                        "metrics": self._http.get(f"http://127.0.0.1:{self.engine_port}/metrics").text}
            self.messages.append((at, pid, fields, seen))

    def start(self) -> "FakeSystemd":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self._http.close()

    def with_key(self, key: str) -> list[tuple[float, int | None, dict[str, str], dict | None]]:
        return [m for m in self.messages if key in m[2]]


@pytest.fixture
def notify_dir():
    # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer
    path = Path(tempfile.mkdtemp(prefix="llmsv-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sd_notify_ready_status_watchdog_and_stopping(daemons, notify_dir: Path) -> None:
    systemd = FakeSystemd(notify_dir / "notify.sock")
    run: DaemonRun = daemons(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"})
    systemd.status_url = run.url + "/status"
    systemd.engine_port = run.engine_port
    systemd.start()
    try:
        run.start()
        status = run.wait_ready()
        wait_until(lambda: systemd.with_key("READY"), 10, 0.05, "READY=1")
        ready_at = systemd.with_key("READY")[0][0]
        # watch the watchdog for a while after ready
        wait_until(lambda: time.monotonic() - ready_at > 3.0, 10, 0.1, "3 s of watchdog pings")

        # the engine tree never sees the service manager's variables
        pids = [p.pid for p in run.engine_processes()] + [status["guard_pid"]]
        assert status["pid"] in pids and len(pids) >= 3
        for pid in pids:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            names = {item.split(b"=", 1)[0].decode() for item in environ if item}
            assert not names & set(NOTIFY_VARS), (pid, names & set(NOTIFY_VARS))

        t_term = time.monotonic()
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0
        wait_until(lambda: systemd.with_key("STOPPING"), 5, 0.05, "STOPPING=1")
    finally:
        systemd.close()

    # only the daemon speaks (NotifyAccess=main)
    senders = {pid for _at, pid, _f, _s in systemd.messages}
    assert senders == {run.pid}, senders

    # READY=1 exactly once, when /status already says ready and the engine has answered a request
    readies = systemd.with_key("READY")
    assert len(readies) == 1
    _at, _pid, fields, seen = readies[0]
    assert seen is not None and seen["status"]["state"] == "ready"
    success = [ln for ln in seen["metrics"].splitlines()
               if ln.startswith("vllm:request_success_total") and not ln.endswith(" 0.0")]
    assert success, "the engine had not finished a request when READY=1 was sent"
    kv, conc = status["kv_cache_tokens"], status["max_concurrency"]
    assert fields["STATUS"] == f"ready: {kv:,} KV tokens, {conc:.2f}x concurrency at 40,960 tokens (SIMULATED)"

    # STATUS lines before READY follow the start, and carry the parsed KV facts
    before = [m[2]["STATUS"] for m in systemd.messages if "STATUS" in m[2] and m[0] < readies[0][0]]
    assert any("starting vLLM" in s for s in before), before
    assert f"KV cache: {kv:,} tokens, {conc:.2f}x at 40,960" in before, before
    assert all("READY" not in m[2] for m in systemd.messages if m[0] < readies[0][0])

    # WATCHDOG=1 every WATCHDOG_USEC / 2 = 0.5 s
    pings = [at for at, _pid, f, _s in systemd.messages if f.get("WATCHDOG") == "1" and at < t_term]
    assert len(pings) >= 6, len(pings)
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert 0.4 <= statistics.median(gaps) <= 0.7, gaps
    window = [at for at in pings if ready_at <= at <= ready_at + 3.0]
    assert 4 <= len(window) <= 8, window

    # STOPPING=1 after SIGTERM, once
    stopping = systemd.with_key("STOPPING")
    assert len(stopping) == 1 and stopping[0][0] >= t_term
    assert os.path.exists(systemd.path)


def test_sighup_reloads_the_engine_with_reloading_then_ready(daemons, notify_dir: Path) -> None:
    """`systemctl reload` (ExecReload sends SIGHUP): RELOADING=1 with MONOTONIC_USEC, a new engine,
    then READY=1 again once it answers."""
    systemd = FakeSystemd(notify_dir / "notify.sock")
    run: DaemonRun = daemons(env={"NOTIFY_SOCKET": str(systemd.path)})
    systemd.status_url = run.url + "/status"
    systemd.engine_port = run.engine_port
    systemd.start()
    try:
        run.start()
        first = run.wait_ready()
        wait_until(lambda: systemd.with_key("READY"), 10, 0.05, "READY=1")
        run.signal(signal.SIGHUP)
        wait_until(lambda: systemd.with_key("RELOADING"), 10, 0.05, "RELOADING=1")
        wait_until(lambda: len(systemd.with_key("READY")) == 2, 60, 0.1, "READY=1 after the reload")
        second = run.status()
        run.signal(signal.SIGTERM)
        assert run.wait_exit(30) == 0
    finally:
        systemd.close()
    reloading = systemd.with_key("RELOADING")
    assert len(reloading) == 1 and int(reloading[0][2]["MONOTONIC_USEC"]) > 0
    readies = systemd.with_key("READY")
    assert readies[0][0] < reloading[0][0] < readies[1][0]
    assert second["state"] == "ready" and second["pid"] != first["pid"]
    assert second["restarts_by_reason"] == {"admin": 1}
