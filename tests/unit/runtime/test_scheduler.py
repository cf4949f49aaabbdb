"""The process's one scheduler thread: due order, cancelling, errors, stop and restart."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator

import pytest

from orchestrator.runtime import scheduler as process_scheduler
from orchestrator.runtime.scheduler import Scheduler

#: How long a test waits for an event that should come within milliseconds.
WAIT = 5.0


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    scheduler = Scheduler(name="test-scheduler")
    try:
        yield scheduler
    finally:
        scheduler.stop(timeout=WAIT)


def scheduler_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "test-scheduler"]


def test_calls_run_in_due_order_on_one_thread(scheduler: Scheduler) -> None:
    ran: list[str] = []
    threads: set[threading.Thread] = set()
    done = threading.Event()

    def record(name: str) -> None:
        ran.append(name)
        threads.add(threading.current_thread())

    scheduler.call_later(0.06, lambda: record("third"))
    scheduler.call_later(0.02, lambda: record("first"))
    scheduler.call_later(0.04, lambda: record("second"))
    scheduler.call_later(0.08, done.set)

    assert done.wait(WAIT)
    assert ran == ["first", "second", "third"]
    assert len(threads) == 1
    assert threads != {threading.current_thread()}


def test_calls_due_at_the_same_time_run_in_scheduling_order() -> None:
    scheduler = Scheduler(clock=lambda: 0.0, name="test-scheduler")  # every call is due at 0.0
    try:
        release, done = threading.Event(), threading.Event()
        scheduler.call_later(0, lambda: release.wait(WAIT))  # holds the thread while the rest queue up
        ran: list[int] = []
        for value in range(20):
            scheduler.call_later(0, functools.partial(ran.append, value))
        scheduler.call_later(0, done.set)
        release.set()
        assert done.wait(WAIT)
        assert ran == list(range(20))
    finally:
        scheduler.stop(timeout=WAIT)


def test_many_pending_calls_share_one_thread(scheduler: Scheduler) -> None:
    done = threading.Event()
    for _ in range(200):
        scheduler.call_later(30.0, lambda: None)
    scheduler.call_later(0.01, done.set)

    assert done.wait(WAIT)
    assert len(scheduler_threads()) == 1
    assert scheduler.pending() == 200


def test_an_earlier_call_wakes_the_thread_waiting_for_a_later_one(scheduler: Scheduler) -> None:
    done = threading.Event()
    scheduler.call_later(60.0, lambda: None)  # the thread now sleeps towards this one
    scheduler.call_later(0.01, done.set)
    assert done.wait(WAIT)


def test_a_cancelled_call_does_not_run(scheduler: Scheduler) -> None:
    ran: list[str] = []
    done = threading.Event()
    cancelled = scheduler.call_later(0.01, lambda: ran.append("cancelled"))
    scheduler.call_later(0.03, done.set)

    cancelled.cancel()
    cancelled.cancel()  # twice is harmless

    assert done.wait(WAIT)
    assert ran == []
    assert cancelled.cancelled()
    assert scheduler.pending() == 0


def test_cancelling_after_the_run_is_harmless(scheduler: Scheduler) -> None:
    done = threading.Event()
    call = scheduler.call_later(0, done.set)
    assert done.wait(WAIT)
    call.cancel()
    assert scheduler.pending() == 0


def test_cancelled_calls_do_not_pile_up(scheduler: Scheduler) -> None:
    calls = [scheduler.call_later(60.0, lambda: None) for _ in range(1000)]
    for call in calls[1:]:
        call.cancel()
    assert scheduler.pending() == 1
    assert len(scheduler._heap) < 200  # compacted along the way, not kept for a minute


def test_a_failing_callback_is_logged_and_the_thread_goes_on(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="orchestrator.runtime.scheduler"):
        scheduler.call_later(0, fail)
        scheduler.call_later(0.01, done.set)
        assert done.wait(WAIT)
    assert "a scheduled call failed" in caplog.text
    assert "RuntimeError: boom" in caplog.text


def test_stop_ends_the_thread_drops_pending_calls_and_a_new_call_starts_it_again(
    scheduler: Scheduler,
) -> None:
    ran: list[str] = []
    dropped = scheduler.call_later(0.05, lambda: ran.append("dropped"))
    assert scheduler.is_running()

    scheduler.stop(timeout=WAIT)

    assert not scheduler.is_running()
    assert scheduler_threads() == []
    assert dropped.cancelled()
    assert scheduler.pending() == 0
    done = threading.Event()
    scheduler.call_later(0.1, done.set)  # due after the dropped one would have been
    assert done.wait(WAIT)
    assert ran == []
    assert len(scheduler_threads()) == 1


def test_stop_from_a_callback_does_not_wait_for_itself(scheduler: Scheduler) -> None:
    stopped = threading.Event()

    def stop_here() -> None:
        scheduler.stop(timeout=WAIT)
        stopped.set()

    scheduler.call_later(0, stop_here)
    assert stopped.wait(WAIT)
    assert not scheduler.is_running()


def test_the_process_scheduler_is_started_on_first_use_and_shut_down() -> None:
    done = threading.Event()
    call = process_scheduler.call_later(0.01, done.set)
    try:
        assert done.wait(WAIT)
        assert call.cancelled()  # it ran
    finally:
        process_scheduler.shutdown(timeout=WAIT)
    assert not [thread for thread in threading.enumerate() if thread.name == "tell-later"]
