"""deploy/aws/iam-policy.json allows every AWS operation the orchestrator calls, and nothing else but
the two that RunTask needs alongside: ecs:TagResource (RunTask sends tags) and iam:PassRole (the worker
task definition's roles).

The operations are read from the source with ``ast``. Every AWS call is counted under its API name as
``count("Operation", <...>.client.method, ...)`` (the ECS launcher's ``EcsLauncher._call``, which
feeds ``orchestrator_ecs_api_calls_total{operation}``); botocore's model of each service a client is
made for (``.client("ecs", ...)``) says which of those calls are that service's, so a client of a new
service, or a new operation, shows up here as a permission the policy lacks.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from orchestrator import metrics

from .aws import IAM_POLICY, REGION, TASK_DEFINITION, example_config, read_json
from .promql import ROOT

ECS_LAUNCHER = ROOT / "orchestrator" / "launch" / "ecs.py"
SOURCES = sorted([*(ROOT / "orchestrator").rglob("*.py"), *(ROOT / "actors").rglob("*.py")])
#: Allowed beside the operations the code calls, and why.
COMPANIONS = {
    "ecs:TagResource": "RunTask sends tags (ECS authorises tag-on-create as ecs:TagResource)",
    "iam:PassRole": "RunTask passes the task definition's task and execution roles",
}


@cache
def api_names(service: str) -> dict[str, str]:
    """The client methods (snake_case) of ``service`` -> its API operation names (botocore's model)."""
    client = boto3.session.Session().client(service, region_name=REGION)
    mapping = client.meta.method_to_api_mapping
    assert isinstance(mapping, dict)
    return {str(k): str(v) for k, v in mapping.items()}


def _trees() -> list[tuple[Path, ast.AST]]:
    return [(path.relative_to(ROOT), ast.parse(path.read_text(encoding="utf-8"))) for path in SOURCES]


#: Attributes of a botocore client that are not API calls (``client.meta.events``: its event hooks).
CLIENT_NON_CALLS = frozenset({"meta"})


def _client_method(node: ast.AST) -> str | None:
    """``m`` of ``<...>.client.m`` or ``client.m``; None for anything else, and for the client's
    attributes that call no API (:data:`CLIENT_NON_CALLS`)."""
    if not isinstance(node, ast.Attribute) or node.attr in CLIENT_NON_CALLS:
        return None
    owner = node.value
    if (isinstance(owner, ast.Attribute) and owner.attr == "client") or (
        isinstance(owner, ast.Name) and owner.id == "client"
    ):
        return node.attr
    return None


def aws_clients() -> dict[str, set[Path]]:
    """Every AWS service a client is made for (``<...>.client("service", ...)``) -> the modules."""
    services: dict[str, set[Path]] = {}
    for path, tree in _trees():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "client"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                services.setdefault(node.args[0].value, set()).add(path)
    return services


def counted_calls() -> set[tuple[str, str]]:
    """Every ``count("Operation", <...>.client.method, ...)`` of the source: (Operation, method)."""
    calls: set[tuple[str, str]] = set()
    for _, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant):
                method = _client_method(node.args[1])
                if method is not None and isinstance(node.args[0].value, str):
                    calls.add((node.args[0].value, method))
    return calls


def operations_of(service: str) -> set[str]:
    """The operations of ``service`` the source calls (counted calls whose method is ``service``'s)."""
    names = api_names(service)
    return {operation for operation, method in counted_calls() if names.get(method) == operation}


def needed_actions() -> set[str]:
    """What the policy must allow: every operation of every service the code makes a client for."""
    return {f"{service}:{operation}" for service in aws_clients() for operation in operations_of(service)}


