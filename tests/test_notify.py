"""sd_notify against real AF_UNIX datagram sockets, as systemd would receive it."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_supervisor.vllm import engine_args
from llm_supervisor.runtime.notify import NOTIFY_ENV, Notifier, strip_notify_env

RECV_TIMEOUT_S = 10.0


class Listener:
    """The service manager's end: a bound datagram socket that records the sender's PID."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(RECV_TIMEOUT_S)

    def recv(self) -> tuple[list[str], int | None]:
        """One datagram as its lines, and the PID the kernel says sent it."""
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        pid = None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[: struct.calcsize("iII")])
        return data.decode().split("\n"), pid

    def lines(self) -> list[str]:
        return self.recv()[0]

    def assert_empty(self) -> None:
        self.sock.settimeout(0)
        try:
            with pytest.raises(BlockingIOError):
                self.sock.recv(4096)
        finally:
            self.sock.settimeout(RECV_TIMEOUT_S)

    def notifier(self, **extra: str) -> Notifier:
        return Notifier.from_env({"NOTIFY_SOCKET": self.env_value, **extra})


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def path_listener(short_dir: Path) -> Iterator[Listener]:
    address = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    yield Listener(sock, address)
    sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"llm-supervisor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield Listener(sock, "@" + name)
    sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest) -> Listener:
    return request.getfixturevalue(f"{request.param}_listener")


def test_ready_with_status_comes_from_this_process(listener: Listener) -> None:
    notifier = listener.notifier()
    assert notifier.enabled
    assert notifier.ready("ready: 110,464 KV tokens, 11.05× concurrency at 10,000 tokens") is True
    lines, pid = listener.recv()
    assert lines == ["READY=1", "STATUS=ready: 110,464 KV tokens, 11.05× concurrency at 10,000 tokens"]
    # NotifyAccess=main: systemd accepts only datagrams whose sender is the main PID.
    assert pid == os.getpid()


def test_each_message_kind(listener: Listener) -> None:
    notifier = listener.notifier()
    assert notifier.ready() is True
    assert listener.lines() == ["READY=1"]
    assert notifier.status("loading weights") is True
    assert listener.lines() == ["STATUS=loading weights"]
    assert notifier.watchdog() is True
    assert listener.lines() == ["WATCHDOG=1"]
    assert notifier.extend_timeout(90) is True
    assert listener.lines() == ["EXTEND_TIMEOUT_USEC=90000000"]
    assert notifier.extend_timeout(0.25) is True
    assert listener.lines() == ["EXTEND_TIMEOUT_USEC=250000"]
    assert notifier.stopping() is True
    assert listener.lines() == ["STOPPING=1"]
    assert notifier.stopping("stopping: SIGTERM") is True
    assert listener.lines() == ["STOPPING=1", "STATUS=stopping: SIGTERM"]
    assert notifier.send("STATUS=a", "ERRNO=5") is True
    assert listener.lines() == ["STATUS=a", "ERRNO=5"]
    listener.assert_empty()


def test_reloading_carries_monotonic_usec(path_listener: Listener) -> None:
    notifier = path_listener.notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = path_listener.lines()
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_identical_consecutive_status_is_sent_once(path_listener: Listener) -> None:
    notifier = path_listener.notifier()
    assert notifier.status("compiling") is True
    assert notifier.status("compiling") is False
    assert notifier.status("KV cache: 110464 tokens") is True
    assert notifier.status("compiling") is True
    assert path_listener.lines() == ["STATUS=compiling"]
    assert path_listener.lines() == ["STATUS=KV cache: 110464 tokens"]
    assert path_listener.lines() == ["STATUS=compiling"]
    path_listener.assert_empty()
    # A status carried by READY=1 counts as the last one.
    assert notifier.ready("ready") is True
    assert path_listener.lines() == ["READY=1", "STATUS=ready"]
    assert notifier.status("ready") is False
    path_listener.assert_empty()


