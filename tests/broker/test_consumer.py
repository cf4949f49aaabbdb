"""Consumer: the plain bookkeeping, then the real thing against RabbitMQ (acks, requeues, losses)."""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal

import msgspec
import pika
import pika.compat
import pytest

from orchestrator.broker.connection import Backoff, describe_error
from orchestrator.broker.consumer import (
    Consumer,
    Delivery,
    DeliveryLedger,
    Settle,
    attempt_from_headers,
    plain,
)
from orchestrator.config import Config

Channel = pika.adapters.blocking_connection.BlockingChannel
Eventually = Callable[..., None]
Depth = Callable[[Channel, str], int]

# --- plain logic -----------------------------------------------------------------------------------


def test_ledger_sends_each_ack_once_and_ignores_other_generations() -> None:
    ledger = DeliveryLedger()
    first = ledger.new_generation()
    ledger.received(1)
    ledger.received(2)

    assert ledger.settle(first, 1) is Settle.SEND
    assert ledger.settle(first, 1) is Settle.DUPLICATE
    assert len(ledger) == 1

    second = ledger.new_generation()
    assert second > first
    assert len(ledger) == 0
    assert ledger.settle(first, 2) is Settle.STALE
    ledger.received(2)
    assert ledger.settle(second, 2) is Settle.SEND


def test_ledger_take_all_returns_outstanding_oldest_first() -> None:
    ledger = DeliveryLedger()
    generation = ledger.new_generation()
    for tag in (1, 2, 3):
        ledger.received(tag)
    ledger.settle(generation, 2)

    assert ledger.take_all() == [1, 3]
    assert len(ledger) == 0
    assert ledger.settle(generation, 1) is Settle.DUPLICATE


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        ({}, 1),
        ({"x-attempt": 3}, 3),
        ({"x-attempt": pika.compat.long(2)}, 2),
        ({"x-attempt": "2"}, 2),
        ({"x-attempt": " 4 "}, 4),
        ({"x-attempt": 0}, 1),
        ({"x-attempt": -5}, 1),
        ({"x-attempt": "two"}, 1),
        ({"x-attempt": "²"}, 1),
        ({"x-attempt": 2.5}, 1),
        ({"x-attempt": True}, 1),
        ({"x-attempt": None}, 1),
        ({"x-attempt": [2]}, 1),
    ],
)
def test_attempt_comes_from_the_header_and_garbage_means_one(
    headers: dict[str, object], attempt: int
) -> None:
    assert attempt_from_headers(headers) == attempt


def test_headers_are_decoded_to_plain_types() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    raw = {
        "count": pika.compat.long(7),
        "price": Decimal("1.5"),
        "name": b"caf\xc3\xa9",
        "blob": b"\xff\xfe",
        "at": when,
        "x-death": [{"count": pika.compat.long(1), "routing-keys": [b"q"]}],
        "flag": True,
        "none": None,
    }

    decoded = plain(raw)

    assert decoded == {
        "count": 7,
        "price": 1.5,
        "name": "café",
        "blob": b"\xff\xfe",
        "at": "2026-01-02T03:04:05+00:00",
        "x-death": [{"count": 1, "routing-keys": ["q"]}],
        "flag": True,
        "none": None,
    }
    assert type(decoded["count"]) is int
    assert type(decoded["x-death"][0]["count"]) is int


def test_backoff_is_exponential_with_full_jitter_capped() -> None:
    top = Backoff(base_seconds=0.5, cap_seconds=4.0, rng=lambda: 0.999999)
    delays = [round(top.next_delay(), 3) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]

    bottom = Backoff(base_seconds=0.5, cap_seconds=4.0, rng=lambda: 0.0)
    assert bottom.next_delay() == 0.0

    top.reset()
    assert top.failures == 0
    assert round(top.next_delay(), 3) == 0.5


def test_describe_error_redacts_credentials() -> None:
    error = pika.exceptions.AMQPConnectionError("cannot reach amqp://user:s3cret@rabbit:5672/")
    text = describe_error(error)
    assert "s3cret" not in text
    assert "AMQPConnectionError" in text


def test_delivery_is_an_immutable_struct_that_travels_between_actors() -> None:
    delivery = Delivery(
        generation=1,
        delivery_tag=5,
        redelivered=False,
        body=b"{}",
        headers={"a": 1},
        attempt=1,
        received_at=0.0,
    )
    assert msgspec.json.decode(msgspec.json.encode(delivery), type=Delivery) == delivery
    with pytest.raises(AttributeError):
        delivery.delivery_tag = 6  # type: ignore[misc]


# --- against the real RabbitMQ --------------------------------------------------------------------


