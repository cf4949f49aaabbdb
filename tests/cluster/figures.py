"""What a node kill cost, from the /health samples and the terminal events: plain functions.

- :func:`back_on_live_nodes`: how long after the kill a process answered 200 with none of its broker
  connections on the killed node (0 when none was on it and it never faltered).
- :func:`unhealthy_outside` : the 503 answers that no kill explains (outside every kill's window).
- :func:`throughput_recovery`: the rate of terminal events before the kill, its lowest after it, and
  how long after the kill the rate over a window was back to a share of the rate before.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Final

from .health_watch import HealthSample

#: The rate before a kill is counted over this long.
RATE_BEFORE_SECONDS: Final = 5.0
#: After it, over sliding windows this long.
RATE_WINDOW_SECONDS: Final = 3.0
#: Throughput counts as recovered when a window reaches this share of the pre-fault rate.
RECOVERED_SHARE: Final = 0.9
STEP_SECONDS: Final = 0.25


@dataclasses.dataclass(frozen=True)
class Kill:
    """One node killed: which, when (monotonic and wall clock), and what was on it."""

    node: str
    endpoint: str
    at: float
    wall: float
    #: Process -> its connections (``broker``, ``status.amqp``) that were on the node.
    connections: dict[str, tuple[str, ...]]
    execute_leader_was_here: bool


def back_on_live_nodes(samples: Sequence[HealthSample], kill: Kill) -> float | None:
    """Seconds from ``kill`` to the process's first 200 with no connection on the killed node."""
    for sample in samples:
        if sample.at < kill.at:
            continue
        if sample.code == 200 and kill.endpoint not in sample.nodes.values():
            return sample.at - kill.at
    return None


def unavailable_seconds(samples: Sequence[HealthSample], kill: Kill, window: float) -> float:
    """How long, within ``window`` seconds after ``kill``, the process answered 503 (sample spans)."""
    total = 0.0
    inside = [s for s in samples if kill.at <= s.at <= kill.at + window]
    for sample, following in itertools.pairwise(inside):
        if sample.code == 503:
            total += following.at - sample.at
    return total


def unhealthy_outside(samples: Sequence[HealthSample], kills: Sequence[Kill], window: float) -> list[str]:
    """The 503s (draining aside) outside ``[kill, kill + window]`` of every kill, described."""
    found = []
    for sample in samples:
        if sample.code != 503 or sample.draining:
            continue
        if any(kill.at <= sample.at <= kill.at + window for kill in kills):
            continue
        found.append(f"process {sample.process} at {sample.at:.1f}: {'; '.join(sample.reasons)}")
    return found


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Terminal events per second around a kill."""

    #: Over the RATE_BEFORE_SECONDS before the kill.
    before: float
    #: The lowest rate of a window after the kill, and when that window started (seconds after it).
    lowest: float
    lowest_at: float
    #: Seconds from the kill to the end of the first window after the lowest one whose rate reached
    #: RECOVERED_SHARE of ``before`` (0: no window fell below it; None: none reached it again).
    recovered_after: float | None


def _rate(times: Sequence[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / (end - start)


def throughput_recovery(ends: Sequence[float], kill_wall: float, until: float, horizon: float) -> Throughput:
    """The rate of terminal events before ``kill_wall``, its dip after it, and its recovery.

    Args:
        ends: wall-clock times of terminal events.
        kill_wall: when the node was killed (wall clock).
        until: the end of the backlog (wall clock): no window reaches past it, since the rate falls
            there for want of work, not because of the kill.
        horizon: no window starts later than this many seconds after the kill.
    """
    before = _rate(ends, kill_wall - RATE_BEFORE_SECONDS, kill_wall)
    windows = []
    offset = 0.0
    while offset <= horizon and kill_wall + offset + RATE_WINDOW_SECONDS <= until:
        start = kill_wall + offset
        windows.append((offset, _rate(ends, start, start + RATE_WINDOW_SECONDS)))
        offset += STEP_SECONDS
    if not windows:
        return Throughput(before=before, lowest=before, lowest_at=0.0, recovered_after=None)
    lowest_at, lowest = min(windows, key=lambda w: w[1])
    target = RECOVERED_SHARE * before
    if lowest >= target:
        return Throughput(before=before, lowest=lowest, lowest_at=lowest_at, recovered_after=0.0)
    recovered = next((o + RATE_WINDOW_SECONDS for o, r in windows if o > lowest_at and r >= target), None)
    return Throughput(before=before, lowest=lowest, lowest_at=lowest_at, recovered_after=recovered)
