"""Log lines operators can use: throttled floods, RFC 3339 UTC timestamps, a job's fields as keys of
their own in JSON (redacted like the message), and emojis that say what a job's status means."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

import actors.publisher as publisher_module
from actors.publisher import PublisherActor
from actors.validator import ValidatorActor
from orchestrator.commands import Incoming, Publish
from orchestrator.config import Config, load_config
from orchestrator.delivery import Delivery
from orchestrator.events import make_event
from orchestrator.launch_results import _log_decision
from orchestrator.lifecycle import Finish, RetryLater
from orchestrator.logs import (
    FAILURE,
    PROGRESS,
    SUCCESS,
    WARNING,
    JsonFormatter,
    LogThrottle,
    TextFormatter,
    job_fields,
    status_mark,
    suppressed_note,
)
from orchestrator.messages import BuildJob, DeployJob, Status
from orchestrator.runtime.actor import StandaloneReporter
from orchestrator.runtime.health import HealthBoard

#: A password that must never reach a log line, nor any of its fields.
SECRET = "Pw-n0t-in-any-l0g"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_logged_then_the_rest_is_counted_and_told_with_the_next_line() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=3, interval_seconds=10.0, clock=clock)
    assert [throttle.allow() for _ in range(3)] == [(True, 0)] * 3
    assert [throttle.allow() for _ in range(5)] == [(False, 0)] * 5
    clock.now = 9.9
    assert throttle.allow() == (False, 0)
    clock.now = 10.0
    assert throttle.allow() == (True, 6), "the next window's first line tells how many were left out"
    assert throttle.allow() == (True, 0)


def test_the_note_says_how_many_lines_were_left_out() -> None:
    assert suppressed_note(0) == ""
    assert suppressed_note(42) == " (and 42 more like it not logged)"


# --- the JSON line -------------------------------------------------------------------------------


def json_of(record: logging.LogRecord) -> dict[str, Any]:
    doc = json.loads(JsonFormatter().format(record))
    assert isinstance(doc, dict)
    return doc


def record_at(created: float, extra: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("orchestrator.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    for key, value in (extra or {}).items():
        setattr(record, key, value)
    return record


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone 5 h 30 min ahead of UTC (a POSIX TZ string: no tzdata needed)."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_the_json_timestamp_is_rfc3339_utc_with_milliseconds_whatever_the_local_time_zone() -> None:
    created = 1796283662.1239  # 2026-12-03 07:41:02.1239 UTC
    doc = json_of(record_at(created))
    assert doc["ts"] == "2026-12-03T07:41:02.123Z"
    parsed = dt.datetime.fromisoformat(doc["ts"])
    assert parsed.utcoffset() == dt.timedelta(0)
    assert parsed == dt.datetime(2026, 12, 3, 7, 41, 2, 123000, tzinfo=dt.UTC)
    assert json_of(record_at(1796283662.0))["ts"] == "2026-12-03T07:41:02.000Z"
    assert json_of(record_at(1796283662.9999))["ts"] == "2026-12-03T07:41:02.999Z"


def test_a_json_line_has_its_level_logger_message_and_emoji() -> None:
    doc = json_of(record_at(1796283662.5, {"emoji": SUCCESS}))
    assert doc == {
        "ts": "2026-12-03T07:41:02.500Z",
        "level": "INFO",
        "logger": "orchestrator.x",
        "msg": "hello there",
        "emoji": SUCCESS,
    }


def test_job_fields_are_keys_of_their_own_in_json_and_only_the_message_in_text() -> None:
    record = record_at(
        1796283662.5,
        job_fields("dep-1", 2, "arn:aws:ecs:eu-west-1:1:task/c/abc", job_type="build", mark=WARNING),
    )
    doc = json_of(record)
    assert doc["deploymentId"] == "dep-1"
    assert doc["attempt"] == 2
    assert doc["taskArn"] == "arn:aws:ecs:eu-west-1:1:task/c/abc"
    assert doc["type"] == "build"
    assert "status" not in doc  # fields not given are left out, not null
    assert doc["emoji"] == WARNING
    assert TextFormatter().format(record).endswith(" INFO orchestrator.x ⚠️ hello there")


def test_secrets_are_redacted_in_job_fields_too() -> None:
    record = record_at(
        1796283662.5,
        job_fields(
            f"dep https://user:{SECRET}@github.com/a",
            1,
            f"https://x.test/task?private_token={SECRET}",
            job_type=f"https://u:{SECRET}@h",
        ),
    )
    line = JsonFormatter().format(record)
    assert SECRET not in line
    doc = json.loads(line)
    assert doc["deploymentId"] == "dep https://***@github.com/a"
    assert doc["taskArn"] == "https://x.test/task?private_token=***"
    assert doc["type"] == "https://***@h"


# --- emojis by meaning ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_type", "status", "level", "mark"),
    [
        ("build", "rejected", logging.WARNING, WARNING),  # bad input, refused as designed
        ("stop", "rejected", logging.WARNING, WARNING),  # nothing to stop
        ("build", "stopped", logging.INFO, SUCCESS),  # stopped as asked
        ("deploy", "stopped", logging.INFO, SUCCESS),
        ("deploy", "running", logging.INFO, SUCCESS),  # a deploy's goal
        ("build", "running", logging.INFO, PROGRESS),
        ("build", "dispatched", logging.INFO, PROGRESS),
        ("build", "queued", logging.INFO, PROGRESS),
        ("build", "succeeded", logging.INFO, SUCCESS),
        ("build", "retrying", logging.WARNING, WARNING),
        ("build", "timed_out", logging.ERROR, FAILURE),
        ("build", "failed", logging.ERROR, FAILURE),
        ("deploy", "failed", logging.ERROR, FAILURE),
    ],
)
def test_a_status_is_logged_by_what_it_means(job_type: str, status: str, level: int, mark: str) -> None:
    assert status_mark(job_type, status) == (level, mark)


class ConfirmsAtOnce:
    """A confirming publisher whose broker confirms every message before ``publish`` returns."""

    def publish(self, exchange: str, routing_key: str, body: bytes, *, on_confirm: Any, **_: Any) -> None:
        on_confirm(True, "")


class Settler:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.delivery_tag)


class Forward:
    """An actor handle whose tells go straight to the actor's ``receive`` (no thread)."""

    def __init__(self, actor: PublisherActor) -> None:
        self.actor = actor

    def tell(self, message: Any) -> None:
        self.actor.receive(message)


