"""Log throttling: lines an outsider can multiply (one per rejected message) cannot flood the log."""

from __future__ import annotations

from orchestrator.logs import LogThrottle, suppressed_note


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_logged_then_the_rest_is_counted_and_told_with_the_next_line() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=3, interval_seconds=10.0, clock=clock)
    assert [throttle.allow() for _ in range(3)] == [(True, 0)] * 3
    assert [throttle.allow() for _ in range(5)] == [(False, 0)] * 5
    clock.now = 9.9
    assert throttle.allow() == (False, 0)
    clock.now = 10.0
    assert throttle.allow() == (True, 6), "the next window's first line tells how many were left out"
    assert throttle.allow() == (True, 0)


def test_the_note_says_how_many_lines_were_left_out() -> None:
    assert suppressed_note(0) == ""
    assert suppressed_note(42) == " (and 42 more like it not logged)"
