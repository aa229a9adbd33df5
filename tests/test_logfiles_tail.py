"""`supervisor logs -n N`: the last N lines of an attempt, found by reading its files backwards,
equal what `tail -n` gives for the same bytes (across rotated files, partial ranges, block edges)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_supervisor.host import logfiles
from llm_supervisor.host.logfiles import read_ranges, tail_ranges

PIECES = st.lists(st.sampled_from(["a", "bb", "\n", "ccc\n", "\n\n", "é\r\n"]), max_size=14).map("".join)
FILES = st.lists(st.tuples(st.text("x", max_size=4), PIECES, st.text("y", max_size=3), st.booleans()),
                 min_size=1, max_size=3)


def last_lines(text: str, n: int) -> str:
    lines = text.split("\n")
    if lines and lines[-1] == "":  # a final newline ends the last line
        lines = lines[:-1]
        return "".join(line + "\n" for line in lines[-n:]) if n else ""
    kept = lines[-n:] if n else []
    return "\n".join(kept)


@settings(max_examples=300, deadline=None)
@given(files=FILES, n=st.integers(0, 9), block=st.integers(1, 9))
def test_tail_ranges_is_tail_n(files, n: int, block: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ranges, expected = [], ""
        for i, (before, body, after, open_ended) in enumerate(files):
            path = Path(tmp) / f"engine.log.{i}"
            path.write_text(before + body + after, encoding="utf-8")
            start = len(before.encode())
            end = None if open_ended else start + len(body.encode())
            ranges.append((path, start, end))
            expected += body + (after if open_ended else "")
        old = logfiles.READ_CHUNK
        logfiles.READ_CHUNK = block  # many block edges in a few bytes
        try:
            got = b"".join(read_ranges(tail_ranges(ranges, n))).decode("utf-8")
        finally:
            logfiles.READ_CHUNK = old
        assert got == last_lines(expected, n)


def test_a_file_rotated_away_is_skipped(tmp_path: Path) -> None:
    kept = tmp_path / "engine.log"
    kept.write_bytes(b"one\ntwo\nthree\n")
    assert b"".join(read_ranges(tail_ranges([(tmp_path / "gone.log", 0, None), (kept, 0, None)], 2))) == b"two\nthree\n"
    with pytest.raises(ValueError):
        tail_ranges([(kept, 0, None)], -1)
