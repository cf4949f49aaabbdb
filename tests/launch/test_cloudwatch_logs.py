"""ECS build logs on moto: each task's awslogs stream, followed with batched, paced FilterLogEvents."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from orchestrator import metrics
from orchestrator.buildlogs.awslogs import LogLocation
from orchestrator.buildlogs.cloudwatch import CloudWatchSource
from orchestrator.buildlogs.cloudwatch_client import last_lines
from orchestrator.buildlogs.cloudwatch_fetch import MAX_STREAMS_PER_CALL
from orchestrator.buildlogs.cloudwatch_stream import format_cursor, parse_cursor
from orchestrator.buildlogs.model import FollowedTask, RawLine
from orchestrator.config import Config
from orchestrator.launch.ecs import EcsLauncher

from .conftest import CONTAINER, REGION, EcsWorld
from .helpers import config_from, register_awslogs_definition
from .test_ecs import moto_task, request_for

GROUP = "/blacktree/workers"
PREFIX = "build"
DEADLINE_SECONDS = 10.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logs(ecs_world: EcsWorld) -> Any:
    """moto's CloudWatch Logs (inside the ``ecs_world`` mock) with the workers' log group."""
    client = boto3.client("logs", region_name=REGION)
    client.create_log_group(logGroupName=GROUP)
    return client


@pytest.fixture
def awslogs_definition(ecs_world: EcsWorld) -> str:
    """A Fargate task definition family whose worker container logs with awslogs."""
    ecs = boto3.client("ecs", region_name=REGION)
    register_awslogs_definition(ecs, "worker-logged", CONTAINER, GROUP, PREFIX)
    return "worker-logged"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(ecs_world: EcsWorld, logs: Any, clock: FakeClock) -> Iterator[CloudWatchSource]:
    config = config_from(ecs_world.environ(task_definition="worker-logged"))
    made = CloudWatchSource(
        config,
        logs_client=logs,
        ecs_client=boto3.client("ecs", region_name=REGION),
        monotonic=clock,
        autostart=False,
    )
    yield made
    made.close()


def followed(task_id: str, stream: str | None = None, group: str = GROUP) -> FollowedTask:
    location = "" if stream is None else str(LogLocation(group, stream))
    return FollowedTask(
        task_id=task_id, deployment_id=f"dep-{task_id}", attempt=1, launcher="fargate", location=location
    )


def put(logs: Any, stream: str, *events: tuple[int, str]) -> None:
    """Put ``(timestamp ms, message)`` events into ``stream`` (created when missing)."""
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=GROUP, logStreamName=stream)
    logs.put_log_events(
        logGroupName=GROUP,
        logStreamName=stream,
        logEvents=[{"timestamp": ts, "message": message} for ts, message in events],
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def texts(polled: list[tuple[str, list[RawLine]]], task_id: str) -> list[bytes]:
    return [line.text for tid, lines in polled if tid == task_id for line in lines]


def calls_counted(operation: str) -> float:
    return float(metrics.CLOUDWATCH_API_CALLS.labels(operation=operation)._value.get())


# --- where a task's log is ------------------------------------------------------------------------


def test_location_comes_from_the_task_definitions_awslogs_and_the_task_id(
    ecs_world: EcsWorld, awslogs_definition: str, source: CloudWatchSource
) -> None:
    launcher = EcsLauncher(source.config, "FARGATE")
    first = launcher.launch(request_for("dep-1"))
    second = launcher.launch(request_for("dep-2"))
    definitions_before = metrics.ECS_API_CALLS.labels(operation="DescribeTaskDefinition")._value.get()

    assert source.location_of(first) == "", "not known yet: looked up in the background, never waited for"
    source.fetch_once()

    task_id = first.task_id.rsplit("/", 1)[-1]
    assert source.location_of(first) == f"{GROUP}\n{PREFIX}/{CONTAINER}/{task_id}"
    assert (
        source.resolve_location(second)
        == f"{GROUP}\n{PREFIX}/{CONTAINER}/{second.task_id.rsplit('/', 1)[-1]}"
    )
    definitions = metrics.ECS_API_CALLS.labels(operation="DescribeTaskDefinition")._value.get()
    assert definitions - definitions_before == 1, "one DescribeTaskDefinition per revision, then cached"


def test_a_task_definition_without_awslogs_gives_no_location(
    ecs_world: EcsWorld, logs: Any, clock: FakeClock
) -> None:
    config = config_from(ecs_world.environ())  # the conftest's definition: no logConfiguration
    source = CloudWatchSource(
        config, logs_client=logs, ecs_client=boto3.client("ecs", region_name=REGION), autostart=False
    )
    handle = EcsLauncher(config, "FARGATE").launch(request_for())

    assert source.resolve_location(handle) == ""
    assert source.location_of(handle) == ""
    source.follow(followed(handle.task_id), None)
    assert source.caught_up(handle.task_id, time.time()), "no stream: nothing to wait for"


def test_a_followed_task_without_location_gets_it_once_found(
    ecs_world: EcsWorld, awslogs_definition: str, logs: Any, source: CloudWatchSource
) -> None:
    handle = EcsLauncher(source.config, "FARGATE").launch(request_for())
    stream = f"{PREFIX}/{CONTAINER}/{handle.task_id.rsplit('/', 1)[-1]}"
    put(logs, stream, (now_ms(), "cloning"))

    source.follow(followed(handle.task_id), None)  # the pump had no location yet
    assert source.location_of(handle) == ""
    source.fetch_once()  # finds the location, then reads the stream

    assert texts(source.poll(100), handle.task_id) == [b"cloning"]


# --- following --------------------------------------------------------------------------------------


def test_lines_put_into_the_stream_are_polled_in_order_with_their_cursors(
    source: CloudWatchSource, logs: Any
) -> None:
    t = now_ms()
    put(logs, "build/worker/t1", (t, "step 1"), (t + 1, "step 2"), (t + 1, "step 3 same ms"))
    source.follow(followed("t1", "build/worker/t1"), None)

    source.fetch_once()
    polled = source.poll(100)

    [(task_id, lines)] = polled
    assert task_id == "t1"
    assert [line.text for line in lines] == [b"step 1", b"step 2", b"step 3 same ms"]
    assert [line.at for line in lines] == [t / 1000, (t + 1) / 1000, (t + 1) / 1000]
    assert all(line.stream == "" for line in lines), "awslogs mixes stdout and stderr"
    cursors = [parse_cursor(line.cursor) for line in lines]
    assert [c[0] for c in cursors if c] == [t, t + 1, t + 1]
    assert len({line.cursor for line in lines}) == 3


def test_a_later_round_returns_only_new_events_even_at_the_same_millisecond(
    source: CloudWatchSource, logs: Any, clock: FakeClock
) -> None:
    t = now_ms()
    put(logs, "build/worker/t1", (t, "a"), (t + 5, "b"))
    source.follow(followed("t1", "build/worker/t1"), None)
    source.fetch_once()
    assert texts(source.poll(100), "t1") == [b"a", b"b"]

    put(logs, "build/worker/t1", (t + 5, "c same ms as b"), (t + 9, "d"))
    clock.now += 2  # past the interval between two calls over the same streams, tokens refilled
    source.fetch_once()

    assert texts(source.poll(100), "t1") == [b"c same ms as b", b"d"]
    clock.now += 2
    source.fetch_once()
    assert source.poll(100) == []


def test_resuming_from_a_cursor_gives_the_lines_after_it_and_no_duplicate(
    ecs_world: EcsWorld, source: CloudWatchSource, logs: Any, clock: FakeClock
) -> None:
    t = now_ms()
    put(logs, "build/worker/t1", (t, "one"), (t + 3, "two"), (t + 3, "three same ms"), (t + 7, "four"))
    source.follow(followed("t1", "build/worker/t1"), None)
    source.fetch_once()
    lines = source.poll(2)[0][1]  # the pump published two lines, then the process died
    assert [line.text for line in lines] == [b"one", b"two"]

    # Given another process adopts the task with the cursor stored beside the last published line
    adopter = CloudWatchSource(
        source.config, logs_client=logs, ecs_client=object(), monotonic=clock, autostart=False
    )
    adopter.follow(followed("t1", "build/worker/t1"), lines[-1].cursor)
    # When it reads the stream
    adopter.fetch_once()
    # Then it gets what comes after, once
    assert texts(adopter.poll(100), "t1") == [b"three same ms", b"four"]
    put(logs, "build/worker/t1", (t + 8, "five"))
    clock.now += 2
    adopter.fetch_once()
    assert texts(adopter.poll(100), "t1") == [b"five"]


def test_cursors_round_trip_and_others_are_refused() -> None:
    assert parse_cursor(format_cursor(1700000000123, "0375")) == (1700000000123, "0375")
    assert parse_cursor("off:12345") is None
    assert parse_cursor("cw:notanumber:1") is None
    assert parse_cursor("cw:12:") is None


def test_poll_returns_at_most_max_lines_and_keeps_the_rest(source: CloudWatchSource, logs: Any) -> None:
    t = now_ms()
    put(logs, "build/worker/t1", *[(t + i, f"line {i}") for i in range(10)])
    source.follow(followed("t1", "build/worker/t1"), None)
    source.fetch_once()

    first = texts(source.poll(4), "t1")
    rest = texts(source.poll(100), "t1")

    assert first == [f"line {i}".encode() for i in range(4)]
    assert rest == [f"line {i}".encode() for i in range(4, 10)]


def test_unfollow_forgets_the_task_and_its_unpolled_lines(source: CloudWatchSource, logs: Any) -> None:
    put(logs, "build/worker/t1", (now_ms(), "x"))
    source.follow(followed("t1", "build/worker/t1"), None)
    source.fetch_once()

    source.unfollow("t1")

    assert source.poll(100) == []


def test_150_tasks_in_one_group_take_2_filter_calls_per_round(
    source: CloudWatchSource, logs: Any, clock: FakeClock
) -> None:
    t = now_ms()
    for i in range(150):
        put(logs, f"build/worker/t{i}", (t + i, f"hello from {i}"))
        source.follow(followed(f"t{i}", f"build/worker/t{i}"), None)
    sent: list[dict[str, Any]] = []
    logs.meta.events.register(
        "provide-client-params.logs.FilterLogEvents", lambda params, **_: sent.append(params)
    )
    before = calls_counted("FilterLogEvents")

    source.fetch_once()

    assert sorted(len(params["logStreamNames"]) for params in sent) == [50, MAX_STREAMS_PER_CALL]
    assert calls_counted("FilterLogEvents") - before == 2
    polled = dict(source.poll(1000))
    assert len(polled) == 150
    assert [line.text for line in polled["t149"]] == [b"hello from 149"]

    # The next round, the streams are current: again one call per 100 streams
    sent.clear()
    clock.now += 2
    source.fetch_once()
    assert sorted(len(params["logStreamNames"]) for params in sent) == [50, MAX_STREAMS_PER_CALL]
    assert min(params["startTime"] for params in sent) == t, "startTime: the oldest position of the call"
    assert all(params["startTime"] >= t for params in sent)


def test_a_stream_that_does_not_exist_yet_is_not_an_error(
    source: CloudWatchSource, logs: Any, clock: FakeClock
) -> None:
    source.follow(followed("t1", "build/worker/t1"), None)
    source.fetch_once()
    assert source.poll(100) == []

    put(logs, "build/worker/t1", (now_ms(), "started"))
    clock.now += 2
    source.fetch_once()

    assert texts(source.poll(100), "t1") == [b"started"]


def test_caught_up_once_a_complete_call_started_after_the_task_ended(
    source: CloudWatchSource, logs: Any, clock: FakeClock
) -> None:
    put(logs, "build/worker/t1", (now_ms(), "last words"))
    source.follow(followed("t1", "build/worker/t1"), None)
    source.task_ended("t1")  # what the pump says when the task's end is handled
    assert not source.caught_up("t1")

    source.fetch_once()
    assert not source.caught_up("t1"), "lines fetched but not yet polled"
    assert texts(source.poll(100), "t1") == [b"last words"]

    assert source.caught_up("t1")
    assert not source.caught_up("t1", time.time() + 60), "no call started after that"
    assert source.caught_up("not-followed")


# --- AWS's own behaviour: a missing stream fails the whole call; throttling -------------------------


class AwsLikeLogs:
    """moto's client, but FilterLogEvents fails when a named stream does not exist, as AWS's does;
    and it can be told to throttle."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.throttle = False
        self.calls: list[str] = []
        self.exceptions = client.exceptions

    def _existing(self, group: str) -> set[str]:
        pages = self.client.get_paginator("describe_log_streams").paginate(logGroupName=group)
        return {s["logStreamName"] for page in pages for s in page["logStreams"]}

    def filter_log_events(self, **params: Any) -> Any:
        self.calls.append("FilterLogEvents")
        if self.throttle:
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "FilterLogEvents"
            )
        if set(params.get("logStreamNames") or ()) - self._existing(params["logGroupName"]):
            raise ClientError(
                {
                    "Error": {
                        "Code": "ResourceNotFoundException",
                        "Message": "The specified log stream does not exist.",
                    }
                },
                "FilterLogEvents",
            )
        return self.client.filter_log_events(**params)

    def describe_log_streams(self, **params: Any) -> Any:
        self.calls.append("DescribeLogStreams")
        return self.client.describe_log_streams(**params)


