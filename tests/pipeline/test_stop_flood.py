"""A flood of stops for deployments nobody launched costs a few sweeps of the launchers, not one per stop,
a bounded number of stop markers, and every stop still gets its answer (real broker and Redis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pika
import pytest
import redis
from support import wait_until, with_overrides

from orchestrator.config import Config
from orchestrator.coordination import InstanceRegistry, PendingRetries, connect_redis
from orchestrator.launch.base import LaunchRequest, TaskHandle
from orchestrator.messages import BuildJob, encode
from orchestrator.stop_sweeps import STOP_MARKER_BURST, STOP_MARKERS_PER_SECOND

from .fakes import InstantLauncher
from .harness import EventCollector, queue_depth, running_pipeline

pytestmark = pytest.mark.services

STOPS = 1000
#: Launches, stops and followed tasks are not what these tests count: only the sweeps.
ANSWER_WAIT = 60.0


class CountingLauncher(InstantLauncher):
    """Counts ``list_owned`` calls (one per sweep, plus reconciliation's); once armed, the first one
    waits for ``release`` so that the test can pile stops up behind it."""

    def __init__(self) -> None:
        super().__init__(run_seconds=3600)
        self.list_calls = 0
        self.armed = False
        self.holding = threading.Event()
        self.release = threading.Event()
        self._count_lock = threading.Lock()

    def list_owned(self) -> list[TaskHandle]:
        with self._count_lock:
            self.list_calls += 1
            hold, self.armed = self.armed, False
        if hold:
            self.holding.set()
            assert self.release.wait(ANSWER_WAIT)
        return super().list_owned()


def publish_all(config: Config, bodies: list[bytes]) -> None:
    """Publish every body on one confirmed channel, as a busy producer would."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish(
                config.broker.exchange,
                config.broker.execute_queue,
                body,
                pika.BasicProperties(delivery_mode=2),
                mandatory=True,
            )
    finally:
        connection.close()


def stop_body(deployment_id: str) -> bytes:
    return encode({"type": "stop", "deploymentId": deployment_id})


@pytest.fixture
def flood_config(pipeline_config: Config) -> Config:
    # Every stop of the flood may be in this process at once (the broker's prefetch bounds them).
    return with_overrides(pipeline_config, broker__prefetch=STOPS + 10)


@pytest.fixture
def other_process(flood_config: Config) -> Iterator[InstanceRegistry]:
    """A live orchestrator process besides the one under test (its tasks are not adopted)."""
    client = connect_redis(flood_config.redis)
    registry = InstanceRegistry(client, flood_config.redis.key_prefix, "orch-other", 30)
    registry.start()
    yield registry
    registry.stop()
    client.close()


def stop_markers(config: Config) -> list[bytes]:
    client = redis.Redis.from_url(config.redis.url)
    try:
        return list(client.scan_iter(match=f"{config.redis.key_prefix}:stop:*", count=1000))
    finally:
        client.close()


def test_a_thousand_stops_for_unknown_ids_cost_a_few_sweeps_and_all_are_answered(
    flood_config: Config, other_process: InstanceRegistry
) -> None:
    config = flood_config
    launcher = CountingLauncher()
    # Given a task another live process follows, and a retry recorded as waiting
    now = time.time()
    elsewhere = launcher.launch(
        LaunchRequest(
            job=BuildJob(deployment_id="elsewhere", repository="https://github.com/a/b"),
            attempt=1,
            instance_id=other_process.instance_id,
            start_deadline=now + 600,
            deadline=None,
        )
    )
    client = connect_redis(config.redis)
    PendingRetries(client, config.redis.key_prefix).waiting("waiting", "build", 1, 600)
    client.close()
    ids = [f"ghost-{n}" for n in range(STOPS)]
    started = time.monotonic()
    with running_pipeline(config, launcher), EventCollector(config) as events:
        wait_until(lambda: launcher.list_calls >= 1, what="the start-up reconciliation's listing")
        baseline = launcher.list_calls
        launcher.armed = True

        # When a thousand stops for ids nobody launched arrive, with those two among them
        publish_all(config, [stop_body(ids[0])])
        assert launcher.holding.wait(ANSWER_WAIT), "the first stop's sweep"
        publish_all(config, [stop_body(d) for d in [*ids[1:], "elsewhere", "waiting"]])
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="every stop delivered")
        launcher.release.set()

        # Then every stop gets its answer
        wait_until(
            lambda: all(events.terminal(d) is not None for d in [*ids, "waiting"]),
            ANSWER_WAIT,
            "every stop's answer",
        )
        wait_until(
            lambda: elsewhere.task_id in launcher.stopped, what="the other process's task to be stopped"
        )
        sweeps = launcher.list_calls - baseline
        markers = stop_markers(config)
        elapsed = time.monotonic() - started

    # A few sweeps — the held one, and the one that answered everything that waited meanwhile
    assert sweeps <= 3, f"{sweeps} sweeps for {STOPS + 2} stops"
    for deployment_id in ids:
        [answer] = events.events(deployment_id)
        assert (answer.type, answer.status) == ("stop", "rejected")
        assert answer.reason is not None and answer.reason.startswith("nothing to stop")
    [waiting] = events.events("waiting")
    assert (waiting.type, waiting.status, waiting.attempt) == ("build", "stopped", 1)
    assert launcher.stopped == {elsewhere.task_id: "stopped on request"}
    # Stop markers for the deployments that had something to stop, and a bounded number for the rest
    prefix = config.redis.key_prefix.encode()
    assert {prefix + b":stop:elsewhere", prefix + b":stop:waiting"} <= set(markers)
    bound = STOP_MARKER_BURST + STOP_MARKERS_PER_SECOND * elapsed + 2
    assert len(markers) <= bound < STOPS, f"{len(markers)} stop markers in {elapsed:.1f} s"
    assert queue_depth(config, config.broker.execute_queue) == 0, "every stop was acked"
    assert queue_depth(config, config.broker.dlq) == 0


def test_stops_of_one_deployment_in_one_sweep_get_one_answer_each(flood_config: Config) -> None:
    config = flood_config
    launcher = CountingLauncher()
    with running_pipeline(config, launcher), EventCollector(config) as events:
        wait_until(lambda: launcher.list_calls >= 1, what="the start-up reconciliation's listing")
        launcher.armed = True
        publish_all(config, [stop_body("first")])
        assert launcher.holding.wait(ANSWER_WAIT), "the first stop's sweep"
        publish_all(config, [stop_body("twice")] * 3)
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="the stops delivered")
        launcher.release.set()

        wait_until(lambda: len(events.events("twice")) == 3, ANSWER_WAIT, "three answers")
    assert {(e.status, e.seq) for e in events.events("twice")} == {("rejected", 9)}
    assert queue_depth(config, config.broker.execute_queue) == 0
