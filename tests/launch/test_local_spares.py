"""Spare task files: an ended task's inode is reused, never while it is still some task's file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orchestrator.launch.local_spares import SpareFiles


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_new(spares: SpareFiles, path: Path, data: bytes) -> bool:
    """``spares.open_new``, its descriptor closed: whether ``path`` was created."""
    fd = spares.open_new(path, data)
    if fd is None:
        return False
    os.close(fd)
    return True


def test_a_recycled_file_is_reused_for_the_next_task_with_only_the_new_content(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    ended = write(tmp_path / "a.json", b"a long record of the ended task\nexit 0\n")
    inode = ended.stat().st_ino

    assert spares.recycle(ended)
    assert not ended.exists()
    assert len(spares) == 1

    assert write_new(spares, tmp_path / "b.json", b"new\n")
    assert (tmp_path / "b.json").read_bytes() == b"new\n"
    assert (tmp_path / "b.json").stat().st_ino == inode, "the spare's inode was not reused"
    assert (tmp_path / "b.json").stat().st_nlink == 1
    assert len(spares) == 0
    assert list((tmp_path / "spare").iterdir()) == [], "the spare's own name was not dropped"


def test_without_a_spare_a_new_file_is_created(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")

    assert write_new(spares, tmp_path / "b.json", b"new\n")

    assert (tmp_path / "b.json").read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "spare"], "a temporary file was left"


def test_an_existing_file_is_never_overwritten_and_the_spare_is_kept(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    spares.recycle(write(tmp_path / "old.json", b"old\n"))
    existing = write(tmp_path / "b.json", b"the first launch's record\n")

    assert not write_new(spares, existing, b"a second launch\n")

    assert existing.read_bytes() == b"the first launch's record\n"
    assert len(spares) == 1
    assert write_new(spares, tmp_path / "c.json", b"c\n")
    assert (tmp_path / "c.json").read_bytes() == b"c\n"


def test_a_spare_that_is_also_a_task_file_is_never_truncated(tmp_path: Path) -> None:
    # A crash between linking a spare as a task file and dropping its spare name leaves one file
    # under two names; the next process adopts the spare name.
    (tmp_path / "spare").mkdir()
    task_file = write(tmp_path / "live.json", b"a running task's record\n")
    os.link(task_file, tmp_path / "spare" / "leftover")

    spares = SpareFiles(tmp_path / "spare")
    assert len(spares) == 1
    assert write_new(spares, tmp_path / "b.json", b"new\n")

    assert task_file.read_bytes() == b"a running task's record\n"
    assert task_file.stat().st_nlink == 1, "the leftover spare name was not dropped"
    assert (tmp_path / "b.json").stat().st_ino != task_file.stat().st_ino


def test_two_processes_sharing_a_directory_never_use_one_spare_twice(tmp_path: Path) -> None:
    first = SpareFiles(tmp_path / "spare")
    for name in ("a", "b", "c"):
        first.recycle(write(tmp_path / f"{name}.json", b"x\n"))
    second = SpareFiles(tmp_path / "spare")  # starts later: adopts what it finds
    assert len(second) == 3

    written = []
    for n in range(6):
        owner = first if n % 2 else second
        path = tmp_path / f"new-{n}.json"
        assert write_new(owner, path, f"{n}\n".encode())
        written.append(path)

    inodes = [path.stat().st_ino for path in written]
    assert len(set(inodes)) == 6, "one inode became two tasks' files"
    assert [path.read_bytes() for path in written] == [f"{n}\n".encode() for n in range(6)]


def test_beyond_the_limit_ended_files_are_deleted(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare", limit=2)
    for name in ("a", "b", "c"):
        assert spares.recycle(write(tmp_path / f"{name}.json", b"x\n"))

    assert len(spares) == 2
    assert len(list((tmp_path / "spare").iterdir())) == 2
    assert not (tmp_path / "c.json").exists()
    assert not spares.recycle(tmp_path / "never-existed.json")


def test_only_the_spares_of_dead_processes_are_adopted(tmp_path: Path) -> None:
    spare_dir = tmp_path / "spare"
    spare_dir.mkdir()
    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        write(spare_dir / f"{live.pid}.aaaa-0", b"x\n")
        write(spare_dir / f"{dead.pid}.bbbb-0", b"x\n")

        spares = SpareFiles(spare_dir)

        assert len(spares) == 1, "a live process's spare was taken, or a dead one's left"
        assert (spare_dir / f"{live.pid}.aaaa-0").exists()
        assert not (spare_dir / f"{dead.pid}.bbbb-0").exists()
    finally:
        live.kill()
        live.wait()


def test_a_spare_removed_from_under_its_owner_gives_way_to_a_fresh_file(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    spares.recycle(write(tmp_path / "a.json", b"x\n"))
    for path in (tmp_path / "spare").iterdir():
        path.unlink()

    assert write_new(spares, tmp_path / "b.json", b"new\n")

    assert (tmp_path / "b.json").read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "spare"]


@pytest.mark.parametrize("with_spare", [True, False], ids=["a spare", "a fresh file"])
def test_the_descriptor_open_new_returns_appends_after_what_the_wrapper_appended_meanwhile(
    tmp_path: Path, with_spare: bool
) -> None:
    # Given a new task file, made from a spare or fresh, and the descriptor the launch keeps of it
    spares = SpareFiles(tmp_path / "spare")
    if with_spare:
        assert spares.recycle(write(tmp_path / "a.json", b"an ended task's much longer record\nexit 3\n"))
    path = tmp_path / "b.json"
    fd = spares.open_new(path, b"record\n")
    assert fd is not None
    try:
        # When the task's wrapper appends its exit status before the launch appends the pid
        with path.open("ab") as wrapper:
            wrapper.write(b"exit 0\n")
        os.write(fd, b"pid 42 7\n")
    finally:
        os.close(fd)
    # Then both lines are there after the record: the pid line did not overwrite the exit line
    assert path.read_bytes() == b"record\nexit 0\npid 42 7\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "spare"]
    assert list((tmp_path / "spare").iterdir()) == []


def test_open_new_of_an_existing_task_file_returns_none_and_keeps_the_spare(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    assert spares.recycle(write(tmp_path / "a.json", b"ended\n"))
    existing = write(tmp_path / "b.json", b"the first launch\n")

    assert spares.open_new(existing, b"a second launch\n") is None

    assert existing.read_bytes() == b"the first launch\n"
    assert len(spares) == 1
