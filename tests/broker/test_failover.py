"""Several nodes in ``broker.url``: the consumer, the publisher and ``submit --wait``'s event follower
move on to the next node when theirs is lost or down, and say which node they are on.

The "nodes" are TCP proxies in front of the one real RabbitMQ (a proxy stopped is a node down: its
connections drop, new ones are refused); the private three-node cluster test is in ``tests/cluster``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import msgspec
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel as Channel
from support import wait_until
from tcp_proxy import TcpProxy

from orchestrator.broker.consumer import Consumer
from orchestrator.broker.publisher import ConfirmingPublisher
from orchestrator.config import Config
from orchestrator.delivery import Delivery
from orchestrator.messages import StatusEvent, encode
from orchestrator.submit import _amqp_events

pytestmark = pytest.mark.services

#: Far above anything a test waits: a failover that waited for the backoff would time the test out.
LONG_BACKOFF_SECONDS = 600.0


class Reports:
    """What ``on_connectivity`` was told, in order (from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[bool, str]] = []

    def __call__(self, ok: bool, detail: str) -> None:
        with self._lock:
            self.items.append((ok, detail))

    def snapshot(self) -> list[tuple[bool, str]]:
        with self._lock:
            return list(self.items)

    def last_ok(self) -> str | None:
        items = self.snapshot()
        return items[-1][1] if items and items[-1][0] else None


@pytest.fixture
def nodes(topology_config: Config) -> Iterator[list[TcpProxy]]:
    """Two "nodes": proxies to the real RabbitMQ, started."""
    proxies = [TcpProxy("127.0.0.1", 5672) for _ in range(2)]
    for proxy in proxies:
        proxy.start()
    try:
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()


def cluster_config(config: Config, proxies: list[TcpProxy], **broker: object) -> Config:
    url = ",".join(proxy.url(config.broker.url) for proxy in proxies)
    return msgspec.structs.replace(config, broker=msgspec.structs.replace(config.broker, url=url, **broker))


def connected_to(proxy: TcpProxy) -> str:
    return f"connected to 127.0.0.1:{proxy.port}"


@pytest.fixture
def start_consumer(topology_config: Config) -> Iterator[Callable[[Config, Reports], queue.Queue[Delivery]]]:
    consumers: list[Consumer] = []

    def start(config: Config, reports: Reports) -> queue.Queue[Delivery]:
        deliveries: queue.Queue[Delivery] = queue.Queue()
        consumer = Consumer(
            config.broker,
            config.status,
            config.limits.retry_delays,
            max_attempts=config.highest_max_attempts(),
            on_delivery=deliveries.put,
            on_connectivity=reports,
        )
        consumers.append(consumer)
        consumer.start()
        return deliveries

    yield start
    for consumer in consumers:
        consumer.stop(10)


def test_the_consumer_moves_to_the_next_node_when_its_node_goes_down(
    topology_config: Config,
    nodes: list[TcpProxy],
    start_consumer: Callable[[Config, Reports], queue.Queue[Delivery]],
    fresh_channel: Callable[[], Channel],
) -> None:
    # Given a consumer on the first of two nodes, with a backoff far longer than the test
    config = cluster_config(topology_config, nodes, reconnect_max_seconds=LONG_BACKOFF_SECONDS)
    reports = Reports()
    deliveries = start_consumer(config, reports)
    wait_until(lambda: reports.last_ok() == connected_to(nodes[0]), 20, "consuming on the first node")

    # When the first node goes down
    nodes[0].stop()

    # Then it consumes on the second one, without a failed attempt on the lost node in between
    wait_until(lambda: reports.last_ok() == connected_to(nodes[1]), 20, "consuming on the second node")
    seen = reports.snapshot()
    assert [ok for ok, _ in seen] == [True, False, True], seen
    assert seen[1][1].startswith(f"127.0.0.1:{nodes[0].port}: ")
    fresh_channel().basic_publish("", config.broker.execute_queue, b"after the failover")
    assert deliveries.get(timeout=20).body == b"after the failover"


