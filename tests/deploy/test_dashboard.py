"""deploy/grafana/orchestrator-dashboard.json is a dashboard Grafana imports, and every metric it (and
every alert rule of deploy/prometheus/) queries is on the /metrics of a real running orchestrator.

The live checks start one ``orchestrator run`` process (local launcher, queues and keys of its own),
scrape its /metrics over HTTP, and compare: each ``orchestrator_*`` series an expression names must be
served, with the label values its matchers name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline.processes import OrchestratorProcess
from prometheus_client import REGISTRY
from support import delete_broker_objects, isolated_config

import orchestrator.metrics  # noqa: F401 - registers every metric of the orchestrator in REGISTRY
from orchestrator.pipeline import MONITOR, PUBLISHER

from .promql import (
    ALERTS_TEST,
    DASHBOARD,
    Exposition,
    alert_rules,
    dashboard_panels,
    dashboard_targets,
    metric_names,
)

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
#: What Grafana puts in place of its variables, for promtool to parse the expressions.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exposition]:
    """The /metrics of a real ``orchestrator run`` process, scraped once it is healthy, then stopped."""
    tmp = tmp_path_factory.mktemp("live-metrics")
    config = isolated_config("deploy", broker__queue_type="classic", local__state_dir=str(tmp / "state"))
    process = OrchestratorProcess(config, tmp / "orchestrator.log").start()
    try:
        process.wait_healthy()
        text = process.metrics()
        assert text is not None, f"GET /metrics failed:\n{process.log()}"
    finally:
        exit_code = process.stop()
        delete_broker_objects(config)
    assert exit_code == 0, process.log()
    yield Exposition.parse(text)


# --- the file -------------------------------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None, "an exported dashboard carries no database id"
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert panel["targets"], panel["title"]
            assert panel.get("description"), panel["title"]
    for target in dashboard_targets(dashboard):
        assert target["datasource"] == DATASOURCE


def test_the_dashboard_shows_what_an_operator_looks_at(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(t["expr"] for t in dashboard_targets(dashboard))
    for needed in (
        "sum by (outcome) (rate(orchestrator_jobs_finished_total",
        "histogram_quantile(0.99, sum by (le) (rate(orchestrator_dispatch_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (launcher, le) (rate(orchestrator_launch_duration_seconds_bucket",
        "orchestrator_jobs_running",
        "orchestrator_jobs_waiting",
        "orchestrator_actor_restarts_total",
        "sum by (reason_class) (rate(orchestrator_jobs_rejected_total",
        "sum by (launcher, kind) (increase(orchestrator_launch_errors_total",
        "sum by (sink, outcome) (rate(orchestrator_status_events_published_total",
        "orchestrator_broker_connected",
        "orchestrator_redis_connected",
    ):
        assert needed in exprs, needed


def test_every_metric_of_the_orchestrator_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(t["expr"] for t in dashboard_targets(dashboard))
    shown = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        for name in metric_names(exprs)
    }
    shown |= {name.removesuffix("_total") for name in shown}
    defined = {
        family.name
        for family in REGISTRY.collect()
        if family.name.startswith("orchestrator_")  # what orchestrator/metrics.py registers
    }
    assert defined, "orchestrator.metrics was imported"
    assert defined - shown == set(), "metrics without a panel"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (see test_prometheus_rules)"
)
def test_promtool_parses_every_dashboard_expression(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = []
    for n, target in enumerate(dashboard_targets(dashboard)):
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"a Grafana variable promtool cannot read: {target['expr']}"
        rules.append({"record": f"dashboard:target_{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- against a real orchestrator -------------------------------------------------------------------


@pytest.mark.services
def test_every_dashboard_query_names_series_a_real_orchestrator_serves(
    dashboard: dict[str, Any], live: Exposition
) -> None:
    problems = {t["expr"]: live.problems(t["expr"]) for t in dashboard_targets(dashboard)}
    assert {expr: p for expr, p in problems.items() if p} == {}
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for variable in variables:
        assert metric_names(variable["definition"]) and not live.problems(variable["definition"])


@pytest.mark.services
def test_every_metric_the_dashboard_describes_exists(dashboard: dict[str, Any], live: Exposition) -> None:
    for panel in dashboard_panels(dashboard):
        for name in metric_names(panel.get("description", "")):
            assert live.names(name), f"{panel['title']}: {name}"


@pytest.mark.services
def test_every_alert_rule_names_series_a_real_orchestrator_serves(live: Exposition) -> None:
    rules = alert_rules()
    problems = {rule["alert"]: live.problems(rule["expr"]) for rule in rules}
    assert {name: p for name, p in problems.items() if p} == {}
    for rule in rules:
        for text in rule["annotations"].values():
            for name in metric_names(text):
                assert live.names(name), f"{rule['alert']}'s annotations name {name}"


@pytest.mark.services
def test_the_alert_unit_tests_feed_series_a_real_orchestrator_serves(live: Exposition) -> None:
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    series = [s["series"] for test in document["tests"] for s in test["input_series"]]
    assert series
    assert {s: live.problems(s) for s in series if live.problems(s)} == {}


@pytest.mark.services
def test_the_live_check_catches_a_metric_that_does_not_exist(live: Exposition) -> None:
    # The scrape came from a running pipeline: its supervisor registered every actor.
    assert {PUBLISHER, MONITOR} <= live.labels["orchestrator_actor_restarts_total"]["actor"]
    assert live.problems("rate(orchestrator_jobs_received_total[5m])") == []
    assert live.problems("rate(orchestrator_jobs_recieved_total[5m])") == [
        "orchestrator_jobs_recieved_total: no such series"
    ]
    assert live.problems('orchestrator_jobs_finished_total{outcome="lost"}') == [
        "orchestrator_jobs_finished_total{outcome='lost'}: 'lost' is not one of "
        "['failed', 'rejected', 'stopped', 'succeeded', 'timed_out']"
    ]