@pytest.fixture
def config() -> Config:
    return load_config(environ={"ORCH_STATUS_SINKS": "amqp"})


@pytest.fixture
def settler() -> Settler:
    return Settler()


@pytest.fixture
def publisher(config: Config, settler: Settler, monkeypatch: pytest.MonkeyPatch) -> PublisherActor:
    # Rejection lines are throttled per process: other tests' rejections must not use this one's share.
    monkeypatch.setattr(publisher_module, "_REJECTION_LINES", LogThrottle())
    actor = PublisherActor(StandaloneReporter(), config, HealthBoard(30.0), settler)  # type: ignore[arg-type]
    actor._amqp = ConfirmsAtOnce()  # type: ignore[assignment]
    return actor


def lines_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def test_a_job_rejected_by_validation_is_a_warning_line_with_the_jobs_fields(
    config: Config, publisher: PublisherActor, settler: Settler, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the real Validator, publishing through the real Publisher
    validator = ValidatorActor(
        StandaloneReporter(),
        config,
        Forward(publisher),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]  # (a rejection reaches neither the rate limiter nor the monitor)
        None,  # type: ignore[arg-type]
        settler,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
    )
    body = json.dumps(
        {"type": "build", "deploymentId": "dep-bad-1", "repository": f"https://user:{SECRET}@github.com/a/b"}
    ).encode()
    delivery = Delivery(
        generation=1, delivery_tag=5, redelivered=False, body=body, headers={}, attempt=1, received_at=0.0
    )
    caplog.set_level(logging.DEBUG)

    # When it rejects a job with credentials in its repository URL
    validator.receive(Incoming(delivery=delivery))

    # Then the outcome line is a warning (bad input, refused as designed), with the job's fields
    [record] = lines_of(caplog, "actors.publisher")
    assert record.levelno == logging.WARNING
    doc = json_of(record)
    assert doc["emoji"] == WARNING
    assert {k: doc.get(k) for k in ("deploymentId", "attempt", "type", "status")} == {
        "deploymentId": "dep-bad-1",
        "attempt": 1,
        "type": "build",
        "status": "rejected",
    }
    assert "taskArn" not in doc
    text = TextFormatter().format(record)
    assert text.endswith(
        " WARNING actors.publisher ⚠️ build dep-bad-1 attempt 1: rejected "
        "(repository: must not contain credentials (user-info in the URL))"
    )
    assert SECRET not in text + JsonFormatter().format(record)
    assert settler.acked == [5]  # (the line is logged once the rejection is confirmed)


