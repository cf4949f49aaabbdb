"""Launch concurrency: a fixed set of launch threads paced by a client-side token bucket.

A RunTask call takes 100–500 ms, so launching one task at a time caps the product at a few builds per
second. :class:`LaunchPool` keeps up to ``max_inflight`` calls in flight and spends one token of a
:class:`TokenBucket` per call, so a burst of queued jobs goes out at the rate ECS allows (Fargate:
a burst of 100, then about 20 per second) instead of collecting throttling errors.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from orchestrator import metrics
from orchestrator.backoff import HALF_JITTER, Backoff
from orchestrator.errors import LaunchError, ThrottledError
from orchestrator.launch.base import LaunchRequest, TaskHandle
from orchestrator.launch.errors import LaunchCancelledError
from orchestrator.logs import FAILURE, WARNING, emoji, job_fields
from orchestrator.redaction import redact_text

log = logging.getLogger(__name__)

#: Times a throttled launch is retried inside the pool before the caller hears of it.
DEFAULT_THROTTLE_RETRIES: Final = 6
#: First backoff after throttling, in seconds; doubles on each retry up to the maximum.
DEFAULT_BACKOFF_BASE_SECONDS: Final = 0.25
DEFAULT_BACKOFF_MAX_SECONDS: Final = 8.0
#: How long a launch thread waits for a token or work before it checks whether the pool closed.
WAIT_SLICE_SECONDS: Final = 0.2
#: Rounding slack: after waiting exactly the computed time, float arithmetic may leave 0.9999999 tokens.
TOKEN_EPSILON: Final = 1e-9

OnDone = Callable[[LaunchRequest, "TaskHandle | LaunchError"], None]


class Launches(Protocol):
    """What the pool needs of a launcher: its name and ``launch`` (a :class:`Launcher` has both)."""

    name: str

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """Start the task of ``request`` (see :meth:`Launcher.launch`)."""
        ...


class TokenBucket:
    """``rate`` tokens per second, up to ``burst`` saved; thread-safe. Starts full.

    Args:
        rate: Tokens added per second.
        burst: Capacity: how many tokens can be spent at once after a quiet period.
        clock: Monotonic seconds (injectable for tests).
        sleep: Sleeps for the given seconds (injectable for tests; only :meth:`acquire` sleeps).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
        self._updated = now

    def try_acquire(self) -> bool:
        """Take one token if there is one; never waits."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0 - TOKEN_EPSILON:
                self._tokens = max(0.0, self._tokens - 1.0)
                return True
            return False

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        with self._lock:
            self._refill()
            missing = 1.0 - TOKEN_EPSILON - self._tokens
            return max(0.0, missing / self.rate)

    def acquire(self, timeout: float) -> bool:
        """Take one token, waiting up to ``timeout`` seconds for it. Returns whether one was taken."""
        deadline = self._clock() + timeout
        while True:
            if self.try_acquire():
                return True
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._sleep(min(self.wait_time(), remaining))


class LaunchPool:
    """Up to ``max_inflight`` launches in flight at once, paced by a :class:`TokenBucket`.

    Requests wait in an unbounded FIFO (the broker's prefetch and the concurrency slots bound it).
    A :class:`ThrottledError` is retried here with exponential backoff and jitter, holding its
    launch thread (which slows the pool down, as throttling asks); only when it persists past
    ``throttle_retries`` does the caller's ``on_done`` get it. Any other exception becomes a
    :class:`LaunchError`; nothing escapes a launch thread.

    Args:
        launcher: The back-end whose ``launch`` is called.
        max_inflight: Launch threads, i.e. calls in flight at most.
        rate: Launches per second, sustained.
        burst: Launches that may go at once after a quiet period.
        bucket: A ready bucket (tests); by default one of ``rate`` and ``burst``.
        throttle_retries: Retries of a throttled launch before ``on_done`` gets the error.
        backoff_base: First backoff in seconds after throttling.
        backoff_max: Longest backoff in seconds.
        jitter: Returns a float in [0, 1) (injectable for tests).
    """

    def __init__(
        self,
        launcher: Launches,
        max_inflight: int,
        rate: float,
        burst: int,
        *,
        bucket: TokenBucket | None = None,
        throttle_retries: int = DEFAULT_THROTTLE_RETRIES,
        backoff_base: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_max: float = DEFAULT_BACKOFF_MAX_SECONDS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1 (got {max_inflight})")
        self.launcher = launcher
        self.max_inflight = max_inflight
        self.bucket = bucket or TokenBucket(rate, burst)
        self.throttle_retries = throttle_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        # Half of each delay is jittered: a throttled launch waits at least half the ceiling.
        self._backoff = Backoff(backoff_base, backoff_max, jitter=HALF_JITTER, rng=jitter)
        self._queue: collections.deque[tuple[LaunchRequest, OnDone]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._pending = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"launch-{launcher.name}-{i}", daemon=True)
            for i in range(max_inflight)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, request: LaunchRequest, on_done: OnDone) -> None:
        """Queue ``request``; ``on_done(request, handle_or_error)`` is called from a launch thread.

        Never blocks. After :meth:`close`, ``on_done`` is called at once, in the caller's thread, with a
        :class:`LaunchCancelledError` (nothing was launched).
        """
        with self._cond:
            if not self._closed.is_set():
                self._queue.append((request, on_done))
                self._pending += 1
                self._cond.notify()
                return
        self._deliver(request, on_done, LaunchCancelledError("launch pool is closed"), counted=False)

    def inflight(self) -> int:
        """Requests accepted whose ``on_done`` has not been called yet (queued or launching)."""
        with self._cond:
            return self._pending

    def close(self, timeout: float) -> None:
        """Stop accepting requests, cancel queued ones, and wait up to ``timeout`` s for running launches.

        Queued requests get :class:`LaunchCancelledError` at once, from the caller's thread (they must
        not wait behind slow launches during a shutdown); throttled ones waiting to retry get it from
        their launch thread. Launch calls already under way finish and report normally.
        """
        with self._cond:
            self._closed.set()
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for request, on_done in queued:
            self._deliver(
                request, on_done, LaunchCancelledError("launch pool closed before the launch"), counted=True
            )
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(t.is_alive() for t in self._threads)
        if stuck:
            log.warning(
                "launch pool %s closed with %d launch call(s) still running",
                self.launcher.name,
                stuck,
                extra=emoji(WARNING),
            )

    # --- launch threads ---------------------------------------------------------------------------

    def _next(self) -> tuple[LaunchRequest, OnDone] | None:
        with self._cond:
            while not self._queue:
                if self._closed.is_set():
                    return None
                self._cond.wait(WAIT_SLICE_SECONDS)
            return self._queue.popleft()

    def _work(self) -> None:
        while (item := self._next()) is not None:
            request, on_done = item
            self._deliver(request, on_done, self._launch(request), counted=True)

    def _take_token(self) -> bool:
        while not self._closed.is_set():
            if self.bucket.acquire(WAIT_SLICE_SECONDS):
                return True
        return False

    def backoff(self, retry: int) -> float:
        """Seconds to wait before throttled retry number ``retry`` (1-based): exponential up to
        ``backoff_max``, uniform in the upper half of that ceiling."""
        return self._backoff.delay(retry - 1)

    def _launch(self, request: LaunchRequest) -> TaskHandle | LaunchError:
        retry = 0
        while True:
            if not self._take_token():
                return LaunchCancelledError("launch pool closed before the launch")
            try:
                return self._timed_launch(request)
            except ThrottledError as e:
                retry += 1
                if retry > self.throttle_retries:
                    return e
                delay = self.backoff(retry)
                log.warning(
                    "launch of %s attempt %d throttled (%s); retry %d in %.2f s",
                    request.job.deployment_id,
                    request.attempt,
                    e,
                    retry,
                    delay,
                    extra=_request_fields(request, WARNING),
                )
                if self._closed.wait(delay):
                    return LaunchCancelledError(f"launch pool closed while backing off ({e})")
            except LaunchError as e:
                return e
            except Exception as e:  # the launch thread must survive a launcher's bug
                log.exception(
                    "launcher %s raised an unexpected error",
                    self.launcher.name,
                    extra=_request_fields(request, FAILURE),
                )
                return LaunchError(
                    redact_text(f"unexpected {type(e).__name__} in launcher {self.launcher.name}: {e}")
                )

    def _timed_launch(self, request: LaunchRequest) -> TaskHandle:
        """One launch call, observed in ``orchestrator_launch_duration_seconds`` however it ends."""
        started = time.monotonic()
        try:
            return self.launcher.launch(request)
        finally:
            metrics.LAUNCH_DURATION.labels(launcher=self.launcher.name).observe(time.monotonic() - started)

    def _deliver(
        self, request: LaunchRequest, on_done: OnDone, result: TaskHandle | LaunchError, *, counted: bool
    ) -> None:
        try:
            on_done(request, result)
        except Exception:
            log.exception(
                "on_done of %s attempt %d raised",
                request.job.deployment_id,
                request.attempt,
                extra=_request_fields(request, FAILURE),
            )
        finally:
            if counted:
                with self._cond:
                    self._pending -= 1


def _request_fields(request: LaunchRequest, mark: str) -> dict[str, object]:
    return job_fields(request.job.deployment_id, request.attempt, job_type=request.job.type, mark=mark)
