"""Publisher: status events to status.queue (with confirms) and the Redis channel; dead-letter and
retry republishes; the ack of a delivery once its outcome is confirmed."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import msgspec

from orchestrator import metrics
from orchestrator.broker.publisher import ConfirmingPublisher
from orchestrator.broker.topology import status_topology
from orchestrator.commands import Ack, Publish
from orchestrator.config import Config
from orchestrator.errors import SinkError
from orchestrator.logs import FAILURE, emoji
from orchestrator.messages import StatusEvent, encode
from orchestrator.runtime.actor import ActorReporter, SupervisedActor
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.supervisor import ActorHandle
from orchestrator.status_sinks import DROPPED, RedisStatusSink

log = logging.getLogger(__name__)

#: How long a crashed instance waits for its outstanding confirms before closing (it is being replaced).
CRASH_CLOSE_SECONDS = 1.0


class Confirmed(msgspec.Struct, frozen=True):
    """The broker's answer for one part of a batch (sent from the publisher's I/O thread)."""

    batch: int
    ok: bool
    detail: str


class _Batch(msgspec.Struct, kw_only=True):
    publish: Publish
    waiting: int
    failed: bool = False


class PublisherActor(SupervisedActor):
    """Owns the status sinks and the confirming AMQP publisher.

    A :class:`~orchestrator.commands.Publish` is acked (its delivery) only when every AMQP part of it
    (dead-letter or retry message, status events on status.queue) is confirmed by the broker. The
    Redis channel is pub/sub — fire and forget by nature — so it never holds up an ack; its sink keeps
    events in order and retries them while Redis is down.
    """

    def __init__(
        self,
        reporter: ActorReporter,
        config: Config,
        board: HealthBoard,
        listener: ActorHandle,
    ) -> None:
        super().__init__(reporter)
        self._config = config
        self._board = board
        self._listener = listener
        self._batches: dict[int, _Batch] = {}
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

    def receive(self, message: object) -> Any:
        match message:
            case Publish():
                self._publish(message)
            case Confirmed():
                self._confirmed(message)
            case _:
                return super().receive(message)
        return None

    def _publish(self, publish: Publish) -> None:
        assert self._amqp is not None
        batch_id = next(self._ids)
        to_amqp = "amqp" in self._config.status.sinks
        batch = _Batch(
            publish=publish,
            waiting=len(publish.messages) + (len(publish.events) if to_amqp else 0),
        )
        self._batches[batch_id] = batch

        def on_confirm(ok: bool, detail: str, batch_id: int = batch_id) -> None:
            if self.actor_ref.is_alive():
                self.actor_ref.tell(Confirmed(batch=batch_id, ok=ok, detail=detail))

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
        if batch.waiting == 0:
            self._finish(batch_id)

    def _redis_done(self, ok: bool, detail: str) -> None:
        if detail.startswith(DROPPED):
            return  # the sink counted it as dropped already
        metrics.STATUS_EVENTS_PUBLISHED.labels(sink="redis", outcome="ok" if ok else "error").inc()

    def _confirmed(self, confirmed: Confirmed) -> None:
        batch = self._batches.get(confirmed.batch)
        if batch is None:
            return
        batch.waiting -= 1
        if not confirmed.ok:
            batch.failed = True
            log.error(
                "publish not confirmed (%s); its delivery stays unacked and will be redelivered",
                confirmed.detail,
                extra=emoji(FAILURE),
            )
        if batch.waiting <= 0:
            self._finish(confirmed.batch)

    def _finish(self, batch_id: int) -> None:
        batch = self._batches.pop(batch_id)
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
        if batch.publish.ack is not None:
            self._listener.tell(Ack(batch.publish.ack))
        if batch.publish.after is not None:
            batch.publish.after()


_STATUS_EMOJI = {
    "succeeded": "✅",
    "dispatched": "🔄",
    "running": "🔄",
    "queued": "🔄",
    "retrying": "⚠️",
    "timed_out": "⚠️",
    "stopped": "⚠️",
    "failed": "❌",
    "rejected": "❌",
}


def _log_event(event: StatusEvent) -> None:
    level = logging.WARNING if event.status in ("failed", "rejected") else logging.INFO
    detail = f" ({event.reason})" if event.reason else ""
    log.log(
        level,
        "%s %s attempt %d: %s%s",
        event.type,
        event.deployment_id,
        event.attempt,
        event.status,
        detail,
        extra=emoji(_STATUS_EMOJI.get(event.status, "")),
    )
