"""Consumer: the plain bookkeeping, then the real thing against RabbitMQ (acks, requeues, losses)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import msgspec
import pika
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pika.adapters.blocking_connection import BlockingChannel as Channel
from support import wait_until

from orchestrator.broker.connection import Backoff, describe_error
from orchestrator.broker.consumer import (
    Consumer,
    Delivery,
    DeliveryLedger,
    Settle,
    SettlePlan,
)
from orchestrator.config import Config
from orchestrator.connect_errors import endpoint

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


def test_a_batch_settled_in_order_is_one_multiple_ack() -> None:
    ledger = DeliveryLedger()
    generation = ledger.new_generation()
    for tag in range(1, 101):
        ledger.received(tag)

    plan = ledger.plan([(generation, tag, None) for tag in range(1, 101)])

    assert plan == SettlePlan(ack_up_to=100)
    assert len(ledger) == 0


def test_acks_above_an_outstanding_delivery_go_one_by_one_and_nacks_go_first() -> None:
    ledger = DeliveryLedger()
    generation = ledger.new_generation()
    for tag in range(1, 8):
        ledger.received(tag)

    # 4 stays outstanding (its job waits for a slot); 3 is nacked; 1 comes twice; one is stale
    requests: list[tuple[int, int, bool | None]] = [
        (generation, 1, None),
        (generation, 2, None),
        (generation, 3, True),
        (generation, 5, None),
        (generation, 6, None),
        (generation, 1, None),
        (generation - 1, 7, None),
    ]
    plan = ledger.plan(requests)

    assert plan == SettlePlan(stale=(6,), duplicate=(5,), nacks=((3, True),), ack_up_to=2, acks=(5, 6)), (
        "the multiple ack stops below 4, and is sent after the nack of 3"
    )
    assert ledger.take_all() == [4, 7]


def test_a_single_ack_is_not_sent_as_multiple() -> None:
    ledger = DeliveryLedger()
    generation = ledger.new_generation()
    ledger.received(1)
    assert ledger.plan([(generation, 1, None)]) == SettlePlan(acks=(1,))


@given(
    st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(st.integers(1, n), st.sampled_from([None, None, None, True, False])),
                max_size=3 * n,
            ),
            st.integers(1, 6),
        )
    )
)
def test_batched_settling_acks_and_nacks_exactly_what_was_asked(
    case: tuple[int, list[tuple[int, bool | None]], int],
) -> None:
    # A model broker: the outstanding tags of one channel, and what became of each.
    n, requests, batch_size = case
    ledger = DeliveryLedger()
    generation = ledger.new_generation()
    outstanding = set(range(1, n + 1))
    for tag in sorted(outstanding):
        ledger.received(tag)
    fate: dict[int, str] = {}
    wanted: dict[int, str] = {}
    for tag, requeue in requests:
        wanted.setdefault(tag, "ack" if requeue is None else f"nack:{requeue}")

    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        plan = ledger.plan([(generation, tag, requeue) for tag, requeue in batch])
        for tag, requeue in plan.nacks:
            assert tag in outstanding
            outstanding.discard(tag)
            fate[tag] = f"nack:{requeue}"
        if plan.ack_up_to is not None:
            for tag in sorted(t for t in outstanding if t <= plan.ack_up_to):
                outstanding.discard(tag)
                fate[tag] = "ack"
        for tag in plan.acks:
            assert tag in outstanding, f"ack of {tag}: not outstanding"
            outstanding.discard(tag)
            fate[tag] = "ack"

    assert fate == wanted, "each delivery is settled once, as its first request asked, and no other is"
    assert outstanding == set(range(1, n + 1)) - set(wanted)


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
        self.stale: list[int] = []

    def on_stale(self, generation: int) -> None:
        self.stale.append(generation)

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
            max_attempts=config.highest_max_attempts(),
            on_delivery=recorder.on_delivery,
            on_connectivity=recorder.on_connectivity,
            on_stale=recorder.on_stale,
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
    wait_until(lambda: consumer.outstanding() == 0, 5, "both acks to be sent")
    consumer.stop(10)
    assert queue_depth(channel, execute) == 0
    assert recorder.connectivity == [(True, f"connected to {endpoint(topology_config.broker.url)}")]
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
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given three deliveries held, one acked
    execute = topology_config.broker.execute_queue
    channel = fresh_channel()
    _publish(channel, execute, [b"a", b"b", b"c"])
    consumer = make_consumer()
    held = recorder.take(3)
    consumer.ack(held[0])
    wait_until(lambda: consumer.outstanding() == 2, 5, "the ack to be sent")

    # When the consumer stops
    consumer.stop(10)

    # Then the two unacked ones are back in the queue; acking them now does nothing
    wait_until(lambda: queue_depth(channel, execute) == 2, 5, "two messages requeued")
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
) -> None:
    execute = topology_config.broker.execute_queue
    channel = fresh_channel()
    _publish(channel, execute, [b"in-flight"])
    consumer = make_consumer()
    (in_flight,) = recorder.take(1)

    consumer.pause()
    wait_until(
        lambda: channel.queue_declare(execute, passive=True).method.consumer_count == 0,
        5,
        "the consumer to be cancelled",
    )
    _publish(channel, execute, [b"later"])
    consumer.ack(in_flight)

    wait_until(lambda: consumer.outstanding() == 0, 5, "the in-flight ack")
    wait_until(lambda: queue_depth(channel, execute) == 1, 5, "the later message to stay in the queue")
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
        wait_until(lambda: len(acked) >= 50, 15, "the first 50 acks")

        # When RabbitMQ closes the consumer's connection mid-stream
        with caplog.at_level(logging.WARNING):
            close_connection(consumer.connection_name)
            wait_until(lambda: recorder.states() == [True, False, True], 20, "a reconnect")

            # ... and the deliveries held from before are acked after the reconnect
            for delivery in held:
                consumer.ack(delivery)
            release.set()
            wait_until(lambda: {d.body for d in acked} == set(bodies), 30, "every job acked")
    finally:
        done.set()
        thread.join(5)

    # Then: the stale acks were ignored (no broker error, so only one reconnect), every job was acked,
    # most of them on the new connection, the held ones came back redelivered, nothing is left
    first_generation = held[0].generation
    held_bodies = {d.body for d in held}
    assert recorder.states() == [True, False, True]
    assert caplog.text.count("ignoring ack of delivery") >= len(held)
    assert len({d.body for d in acked if d.generation > first_generation}) >= total - 50 - 20
    assert not recorder.connectivity[1][0] and "CONNECTION_FORCED" in recorder.connectivity[1][1]
    # whoever held deliveries of the lost channel was told, at the loss, that they are stale
    assert recorder.stale and recorder.stale[0] > first_generation
    assert all(d.generation >= recorder.stale[0] for d in acked if d.redelivered and d.body in held_bodies)
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
    wait_until(lambda: consumer.generation > generation, 10, "a new channel")

    def queue_exists() -> bool:
        try:
            fresh_channel().queue_declare(execute, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return True

    wait_until(queue_exists, 10, "the execute queue declared again")
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
) -> None:
    execute = topology_config.broker.execute_queue
    fresh_channel().queue_delete(execute)

    consumer = make_consumer(declare=False)

    wait_until(lambda: len(recorder.connectivity) >= 1, 10, "a connectivity report")
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
) -> None:
    # Given a 1 s heartbeat: RabbitMQ closes a connection that misses two of them
    consumer = make_consumer(heartbeat_seconds=1)
    wait_until(lambda: consumer.connected, 10, "the consumer to connect")

    # When nothing happens for three heartbeat intervals (a fixed time on purpose: what is shown is
    # that the connection is not closed within it)
    threading.Event().wait(3.5)

    # Then the connection is the same one, and still delivers
    _publish(fresh_channel(), topology_config.broker.execute_queue, [b"still here"])
    (delivery,) = recorder.take(1)
    assert delivery.body == b"still here"
    assert recorder.states() == [True]
    consumer.ack(delivery)
