"""Hostile headers on the execute queue, through the whole pipeline on the real RabbitMQ and Redis.

Whoever can publish to execute.queue chooses the headers. None may crash an actor, forge an attempt
number, or keep a message circling: each ends acked, dead-lettered once with a reason.
"""

from __future__ import annotations

import sys
import time

import pika
import pytest
from support import wait_until, with_overrides

from orchestrator.broker.headers import ATTEMPT_HEADER, ATTEMPT_SIGNATURE_HEADER, SCHEDULED_AT_HEADER
from orchestrator.config import Config
from orchestrator.retry import REASON_CLASS_HEADER, REASON_HEADER, attempt_signer

from .fakes import InstantLauncher
from .harness import (
    EventCollector,
    Running,
    build_job,
    drain_queue,
    publish,
    queue_depth,
    running_pipeline,
)

pytestmark = pytest.mark.services


def _restarts(running: Running) -> int:
    _, body = running.health()
    return sum(actor["restarts"] for actor in body["actors"].values())


@pytest.mark.parametrize(
    "value",
    [str(2**64), 2**63 - 1, 0, -1, "2.5", "x" * 1000, [1, 2], {"nested": {"deeper": 1}}],
    ids=["digits-past-2^64", "max-int64", "zero", "negative", "decimal-text", "long-text", "array", "table"],
)
def test_an_unusable_attempt_header_is_dead_lettered_once_and_crashes_nothing(
    pipeline_config: Config, value: object
) -> None:
    launcher = InstantLauncher()
    with running_pipeline(pipeline_config, launcher) as running, EventCollector(pipeline_config) as events:
        for _ in range(6):  # six of them crashed a process into a restart loop
            publish(pipeline_config, build_job("hdr-1"), headers={ATTEMPT_HEADER: value})
        wait_until(lambda: len(events.events("hdr-1")) == 6, what="six rejected events")
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="acks"
        )
        healthy, _ = running.health()
        assert healthy
        assert _restarts(running) == 0
    assert launcher.launches == 0
    assert {e.status for e in events.events("hdr-1")} == {"rejected"}
    dead = drain_queue(pipeline_config, pipeline_config.broker.dlq)
    assert len(dead) == 6
    for _body, headers in dead:
        assert headers[REASON_CLASS_HEADER] == "header"
        assert "x-attempt header:" in headers[REASON_HEADER]
        assert "is not an attempt number in 1..3" in headers[REASON_HEADER]
        assert headers[ATTEMPT_HEADER] == 1


def test_forged_attempt_numbers_cannot_bypass_the_concurrency_limit(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_concurrent=1)
    launcher = InstantLauncher(run_seconds=1.0)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        # When: one deployment published as attempts 1, 2 and 3, none of them signed
        for attempt in (1, 2, 3):
            publish(config, build_job("forged-1"), headers={ATTEMPT_HEADER: attempt})
        assert events.wait_terminal("forged-1").status == "succeeded"
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="acks")
    # Then: all three are attempt 1 of one job: one worker, never several at once
    assert launcher.launches == 1
    assert {r.attempt for r in launcher.requests} == {1}
    assert {e.attempt for e in events.events("forged-1")} == {1}


def test_a_signed_retry_keeps_its_attempt_number(pipeline_config: Config) -> None:
    launcher = InstantLauncher()
    scheduled_ms = int(time.time() * 1000)
    signature = attempt_signer(pipeline_config).sign("signed-1", "build", 2, scheduled_ms)
    headers = {ATTEMPT_HEADER: 2, SCHEDULED_AT_HEADER: scheduled_ms, ATTEMPT_SIGNATURE_HEADER: signature}
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, build_job("signed-1"), headers=headers)
        assert events.wait_terminal("signed-1").status == "succeeded"
    assert [r.attempt for r in launcher.requests] == [2]


def test_a_message_that_keeps_coming_back_is_dead_lettered_as_poison(pipeline_config: Config) -> None:
    # A quorum queue (the default) counts deliveries itself, in x-delivery-count.
    config = with_overrides(pipeline_config, broker__max_redeliveries=2, broker__queue_type="quorum")
    launcher = InstantLauncher()
    with running_pipeline(config, launcher), EventCollector(config) as events:
        pass  # declares the topology
    publish(config, build_job("loop-1"))
    # Given: the message was handed out and given back twice without an outcome (as when the
    # process holding it crashes each time)
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        for _ in range(2):
            method = wait_until(
                lambda: channel.basic_get(config.broker.execute_queue)[0], 10, "the job to be handed out"
            )
            channel.basic_nack(method.delivery_tag, requeue=True)
    finally:
        connection.close()
    # When
    with running_pipeline(config, launcher), EventCollector(config) as events:
        assert events.wait_terminal("loop-1").status == "rejected"
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="ack")
    # Then
    assert launcher.launches == 0
    [(_body, headers)] = drain_queue(config, config.broker.dlq)
    assert headers[REASON_HEADER] == "poison: handling failed 2 times"
    assert headers[REASON_CLASS_HEADER] == "poison"


def _deep_table(depth: int) -> dict[str, object]:
    table: dict[str, object] = {"bottom": 1}
    for _ in range(depth):
        table = {"t": table}
    return table


def test_headers_nested_too_deeply_for_pika_neither_drop_the_connection_nor_loop(
    pipeline_config: Config,
) -> None:
    launcher = InstantLauncher()
    limit = sys.getrecursionlimit()
    with running_pipeline(pipeline_config, launcher) as running, EventCollector(pipeline_config) as events:
        sys.setrecursionlimit(20_000)  # only while this test encodes the attack
        try:
            publish(pipeline_config, build_job("deep-1"), headers={ATTEMPT_HEADER: _deep_table(5000)})
            publish(pipeline_config, build_job("deep-2"), headers={"x-other": _deep_table(5000)})
        finally:
            sys.setrecursionlimit(limit)
        assert events.wait_terminal("deep-1").status == "rejected"
        assert events.wait_terminal("deep-2").status == "succeeded"
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="acks"
        )
        assert _restarts(running) == 0
    [(_body, headers)] = drain_queue(pipeline_config, pipeline_config.broker.dlq)
    assert "x-attempt header: a dict is not an attempt number" in headers[REASON_HEADER]
    assert [r.job.deployment_id for r in launcher.requests] == ["deep-2"]
