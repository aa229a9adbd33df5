"""sd_notify against a real daemon: a test-bound AF_UNIX datagram socket stands in for systemd.

With SO_PASSCRED every datagram carries its sender's pid, so the test proves that only the
daemon (systemd's NotifyAccess=main) speaks, never the engine it starts, and that the engine tree
never sees the service manager's variables. What is said and when (STATUS lines, the watchdog's
period, RELOADING on SIGHUP) is tested in-process in test_daemon_loop.py.
"""

from __future__ import annotations

import array
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from daemon_harness import DaemonRun, wait_until

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


def test_only_the_daemon_speaks_and_ready_means_ready(daemons, notify_dir: Path) -> None:
    systemd = FakeSystemd(notify_dir / "notify.sock")
    run: DaemonRun = daemons(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"})
    systemd.status_url = run.url + "/status"
    systemd.engine_port = run.engine_port
    systemd.start()
    try:
        run.start()
        status = run.wait_ready()
        wait_until(lambda: systemd.with_key("READY"), 10, 0.05, "READY=1")
        wait_until(lambda: systemd.with_key("WATCHDOG"), 10, 0.05, "WATCHDOG=1")

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
    stopping = systemd.with_key("STOPPING")
    assert len(stopping) == 1 and stopping[0][0] >= t_term
