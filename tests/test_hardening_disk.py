"""A full or failing log disk is never a hang: the engine's output keeps draining (dropped and
counted), the failure is said once (log line, history, /status), writing resumes when it can, the
daemon stays stoppable, and a log that cannot be written at start is one clear line.

The writer is tested with fake files (a disk that fails, one that blocks) and /dev/full; the
daemon with a fake writer in virtual time, and for real on a small tmpfs (in a user and mount
namespace: skipped where those are not allowed) and against /dev/full at start.
"""

from __future__ import annotations

import asyncio
import errno
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon_harness import free_port, run_cli
from fakes import Harness
from hardening_utils import FakeEngineRun, clean_env, poll
from llm_supervisor.config.redaction import Redactor
from llm_supervisor.errors import RuntimeFailure, SettingsError
from llm_supervisor.runtime.outputlog import EngineLog, check_log_dir


class FlakyFile:
    """A log file on a disk that fills up: writes fail with ENOSPC while `full` is set."""

    def __init__(self, disk: "FlakyDisk") -> None:
        self.disk = disk

    def write(self, data: bytes) -> None:
        if self.disk.full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.disk.blocked.is_set():
            self.disk.release.wait()
        self.disk.data += data

    def fileno(self) -> int:
        raise OSError(errno.EBADF, "no descriptor")

    def close(self) -> None:
        pass


class FlakyDisk:
    def __init__(self) -> None:
        self.full = threading.Event()
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.data = b""
        self.opens = 0

    def open(self, path: Path, max_bytes: int, backups: int) -> FlakyFile:
        self.opens += 1
        if self.full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return FlakyFile(self)


def changes_recorder() -> tuple[list[tuple[str, str]], object]:
    seen: list[tuple[str, str]] = []
    return seen, lambda kind, text: seen.append((kind, text))


def test_a_full_disk_is_said_once_output_dropped_and_counted_then_resumed(tmp_path: Path) -> None:
    disk = FlakyDisk()
    seen, on_change = changes_recorder()
    elog = EngineLog(tmp_path / "e.log", 1 << 20, 2, opener=disk.open, on_change=on_change, retry_s=0.05)
    elog.write(b"before\n")
    poll(lambda: disk.data == b"before\n", 5, what="the first write")
    disk.full.set()
    for i in range(200):
        elog.write(b"line %d\n" % i)
        time.sleep(0.001)
    poll(lambda: elog.dropped_bytes > 0 and seen, 5, what="the failure")
    assert [kind for kind, _ in seen] == ["failed"]  # once, however many writes failed
    assert "No space left on device" in seen[0][1] and elog.status()["ok"] is False
    disk.full.clear()
    poll(lambda: elog.write(b"after\n") or b"after\n" in disk.data, 5, what="writing again")  # tried every 0.05 s
    assert [kind for kind, _ in seen] == ["failed", "resumed"]
    assert f"{elog.dropped_bytes:,} bytes" in seen[1][1] and elog.status()["ok"] is True
    elog.close()


def test_a_blocked_disk_never_blocks_the_caller_and_close_gives_up(tmp_path: Path) -> None:
    disk = FlakyDisk()
    disk.blocked.set()
    seen, on_change = changes_recorder()
    elog = EngineLog(tmp_path / "e.log", 1 << 30, 2, opener=disk.open, on_change=on_change, max_pending=64 * 1024)
    chunk = b"x" * 4096 + b"\n"

    def flood() -> None:
        for _ in range(1000):  # 4 MB against a writer stuck in its first write
            elog.write(chunk)

    caller = threading.Thread(target=flood)
    caller.start()
    caller.join(60)
    assert not caller.is_alive(), "write() waited for the disk"
    # at most one batch in the stuck writer and one queue's worth wait; the rest was dropped
    assert elog.dropped_bytes >= 1000 * len(chunk) - 2 * 64 * 1024 - len(chunk)
    assert [kind for kind, _ in seen] == ["failed"] and "too slow" in seen[0][1]
    closer = threading.Thread(target=elog.close, kwargs={"timeout": 0.5})
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "close() waited for a disk that never answers"
    disk.release.set()