@pytest.fixture
def aws_like(
    ecs_world: EcsWorld, logs: Any, clock: FakeClock
) -> Iterator[tuple[CloudWatchSource, AwsLikeLogs]]:
    client = AwsLikeLogs(logs)
    made = CloudWatchSource(
        config_from(ecs_world.environ()),
        logs_client=client,
        ecs_client=object(),
        monotonic=clock,
        autostart=False,
    )
    yield made, client
    made.close()


def test_on_aws_a_missing_stream_is_looked_for_apart_and_the_others_go_on(
    aws_like: tuple[CloudWatchSource, AwsLikeLogs], logs: Any, clock: FakeClock
) -> None:
    source, client = aws_like
    put(logs, "build/worker/running", (now_ms(), "building"))
    source.follow(followed("running", "build/worker/running"), None)
    source.follow(followed("pending", "build/worker/pending"), None)

    source.fetch_once()  # the call fails as a whole: both are looked for, the running one is found
    clock.now += 2
    source.fetch_once()

    assert texts(source.poll(100), "running") == [b"building"]
    probes = client.calls.count("DescribeLogStreams")

    # The pending task's stream is looked for again only after a backoff, then found
    put(logs, "build/worker/pending", (now_ms(), "finally started"))
    clock.now += 0.1
    source.fetch_once()
    assert client.calls.count("DescribeLogStreams") == probes, "no second look before the backoff"
    clock.now += 60
    source.fetch_once()  # found
    clock.now += 2
    source.fetch_once()  # read
    assert texts(source.poll(100), "pending") == [b"finally started"]


