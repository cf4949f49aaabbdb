"""Local concurrency slots: ``limits.max_concurrent`` per process, pure logic, no I/O."""

from __future__ import annotations

import threading


class LocalSlots:
    """``limit`` slots in this process. Pure logic, thread-safe, no I/O.

    Args:
        limit: how many deployments may hold a slot at once (``limits.max_concurrent``).
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be greater than 0 (got {limit})")
        self.limit = limit
        self._lock = threading.Lock()
        self._holders: set[str] = set()

    def try_acquire(self, deployment_id: str) -> bool:
        """Take a slot; True if ``deployment_id`` holds one now (already holding counts: no 2nd slot)."""
        with self._lock:
            if deployment_id in self._holders:
                return True
            if len(self._holders) >= self.limit:
                return False
            self._holders.add(deployment_id)
            return True

    def release(self, deployment_id: str) -> bool:
        """Give back the slot; False (and nothing freed) if ``deployment_id`` did not hold one."""
        with self._lock:
            if deployment_id not in self._holders:
                return False
            self._holders.remove(deployment_id)
            return True

    def held(self) -> int:
        """How many slots are held."""
        with self._lock:
            return len(self._holders)

    def holds_surely(self, deployment_id: str) -> bool:
        """Always: local slots have no lease to lapse."""
        return True

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a slot."""
        with self._lock:
            return frozenset(self._holders)

    def close(self) -> None:
        """Nothing to stop: local slots have no background work."""
