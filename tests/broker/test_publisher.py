"""ConfirmingPublisher: the confirm bookkeeping, then pipelined publishing against the real RabbitMQ."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel as Channel
from support import unique, wait_until

from orchestrator.broker.publisher import ConfirmingPublisher, ConfirmLedger, PendingMessage
from orchestrator.config import BrokerConfig, Config
from orchestrator.errors import SinkError

Drain = Callable[[Channel, str], list[tuple[pika.spec.BasicProperties, bytes]]]

# --- plain logic -----------------------------------------------------------------------------------


def _message(seq: int, message_id: str | None = None) -> PendingMessage:
    properties = pika.BasicProperties(message_id=message_id or f"id-{seq}")
    return PendingMessage(seq, "x", "q", f"m{seq}".encode(), properties, lambda ok, detail: None)


def test_ledger_assigns_tags_in_order_and_refuses_past_max_pending() -> None:
    ledger = ConfirmLedger(max_pending=3)
    for seq in (1, 2, 3):
        ledger.add(_message(seq))

    with pytest.raises(SinkError, match="limit 3"):
        ledger.add(_message(4))
    assert [(tag, m.seq) for tag, m in ledger.take_waiting()] == [(1, 1), (2, 2), (3, 3)]
    assert ledger.pending == 3


def test_ledger_matches_single_and_multiple_acks_by_tag() -> None:
    ledger = ConfirmLedger(max_pending=10)
    for seq in range(1, 6):
        ledger.add(_message(seq))
    ledger.take_waiting()

    assert [m.seq for m in ledger.acked(2, multiple=False)] == [2]
    assert [m.seq for m in ledger.acked(4, multiple=True)] == [1, 3, 4]
    assert ledger.acked(4, multiple=False) == []
    assert ledger.pending == 1


def test_ledger_after_channel_loss_resends_everything_unconfirmed_in_first_published_order() -> None:
    ledger = ConfirmLedger(max_pending=10)
    for seq in (1, 2, 3):
        ledger.add(_message(seq))
    ledger.take_waiting()
    ledger.acked(2, multiple=False)
    ledger.add(_message(4))

    assert ledger.channel_lost() == 2
    assert [(tag, m.seq) for tag, m in ledger.take_waiting()] == [(1, 1), (2, 3), (3, 4)]


def test_ledger_nack_keeps_the_messages_for_a_resend() -> None:
    ledger = ConfirmLedger(max_pending=10)
    for seq in (1, 2, 3):
        ledger.add(_message(seq))
    ledger.take_waiting()

    assert [m.seq for m in ledger.nacked(2, multiple=True)] == [1, 2]
    assert ledger.pending == 3


def test_ledger_a_later_multiple_ack_does_not_confirm_a_nacked_message() -> None:
    # RabbitMQ's ack with `multiple` covers only the tags it had not settled: after nacking 2 it may
    # ack 3 with multiple=True. Counting 2 as confirmed lost a retry in a cluster failover (CI).
    ledger = ConfirmLedger(max_pending=10)
    for seq in (1, 2, 3, 4):
        ledger.add(_message(seq))
    ledger.take_waiting()

    assert [m.seq for m in ledger.nacked(2, multiple=False)] == [2]
    assert [m.seq for m in ledger.acked(3, multiple=True)] == [1, 3]
    assert [m.seq for m in ledger.nacked(4, multiple=True)] == [4], "2 was nacked already"
    assert ledger.pending == 2
    assert ledger.channel_lost() == 2
    assert [(tag, m.seq) for tag, m in ledger.take_waiting()] == [(1, 2), (2, 4)]
    assert [m.seq for m in ledger.acked(2, multiple=True)] == [2, 4], "on the next channel, a tag is a tag"


def test_ledger_marks_returned_messages_by_message_id_oldest_first() -> None:
    ledger = ConfirmLedger(max_pending=10)
    ledger.add(_message(1, "same"))
    ledger.add(_message(2, "same"))
    ledger.take_waiting()

    assert ledger.returned("same", "unroutable")
    done = ledger.acked(2, multiple=True)
    assert [(m.seq, m.returned) for m in done] == [(1, "unroutable"), (2, None)]
    assert not ledger.returned("unknown", "unroutable")


def test_ledger_removes_the_messages_for_a_missing_exchange() -> None:
    ledger = ConfirmLedger(max_pending=10)
    for seq in (1, 2):
        ledger.add(_message(seq))
    ledger.take_waiting()
    ledger.add(
        PendingMessage(3, "gone", "q", b"", pika.BasicProperties(message_id="id-3"), lambda ok, d: None)
    )

    assert [m.seq for m in ledger.remove_for_exchange("x")] == [1, 2]
    assert ledger.pending == 1
    assert [m.seq for m in ledger.remove_for_exchange("gone")] == [3]
    assert ledger.pending == 0


def test_publish_past_max_pending_raises_and_close_fails_the_rest() -> None:
    # Not started: nothing is sent, so the pending messages pile up.
    results: list[tuple[bool, str]] = []
    publisher = ConfirmingPublisher(
        BrokerConfig(), name="test", max_pending=2, on_connectivity=lambda ok, detail: None
    )
    for body in (b"1", b"2"):
        publisher.publish("", "q", body, on_confirm=lambda ok, detail: results.append((ok, detail)))

    with pytest.raises(SinkError):
        publisher.publish("", "q", b"3", on_confirm=lambda ok, detail: results.append((ok, detail)))
    publisher.close(0)

    assert [ok for ok, _ in results] == [False, False]
    assert "closed" in results[0][1]
    with pytest.raises(SinkError, match="closed"):
        publisher.publish("", "q", b"4", on_confirm=lambda ok, detail: None)


# --- against the real RabbitMQ --------------------------------------------------------------------


class Confirms:
    """Counts on_confirm calls per message, from the publisher's I/O thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: collections.Counter[bytes] = collections.Counter()
        self.ok: set[bytes] = set()
        self.failed: dict[bytes, str] = {}

    def callback(self, body: bytes) -> Callable[[bool, str], None]:
        def on_confirm(ok: bool, detail: str) -> None:
            with self._lock:
                self.calls[body] += 1
                if ok:
                    self.ok.add(body)
                else:
                    self.failed[body] = detail

        return on_confirm

    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


