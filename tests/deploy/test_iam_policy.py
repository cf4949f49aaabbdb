"""deploy/aws/iam-policy.json allows every ECS operation the launcher calls, and nothing else but the
two that RunTask needs alongside: ecs:TagResource (RunTask sends tags) and iam:PassRole (the worker
task definition's roles).

The operations are read from the launcher's source with ``ast``: every call on the ECS client goes
through ``EcsLauncher._call("Operation", self.client.method, ...)``, which counts it in
``orchestrator_ecs_api_calls_total{operation}``; botocore's own model maps each method to its API name.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from orchestrator import metrics

from .aws import IAM_POLICY, REGION, TASK_DEFINITION, example_config, read_json
from .promql import ROOT

ECS_LAUNCHER = ROOT / "orchestrator" / "launch" / "ecs.py"
SOURCES = [*(ROOT / "orchestrator").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]
#: Allowed beside the launcher's own operations, and why.
COMPANIONS = {
    "ecs:TagResource": "RunTask sends tags (ECS authorises tag-on-create as ecs:TagResource)",
    "iam:PassRole": "RunTask passes the task definition's task and execution roles",
}


def ecs_client_methods() -> dict[str, str]:
    """The ECS client's methods (snake_case) -> API operation names, from botocore's service model."""
    client = boto3.session.Session().client("ecs", region_name=REGION)
    mapping = client.meta.method_to_api_mapping
    assert isinstance(mapping, dict)
    return {str(k): str(v) for k, v in mapping.items()}


def _is_self_client(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "client"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def launcher_calls() -> tuple[set[str], list[tuple[str, str]]]:
    """Every method of ``self.client`` named in the launcher, and each ``self._call(op, method)`` pair."""
    tree = ast.parse(ECS_LAUNCHER.read_text(encoding="utf-8"))
    named: set[str] = set()
    counted: list[tuple[str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_self_client(node.value):
            named.add(node.attr)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_call"
            and len(node.args) >= 2
        ):
            operation, method = node.args[0], node.args[1]
            assert isinstance(operation, ast.Constant), ast.unparse(node)
            assert isinstance(method, ast.Attribute) and _is_self_client(method.value), ast.unparse(node)
            counted.append((str(operation.value), method.attr))
    return named, counted


def test_only_the_ecs_launcher_holds_an_ecs_client() -> None:
    makers: set[Path] = set()
    boto_clients: set[Path] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "make_ecs_client":
                makers.add(path.relative_to(ROOT))
            if name == "client" and any(isinstance(a, ast.Constant) and a.value == "ecs" for a in node.args):
                boto_clients.add(path.relative_to(ROOT))
    assert makers == {Path("orchestrator/launch/ecs.py")}
    assert boto_clients == {Path("orchestrator/launch/ecs_client.py")}


def test_every_ecs_call_of_the_launcher_is_counted_under_its_api_name() -> None:
    named, counted = launcher_calls()
    api = ecs_client_methods()
    assert named, "the launcher calls ECS"
    assert {method for _, method in counted} == named, "a client method called without _call (uncounted)"
    for operation, method in counted:
        assert api[method] == operation, f"self._call({operation!r}, self.client.{method})"
    assert {operation for operation, _ in counted} == set(metrics.ECS_OPERATIONS)


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


def test_the_policy_allows_every_operation_the_launcher_calls_and_nothing_else() -> None:
    policy = read_json(IAM_POLICY)
    actions = allowed_actions(policy)
    assert not any("*" in action for action in actions), "no wildcard actions"
    needed = {f"ecs:{operation}" for operation, _ in launcher_calls()[1]}
    assert needed <= actions, f"missing: {needed - actions}"
    assert actions - needed == set(COMPANIONS), f"beyond what the launcher needs: {actions - needed}"


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
        if "*" in resources(statement):
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
