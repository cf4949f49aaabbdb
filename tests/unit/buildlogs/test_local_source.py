"""The local log source: complete lines from each followed file's offset, bounded memory, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.buildlogs.local_source import LocalLogSource, offset_of
from orchestrator.buildlogs.model import FollowedTask, RawLine


def task(path: Path, task_id: str = "dep-1") -> FollowedTask:
    return FollowedTask(task_id=task_id, deployment_id="dep", attempt=1, launcher="local", location=str(path))


def texts(polled: list[tuple[str, list[RawLine]]]) -> list[bytes]:
    return [line.text for _, lines in polled for line in lines]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "logs" / "dep-1.log"
    path.parent.mkdir()
    path.write_bytes(b"")
    return path


def test_only_complete_lines_are_returned_while_the_task_runs(tmp_path: Path, log: Path) -> None:
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(log), None)
    log.write_bytes(b"one\ntwo\nthr")
    assert texts(source.poll(100)) == [b"one", b"two"]
    with log.open("ab") as f:
        f.write(b"ee\n")
    assert texts(source.poll(100)) == [b"three"]
    assert source.poll(100) == []


def test_the_last_line_without_a_newline_comes_once_the_task_ended(tmp_path: Path, log: Path) -> None:
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(log), None)
    log.write_bytes(b"one\nlast words")
    assert texts(source.poll(100)) == [b"one"]
    assert not source.caught_up("dep-1")
    source.task_ended("dep-1")
    polled = texts(source.poll(100)) + texts(source.poll(100))
    assert polled == [b"last words"]
    assert source.caught_up("dep-1")


def test_each_line_carries_the_offset_after_it_and_following_from_it_resumes_there(
    tmp_path: Path, log: Path
) -> None:
    log.write_bytes(b"a\nbb\nccc\n")
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(log), None)
    lines = [line for _, batch in source.poll(100) for line in batch]
    assert [line.cursor for line in lines] == ["off:2", "off:5", "off:9"]
    again = LocalLogSource(tmp_path, 1024)
    again.follow(task(log), lines[1].cursor)
    assert texts(again.poll(100)) == [b"ccc"]
    assert offset_of(lines[1].cursor) == 5 and offset_of(None) == 0 and offset_of("cw:1:2") == 0


def test_a_line_longer_than_the_bound_comes_in_pieces_and_nothing_more_is_held(
    tmp_path: Path, log: Path
) -> None:
    # Given a 10 MB line with no newline yet
    log.write_bytes(b"x" * 10_000_000)
    source = LocalLogSource(tmp_path, 8192, read_bytes=64 * 1024)
    source.follow(task(log), None)
    pieces: list[bytes] = []
    while polled := texts(source.poll(10_000)):
        pieces += polled
    # Then it came in pieces of the bound, read a bounded amount per poll
    assert all(len(p) == 8192 for p in pieces)
    assert sum(map(len, pieces)) == 10_000_000 - 10_000_000 % 8192
    source.task_ended("dep-1")
    pieces += texts(source.poll(10_000))
    assert sum(map(len, pieces)) == 10_000_000


def test_a_poll_returns_at_most_its_budget_and_the_rest_comes_next_time(tmp_path: Path, log: Path) -> None:
    log.write_bytes(b"".join(b"%d\n" % n for n in range(100)))
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(log), None)
    first = texts(source.poll(30))
    assert len(first) == 30
    rest = texts(source.poll(1000))
    assert first + rest == [b"%d" % n for n in range(100)]


def test_one_chatty_task_does_not_starve_the_others(tmp_path: Path, log: Path) -> None:
    quiet = log.parent / "dep-2.log"
    log.write_bytes(b"noise\n" * 1000)
    quiet.write_bytes(b"hello\n")
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(log), None)
    source.follow(task(quiet, "dep-2"), None)
    seen: set[str] = set()
    for _ in range(3):
        seen |= {task_id for task_id, _ in source.poll(100)}
    assert seen == {"dep-1", "dep-2"}


def test_a_file_that_does_not_exist_yet_is_read_once_it_does(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "late.log"
    path.parent.mkdir()
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(path), None)
    assert source.poll(100) == []
    path.write_bytes(b"here\n")
    assert texts(source.poll(100)) == [b"here"]
    source.close()


def test_poll_ended_reads_the_tasks_that_ended_and_leaves_the_running_ones_where_they_are(
    tmp_path: Path, log: Path
) -> None:
    running = tmp_path / "logs" / "dep-2.log"
    running.write_bytes(b"still going\n")
    log.write_bytes(b"done\nlast words")
    source = LocalLogSource(tmp_path, 1024)
    source.follow(task(log), None)
    source.follow(task(running, "dep-2"), None)
    source.task_ended("dep-1")
    # Only the ended task is read, its unterminated last line included, in one read (the read came
    # short of what it asked: the file had nothing more)
    polled = source.poll_ended(100)
    assert [task_id for task_id, _ in polled] == ["dep-1"]
    assert texts(polled) == [b"done", b"last words"]
    assert source.poll_ended(100) == []
    assert source.caught_up("dep-1")
    # The running task's line was not consumed: the next full poll returns it
    polled = source.poll(100)
    assert [task_id for task_id, _ in polled] == ["dep-2"]
    assert [(line.text, line.cursor) for _, lines in polled for line in lines] == [(b"still going", "off:12")]