@pytest.fixture
def make_publisher(topology_config: Config) -> Iterator[Callable[..., ConfirmingPublisher]]:
    publishers: list[ConfirmingPublisher] = []

    def make(
        on_connectivity: Callable[[bool, str], None] = lambda ok, detail: None,
        max_pending: int = 10_000,
        url: str | None = None,
    ) -> ConfirmingPublisher:
        broker = msgspec.structs.replace(
            topology_config.broker, reconnect_max_seconds=0.5, url=url or topology_config.broker.url
        )
        publisher = ConfirmingPublisher(
            broker, name="test", max_pending=max_pending, on_connectivity=on_connectivity
        )
        publishers.append(publisher)
        publisher.start()
        return publisher

    yield make
    for publisher in publishers:
        publisher.close(5)


@pytest.mark.services
def test_a_thousand_messages_are_confirmed_once_each_and_all_arrive(
    topology_config: Config,
    make_publisher: Callable[..., ConfirmingPublisher],
    fresh_channel: Callable[[], Channel],
    drain_queue: Drain,
) -> None:
    exchange, execute = topology_config.broker.exchange, topology_config.broker.execute_queue
    publisher = make_publisher()
    confirms = Confirms()
    bodies = [f"m{i}".encode() for i in range(1000)]

    for body in bodies:
        publisher.publish(
            exchange, execute, body, headers={"x-attempt": 1}, on_confirm=confirms.callback(body)
        )

    wait_until(lambda: confirms.total() == 1000, 30, "1000 confirms")
    assert confirms.ok == set(bodies)
    assert set(confirms.calls.values()) == {1}
    assert publisher.pending() == 0
    messages = drain_queue(fresh_channel(), execute)
    assert [body for _, body in messages] == bodies
    assert all(p.delivery_mode == 2 and p.headers == {"x-attempt": 1} for p, _ in messages)
    assert len({p.message_id for p, _ in messages}) == 1000


@pytest.mark.services
def test_unroutable_message_is_a_failure_not_a_success(
    topology_config: Config, make_publisher: Callable[..., ConfirmingPublisher]
) -> None:
    publisher = make_publisher()
    confirms = Confirms()

    publisher.publish(
        topology_config.broker.exchange, "no.such.queue", b"lost", on_confirm=confirms.callback(b"lost")
    )
    publisher.publish(
        "", topology_config.broker.execute_queue, b"kept", on_confirm=confirms.callback(b"kept")
    )

    wait_until(lambda: confirms.total() == 2, 10, "both confirms")
    assert confirms.ok == {b"kept"}
    assert confirms.failed[b"lost"].startswith("unroutable")
    assert "no.such.queue" in confirms.failed[b"lost"]


