"""When orphaned tasks are looked for, and how those claimed are taken in."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

from orchestrator.adoption import FULL_SCAN_EVERY_LEASES, Adopted, Adoption
from orchestrator.attempt_events import AttemptEvents
from orchestrator.commands import Hold
from orchestrator.errors import CoordinationError
from orchestrator.launch.base import TaskHandle
from orchestrator.messages import BuildJob
from orchestrator.reconcile import Orphan, Reconciler
from orchestrator.tracking import TaskTable

LEASE = 30.0
JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")


class FakeReconciler:
    """Finds the orphans it is given; ``lost`` says whether an owner lost its lease since last asked."""

    def __init__(self, orphans: list[Orphan], *, lost: bool = False, fails: Exception | None = None) -> None:
        self.orphans = orphans
        self.lost = lost
        self.fails = fails
        self.scans: list[frozenset[str]] = []

    def owners_lost(self) -> bool:
        return self.lost

    def scan(self, followed: frozenset[str]) -> list[Orphan]:
        if self.fails is not None:
            raise self.fails
        self.scans.append(followed)
        return self.orphans


class Setup:
    """An :class:`Adoption` with a clock the test moves and an executor it runs by hand."""

    def __init__(self, reconciler: FakeReconciler) -> None:
        self.now = 1000.0
        self.table = TaskTable()
        self.reconciler = reconciler
        self.held: list[Hold] = []
        self.told: list[object] = []
        self.submitted: list[Callable[[], None]] = []
        events = AttemptEvents(
            publish=lambda publish: None,
            durable=self.told.append,
            submit=lambda call, *args: call(*args),
            taken_elsewhere=lambda handles: set(),
            lease_seconds=LEASE,
            logs=None,
        )
        self.adoption = Adoption(
            lease_seconds=LEASE,
            table=self.table,
            reconciler=cast(Reconciler, reconciler),
            events=events,
            hold=self.held.append,
            submit=self.submitted.append,
            tell=self.told.append,
            clock=lambda: self.now,
        )

    def run_look(self) -> Adopted:
        """Run the look that was submitted, and hand its result back as the actor would."""
        [look] = self.submitted
        self.submitted.clear()
        look()
        adopted = self.told.pop()
        assert isinstance(adopted, Adopted)
        self.adoption.adopted(adopted.orphans)
        return adopted


def orphan(task_id: str) -> Orphan:
    handle = TaskHandle(
        launcher="fargate",
        task_id=task_id,
        deployment_id=f"dep-{task_id}",
        attempt=1,
        job_type="build",
        instance_id="i-dead",
        launched_at=time.time(),
        start_deadline=0.0,
        deadline=None,
    )
    return Orphan(handle=handle, job=JOB)


def test_the_look_at_start_scans_and_the_claimed_tasks_are_followed_with_their_slots() -> None:
    setup = Setup(FakeReconciler([orphan("a"), orphan("b")]))
    setup.table.add(orphan("followed").handle, JOB)

    setup.adoption.look_now()
    adopted = setup.run_look()

    assert setup.reconciler.scans == [frozenset({"followed"})]
    assert [o.handle.task_id for o in adopted.orphans] == ["a", "b"]
    assert setup.table.task_ids() == frozenset({"followed", "a", "b"})
    assert setup.held == [Hold("dep-a"), Hold("dep-b")]


def test_a_task_followed_already_is_not_held_twice() -> None:
    setup = Setup(FakeReconciler([orphan("a")]))
    setup.table.add(orphan("a").handle, JOB)

    setup.adoption.look_now()
    setup.run_look()

    assert setup.held == []


def test_looks_are_one_at_a_time_and_half_a_lease_apart() -> None:
    setup = Setup(FakeReconciler([], lost=True))
    setup.adoption.look_now()

    setup.now += LEASE
    setup.adoption.look_if_due()
    assert len(setup.submitted) == 1, "a look is under way"
    setup.run_look()
    setup.adoption.look_if_due()
    setup.run_look()

    setup.now += LEASE / 4
    setup.adoption.look_if_due()
    assert setup.submitted == [], "the last look started a quarter of a lease ago"

    setup.now += LEASE / 4
    setup.adoption.look_if_due()
    setup.run_look()
    assert len(setup.reconciler.scans) == 3, "an owner lost its lease: each look scans"


def test_a_look_scans_only_when_an_owner_lost_its_lease_or_the_last_scan_is_long_ago() -> None:
    setup = Setup(FakeReconciler([]))
    setup.adoption.look_now()
    setup.run_look()

    setup.now += LEASE
    setup.adoption.look_if_due()
    setup.run_look()
    assert len(setup.reconciler.scans) == 1, "no owner lost its lease"

    setup.now += LEASE * FULL_SCAN_EVERY_LEASES
    setup.adoption.look_if_due()
    setup.run_look()
    assert len(setup.reconciler.scans) == 2


def test_a_look_that_fails_still_ends_so_that_the_next_one_can_start() -> None:
    for failure in (CoordinationError("redis down"), RuntimeError("bug")):
        setup = Setup(FakeReconciler([orphan("a")], fails=failure))
        setup.adoption.look_now()

        assert setup.run_look().orphans == ()

        setup.now += LEASE
        setup.adoption.look_if_due()
        assert len(setup.submitted) == 1
