"""The whole pipeline on the real RabbitMQ and Redis, with an instant launcher standing in for ECS.

Each test publishes jobs the way the backend does and watches what comes out: status events on
status.queue and the Redis channel, messages in execute.dlq, launches the launcher saw.
"""

from __future__ import annotations

import threading
import time

import msgspec
import pytest
from prometheus_client import REGISTRY
from support import holds_throughout, unique, wait_until, with_overrides

from orchestrator.broker.headers import ATTEMPT_HEADER, ATTEMPT_SIGNATURE_HEADER, SCHEDULED_AT_HEADER
from orchestrator.config import Config
from orchestrator.messages import JOB_DECODER, encode
from orchestrator.retry import REASON_CLASS_HEADER, REASON_HEADER, attempt_signer

from .fakes import InstantLauncher
from .harness import (
    EventCollector,
    build_job,
    close_connections_named,
    drain_queue,
    own_connections,
    publish,
    queue_depth,
    running_pipeline,
)

pytestmark = pytest.mark.services


def test_a_job_is_dispatched_then_succeeds_on_both_sinks(pipeline_config: Config) -> None:
    launcher = InstantLauncher(run_seconds=0.2)
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        # When
        publish(pipeline_config, build_job("ok-1"))
        # Then
        assert events.wait_terminal("ok-1").status == "succeeded"
        events.wait_terminal("ok-1", source="redis")
        for source in ("amqp", "redis"):
            assert events.statuses("ok-1", source) == ["dispatched", "running", "succeeded"]
            seqs = [e.seq for e in events.events("ok-1", source)]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        dispatched = events.events("ok-1")[0]
        assert dispatched.task_arn is not None and dispatched.task_arn.startswith("fake-ok-1-1")
        assert dispatched.launcher == "local"
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
    assert launcher.launches == 1


def test_a_failing_worker_fails_with_its_exit_code_and_is_dead_lettered(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=1)
    launcher = InstantLauncher(exit_codes={"bad-1": 11})
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("bad-1"))
        final = events.wait_terminal("bad-1")
        assert (final.status, final.exit_code) == ("failed", 11)
        assert final.reason == "the worker exited with code 11"
        wait_until(lambda: queue_depth(config, config.broker.dlq) == 1, what="the job in the DLQ")
    [(body, headers)] = drain_queue(config, config.broker.dlq)
    assert JOB_DECODER.decode(body).deployment_id == "bad-1"
    assert headers[REASON_HEADER] == "the worker exited with code 11"


def finished_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("orchestrator_jobs_finished_total", {"outcome": outcome}) or 0.0


def test_each_outcome_is_counted_once_when_it_is_confirmed(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=2, limits__retry_delays=(1,))
    launcher = InstantLauncher(exit_codes={"count-fail": 3})
    before = {o: finished_count(o) for o in ("succeeded", "failed", "rejected")}
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("count-ok"))
        publish(config, build_job("count-fail"))
        publish(config, b'{"type": "build", "deploymentId": "count-bad"}')
        for deployment_id in ("count-ok", "count-fail", "count-bad"):
            events.wait_terminal(deployment_id)
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="every delivery acked")
    # (a retry is not an outcome: the job that failed twice is counted once)
    assert {o: finished_count(o) - before[o] for o in before} == {"succeeded": 1, "failed": 1, "rejected": 1}


def test_a_failed_attempt_is_retried_through_the_delay_queue(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=2)
    launcher = InstantLauncher(exit_codes={"flaky-1": 1})
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("flaky-1"))
        wait_until(lambda: launcher.launches == 2, timeout=20, what="the second attempt")
        final = events.wait_terminal("flaky-1")
        assert final.status == "failed" and final.attempt == 2
        assert events.statuses("flaky-1") == [
            "dispatched",
            "running",
            "retrying",
            "dispatched",
            "running",
            "failed",
        ] or events.statuses("flaky-1") == ["dispatched", "retrying", "dispatched", "failed"]
    first, second = launcher.requests
    assert (first.attempt, second.attempt) == (1, 2)


