"""The RabbitMQ topology: the exchange, the execute queue, its dead-letter queue, one delay queue per retry
tier, and the status queue.

:func:`plan_topology` says what should exist (plain data, tested without a broker);
:func:`declare_topology` makes it so on a blocking channel, idempotently. With ``broker.declare =
false`` the backend owns the topology and only passive declares are made: every missing queue is
named in one :class:`~orchestrator.errors.BrokerError`.

Delay queues hold a retried job for its tier's TTL, then dead-letter it back to the exchange with the
execute queue's routing key. Quorum queues support per-queue TTL and dead-lettering since RabbitMQ
3.10, and from then on at-least-once dead-lettering (``x-dead-letter-strategy``), which is what keeps a
retried job from being lost between the delay queue and the execute queue. On an older server the
delay queues are classic (whatever ``broker.queue_type`` says), because a quorum queue there would
ignore the TTL.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec
import pika.exceptions

from orchestrator.broker.connection import describe_broker_error
from orchestrator.broker.names import retry_queue_name
from orchestrator.config import BrokerConfig, StatusConfig
from orchestrator.errors import BrokerError

#: First RabbitMQ version whose quorum queues support message TTL and at-least-once dead-lettering.
QUORUM_DELAY_MIN_VERSION: Final = (3, 10, 0)
EXCHANGE_TYPE: Final = "direct"

REPLY_ACCESS_REFUSED: Final = 403
REPLY_NOT_FOUND: Final = 404
REPLY_PRECONDITION_FAILED: Final = 406

QueueType = Literal["quorum", "classic"]


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One declaration: an exchange, a queue (with its arguments) or a binding.

    ``role`` names the thing for people, e.g. ``"execute queue"`` or ``"retry queue (10 s tier)"``.
    """

    kind: Literal["exchange", "queue", "bind"]
    name: str
    role: str
    arguments: dict[str, Any] = {}
    exchange: str = ""
    routing_key: str = ""


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    """What should exist, in declaration order, and whether we may create it (``declare``)."""

    steps: tuple[Step, ...]
    declare: bool = True

    def checks(self) -> tuple[Step, ...]:
        """The steps to perform: all of them when declaring, only exchanges and queues when checking."""
        if self.declare:
            return self.steps
        return tuple(step for step in self.steps if step.kind != "bind")