@pytest.mark.services
def test_a_missing_exchange_fails_its_messages_and_the_others_still_go_through(
    topology_config: Config, make_publisher: Callable[..., ConfirmingPublisher]
) -> None:
    connectivity: list[bool] = []
    publisher = make_publisher(on_connectivity=lambda ok, detail: connectivity.append(ok))
    confirms = Confirms()
    execute = topology_config.broker.execute_queue

    publisher.publish("", execute, b"before", on_confirm=confirms.callback(b"before"))
    publisher.publish("no.such.exchange", "q", b"lost", on_confirm=confirms.callback(b"lost"))
    publisher.publish("", execute, b"after", on_confirm=confirms.callback(b"after"))

    wait_until(lambda: confirms.total() == 3, 15, "three confirms")
    assert confirms.ok == {b"before", b"after"}
    assert "exchange 'no.such.exchange' does not exist" in confirms.failed[b"lost"]
    assert set(confirms.calls.values()) == {1}
    wait_until(lambda: connectivity[-1:] == [True], 10, "the channel reopened")


@pytest.mark.services
@pytest.mark.slow
def test_connection_closed_mid_burst_everything_arrives_and_every_confirm_is_true(
    topology_config: Config,
    make_publisher: Callable[..., ConfirmingPublisher],
    fresh_channel: Callable[[], Channel],
    drain_queue: Drain,
    close_connection: Callable[[str], None],
) -> None:
    # Given a publisher sending 5000 messages from another thread, paced so the burst lasts a while,
    # and holding its second half back until the cut is made (however long rabbitmqctl takes to make
    # it), so that the cut always falls inside the burst
    exchange, execute = topology_config.broker.exchange, topology_config.broker.execute_queue
    connectivity: list[bool] = []
    publisher = make_publisher(on_connectivity=lambda ok, detail: connectivity.append(ok))
    confirms = Confirms()
    bodies = [f"m{i}".encode() for i in range(5000)]
    half = len(bodies) // 2
    pace = threading.Event()
    cut = threading.Event()

    def burst() -> None:
        for i, body in enumerate(bodies):
            if i == half:
                assert cut.wait(60), "the test never cut the connection"
            publisher.publish(exchange, execute, body, on_confirm=confirms.callback(body))
            if i % 25 == 24 and not cut.is_set():
                # pacing the producer (about 1250 messages/s until the cut, then as fast as possible),
                # not waiting for a condition
                pace.wait(0.02)

    sender = threading.Thread(target=burst, daemon=True)
    sender.start()

    # When RabbitMQ closes its connection in the middle of the burst
    wait_until(lambda: confirms.total() >= 500, 15, "the first 500 confirms")
    close_connection(publisher.connection_name)
    sent_before_cut = confirms.total()
    cut.set()
    sender.join(60)
    assert not sender.is_alive(), "the burst did not end"

    # Then every message is confirmed exactly once, all of them true, and every one is in the queue
    wait_until(lambda: confirms.total() == 5000, 30, "5000 confirms")
    assert 500 <= sent_before_cut <= half, "the connection was cut after the burst, not during it"
    assert connectivity[:3] == [True, False, True]
    assert confirms.ok == set(bodies)
    assert set(confirms.calls.values()) == {1}
    arrived = collections.Counter(body for _, body in drain_queue(fresh_channel(), execute))
    assert set(arrived) == set(bodies)
    assert all(count >= 1 for count in arrived.values())


@pytest.mark.services
def test_messages_published_while_the_broker_is_unreachable_are_sent_when_it_is_back(
    topology_config: Config,
    make_publisher: Callable[..., ConfirmingPublisher],
    amqp_proxy: Any,
    fresh_channel: Callable[[], Channel],
    drain_queue: Drain,
) -> None:
    # Given a publisher whose broker is unreachable (a proxy that is down)
    proxy = amqp_proxy
    proxy.stop()
    connectivity: list[tuple[bool, str]] = []
    publisher = make_publisher(
        on_connectivity=lambda ok, detail: connectivity.append((ok, detail)),
        url=proxy.url(topology_config.broker.url),
    )
    confirms = Confirms()
    execute = topology_config.broker.execute_queue

    # When messages are published, and later the broker is reachable again
    for body in (b"one", b"two", b"three"):
        publisher.publish("", execute, body, on_confirm=confirms.callback(body))
    wait_until(lambda: bool(connectivity), 10, "a connectivity report")
    assert connectivity[0][0] is False
    assert publisher.pending() == 3
    proxy.start()

    # Then they are confirmed and arrive in order
    wait_until(lambda: confirms.total() == 3, 20, "three confirms")
    assert confirms.ok == {b"one", b"two", b"three"}
    assert [body for _, body in drain_queue(fresh_channel(), execute)] == [b"one", b"two", b"three"]
    assert connectivity[-1] == (True, f"connected to 127.0.0.1:{proxy.port}")


