"""Stop sweeps: every waiting stop shares one sweep, sweeps never overlap, one per interval at most."""

from __future__ import annotations

import pytest

from orchestrator.stop_sweeps import STOP_SWEEP_INTERVAL_SECONDS, StopSweeps

INTERVAL = 5.0


def test_the_first_stop_is_swept_at_once() -> None:
    sweeps: StopSweeps[str] = StopSweeps(INTERVAL)
    assert sweeps.due_in(0.0) is None, "nothing waits: no sweep to schedule"

    sweeps.add("stop-1")

    assert sweeps.due_in(100.0) == 0.0
    assert sweeps.start(100.0) == ["stop-1"]
    assert (sweeps.started, sweeps.waiting, sweeps.sweeping) == (1, 0, True)


def test_stops_arriving_during_a_sweep_wait_for_the_next_one_and_share_it() -> None:
    sweeps: StopSweeps[int] = StopSweeps(INTERVAL)
    sweeps.add(0)
    sweeps.start(100.0)

    for n in range(1, 1000):
        sweeps.add(n)
        assert sweeps.start(100.0 + n / 1000) == [], "no second sweep while one runs"
        assert sweeps.due_in(100.0 + n / 1000) is None, "the running sweep's end schedules the next"
    sweeps.finish(102.0)

    assert sweeps.due_in(102.0) == INTERVAL
    assert sweeps.start(106.9) == [], "not before the interval has passed since the last sweep ended"
    assert sweeps.due_in(106.0) == pytest.approx(1.0)
    batch = sweeps.start(107.0)
    assert batch == list(range(1, 1000)), "one sweep answers every stop that waited"
    assert sweeps.started == 2


def test_a_flood_costs_one_sweep_per_interval() -> None:
    # Given stops arriving every millisecond for a minute, and sweeps that take half a second
    sweeps: StopSweeps[int] = StopSweeps(INTERVAL)
    answered = 0
    running_until: float | None = None
    for tick in range(60_000):
        now = tick / 1000
        sweeps.add(tick)
        if running_until is not None and now >= running_until:
            sweeps.finish(now)
            running_until = None
        batch = sweeps.start(now)
        if batch:
            answered += len(batch)
            running_until = now + 0.5

    # Then a sweep started at most once per interval (plus its own duration), not once per stop
    assert sweeps.started <= 60 / INTERVAL + 1
    assert answered + sweeps.waiting == 60_000, "every stop is answered by a sweep or still waits for one"


def test_the_default_interval_and_no_negative_one() -> None:
    assert StopSweeps[str]().interval == STOP_SWEEP_INTERVAL_SECONDS > 0
    with pytest.raises(ValueError, match="negative"):
        StopSweeps[str](-1)
