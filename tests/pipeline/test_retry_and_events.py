"""Retry decisions, the publishes that make them durable, and event sequence numbers."""

from __future__ import annotations

import msgspec
import pytest

from orchestrator.config import load_config
from orchestrator.events import make_event, sequence_number
from orchestrator.messages import JOB_DECODER, BuildJob
from orchestrator.retry import (
    ATTEMPT_HEADER,
    REASON_HEADER,
    GiveUp,
    Retry,
    RetryPolicy,
    failure_publish,
    retry_publish,
)

JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")


def policy(**env: str) -> RetryPolicy:
    return RetryPolicy(load_config(environ={f"ORCH_{k.upper()}": v for k, v in env.items()}))


def test_retries_until_max_attempts_with_the_delay_tiers() -> None:
    p = policy(limits_max_attempts="4", limits_retry_delays="10,60")
    assert p.decide("build", 1) == Retry(next_attempt=2, delay_seconds=10)
    assert p.decide("build", 2) == Retry(next_attempt=3, delay_seconds=60)
    assert p.decide("build", 3) == Retry(next_attempt=4, delay_seconds=60), "the last tier repeats"
    assert isinstance(p.decide("build", 4), GiveUp)


def test_permanent_failures_and_configured_exit_codes_are_not_retried() -> None:
    p = policy(limits_no_retry_exit_codes="11,12")
    assert isinstance(p.decide("build", 1, retryable=False), GiveUp)
    assert isinstance(p.decide("build", 1, exit_code=11), GiveUp)
    assert isinstance(p.decide("build", 1, exit_code=1), Retry)


def test_per_type_max_attempts_override() -> None:
    p = policy(type_deploy_max_attempts="1")
    assert isinstance(p.decide("deploy", 1), GiveUp)
    assert isinstance(p.decide("build", 1), Retry)


def test_retry_publish_puts_the_job_in_its_tier_before_the_event() -> None:
    broker = load_config(environ={}).broker
    publish = retry_publish(broker, JOB, 1, Retry(next_attempt=2, delay_seconds=60), "exit 1 https://u:pw@x")
    [message] = publish.messages
    assert message.routing_key == "execute.retry.60s"
    assert message.headers[ATTEMPT_HEADER] == 2
    assert "pw" not in message.headers[REASON_HEADER]
    assert JOB_DECODER.decode(message.body) == JOB
    [event] = publish.events
    assert (event.status, event.attempt) == ("retrying", 1)
    assert event.reason is not None and "pw" not in event.reason


def test_failure_publish_dead_letters_with_the_last_reason() -> None:
    broker = load_config(environ={}).broker
    publish = failure_publish(broker, JOB, 3, "the worker exited with code 2", exit_code=2)
    [message] = publish.messages
    assert message.routing_key == "execute.dlq"
    assert message.headers[REASON_HEADER] == "the worker exited with code 2"
    [event] = publish.events
    assert (event.status, event.exit_code, event.terminal) == ("failed", 2, True)


@pytest.mark.parametrize(
    "earlier, later",
    [
        ((1, "queued"), (1, "dispatched")),
        ((1, "dispatched"), (1, "running")),
        ((1, "running"), (1, "timed_out")),
        ((1, "timed_out"), (1, "retrying")),
        ((1, "retrying"), (2, "dispatched")),
        ((2, "running"), (2, "succeeded")),
        ((1, "retrying"), (1, "stopped")),
    ],
)
def test_seq_increases_along_a_jobs_life(earlier: tuple[int, str], later: tuple[int, str]) -> None:
    assert sequence_number(*earlier) < sequence_number(*later)  # type: ignore[arg-type]


def test_event_wire_format_is_camel_case_and_omits_unknowns() -> None:
    event = make_event("dep-1", "build", "dispatched", 1, task_arn="arn:aws:ecs:task/1", launcher="fargate")
    wire = msgspec.json.decode(msgspec.json.encode(event))
    assert wire["deploymentId"] == "dep-1"
    assert wire["taskArn"] == "arn:aws:ecs:task/1"
    assert wire["seq"] == 12
    assert "exitCode" not in wire
    assert wire["at"].endswith("Z")