def test_newlines_cannot_inject_extra_assignments(path_listener: Listener) -> None:
    notifier = path_listener.notifier()
    assert notifier.status("backoff 4 s\nREADY=1") is True
    assert path_listener.lines() == ["STATUS=backoff 4 s READY=1"]


def test_status_lines_pass_the_redaction(path_listener: Listener) -> None:
    from llm_supervisor.config.redaction import Redactor

    notifier = path_listener.notifier()
    notifier.redact = Redactor(["hunter2-secret"]).text
    assert notifier.status("failed: unrecognized arguments: --db-password hunter2-secret") is True
    assert path_listener.lines() == ["STATUS=failed: unrecognized arguments: --db-password ***"]


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "60000000"})
    assert not notifier.enabled
    assert notifier.ready("ready") is False
    assert notifier.status("loading weights") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert notifier.extend_timeout(30) is False
    assert notifier.watchdog_interval_s() is None
    assert Notifier.disabled().send("READY=1") is False


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_unusable_addresses_turn_notifications_off(value: str) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.ready() is False


@pytest.mark.parametrize("value", ["/nonexistent/dir/notify", "@llm-supervisor-nobody-listens", "/" + "x" * 200])
def test_unreachable_socket_never_raises(value: str) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert notifier.enabled
    assert notifier.ready("ready") is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    notifier.close()


def test_recovers_when_the_socket_appears_later(short_dir: Path) -> None:
    address = str(short_dir / "late")
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert notifier.watchdog() is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
        sock.settimeout(RECV_TIMEOUT_S)
        assert notifier.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_bad_extend_timeout_values_are_ignored(path_listener: Listener) -> None:
    notifier = path_listener.notifier()
    for seconds in (0, -5, float("nan"), float("inf")):
        assert notifier.extend_timeout(seconds) is False
    path_listener.assert_empty()


def test_watchdog_interval_is_half_of_watchdog_usec(path_listener: Listener) -> None:
    assert path_listener.notifier(WATCHDOG_USEC="60000000").watchdog_interval_s() == 30.0
    own = path_listener.notifier(WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid()))
    assert own.watchdog_interval_s() == 30.0


def test_watchdog_meant_for_another_pid_is_not_ours(path_listener: Listener) -> None:
    other = path_listener.notifier(WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid() + 1))
    assert other.watchdog_interval_s() is None


@pytest.mark.parametrize("usec", ["0", "-1", "soon", ""])
def test_watchdog_interval_needs_a_positive_usec(path_listener: Listener, usec: str) -> None:
    assert path_listener.notifier(WATCHDOG_USEC=usec).watchdog_interval_s() is None


def test_socket_is_close_on_exec(path_listener: Listener) -> None:
    notifier = path_listener.notifier()
    assert notifier.watchdog() is True
    assert notifier._sock is not None
    assert os.get_inheritable(notifier._sock.fileno()) is False
    # A child started with close_fds=False still does not get it.
    fd = notifier._sock.fileno()
    probe = f"import os, sys\ntry:\n    os.fstat({fd})\nexcept OSError:\n    sys.exit(0)\nsys.exit(1)"
    assert subprocess.run([sys.executable, "-c", probe], close_fds=False, timeout=60).returncode == 0
    notifier.close()


def test_strip_notify_env_removes_only_the_service_manager_variables() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1",
           "PATH": "/usr/bin", "HF_HOME": "/var/cache/llm-supervisor/huggingface"}
    assert strip_notify_env(env) == {"PATH": "/usr/bin", "HF_HOME": "/var/cache/llm-supervisor/huggingface"}
    assert "NOTIFY_SOCKET" in env  # the input is not changed


def test_from_env_can_unset_the_variables() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    notifier = Notifier.from_env(env, unset=True)
    assert notifier.enabled and notifier.watchdog_interval_s() == 0.5
    assert env == {"PATH": "/bin"}


def test_engine_env_drops_the_same_variables() -> None:
    # engine.py keeps its own tuple (notify.py is a stdlib-only leaf); they must agree.
    assert set(NOTIFY_ENV) <= set(engine_args.DAEMON_ONLY_ENV)
