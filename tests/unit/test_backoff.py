"""The one backoff policy: exponential growth, the cap, the jitter share, and failure counting."""

from __future__ import annotations

import pytest

from orchestrator.backoff import FULL_JITTER, HALF_JITTER, NO_JITTER, Backoff


def test_without_jitter_the_delay_doubles_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 1.0, jitter=NO_JITTER, rng=lambda: pytest.fail("no jitter needs no random"))
    assert [backoff.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.mark.parametrize(
    ("jitter", "lowest", "highest"),
    [(FULL_JITTER, [0.0, 0.0, 0.0], [0.5, 1.0, 1.0]), (HALF_JITTER, [0.25, 0.5, 0.5], [0.5, 1.0, 1.0])],
)
def test_jitter_is_the_random_share_below_the_ceiling(
    jitter: float, lowest: list[float], highest: list[float]
) -> None:
    low = Backoff(0.5, 1.0, jitter=jitter, rng=lambda: 0.0)
    high = Backoff(0.5, 1.0, jitter=jitter, rng=lambda: 0.999999)
    assert [low.delay(n) for n in range(3)] == lowest
    assert [round(high.delay(n), 3) for n in range(3)] == highest


def test_a_huge_count_neither_overflows_nor_exceeds_the_cap() -> None:
    backoff = Backoff(0.1, 5.0, jitter=NO_JITTER)
    assert backoff.delay(10_000) == 5.0
    assert backoff.ceiling(-1) == 0.1  # a count below zero is the first delay


def test_next_delay_counts_failures_until_reset() -> None:
    backoff = Backoff(0.5, 4.0, rng=lambda: 0.999999)
    assert backoff.ceiling() == 0.5
    assert [round(backoff.next_delay(), 3) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.failures == 5
    backoff.reset()
    assert (backoff.failures, backoff.ceiling()) == (0, 0.5)


def test_defaults_are_the_reconnection_policy_full_jitter() -> None:
    backoff = Backoff(rng=lambda: 0.5)
    assert (backoff.base_seconds, backoff.cap_seconds, backoff.jitter) == (0.5, 30.0, FULL_JITTER)
    assert backoff.next_delay() == 0.25


@pytest.mark.parametrize(
    ("base", "cap", "jitter"), [(-1.0, 1.0, 0.0), (1.0, -1.0, 0.0), (1.0, 1.0, 1.5), (1.0, 1.0, -0.1)]
)
def test_nonsense_settings_are_refused(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap, jitter=jitter)
