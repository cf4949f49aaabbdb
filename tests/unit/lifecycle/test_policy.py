"""The lifecycle core, exhaustively: no threads, brokers or clocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.lifecycle import (
    Attempt,
    Decision,
    Drop,
    Ending,
    Finish,
    LaunchConflict,
    LaunchDuplicate,
    LaunchFailed,
    Limits,
    Rejected,
    ReleaseSlot,
    RetryLater,
    TaskEnded,
    conclude,
    table,
)
from orchestrator.lifecycle.policy import CONFLICT_EVENT_ATTEMPT, STOPPED_ON_REQUEST

LIMITS = Limits(max_attempts=4, retry_delays=(10, 60), no_retry_exit_codes=frozenset({11, 12}))
DOC = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"


def decide(
    ending: Ending, attempt: int = 1, *, job_known: bool = True, limits: Limits = LIMITS
) -> tuple[Decision, ...]:
    return conclude(Attempt(job_type="build", attempt=attempt, job_known=job_known), limits, ending)


# --- the table -------------------------------------------------------------------------------------


def test_retries_follow_the_delay_tiers_and_the_last_tier_repeats_until_max_attempts() -> None:
    failed = TaskEnded(outcome="failed", exit_code=1, reason="exit 1")
    assert decide(failed, 1)[0] == RetryLater(next_attempt=2, delay_seconds=10, reason="exit 1", exit_code=1)
    assert decide(failed, 2)[0] == RetryLater(next_attempt=3, delay_seconds=60, reason="exit 1", exit_code=1)
    assert decide(failed, 3)[0] == RetryLater(next_attempt=4, delay_seconds=60, reason="exit 1", exit_code=1)
    final = decide(failed, 4)[0]
    assert isinstance(final, Finish)
    assert (final.status, final.attempt, final.dead_letter, final.reason_class) == (
        "failed",
        4,
        True,
        "failed",
    )
    assert final.given_up == "attempt 4 of 4 failed"


def test_success_and_stop_finish_without_a_dead_letter() -> None:
    assert decide(TaskEnded(outcome="succeeded", exit_code=0)) == (
        Finish(status="succeeded", attempt=1, exit_code=0),
        ReleaseSlot(),
    )
    assert decide(TaskEnded(outcome="stopped", reason="stopped on request"))[0] == Finish(
        status="stopped", attempt=1, reason="stopped on request"
    )


@pytest.mark.parametrize("outcome", ["failed", "timed_out"])
def test_a_failure_after_a_stop_was_asked_is_the_stop(outcome: str) -> None:
    ended = TaskEnded(outcome=outcome, exit_code=143, reason="killed", stop_requested=True)  # type: ignore[arg-type]
    assert decide(ended)[0] == Finish(status="stopped", attempt=1, reason=STOPPED_ON_REQUEST, exit_code=143)


def test_configured_exit_codes_and_permanent_launch_errors_are_not_retried() -> None:
    final = decide(TaskEnded(outcome="failed", exit_code=11, reason="exit 11"))[0]
    assert isinstance(final, Finish) and final.status == "failed"
    assert final.given_up == "exit code 11 is configured as not retryable"
    permanent = decide(LaunchFailed(kind="permanent", reason="AccessDenied", retryable=False))[0]
    assert isinstance(permanent, Finish)
    assert (permanent.reason, permanent.reason_class) == (
        "launch failed (permanent): AccessDenied",
        "launch_permanent",
    )


def test_a_throttled_launch_tries_the_same_attempt_again_without_an_event() -> None:
    decision = decide(LaunchFailed(kind="throttled", reason="Rate exceeded", counts_as_attempt=False), 4)[0]
    assert decision == RetryLater(
        next_attempt=4, delay_seconds=10, reason="launch failed (throttled): Rate exceeded", announce=False
    ), "even at the last attempt: nothing ran"


def test_a_task_adopted_without_its_job_fails_without_a_retry_or_dead_letter() -> None:
    final = decide(TaskEnded(outcome="failed", exit_code=1, reason="exit 1"), job_known=False)[0]
    assert isinstance(final, Finish) and (final.status, final.dead_letter) == ("failed", False)
    assert final.reason is not None and "not retried" in final.reason


def test_a_conflict_is_rejected_once_below_the_owners_events_and_a_duplicate_is_dropped() -> None:
    rejected = decide(LaunchConflict(reason="belongs to another job"), 2)[0]
    assert rejected == Finish(
        status="rejected",
        attempt=CONFLICT_EVENT_ATTEMPT,
        reason="belongs to another job",
        reason_class="conflict",
        dead_letter=True,
    )
    assert decide(LaunchDuplicate(reason="over")) == (Drop(reason="over"), ReleaseSlot())
    assert decide(LaunchDuplicate(reason="over", holds_slot=False)) == (Drop(reason="over"),)


def test_a_rejection_is_final_dead_lettered_and_holds_no_slot() -> None:
    assert decide(Rejected(reason="message: not JSON", reason_class="not_json"), 2) == (
        Finish(
            status="rejected",
            attempt=2,
            reason="message: not JSON",
            reason_class="not_json",
            dead_letter=True,
        ),
    )


# --- properties ------------------------------------------------------------------------------------

endings = st.one_of(
    st.builds(
        TaskEnded,
        outcome=st.sampled_from(["succeeded", "failed", "timed_out", "stopped"]),
        exit_code=st.one_of(st.none(), st.integers(0, 255)),
        reason=st.one_of(st.none(), st.text(max_size=5)),
        stop_requested=st.booleans(),
    ),
    st.builds(
        LaunchFailed,
        kind=st.sampled_from(["throttled", "capacity", "permanent"]),
        reason=st.text(max_size=5),
        retryable=st.booleans(),
        counts_as_attempt=st.booleans(),
    ),
    st.builds(LaunchConflict, reason=st.text(max_size=5)),
    st.builds(LaunchDuplicate, reason=st.text(max_size=5), holds_slot=st.booleans()),
    st.builds(Rejected, reason=st.text(max_size=5), reason_class=st.sampled_from(["schema", "poison"])),
)
limits = st.builds(
    Limits,
    max_attempts=st.integers(1, 6),
    retry_delays=st.lists(st.integers(1, 600), min_size=1, max_size=4).map(tuple),
    no_retry_exit_codes=st.frozensets(st.integers(0, 255), max_size=3),
)


@given(limits, st.integers(1, 6), st.booleans(), endings)
def test_every_ending_has_exactly_one_outcome_and_at_most_one_release(
    limit: Limits, attempt: int, job_known: bool, ending: Ending
) -> None:
    decisions = decide(ending, attempt, job_known=job_known, limits=limit)
    outcomes = [d for d in decisions if not isinstance(d, ReleaseSlot)]
    assert len(outcomes) == 1
    releases = sum(isinstance(d, ReleaseSlot) for d in decisions)
    holds_no_slot = isinstance(ending, Rejected) or (
        isinstance(ending, LaunchDuplicate) and not ending.holds_slot
    )
    assert releases == (0 if holds_no_slot else 1)
    [outcome] = outcomes
    if isinstance(outcome, RetryLater):
        assert job_known, "a job that cannot be rebuilt is never retried"
        assert outcome.next_attempt <= max(limit.max_attempts, attempt), "retries never exceed max_attempts"
        assert outcome.delay_seconds in limit.retry_delays
    if isinstance(outcome, Finish) and outcome.dead_letter:
        assert job_known or isinstance(ending, Rejected), "(a rejection dead-letters the raw body)"


#: What can end an attempt once its job was admitted (a rejection comes before any of it).
launched_endings = endings.filter(lambda ending: not isinstance(ending, Rejected))


@given(limits, st.lists(launched_endings, min_size=1, max_size=40))
def test_a_job_run_to_its_end_has_one_terminal_outcome_and_each_slot_is_released_once(
    limit: Limits, script: list[Ending]
) -> None:
    # Feed the core one attempt's ending after another, as the actors would, until it finishes.
    attempt = 1
    terminal: list[Finish] = []
    held = True  # this attempt's slot
    released = 0
    for scripted in script:
        ending: Ending = scripted
        if isinstance(scripted, LaunchDuplicate):
            ending = LaunchDuplicate(reason=scripted.reason, holds_slot=held)
        decisions = decide(ending, attempt, limits=limit)
        for decision in decisions:
            if isinstance(decision, ReleaseSlot):
                assert held, "a slot is released once"
                held = False
                released += 1
            elif isinstance(decision, Finish):
                terminal.append(decision)
            elif isinstance(decision, RetryLater):
                attempt = decision.next_attempt
        if terminal or any(isinstance(d, Drop) for d in decisions):
            break
        held = True  # the retry comes back and takes a slot again
    assert len(terminal) <= 1, "exactly one terminal outcome, never two"
    assert attempt <= limit.max_attempts
    assert released >= 1


def test_the_documented_lifecycle_table_is_the_cores() -> None:
    text = DOC.read_text()
    begin, end = text.index(table.BEGIN), text.index(table.END) + len(table.END)
    assert text[begin:end] == table.render(), (
        "docs/architecture.md drifted: python -m orchestrator.lifecycle.table"
    )