@pytest.mark.parametrize(
    ("job_type", "status", "level", "mark"),
    [
        ("build", "stopped", logging.INFO, SUCCESS),
        ("deploy", "running", logging.INFO, SUCCESS),
        ("build", "running", logging.INFO, PROGRESS),
        ("build", "failed", logging.ERROR, FAILURE),
        ("test", "timed_out", logging.ERROR, FAILURE),
        ("build", "retrying", logging.WARNING, WARNING),
    ],
)
def test_the_publishers_outcome_line_has_the_status_level_emoji_and_the_task(
    job_type: str,
    status: Status,
    level: int,
    mark: str,
    publisher: PublisherActor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    event = make_event("dep-2", job_type, status, 3, task_arn="dep-2-3", launcher="local")
    publisher.receive(Publish(events=(event,)))
    [record] = lines_of(caplog, "actors.publisher")
    assert (record.levelno, getattr(record, "emoji", None)) == (level, mark)
    doc = json_of(record)
    assert (doc["deploymentId"], doc["attempt"], doc["taskArn"], doc["type"], doc["status"]) == (
        "dep-2",
        3,
        "dep-2-3",
        job_type,
        status,
    )
    assert doc["msg"] == f"{job_type} dep-2 attempt 3: {status}"


def test_a_launch_given_up_is_an_error_and_a_retry_a_warning_each_with_the_job_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = BuildJob(deployment_id="dep-3", repository="https://github.com/a/b")
    caplog.set_level(logging.DEBUG)
    _log_decision(job, 2, RetryLater(next_attempt=3, delay_seconds=10, reason="RESOURCE:MEMORY"))
    _log_decision(
        job,
        3,
        Finish(status="failed", attempt=3, reason="access denied", given_up="not retried (permanent error)"),
    )
    retry, failure = lines_of(caplog, "orchestrator.launch_results")
    assert (retry.levelno, getattr(retry, "emoji", None)) == (logging.WARNING, WARNING)
    assert (failure.levelno, getattr(failure, "emoji", None)) == (logging.ERROR, FAILURE)
    assert {k: json_of(retry)[k] for k in ("deploymentId", "attempt", "type")} == {
        "deploymentId": "dep-3",
        "attempt": 2,
        "type": "build",
    }
    assert json_of(failure)["attempt"] == 3


def test_submit_wait_ends_a_deploy_that_reached_running_on_a_success() -> None:
    from orchestrator.submit import EXIT_SUCCEEDED, _follow

    job = DeployJob(deployment_id="dep-4", repository="https://github.com/a/b")
    events = iter(
        [
            make_event("dep-4", "deploy", "dispatched", 1, task_arn="dep-4-1"),
            make_event("dep-4", "deploy", "running", 1, task_arn="dep-4-1"),
        ]
    )
    printed: list[str] = []
    code = _follow(job, lambda _wait: next(events), 60.0, printed.append)
    assert code == EXIT_SUCCEEDED
    assert printed == [
        "🔄 deploy dep-4 attempt 1: dispatched · task dep-4-1",
        "✅ deploy dep-4 attempt 1: running · task dep-4-1",
    ]


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ("stopped", "✅ build dep-5 attempt 1: stopped"),
        ("rejected", "⚠️ build dep-5 attempt 1: rejected"),
        ("failed", "❌ build dep-5 attempt 1: failed"),
    ],
)
def test_submit_wait_marks_the_final_event_by_what_it_means(status: Status, line: str) -> None:
    from orchestrator.submit import _follow

    job = BuildJob(deployment_id="dep-5", repository="https://github.com/a/b")
    events = iter([make_event("dep-5", "build", status, 1)])
    printed: list[str] = []
    _follow(job, lambda _wait: next(events), 60.0, printed.append)
    assert printed == [line]
