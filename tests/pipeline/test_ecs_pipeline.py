"""The ECS path through the whole pipeline: real RabbitMQ and Redis, the real EcsLauncher against moto.

moto runs in-process (``mock_aws``, the launch tests' ``ecs_world``): it patches botocore for every
thread, so the Dispatcher's launch threads and the TimeoutMonitor's poller reach it like they would
reach ECS. What the pipeline sends is captured with botocore hooks on ``EcsLauncher.client``; ECS's
part in a task's life (the worker exits, the task fails to start) is played by setting moto's task
object, the way the launch tests do. moto ignores ``clientToken``, so the duplicate-launch tests check
the orchestrator's own guard: a duplicate of an attempt whose task exists is adopted; one that arrives
while the attempt's RunTask is still in flight waits in the delay queue and adopts the task then.
The last two tests guard against two bugs these tests found: a turned-away redelivery freeing the
slot of the launch still in flight, and a late same-attempt duplicate being launched again after the
attempt's task had ended.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import msgspec
import pika
import pytest
import redis
from launch import conftest as launch_fixtures
from launch.conftest import CLUSTER, CONTAINER, REGION, STARTED_BY, EcsWorld
from launch.helpers import register_awslogs_definition
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ecs.models import ecs_backends
from support import unique, wait_until, with_overrides

from orchestrator.config import Config, load_config
from orchestrator.launch.base import client_token
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.messages import JOB_DECODER, BuildJob, StatusEvent, encode
from orchestrator.retry import REASON_HEADER

from .harness import (
    EventCollector,
    close_connections_named,
    drain_queue,
    own_connections,
    publish,
    queue_depth,
    running_pipeline,
    stop_job,
)

pytestmark = pytest.mark.services

# The launch tests' moto world (VPC with DNS hostnames, subnet, security group, cluster, a Fargate and
# an EC2 task definition, a registered container instance), shared rather than built a second way.
aws_credentials = launch_fixtures.aws_credentials
ecs_world = launch_fixtures.ecs_world

#: The job of examples/build.json (each test gives it its own deploymentId).
REPOSITORY = "https://github.com/blacktree-dev/sample-app.git"
#: The worker's environment for :func:`build_job`'s job, attempt 1, except DEPLOYMENT_ID.
EXPECTED_ENVIRONMENT = {
    "JOB_TYPE": "build",
    "ATTEMPT": "1",
    "REPOSITORY": REPOSITORY,
    "BRANCH": "main",
    "DOCKERFILE_PATH": "Dockerfile",
    "COMPOSE_FILE_PATH": "docker-compose.yml",
    "CONTEXT_DIR": ".",
    "PORT_NUMBER": "3000",
    "AUTO_DEPLOY": "false",
}
#: What ECS says about a task whose essential container exited.
ESSENTIAL_EXITED = ("EssentialContainerExited", "Essential container in task exited")
#: Slack on the deadline tags, which the Dispatcher computes from its own clock at launch time.
DEADLINE_SLACK_SECONDS = 30
#: How long a held ECS call waits for the other side of a race before it goes on regardless.
HOLD_SECONDS = 10.0
#: A duplicate-launch check has listed our tasks (the guard's find() by tags), and ECS has answered.
LISTED = "after-call.ecs.ListTasks"
#: A delay tier long enough for a test to see a job waiting in it.
WATCHED_TIER_SECONDS = 3
EC2_PLACEMENT_CONSTRAINTS = "distinctInstance,memberOf:attribute:ecs.instance-type =~ t2.*"
EC2_PLACEMENT_STRATEGY = "spread:attribute:ecs.availability-zone,binpack:memory"


# --- jobs, moto and captured calls --------------------------------------------------------------------


def build_job(deployment_id: str) -> bytes:
    """The body of examples/build.json with ``deployment_id``."""
    return encode(
        BuildJob(
            deployment_id=deployment_id,
            repository=REPOSITORY,
            branch="main",
            docker_file_path="Dockerfile",
            compose_file_path="docker-compose.yml",
            context_dir=".",
            created_at="2026-01-15T10:30:00Z",
            port_number=3000,
            auto_deploy=False,
        )
    )


def moto_tasks() -> dict[str, Any]:
    """moto's tasks of the test cluster, by ARN."""
    return dict(ecs_backends[DEFAULT_ACCOUNT_ID][REGION].tasks.get(CLUSTER, {}))


