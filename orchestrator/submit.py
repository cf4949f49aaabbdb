"""``orchestrator submit FILE [--wait]``: publish a job, and optionally follow it to its end.

A broker or Redis that cannot be used ends in one line naming the endpoint (``host:port``, never the
password) and the cause — connection refused, DNS, authentication, virtual host, TLS, timeout, a
missing exchange or queue — raised as :class:`~orchestrator.errors.BrokerError` (RabbitMQ) or
:class:`~orchestrator.errors.CoordinationError` (Redis); the CLI exits 4 on either. Connection
timeouts: RabbitMQ's are pika's, which ``broker.url`` may set (``?socket_timeout=2&stack_timeout=5``;
default 10 s and 15 s), Redis's ``redis.socket_timeout_seconds``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Final

import msgspec
import pika
import pika.exceptions
import redis
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from orchestrator.broker.connection import (
    BLOCKED_CONNECTION_TIMEOUT_SECONDS,
    PRODUCT,
    connection_name,
)
from orchestrator.config import Config
from orchestrator.connect_errors import connection_cause, endpoint, error_chain
from orchestrator.errors import BrokerError, CoordinationError
from orchestrator.messages import EVENT_DECODER, TERMINAL_STATUSES, JobBase, StatusEvent, encode
from orchestrator.redaction import redact_text
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
    config: Config,
    raw: bytes,
    *,
    wait: bool,
    timeout: float,
    out: Callable[[str], None] = print,
    logs: bool = False,
) -> int:
    """Validate ``raw``, publish it to the execute queue and, with ``wait``, print its events (and with
    ``logs`` its build log's lines between them).

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
    with _events(config) as events, _log_lines(config, job.deployment_id, logs, out) as show_lines:
        _publish(config, body)
        out(f"🔄 submitted {job.type} {job.deployment_id}; following its events")
        return _follow(job, events, timeout, out, show_lines)


def _publish(config: Config, body: bytes) -> None:
    connection = _connect_broker(config)
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
            f"RabbitMQ at {endpoint(config.broker.url)}: the job could not be routed to queue "
            f"{config.broker.execute_queue!r} (no such queue bound to exchange {config.broker.exchange!r}): "
            "is the orchestrator's topology declared (start the orchestrator once)?"
        ) from None
    except (pika.exceptions.AMQPError, OSError) as e:
        raise BrokerError(_broker_failure(config, "publishing the job", e)) from None
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


# --- describing failures -------------------------------------------------------------------------


def _broker_failure(config: Config, doing: str, error: BaseException) -> str:
    """One line for a failure after connecting: a refused operation, or the connection lost."""
    failed = f"RabbitMQ at {endpoint(config.broker.url)}: {doing} failed"
    for e in error_chain(error):
        if isinstance(e, pika.exceptions.ChannelClosedByBroker):
            if e.reply_code == 404:
                return (
                    f"{failed}: not found ({e.reply_text}); is the orchestrator's topology declared "
                    "(start the orchestrator once), and is broker.exchange right?"
                )
            if e.reply_code == 403:
                return f"{failed}: access refused ({e.reply_text}); check the user's permissions"
            return f"{failed}: {e.reply_code} {e.reply_text}"
        if isinstance(e, pika.exceptions.ConnectionBlockedTimeout):
            return f"{failed}: the broker blocked the connection (a resource alarm: memory or disk)"
    cause = connection_cause(error, what="RabbitMQ", key="broker.url", url=config.broker.url)
    return f"{failed}: connection lost ({cause})"


