"""The stop rules, without a broker, Redis or clock."""

from __future__ import annotations

import pytest

from orchestrator.lifecycle.stops import (
    StopAnswer,
    TaskSeen,
    answer_stop,
    retry_cancelled,
    still_running,
    stopped_by_request,
)

HERE = TaskSeen("t-here", attempt=2, here=True)
ELSEWHERE = TaskSeen("t-else", attempt=2, here=False)
ENDED = TaskSeen("t-ended", attempt=1, here=False)


def test_live_tasks_are_stopped_here_and_elsewhere_and_their_ends_answer() -> None:
    assert answer_stop([HERE, ELSEWHERE], None) == StopAnswer(kind="stop_tasks", tasks=(HERE, ELSEWHERE))


def test_a_waiting_retry_is_answered_stopped_even_while_its_ended_task_is_still_listed() -> None:
    # (the race CI caught: the failed attempt's task still listed when its retry was recorded)
    assert answer_stop([ENDED], ("build", 1)) == StopAnswer(kind="stopped", job_type="build", attempt=1)


def test_a_stale_retry_record_does_not_hide_a_later_attempt_that_runs() -> None:
    assert answer_stop([ENDED, HERE], ("build", 1)) == StopAnswer(kind="stop_tasks", tasks=(HERE,))
    assert still_running([ENDED, HERE], 1) == [HERE]
    assert still_running([ENDED, HERE], None) == [ENDED, HERE]


def test_nothing_running_and_nothing_waiting_is_nothing_to_stop() -> None:
    assert answer_stop([], None) == StopAnswer(kind="nothing")


@pytest.mark.parametrize(
    ("stopped_at", "scheduled_ms", "cancelled"),
    [
        (None, 1_000, False),  # no stop
        (2.0, 1_000, True),  # stopped after the retry was scheduled
        (0.5, 1_000, False),  # a stop before it: that stop was for an earlier job
        (1.0, 1_000, True),  # at the same millisecond: cancelled
        (2.0, None, True),  # no readable schedule: any stop cancels it
        (2.0, "1000", True),
    ],
)
def test_a_retry_is_cancelled_by_a_stop_asked_after_it_was_scheduled(
    stopped_at: float | None, scheduled_ms: object, cancelled: bool
) -> None:
    assert retry_cancelled(stopped_at, scheduled_ms) is cancelled


def test_a_stop_applies_to_tasks_launched_before_it() -> None:
    assert stopped_by_request(10.0, launched_at=5.0)
    assert not stopped_by_request(4.0, launched_at=5.0)
    assert not stopped_by_request(None, launched_at=5.0)