def test_the_code_calls_aws_through_counted_calls_only() -> None:
    services = aws_clients()
    assert "ecs" in services
    for service in services:
        assert operations_of(service), f"{service}: no call counted as (Operation, client.method)"
    # The launcher names its client's methods only inside _call: none escapes the count.
    named = {
        node.attr
        for node in ast.walk(ast.parse(ECS_LAUNCHER.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and _client_method(node) is not None
    }
    counted_methods = {method for _, method in counted_calls()}
    assert named and named <= counted_methods, f"called without _call: {named - counted_methods}"
    for operation, method in counted_calls():
        if method in api_names("ecs"):
            assert api_names("ecs")[method] == operation, f"({operation!r}, client.{method})"


def test_the_ecs_operations_metric_lists_every_ecs_call() -> None:
    assert operations_of("ecs") == set(metrics.ECS_OPERATIONS)


def allowed_actions(policy: dict[str, Any]) -> set[str]:
    actions: set[str] = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def statements_allowing(policy: dict[str, Any], action: str) -> list[dict[str, Any]]:
    found = []
    for statement in policy["Statement"]:
        listed = statement["Action"]
        if action in ([listed] if isinstance(listed, str) else listed):
            found.append(statement)
    assert found, action
    return found


def resources(statement: dict[str, Any]) -> list[str]:
    listed = statement["Resource"]
    return [listed] if isinstance(listed, str) else list(listed)


def test_the_policy_allows_every_operation_the_code_calls_and_nothing_else() -> None:
    policy = read_json(IAM_POLICY)
    actions = allowed_actions(policy)
    assert not any("*" in action for action in actions), "no wildcard actions"
    needed = needed_actions() | {f"ecs:{operation}" for operation in metrics.ECS_OPERATIONS}
    assert {"ecs:RunTask", "ecs:DescribeTasks", "ecs:ListTasks", "ecs:StopTask"} <= needed
    assert needed - actions == set(), f"the policy misses what {sorted(aws_clients())} calls"
    assert actions - needed == set(COMPANIONS), f"beyond what the code needs: {actions - needed}"


#: Actions that support no resource-level permission (the Service Authorization Reference lists no
#: resource type for them), so "Resource": "*" is the only form IAM accepts.
NO_RESOURCE_LEVEL = frozenset({"ecs:DescribeTaskDefinition"})


def actions_of(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_the_policy_is_scoped_to_the_example_configs_cluster_and_task_definitions() -> None:
    policy = read_json(IAM_POLICY)
    config = example_config()
    cluster_arn_suffix = f":cluster/{config.ecs.cluster}"
    (run_task,) = statements_allowing(policy, "ecs:RunTask")
    assert run_task["Condition"]["ArnEquals"]["ecs:cluster"].endswith(cluster_arn_suffix)
    families = {resource.split(":task-definition/")[1].split(":")[0] for resource in resources(run_task)}
    configured = {config.ecs.task_definition} | {t.task_definition for t in config.types.values()}
    assert {name.split(":")[0] for name in configured if name} <= families
    (list_tasks,) = statements_allowing(policy, "ecs:ListTasks")
    assert list_tasks["Condition"]["ArnEquals"]["ecs:cluster"].endswith(cluster_arn_suffix)
    for action in ("ecs:DescribeTasks", "ecs:StopTask"):
        for statement in statements_allowing(policy, action):
            assert all(r.endswith(f":task/{config.ecs.cluster}/*") for r in resources(statement)), action
    (tag,) = statements_allowing(policy, "ecs:TagResource")
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": "RunTask"}}
    for statement in policy["Statement"]:
        if "*" in resources(statement) and not set(actions_of(statement)) <= NO_RESOURCE_LEVEL:
            assert statement.get("Condition"), f"{statement['Sid']}: every resource, unconditionally"


def test_pass_role_names_only_the_worker_task_definitions_roles() -> None:
    policy = read_json(IAM_POLICY)
    task_definition = read_json(TASK_DEFINITION)
    (pass_role,) = statements_allowing(policy, "iam:PassRole")
    assert set(resources(pass_role)) == {task_definition["taskRoleArn"], task_definition["executionRoleArn"]}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}


def test_iam_accepts_the_policy_document(aws_credentials: None) -> None:
    document = IAM_POLICY.read_text(encoding="utf-8")
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        created = iam.create_policy(PolicyName="blacktree-orchestrator", PolicyDocument=document)
        assert created["Policy"]["PolicyName"] == "blacktree-orchestrator"
        with pytest.raises(iam.exceptions.MalformedPolicyDocumentException):
            iam.create_policy(PolicyName="broken", PolicyDocument=document.replace('"Allow"', '"Alow"', 1))


def test_the_build_log_reads_are_allowed_on_the_worker_task_definitions_log_group_only() -> None:
    policy = read_json(IAM_POLICY)
    (container,) = read_json(TASK_DEFINITION)["containerDefinitions"]
    group = container["logConfiguration"]["options"]["awslogs-group"]
    for action in ("logs:FilterLogEvents", "logs:GetLogEvents", "logs:DescribeLogStreams"):
        (statement,) = statements_allowing(policy, action)
        assert sorted(resources(statement)) == sorted(
            [
                f"arn:aws:logs:REGION:ACCOUNT_ID:log-group:{group}",
                f"arn:aws:logs:REGION:ACCOUNT_ID:log-group:{group}:log-stream:*",
            ]
        ), action
