"""Completions: a confirmed outcome's attempt marked done, then its task forgotten, in batches, on a
thread of its own that finishes its work before the process stops."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest

from orchestrator.attempt_events import OutcomeDurable
from orchestrator.completions import DONE_MARKER_SECONDS, Completions
from orchestrator.coordination import DoneMarkers, attempt_done_key
from orchestrator.launch.base import Launcher, TaskHandle

Entries = list[tuple[tuple[str, ...], tuple[str, bytes] | None]]


class Markers:
    """Stands in for :class:`DoneMarkers`: records each ``mark_many`` call in the shared journal."""

    def __init__(self, journal: list[Any]) -> None:
        self.journal = journal
        self.calls: list[tuple[Entries, int]] = []
        self.down = False
        #: While set, ``mark_many`` waits for it to clear (to hold the thread busy).
        self.hold = threading.Event()
        self.release = threading.Event()

    def mark_many(self, entries: Entries, ttl_seconds: int) -> None:
        if self.hold.is_set():
            self.release.wait(10)
        self.journal.append(("mark", [task_ids[0] for task_ids, _ in entries]))
        if self.down:
            raise ConnectionError("Redis is down")
        self.calls.append((list(entries), ttl_seconds))


class ForgetsTasks:
    """Stands in for a launcher: records what it was told to forget; ``fail`` makes one refuse."""

    def __init__(self, journal: list[Any], fail: str = "") -> None:
        self.journal = journal
        self.fail = fail

    def forget(self, handle: TaskHandle) -> None:
        if handle.task_id == self.fail:
            raise OSError("disk gone")
        self.journal.append(("forget", handle.task_id))


def handle(n: int, launcher: str = "local") -> TaskHandle:
    return TaskHandle(
        launcher=launcher,
        task_id=f"task-{n}",
        deployment_id=f"dep-{n}",
        attempt=1,
        job_type="build",
        instance_id="i-1",
        launched_at=time.time(),
        start_deadline=0.0,
        deadline=None,
    )


def durable(n: int, outcome: bytes = b"the event", launcher: str = "local") -> OutcomeDurable:
    return OutcomeDurable(handle=handle(n, launcher), outcome=outcome)


def make(fail: str = "") -> tuple[Completions, Markers, list[Any]]:
    journal: list[Any] = []
    markers = Markers(journal)
    completions = Completions(
        cast(DoneMarkers, markers), {"local": cast(Launcher, ForgetsTasks(journal, fail))}
    )
    return completions, markers, journal


def test_a_batch_is_marked_done_in_one_call_then_each_task_is_forgotten() -> None:
    completions, markers, journal = make()

    completions.complete([durable(1), durable(2, outcome=b"")])

    assert journal == [("mark", ["task-1", "task-2"]), ("forget", "task-1"), ("forget", "task-2")]
    [(entries, ttl)] = markers.calls
    assert entries == [
        (("task-1", attempt_done_key("dep-1", 1)), ("dep-1", b"the event")),
        (("task-2", attempt_done_key("dep-2", 1)), None),  # no event: nothing to answer a duplicate with
    ]
    assert ttl == DONE_MARKER_SECONDS


def test_markers_that_cannot_be_written_still_let_every_task_be_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    completions, markers, journal = make()
    markers.down = True

    completions.complete([durable(1), durable(2)])

    assert journal == [("mark", ["task-1", "task-2"]), ("forget", "task-1"), ("forget", "task-2")]
    assert "cannot mark 2 outcome(s) done" in caplog.text


def test_a_task_that_cannot_be_forgotten_does_not_keep_the_others(caplog: pytest.LogCaptureFixture) -> None:
    completions, _, journal = make(fail="task-1")

    completions.complete([durable(1), durable(2), durable(3, launcher="gone")])

    assert journal == [("mark", ["task-1", "task-2", "task-3"]), ("forget", "task-2")]
    assert "cannot forget task-1: disk gone" in caplog.text


def test_outcomes_handed_over_while_the_thread_is_busy_go_in_one_batch() -> None:
    completions, markers, journal = make()
    markers.hold.set()
    completions.start()
    try:
        # Given the thread busy with a first outcome
        completions.done(durable(1))
        deadline = time.monotonic() + 10
        while completions.pending() and time.monotonic() < deadline:
            time.sleep(0.001)
        # When three more are handed over meanwhile
        for n in (2, 3, 4):
            completions.done(durable(n))
        markers.hold.clear()
        markers.release.set()
    finally:
        completions.close()
    # Then they are marked in one call, after the first
    assert [entry for entry in journal if entry[0] == "mark"] == [
        ("mark", ["task-1"]),
        ("mark", ["task-2", "task-3", "task-4"]),
    ]
    assert [entry for entry in journal if entry[0] == "forget"] == [
        ("forget", f"task-{n}") for n in range(1, 5)
    ]


def test_close_finishes_every_outcome_handed_over_before_it() -> None:
    completions, _, journal = make()
    completions.start()
    for n in range(1, 101):
        completions.done(durable(n))

    completions.close()

    assert completions.pending() == 0
    assert [entry for entry in journal if entry[0] == "forget"] == [
        ("forget", f"task-{n}") for n in range(1, 101)
    ]
    marked = [task for entry in journal if entry[0] == "mark" for task in entry[1]]
    assert marked == [f"task-{n}" for n in range(1, 101)]


def test_the_thread_lives_on_after_a_batch_it_could_not_complete(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    completions, _, journal = make()
    real_complete = completions.complete
    calls: list[int] = []

    def broken_once(batch: list[OutcomeDurable]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("a bug")
        real_complete(batch)

    monkeypatch.setattr(completions, "complete", broken_once)
    completions.start()
    completions.done(durable(1))
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    completions.done(durable(2))
    completions.close()

    assert "completing 1 confirmed outcome(s) failed" in caplog.text
    assert ("forget", "task-2") in journal