def end_task(arn: str, exit_code: int | None, stop_code: str, reason: str) -> None:
    """Play ECS: the task is STOPPED with ``exit_code`` on its (only, essential) container.

    The status is set last, so a poll that sees STOPPED sees the exit code and reason too.
    """
    task = moto_tasks()[arn]
    task.containers[0].exitCode = exit_code
    task.stop_code = stop_code
    task.stopped_reason = reason
    task.desired_status = "STOPPED"
    task.last_status = "STOPPED"


def task_tags(arn: str) -> dict[str, str]:
    """The tags ECS (moto) keeps on the task: what reconciliation and the duplicate guard read."""
    client = boto3.client("ecs", region_name=REGION)
    [task] = client.describe_tasks(cluster=CLUSTER, tasks=[arn], include=["TAGS"])["tasks"]
    return {t["key"]: t["value"] for t in task["tags"]}


class Captured:
    """The parameters of every ``operation`` call ``launcher`` makes from now on (any thread)."""

    def __init__(self, launcher: EcsLauncher, operation: str) -> None:
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        launcher.client.meta.events.register(f"provide-client-params.ecs.{operation}", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self._calls.append(copy.deepcopy(params))

    @property
    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._calls)


def on_launch_thread() -> bool:
    """Whether the current thread is one of a LaunchPool's (not the monitor's poller or reconciler)."""
    return threading.current_thread().name.startswith("launch-")


def hold_first_call(launcher: EcsLauncher, event_name: str, until: threading.Event) -> threading.Event:
    """Make the first call reaching ``event_name`` wait (at most :data:`HOLD_SECONDS`) for ``until``.

    Returns:
        An event set when that first call has reached the hook.
    """
    reached = threading.Event()
    taken = threading.Lock()

    def hold(**_: Any) -> None:
        if taken.acquire(blocking=False):
            reached.set()
            until.wait(HOLD_SECONDS)
        # Returning None lets the call go on (a value would replace ECS's answer).

    launcher.client.meta.events.register(event_name, hold)
    return reached


def signal_on_launch_thread(launcher: EcsLauncher, *event_names: str) -> threading.Event:
    """An event set when a launch thread of ``launcher`` reaches one of the botocore ``event_names``.

    ``after-call`` names fire once ECS (moto) has answered, so what the call saw is settled.
    """
    seen = threading.Event()

    def note(**_: Any) -> None:
        if on_launch_thread():
            seen.set()

    for event_name in event_names:
        launcher.client.meta.events.register(event_name, note)
    return seen


def assert_seq_increases(events: list[StatusEvent]) -> None:
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


def distinct_by_seq(events: list[StatusEvent]) -> list[StatusEvent]:
    """Events as a consumer keeps them: the first of each ``seq`` (re-published ones are dropped)."""
    kept: dict[int, StatusEvent] = {}
    for event in events:
        kept.setdefault(event.seq, event)
    return sorted(kept.values(), key=lambda e: e.seq)


def wait_for_statuses(events: EventCollector, deployment_id: str, *wanted: str) -> None:
    wait_until(
        lambda: all(s in events.statuses(deployment_id) for s in wanted),
        what=f"{deployment_id} to be {', '.join(wanted)}",
    )


# --- configs ----------------------------------------------------------------------------------------


def ecs_config(pipeline_config: Config, world: EcsWorld, launcher: str = "fargate", **ecs: str) -> Config:
    """``pipeline_config`` launching into ``world``: the launcher and ecs sections are parsed from
    ``ORCH_*`` variables the way an operator's are, and one attempt per job (failures are final)."""
    parsed = load_config(environ={**world.environ(**ecs), "ORCH_LAUNCHER_DEFAULT": launcher})
    config = msgspec.structs.replace(pipeline_config, launcher=parsed.launcher, ecs=parsed.ecs)
    return with_overrides(config, limits__max_attempts=1)


@pytest.fixture
def fargate_config(pipeline_config: Config, ecs_world: EcsWorld) -> Config:
    return ecs_config(pipeline_config, ecs_world)


