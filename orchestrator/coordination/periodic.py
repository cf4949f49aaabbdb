"""A periodic call on a daemon thread: what keeps leases (instance, slots) renewed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)

#: Leases are renewed this many times per lease period, so one missed renewal does not lose them.
RENEWALS_PER_LEASE: Final = 3
#: A lease not renewed for this share of its period may have lapsed (the process stalled, or Redis was
#: away): what it guards is not counted on until a renewal reaches Redis again.
STALL_FRACTION: Final = 0.9
#: How long ``stop()``/``close()`` wait for a background renewal thread to finish its current call.
THREAD_JOIN_SECONDS: Final = 5.0


class Periodic:
    """Calls ``action`` every ``interval`` seconds in a daemon thread until :meth:`stop`.

    An exception from ``action`` is logged and the next round still happens.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object]) -> None:
        self._interval = interval
        self._action = action
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread (the first call happens one interval from now)."""
        self._thread.start()

    def stop(self, timeout: float = THREAD_JOIN_SECONDS) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for its current call to return."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._action()
            except Exception:
                log.exception("%s: periodic call failed", self._thread.name)


def renewed_lately(renewed_at: float, lease_ms: int) -> bool:
    """Whether a renewal that started at ``renewed_at`` (``time.monotonic()``) still vouches for a
    lease of ``lease_ms``: False once :data:`STALL_FRACTION` of the lease has passed since."""
    return time.monotonic() - renewed_at < lease_ms / 1000 * STALL_FRACTION
