"""The ECS launcher against moto: the RunTask request, the duplicate guard, state mapping, batching."""

from __future__ import annotations

import copy
import datetime as dt
import time
from typing import Any

import boto3
import msgspec
import pytest
from botocore.config import Config as BotoConfig
from botocore.stub import Stubber
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ecs.models import ecs_backends
from moto.moto_api import state_manager

from orchestrator import metrics
from orchestrator.errors import CapacityError, ConfigError, PermanentLaunchError, ThrottledError
from orchestrator.launch.base import LaunchRequest, TaskHandle, client_token, job_digest, make_launcher
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.launch.errors import AmbiguousLaunchError
from orchestrator.messages import BuildJob, DeployJob, SourceJob

from .conftest import CLUSTER, CONTAINER, REGION, STARTED_BY, EcsWorld
from .helpers import config_from

NOW = 1_800_000_000.0


def request_for(
    deployment_id: str = "dep-1", attempt: int = 1, job: SourceJob | None = None, instance: str = "orch-a"
) -> LaunchRequest:
    job = job or BuildJob(
        deployment_id=deployment_id,
        repository="https://github.com/blacktree/app.git",
        branch="release/1.2",
        docker_file_path="docker/Dockerfile",
        context_dir="services/api",
        port_number=8080,
    )
    return LaunchRequest(
        job=job,
        attempt=attempt,
        instance_id=instance,
        start_deadline=NOW + 600,
        deadline=None if job.runs_until_stopped else NOW + 7200,
    )


def capture(launcher: EcsLauncher, operation: str) -> list[dict[str, Any]]:
    """Every parameter dict the launcher's client sends to ``operation`` from now on."""
    seen: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(copy.deepcopy(params))

    launcher.client.meta.events.register(f"provide-client-params.ecs.{operation}", record)
    return seen


def moto_task(arn: str) -> Any:
    """moto's model of a task, to play ECS's part in its lifecycle (moto starts tasks at RUNNING)."""
    return ecs_backends[DEFAULT_ACCOUNT_ID][REGION].tasks[CLUSTER][arn]


def tags(task_arn: str) -> dict[str, str]:
    client = boto3.client("ecs", region_name=REGION)
    task = client.describe_tasks(cluster=CLUSTER, tasks=[task_arn], include=["TAGS"])["tasks"][0]
    return {t["key"]: t["value"] for t in task["tags"]}


# --- the RunTask request ----------------------------------------------------------------------------


def test_fargate_run_task_carries_launch_type_network_overrides_token_and_tags(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    sent = capture(launcher, "RunTask")

    request = request_for()
    handle = launcher.launch(request)

    [params] = sent
    assert params["launchType"] == "FARGATE"
    assert "capacityProviderStrategy" not in params
    assert params["cluster"] == CLUSTER
    assert params["taskDefinition"] == ecs_world.fargate_task_definition
    assert params["count"] == 1
    assert params["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": [ecs_world.subnet],
            "securityGroups": [ecs_world.security_group],
            "assignPublicIp": "DISABLED",
        }
    }
    [override] = params["overrides"]["containerOverrides"]
    assert override["name"] == CONTAINER
    assert {e["name"]: e["value"] for e in override["environment"]} == {
        "DEPLOYMENT_ID": "dep-1",
        "JOB_TYPE": "build",
        "ATTEMPT": "1",
        "REPOSITORY": "https://github.com/blacktree/app.git",
        "BRANCH": "release/1.2",
        "DOCKERFILE_PATH": "docker/Dockerfile",
        "CONTEXT_DIR": "services/api",
        "PORT_NUMBER": "8080",
        "AUTO_DEPLOY": "false",
    }
    assert params["clientToken"] == client_token("dep-1", 1)
    assert params["startedBy"] == STARTED_BY
    assert {t["key"]: t["value"] for t in params["tags"]} == {
        "deploymentId": "dep-1",
        "attempt": "1",
        "type": "build",
        "startDeadline": f"{NOW + 600:.0f}",
        "deadline": f"{NOW + 7200:.0f}",
        "instance": "orch-a",
        "launcher": "fargate",
        "jobDigest": job_digest(request.job),
    }
    assert "placementConstraints" not in params
    assert handle.task_id.startswith("arn:aws:ecs:")
    assert (handle.launcher, handle.deployment_id, handle.attempt, handle.cluster) == (
        "fargate",
        "dep-1",
        1,
        CLUSTER,
    )
    assert tags(handle.task_id)["deploymentId"] == "dep-1"