class Recorder:
    """Collects deliveries and connectivity reports from the consumer's I/O thread."""

    def __init__(self) -> None:
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.connectivity: list[tuple[bool, str]] = []

    def on_delivery(self, delivery: Delivery) -> None:
        self.deliveries.put(delivery)

    def on_connectivity(self, ok: bool, reason: str) -> None:
        self.connectivity.append((ok, reason))

    def take(self, n: int, timeout: float = 10.0) -> list[Delivery]:
        return [self.deliveries.get(timeout=timeout) for _ in range(n)]

    def states(self) -> list[bool]:
        return [ok for ok, _ in self.connectivity]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_consumer(topology_config: Config, recorder: Recorder) -> Iterator[Callable[..., Consumer]]:
    """Build and start consumers of the test's queues; stopped at the end."""
    consumers: list[Consumer] = []

    def make(config: Config = topology_config, **broker_overrides: object) -> Consumer:
        broker = msgspec.structs.replace(config.broker, reconnect_max_seconds=0.5, **broker_overrides)
        consumer = Consumer(
            broker,
            config.status,
            config.limits.retry_delays,
            on_delivery=recorder.on_delivery,
            on_connectivity=recorder.on_connectivity,
        )
        consumers.append(consumer)
        consumer.start()
        return consumer

    yield make
    for consumer in consumers:
        consumer.stop(10)


def _publish(channel: Channel, queue_name: str, bodies: list[bytes], **properties: object) -> None:
    for body in bodies:
        channel.basic_publish("", queue_name, body, pika.BasicProperties(delivery_mode=2, **properties))


@pytest.mark.services
@pytest.mark.parametrize("topology_config", ["classic", "quorum"], indirect=True)
def test_receives_and_acks_from_another_thread(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    queue_depth: Depth,
    eventually: Eventually,
) -> None:
    # Given two jobs in the execute queue, one a retry
    execute = topology_config.broker.execute_queue
    channel = fresh_channel()
    _publish(channel, execute, [b"first"], message_id="m-1")
    _publish(channel, execute, [b"second"], headers={"x-attempt": 2})

    # When the consumer receives them and this (test) thread acks them
    consumer = make_consumer()
    first, second = recorder.take(2)
    assert consumer.outstanding() == 2
    consumer.ack(first)
    consumer.ack(second)

    # Then they are what was sent, and gone from the broker
    assert (first.body, first.attempt, first.message_id, first.redelivered) == (b"first", 1, "m-1", False)
    assert (second.body, second.attempt, second.headers["x-attempt"]) == (b"second", 2, 2)
    assert first.generation == second.generation == consumer.generation
    eventually(lambda: consumer.outstanding() == 0, 5, "both acks to be sent")
    consumer.stop(10)
    assert queue_depth(channel, execute) == 0
    assert recorder.connectivity == [(True, "")]
    assert not consumer.connected


@pytest.mark.services
@pytest.mark.parametrize("topology_config", ["classic", "quorum"], indirect=True)
def test_nack_with_requeue_brings_the_message_back_redelivered(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
) -> None:
    _publish(fresh_channel(), topology_config.broker.execute_queue, [b"job"])
    consumer = make_consumer()

    (delivery,) = recorder.take(1)
    consumer.nack(delivery, requeue=True)
    (again,) = recorder.take(1)

    assert again.body == b"job"
    assert not delivery.redelivered
    assert again.redelivered
    consumer.ack(again)


