"""The per-job rate caps' token bucket: a second's burst, and no false burst after a pause."""

from __future__ import annotations

from orchestrator.buildlogs.pump import _Bucket


def test_a_burst_of_more_than_a_seconds_worth_is_cut() -> None:
    bucket = _Bucket(100, now=0.0)
    taken = sum(bucket.take(1, 0.0) for _ in range(1000))
    assert taken == 100


def test_lines_read_after_a_pause_at_the_allowed_rate_are_not_a_burst() -> None:
    # Given a task read at t=0, then not again for 3 s (the pump was busy), having written 100 lines/s
    bucket = _Bucket(100, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(100))
    # Then its 300 lines of those 3 s all pass, and the 301st does not
    assert all(bucket.take(1, 3.0) for _ in range(300))
    assert not bucket.take(1, 3.0)


def test_after_a_pause_the_bucket_shrinks_back_to_one_second() -> None:
    bucket = _Bucket(100, now=0.0)
    bucket.take(0, 10.0)  # a long pause: up to 10 s of credit
    assert bucket.take(1, 10.5)  # half a second later: at most a second's worth is left
    assert sum(bucket.take(1, 10.5) for _ in range(1000)) == 99
