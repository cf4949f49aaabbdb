"""The one backoff policy: exponential with a cap, and optional jitter.

Used for reconnecting to the broker and to Redis (full jitter, so restarted processes do not all
reconnect at the same instant), for retrying a throttled launch (half of each delay jittered: it
must wait at least half the ceiling, as the throttling asked) and for restarting a crashed actor (no
jitter: one process, one actor, the delay is shown in the log).

The n-th delay (``n`` counted from 0) has the ceiling ``min(cap, base * 2**n)``; a ``jitter`` share of
it is random: the delay is uniform in ``[ceiling * (1 - jitter), ceiling]``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

#: Doubling stops here, so a huge failure count cannot overflow the arithmetic (2**62 times any
#: sensible base is far above any cap).
MAX_DOUBLINGS: Final = 62
#: The defaults: what reconnecting to the broker or to Redis uses (``cap_seconds`` comes from the config).
DEFAULT_BASE_SECONDS: Final = 0.5
DEFAULT_CAP_SECONDS: Final = 30.0
#: ``jitter`` values with a name: the whole delay is random, half of it is, none of it is.
FULL_JITTER: Final = 1.0
HALF_JITTER: Final = 0.5
NO_JITTER: Final = 0.0


class Backoff:
    """Exponential backoff with a cap and optional jitter; it can also count failures itself.

    Stateless use: :meth:`delay` of the n-th retry. Stateful use (a reconnection loop):
    :meth:`next_delay` after each failure, :meth:`reset` once it works again.

    Args:
        base_seconds: ceiling of the first delay.
        cap_seconds: ceiling of any delay.
        jitter: the random share of each delay, from 0 (none: the delay is the ceiling) to 1 (full
            jitter: uniform in ``[0, ceiling)``).
        rng: returns a float in ``[0, 1)``; injectable so tests are deterministic.

    Raises:
        ValueError: a negative base or cap, or ``jitter`` outside ``[0, 1]``.
    """

    def __init__(
        self,
        base_seconds: float = DEFAULT_BASE_SECONDS,
        cap_seconds: float = DEFAULT_CAP_SECONDS,
        *,
        jitter: float = FULL_JITTER,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base_seconds < 0 or cap_seconds < 0:
            raise ValueError(f"backoff base and cap must not be negative (got {base_seconds}, {cap_seconds})")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"backoff jitter is a share of the delay, from 0 to 1 (got {jitter})")
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self.jitter = jitter
        self._rng = rng
        self._failures = 0

    def ceiling(self, n: int | None = None) -> float:
        """The upper bound of the ``n``-th delay (0-based; default: the next one :meth:`next_delay` gives)."""
        doublings = self._failures if n is None else n
        return min(self.cap_seconds, self.base_seconds * 2.0 ** min(max(doublings, 0), MAX_DOUBLINGS))

    def delay(self, n: int) -> float:
        """The ``n``-th delay (0-based), jittered as configured; does not count a failure."""
        ceiling = self.ceiling(n)
        if self.jitter == NO_JITTER:
            return ceiling
        return ceiling * ((1.0 - self.jitter) + self.jitter * self._rng())

    @property
    def failures(self) -> int:
        """Failures counted by :meth:`next_delay` since the last :meth:`reset`."""
        return self._failures

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        delay = self.delay(self._failures)
        self._failures += 1
        return delay

    def reset(self) -> None:
        """It works again: the next failure starts from the smallest delay."""
        self._failures = 0
