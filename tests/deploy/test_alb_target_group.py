"""deploy/aws/alb-target-group.yml is a valid CloudFormation template (cfn-lint), and its health check
is the one the orchestrator's defaults assume: /health on the default HTTP port, and checks timed so
that shutdown.unhealthy_hold_seconds covers the unhealthy threshold.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from cfnlint.api import ManualArgs, lint

from orchestrator.config import schema

from .aws import ALB_TARGET_GROUP, REGION


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    document = yaml.safe_load(ALB_TARGET_GROUP.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def target_group(template: dict[str, Any]) -> dict[str, Any]:
    (group,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"
    ]
    properties = group["Properties"]
    assert isinstance(properties, dict)
    return properties


def test_cfn_lint_finds_nothing_wrong() -> None:
    text = ALB_TARGET_GROUP.read_text(encoding="utf-8")
    assert [str(m) for m in lint(text, config=ManualArgs(regions=[REGION]))] == []
    broken = text.replace("HealthCheckTimeoutSeconds: 5", "HealthCheckTimeoutSeconds: 500")
    assert lint(broken, config=ManualArgs(regions=[REGION])), "cfn-lint reads the template"


def test_the_health_check_is_health_on_the_default_port(
    template: dict[str, Any], target_group: dict[str, Any]
) -> None:
    assert target_group["HealthCheckPath"] == "/health"
    assert target_group["HealthCheckProtocol"] == "HTTP"
    assert target_group["Matcher"] == {"HttpCode": "200"}, "503 (draining, unhealthy) must fail the check"
    assert target_group["HealthCheckPort"] == "traffic-port", "each process is checked on its own port"
    port = target_group["Port"]
    assert port == {"Ref": "OrchestratorPort"}
    assert template["Parameters"]["OrchestratorPort"]["Default"] == schema.DEFAULT_HTTP_PORT


def test_the_check_timing_is_what_the_unhealthy_hold_assumes(target_group: dict[str, Any]) -> None:
    interval = target_group["HealthCheckIntervalSeconds"]
    timeout = target_group["HealthCheckTimeoutSeconds"]
    unhealthy = target_group["UnhealthyThresholdCount"]
    assert interval == schema.LB_HEALTH_CHECK_INTERVAL_SECONDS
    assert timeout == schema.LB_HEALTH_CHECK_TIMEOUT_SECONDS
    assert unhealthy == schema.LB_UNHEALTHY_THRESHOLD
    # The hold must outlast the failed checks that take the target out (at least two intervals), plus
    # one timeout of slack for checks that do not come exactly on time.
    failed_checks_seconds = unhealthy * interval
    assert failed_checks_seconds >= 2 * interval
    assert failed_checks_seconds + timeout == schema.DEFAULT_UNHEALTHY_HOLD_SECONDS
    assert target_group["HealthyThresholdCount"] == 2


def test_deregistration_waits_for_the_drain(target_group: dict[str, Any]) -> None:
    attributes = {a["Key"]: a["Value"] for a in target_group["TargetGroupAttributes"]}
    assert int(attributes["deregistration_delay.timeout_seconds"]) >= schema.DEFAULT_DRAIN_SECONDS