def test_throttling_backs_off_the_whole_source(
    aws_like: tuple[CloudWatchSource, AwsLikeLogs], logs: Any, clock: FakeClock
) -> None:
    source, client = aws_like
    put(logs, "build/worker/t1", (now_ms(), "x"))
    source.follow(followed("t1", "build/worker/t1"), None)
    client.throttle = True

    source.fetch_once()
    calls = len(client.calls)
    clock.now += 0.2  # a token is back, but the backoff (at least 0.5 s) is not over
    source.fetch_once()
    assert len(client.calls) == calls

    client.throttle = False
    clock.now += 60
    source.fetch_once()
    assert texts(source.poll(100), "t1") == [b"x"]


# --- pacing ------------------------------------------------------------------------------------------


class CountingLogs:
    """A CloudWatch Logs client that answers every FilterLogEvents with nothing, and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    def filter_log_events(self, **_: Any) -> Any:
        self.calls += 1
        return {"events": []}


def test_the_token_bucket_paces_calls_whatever_the_number_of_calls_wanted(
    ecs_world: EcsWorld, clock: FakeClock
) -> None:
    config = config_from(ecs_world.environ(logs_api_rate="2", logs_api_burst="2"))
    client = CountingLogs()
    source = CloudWatchSource(
        config, logs_client=client, ecs_client=object(), monotonic=clock, autostart=False
    )
    for group in range(6):  # six log groups: six calls wanted per round
        source.follow(followed(f"t{group}", "build/worker/t", group=f"/group/{group}"), None)

    source.fetch_once()
    assert client.calls == 2, "the burst"
    source.fetch_once()
    assert client.calls == 2, "no token left, no time passed"
    clock.now += 0.5
    source.fetch_once()
    assert client.calls == 3, "2 tokens per second: one more after half a second"
    clock.now += 10
    source.fetch_once()
    assert client.calls == 5, "never more than the burst at once"


def test_the_logs_api_rate_and_burst_are_config_keys(ecs_world: EcsWorld) -> None:
    default = Config()
    assert (default.ecs.logs_api_rate, default.ecs.logs_api_burst) == (2.0, 2)
    assert default.ecs.logs_api_rate < 5, "below CloudWatch Logs' 5 FilterLogEvents per second"
    config = config_from(ecs_world.environ(logs_api_rate="4.5", logs_api_burst="3"))
    assert (config.ecs.logs_api_rate, config.ecs.logs_api_burst) == (4.5, 3)


# --- the thread, and a failed task's last lines ---------------------------------------------------


def test_the_fetch_thread_delivers_lines_without_the_pump_waiting(ecs_world: EcsWorld, logs: Any) -> None:
    source = CloudWatchSource(config_from(ecs_world.environ()), logs_client=logs, ecs_client=object())
    try:
        source.follow(followed("t1", "build/worker/t1"), None)  # starts the fetch thread
        put(logs, "build/worker/t1", (now_ms(), "live"))
        got: list[bytes] = []
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not got and time.monotonic() < deadline:
            got = texts(source.poll(100), "t1")
            threading.Event().wait(0.02)
        assert got == [b"live"]
    finally:
        source.close()


def test_last_lines_are_the_streams_last_messages_oldest_first(logs: Any) -> None:
    t = now_ms()
    put(logs, "build/worker/t1", *[(t + i, f"line {i}") for i in range(8)])

    assert last_lines(logs, GROUP, "build/worker/t1", n=5) == [f"line {i}" for i in range(3, 8)]
    assert last_lines(logs, GROUP, "build/worker/none") == []
    assert last_lines(logs, "/no/such/group", "build/worker/t1") == []


# --- a failed ECS task's reason ------------------------------------------------------------------------


def test_a_failed_tasks_reason_says_where_its_log_is_and_quotes_its_last_lines_once(
    ecs_world: EcsWorld, awslogs_definition: str, logs: Any
) -> None:
    launcher = EcsLauncher(
        config_from(ecs_world.environ(task_definition="worker-logged")), "FARGATE", logs_client=logs
    )
    handle = launcher.launch(request_for())
    stream = f"{PREFIX}/{CONTAINER}/{handle.task_id.rsplit('/', 1)[-1]}"
    t = now_ms()
    put(
        logs,
        stream,
        *[(t + i, f"step {i}") for i in range(6)],
        (t + 6, "fatal: could not read from https://bob:hunter2@github.com/blacktree/app.git\x1b[0m"),
    )
    task = moto_task(handle.task_id)
    task.status = task.last_status = "STOPPED"
    task.containers[0].exitCode = 10
    task.stop_code = "EssentialContainerExited"
    task.stopped_reason = "Essential container in task exited"
    before = calls_counted("GetLogEvents")

    [state] = launcher.describe([handle])

    assert state.phase == "stopped" and state.exit_code == 10
    assert state.reason is not None
    assert state.reason.startswith(
        f"EssentialContainerExited: Essential container in task exited; log {GROUP} {stream}; "
        "last lines: step 2 | step 3 | step 4 | step 5 | fatal: could not read from https://"
    )
    assert "hunter2" not in state.reason, "redacted"
    assert "\x1b" not in state.reason and "\\x1b[0m" in state.reason, "control characters shown escaped"
    assert "step 1" not in state.reason

    [again] = launcher.describe([handle])
    assert again.reason == state.reason
    assert calls_counted("GetLogEvents") - before == 1, "one GetLogEvents per failed task"


def test_a_failed_task_without_awslogs_keeps_its_plain_reason(ecs_world: EcsWorld, logs: Any) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE", logs_client=logs)
    handle = launcher.launch(request_for())
    task = moto_task(handle.task_id)
    task.status = task.last_status = "STOPPED"
    task.containers[0].exitCode = 3
    task.stop_code = "EssentialContainerExited"
    before = calls_counted("GetLogEvents")

    [state] = launcher.describe([handle])

    assert (state.phase, state.exit_code, state.reason) == ("stopped", 3, "EssentialContainerExited")
    assert calls_counted("GetLogEvents") == before
