"""Topology: the plan (plain data) and its declaration against the real RabbitMQ."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import msgspec
import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel as Channel
from support import wait_until

from orchestrator.broker.names import retry_queue_name
from orchestrator.broker.topology import (
    Step,
    declare_topology,
    delay_queue_type,
    explain,
    plan_topology,
    status_topology,
)
from orchestrator.config import BrokerConfig, Config, StatusConfig
from orchestrator.errors import BrokerError

Depth = Callable[[Channel, str], int]


def _holds_one(queue_depth: Depth, channel: Channel, queue: str) -> bool:
    return queue_depth(channel, queue) == 1


# --- the plan, without a broker --------------------------------------------------------------------


def test_retry_queue_name_is_prefix_and_delay() -> None:
    assert retry_queue_name(BrokerConfig(retry_queue_prefix="jobs.retry"), 60) == "jobs.retry.60s"


def test_plan_declares_every_queue_durable_bound_by_its_own_name() -> None:
    broker = BrokerConfig(queue_type="quorum")
    plan = plan_topology(broker, StatusConfig(), (60, 10, 10), server_version="3.10.8")

    queues = {s.name: s for s in plan.steps if s.kind == "queue"}
    binds = {s.name: s for s in plan.steps if s.kind == "bind"}
    assert plan.steps[0] == Step(kind="exchange", name="blacktree", role="exchange")
    assert list(queues) == [
        "execute.queue",
        "execute.dlq",
        "execute.retry.10s",
        "execute.retry.60s",
        "status.queue",
    ]
    assert binds.keys() == queues.keys()
    assert all(b.exchange == "blacktree" and b.routing_key == b.name for b in binds.values())
    assert queues["execute.queue"].arguments == {"x-queue-type": "quorum"}
    assert queues["execute.dlq"].arguments == {"x-queue-type": "quorum"}


def test_delay_queue_expires_back_to_the_execute_queue_at_least_once_on_quorum() -> None:
    plan = plan_topology(BrokerConfig(queue_type="quorum"), StatusConfig(), (10,), server_version="3.10.8")

    delay = next(s for s in plan.steps if s.name == "execute.retry.10s" and s.kind == "queue")
    assert delay.arguments == {
        "x-queue-type": "quorum",
        "x-message-ttl": 10_000,
        "x-dead-letter-exchange": "blacktree",
        "x-dead-letter-routing-key": "execute.queue",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_classic_delay_queues_have_no_quorum_only_arguments() -> None:
    plan = plan_topology(BrokerConfig(queue_type="classic"), StatusConfig(), (10,))

    delay = next(s for s in plan.steps if s.name == "execute.retry.10s" and s.kind == "queue")
    assert delay.arguments == {
        "x-queue-type": "classic",
        "x-message-ttl": 10_000,
        "x-dead-letter-exchange": "blacktree",
        "x-dead-letter-routing-key": "execute.queue",
    }


@pytest.mark.parametrize(
    ("wanted", "version", "expected"),
    [
        ("quorum", "3.10.8", "quorum"),
        ("quorum", "3.13.0", "quorum"),
        ("quorum", "4.0.2", "quorum"),
        ("quorum", "3.9.29", "classic"),
        ("quorum", b"3.8.0", "classic"),
        ("quorum", None, "quorum"),
        ("quorum", "unknown", "quorum"),
        ("classic", "3.12.0", "classic"),
    ],
)
def test_delay_queues_fall_back_to_classic_before_rabbitmq_3_10(
    wanted: str, version: str | bytes | None, expected: str
) -> None:
    assert delay_queue_type(wanted, version) == expected  # type: ignore[arg-type]


def test_passive_plan_checks_exchanges_and_queues_but_binds_nothing() -> None:
    plan = plan_topology(BrokerConfig(declare=False), StatusConfig(), (10,))

    assert not plan.declare
    assert {s.kind for s in plan.checks()} == {"exchange", "queue"}
    assert len(plan.checks()) == 1 + 4


def test_status_topology_is_the_exchange_and_the_status_queue() -> None:
    plan = status_topology(BrokerConfig(exchange="x"), StatusConfig(queue="events"))

    assert [(s.kind, s.name) for s in plan.steps] == [
        ("exchange", "x"),
        ("queue", "events"),
        ("bind", "events"),
    ]


def test_explain_names_the_queue_the_argument_and_what_to_do() -> None:
    step = Step(kind="queue", name="jobs", role="execute queue", arguments={"x-queue-type": "quorum"})
    text = (
        "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'jobs' in vhost '/': "
        "received the value 'quorum' of type 'longstr' but current is none"
    )

    message = explain(step, 406, text, declare=True)

    assert "execute queue 'jobs'" in message
    assert "'x-queue-type'" in message
    assert "received the value 'quorum' of type 'longstr' but current is none" in message
    assert "broker.queue_type" in message
    assert "broker.declare = false" in message


def test_explain_missing_queue_in_passive_mode() -> None:
    step = Step(kind="queue", name="jobs", role="execute queue")

    message = explain(step, 404, "NOT_FOUND - no queue 'jobs' in vhost '/'", declare=False)

    assert message.startswith("execute queue 'jobs' does not exist and broker.declare is false")


# --- against the real RabbitMQ --------------------------------------------------------------------


def _declare(channel: Channel, config: Config) -> None:
    declare_topology(channel, config.broker, config.status, config.limits.retry_delays)


def _with_queue_type(config: Config, queue_type: str) -> Config:
    return msgspec.structs.replace(
        config, broker=msgspec.structs.replace(config.broker, queue_type=queue_type)
    )


@pytest.mark.services
def test_declaring_twice_is_idempotent_and_routes_by_queue_name(
    topology_config: Config,
    fresh_channel: Callable[[], Channel],
    queue_depth: Depth,
) -> None:
    # Given the topology declared once (by the fixture)
    config = topology_config
    channel = fresh_channel()

    # When it is declared again, and then checked passively
    _declare(channel, config)
    passive = msgspec.structs.replace(config.broker, declare=False)
    declare_topology(channel, passive, config.status, config.limits.retry_delays)

    # Then every queue is still there and reachable through the exchange by its own name
    for queue in (config.broker.execute_queue, config.broker.dlq, config.status.queue):
        channel.basic_publish(config.broker.exchange, queue, b"hello")
        wait_until(partial(_holds_one, queue_depth, channel, queue), 5, f"a message in {queue}")


@pytest.mark.services
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_delay_queue_delivers_back_to_the_execute_queue_after_its_ttl(
    service_config: Config,
    queue_type: str,
    fresh_channel: Callable[[], Channel],
    queue_depth: Depth,
) -> None:
    # Given a 1 s retry tier
    config = msgspec.structs.replace(
        _with_queue_type(service_config, queue_type),
        limits=msgspec.structs.replace(service_config.limits, retry_delays=(1,)),
    )
    channel = fresh_channel()
    _declare(channel, config)
    try:
        # When a job is published to the delay queue with its next attempt number
        sent_at = time.monotonic()
        channel.basic_publish(
            "",
            retry_queue_name(config.broker, 1),
            b'{"job": 1}',
            pika.BasicProperties(delivery_mode=2, headers={"x-attempt": 2}),
        )
        got: list[tuple[pika.spec.BasicProperties, bytes]] = []

        def arrived() -> bool:
            method, properties, body = channel.basic_get(config.broker.execute_queue, auto_ack=True)
            if method is not None:
                got.append((properties, body))
            return bool(got)

        # Then it comes back to the execute queue, not before its TTL, with its headers
        wait_until(arrived, 10, "the job back in the execute queue")
        assert time.monotonic() - sent_at >= 0.9
        properties, body = got[0]
        assert body == b'{"job": 1}'
        assert properties.headers["x-attempt"] == 2
        assert queue_depth(channel, retry_queue_name(config.broker, 1)) == 0
    finally:
        channel.queue_delete(retry_queue_name(config.broker, 1))


@pytest.mark.services
def test_declare_false_names_every_missing_queue(
    service_config: Config, fresh_channel: Callable[[], Channel]
) -> None:
    # Given only the exchange exists (the backend has not created the queues)
    channel = fresh_channel()
    channel.exchange_declare(service_config.broker.exchange, "direct", durable=True)
    passive = msgspec.structs.replace(service_config.broker, declare=False)

    # When the topology is checked
    with pytest.raises(BrokerError) as caught:
        declare_topology(channel, passive, service_config.status, (10,))

    # Then every missing queue is named, and nothing was created
    message = str(caught.value)
    execute = service_config.broker.execute_queue
    assert f"execute queue '{execute}' does not exist and broker.declare is false" in message
    assert f"dead-letter queue '{service_config.broker.dlq}' does not exist" in message
    assert f"'{retry_queue_name(service_config.broker, 10)}' does not exist" in message
    assert f"status queue '{service_config.status.queue}' does not exist" in message
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        fresh_channel().queue_declare(execute, passive=True)


@pytest.mark.services
def test_existing_queue_of_another_type_gives_a_clear_error(
    service_config: Config, fresh_channel: Callable[[], Channel]
) -> None:
    # Given the execute queue already exists as a quorum queue, and the config says classic
    execute = service_config.broker.execute_queue
    fresh_channel().queue_declare(execute, durable=True, arguments={"x-queue-type": "quorum"})

    # When the topology is declared
    with pytest.raises(BrokerError) as caught:
        _declare(fresh_channel(), service_config)

    # Then the error says which queue, which argument, and what to do
    message = str(caught.value)
    assert f"execute queue '{execute}' already exists with a different 'x-queue-type'" in message
    assert "broker.queue_type" in message
    assert "delete the queue" in message


@pytest.mark.services
def test_existing_delay_queue_with_another_ttl_gives_a_clear_error(
    service_config: Config, fresh_channel: Callable[[], Channel]
) -> None:
    # Given the 10 s tier's queue exists with a 5 s TTL
    retry = retry_queue_name(service_config.broker, 10)
    fresh_channel().queue_declare(
        retry, durable=True, arguments={"x-queue-type": "classic", "x-message-ttl": 5000}
    )

    # When the topology is declared
    with pytest.raises(BrokerError) as caught:
        declare_topology(fresh_channel(), service_config.broker, service_config.status, (10,))

    # Then the error names the retry queue and the TTL argument
    message = str(caught.value)
    assert f"retry queue (10 s tier) '{retry}' already exists with a different 'x-message-ttl'" in message
    assert "limits.retry_delays" in message
