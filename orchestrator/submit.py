"""``orchestrator submit FILE [--wait]``: publish a job, and optionally follow it to its end.

A broker or Redis that cannot be used ends in one line naming the endpoint (``host:port``, never the
password) and the cause — connection refused, DNS, authentication, virtual host, TLS, timeout, a
missing exchange or queue — raised as :class:`~orchestrator.errors.BrokerError` (RabbitMQ) or
:class:`~orchestrator.errors.CoordinationError` (Redis); the CLI exits 4 on either. Connection
timeouts: RabbitMQ's are pika's, which ``broker.url`` may set (``?socket_timeout=2&stack_timeout=5``;
default 10 s and 15 s), Redis's ``redis.socket_timeout_seconds``. With several nodes in ``broker.url``
each is tried in order until one answers; a connection lost while publishing or following events
moves on to the next node.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

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
from orchestrator.broker.nodes import BrokerNode
from orchestrator.config import Config
from orchestrator.connect_errors import connection_cause, endpoint, error_chain
from orchestrator.errors import BrokerError, CoordinationError
from orchestrator.logs import status_mark
from orchestrator.messages import EVENT_DECODER, TERMINAL_STATUSES, JobBase, StatusEvent, encode
from orchestrator.redaction import redact_text
from orchestrator.validation import JobValidator, Rejection

EXIT_SUCCEEDED: Final = 0
EXIT_FAILED: Final = 1
EXIT_INVALID: Final = 2
EXIT_TIMEOUT: Final = 3


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
    """Publish the job, confirmed, to the first node of ``broker.url`` that answers.

    A connection lost before the confirm came is tried again on the next node (at most once per
    node): the job may then arrive twice, which the orchestrator treats as the duplicate it is.
    """
    nodes = len(config.broker.urls)
    start, losses = 0, []
    while True:
        connection, index = _connect_broker(config, start=start)
        node = BrokerNode.of(config.broker.urls[index])
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
            return
        except pika.exceptions.UnroutableError:
            raise BrokerError(
                f"RabbitMQ at {node.endpoint}: the job could not be routed to queue "
                f"{config.broker.execute_queue!r} (no such queue bound to exchange "
                f"{config.broker.exchange!r}): is the orchestrator's topology declared (start the "
                "orchestrator once)?"
            ) from None
        except (pika.exceptions.AMQPConnectionError, OSError) as e:
            losses.append(_broker_failure(node, "publishing the job", e))
            if len(losses) >= nodes:
                raise BrokerError("; ".join(losses)) from None
            print(f"⚠️ {losses[-1]}; publishing on the next node", file=sys.stderr)
            start = index + 1
        except pika.exceptions.AMQPError as e:
            raise BrokerError(_broker_failure(node, "publishing the job", e)) from None
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()


# --- describing failures -------------------------------------------------------------------------


def _broker_failure(node: BrokerNode, doing: str, error: BaseException) -> str:
    """One line for a failure after connecting: a refused operation, or the connection lost."""
    failed = f"RabbitMQ at {node.endpoint}: {doing} failed"
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
    cause = connection_cause(error, what="RabbitMQ", key="broker.url", url=node.url)
    return f"{failed}: connection lost ({cause})"


def _connect_broker(config: Config, *, start: int = 0) -> tuple[pika.BlockingConnection, int]:
    """A connection to the first node of ``broker.url`` that answers, trying them in order from
    ``start`` (wrapping round), and that node's index; :class:`BrokerError` naming every node tried
    and its cause when none does."""
    urls = config.broker.urls
    failures = []
    for offset in range(len(urls)):
        index = (start + offset) % len(urls)
        url = urls[index]
        try:
            params = pika.URLParameters(url)
        except (ValueError, TypeError) as e:
            failures.append(f"{endpoint(url)}: broker.url: {redact_text(str(e))}")
            continue
        params.client_properties = {"connection_name": connection_name("submit"), "product": PRODUCT}
        if params.blocked_connection_timeout is None:
            params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_SECONDS
        try:
            return pika.BlockingConnection(params), index
        except (pika.exceptions.AMQPError, AMQPConnectorException, OSError) as e:
            cause = connection_cause(e, what="RabbitMQ", key="broker.url", url=url)
            failures.append(f"{endpoint(url)}: {cause}")
    if len(failures) == 1:
        raise BrokerError(f"cannot connect to RabbitMQ at {failures[0]}")
    raise BrokerError(f"cannot connect to any of {len(urls)} RabbitMQ nodes: {'; '.join(failures)}")


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
    """Events from a private queue bound to the status routing key. When its node is lost, the
    subscription moves to the next node that answers (events published meanwhile may be missed)."""
    doing = f"subscribing to {config.status.queue!r} events on exchange {config.broker.exchange!r}"
    current: list[tuple[pika.BlockingConnection, Any, str, int]] = []

    def subscribe(start: int) -> None:
        connection, index = _connect_broker(config, start=start)
        try:
            channel = connection.channel()
            private = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(private, config.broker.exchange, routing_key=config.status.queue)
        except (pika.exceptions.AMQPError, OSError) as e:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
            node = BrokerNode.of(config.broker.urls[index])
            raise BrokerError(_broker_failure(node, doing, e)) from None
        current[:] = [(connection, channel, private, index)]

    def next_event(timeout: float) -> StatusEvent | None:
        connection, channel, private, index = current[0]
        try:
            for _method, _props, body in channel.consume(private, auto_ack=True, inactivity_timeout=timeout):
                return _decode(body) if body is not None else None
        except (pika.exceptions.AMQPConnectionError, OSError) as e:
            node = BrokerNode.of(config.broker.urls[index])
            lost = _broker_failure(node, "following the job's events", e)
            if len(config.broker.urls) == 1:
                raise BrokerError(lost) from None
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
            subscribe(index + 1)
            moved = BrokerNode.of(config.broker.urls[current[0][3]])
            print(
                f"⚠️ {lost}; following the events on {moved.endpoint} (any published meanwhile are missed)",
                file=sys.stderr,
            )
        except pika.exceptions.AMQPError as e:
            node = BrokerNode.of(config.broker.urls[index])
            raise BrokerError(_broker_failure(node, "following the job's events", e)) from None
        return None

    subscribe(0)
    try:
        yield next_event
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            current[0][0].close()


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
        last = client.xrevrange(key, count=1)  # from here: not an earlier job's lines
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
    _level, mark = status_mark(event.type, event.status)
    parts = [f"{mark} {event.type} {event.deployment_id} attempt {event.attempt}: {event.status}"]
    if event.task_arn:
        parts.append(f"task {event.task_arn}")
    if event.exit_code is not None:
        parts.append(f"exit code {event.exit_code}")
    if event.reason:
        parts.append(event.reason)
    return " · ".join(parts)
