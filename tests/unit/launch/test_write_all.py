"""``write_all``: a record is written whole even when ``os.write`` writes less than asked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.launch.local_files import write_all


def test_short_writes_are_continued_until_every_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an os.write that writes at most 7 bytes per call (as a pipe or a full disk may)
    real_write = os.write
    sizes: list[int] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", short_write)
    data = b"".join(b"line %d\n" % n for n in range(20))
    path = tmp_path / "record"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        # When the record is written
        write_all(fd, data)
    finally:
        os.close(fd)
    # Then the file holds all of it, in order, written in as many calls as it took
    assert path.read_bytes() == data
    assert len(sizes) == -(-len(data) // 7)


def test_an_empty_record_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "record"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_all(fd, b"")
    finally:
        os.close(fd)
    assert path.read_bytes() == b""
