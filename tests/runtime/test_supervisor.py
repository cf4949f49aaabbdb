"""The Supervisor: restart budget and backoff (plain logic), then real pykka actors being restarted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import msgspec
import pykka
import pytest
from support import wait_until

from orchestrator.config import SupervisionConfig
from orchestrator.errors import SupervisionError
from orchestrator.runtime import (
    PONG,
    ActorStatus,
    HealthBoard,
    Ping,
    RestartBudget,
    StandaloneReporter,
    Supervisor,
)
from orchestrator.runtime.supervisor import UNEXPECTED_STOP, describe_error

from .sample_actors import Block, Count, Crash, Journal, Later, Record, RecorderActor

FAST = SupervisionConfig(
    restart_budget=5,
    restart_window_seconds=60.0,
    restart_backoff_seconds=0.05,
    restart_backoff_max_seconds=0.2,
    ping_interval_seconds=0.05,
)


# --- plain logic --------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    budget = RestartBudget(budget=10, window_seconds=60, backoff_seconds=0.1, backoff_max_seconds=1.0)
    delays = [budget.crashed(now=float(t)) for t in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_budget_allows_that_many_restarts_per_window_then_gives_up() -> None:
    budget = RestartBudget(budget=3, window_seconds=60, backoff_seconds=0.1, backoff_max_seconds=5)
    assert [budget.crashed(now) for now in (0.0, 1.0, 2.0)] == [0.1, 0.2, 0.4]
    assert budget.crashed(now=3.0) is None


def test_old_restarts_leave_the_window_and_the_backoff_resets() -> None:
    budget = RestartBudget(budget=2, window_seconds=10, backoff_seconds=0.1, backoff_max_seconds=5)
    assert budget.crashed(0.0) == 0.1
    assert budget.crashed(5.0) == 0.2
    assert budget.crashed(10.5) == 0.2  # the crash at 0 has left the window; the one at 5 has not
    assert budget.crashed(14.0) is None
    assert budget.crashed(30.0) == 0.1


def test_a_huge_budget_does_not_overflow_the_backoff() -> None:
    budget = RestartBudget(budget=10_000, window_seconds=1e9, backoff_seconds=0.1, backoff_max_seconds=5)
    delays = [budget.crashed(float(t)) for t in range(2000)]
    assert delays[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    assert set(delays[6:]) == {5}


def test_last_error_is_one_redacted_line_of_bounded_length() -> None:
    text = describe_error(ValueError("cannot reach amqp://guest:secret@rabbit:5672/\nsecond line"))
    assert text == "ValueError: cannot reach amqp://***@rabbit:5672/ second line"
    assert len(describe_error(RuntimeError("x" * 5000))) == 300
    assert describe_error(KeyError()) == "KeyError"


# --- real actors -------------------------------------------------------------------------------------


class GiveUps:
    def __init__(self) -> None:
        self.calls: list[tuple[str, BaseException | None]] = []

    def __call__(self, name: str, exc: BaseException | None) -> None:
        self.calls.append((name, exc))


@pytest.fixture
def give_ups() -> GiveUps:
    return GiveUps()


@pytest.fixture
def supervisor(give_ups: GiveUps) -> Iterator[Supervisor]:
    supervisor = Supervisor(FAST, HealthBoard(stuck_after_seconds=5), on_give_up=give_ups)
    try:
        yield supervisor
    finally:
        supervisor.stop_all(timeout=5)
        pykka.ActorRegistry.stop_all(timeout=5)


def status(supervisor: Supervisor, name: str) -> ActorStatus:
    return next(s for s in supervisor.snapshot() if s.name == name)


def is_running_after(supervisor: Supervisor, name: str, restarts: int) -> bool:
    current = status(supervisor, name)
    return current.state == "running" and current.restarts == restarts


def add_recorder(supervisor: Supervisor, name: str, journal: Journal, **kwargs: Any) -> Any:
    return supervisor.add(name, lambda reporter: RecorderActor.start(reporter, journal, **kwargs))


def test_crash_in_a_handler_restarts_a_fresh_instance_keeping_every_tell_in_order(
    supervisor: Supervisor,
) -> None:
    # Given two running actors
    journal, other_journal = Journal(), Journal()
    worker = add_recorder(supervisor, "worker", journal)
    other = add_recorder(supervisor, "other", other_journal)
    supervisor.start_all(timeout=5)
    for value in range(50):
        worker.tell(Record(value))

    # When the worker crashes with tells queued behind the crash, and more arrive while it restarts
    gate = threading.Event()
    worker.tell(Crash(gate))
    for value in range(50, 60):
        worker.tell(Record(value))  # waiting in the dying instance's inbox
    gate.set()
    wait_until(lambda: status(supervisor, "worker").state != "running", what="the crash to be seen")
    for value in range(60, 70):
        worker.tell(Record(value))  # buffered by the handle (or delivered if already back)
        other.tell(Record(value))
    assert other.ask(Count(), timeout=2) == 10  # the other actor kept working meanwhile
    wait_until(lambda: is_running_after(supervisor, "worker", 1), what="the worker to run again")
    for value in range(70, 80):
        worker.tell(Record(value))

    # Then nothing was lost, the order held, and a new instance took over after the crash
    wait_until(lambda: len(journal.values()) == 80, what="80 values recorded")
    assert journal.values() == list(range(80))
    assert {instance for instance, value in journal.entries if value < 50} == {1}
    assert {instance for instance, value in journal.entries if value >= 50} == {2}
    assert status(supervisor, "worker").last_error == "RuntimeError: instance 1 crashed on purpose"
    assert status(supervisor, "other").restarts == 0


def test_crash_in_on_start_is_seen_and_restarted(supervisor: Supervisor) -> None:
    journal = Journal()
    worker = add_recorder(supervisor, "worker", journal)
    supervisor.start_all(timeout=5)

    journal.failing_starts = 2  # the next two instances die in on_start
    worker.tell(Crash())
    worker.tell(Record(1))

    wait_until(lambda: is_running_after(supervisor, "worker", 3), what="the third restart to run")
    wait_until(lambda: journal.values() == [1], what="the message told during the restarts")
    assert [instance for instance, _ in journal.entries] == [4]
    error = status(supervisor, "worker").last_error
    assert error == "RuntimeError: instance 3 cannot start: redis://***@cache:6379 down"


def test_an_instance_that_dies_without_reporting_is_seen_by_the_monitor(supervisor: Supervisor) -> None:
    journal = Journal()
    add_recorder(supervisor, "worker", journal)
    supervisor.start_all(timeout=5)

    journal.refs[0].stop()  # not through the supervisor: no hook reports it

    wait_until(lambda: is_running_after(supervisor, "worker", 1), what="a restart after the silent stop")
    assert status(supervisor, "worker").last_error == UNEXPECTED_STOP
    assert len(journal.refs) == 2


def test_exceeding_the_restart_budget_fails_the_actor_and_gives_up_once(give_ups: GiveUps) -> None:
    config = msgspec.structs.replace(FAST, restart_budget=2)
    supervisor = Supervisor(config, HealthBoard(stuck_after_seconds=5), on_give_up=give_ups)
    try:
        journal = Journal()
        worker = add_recorder(supervisor, "worker", journal)
        supervisor.start_all(timeout=5)
        for restarts in (1, 2):
            worker.tell(Crash())
            wait_until(partial(is_running_after, supervisor, "worker", restarts), what=f"restart {restarts}")

        worker.tell(Crash())

        wait_until(lambda: give_ups.calls, what="on_give_up")
        assert status(supervisor, "worker").state == "failed"
        assert [(name, str(exc)) for name, exc in give_ups.calls] == [
            ("worker", "instance 3 crashed on purpose")
        ]
        with pytest.raises(SupervisionError, match="worker is failed"):
            worker.tell(Record(1))
        time.sleep(3 * FAST.ping_interval_seconds)  # a few monitor rounds: it must not be called again
        assert len(give_ups.calls) == 1
        assert len(journal.refs) == 3
    finally:
        supervisor.stop_all(timeout=5)


def test_ask_answers_and_reports_a_restarting_or_silent_actor_as_supervision_error(
    give_ups: GiveUps,
) -> None:
    config = msgspec.structs.replace(FAST, restart_backoff_seconds=1.0, restart_backoff_max_seconds=1.0)
    supervisor = Supervisor(config, HealthBoard(stuck_after_seconds=5), on_give_up=give_ups)
    try:
        journal = Journal()
        worker = add_recorder(supervisor, "worker", journal)
        supervisor.start_all(timeout=5)
        worker.tell(Record(7))
        assert worker.ask(Count(), timeout=2) == 1

        release = threading.Event()
        worker.tell(Block(release))
        with pytest.raises(SupervisionError, match=r"did not answer within 0.1 s"):
            worker.ask(Count(), timeout=0.1)
        release.set()

        worker.tell(Crash())
        wait_until(lambda: status(supervisor, "worker").state == "restarting", what="restarting")
        with pytest.raises(SupervisionError, match="worker is restarting"):
            worker.ask(Count(), timeout=2)
    finally:
        supervisor.stop_all(timeout=5)


def test_tells_before_the_start_are_buffered_up_to_the_bound(give_ups: GiveUps) -> None:
    config = msgspec.structs.replace(FAST, tell_buffer=3)
    supervisor = Supervisor(config, HealthBoard(stuck_after_seconds=5), on_give_up=give_ups)
    try:
        journal = Journal()
        worker = add_recorder(supervisor, "worker", journal)
        for value in range(3):
            worker.tell(Record(value))
        with pytest.raises(SupervisionError, match="3 messages already wait"):
            worker.tell(Record(3))

        supervisor.start_all(timeout=5)

        wait_until(lambda: journal.values() == [0, 1, 2], what="the buffered tells")
    finally:
        supervisor.stop_all(timeout=5)


def test_start_all_follows_dependencies_and_stop_all_reverses_them(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    journals = {name: Journal() for name in ("listener", "validator", "publisher")}
    started: list[str] = []

    def factory(name: str) -> Any:
        def start(reporter: Any) -> Any:
            started.append(name)
            return RecorderActor.start(reporter, journals[name])

        return start

    supervisor.add("listener", factory("listener"), depends_on=["validator"])
    supervisor.add("validator", factory("validator"), depends_on=["publisher"])
    supervisor.add("publisher", factory("publisher"))

    supervisor.start_all(timeout=5)
    assert started == ["publisher", "validator", "listener"]
    assert [s.state for s in supervisor.snapshot()] == ["running"] * 3

    supervisor.stop_all(timeout=5)
    assert [s.state for s in supervisor.snapshot()] == ["stopped"] * 3
    assert all(journal.stops == [1] for journal in journals.values())
    with caplog.at_level(logging.WARNING):
        supervisor.handle("listener").tell(Record(1))  # during shutdown: dropped, not raised in the sender
    assert "listener is stopped; dropped a Record sent to it during shutdown" in caplog.text
    assert journals["listener"].entries == []


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, "circular dependency"),
        ({"a": ["nope"], "b": []}, "depends on unknown actor 'nope'"),
    ],
)
def test_bad_dependencies_are_refused_before_anything_starts(
    supervisor: Supervisor, edges: dict[str, list[str]], message: str
) -> None:
    journal = Journal()
    for name, depends_on in edges.items():
        supervisor.add(name, lambda reporter: RecorderActor.start(reporter, journal), depends_on=depends_on)
    with pytest.raises(SupervisionError, match=message):
        supervisor.start_all(timeout=5)
    assert journal.refs == []


def test_start_all_names_the_actor_that_cannot_start(supervisor: Supervisor) -> None:
    add_recorder(supervisor, "fine", Journal())
    add_recorder(supervisor, "broken", Journal(failing_starts=1))
    with pytest.raises(
        SupervisionError, match="actor broken could not be started: RuntimeError: instance 1 cannot start"
    ):
        supervisor.start_all(timeout=5)
    assert status(supervisor, "fine").state == "running"


def test_names_are_unique_and_handles_are_looked_up_by_name(supervisor: Supervisor) -> None:
    handle = add_recorder(supervisor, "worker", Journal())
    assert supervisor.handle("worker") is handle
    with pytest.raises(SupervisionError, match="already added"):
        add_recorder(supervisor, "worker", Journal())
    with pytest.raises(SupervisionError, match="no actor named 'missing'"):
        supervisor.handle("missing")


def test_drain_waits_for_each_actor_until_the_deadline(supervisor: Supervisor) -> None:
    quick, slow = Journal(), Journal()
    add_recorder(supervisor, "quick", quick, drain_delay=0.05)
    add_recorder(supervisor, "slow", slow, drain_delay=5.0)
    add_recorder(supervisor, "plain", Journal())  # no drain hook: answers at once
    supervisor.start_all(timeout=5)

    started = time.monotonic()
    drained = supervisor.drain(started + 1.0)

    assert drained is False  # "slow" needs 5 s
    assert 0.9 < time.monotonic() - started < 3.0
    assert quick.drains == slow.drains == [pytest.approx(started + 1.0)]


def test_drain_reports_success_when_every_actor_finishes_in_time(supervisor: Supervisor) -> None:
    add_recorder(supervisor, "quick", Journal(), drain_delay=0.05)
    add_recorder(supervisor, "plain", Journal())
    supervisor.start_all(timeout=5)

    started = time.monotonic()
    assert supervisor.drain(started + 5.0) is True
    assert time.monotonic() - started < 1.0


def test_a_standalone_actor_answers_pings_and_records_its_crash() -> None:
    reporter = StandaloneReporter()
    ref = RecorderActor.start(reporter, Journal())
    try:
        assert ref.ask(Ping(), timeout=2) == PONG
        ref.tell(Crash())
        wait_until(lambda: not ref.is_alive(), what="the crash")
        assert [str(e) for e in reporter.failures] == ["instance 1 crashed on purpose"]
    finally:
        pykka.ActorRegistry.stop_all(timeout=5)


def test_tells_left_behind_a_stop_reach_the_next_instance_in_order(supervisor: Supervisor) -> None:
    journal = Journal()
    worker = add_recorder(supervisor, "worker", journal)
    supervisor.start_all(timeout=5)
    release = threading.Event()
    worker.tell(Block(release))
    journal.refs[0].stop(block=False)  # queued behind the Block, ahead of what follows
    for value in range(5):
        worker.tell(Record(value))  # left in the inbox when instance 1 stops

    release.set()

    wait_until(lambda: is_running_after(supervisor, "worker", 1), what="a restart after the stop")
    wait_until(lambda: len(journal.values()) == 5, what="the tells left behind")
    assert journal.entries == [(2, value) for value in range(5)]


def test_an_ask_waiting_behind_a_crash_fails_with_actor_dead_error(supervisor: Supervisor) -> None:
    journal = Journal()
    worker = add_recorder(supervisor, "worker", journal)
    supervisor.start_all(timeout=5)
    gate = threading.Event()
    worker.tell(Crash(gate))
    waiting = journal.refs[0].ask(Count(), block=False)  # in the inbox behind the crash

    gate.set()

    with pytest.raises(pykka.ActorDeadError):
        waiting.get(timeout=5)
    wait_until(lambda: is_running_after(supervisor, "worker", 1), what="the restart")
    assert worker.ask(Count(), timeout=2) == 0


def test_tell_later_uses_the_one_scheduler_thread_which_stop_all_ends(supervisor: Supervisor) -> None:
    journal = Journal()
    worker = add_recorder(supervisor, "worker", journal)
    supervisor.start_all(timeout=5)
    threads_before = threading.active_count()

    worker.tell(Later(0.02, 1000, cancel=True))
    for value in range(10):
        worker.tell(Later(0.01 * value, value))
    worker.tell(Later(0.2, 99))  # due after every other one

    wait_until(lambda: 99 in journal.values(), what="the delayed tells")
    assert journal.values() == [*range(10), 99]  # the cancelled one never came, the rest in due order
    assert threading.active_count() <= threads_before + 1
    assert [thread.name for thread in threading.enumerate()].count("tell-later") == 1

    supervisor.stop_all(timeout=5)

    assert "tell-later" not in [thread.name for thread in threading.enumerate()]


def test_a_delayed_tell_is_not_given_to_the_next_instance(supervisor: Supervisor) -> None:
    journal = Journal()
    worker = add_recorder(supervisor, "worker", journal)
    supervisor.start_all(timeout=5)
    worker.tell(Later(0.3, 1))  # scheduled by instance 1, due after its crash
    worker.tell(Crash())
    wait_until(lambda: is_running_after(supervisor, "worker", 1), what="the restart")
    worker.tell(Later(0.4, 2))  # instance 2's own, due after instance 1's

    wait_until(lambda: journal.values() == [2], what="instance 2's delayed tell")
    assert journal.entries == [(2, 2)]
