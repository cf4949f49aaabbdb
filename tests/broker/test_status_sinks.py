"""The Redis status sink: events to the Redis channel, kept in order while Redis is down."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis
from prometheus_client import REGISTRY
from support import wait_until

from orchestrator.config import Config
from orchestrator.logs import FAILURE
from orchestrator.messages import EVENT_DECODER, StatusEvent
from orchestrator.status_sinks import (
    DROPPED,
    REDIS_BATCH,
    DropOldestBuffer,
    RedisStatusSink,
)


def _event(seq: int, status: str = "dispatched", deployment_id: str = "dep-1") -> StatusEvent:
    return StatusEvent(
        deployment_id=deployment_id,
        type="build",
        status=status,  # type: ignore[arg-type]
        attempt=1,
        seq=seq,
        at="2026-01-02T03:04:05.678Z",
        launcher="local",
    )


class Outcomes:
    """on_done results, in the order they came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.results: list[tuple[int, bool, str]] = []

    def callback(self, seq: int) -> Callable[[bool, str], None]:
        def on_done(ok: bool, detail: str) -> None:
            with self._lock:
                self.results.append((seq, ok, detail))

        return on_done

    def count(self) -> int:
        with self._lock:
            return len(self.results)


# --- plain logic -----------------------------------------------------------------------------------


def test_drop_oldest_buffer_keeps_the_newest_in_order() -> None:
    buffer: DropOldestBuffer[int] = DropOldestBuffer(3)

    assert [buffer.push(i) for i in range(1, 6)] == [None, None, None, 1, 2]
    assert buffer.drain() == [3, 4, 5]
    assert buffer.pop() is None
    with pytest.raises(ValueError, match="at least 1"):
        DropOldestBuffer(0)


def _dropped_metric() -> float:
    labels = {"sink": "redis", "outcome": "dropped"}
    return REGISTRY.get_sample_value("orchestrator_status_events_published_total", labels) or 0.0


# --- Redis -----------------------------------------------------------------------------------------


@pytest.fixture
def subscription(
    service_config: Config, redis_client: redis.Redis[bytes]
) -> Iterator[queue.Queue[StatusEvent]]:
    """Events arriving on the test's Redis channel, decoded (subscribed before the test publishes)."""
    arrived: queue.Queue[StatusEvent] = queue.Queue()
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(
        **{service_config.status.redis_channel: lambda m: arrived.put(EVENT_DECODER.decode(m["data"]))}
    )
    thread = pubsub.run_in_thread(sleep_time=0.05, daemon=True)
    channel = service_config.status.redis_channel
    wait_until(lambda: any(count >= 1 for _, count in redis_client.pubsub_numsub(channel)), 5, "SUBSCRIBE")
    try:
        yield arrived
    finally:
        thread.stop()
        thread.join(5)
        pubsub.close()


def _take(arrived: queue.Queue[StatusEvent], n: int) -> list[StatusEvent]:
    return [arrived.get(timeout=10) for _ in range(n)]


@pytest.fixture
def make_redis_sink(service_config: Config) -> Iterator[Callable[..., RedisStatusSink]]:
    sinks: list[RedisStatusSink] = []

    def make(url: str | None = None, buffer: int | None = None, **kwargs: Any) -> RedisStatusSink:
        redis_config = msgspec.structs.replace(service_config.redis, url=url or service_config.redis.url)
        status = msgspec.structs.replace(service_config.status, buffer=buffer or service_config.status.buffer)
        sink = RedisStatusSink(redis_config, status, reconnect_max_seconds=0.3, **kwargs)
        sinks.append(sink)
        sink.start()
        return sink

    yield make
    for sink in sinks:
        sink.close(5)


@pytest.mark.services
def test_redis_sink_publishes_events_in_order(
    make_redis_sink: Callable[..., RedisStatusSink],
    subscription: queue.Queue[StatusEvent],
) -> None:
    connectivity: list[tuple[bool, str]] = []
    sink = make_redis_sink(on_connectivity=lambda ok, detail: connectivity.append((ok, detail)))
    outcomes = Outcomes()
    events = [_event(seq) for seq in range(1, 21)]

    for event in events:
        sink.publish(event, outcomes.callback(event.seq))

    assert _take(subscription, 20) == events
    wait_until(lambda: outcomes.count() == 20, 5, "20 on_done calls")
    assert outcomes.results == [(seq, True, "") for seq in range(1, 21)]
    assert connectivity == [(True, "")]


