"""The per-job rate caps' token bucket: a bounded burst, and no false burst after a pause."""

from __future__ import annotations

from orchestrator.buildlogs.pump_task import RateBucket


def test_a_burst_of_more_than_the_allowed_seconds_is_cut() -> None:
    bucket = RateBucket(100, now=0.0, burst_seconds=10)
    taken = sum(bucket.take(1, 0.0) for _ in range(5000))
    assert taken == 1000


def test_lines_read_after_a_pause_at_the_allowed_rate_are_not_a_burst() -> None:
    # Given a task read at t=0, then not again for 30 s (the pump was busy), having written 100 lines/s
    bucket = RateBucket(100, now=0.0, burst_seconds=10)
    assert all(bucket.take(1, 0.0) for _ in range(1000))
    # Then its 3,000 lines of those 30 s all pass, and the next does not
    assert all(bucket.take(1, 30.0) for _ in range(3000))
    assert not bucket.take(1, 30.0)


def test_after_a_pause_the_bucket_shrinks_back_to_its_burst() -> None:
    bucket = RateBucket(100, now=0.0, burst_seconds=1)
    bucket.take(0, 10.0)  # a long pause: up to 10 s of credit
    assert bucket.take(1, 10.5)  # half a second later: at most the burst is left
    assert sum(bucket.take(1, 10.5) for _ in range(1000)) == 99