def test_a_node_that_is_down_at_start_is_skipped_at_once(
    topology_config: Config,
    nodes: list[TcpProxy],
    start_consumer: Callable[[Config, Reports], queue.Queue[Delivery]],
) -> None:
    # Given the first node down before the consumer starts, and a backoff far longer than the test
    nodes[0].stop()
    config = cluster_config(topology_config, nodes, reconnect_max_seconds=LONG_BACKOFF_SECONDS)
    reports = Reports()

    # When the consumer starts
    start_consumer(config, reports)

    # Then one refused attempt on the first node, named, is followed by the second node at once
    wait_until(lambda: reports.last_ok() == connected_to(nodes[1]), 20, "consuming on the second node")
    [(down, refused), (up, _)] = reports.snapshot()
    assert (down, up) == (False, True)
    assert refused.startswith(f"127.0.0.1:{nodes[0].port}: connection refused")
    assert "guest:guest" not in refused


def test_with_every_node_down_the_consumer_backs_off_and_takes_the_first_that_returns(
    topology_config: Config,
    nodes: list[TcpProxy],
    start_consumer: Callable[[Config, Reports], queue.Queue[Delivery]],
) -> None:
    # Given both nodes down
    for proxy in nodes:
        proxy.stop()
    config = cluster_config(topology_config, nodes, reconnect_max_seconds=0.5)
    reports = Reports()
    start_consumer(config, reports)

    # When it has tried each of them, and then only the second comes back
    def tried_both() -> bool:
        details = [detail for ok, detail in reports.snapshot() if not ok]
        return all(any(d.startswith(f"127.0.0.1:{p.port}: ") for d in details) for p in nodes)

    wait_until(tried_both, 20, "a refused attempt on each node")
    nodes[1].start()

    # Then it consumes there
    wait_until(lambda: reports.last_ok() == connected_to(nodes[1]), 20, "consuming on the second node")


def test_the_publisher_resends_on_the_next_node_what_the_lost_one_did_not_confirm(
    topology_config: Config,
    nodes: list[TcpProxy],
    fresh_channel: Callable[[], Channel],
    drain_queue: Callable[[Channel, str], list[tuple[pika.spec.BasicProperties, bytes]]],
) -> None:
    # Given a confirming publisher on the first of two nodes
    config = cluster_config(topology_config, nodes, reconnect_max_seconds=LONG_BACKOFF_SECONDS)
    reports = Reports()
    publisher = ConfirmingPublisher(config.broker, name="failover", max_pending=100, on_connectivity=reports)
    publisher.start()
    try:
        wait_until(lambda: reports.last_ok() == connected_to(nodes[0]), 20, "the publisher on the first node")
        confirmed: queue.Queue[tuple[bytes, bool]] = queue.Queue()
        execute = config.broker.execute_queue

        # When the first node goes down and messages are published
        nodes[0].stop()

        def on_confirm(body: bytes) -> Callable[[bool, str], None]:
            return lambda ok, _detail: confirmed.put((body, ok))

        for body in (b"one", b"two"):
            publisher.publish("", execute, body, on_confirm=on_confirm(body))

        # Then they are confirmed through the second node, which the publisher names
        assert sorted(confirmed.get(timeout=20) for _ in range(2)) == [(b"one", True), (b"two", True)]
        assert reports.last_ok() == connected_to(nodes[1])
        assert [body for _, body in drain_queue(fresh_channel(), execute)] == [b"one", b"two"]
    finally:
        publisher.close(5)


def test_submit_waits_events_on_the_next_node_when_its_node_is_lost(
    topology_config: Config, nodes: list[TcpProxy], fresh_channel: Callable[[], Channel]
) -> None:
    # Given `submit --wait`'s AMQP event follower subscribed through the first of two nodes
    config = cluster_config(topology_config, nodes)
    event = StatusEvent(deployment_id="dep-f", type="build", status="succeeded", attempt=1, seq=19, at="now")
    with _amqp_events(config) as next_event:
        assert next_event(0.05) is None

        # When that node goes down, and the job's event is published after the follower moved on
        nodes[0].stop()
        assert next_event(5) is None  # the loss: it subscribes again through the second node
        fresh_channel().basic_publish(config.broker.exchange, config.status.queue, encode(event))

        # Then the follower gets it
        got = wait_until(lambda: next_event(0.5), 20, "the event through the second node")
    assert got.deployment_id == "dep-f"
    assert got.status == "succeeded"