def parse_version(text: str | bytes | None) -> tuple[int, ...] | None:
    """``"3.10.8"`` -> ``(3, 10, 8)``; ``None`` when the server did not say or said something else."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text:
        return None
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        return None
    return tuple(int(part) for part in match.groups("0"))


def delay_queue_type(queue_type: QueueType, server_version: str | bytes | None) -> QueueType:
    """The queue type for delay queues: ``queue_type``, unless the server is too old for quorum TTL."""
    version = parse_version(server_version)
    if queue_type == "quorum" and version is not None and version < QUORUM_DELAY_MIN_VERSION:
        return "classic"
    return queue_type


def queue_arguments(queue_type: QueueType) -> dict[str, Any]:
    """Arguments of a plain durable queue of ``queue_type``."""
    return {"x-queue-type": queue_type}


def delay_queue_arguments(broker: BrokerConfig, delay_seconds: int, queue_type: QueueType) -> dict[str, Any]:
    """Arguments of the delay queue of one tier: TTL, then dead-lettered back to the execute queue."""
    arguments: dict[str, Any] = {
        "x-queue-type": queue_type,
        "x-message-ttl": delay_seconds * 1000,
        "x-dead-letter-exchange": broker.exchange,
        "x-dead-letter-routing-key": broker.execute_queue,
    }
    if queue_type == "quorum":
        # At-most-once is the quorum default: a job could vanish on its way back. At-least-once
        # requires the reject-publish overflow mode (there is no length limit, so nothing is rejected).
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


def _queue_steps(exchange: str, name: str, role: str, arguments: dict[str, Any]) -> list[Step]:
    return [
        Step(kind="queue", name=name, role=role, arguments=arguments),
        Step(kind="bind", name=name, role=role, exchange=exchange, routing_key=name),
    ]


def plan_topology(
    broker: BrokerConfig,
    status: StatusConfig,
    retry_delays: Sequence[int],
    *,
    server_version: str | bytes | None = None,
) -> Topology:
    """Everything the orchestrator needs, in order. Every queue is bound with its own name as key."""
    exchange = broker.exchange
    plain = queue_arguments(broker.queue_type)
    delay_type = delay_queue_type(broker.queue_type, server_version)
    steps = [Step(kind="exchange", name=exchange, role="exchange")]
    steps += _queue_steps(exchange, broker.execute_queue, "execute queue", plain)
    steps += _queue_steps(exchange, broker.dlq, "dead-letter queue", plain)
    for delay in sorted(set(retry_delays)):
        steps += _queue_steps(
            exchange,
            retry_queue_name(broker, delay),
            f"retry queue ({delay} s tier)",
            delay_queue_arguments(broker, delay, delay_type),
        )
    steps += _queue_steps(exchange, status.queue, "status queue", plain)
    return Topology(steps=tuple(steps), declare=broker.declare)


def status_topology(broker: BrokerConfig, status: StatusConfig) -> Topology:
    """Only what status events need: the exchange and the status queue with its binding."""
    plain = queue_arguments(broker.queue_type)
    steps = [Step(kind="exchange", name=broker.exchange, role="exchange")]
    steps += _queue_steps(broker.exchange, status.queue, "status queue", plain)
    return Topology(steps=tuple(steps), declare=broker.declare)


def explain(step: Step, reply_code: int, reply_text: str, *, declare: bool) -> str:
    """Turn a channel error raised by ``step`` into what went wrong and what to do about it."""
    thing = f"{step.role} {step.name!r}" if step.role != "exchange" else f"exchange {step.name!r}"
    if reply_code == REPLY_NOT_FOUND and not declare:
        return (
            f"{thing} does not exist and broker.declare is false: create it "
            "(the backend owns the topology) or set broker.declare = true"
        )
    if reply_code == REPLY_PRECONDITION_FAILED:
        arg = re.search(r"inequivalent arg '([^']+)'", reply_text)
        got = re.search(r"(received .*)$", reply_text)
        which = f"a different {arg.group(1)!r}" if arg else "different arguments"
        detail = f" ({got.group(1)})" if got else f" ({reply_text})"
        return (
            f"{thing} already exists with {which} than this orchestrator declares{detail}. "
            f"Make the config match it ({_config_hint(step, arg.group(1) if arg else '')}), or delete "
            f"the {'exchange' if step.kind == 'exchange' else 'queue'} once it is empty so that it is "
            "declared again, or set broker.declare = false to use the existing topology as it is"
        )
    if reply_code == REPLY_ACCESS_REFUSED:
        return (
            f"not allowed to declare {thing} ({reply_text}): give the broker user configure "
            "permission on it, or create it yourself and set broker.declare = false"
        )
    action = "declaring" if declare else "checking"
    return f"{action} {thing} failed: ({reply_code}) {reply_text}"


def _config_hint(step: Step, arg: str) -> str:
    if arg in ("x-queue-type", "x-dead-letter-strategy", "x-overflow"):
        return "broker.queue_type"
    if arg == "x-message-ttl":
        return "the tier in limits.retry_delays"
    if arg.startswith("x-dead-letter"):
        return "broker.exchange and broker.execute_queue"
    if step.kind == "exchange":
        return f"the exchange must be a durable {EXCHANGE_TYPE} exchange"
    return "the queue must be durable"


def _perform(channel: Any, step: Step, *, passive: bool) -> None:
    if step.kind == "exchange":
        channel.exchange_declare(
            exchange=step.name, exchange_type=EXCHANGE_TYPE, durable=True, passive=passive
        )
    elif step.kind == "queue":
        channel.queue_declare(
            queue=step.name, durable=True, passive=passive, arguments=None if passive else step.arguments
        )
    else:
        channel.queue_bind(queue=step.name, exchange=step.exchange, routing_key=step.routing_key)


def declare_topology(
    channel: Any,
    broker: BrokerConfig,
    status: StatusConfig,
    retry_delays: Sequence[int],
) -> None:
    """Declare (or, with ``broker.declare = false``, check) the whole topology on a blocking channel.

    Idempotent: declaring what already exists with the same arguments changes nothing.

    Args:
        channel: an open ``pika.adapters.blocking_connection.BlockingChannel``. After a
            :class:`BrokerError` the broker may have closed it: open a new one.
        broker: the ``broker`` config section.
        status: the ``status`` config section (the status queue).
        retry_delays: the retry tiers in seconds (``limits.retry_delays``).

    Raises:
        BrokerError: a queue is missing (passive mode, every missing one named), exists with other
            arguments (which queue and which argument), or the broker refused; the message says what
            to do.
    """
    connection = getattr(channel, "connection", None)
    impl = getattr(connection, "_impl", None)
    server_properties = getattr(impl, "server_properties", None) or {}
    version = server_properties.get("version") if isinstance(server_properties, dict) else None
    topology = plan_topology(broker, status, retry_delays, server_version=version)
    run_topology(channel, topology)


def run_topology(channel: Any, topology: Topology) -> None:
    """Perform ``topology`` on a blocking channel (see :func:`declare_topology`)."""
    problems: list[str] = []
    spare_channels: list[Any] = []
    try:
        for step in topology.checks():
            try:
                _perform(channel, step, passive=not topology.declare)
            except pika.exceptions.ChannelClosedByBroker as e:
                problems.append(explain(step, e.reply_code, e.reply_text, declare=topology.declare))
                if topology.declare:
                    break
                # The broker closed the channel; keep checking on a fresh one so that every missing
                # queue is named at once.
                channel = channel.connection.channel()
                spare_channels.append(channel)
    except pika.exceptions.AMQPError as e:
        problems.append(
            f"the broker connection failed while declaring the topology ({describe_broker_error(e)})"
        )
    finally:
        for spare in spare_channels:
            if spare.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    spare.close()
    if problems:
        raise BrokerError("; ".join(problems))