def _connect_broker(config: Config) -> pika.BlockingConnection:
    """A connection to RabbitMQ, or :class:`BrokerError` naming the endpoint and the cause."""
    try:
        params = pika.URLParameters(config.broker.url)
    except (ValueError, TypeError) as e:
        raise BrokerError(f"broker.url: {redact_text(str(e))}") from None
    params.client_properties = {"connection_name": connection_name("submit"), "product": PRODUCT}
    if params.blocked_connection_timeout is None:
        params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_SECONDS
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as e:
        cause = connection_cause(e, what="RabbitMQ", key="broker.url", url=config.broker.url)
        raise BrokerError(f"cannot connect to RabbitMQ at {endpoint(config.broker.url)}: {cause}") from None


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
    url = config.redis.url
    where = f"Redis at {endpoint(url)}"
    timeout = config.redis.socket_timeout_seconds
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as e:
        raise CoordinationError(f"redis.url: {redact_text(str(e))}") from None
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(config.status.redis_channel)
    except (redis.RedisError, OSError) as e:
        cause = connection_cause(e, what="Redis", key="redis.url", url=url)
        raise CoordinationError(f"cannot subscribe to {where}: {cause}") from None

    def next_event(wait: float) -> StatusEvent | None:
        try:
            message = pubsub.get_message(timeout=wait)
        except (redis.RedisError, OSError) as e:
            cause = connection_cause(e, what="Redis", key="redis.url", url=url)
            raise CoordinationError(f"{where}: lost while following the job's events ({cause})") from None
        return _decode(message["data"]) if message else None

    try:
        yield next_event
    finally:
        with contextlib.suppress(redis.RedisError, OSError):
            pubsub.close()
            client.close()


@contextlib.contextmanager
def _amqp_events(config: Config) -> Iterator[EventSource]:
    connection = _connect_broker(config)
    try:
        channel = connection.channel()
        private = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(private, config.broker.exchange, routing_key=config.status.queue)
    except (pika.exceptions.AMQPError, OSError) as e:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()
        doing = f"subscribing to {config.status.queue!r} events on exchange {config.broker.exchange!r}"
        raise BrokerError(_broker_failure(config, doing, e)) from None

    def next_event(timeout: float) -> StatusEvent | None:
        try:
            for _method, _props, body in channel.consume(private, auto_ack=True, inactivity_timeout=timeout):
                return _decode(body) if body is not None else None
        except (pika.exceptions.AMQPError, OSError) as e:
            raise BrokerError(_broker_failure(config, "following the job's events", e)) from None
        return None

    try:
        yield next_event
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


def _decode(data: bytes) -> StatusEvent | None:
    try:
        return EVENT_DECODER.decode(data)
    except msgspec.DecodeError:
        return None


#: Prints the build log lines that came since the last call (a no-op without ``--logs``).
ShowLines = Callable[[], None]
#: How long ``--wait --logs`` waits for an event before it looks for new log lines.
LOG_LINES_EVERY_SECONDS: Final = 0.1


@contextlib.contextmanager
def _log_lines(
    config: Config, deployment_id: str, wanted: bool, out: Callable[[str], None]
) -> Iterator[ShowLines | None]:
    """With ``wanted``, what prints the job's new log lines: from the start of its stream, read
    without waiting (the event wait paces it). The job's terminal event comes after its last lines."""
    if not wanted:
        yield None
        return
    from orchestrator.buildlogs.command import LogPrinter, redis_client
    from orchestrator.buildlogs.reader import StreamReader
    from orchestrator.buildlogs.redis_stream import stream_key

    with redis_client(config) as client:
        key = stream_key(config.redis.key_prefix, deployment_id)
        last = client.xrevrange(key, count=1)  # an earlier job of this deployment's lines are not shown
        reader = StreamReader(client, key, last[0][0].decode() if last else "0-0")
        printer = LogPrinter(None, out=lambda line: out(f"  │ {line}"), note=lambda _: None)

        def show() -> None:
            while entries := reader.wait(0):
                printer.show(entries)

        yield show


def _follow(
    job: JobBase,
    next_event: EventSource,
    timeout: float,
    out: Callable[[str], None],
    show_lines: ShowLines | None = None,
) -> int:
    deadline = time.monotonic() + timeout
    target = job.deployment_id
    while (left := deadline - time.monotonic()) > 0:
        event = next_event(min(left, 1.0 if show_lines is None else LOG_LINES_EVERY_SECONDS))
        if show_lines is not None:
            show_lines()
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