def test_a_secret_split_across_reads_is_masked(tmp_path: Path) -> None:
    secret = "sk-live-0123456789abcdef"
    path = tmp_path / "e.log"
    elog = EngineLog(path, 1 << 20, 2, redactor=Redactor([secret]))
    text = f"error: unrecognized arguments: --api-key {secret} --foo\n".encode()
    cut = text.index(b"0123")
    elog.write(text[:cut])
    time.sleep(0.05)  # let the writer take the first half on its own
    elog.write(text[cut:])
    elog.close()
    written = path.read_bytes()
    assert secret.encode() not in written and b"--api-key *** --foo\n" in written


def test_the_log_removed_under_the_writer_is_written_anew(tmp_path: Path) -> None:
    seen, on_change = changes_recorder()
    folder = tmp_path / "logs"
    elog = EngineLog(folder / "e.log", 1 << 20, 2, on_change=on_change)
    elog.write(b"one\n")
    poll(lambda: (folder / "e.log").exists() and (folder / "e.log").read_bytes() == b"one\n", 5, what="one")
    shutil.rmtree(folder)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (folder / "e.log").exists():
        elog.write(b"two\n")
        time.sleep(0.2)
    assert ("reopened" in [kind for kind, _ in seen]) and b"two\n" in (folder / "e.log").read_bytes()
    elog.close()


def test_dev_full_as_the_log_fails_once_and_drops(tmp_path: Path) -> None:
    seen, on_change = changes_recorder()
    (tmp_path / "e.log").symlink_to("/dev/full")
    elog = EngineLog(tmp_path / "e.log", 1 << 20, 2, on_change=on_change, retry_s=0.05)
    for _ in range(50):
        elog.write(b"x" * 100000 + b"\n")
    poll(lambda: seen, 5, what="the failure")
    elog.close()
    assert [kind for kind, _ in seen] == ["failed"] and "ENOSPC" in seen[0][1]
    assert elog.dropped_bytes > 0


def test_check_log_dir_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(SettingsError) as bad:
        check_log_dir(tmp_path / "afile" / "p.log", "LLM_SUPERVISOR_LOG_DIR")
    assert bad.value.lines() == [f"settings: LLM_SUPERVISOR_LOG_DIR: {tmp_path / 'afile'} is a file, not a folder"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "p.log").symlink_to("/dev/full")
    with pytest.raises(RuntimeFailure) as full:
        check_log_dir(tmp_path / "full" / "p.log", "LLM_SUPERVISOR_LOG_DIR")
    assert len(full.value.lines()) == 1 and "No space left on device" in full.value.lines()[0]


# ---------------------------------------------------------------- the daemon


def test_the_daemon_reports_a_failing_log_once_and_stays_ready(tmp_path: Path) -> None:
    """In virtual time with a disk that fills up after launch: the engine still becomes ready,
    the failure is one history event (so it is in the state file), /status shows it with what was
    dropped, and when the disk has room again that is said once too."""
    disk = FlakyDisk()

    async def main() -> None:
        h = Harness(tmp_path)
        elog = EngineLog(tmp_path / "e.log", 1 << 20, 2, opener=disk.open, retry_s=0.01)
        h.daemon._log = elog
        elog.on_change = h.daemon._log_changed_elsewhere
        disk.full.set()
        h.start()
        await h.ready()

        async def real(predicate, what: str, each=lambda: None) -> None:
            deadline = time.monotonic() + 10
            while not predicate():
                assert time.monotonic() < deadline, what
                each()
                await asyncio.sleep(0.02)

        await real(lambda: ("engine_log_failed", None) in h.events(), "the failure event")
        status = h.daemon.status()
        assert status["state"] == "ready" and status["engine_log"]["ok"] is False
        assert status["engine_log"]["dropped_bytes"] > 0
        disk.full.clear()
        # the next output after the retry interval is written, and that is said once
        await real(lambda: ("engine_log_resumed", None) in h.events(), "the resumed event",
                   lambda: h.engine._print("(APIServer pid=100) INFO 12-03 10:00:00 [api.py:1] more output"))
        assert [e for e, _ in h.events()].count("engine_log_failed") == 1
        h.daemon.command("stop")
        assert await h.exit_code() == 0
        saved = h.store.dump()
        assert "engine_log_failed" in saved and "engine_log_resumed" in saved

    asyncio.run(main())