@pytest.fixture
def second_instance(fargate_config: Config) -> Iterator[Config]:
    """The config of a second orchestrator instance: the same Redis keys, exchange and status queue as
    ``fargate_config``, but its own execute queue (so a test decides which instance gets a job).

    Its own queues are deleted afterwards.
    """
    base = unique("second")
    config = with_overrides(
        fargate_config,
        broker__execute_queue=f"{base}.execute",
        broker__dlq=f"{base}.dlq",
        broker__retry_queue_prefix=f"{base}.retry",
    )
    broker = config.broker
    names = [broker.execute_queue, broker.dlq, *(retry_queue(config, d) for d in config.limits.retry_delays)]
    with deleted_afterwards(config, *names):
        yield config


def retry_queue(config: Config, delay: int | None = None) -> str:
    """The delay queue of ``delay`` seconds (by default the first tier)."""
    return f"{config.broker.retry_queue_prefix}.{delay or config.limits.retry_delays[0]}s"


@contextlib.contextmanager
def deleted_afterwards(config: Config, *queues: str) -> Iterator[None]:
    """Delete ``queues`` (ones a test's own config declares, beyond its fixture's) when done."""
    try:
        yield
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
        try:
            for name in queues:
                connection.channel().queue_delete(name)
        finally:
            connection.close()


# --- Fargate: the request, the events, the end --------------------------------------------------------


@pytest.mark.parametrize(
    "capacity_provider", ["", "FARGATE:1:1,FARGATE_SPOT:3"], ids=["launch-type", "capacity"]
)
def test_a_fargate_build_is_launched_as_configured_then_runs_and_succeeds(
    pipeline_config: Config, ecs_world: EcsWorld, capacity_provider: str
) -> None:
    # Given the real Fargate launcher, its RunTask requests captured
    config = ecs_config(
        pipeline_config, ecs_world, capacity_provider=capacity_provider, assign_public_ip="true"
    )
    launcher = EcsLauncher(config, "FARGATE")
    run_task = Captured(launcher, "RunTask")
    with running_pipeline(config, launcher), EventCollector(config) as events:
        # When a build job arrives
        published_at = time.time()
        publish(config, build_job("ecs-ok"))
        wait_for_statuses(events, "ecs-ok", "dispatched", "running")

        # Then one task runs in ECS, launched with the job and the config in its request
        [arn] = moto_tasks()
        dispatched = events.events("ecs-ok")[0]
        assert (dispatched.status, dispatched.task_arn, dispatched.launcher) == ("dispatched", arn, "fargate")
        assert dispatched.attempt == 1
        [params] = run_task.calls
        if capacity_provider:
            assert "launchType" not in params
            assert params["capacityProviderStrategy"] == [
                {"capacityProvider": "FARGATE", "weight": 1, "base": 1},
                {"capacityProvider": "FARGATE_SPOT", "weight": 3},
            ]
        else:
            assert params["launchType"] == "FARGATE"
            assert "capacityProviderStrategy" not in params
        assert params["cluster"] == CLUSTER
        assert params["taskDefinition"] == ecs_world.fargate_task_definition
        assert params["networkConfiguration"] == {
            "awsvpcConfiguration": {
                "subnets": [ecs_world.subnet],
                "securityGroups": [ecs_world.security_group],
                "assignPublicIp": "ENABLED",
            }
        }
        [override] = params["overrides"]["containerOverrides"]
        assert override["name"] == CONTAINER
        assert {e["name"]: e["value"] for e in override["environment"]} == {
            "DEPLOYMENT_ID": "ecs-ok",
            **EXPECTED_ENVIRONMENT,
        }
        assert params["clientToken"] == client_token("ecs-ok", 1)
        assert params["startedBy"] == STARTED_BY
        tags = {t["key"]: t["value"] for t in params["tags"]}
        assert set(tags) == {
            "deploymentId",
            "attempt",
            "type",
            "instance",
            "launcher",
            "startDeadline",
            "deadline",
            "jobDigest",
        }
        assert (tags["deploymentId"], tags["attempt"], tags["type"], tags["launcher"]) == (
            "ecs-ok",
            "1",
            "build",
            "fargate",
        )
        assert re.fullmatch(rf"[A-Za-z0-9_.:/=+@-]+-{os.getpid()}-[0-9a-f]{{6}}", tags["instance"]), tags
        start_timeout = config.limits.start_timeout_seconds
        max_runtime = config.limits.max_runtime_seconds
        assert max_runtime is not None
        assert float(tags["startDeadline"]) == pytest.approx(
            published_at + start_timeout, abs=DEADLINE_SLACK_SECONDS
        )
        assert float(tags["deadline"]) == pytest.approx(
            published_at + max_runtime, abs=DEADLINE_SLACK_SECONDS
        )
        assert task_tags(arn) == tags, "ECS keeps the tags that recovery reads"
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="the delivery's ack")

        # When the worker exits 0
        end_task(arn, 0, *ESSENTIAL_EXITED)

        # Then the job succeeds, on both sinks, in order
        final = events.wait_terminal("ecs-ok")
        assert (final.status, final.exit_code, final.task_arn, final.launcher) == (
            "succeeded",
            0,
            arn,
            "fargate",
        )
        events.wait_terminal("ecs-ok", source="redis")
        for source in ("amqp", "redis"):
            assert events.statuses("ecs-ok", source) == ["dispatched", "running", "succeeded"]
            assert_seq_increases(events.events("ecs-ok", source))
    assert launcher.api_calls["RunTask"] == 1
    assert launcher.api_calls["DescribeTasks"] >= 2, "the task was followed by DescribeTasks polls"


