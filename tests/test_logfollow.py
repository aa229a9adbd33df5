"""The engine log's live readers: every byte once, a slow follower cut off, all ended on stop.

The writer thread is played by calling `written` with the file's (inode, size) after each write,
as runtime/outputlog.py does; the file is written by the test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from frontdoor_fakes import run, until  # polling against a generous deadline; a stuck scenario fails
from llm_supervisor.config.redaction import Redactor
from llm_supervisor.errors import BadInput
from llm_supervisor.runtime.logfollow import LogFollowers
from llm_supervisor.vllm import framing

SECRET = "sk-follow-secret-123456"


class Log:
    """A log file and its followers; `write` appends and tells them, as the writer thread does."""

    def __init__(self, path: Path, chunks: int = 1024) -> None:
        self.path = path
        self.followers = LogFollowers(path, Redactor([SECRET]), chunks=chunks)
        self.followers.loop = asyncio.get_running_loop()
        path.write_bytes(b"")

    def write(self, text: str) -> None:
        data = text.encode()
        with self.path.open("ab") as f:
            f.write(data)
        st = os.stat(self.path)
        self.followers.written((st.st_ino, st.st_size), data)


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_a_follower_reads_the_file_then_what_comes_and_each_byte_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log(tmp_path / "engine.log")
        log.write(framing.attempt_line(1, "t0", "vllm serve m"))
        log.write("loading weights\n")
        stream = await log.followers.open(None, 1, follow=True)
        # written after the snapshot, announced before the stream reads the file: once, not twice
        log.write("KV cache: 1,000 tokens\n")
        reader = asyncio.ensure_future(read_all(stream))
        await asyncio.sleep(0)
        log.write(f"token {SECRET} ready\n")
        log.write("half a li")
        await asyncio.sleep(0)  # the writes handed over reach the followers first, as in the daemon's stop
        log.followers.end()
        got = (await reader).decode()
        assert got.count("loading weights") == 1 and got.count("KV cache: 1,000 tokens") == 1
        assert SECRET not in got and "ready\n" in got
        assert got.endswith("half a li"), "the last, unfinished line comes at the end"
        assert len(log.followers) == 0
    run(scenario())


def test_a_follower_that_falls_behind_is_cut_off_with_one_line_and_the_others_go_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log(tmp_path / "engine.log", chunks=4)
        log.write(framing.attempt_line(1, "t0", "vllm serve m"))
        slow = await log.followers.open(None, 1, follow=True)
        fast = await log.followers.open(None, 1, follow=True)
        fast_got: list[bytes] = []

        async def keep_reading() -> None:
            async for chunk in fast:
                fast_got.append(chunk)
        fast_reader = asyncio.ensure_future(keep_reading())
        # once the marker came through its queue, the fast follower has read the file (in a thread)
        # and reads on the loop alone, keeping up with every write
        log.write("marker\n")
        await until(lambda: b"marker" in b"".join(fast_got), what="the fast follower to read the marker")
        for n in range(10):  # the slow one reads nothing meanwhile: its 4 chunks fill up
            log.write(f"line {n}\n")
            await asyncio.sleep(0)
        await until(lambda: b"line 9" in b"".join(fast_got), what="the fast follower to read line 9")
        assert len(log.followers) == 1, "the slow follower is no longer fed"
        slow_text = (await read_all(slow)).decode()
        assert slow_text.rstrip().endswith(framing.behind_line().strip())
        assert "marker" in slow_text and all(f"line {n}\n" in slow_text for n in range(3)) \
            and "line 3" not in slow_text, "what it was given, without a gap, then the line"
        log.followers.end()
        await fast_reader
        fast_text = b"".join(fast_got).decode()
        assert all(f"line {n}\n" in fast_text for n in range(10)) and "fell behind" not in fast_text
    run(scenario())


def test_an_earlier_attempt_is_read_whole_and_not_followed(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log(tmp_path / "engine.log")
        log.write(framing.attempt_line(1, "t0", "vllm serve m"))
        log.write("first try\n")
        log.write(framing.exit_line("killed by signal 9"))
        log.write(framing.attempt_line(2, "t1", "vllm serve m"))
        log.write("second try\n")
        text = (await read_all(await log.followers.open(1, 2, follow=True))).decode()
        assert "first try" in text and "second try" not in text
        assert len(log.followers) == 0, "nothing to follow: attempt 1 has ended"
        last = (await read_all(await log.followers.open(None, 2, follow=False, lines=1))).decode()
        assert last == "second try\n"
    run(scenario())


def test_no_such_attempt_is_said_before_anything_is_sent_and_leaves_no_follower(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = Log(tmp_path / "engine.log")
        log.write(framing.attempt_line(1, "t0", "vllm serve m"))
        with pytest.raises(BadInput, match="--attempt 3"):
            await log.followers.open(3, 1, follow=True)
        assert len(log.followers) == 0
    run(scenario())