def test_up_with_a_log_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    env = clean_env(tmp_path, LLM_SUPERVISOR_LOG_DIR=str(tmp_path / "logs"), LLM_SUPERVISOR_API_PORT="0")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "4090d-qwen3-4b.log").symlink_to("/dev/full")
    result = run_cli(["up", "--profile", "4090d-qwen3-4b", "--simulate", "--set", f"vllm.port={free_port()}"], env)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "LLM_SUPERVISOR_LOG_DIR" in lines[0]

    (tmp_path / "afile").write_text("")
    env["LLM_SUPERVISOR_LOG_DIR"] = str(tmp_path / "afile")
    result = run_cli(["up", "--profile", "4090d-qwen3-4b", "--simulate"], env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: settings: LLM_SUPERVISOR_LOG_DIR: {tmp_path / 'afile'} is a file, not a folder"]


def _userns_tmpfs_works(tmp: Path) -> str | None:
    """None when an unprivileged user and mount namespace can mount a tmpfs here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = tmp / "probe"
    probe.mkdir()
    try:
        result = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    return None if result.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {result.stderr.strip()}"


class TmpfsRun(FakeEngineRun):
    """The daemon in a user and mount namespace with its log dir on a tmpfs of `size`."""

    def __init__(self, tmp: Path, size: str, **kw: object) -> None:
        self.size = size
        super().__init__(tmp, "flood", **kw)  # type: ignore[arg-type]
        self.logs = tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env["LLM_SUPERVISOR_LOG_DIR"] = str(self.logs)

    @property
    def argv(self) -> list[str]:
        inner = " ".join(f"'{a}'" for a in super().argv)
        return ["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size={self.size} tmpfs '{self.logs}' && exec {inner}"]


def test_a_full_tmpfs_log_dir_never_hangs_the_engine_or_the_stop(tmp_path: Path) -> None:
    why = _userns_tmpfs_works(tmp_path)
    if why:
        pytest.skip(why)
    stop_timeout = 3.0
    # A 1 MiB disk, an engine that prints about 11 MB once asked (the daemon's smoke request).
    with TmpfsRun(tmp_path / "run", "1m", env={"FAKE_ENGINE_LINES": "100000",
                                                "LLM_SUPERVISOR_STOP_TIMEOUT_S": str(stop_timeout)}) as run:
        run.start()
        run.wait_ready()
        status = run.wait_status(lambda s: (s.get("engine_log") or {}).get("ok") is False, what="the log failure")
        assert "No space left on device" in status["engine_log"]["error"]
        # the engine is not held up: it finishes its flood and still answers
        run.wait_status(lambda s: any("flood done" in line for line in s.get("log_tail") or []), 60,
                        what="the engine's whole output drained")
        status = run.wait_status(lambda s: s["state"] == "ready", what="still ready")
        assert status["engine_log"]["dropped_bytes"] > 5_000_000
        failed = [h for h in status["history"] if h["event"] == "engine_log_failed"]
        assert len(failed) == 1
        assert sum("No space left on device" in line for line in run.stderr().splitlines()) == 1
        # the stop is staged (SIGTERM, STOP_TIMEOUT_S, SIGKILL), never the 66 s hang of a blocked
        # writer: a generous deadline for that behaviour; how fast it is, benchmarks/detection.py
        run.signal(signal.SIGTERM)
        assert run.wait_exit(stop_timeout + 15) == 0
        assert "Traceback" not in run.stderr()


def test_a_state_dir_that_takes_no_write_is_one_line(tmp_path: Path) -> None:
    from llm_supervisor.store.lock import DaemonLock

    (tmp_path / "daemon.lock").symlink_to("/dev/full")
    with pytest.raises(RuntimeFailure) as failed:
        DaemonLock(tmp_path).acquire()
    assert len(failed.value.lines()) == 1 and "LLM_SUPERVISOR_STATE_DIR" in failed.value.lines()[0]
    (tmp_path / "afile").write_text("")
    with pytest.raises(SettingsError) as bad:
        DaemonLock(tmp_path / "afile" / "state").acquire()
    assert bad.value.lines()[0].startswith("settings: LLM_SUPERVISOR_STATE_DIR: ")