@pytest.mark.parametrize(
    "exit_code, stop_code, stopped_reason, expected_reason, ran",
    [
        (3, *ESSENTIAL_EXITED, "EssentialContainerExited: Essential container in task exited", True),
        (
            None,
            "TaskFailedToStart",
            "CannotPullContainerError: pull access denied for blacktree/worker",
            "TaskFailedToStart: CannotPullContainerError: pull access denied for blacktree/worker",
            False,
        ),
    ],
    ids=["non-zero-exit", "failed-to-start"],
)
def test_a_failed_fargate_task_fails_the_job_with_exit_code_and_reason(
    fargate_config: Config,
    exit_code: int | None,
    stop_code: str,
    stopped_reason: str,
    expected_reason: str,
    ran: bool,
) -> None:
    config = fargate_config
    launcher = EcsLauncher(config, "FARGATE")
    if not ran:
        # moto starts tasks RUNNING; before the launch returns, put this one where ECS starts it.
        def provisioning(parsed: dict[str, Any], **_: Any) -> None:
            moto_tasks()[parsed["tasks"][0]["taskArn"]].last_status = "PROVISIONING"

        launcher.client.meta.events.register("after-call.ecs.RunTask", provisioning)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("ecs-bad"))
        wait_for_statuses(events, "ecs-bad", *(["dispatched", "running"] if ran else ["dispatched"]))
        [arn] = moto_tasks()

        end_task(arn, exit_code, stop_code, stopped_reason)

        final = events.wait_terminal("ecs-bad")
        assert (final.status, final.exit_code, final.task_arn) == ("failed", exit_code, arn)
        assert final.reason == expected_reason
        expected = ["dispatched", "running", "failed"] if ran else ["dispatched", "failed"]
        assert events.statuses("ecs-bad") == expected
        assert_seq_increases(events.events("ecs-bad"))
        wait_until(lambda: queue_depth(config, config.broker.dlq) == 1, what="the job in the DLQ")
    [(body, headers)] = drain_queue(config, config.broker.dlq)
    assert JOB_DECODER.decode(body).deployment_id == "ecs-bad"
    assert headers[REASON_HEADER] == expected_reason
    assert launcher.api_calls["RunTask"] == 1


# --- EC2 ----------------------------------------------------------------------------------------------


