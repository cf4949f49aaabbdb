"""The restart policy of a supervised actor: how soon it may be restarted after a crash, and whether.

Pure bookkeeping (no threads, no clock of its own: the caller passes the time), one per supervised
actor, so it is tested without actors. The delay comes from :class:`~orchestrator.backoff.Backoff`,
the one backoff of the codebase, without jitter.
"""

from __future__ import annotations

from collections import deque

from orchestrator.backoff import NO_JITTER, Backoff
from orchestrator.config import SupervisionConfig

__all__ = ["RestartBudget"]


class RestartBudget:
    """How soon an actor may be restarted after a crash, and whether it may be at all.

    At most ``budget`` restarts within any ``window_seconds``; the n-th restart within the window
    waits ``backoff_seconds * 2**(n-1)``, capped at ``backoff_max_seconds`` (no jitter: the delay
    is the one the log announces).
    """

    def __init__(
        self, budget: int, window_seconds: float, backoff_seconds: float, backoff_max_seconds: float
    ) -> None:
        self._budget = budget
        self._window = window_seconds
        self._backoff = Backoff(backoff_seconds, backoff_max_seconds, jitter=NO_JITTER)
        self._restarts: deque[float] = deque()

    @classmethod
    def from_config(cls, config: SupervisionConfig) -> RestartBudget:
        """The budget the ``[supervision]`` config section describes."""
        return cls(
            config.restart_budget,
            config.restart_window_seconds,
            config.restart_backoff_seconds,
            config.restart_backoff_max_seconds,
        )

    def crashed(self, now: float) -> float | None:
        """Record a crash at ``now``: the delay before the restart, or None when the budget is spent."""
        while self._restarts and self._restarts[0] <= now - self._window:
            self._restarts.popleft()
        recent = len(self._restarts)
        if recent >= self._budget:
            return None
        self._restarts.append(now)
        return self._backoff.delay(recent)
