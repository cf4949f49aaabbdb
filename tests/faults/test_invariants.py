"""The fault scenarios' checker catches each broken invariant, and names it (no services needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.events import make_event
from orchestrator.messages import Status

from . import recording_worker
from .invariants import (
    CAP,
    CLEAN_SHUTDOWN,
    DEAD_LETTERS,
    NO_LEAKED_SLOT,
    NOTHING_AFTER_TERMINAL,
    ONCE_PER_ATTEMPT,
    ONE_TERMINAL,
    OUTCOME,
    QUEUES_EMPTY,
    RECOVERY,
    WORKERS_ENDED,
    Arrival,
    Observation,
    WorkerRun,
    max_overlap,
    read_worker_runs,
    violations,
)

OK = "j0001-ok"
RETRIED = "j0007-f1"


def arrivals(*events: tuple[str, Status, int]) -> list[Arrival]:
    return [
        Arrival(index=i, at=float(i), event=make_event(job, "build", status, attempt))
        for i, (job, status, attempt) in enumerate(events)
    ]


def clean() -> Observation:
    """Two jobs that went right: one succeeded at once, one after a retry."""
    return Observation(
        expected={OK: frozenset({"succeeded"}), RETRIED: frozenset({"succeeded"})},
        job_type="build",
        arrivals=arrivals(
            (OK, "dispatched", 1),
            (RETRIED, "dispatched", 1),
            (OK, "succeeded", 1),
            (RETRIED, "retrying", 1),
            (RETRIED, "dispatched", 2),
            (RETRIED, "succeeded", 2),
        ),
        runs=[
            WorkerRun(OK, 1, 10, 0.0, 1, ended=1.0, exit_code=0),
            WorkerRun(RETRIED, 1, 11, 0.5, 1, ended=1.5, exit_code=3),
            WorkerRun(RETRIED, 2, 12, 3.0, 2, ended=4.0, exit_code=0),
        ],
        cap=2,
    )


def broken(observation: Observation) -> list[str]:
    return [v.invariant for v in violations(observation)]


def test_a_clean_run_breaks_nothing() -> None:
    assert broken(clean()) == []


def test_a_missing_or_second_terminal_event_is_caught() -> None:
    observation = clean()
    missing = dataclasses.replace(observation, arrivals=observation.arrivals[:-1])
    assert broken(missing) == [ONE_TERMINAL]
    second = dataclasses.replace(observation, arrivals=[*observation.arrivals, *arrivals((OK, "stopped", 1))])
    found = violations(second)
    assert [v.invariant for v in found][:1] == [ONE_TERMINAL]
    assert "succeeded@1+stopped@1" in str(found[0])


def test_a_repeated_event_is_a_duplicate_not_a_second_ending() -> None:
    observation = clean()
    again = dataclasses.replace(observation, arrivals=[*observation.arrivals, observation.arrivals[2]])
    assert broken(again) == []


def test_an_event_after_the_terminal_one_is_caught_by_arrival_and_by_seq() -> None:
    observation = clean()
    stale = dataclasses.replace(observation, arrivals=[*observation.arrivals, *arrivals((OK, "queued", 1))])
    assert broken(stale) == [NOTHING_AFTER_TERMINAL]
    later_attempt = dataclasses.replace(
        observation, arrivals=[*arrivals((OK, "dispatched", 2)), *observation.arrivals]
    )
    assert broken(later_attempt) == [NOTHING_AFTER_TERMINAL]


def test_an_attempt_launched_twice_is_caught() -> None:
    observation = clean()
    twice = dataclasses.replace(
        observation, runs=[*observation.runs, WorkerRun(OK, 1, 13, 5.0, 2, ended=6.0, exit_code=0)]
    )
    assert broken(twice) == [ONCE_PER_ATTEMPT]


def test_a_wrong_outcome_is_caught() -> None:
    observation = clean()
    assert broken(
        dataclasses.replace(observation, expected={**observation.expected, OK: frozenset({"failed"})})
    ) == [OUTCOME]


def test_more_workers_at_once_than_the_cap_is_caught() -> None:
    observation = clean()
    assert broken(dataclasses.replace(observation, cap=1)) == [CAP]
    assert max_overlap([(0, 1), (1, 2)]) == (1, 0), "one ending as another starts is not an overlap"


def test_a_worker_without_an_end_is_caught() -> None:
    observation = clean()
    orphan = WorkerRun(OK, 2, 14, 7.0, 1)
    assert broken(dataclasses.replace(observation, runs=[*observation.runs, orphan])) == [WORKERS_ENDED]


def test_leaked_slots_left_queues_dead_letters_recovery_and_shutdown_are_caught() -> None:
    observation = clean()
    assert broken(dataclasses.replace(observation, live_slots={OK: "vm-1-abc"})) == [NO_LEAKED_SLOT]
    assert broken(
        dataclasses.replace(observation, process_problems={"a": "orchestrator_jobs_running = 1"})
    ) == [NO_LEAKED_SLOT]
    assert broken(dataclasses.replace(observation, queue_depths={"x.execute": 3})) == [QUEUES_EMPTY]
    assert broken(dataclasses.replace(observation, dead_lettered=[OK])) == [DEAD_LETTERS]
    assert broken(dataclasses.replace(observation, expected_dead=frozenset({RETRIED}))) == [DEAD_LETTERS]
    assert broken(dataclasses.replace(observation, recovery_problems=["process a is not healthy"])) == [
        RECOVERY
    ]
    assert broken(dataclasses.replace(observation, shutdown_problems=["process a exited with 1"])) == [
        CLEAN_SHUTDOWN
    ]


def test_worker_records_are_read_back(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.write_text(
        "start j0001-ok 1 10 1.5 99\nstart j0007-f1 1 11 1.6 98\nend j0001-ok 1 10 2.5 0\ntorn li\n"
    )
    runs = read_worker_runs(records)
    assert runs == [
        WorkerRun("j0001-ok", 1, 10, 1.5, 99, ended=2.5, exit_code=0),
        WorkerRun("j0007-f1", 1, 11, 1.6, 98),
    ]


def test_what_a_job_does_is_read_from_its_id() -> None:
    assert recording_worker.behaviour("j0007-f1", 1)[1] != 0
    assert recording_worker.behaviour("j0007-f1", 2)[1] == 0
    assert recording_worker.expected_outcome("j0013-fa", 3) == "failed"
    assert recording_worker.expected_outcome("j0007-f1", 3) == "succeeded"
    assert 0.2 <= recording_worker.behaviour("j0042-ok", 1)[0] <= 1.5
