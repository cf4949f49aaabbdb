"""Where status events go besides the AMQP status queue: the Redis channel.

The AMQP status queue needs no sink of its own: the Publisher actor (``actors/publisher.py``) sends
events there with a :class:`~orchestrator.broker.publisher.ConfirmingPublisher`, together with the
other messages of the same :class:`~orchestrator.commands.Publish`, whose delivery is acked once all
of them are confirmed.

:class:`RedisStatusSink` PUBLISHes to ``status.redis_channel`` from its own thread. Redis pub/sub is
fire-and-forget (a subscriber that is not connected never sees the event), so this sink never holds up
an ack and never blocks its caller on the network; it keeps up to ``status.buffer`` events in order
while Redis is unreachable, retries with backoff, and sends them when it is back. Past that bound the
*oldest* waiting event is dropped, with a ❌ log line, the metric
``orchestrator_status_events_published_total{sink="redis",outcome="dropped"}``, the
:attr:`RedisStatusSink.dropped` count and the optional ``on_drop`` hook; its ``on_done`` gets
``(False, "dropped: ...")``.

Events are encoded with :func:`orchestrator.messages.encode`; ``seq`` is set by the caller.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Generic, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import metrics
from orchestrator.broker.connection import Backoff
from orchestrator.config import RedisConfig, StatusConfig
from orchestrator.errors import SinkError
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, emoji, event_fields
from orchestrator.messages import StatusEvent, encode
from orchestrator.redaction import redact_text, redact_url

log = logging.getLogger(__name__)

OnDone = Callable[[bool, str], None]

#: ``on_done`` reasons of events the Redis sink had to drop start with this.
DROPPED: Final = "dropped"
#: Upper bound of the Redis sink's reconnection delay.
REDIS_RECONNECT_MAX_SECONDS: Final = 30.0
#: While idle, the Redis sink PINGs this often so that /health notices Redis going away.
REDIS_IDLE_PING_SECONDS: Final = 10.0
#: Most events sent to Redis in one round trip (a pipeline of PUBLISH commands).
REDIS_BATCH: Final = 100
#: Extra time :meth:`RedisStatusSink.close` gives its thread after the timeout.
CLOSE_GRACE_SECONDS: Final = 2.0

T = TypeVar("T")


class DropOldestBuffer(Generic[T]):
    """A FIFO that holds at most ``limit`` items; adding to a full one pushes the oldest out."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        self._limit = limit
        self._items: collections.deque[T] = collections.deque()

    @property
    def limit(self) -> int:
        """The most items held."""
        return self._limit

    def push(self, item: T) -> T | None:
        """Append ``item``; return the oldest item when it had to make room, else ``None``."""
        dropped = self._items.popleft() if len(self._items) >= self._limit else None
        self._items.append(item)
        return dropped

    def pop(self) -> T | None:
        """Remove and return the oldest item, or ``None`` when empty."""
        return self._items.popleft() if self._items else None

    def drain(self) -> list[T]:
        """Remove and return everything, oldest first."""
        items = list(self._items)
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)


class _Entry:
    __slots__ = ("event", "on_done", "payload")

    def __init__(self, event: StatusEvent, payload: bytes, on_done: OnDone) -> None:
        self.event = event
        self.payload = payload
        self.on_done = on_done