@pytest.mark.parametrize(
    "body, reason_class, deployment_id, needle",
    [
        (b"\xff\xfe not utf-8", "not_utf8", None, "message:"),
        (
            b'{"type":"build","deploymentId":"dep-x","repository":"http://github.com/a/b"}',
            "security",
            "dep-x",
            "repository:",
        ),
        (
            b'{"type":"build","deploymentId":"dep-y","repository":"https://u:hunter2@github.com/a/b"}',
            "security",
            "dep-y",
            "credentials",
        ),
        (b"x" * 70_000, "too_large", None, "exceeds the limit"),
    ],
)
def test_bad_input_is_dead_lettered_once_with_its_reason(
    pipeline_config: Config, body: bytes, reason_class: str, deployment_id: str | None, needle: str
) -> None:
    launcher = InstantLauncher()
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, body)
        wait_until(lambda: queue_depth(pipeline_config, pipeline_config.broker.dlq) == 1, what="dead-letter")
        if deployment_id is not None:
            rejected = events.wait_terminal(deployment_id)
            assert rejected.status == "rejected" and rejected.reason is not None and needle in rejected.reason
            assert "hunter2" not in msgspec.json.encode(events.events(deployment_id)).decode()
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
    [(dead_body, headers)] = drain_queue(pipeline_config, pipeline_config.broker.dlq)
    assert headers[REASON_CLASS_HEADER] == reason_class
    assert needle in headers[REASON_HEADER]
    assert b"hunter2" not in dead_body and "hunter2" not in headers[REASON_HEADER]
    assert launcher.launches == 0, "bad input never reaches a launcher"


def test_concurrency_limit_holds_and_every_job_finishes(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_concurrent=2)
    launcher = InstantLauncher(run_seconds=0.3)
    ids = [f"slow-{n}" for n in range(10)]
    with running_pipeline(config, launcher), EventCollector(config) as events:
        for deployment_id in ids:
            publish(config, build_job(deployment_id))
        for deployment_id in ids:
            assert events.wait_terminal(deployment_id, timeout=60).status == "succeeded"
        queued = [d for d in ids if "queued" in events.statuses(d)]
    assert launcher.launches == 10
    assert launcher.max_overlap() == 2
    assert len(queued) >= 7, "jobs past the first two waited for a slot and said so"
    assert all(events.statuses(d).count("queued") <= 1 for d in ids)


def test_a_redelivered_job_is_adopted_not_launched_again(pipeline_config: Config) -> None:
    # Given a launch that is held until the consumer's connection is gone, so its ack is stale
    gate = threading.Event()
    launcher = InstantLauncher(run_seconds=0.5, gate=gate)
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, build_job("twice-1"))
        assert launcher.launch_started.wait(20)
        # When the connection drops before the ack
        assert close_connections_named(own_connections("consumer")) == 1
        gate.set()
        # Then the broker redelivers it, and the guard adopts the running task
        assert events.wait_terminal("twice-1").status == "succeeded"
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
        dispatched = [e for e in events.events("twice-1") if e.status == "dispatched"]
    assert launcher.launches == 1
    assert {e.task_arn for e in dispatched} == {launcher.requests[0] and dispatched[0].task_arn}
    assert {e.seq for e in dispatched} == {12}, "a re-published event keeps its seq, so consumers drop it"


def test_no_job_is_lost_when_the_broker_connections_drop_mid_stream(pipeline_config: Config) -> None:
    launcher = InstantLauncher(run_seconds=0.1)
    ids = [f"storm-{n}" for n in range(40)]
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        for n, deployment_id in enumerate(ids):
            publish(pipeline_config, build_job(deployment_id))
            if n == 15:
                assert close_connections_named(own_connections()) >= 2
        for deployment_id in ids:
            assert events.wait_terminal(deployment_id, timeout=60).status == "succeeded"
    launched = [r.job.deployment_id for r in launcher.requests]
    assert sorted(launched) == sorted(ids), "every job launched exactly once"


def test_retry_of_a_stopped_deployment_never_relaunches(pipeline_config: Config) -> None:
    launcher = InstantLauncher()
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, encode({"type": "stop", "deploymentId": "gone-1"}))
        stop_answer = events.wait_terminal("gone-1")
        assert stop_answer.status == "rejected" and stop_answer.type == "stop"
        # a retry the orchestrator scheduled (signed) before the stop came
        scheduled_ms = int(time.time() * 1000) - 60_000
        signature = attempt_signer(pipeline_config).sign("gone-1", "build", 2, scheduled_ms)
        headers = {ATTEMPT_HEADER: 2, SCHEDULED_AT_HEADER: scheduled_ms, ATTEMPT_SIGNATURE_HEADER: signature}
        publish(pipeline_config, build_job("gone-1"), headers=headers)
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
        # no retry was recorded as waiting: the stop's answer was the only one (nothing to stop)
        assert holds_throughout(
            lambda: [(e.type, e.status) for e in events.events("gone-1")] == [("stop", "rejected")], 0.3
        )
    assert launcher.launches == 0


def test_unique_names_do_not_collide() -> None:
    assert unique("a") != unique("a")
