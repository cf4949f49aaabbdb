"""``orchestrator submit FILE [--wait]``: publish a job, and optionally follow it to its end."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Final

import msgspec
import pika
import redis

from orchestrator.config import Config
from orchestrator.errors import BrokerError, OrchestratorError
from orchestrator.messages import EVENT_DECODER, TERMINAL_STATUSES, JobBase, StatusEvent, encode
from orchestrator.validation import JobValidator, Rejection

EXIT_SUCCEEDED: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_TIMEOUT: Final = 3

_EMOJI: Final = {
    "succeeded": "✅",
    "failed": "❌",
    "rejected": "❌",
    "timed_out": "⚠️",
    "retrying": "⚠️",
    "stopped": "⚠️",
}


def submit(
    config: Config, raw: bytes, *, wait: bool, timeout: float, out: Callable[[str], None] = print
) -> int:
    """Validate ``raw``, publish it to the execute queue and, with ``wait``, print its events.

    Returns:
        The exit code: 0 published (or, with ``wait``, succeeded), 1 failed, 2 invalid, 3 timed out.
    """
    outcome = JobValidator(config.validation).validate(raw)
    if isinstance(outcome, Rejection):
        for reason in outcome.reasons:
            print(f"❌ {reason}", file=sys.stderr)
        return EXIT_INVALID
    job = outcome
    body = encode(job)
    if not wait:
        _publish(config, body)
        out(f"🔄 submitted {job.type} {job.deployment_id}")
        return EXIT_SUCCEEDED
    with _events(config) as events:
        _publish(config, body)
        out(f"🔄 submitted {job.type} {job.deployment_id}; following its events")
        return _follow(job, events, timeout, out)


def _publish(config: Config, body: bytes) -> None:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    except pika.exceptions.AMQPError as e:
        raise BrokerError(f"cannot connect to RabbitMQ ({type(e).__name__}); is it running?") from None
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange=config.broker.exchange,
            routing_key=config.broker.execute_queue,
            body=body,
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json"
            ),
            mandatory=True,
        )
    except pika.exceptions.UnroutableError:
        raise BrokerError(
            f"the job could not be routed to {config.broker.execute_queue!r}: "
            "is the orchestrator's topology declared (start the orchestrator once)?"
        ) from None
    except pika.exceptions.AMQPError as e:
        raise BrokerError(f"publishing the job failed ({type(e).__name__})") from None
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


EventSource = Callable[[float], StatusEvent | None]


@contextlib.contextmanager
def _events(config: Config) -> Iterator[EventSource]:
    """Subscribe before publishing, so no event is missed: Redis when it is a sink, else AMQP."""
    if "redis" in config.status.sinks:
        with _redis_events(config) as source:
            yield source
    else:
        with _amqp_events(config) as source:
            yield source


@contextlib.contextmanager
def _redis_events(config: Config) -> Iterator[EventSource]:
    client = redis.Redis.from_url(config.redis.url, socket_connect_timeout=5)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(config.status.redis_channel)
    except redis.RedisError as e:
        raise OrchestratorError(f"cannot subscribe to Redis ({type(e).__name__}); is it running?") from None

    def next_event(timeout: float) -> StatusEvent | None:
        message = pubsub.get_message(timeout=timeout)
        return _decode(message["data"]) if message else None

    try:
        yield next_event
    finally:
        pubsub.close()
        client.close()


@contextlib.contextmanager
def _amqp_events(config: Config) -> Iterator[EventSource]:
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    channel = connection.channel()
    private = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(private, config.broker.exchange, routing_key=config.status.queue)

    def next_event(timeout: float) -> StatusEvent | None:
        for _method, _props, body in channel.consume(private, auto_ack=True, inactivity_timeout=timeout):
            return _decode(body) if body is not None else None
        return None

    try:
        yield next_event
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError):
            connection.close()


def _decode(data: bytes) -> StatusEvent | None:
    try:
        return EVENT_DECODER.decode(data)
    except msgspec.DecodeError:
        return None


def _follow(job: JobBase, next_event: EventSource, timeout: float, out: Callable[[str], None]) -> int:
    deadline = time.monotonic() + timeout
    target = job.deployment_id
    while (left := deadline - time.monotonic()) > 0:
        event = next_event(min(left, 1.0))
        if event is None or event.deployment_id != target:
            continue
        out(_describe(event))
        if event.status in TERMINAL_STATUSES:
            return EXIT_SUCCEEDED if event.status in ("succeeded", "stopped") else EXIT_FAILED
        if event.status == "running" and job.runs_until_stopped:
            return EXIT_SUCCEEDED
    out(f"⚠️ no terminal event for {target} within {timeout:.0f} s")
    return EXIT_TIMEOUT


def _describe(event: StatusEvent) -> str:
    mark = _EMOJI.get(event.status, "🔄")
    parts = [f"{mark} {event.type} {event.deployment_id} attempt {event.attempt}: {event.status}"]
    if event.task_arn:
        parts.append(f"task {event.task_arn}")
    if event.exit_code is not None:
        parts.append(f"exit code {event.exit_code}")
    if event.reason:
        parts.append(event.reason)
    return " · ".join(parts)