@pytest.mark.services
def test_redis_down_events_are_kept_and_delivered_in_order_when_it_is_back(
    service_config: Config,
    make_redis_sink: Callable[..., RedisStatusSink],
    redis_proxy: Any,
    subscription: queue.Queue[StatusEvent],
) -> None:
    # Given a sink connected to Redis through a proxy, that has published one event
    connectivity: list[tuple[bool, str]] = []
    sink = make_redis_sink(
        url=redis_proxy.url(service_config.redis.url),
        on_connectivity=lambda ok, detail: connectivity.append((ok, detail)),
    )
    outcomes = Outcomes()
    sink.publish(_event(1), outcomes.callback(1))
    assert _take(subscription, 1) == [_event(1)]

    # When Redis goes away, five events are published, and Redis comes back
    redis_proxy.stop()
    for seq in range(2, 7):
        sink.publish(_event(seq), outcomes.callback(seq))
    wait_until(lambda: any(not ok for ok, _ in connectivity), 10, "Redis reported down")
    assert sink.pending() == 5
    assert subscription.empty()
    redis_proxy.start()

    # Then the five arrive, in order, and connectivity went down then up
    assert _take(subscription, 5) == [_event(seq) for seq in range(2, 7)]
    wait_until(lambda: outcomes.count() == 6, 10, "six on_done calls")
    assert outcomes.results == [(seq, True, "") for seq in range(1, 7)]
    states = [ok for ok, _ in connectivity]
    assert states[0] is True and states[-1] is True and False in states
    assert sink.dropped == 0


@pytest.mark.services
def test_redis_buffer_full_drops_the_oldest_with_a_log_line_and_a_count(
    service_config: Config,
    make_redis_sink: Callable[..., RedisStatusSink],
    redis_proxy: Any,
    subscription: queue.Queue[StatusEvent],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a sink with room for 3 events, and Redis down
    redis_proxy.stop()
    dropped: list[StatusEvent] = []
    connectivity: list[bool] = []
    sink = make_redis_sink(
        url=redis_proxy.url(service_config.redis.url),
        buffer=3,
        on_connectivity=lambda ok, detail: connectivity.append(ok),
        on_drop=dropped.append,
    )
    wait_until(lambda: connectivity == [False], 10, "Redis reported down")
    outcomes = Outcomes()
    dropped_before = _dropped_metric()

    # When more events are published than the sink can hold: its retrying thread may take up to one
    # batch into its hands at any moment (CI once saw it wake mid-loop and take two), 3 wait, and at
    # least 2 more cannot be kept
    total = REDIS_BATCH + 3 + 2
    with caplog.at_level(logging.ERROR):
        for seq in range(1, total + 1):
            sink.publish(_event(seq), outcomes.callback(seq))
    redis_proxy.start()

    # Then the oldest waiting ones were dropped with a ❌ line, and the rest arrive in order
    delivered = _take(subscription, total - len(dropped))
    assert len(dropped) >= 2
    assert sink.dropped == len(dropped)
    dropped_seqs = {e.seq for e in dropped}
    assert [e.seq for e in delivered] == [seq for seq in range(1, total + 1) if seq not in dropped_seqs]
    assert [e.seq for e in delivered][-3:] == [total - 2, total - 1, total]
    wait_until(lambda: outcomes.count() == total, 10, f"{total} on_done calls")
    failures = {seq: detail for seq, ok, detail in outcomes.results if not ok}
    assert set(failures) == {e.seq for e in dropped}
    assert all(detail.startswith(DROPPED) for detail in failures.values())
    assert _dropped_metric() - dropped_before == len(dropped)
    drop_lines = [r for r in caplog.records if "dropped the oldest event" in r.getMessage()]
    assert len(drop_lines) == len(dropped)
    assert all(getattr(r, "emoji", None) == FAILURE and r.levelno == logging.ERROR for r in drop_lines)