class RedisStatusSink:
    """Status events to ``PUBLISH status.redis_channel``, in order, from the sink's own thread.

    Args:
        redis_config: the ``redis`` config section (url, socket timeout).
        status: the ``status`` config section (channel name, ``buffer`` = most events kept waiting).
        on_connectivity: ``(True, "")`` when Redis answers, ``(False, reason)`` when it does not.
        on_drop: called (on the publishing thread) with each event dropped because the buffer was
            full; the place to count it in a metric.
        reconnect_max_seconds: cap of the exponential backoff between attempts while Redis is down.
    """

    def __init__(
        self,
        redis_config: RedisConfig,
        status: StatusConfig,
        *,
        on_connectivity: Callable[[bool, str], None],
        on_drop: Callable[[StatusEvent], None] | None = None,
        reconnect_max_seconds: float = REDIS_RECONNECT_MAX_SECONDS,
    ) -> None:
        self._url = redis_config.url
        self._channel = status.redis_channel
        self._on_connectivity = on_connectivity
        self._on_drop = on_drop
        self._backoff = Backoff(cap_seconds=reconnect_max_seconds)
        self._client: redis.Redis[bytes] = redis.Redis.from_url(
            redis_config.url,
            socket_timeout=redis_config.socket_timeout_seconds,
            socket_connect_timeout=redis_config.socket_timeout_seconds,
            retry=Retry(NoBackoff(), 0),  # retries are ours: in order, with backoff, stoppable
        )
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buffer: DropOldestBuffer[_Entry] = DropOldestBuffer(status.buffer)
        #: The batch being sent (retried whole until Redis takes it).
        self._current: list[_Entry] = []
        self._dropped = 0
        self._closing = False
        self._halt = threading.Event()
        self._state: tuple[bool, str] | None = None
        self._ping_due = True  # so /health learns at once whether Redis answers
        self._thread: threading.Thread | None = None

    @property
    def dropped(self) -> int:
        """Events dropped so far because the buffer was full."""
        with self._lock:
            return self._dropped

    def start(self) -> None:
        """Start the sink's thread.

        Raises:
            SinkError: when called twice or after :meth:`close`.
        """
        with self._lock:
            if self._thread is not None or self._closing:
                raise SinkError("the Redis status sink was already started")
            self._thread = threading.Thread(target=self._run, name="redis-status-sink", daemon=True)
        self._thread.start()

    def publish(self, event: StatusEvent, on_done: OnDone) -> None:
        """Queue ``event`` for PUBLISH; ``on_done(True, "")`` once Redis took it (never blocks).

        Raises:
            SinkError: the sink is closed.
        """
        entry = _Entry(event, encode(event), on_done)
        with self._changed:
            if self._closing:
                raise SinkError("the Redis status sink is closed")
            dropped = self._buffer.push(entry)
            if dropped is not None:
                self._dropped += 1
                total = self._dropped
            self._changed.notify_all()
        if dropped is not None:
            self._report_drop(dropped, total)

    def pending(self) -> int:
        """Events waiting, plus the one being sent."""
        with self._lock:
            return len(self._buffer) + len(self._current)

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the waiting events to be sent, then stop the thread.

        Events still waiting then get ``on_done(False, ...)``.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            while (
                self._thread is not None
                and (len(self._buffer) or self._current)
                and (remaining := deadline - time.monotonic()) > 0
            ):
                self._changed.wait(remaining)
        self._halt.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()) + CLOSE_GRACE_SECONDS)
        with self._lock:
            leftovers = self._current + self._buffer.drain()
            self._current = []
        if leftovers:
            log.error(
                "Redis status sink closed with %d events not published", len(leftovers), extra=emoji(FAILURE)
            )
        for entry in leftovers:
            _call(entry.on_done, False, "the Redis status sink closed before the event was published")
        self._client.close()

    # --- the sink's thread -----------------------------------------------------------------------

    def _report_drop(self, entry: _Entry, total: int) -> None:
        event = entry.event
        metrics.STATUS_EVENTS_PUBLISHED.labels(sink="redis", outcome=DROPPED).inc()
        reason = (
            f"{DROPPED}: the Redis status buffer was full ({self._buffer.limit} events waiting for Redis)"
        )
        log.error(
            "Redis status buffer full: dropped the oldest event (%s %s seq %d); %d dropped so far",
            event.deployment_id,
            event.status,
            event.seq,
            total,
            extra=event_fields(event, FAILURE),
        )
        if self._on_drop is not None:
            try:
                self._on_drop(event)
            except Exception:
                log.exception("on_drop callback failed", extra=emoji(FAILURE))
        _call(entry.on_done, False, reason)

    def _next(self) -> tuple[str, list[_Entry]]:
        """Wait for work: ``("send", batch)``, ``("ping", [])`` or ``("stop", [])``."""
        with self._changed:
            while True:
                if self._halt.is_set():
                    return "stop", []
                while len(self._current) < REDIS_BATCH and (entry := self._buffer.pop()) is not None:
                    self._current.append(entry)
                if self._current:
                    return "send", list(self._current)
                if self._closing:
                    return "stop", []
                if self._ping_due:
                    return "ping", []
                if not self._changed.wait(REDIS_IDLE_PING_SECONDS):
                    self._ping_due = True

    def _run(self) -> None:
        while True:
            action, batch = self._next()
            if action == "stop":
                return
            try:
                if not batch:
                    self._client.ping()
                else:
                    # One round trip for the batch (events of a flood would otherwise cost one each).
                    pipe = self._client.pipeline(transaction=False)
                    for entry in batch:
                        pipe.publish(self._channel, entry.payload)
                    pipe.execute()
            except (redis.RedisError, OSError) as e:
                self._set_up(False, redact_text(f"{type(e).__name__}: {e}"))
                delay = self._backoff.next_delay()
                log.info("retrying Redis in %.1f s", delay, extra=emoji(PROGRESS))
                self._halt.wait(delay)
                continue
            self._backoff.reset()
            self._set_up(True, "")
            with self._changed:
                self._ping_due = False
                if batch:
                    self._current = []
                    self._changed.notify_all()
            for entry in batch:
                _call(entry.on_done, True, "")

    def _set_up(self, up: bool, reason: str) -> None:
        if self._state == (up, reason):
            return
        self._state = (up, reason)
        if up:
            log.info("Redis status channel %s reachable", self._channel, extra=emoji(SUCCESS))
        else:
            with self._lock:
                waiting = len(self._buffer) + len(self._current)
            log.warning(
                "Redis (%s) unreachable: %s; keeping %d events in order until it is back",
                redact_url(self._url),
                reason,
                waiting,
                extra=emoji(WARNING),
            )
        _call(self._on_connectivity, up, reason)


def _call(callback: Callable[[bool, str], None], ok: bool, detail: str) -> None:
    try:
        callback(ok, detail)
    except Exception:
        log.exception("status sink callback failed", extra=emoji(FAILURE))