@pytest.mark.services
def test_stop_requeues_every_unacked_delivery_and_later_acks_are_ignored(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    queue_depth: Depth,
    eventually: Eventually,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given three deliveries held, one acked
    execute = topology_config.broker.execute_queue
    channel = fresh_channel()
    _publish(channel, execute, [b"a", b"b", b"c"])
    consumer = make_consumer()
    held = recorder.take(3)
    consumer.ack(held[0])
    eventually(lambda: consumer.outstanding() == 2, 5, "the ack to be sent")

    # When the consumer stops
    consumer.stop(10)

    # Then the two unacked ones are back in the queue; acking them now does nothing
    eventually(lambda: queue_depth(channel, execute) == 2, 5, "two messages requeued")
    with caplog.at_level(logging.WARNING):
        consumer.ack(held[1])
    assert "ignoring ack of delivery" in caplog.text
    assert queue_depth(channel, execute) == 2


@pytest.mark.services
def test_pause_stops_new_deliveries_but_in_flight_ones_can_still_be_acked(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    queue_depth: Depth,
    eventually: Eventually,
) -> None:
    execute = topology_config.broker.execute_queue
    channel = fresh_channel()
    _publish(channel, execute, [b"in-flight"])
    consumer = make_consumer()
    (in_flight,) = recorder.take(1)

    consumer.pause()
    eventually(
        lambda: channel.queue_declare(execute, passive=True).method.consumer_count == 0,
        5,
        "the consumer to be cancelled",
    )
    _publish(channel, execute, [b"later"])
    consumer.ack(in_flight)

    eventually(lambda: consumer.outstanding() == 0, 5, "the in-flight ack")
    eventually(lambda: queue_depth(channel, execute) == 1, 5, "the later message to stay in the queue")
    assert recorder.deliveries.empty()
    assert consumer.connected


@pytest.mark.services
@pytest.mark.slow
@pytest.mark.parametrize("topology_config", ["classic", "quorum"], indirect=True)
def test_connection_closed_mid_stream_every_message_is_acked_once(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    queue_depth: Depth,
    eventually: Eventually,
    close_connection: Callable[[str], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given 300 jobs, and a worker thread that acks as it goes, holds the first five it gets, and
    # after 50 acks waits (with a full prefetch window in hand) until the connection has been cut
    total = 300
    execute = topology_config.broker.execute_queue
    channel = fresh_channel()
    bodies = [f"job-{i}".encode() for i in range(total)]
    _publish(channel, execute, bodies)
    consumer = make_consumer(prefetch=20)
    held: list[Delivery] = []
    acked: list[Delivery] = []
    release = threading.Event()
    done = threading.Event()

    def worker() -> None:
        while not done.is_set():
            if len(acked) >= 50:
                release.wait(30)
            try:
                delivery = recorder.deliveries.get(timeout=0.1)
            except queue.Empty:
                continue
            if len(held) < 5 and not release.is_set():
                held.append(delivery)
                continue
            acked.append(delivery)
            consumer.ack(delivery)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        eventually(lambda: len(acked) >= 50, 15, "the first 50 acks")

        # When RabbitMQ closes the consumer's connection mid-stream
        with caplog.at_level(logging.WARNING):
            close_connection(consumer.connection_name)
            eventually(lambda: recorder.states() == [True, False, True], 20, "a reconnect")

            # ... and the deliveries held from before are acked after the reconnect
            for delivery in held:
                consumer.ack(delivery)
            release.set()
            eventually(lambda: {d.body for d in acked} == set(bodies), 30, "every job acked")
    finally:
        done.set()
        thread.join(5)

    # Then: the stale acks were ignored (no broker error, so only one reconnect), every job was acked,
    # most of them on the new connection, the held ones came back redelivered, nothing is left
    first_generation = held[0].generation
    assert recorder.states() == [True, False, True]
    assert caplog.text.count("ignoring ack of delivery") >= len(held)
    assert len({d.body for d in acked if d.generation > first_generation}) >= total - 50 - 20
    assert not recorder.connectivity[1][0] and "CONNECTION_FORCED" in recorder.connectivity[1][1]
    redelivered = {d.body for d in acked if d.redelivered}
    assert {d.body for d in held} <= redelivered
    assert len({d.body for d in acked}) == total
    consumer.stop(10)
    assert queue_depth(channel, execute) == 0


@pytest.mark.services
def test_queue_deleted_under_the_consumer_it_declares_again_and_resumes(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    eventually: Eventually,
) -> None:
    # Given a consumer that has received and acked one job
    execute = topology_config.broker.execute_queue
    _publish(fresh_channel(), execute, [b"before"])
    consumer = make_consumer()
    (before,) = recorder.take(1)
    consumer.ack(before)
    generation = consumer.generation

    # When the queue is deleted under it (RabbitMQ sends basic.cancel)
    fresh_channel().queue_delete(execute)

    # Then it notices, declares the queue again and consumes from it
    eventually(lambda: consumer.generation > generation, 10, "a new channel")

    def queue_exists() -> bool:
        try:
            fresh_channel().queue_declare(execute, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return True

    eventually(queue_exists, 10, "the execute queue declared again")
    _publish(fresh_channel(), execute, [b"after"])
    (after,) = recorder.take(1)
    assert after.body == b"after"
    assert after.generation > generation
    consumer.ack(after)
    assert recorder.states() == [True]


@pytest.mark.services
def test_declare_false_and_no_queue_reports_why_it_cannot_consume(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    eventually: Eventually,
) -> None:
    execute = topology_config.broker.execute_queue
    fresh_channel().queue_delete(execute)

    consumer = make_consumer(declare=False)

    eventually(lambda: len(recorder.connectivity) >= 1, 10, "a connectivity report")
    ok, reason = recorder.connectivity[0]
    assert not ok
    assert f"execute queue '{execute}' does not exist and broker.declare is false" in reason
    assert not consumer.connected


@pytest.mark.services
@pytest.mark.slow
def test_heartbeats_keep_an_idle_connection_open(
    topology_config: Config,
    make_consumer: Callable[..., Consumer],
    recorder: Recorder,
    fresh_channel: Callable[[], Channel],
    eventually: Eventually,
) -> None:
    # Given a 1 s heartbeat: RabbitMQ closes a connection that misses two of them
    consumer = make_consumer(heartbeat_seconds=1)
    eventually(lambda: consumer.connected, 10, "the consumer to connect")

    # When nothing happens for three heartbeat intervals
    threading.Event().wait(3.5)

    # Then the connection is the same one, and still delivers
    _publish(fresh_channel(), topology_config.broker.execute_queue, [b"still here"])
    (delivery,) = recorder.take(1)
    assert delivery.body == b"still here"
    assert recorder.states() == [True]
    consumer.ack(delivery)