def test_fargate_capacity_provider_strategy_replaces_launch_type(ecs_world: EcsWorld) -> None:
    config = config_from(
        ecs_world.environ(capacity_provider="FARGATE:1:1,FARGATE_SPOT:3", assign_public_ip="true")
    )
    launcher = EcsLauncher(config, "FARGATE")
    sent = capture(launcher, "RunTask")

    launcher.launch(request_for())

    [params] = sent
    assert "launchType" not in params
    assert params["capacityProviderStrategy"] == [
        {"capacityProvider": "FARGATE", "weight": 1, "base": 1},
        {"capacityProvider": "FARGATE_SPOT", "weight": 3},
    ]
    assert params["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "ENABLED"


def test_ec2_run_task_carries_placement_and_lands_on_the_container_instance(ecs_world: EcsWorld) -> None:
    config = config_from(
        ecs_world.environ(
            task_definition=ecs_world.ec2_task_definition,
            placement_constraints="distinctInstance,memberOf:attribute:ecs.instance-type =~ t2.*",
            placement_strategy="spread:attribute:ecs.availability-zone,binpack:memory",
        )
    )
    launcher = make_launcher("ec2", config)
    assert isinstance(launcher, EcsLauncher)
    sent = capture(launcher, "RunTask")

    handle = launcher.launch(request_for())

    [params] = sent
    assert params["launchType"] == "EC2"
    assert "networkConfiguration" not in params  # bridge networking unless ecs.ec2_awsvpc
    assert params["placementConstraints"] == [
        {"type": "distinctInstance"},
        {"type": "memberOf", "expression": "attribute:ecs.instance-type =~ t2.*"},
    ]
    assert params["placementStrategy"] == [
        {"type": "spread", "field": "attribute:ecs.availability-zone"},
        {"type": "binpack", "field": "memory"},
    ]
    assert params["clientToken"] == client_token("dep-1", 1)
    described = boto3.client("ecs", region_name=REGION).describe_tasks(
        cluster=CLUSTER, tasks=[handle.task_id]
    )
    assert described["tasks"][0]["containerInstanceArn"] == ecs_world.container_instance
    assert handle.launcher == "ec2"


def test_each_launcher_takes_its_own_capacity_providers(ecs_world: EcsWorld) -> None:
    config = config_from(
        ecs_world.environ(capacity_provider="FARGATE_SPOT:2,asg-builders:1:2", ec2_awsvpc="true")
    )

    fargate = EcsLauncher(config, "FARGATE").run_task_params(request_for())
    on_ec2 = EcsLauncher(config, "EC2").run_task_params(request_for())

    assert fargate["capacityProviderStrategy"] == [{"capacityProvider": "FARGATE_SPOT", "weight": 2}]
    assert on_ec2["capacityProviderStrategy"] == [
        {"capacityProvider": "asg-builders", "weight": 1, "base": 2}
    ]
    assert "launchType" not in on_ec2
    assert on_ec2["networkConfiguration"]["awsvpcConfiguration"] == {
        "subnets": [ecs_world.subnet],
        "securityGroups": [ecs_world.security_group],
    }


def test_job_type_overrides_pick_task_definition_and_container(ecs_world: EcsWorld) -> None:
    environ = ecs_world.environ()
    environ["ORCH_TYPE_DEPLOY_TASK_DEFINITION"] = "deployer:7"
    environ["ORCH_TYPE_DEPLOY_CONTAINER_NAME"] = "deployer"
    launcher = EcsLauncher(config_from(environ), "FARGATE")
    deploy = DeployJob(
        deployment_id="dep-9", repository="https://github.com/blacktree/app.git", auto_deploy=True
    )

    params = launcher.run_task_params(request_for(job=deploy))

    assert params["taskDefinition"] == "deployer:7"
    [override] = params["overrides"]["containerOverrides"]
    assert override["name"] == "deployer"
    assert {"key": "type", "value": "deploy"} in params["tags"]
    assert not any(t["key"] == "deadline" for t in params["tags"])  # deploy: no maximum runtime
    assert launcher.run_task_params(request_for())["taskDefinition"] == ecs_world.fargate_task_definition


def test_a_launcher_made_for_a_job_type_defaults_to_its_task_definition(ecs_world: EcsWorld) -> None:
    environ = ecs_world.environ()
    environ["ORCH_TYPE_TEST_TASK_DEFINITION"] = "tester:3"
    environ["ORCH_TYPE_DEPLOY_TASK_DEFINITION"] = "deployer:7"
    launcher = make_launcher("fargate", config_from(environ), job_type="test")
    assert isinstance(launcher, EcsLauncher)
    deploy = DeployJob(deployment_id="dep-9", repository="https://github.com/blacktree/app.git")

    assert launcher.run_task_params(request_for())["taskDefinition"] == "tester:3"
    assert launcher.run_task_params(request_for(job=deploy))["taskDefinition"] == "deployer:7"


def test_no_task_definition_is_a_permanent_error(ecs_world: EcsWorld) -> None:
    environ = ecs_world.environ()
    del environ["ORCH_ECS_TASK_DEFINITION"]
    environ["ORCH_LAUNCHER_DEFAULT"] = "local"
    launcher = EcsLauncher(config_from(environ), "FARGATE")

    with pytest.raises(PermanentLaunchError, match=r"ecs\.task_definition"):
        launcher.launch(request_for())
    assert launcher.api_calls["RunTask"] == 0


def test_unparseable_placement_and_capacity_settings_are_config_errors(ecs_world: EcsWorld) -> None:
    config = config_from(
        ecs_world.environ(
            capacity_provider="FARGATE:x", placement_constraints="sameHost", placement_strategy="spread"
        )
    )

    with pytest.raises(ConfigError) as caught:
        EcsLauncher(config, "EC2")

    keys = [problem.split(":")[0] for problem in caught.value.problems]
    assert keys == ["ecs.capacity_provider", "ecs.placement_constraints", "ecs.placement_strategy"]


def test_unknown_launcher_name_is_a_config_error(ecs_world: EcsWorld) -> None:
    with pytest.raises(ConfigError, match="kubernetes"):
        make_launcher("kubernetes", config_from(ecs_world.environ()))


def test_client_token_is_deterministic_short_and_distinct() -> None:
    token = client_token("dep-1", 1)
    assert token == client_token("dep-1", 1)
    assert token != client_token("dep-1", 2)
    assert token != client_token("dep-2", 1)
    long_token = client_token("x" * 500, 12345)
    assert len(long_token) <= 64
    assert long_token.isascii()
    assert all(c.isalnum() or c == "-" for c in long_token)


# --- launch failures --------------------------------------------------------------------------------


def test_run_task_failures_in_a_200_response_are_classified(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    with Stubber(launcher.client) as stub:
        stub.add_response(
            "run_task", {"tasks": [], "failures": [{"arn": "arn:aws:ecs:ci/1", "reason": "RESOURCE:MEMORY"}]}
        )
        stub.add_response(
            "run_task", {"tasks": [], "failures": [{"reason": "Capacity is unavailable at this time."}]}
        )
        stub.add_response(
            "run_task", {"tasks": [], "failures": [{"reason": "ATTRIBUTE", "detail": "no match"}]}
        )

        with pytest.raises(CapacityError, match="RESOURCE:MEMORY"):
            launcher.launch(request_for())
        with pytest.raises(CapacityError, match="Capacity is unavailable"):
            launcher.launch(request_for())
        with pytest.raises(PermanentLaunchError, match="ATTRIBUTE"):
            launcher.launch(request_for())


def test_run_task_api_errors_are_classified(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    with Stubber(launcher.client) as stub:
        stub.add_client_error("run_task", "ThrottlingException", "Rate exceeded", 400)
        stub.add_client_error("run_task", "ClientException", "TaskDefinition is inactive", 400)

        with pytest.raises(ThrottledError):
            launcher.launch(request_for())
        with pytest.raises(PermanentLaunchError, match="TaskDefinition is inactive"):
            launcher.launch(request_for())
    assert launcher.api_calls["RunTask"] == 2


def test_ec2_without_room_is_a_capacity_error(ecs_world: EcsWorld) -> None:
    client = boto3.client("ecs", region_name=REGION)
    too_big = client.register_task_definition(
        family="too-big",
        networkMode="bridge",
        containerDefinitions=[{"name": CONTAINER, "image": "x", "memory": 100_000, "essential": True}],
    )["taskDefinition"]["taskDefinitionArn"]
    launcher = EcsLauncher(config_from(ecs_world.environ(task_definition=too_big)), "EC2")

    with pytest.raises(CapacityError):
        launcher.launch(request_for())


def test_unreachable_endpoint_is_an_ambiguous_retryable_error(aws_credentials: None) -> None:
    config = config_from({"ORCH_ECS_TASK_DEFINITION": "worker:1", "ORCH_ECS_SUBNETS": "subnet-1"})
    client = boto3.session.Session().client(
        "ecs",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",  # discard port: nothing listens
        config=BotoConfig(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    launcher = EcsLauncher(config, "FARGATE", client=client)

    with pytest.raises(AmbiguousLaunchError) as caught:
        launcher.launch(request_for())

    assert caught.value.retryable
    assert not caught.value.counts_as_attempt  # retry the same attempt: same clientToken


def test_standard_retry_mode_region_and_endpoint_come_from_config(aws_credentials: None) -> None:
    config = config_from(
        {
            "ORCH_ECS_TASK_DEFINITION": "worker:1",
            "ORCH_ECS_SUBNETS": "subnet-1",
            "ORCH_ECS_REGION": "eu-west-1",
            "ORCH_ECS_ENDPOINT_URL": "http://127.0.0.1:5000",
        }
    )

    launcher = EcsLauncher(config, "FARGATE")

    assert launcher.client.meta.region_name == "eu-west-1"
    assert launcher.client.meta.endpoint_url == "http://127.0.0.1:5000"
    assert launcher.client.meta.config.retries["mode"] == "standard"


# --- duplicate guard, reconciliation, job rebuild ----------------------------------------------------


def test_find_returns_the_task_of_the_same_deployment_and_attempt(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    first = launcher.launch(request_for("dep-1", 1))
    launcher.launch(request_for("dep-1", 2))
    launcher.launch(request_for("dep-2", 1))

    found = launcher.find("dep-1", 1)

    assert found is not None
    assert found.task_id == first.task_id
    assert (found.deployment_id, found.attempt, found.job_type, found.instance_id) == (
        "dep-1",
        1,
        "build",
        "orch-a",
    )
    assert found.start_deadline == pytest.approx(first.start_deadline, abs=1)
    assert found.deadline == pytest.approx(NOW + 7200, abs=1)
    assert launcher.find("dep-1", 3) is None
    assert launcher.find("dep-3", 1) is None


def test_find_also_sees_stopped_tasks(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for("dep-1", 1))
    launcher.stop(handle, "test")

    found = launcher.find("dep-1", 1)

    assert found is not None and found.task_id == handle.task_id


def test_list_owned_returns_this_launchers_tagged_tasks(ecs_world: EcsWorld) -> None:
    fargate = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    on_ec2 = EcsLauncher(config_from(ecs_world.environ(task_definition=ecs_world.ec2_task_definition)), "EC2")
    a = fargate.launch(request_for("dep-a", 1, instance="orch-a"))
    b = fargate.launch(request_for("dep-b", 2, instance="orch-b"))
    c = on_ec2.launch(request_for("dep-c", 1))
    # A task with our startedBy but none of our tags: not ours to adopt.
    boto3.client("ecs", region_name=REGION).run_task(
        cluster=CLUSTER, taskDefinition=ecs_world.ec2_task_definition, launchType="EC2", startedBy=STARTED_BY
    )

    owned = {h.task_id: h for h in fargate.list_owned()}

    assert set(owned) == {a.task_id, b.task_id}
    assert owned[b.task_id].instance_id == "orch-b"
    assert owned[b.task_id].attempt == 2
    assert owned[b.task_id].launcher == "fargate"
    assert [h.task_id for h in on_ec2.list_owned()] == [c.task_id]


def test_list_owned_follows_list_tasks_pages(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    arns = [f"arn:aws:ecs:{REGION}:123456789012:task/{CLUSTER}/t{i}" for i in range(3)]

    def tagged(arn: str, deployment: str) -> dict[str, Any]:
        return {
            "taskArn": arn,
            "clusterArn": f"arn:aws:ecs:{REGION}:123456789012:cluster/{CLUSTER}",
            "lastStatus": "RUNNING",
            "tags": [
                {"key": "deploymentId", "value": deployment},
                {"key": "attempt", "value": "1"},
                {"key": "launcher", "value": "fargate"},
            ],
        }

    with Stubber(launcher.client) as stub:
        stub.add_response("list_tasks", {"taskArns": arns[:2], "nextToken": "page-2"})
        stub.add_response("list_tasks", {"taskArns": arns[2:]})
        stub.add_response("list_tasks", {"taskArns": []})  # desiredStatus STOPPED
        stub.add_response(
            "describe_tasks",
            {"tasks": [tagged(arn, f"dep-{i}") for i, arn in enumerate(arns)], "failures": []},
        )

        owned = launcher.list_owned()

    assert [h.deployment_id for h in owned] == ["dep-0", "dep-1", "dep-2"]
    assert launcher.api_calls["ListTasks"] == 3
    assert owned[0].cluster == CLUSTER


def test_job_of_rebuilds_the_job_from_the_environment_overrides(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    request = request_for("dep-7", 2)
    handle = launcher.launch(request)

    assert launcher.job_of(handle) == request.job


# --- describe -----------------------------------------------------------------------------------------


def test_describe_follows_a_task_from_provisioning_to_stopped(ecs_world: EcsWorld) -> None:
    state_manager.set_transition("ecs::task", {"progression": "manual", "times": 1})
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for())
    task = moto_task(handle.task_id)
    # moto starts tasks at RUNNING; give it ECS's start states (one step per DescribeTasks).
    task._transitions = [
        ("PROVISIONING", "PENDING"),
        ("PENDING", "ACTIVATING"),
        ("ACTIVATING", "RUNNING"),
        ("RUNNING", "DEACTIVATING"),
        ("DEACTIVATING", "STOPPING"),
        ("STOPPING", "DEPROVISIONING"),
        ("DEPROVISIONING", "STOPPED"),
    ]
    task.status = "PROVISIONING"

    def phase() -> tuple[str, int | None, str | None]:
        [state] = launcher.describe([handle])
        assert state.handle == handle
        return state.phase, state.exit_code, state.reason

    assert phase() == ("pending", None, None)  # PENDING
    assert phase() == ("pending", None, None)  # ACTIVATING
    assert phase() == ("running", None, None)  # RUNNING
    task.started_at = dt.datetime.now(dt.UTC)  # what ECS records when a task reaches RUNNING
    assert phase() == ("running", None, None)  # DEACTIVATING: it did run
    assert phase() == ("running", None, None)  # STOPPING
    task.containers[0].exitCode = 3
    task.stop_code = "EssentialContainerExited"
    task.stopped_reason = "Essential container in task exited"
    assert phase() == ("running", None, None)  # DEPROVISIONING: no exit code until STOPPED
    assert phase() == ("stopped", 3, "EssentialContainerExited: Essential container in task exited")
    assert launcher.api_calls["DescribeTasks"] == 7


def test_describe_reports_a_task_that_failed_to_start(ecs_world: EcsWorld) -> None:
    state_manager.set_transition("ecs::task", {"progression": "manual", "times": 1})
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for())
    task = moto_task(handle.task_id)
    task._transitions = [("PROVISIONING", "DEPROVISIONING"), ("DEPROVISIONING", "STOPPED")]
    task.status = "PROVISIONING"
    task.stop_code = "TaskFailedToStart"
    task.stopped_reason = "CannotPullContainerError: pull access denied for blacktree/worker"
    task.containers[0].exitCode = None

    [deprovisioning] = launcher.describe([handle])
    [stopped] = launcher.describe([handle])

    assert deprovisioning.phase == "pending"  # never started, so not "running"
    assert stopped.phase == "stopped"
    assert stopped.exit_code is None
    assert (
        stopped.reason
        == "TaskFailedToStart: CannotPullContainerError: pull access denied for blacktree/worker"
    )


def test_describe_reports_unknown_arns_as_missing(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    real = launcher.launch(request_for())
    ghost = TaskHandle(
        **{**_fields(real), "task_id": f"arn:aws:ecs:{REGION}:{DEFAULT_ACCOUNT_ID}:task/{CLUSTER}/0000dead"}
    )

    states = launcher.describe([ghost, real])

    assert [(s.handle.task_id, s.phase) for s in states] == [
        (ghost.task_id, "missing"),
        (real.task_id, "running"),
    ]
    assert states[0].reason is not None and "MISSING" in states[0].reason


def test_describe_maps_failures_missing_to_missing(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = TaskHandle(
        launcher="fargate",
        task_id="arn:aws:ecs:us-east-1:123456789012:task/builds/gone",
        deployment_id="dep-1",
        attempt=1,
        job_type="build",
        instance_id="orch-a",
        launched_at=NOW,
        start_deadline=NOW + 600,
        deadline=None,
        cluster=CLUSTER,
    )
    with Stubber(launcher.client) as stub:
        stub.add_response(
            "describe_tasks", {"tasks": [], "failures": [{"arn": handle.task_id, "reason": "MISSING"}]}
        )
        [state] = launcher.describe([handle])

    assert (state.phase, state.reason) == ("missing", "ECS: MISSING")


def test_describe_of_250_tasks_makes_3_calls(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handles = [launcher.launch(request_for(f"dep-{i}")) for i in range(250)]
    launcher.api_calls.clear()
    sent = capture(launcher, "DescribeTasks")
    exported = metrics.ECS_API_CALLS.labels(operation="DescribeTasks")
    before = exported._value.get()

    states = launcher.describe(handles)

    assert launcher.api_calls == {"DescribeTasks": 3}
    assert exported._value.get() - before == 3, "the calls are exported as orchestrator_ecs_api_calls_total"
    assert sorted(len(params["tasks"]) for params in sent) == [50, 100, 100]  # side by side, any order
    assert [s.handle for s in states] == handles
    assert {s.phase for s in states} == {"running"}


def test_stop_sends_the_reason_cut_to_255_characters(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for())
    sent = capture(launcher, "StopTask")

    launcher.stop(handle, "ran longer than the maximum runtime " + "x" * 300)

    [params] = sent
    assert params["task"] == handle.task_id
    assert params["cluster"] == CLUSTER
    assert len(params["reason"]) == 255
    [state] = launcher.describe([handle])
    assert state.phase == "stopped"
    assert state.reason is not None and state.reason.startswith("ran longer than the maximum runtime")


def test_stop_of_a_task_ecs_forgot_is_not_an_error(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    handle = launcher.launch(request_for())
    with Stubber(launcher.client) as stub:
        stub.add_client_error(
            "stop_task", "InvalidParameterException", "The referenced task was not found.", 400
        )
        launcher.stop(handle, "stop on request")
    assert launcher.api_calls["StopTask"] == 1


def _fields(handle: TaskHandle) -> dict[str, Any]:
    return {name: getattr(handle, name) for name in handle.__struct_fields__}


def test_launch_records_launch_time(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    before = time.time()
    handle = launcher.launch(request_for())
    assert before <= handle.launched_at <= time.time()


# --- the stall fence right before RunTask leaves ------------------------------------------------------


def _running_tasks() -> list[str]:
    return list(boto3.client("ecs", region_name=REGION).list_tasks(cluster=CLUSTER)["taskArns"])


def test_run_task_is_not_sent_when_the_slot_or_claim_lapsed_after_the_guards_check(
    ecs_world: EcsWorld,
) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    asked: list[str] = []
    signed: list[bool] = []
    launcher.client.meta.events.register("before-sign.ecs.RunTask", lambda **_: signed.append(True))

    def lapsed() -> bool:
        # A stall past the leases between the guard's check and here: the slot may be another's now.
        asked.append("signed" if signed else "before signing")
        return False

    request = msgspec.structs.replace(request_for(), may_start=lapsed)
    with pytest.raises(CapacityError, match="not sending RunTask"):
        launcher.launch(request)
    # Asked once, after the request was signed (right before it would leave), and nothing started
    assert asked == ["signed"]
    assert _running_tasks() == []
    assert launcher.api_calls["RunTask"] == 1  # the call was made, its request not sent


def test_run_task_is_sent_while_the_slot_and_claim_are_held(ecs_world: EcsWorld) -> None:
    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    asked: list[bool] = []

    def held() -> bool:
        asked.append(True)
        return True

    handle = launcher.launch(msgspec.structs.replace(request_for(), may_start=held))
    assert asked == [True]
    assert _running_tasks() == [handle.task_id]
    # The next launch on this thread has no fence of its own: the last one's is not asked again
    launcher.launch(request_for("dep-2"))
    assert asked == [True]


def test_a_stall_while_run_task_is_signed_leaves_nothing_launched_and_the_next_try_launches(
    ecs_world: EcsWorld,
) -> None:
    from orchestrator.launch.guard import GuardedLauncher

    launcher = EcsLauncher(config_from(ecs_world.environ()), "FARGATE")
    slot = {"held": True, "stall_while_signing": True}

    def stall(**_: Any) -> None:
        if slot["stall_while_signing"]:
            slot["held"] = False  # the leases lapsed meanwhile: another process may hold the slot now

    launcher.client.meta.events.register("before-sign.ecs.RunTask", stall)
    guard = GuardedLauncher(launcher, "orch-a", registry=None, slot_held=lambda _: slot["held"])
    # The guard's own check passes; the one right before sending does not
    with pytest.raises(CapacityError, match="not sending RunTask"):
        guard.launch(request_for())
    assert _running_tasks() == []
    assert not guard.active_here("dep-1")
    # Once the slot is held again, the same attempt launches (the guard kept nothing of the first try)
    slot.update(held=True, stall_while_signing=False)
    handle = guard.launch(request_for())
    assert _running_tasks() == [handle.task_id]
