"""Many threads acquiring and releasing slots at once, counting how many hold one at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable

from orchestrator.slots import SlotPool

HAMMER_THREADS = 8
HAMMER_ROUNDS = 2000


class PeakCounter:
    """Counts holders the way a caller sees them: +1 after a successful acquire, -1 before release."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.acquired = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.acquired += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


def hammer(pool: SlotPool, counter: PeakCounter, name: str, rounds: int, check: Callable[[], None]) -> None:
    """Acquire and release ``rounds`` times with deployment ids of this thread's own."""
    for i in range(rounds):
        deployment_id = f"{name}-{i % 3}"
        if pool.try_acquire(deployment_id):
            counter.enter()
            check()
            counter.leave()
            assert pool.release(deployment_id)


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as e:  # reported by the test thread below
                errors.append(e)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a hammering thread did not finish"
    if errors:
        raise errors[0]
