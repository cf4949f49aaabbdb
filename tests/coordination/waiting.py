"""Polling with a deadline: tests wait for a condition, never for a fixed time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_SECONDS = 0.02
_pause = threading.Event()  # never set: wait() is a pause that cannot hang past its timeout


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = POLL_SECONDS) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        _pause.wait(interval)


def holds_throughout(condition: Callable[[], bool], duration: float, interval: float = POLL_SECONDS) -> bool:
    """Poll ``condition`` for ``duration`` seconds; False as soon as it is false once."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not condition():
            return False
        _pause.wait(interval)
    return condition()
