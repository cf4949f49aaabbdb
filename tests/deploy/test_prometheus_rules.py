"""deploy/prometheus/: promtool accepts the rules and their unit tests pass; every alert is tested both
ways and tells the operator what to look at.

That the rules' metric names and label values exist on a real orchestrator's /metrics is checked in
test_dashboard.py, against the same running process as the dashboard's.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from orchestrator import metrics
from orchestrator.config import LAUNCHERS

from .promql import ALERTS, ALERTS_TEST, alert_rules, matchers

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus: scripts/bootstrap.sh installs it as "
    "root, or run `apt-get install -y --no-install-recommends prometheus`)",
)
SEVERITIES = {"critical", "warning"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=ALERTS.parent, capture_output=True, text=True, timeout=120, check=False
    )


def unit_tests() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert document["rule_files"] == [ALERTS.name]
    return list(document["tests"])


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {rule["alert"] for rule in alert_rules()}
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in unit_tests():
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired | quiet <= alerts, f"unit tests of alerts that do not exist: {(fired | quiet) - alerts}"
    assert alerts - fired == set(), "alerts no input fires"
    assert alerts - quiet == set(), "alerts no input leaves quiet"


def test_every_alert_waits_has_a_severity_and_says_what_to_look_at() -> None:
    rules = alert_rules()
    assert len({rule["alert"] for rule in rules}) == len(rules), "alert names are unique"
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no for:"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert len(annotations.get("description", "")) > 80, f"{name}: the description says too little"


def test_the_rules_cover_what_an_operator_must_be_woken_for() -> None:
    exprs = "\n".join(rule["expr"] for rule in alert_rules())
    for needed in (
        'up{job="blacktree-orchestrator"} == 0',
        "orchestrator_broker_connected == 0",
        "orchestrator_redis_connected == 0",
        "increase(orchestrator_actor_restarts_total",
        'orchestrator_jobs_finished_total{outcome=~"failed|timed_out"}',
        "orchestrator_launch_errors_total",
        "histogram_quantile(0.99",
        'orchestrator_status_events_published_total{outcome!="ok"}',
        "orchestrator_jobs_waiting",
    ):
        assert needed in exprs, needed


def test_the_rules_label_values_are_the_closed_sets_of_orchestrator_metrics() -> None:
    closed = {
        ("orchestrator_jobs_finished_total", "outcome"): metrics.OUTCOMES,
        ("orchestrator_launch_errors_total", "kind"): metrics.LAUNCH_ERROR_KINDS,
        ("orchestrator_launch_errors_total", "launcher"): LAUNCHERS,
        ("orchestrator_status_events_published_total", "outcome"): metrics.PUBLISH_OUTCOMES,
        ("orchestrator_status_events_published_total", "sink"): metrics.STATUS_SINKS,
        ("orchestrator_timeouts_total", "kind"): metrics.TIMEOUT_KINDS,
    }
    checked = 0
    for rule in alert_rules():
        for matcher in matchers(rule["expr"]):
            values = matcher.literal_values()
            assert values is not None, f"{rule['alert']}: cannot read {matcher}"
            allowed = closed.get((matcher.metric, matcher.label))
            assert allowed is not None, (
                f"{rule['alert']}: {matcher.metric}{{{matcher.label}}} is not a closed set"
            )
            assert set(values) <= set(allowed), f"{rule['alert']}: {matcher} not in {allowed}"
            checked += 1
    assert checked >= 5
