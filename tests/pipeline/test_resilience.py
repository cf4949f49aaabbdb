"""Graceful drain and a broker outage, with jobs in every stage: no job is lost, none runs twice."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from support import wait_until, with_overrides
from tcp_proxy import TcpProxy

from orchestrator.config import Config
from orchestrator.slots import SlotPool, make_slot_pool

from .fakes import InstantLauncher
from .harness import EventCollector, build_job, publish, queue_depth, running_pipeline

pytestmark = pytest.mark.services


def test_a_drain_finishes_hand_offs_in_flight_and_gives_waiting_jobs_back(pipeline_config: Config) -> None:
    # Given one slot: a job whose launch is in flight (held at the gate) and two waiting for the slot
    config = with_overrides(pipeline_config, limits__max_concurrent=1)
    gate = threading.Event()
    launcher = InstantLauncher(run_seconds=3600, gate=gate)
    with EventCollector(config) as events:
        with running_pipeline(config, launcher) as running:
            for n in range(3):
                publish(config, build_job(f"drain-{n}"))
            assert launcher.launch_started.wait(20)
            wait_until(lambda: "queued" in events.statuses("drain-2"), what="the last job waiting")

            # When the process drains (SIGTERM) while the launch is still in flight
            drained: list[bool] = []
            drainer = threading.Thread(
                target=lambda: drained.append(running.supervisor.drain(time.monotonic() + 20))
            )
            drainer.start()
            # (the drain has begun once the jobs waiting for the slot are back in the queue)
            wait_until(
                lambda: queue_depth(config, config.broker.execute_queue) == 2, what="waiting jobs handed back"
            )
            gate.set()
            drainer.join(timeout=30)

            # Then the launch in flight completes its hand-off: dispatched, and acked
            assert drained == [True]
            # (confirmed by the broker before the ack; the collector may hear it a moment later)
            wait_until(lambda: events.statuses("drain-0")[:1] == ["dispatched"], what="drain-0 dispatched")
        # And, once stopped, the jobs that never started are back in the queue for another process
        assert queue_depth(config, config.broker.execute_queue) == 2
    assert [r.job.deployment_id for r in launcher.requests] == ["drain-0"]


def test_a_delivery_nobody_makes_durable_in_time_goes_back_to_the_broker(
    pipeline_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a hand-off timeout of 1 s and a launch that hangs (held at the gate)
    config = with_overrides(pipeline_config, broker__handoff_timeout_seconds=1.0)
    gate = threading.Event()
    launcher = InstantLauncher(gate=gate)
    caplog.set_level(logging.WARNING, logger="actors.queue_listener")
    before = received()
    try:
        with running_pipeline(config, launcher):
            publish(config, build_job("stuck-1"))
            assert launcher.launch_started.wait(20)

            # When nothing makes its outcome durable past the timeout (checked every 5 s)
            wait_until(
                lambda: "not made durable within 1 s" in caplog.text, timeout=15, what="the hand-off timeout"
            )

            # Then the delivery went back to the broker, which delivered it again
            wait_until(lambda: received() - before >= 2, what="the requeued delivery back")
    finally:
        gate.set()


def received() -> float:
    return REGISTRY.get_sample_value("orchestrator_jobs_received_total") or 0.0


def test_a_broker_outage_shows_in_health_and_loses_no_job(pipeline_config: Config) -> None:
    # Given the pipeline reaches RabbitMQ through a proxy that can take it away
    target = urlsplit(pipeline_config.broker.url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    proxy.start()
    config = with_overrides(
        pipeline_config, broker__url=proxy.url(pipeline_config.broker.url), broker__reconnect_max_seconds=1.0
    )
    launcher = InstantLauncher(run_seconds=0.2)
    try:
        with running_pipeline(config, launcher) as running, EventCollector(pipeline_config) as events:
            publish(pipeline_config, build_job("before-1"))
            assert events.wait_terminal("before-1").status == "succeeded"

            # When the broker goes away, Then /health says so (503, the broker down)
            proxy.stop()
            wait_until(
                lambda: running.health()[1]["dependencies"]["broker"]["ok"] is False,
                what="the broker shown down",
            )
            healthy, body = running.health()
            assert healthy is False
            assert "broker" in " ".join(body["reasons"])

            # And jobs published meanwhile (straight to the broker) wait there
            for n in range(5):
                publish(pipeline_config, build_job(f"during-{n}"))

            # When it is back, Then the process recovers and every job runs exactly once
            proxy.start()
            wait_until(lambda: running.health()[0], what="/health to recover")
            for n in range(5):
                assert events.wait_terminal(f"during-{n}", timeout=60).status == "succeeded"
    finally:
        proxy.stop()
    launched = sorted(r.job.deployment_id for r in launcher.requests)
    assert launched == ["before-1"] + [f"during-{n}" for n in range(5)]


def test_the_slot_self_check_releases_a_slot_held_for_a_job_nobody_follows(
    pipeline_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("actors.rate_limiter.AUDIT_SECONDS", 0.2)
    pools: list[SlotPool] = []

    def keep_pool(*args: Any) -> SlotPool:
        pools.append(make_slot_pool(*args))
        return pools[-1]

    monkeypatch.setattr("orchestrator.pipeline.make_slot_pool", keep_pool)
    config = with_overrides(pipeline_config, limits__max_concurrent=1)
    launcher = InstantLauncher()
    with running_pipeline(config, launcher) as running, EventCollector(config) as events:
        # Given the only slot leaked: held for a deployment no job of which is followed or launching
        [pool] = pools
        assert pool.try_acquire("ghost-1")
        # When a job comes, it waits for the slot ...
        publish(config, build_job("after-leak-1"))
        # Then the self-check gives the leaked slot back, and the job runs
        assert events.wait_terminal("after-leak-1", timeout=20).status == "succeeded"
        wait_until(lambda: "slots" in running.health()[1]["dependencies"], what="the slots report")
        report = running.health()[1]["dependencies"]["slots"]
    assert "queued" in events.statuses("after-leak-1")
    assert report["detail"].startswith(("released 1 slot", "1 held", "0 held"))