def test_an_ec2_build_is_placed_on_the_container_instance_as_configured_and_succeeds(
    pipeline_config: Config, ecs_world: EcsWorld
) -> None:
    config = ecs_config(
        pipeline_config,
        ecs_world,
        launcher="ec2",
        task_definition=ecs_world.ec2_task_definition,
        placement_constraints=EC2_PLACEMENT_CONSTRAINTS,
        placement_strategy=EC2_PLACEMENT_STRATEGY,
    )
    launcher = EcsLauncher(config, "EC2")
    run_task = Captured(launcher, "RunTask")
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("ec2-ok"))
        wait_for_statuses(events, "ec2-ok", "dispatched", "running")

        [arn] = moto_tasks()
        assert moto_tasks()[arn].container_instance_arn == ecs_world.container_instance
        dispatched = events.events("ec2-ok")[0]
        assert (dispatched.task_arn, dispatched.launcher) == (arn, "ec2")
        [params] = run_task.calls
        assert params["launchType"] == "EC2"
        assert params["taskDefinition"] == ecs_world.ec2_task_definition
        assert "networkConfiguration" not in params, "bridge networking: no awsvpc unless ecs.ec2_awsvpc"
        assert params["placementConstraints"] == [
            {"type": "distinctInstance"},
            {"type": "memberOf", "expression": "attribute:ecs.instance-type =~ t2.*"},
        ]
        assert params["placementStrategy"] == [
            {"type": "spread", "field": "attribute:ecs.availability-zone"},
            {"type": "binpack", "field": "memory"},
        ]
        assert params["clientToken"] == client_token("ec2-ok", 1)
        assert params["startedBy"] == STARTED_BY
        assert {"key": "launcher", "value": "ec2"} in params["tags"]
        [override] = params["overrides"]["containerOverrides"]
        assert {e["name"]: e["value"] for e in override["environment"]}["DEPLOYMENT_ID"] == "ec2-ok"

        end_task(arn, 0, *ESSENTIAL_EXITED)

        final = events.wait_terminal("ec2-ok")
        assert (final.status, final.exit_code, final.launcher) == ("succeeded", 0, "ec2")
        assert events.statuses("ec2-ok") == ["dispatched", "running", "succeeded"]
        assert_seq_increases(events.events("ec2-ok"))


# --- stop ---------------------------------------------------------------------------------------------


def test_a_stop_job_stops_the_running_ecs_task(fargate_config: Config) -> None:
    config = fargate_config
    launcher = EcsLauncher(config, "FARGATE")
    stop_task = Captured(launcher, "StopTask")
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("ecs-stop"))
        wait_for_statuses(events, "ecs-stop", "dispatched", "running")
        [arn] = moto_tasks()

        publish(config, stop_job("ecs-stop"))

        final = events.wait_terminal("ecs-stop")
        assert (final.status, final.type, final.task_arn) == ("stopped", "build", arn)
        assert final.reason == "stopped on request"
        assert events.statuses("ecs-stop") == ["dispatched", "running", "stopped"]
        assert_seq_increases(events.events("ecs-stop"))
        [params] = stop_task.calls
        assert (params["cluster"], params["task"]) == (CLUSTER, arn)
        assert params["reason"] == "stopped on request"
        task = moto_tasks()[arn]
        assert (task.last_status, task.desired_status) == ("STOPPED", "STOPPED")
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="both acks")
    assert launcher.api_calls["StopTask"] == 1
    assert launcher.api_calls["RunTask"] == 1


# --- the duplicate-launch guard (moto ignores clientToken: this is ours) --------------------------------


def test_a_job_another_instance_already_launched_is_adopted_not_run_again(
    fargate_config: Config, second_instance: Config
) -> None:
    # Given two orchestrator instances sharing Redis, each with its own ECS client
    first, second = EcsLauncher(fargate_config, "FARGATE"), EcsLauncher(second_instance, "FARGATE")
    looked_up = signal_on_launch_thread(second, LISTED)
    with (
        running_pipeline(fargate_config, first),
        running_pipeline(second_instance, second),
        EventCollector(fargate_config) as events,
    ):
        publish(fargate_config, build_job("ecs-dup"))
        wait_for_statuses(events, "ecs-dup", "dispatched", "running")
        [arn] = moto_tasks()

        # When the same attempt of the job reaches the second instance (a redelivery, a double publish)
        publish(second_instance, build_job("ecs-dup"))
        wait_until(lambda: events.statuses("ecs-dup").count("dispatched") == 2, what="the second dispatch")

        # Then it adopts the task it found by its tags: one RunTask in all
        assert looked_up.is_set(), "the second instance looked for the task by its tags"
        assert (first.api_calls["RunTask"], second.api_calls["RunTask"]) == (1, 0)
        assert list(moto_tasks()) == [arn]
        assert {e.task_arn for e in events.events("ecs-dup")} == {arn}
        wait_until(
            lambda: queue_depth(second_instance, second_instance.broker.execute_queue) == 0, what="ack"
        )

        end_task(arn, 0, *ESSENTIAL_EXITED)

        assert events.wait_terminal("ecs-dup").status == "succeeded"
        kept = distinct_by_seq(events.events("ecs-dup"))
        assert [e.status for e in kept] == ["dispatched", "running", "succeeded"]