@pytest.mark.services
def test_messages_in_flight_when_the_connection_dies_are_sent_again(
    topology_config: Config,
    make_publisher: Callable[..., ConfirmingPublisher],
    amqp_proxy: Any,
    fresh_channel: Callable[[], Channel],
    queue_depth: Callable[[Channel, str], int],
    drain_queue: Drain,
) -> None:
    # Given 200 messages that reached the broker but whose confirms never came back
    execute = topology_config.broker.execute_queue
    publisher = make_publisher(url=amqp_proxy.url(topology_config.broker.url))
    confirms = Confirms()
    publisher.publish("", execute, b"warm-up", on_confirm=confirms.callback(b"warm-up"))
    wait_until(lambda: confirms.total() == 1, 10, "the warm-up confirm")
    amqp_proxy.freeze()
    bodies = [f"m{i}".encode() for i in range(200)]
    for body in bodies:
        publisher.publish("", execute, body, on_confirm=confirms.callback(body))
    channel = fresh_channel()
    wait_until(lambda: queue_depth(channel, execute) == 201, 10, "the messages in the queue")
    assert publisher.pending() == 200

    # When the connection dies and comes back
    amqp_proxy.stop()
    amqp_proxy.start()

    # Then all 200 are sent again and confirmed once each: at least once, duplicates allowed
    wait_until(lambda: confirms.total() == 201, 20, "201 confirms")
    assert confirms.ok == {b"warm-up", *bodies}
    assert set(confirms.calls.values()) == {1}
    arrived = [body for _, body in drain_queue(channel, execute)]
    assert arrived == [b"warm-up", *bodies, *bodies]  # the first copies, then the resend in order


def test_a_message_whose_headers_cannot_be_encoded_is_refused_alone(
    service_config: Config, amqp_channel: pika.adapters.blocking_connection.BlockingChannel
) -> None:
    # Given a running publisher and a queue to publish to
    queue = service_config.broker.dlq
    amqp_channel.queue_declare(queue, durable=True)
    confirmed: list[tuple[bool, str]] = []
    publisher = ConfirmingPublisher(
        service_config.broker, name=unique("enc"), max_pending=10, on_connectivity=lambda ok, detail: None
    )
    publisher.start()
    try:
        # When one message has a header AMQP cannot carry (a float)
        with pytest.raises(SinkError, match="cannot encode the headers"):
            publisher.publish("", queue, b"bad", headers={"x-at": 1.5}, on_confirm=lambda ok, d: None)
        # Then the next message still goes through
        publisher.publish(
            "", queue, b"ok", headers={"x-at": 15}, on_confirm=lambda ok, d: confirmed.append((ok, d))
        )
        wait_until(lambda: confirmed, 10, "the second message's confirm")
    finally:
        publisher.close(5)
    assert confirmed == [(True, "")]
    _, _, body = amqp_channel.basic_get(queue, auto_ack=True)
    assert body == b"ok"
    assert amqp_channel.basic_get(queue, auto_ack=True)[0] is None, "the refused message was never sent"


@pytest.mark.services
def test_every_message_the_broker_nacked_is_sent_again_until_it_is_taken(
    make_publisher: Callable[..., ConfirmingPublisher],
    fresh_channel: Callable[[], Channel],
    drain_queue: Drain,
) -> None:
    # A queue that holds 3 messages and nacks the rest (reject-publish), beside one that takes all:
    # the broker then acks later tags with `multiple` after nacking earlier ones.
    channel = fresh_channel()
    full, roomy = unique("nack.full"), unique("nack.roomy")
    channel.queue_declare(full, arguments={"x-max-length": 3, "x-overflow": "reject-publish"})
    channel.queue_declare(roomy)
    publisher = make_publisher()
    confirms = Confirms()
    bodies = {
        full: [f"full-{i}".encode() for i in range(30)],
        roomy: [f"roomy-{i}".encode() for i in range(30)],
    }
    for pair in zip(bodies[full], bodies[roomy], strict=True):
        for queue, body in zip((full, roomy), pair, strict=True):
            publisher.publish("", queue, body, on_confirm=confirms.callback(body))

    arrived: dict[str, set[bytes]] = {full: set(), roomy: set()}

    def everything_confirmed_has_arrived() -> bool:
        for queue in (full, roomy):  # emptying the full queue makes room for the messages sent again
            arrived[queue].update(body for _, body in drain_queue(channel, queue))
        return confirms.total() == 60

    wait_until(everything_confirmed_has_arrived, 60, "60 confirms", interval=0.2)
    for queue in (full, roomy):
        arrived[queue].update(body for _, body in drain_queue(channel, queue))
    assert confirms.ok == {*bodies[full], *bodies[roomy]}
    assert set(confirms.calls.values()) == {1}
    missing = sorted(set(bodies[full]) - arrived[full])
    assert not missing, f"confirmed but never in the queue: {missing}"
    assert arrived[roomy] == set(bodies[roomy])
