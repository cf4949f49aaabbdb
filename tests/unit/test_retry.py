"""Retry decisions, the publishes that make them durable, and event sequence numbers."""

from __future__ import annotations

import msgspec
import pytest

from orchestrator.broker.headers import ATTEMPT_HEADER
from orchestrator.commands import Publish
from orchestrator.config import load_config
from orchestrator.events import make_event, sequence_number
from orchestrator.lifecycle import Finish, Limits, RetryLater
from orchestrator.messages import JOB_DECODER, BuildJob
from orchestrator.retry import (
    REASON_HEADER,
    Retry,
    RetryPolicy,
    attempt_signer,
    publish_decision,
    retry_publish,
)

JOB = BuildJob(deployment_id="dep-1", repository="https://github.com/a/b")


def policy(**env: str) -> RetryPolicy:
    return RetryPolicy(load_config(environ={f"ORCH_{k.upper()}": v for k, v in env.items()}))


def test_the_policy_gives_the_core_the_configured_limits_per_type() -> None:
    p = policy(limits_max_attempts="4", limits_retry_delays="10,60", limits_no_retry_exit_codes="11,12")
    assert p.limits("build") == Limits(
        max_attempts=4, retry_delays=(10, 60), no_retry_exit_codes=frozenset({11, 12})
    )
    assert policy(type_deploy_max_attempts="1").limits("deploy").max_attempts == 1
    assert policy(type_deploy_max_attempts="1").limits("build").max_attempts == 3


def test_retry_publish_puts_the_job_in_its_tier_before_the_event() -> None:
    config = load_config(environ={})
    publish = retry_publish(
        config.broker,
        JOB,
        1,
        Retry(next_attempt=2, delay_seconds=60),
        "exit 1 https://u:pw@x",
        signer=attempt_signer(config),
    )
    [message] = publish.messages
    assert message.routing_key == "execute.retry.60s"
    assert message.headers[ATTEMPT_HEADER] == 2
    assert "pw" not in message.headers[REASON_HEADER]
    assert JOB_DECODER.decode(message.body) == JOB
    [event] = publish.events
    assert (event.status, event.attempt) == ("retrying", 1)
    assert event.reason is not None and "pw" not in event.reason


def decide_for_attempt_3(finish: Finish) -> Publish:
    config = load_config(environ={})
    return publish_decision(
        finish,
        broker=config.broker,
        deployment_id=JOB.deployment_id,
        job_type=JOB.type,
        job=JOB,
        attempt=3,
        signer=attempt_signer(config),
    )


def test_a_failure_that_gives_up_dead_letters_the_job_with_its_last_reason() -> None:
    finish = Finish(
        status="failed",
        attempt=3,
        reason="the worker exited with code 2 https://u:pw@x",
        reason_class="failed",
        exit_code=2,
        dead_letter=True,
    )
    publish = decide_for_attempt_3(finish)
    [message] = publish.messages
    assert message.routing_key == "execute.dlq"
    assert message.headers[REASON_HEADER] == "the worker exited with code 2 https://***@x"
    assert message.headers[ATTEMPT_HEADER] == 3
    assert JOB_DECODER.decode(message.body) == JOB
    [event] = publish.events
    assert (event.status, event.exit_code, event.terminal) == ("failed", 2, True)


@pytest.mark.parametrize(
    ("status", "reason_class", "counted_as"),
    [
        ("failed", "timed_out", "timed_out"),
        ("failed", "failed", "failed"),
        ("succeeded", None, "succeeded"),
        ("stopped", None, "stopped"),
    ],
)
def test_a_job_whose_last_attempt_timed_out_is_counted_as_timed_out_though_its_event_says_failed(
    status: str, reason_class: str | None, counted_as: str
) -> None:
    finish = Finish(status=status, attempt=3, reason="start timeout", reason_class=reason_class)  # type: ignore[arg-type]
    publish = decide_for_attempt_3(finish)
    [event] = publish.events
    assert event.status == status
    assert publish.finished == counted_as


def test_a_retry_of_the_same_attempt_has_no_event_and_an_unknown_job_cannot_be_retried() -> None:
    config = load_config(environ={})
    same = RetryLater(next_attempt=1, delay_seconds=10, reason="launch failed (throttled)", announce=False)
    common = {"broker": config.broker, "deployment_id": "dep-1", "job_type": "build", "attempt": 1}
    publish = publish_decision(same, job=JOB, signer=attempt_signer(config), **common)  # type: ignore[arg-type]
    assert publish.events == () and publish.messages[0].headers[ATTEMPT_HEADER] == 1
    with pytest.raises(ValueError, match="needs the job"):
        publish_decision(same, job=None, signer=attempt_signer(config), **common)  # type: ignore[arg-type]


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