def test_a_redelivery_while_run_task_is_in_flight_waits_then_adopts_the_task(fargate_config: Config) -> None:
    # Given a RunTask held before it reaches ECS, and a delay tier long enough to watch
    config = with_overrides(fargate_config, limits__retry_delays=(WATCHED_TIER_SECONDS,))
    launcher = EcsLauncher(config, "FARGATE")
    turned_away = threading.Event()
    in_flight = hold_first_call(launcher, "before-call.ecs.RunTask", until=turned_away)
    with (
        deleted_afterwards(config, retry_queue(config)),
        running_pipeline(config, launcher),
        EventCollector(config) as events,
    ):
        publish(config, build_job("ecs-inflight"))
        assert in_flight.wait(20), "the first RunTask"

        # When the consumer's connection drops meanwhile, so the broker redelivers the job
        assert close_connections_named(own_connections("consumer")) == 1

        # Then the redelivery is not launched: it waits in the delay queue (no event, same attempt)
        wait_until(lambda: queue_depth(config, retry_queue(config)) == 1, what="the redelivery to wait")
        turned_away.set()
        # and, back from there, adopts the task that the first delivery launched
        wait_until(lambda: events.statuses("ecs-inflight").count("dispatched") == 2, what="both dispatches")
        [arn] = moto_tasks()
        assert {e.task_arn for e in events.events("ecs-inflight")} == {arn}
        assert {e.attempt for e in events.events("ecs-inflight")} == {1}
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="the acks")
        wait_for_statuses(events, "ecs-inflight", "running")
        end_task(arn, 0, *ESSENTIAL_EXITED)
        assert events.wait_terminal("ecs-inflight").status == "succeeded"
        kept = distinct_by_seq(events.events("ecs-inflight"))
        assert [e.status for e in kept] == ["dispatched", "running", "succeeded"]
    assert launcher.api_calls["RunTask"] == 1


def test_two_instances_launching_the_same_attempt_at_once_make_one_run_task(
    fargate_config: Config, second_instance: Config
) -> None:
    # Given the first instance's RunTask in flight until the second instance has looked for the task
    first, second = EcsLauncher(fargate_config, "FARGATE"), EcsLauncher(second_instance, "FARGATE")
    second_decided = signal_on_launch_thread(second, LISTED, "before-call.ecs.RunTask")
    in_flight = hold_first_call(first, "before-call.ecs.RunTask", until=second_decided)
    with (
        running_pipeline(fargate_config, first),
        running_pipeline(second_instance, second),
        EventCollector(fargate_config) as events,
    ):
        publish(fargate_config, build_job("ecs-race"))
        assert in_flight.wait(20), "the first instance's RunTask"

        # When the same attempt reaches the second instance meanwhile
        publish(second_instance, build_job("ecs-race"))

        # Then the second instance waits, and adopts the first one's task when it comes back
        wait_until(lambda: events.statuses("ecs-race").count("dispatched") == 2, what="both dispatches")
        assert second_decided.is_set(), "the second instance looked for the task before the first made it"
        assert (first.api_calls["RunTask"], second.api_calls["RunTask"]) == (1, 0)
        [arn] = moto_tasks()
        assert {e.task_arn for e in events.events("ecs-race")} == {arn}


# --- regressions found while writing these tests ----------------------------------------------------


