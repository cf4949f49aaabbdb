"""Publisher: status events to status.queue (with confirms) and the Redis channel; dead-letter and
retry republishes; the ack of a delivery once its outcome is confirmed."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

import msgspec

from orchestrator import metrics
from orchestrator.broker.publisher import ConfirmingPublisher
from orchestrator.broker.topology import status_topology
from orchestrator.commands import Publish
from orchestrator.config import Config
from orchestrator.delivery import Settler
from orchestrator.errors import SinkError
from orchestrator.logs import FAILURE, LogThrottle, emoji, event_fields, status_mark, suppressed_note
from orchestrator.messages import StatusEvent, encode
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.health import HealthBoard
from orchestrator.status_sinks import DROPPED, RedisStatusSink

log = logging.getLogger(__name__)

#: How long a crashed instance waits for its outstanding confirms before closing (it is being replaced).
CRASH_CLOSE_SECONDS = 1.0


class _Batch(msgspec.Struct, kw_only=True):
    publish: Publish
    waiting: int
    failed: bool = False


class PublisherActor(SupervisedActor[Publish]):
    """Owns the status sinks and the confirming AMQP publisher.

    A :class:`~orchestrator.commands.Publish` is acked (its delivery) only when every AMQP part of it
    (dead-letter or retry message, status events on status.queue) is confirmed by the broker. The
    Redis channel is pub/sub — fire and forget by nature — so it never holds up an ack; its sink keeps
    events in order and retries them while Redis is down.

    Confirms are settled where they arrive, on the publisher's I/O thread (a lock guards the batches),
    not sent back to this actor one message each: the last confirm of a batch acks its delivery and
    calls its ``after`` right there. An actor hop per confirm added a thread wake-up and nothing else.
    """

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        board: HealthBoard,
        settler: Settler,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._board = board
        self._settler = settler
        #: Batches waiting for confirms; shared with the I/O thread that settles them.
        self._batches: dict[int, _Batch] = {}
        self._batches_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._amqp: ConfirmingPublisher | None = None
        self._redis: RedisStatusSink | None = None

    def on_start(self) -> None:
        sinks = self._config.status.sinks
        self._amqp = ConfirmingPublisher(
            self._config.broker,
            name="publisher",
            max_pending=self._config.status.buffer,
            on_connectivity=lambda ok, detail: self._board.set_dependency("status.amqp", ok, detail),
            topology=status_topology(self._config.broker, self._config.status),
        )
        self._amqp.start()
        if "redis" in sinks:
            self._redis = RedisStatusSink(
                self._config.redis,
                self._config.status,
                on_connectivity=lambda ok, detail: self._board.set_dependency(
                    "status.redis", ok, detail, required=False
                ),
            )
            self._redis.start()

    def on_failure(self, *exc_info: Any) -> None:
        super().on_failure(*exc_info)
        self._close(CRASH_CLOSE_SECONDS)  # the next instance opens its own connections

    def on_stop(self) -> None:
        self._close(self._config.shutdown.drain_seconds)

    def _close(self, timeout: float) -> None:
        if self._amqp is not None:
            self._amqp.close(timeout)
        if self._redis is not None:
            self._redis.close(timeout)

    accepts = (Publish,)

    def receive(self, message: Publish) -> None:
        self._publish(message)

    def _publish(self, publish: Publish) -> None:
        assert self._amqp is not None
        batch_id = next(self._ids)
        to_amqp = "amqp" in self._config.status.sinks
        parts = len(publish.messages) + (len(publish.events) if to_amqp else 0)
        batch = _Batch(publish=publish, waiting=parts)
        with self._batches_lock:  # (never held while calling the sinks: they call back under theirs)
            self._batches[batch_id] = batch

        def on_confirm(ok: bool, detail: str, batch_id: int = batch_id) -> None:
            self._confirmed(batch_id, ok, detail)

        def send(exchange: str, routing_key: str, body: bytes, **properties: Any) -> None:
            assert self._amqp is not None
            try:
                self._amqp.publish(exchange, routing_key, body, on_confirm=on_confirm, **properties)
            except SinkError as e:
                on_confirm(False, str(e))

        for outgoing in publish.messages:
            send(outgoing.exchange, outgoing.routing_key, outgoing.body, headers=outgoing.headers)
        for event in publish.events:
            if to_amqp:
                send(
                    self._config.broker.exchange,
                    self._config.status.queue,
                    encode(event),
                    headers={"x-deployment-id": event.deployment_id},
                    content_type="application/json",
                    message_id=f"{event.deployment_id}/{event.type}/{event.seq}",
                )
            if self._redis is not None:
                try:
                    self._redis.publish(event, on_done=self._redis_done)
                except SinkError as e:
                    self._redis_done(False, str(e))
        if parts == 0:
            # Nothing to confirm. (Not ``batch.waiting == 0``: the I/O thread may have confirmed every
            # part and finished the batch already, and finishing it twice acks its delivery twice.)
            with self._batches_lock:
                self._batches.pop(batch_id, None)
            self._finish(batch)

    def _redis_done(self, ok: bool, detail: str) -> None:
        if detail.startswith(DROPPED):
            return  # the sink counted it as dropped already
        metrics.STATUS_EVENTS_PUBLISHED.labels(sink="redis", outcome="ok" if ok else "error").inc()

    def _confirmed(self, batch_id: int, ok: bool, detail: str) -> None:
        """(The I/O thread, or this actor's when a send failed at once.) One part of a batch settled."""
        with self._batches_lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return
            batch.waiting -= 1
            if not ok:
                batch.failed = True
            done = batch.waiting <= 0
            if done:
                del self._batches[batch_id]
        if not ok:
            log.error(
                "publish not confirmed (%s); its delivery stays unacked and will be redelivered",
                detail,
                extra=emoji(FAILURE),
            )
        if done:
            self._finish(batch)

    def _finish(self, batch: _Batch) -> None:
        """Every part of ``batch`` is settled: count, log, and (when all went well) ack and call after."""
        to_amqp = "amqp" in self._config.status.sinks
        outcome = "error" if batch.failed else "ok"
        if to_amqp:
            for event in batch.publish.events:
                metrics.STATUS_EVENTS_PUBLISHED.labels(sink="amqp", outcome=outcome).inc()
                _log_event(event)
        elif not batch.failed:
            for event in batch.publish.events:
                _log_event(event)
        if batch.failed:
            return
        if batch.publish.finished is not None:
            metrics.JOBS_FINISHED.labels(outcome=batch.publish.finished).inc()
        if batch.publish.ack is not None:
            self._settler.ack(batch.publish.ack)
        if batch.publish.after is not None:
            batch.publish.after()


#: Rejections are the one status whose number an outsider controls: their lines are throttled.
_REJECTION_LINES = LogThrottle()


def _log_event(event: StatusEvent) -> None:
    left_out = 0
    if event.status == "rejected":
        allowed, left_out = _REJECTION_LINES.allow()
        if not allowed:
            return
    level, mark = status_mark(event.type, event.status)
    detail = f" ({event.reason})" if event.reason else ""
    log.log(
        level,
        "%s %s attempt %d: %s%s%s",
        event.type,
        event.deployment_id,
        event.attempt,
        event.status,
        detail,
        suppressed_note(left_out),
        extra=event_fields(event, mark),
    )
