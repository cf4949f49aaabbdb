"""Graceful drain and a broker outage, with jobs in every stage: no job is lost, none runs twice."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import pytest
from support import with_overrides
from tcp_proxy import TcpProxy

from orchestrator.config import Config

from .fakes import InstantLauncher
from .harness import EventCollector, build_job, publish, queue_depth, running_pipeline, wait_until

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
            time.sleep(0.3)
            gate.set()
            drainer.join(timeout=30)

            # Then the launch in flight completes its hand-off: dispatched, and acked
            assert drained == [True]
            assert events.statuses("drain-0")[0] == "dispatched"
        # And, once stopped, the jobs that never started are back in the queue for another process
        assert queue_depth(config, config.broker.execute_queue) == 2
    assert [r.job.deployment_id for r in launcher.requests] == ["drain-0"]


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