def queue_settled(name: str) -> bool:
    """Whether ``name`` has no message, ready or delivered and unacked (asks the broker's CLI)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for line in listed.splitlines():
        fields = line.split("\t")
        if fields[0] == name:
            return fields[1:] == ["0", "0"]
    return False


def turn_away_a_redelivery(config: Config, launcher: EcsLauncher, deployment_id: str) -> threading.Event:
    """Publish ``deployment_id``'s job, hold its RunTask, drop the consumer's connection and wait until
    the redelivery was turned away to the delay queue. Returns the event that lets the RunTask go on."""
    turned_away = threading.Event()
    in_flight = hold_first_call(launcher, "before-call.ecs.RunTask", until=turned_away)
    publish(config, build_job(deployment_id))
    assert in_flight.wait(20), "the first RunTask"
    assert close_connections_named(own_connections("consumer")) == 1
    wait_until(lambda: queue_depth(config, retry_queue(config)) == 1, what="the redelivery to wait")
    return turned_away


def test_a_turned_away_redelivery_keeps_the_slot_of_the_launch_in_flight(fargate_config: Config) -> None:
    # Given one slot, held by a job whose RunTask is in flight while its redelivery was turned away
    config = with_overrides(
        fargate_config, limits__max_concurrent=1, limits__retry_delays=(WATCHED_TIER_SECONDS,)
    )
    launcher = EcsLauncher(config, "FARGATE")
    with (
        deleted_afterwards(config, retry_queue(config)),
        running_pipeline(config, launcher),
        EventCollector(config) as events,
    ):
        go_on = turn_away_a_redelivery(config, launcher, "slot-a")
        try:
            # When another job arrives
            publish(config, build_job("slot-b"))
            # Then it waits for the slot
            wait_until(lambda: bool(events.statuses("slot-b")), what="slot-b's first event")
            assert events.statuses("slot-b")[0] == "queued", events.statuses("slot-b")
        finally:
            go_on.set()


def test_a_same_attempt_retry_back_after_the_task_ended_is_not_launched_again(fargate_config: Config) -> None:
    # Given a redelivery turned away while the RunTask was in flight, and the task then ending at once
    config = with_overrides(fargate_config, limits__retry_delays=(WATCHED_TIER_SECONDS,))
    launcher = EcsLauncher(config, "FARGATE")
    with (
        deleted_afterwards(config, retry_queue(config)),
        running_pipeline(config, launcher),
        EventCollector(config) as events,
    ):
        turn_away_a_redelivery(config, launcher, "ended-a").set()
        wait_for_statuses(events, "ended-a", "running")
        [arn] = moto_tasks()
        end_task(arn, 0, *ESSENTIAL_EXITED)
        assert events.wait_terminal("ended-a").status == "succeeded"
        assert queue_depth(config, retry_queue(config)) == 1, "the redelivery still waits (premise)"

        # When the turned-away delivery comes back from the delay queue and is dealt with
        wait_until(
            lambda: all(queue_settled(q) for q in (retry_queue(config), config.broker.execute_queue)),
            what="the retried delivery's ack",
        )

        # Then nothing was launched again
        assert (launcher.api_calls["RunTask"], len(moto_tasks())) == (1, 1)
        assert events.statuses("ended-a")[-1] == "succeeded"


# --- build logs from CloudWatch -------------------------------------------------------------------


def test_an_ecs_task_s_log_lines_reach_the_job_s_stream_and_its_events_name_its_log_stream(
    pipeline_config: Config, ecs_world: EcsWorld
) -> None:
    # Given a worker task definition that logs with awslogs (group, stream prefix)
    ecs = boto3.client("ecs", region_name=REGION)
    logs = boto3.client("logs", region_name=REGION)
    group = unique("/blacktree/worker")
    definition = register_awslogs_definition(ecs, unique("worker-logs"), CONTAINER, group, "build")
    config = ecs_config(pipeline_config, ecs_world, task_definition=definition)
    launcher = EcsLauncher(config, "FARGATE")
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("ecs-logs"))
        wait_for_statuses(events, "ecs-logs", "dispatched", "running")
        [arn] = moto_tasks()
        stream = f"build/{CONTAINER}/{arn.rsplit('/', 1)[1]}"
        # When the worker's output reaches its CloudWatch stream, and the task ends
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        now_ms = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": now_ms + i, "message": f"step {i}"} for i in range(3)],
        )
        key = f"{config.redis.key_prefix}:logs:ecs-logs"
        client = redis.Redis.from_url(config.redis.url)
        try:
            wait_until(lambda: client.xlen(key) >= 3, timeout=30, what="the lines in the job's stream")
            end_task(arn, 0, "EssentialContainerExited", "done")
            final = events.wait_terminal("ecs-logs", timeout=30)
            lines = [
                msgspec.json.decode(fields[b"l"])["line"]
                for _, fields in client.xrange(key)
                if b"l" in fields
            ]
        finally:
            client.close()
    # Then the lines are in the job's stream, in order, and the events name where the log is
    assert lines == ["step 0", "step 1", "step 2"]
    assert final.status == "succeeded" and final.logs == key
    assert (final.log_group, final.log_stream) == (group, stream)
