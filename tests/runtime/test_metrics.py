"""/metrics: parsed back with prometheus-client's parser, every orchestrator_ name checked."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import __version__, metrics
from orchestrator.config import HttpConfig
from orchestrator.http import HttpServer
from orchestrator.runtime import HealthBoard

from .helpers import http_get

PREFIX = "orchestrator_"
#: Labels that would give each job its own series.
PER_JOB_LABELS = re.compile(
    r"(?i)^(deployment_?id|task_?arn|task|job_?id|job|delivery_?tag|message_?id|url)$"
)
#: Base units only (seconds, bytes), never scaled ones.
SCALED_UNITS = re.compile(
    r"_(milli|micro|nano)?(ms|us|ns|milliseconds|microseconds|minutes|hours|days|kb|mb)\b"
)
COUNTER_TYPE_LINE = re.compile(r"^# TYPE (?P<name>\S+) counter$")
REQUIRED = {
    "orchestrator_build_info": "gauge",
    "orchestrator_jobs_received": "counter",
    "orchestrator_jobs_rejected": "counter",
    "orchestrator_jobs_dispatched": "counter",
    "orchestrator_jobs_finished": "counter",
    "orchestrator_dispatch_latency_seconds": "histogram",
    "orchestrator_job_duration_seconds": "histogram",
    "orchestrator_jobs_running": "gauge",
    "orchestrator_jobs_waiting": "gauge",
    "orchestrator_retries": "counter",
    "orchestrator_timeouts": "counter",
    "orchestrator_actor_restarts": "counter",
    "orchestrator_status_events_published": "counter",
    "orchestrator_broker_connected": "gauge",
    "orchestrator_broker_failovers": "counter",
    "orchestrator_redis_connected": "gauge",
    "orchestrator_launch_errors": "counter",
    "orchestrator_launches_inflight": "gauge",
    "orchestrator_launch_duration_seconds": "histogram",
    "orchestrator_ecs_api_calls": "counter",
    "orchestrator_cloudwatch_api_calls": "counter",
    "orchestrator_log_lines_published": "counter",
    "orchestrator_log_bytes_published": "counter",
    "orchestrator_log_lines_dropped": "counter",
    "orchestrator_log_lag_seconds": "histogram",
    "orchestrator_slots_released_by_audit": "counter",
}


def convention_problems(exposition: str) -> Iterator[str]:
    """Every way the ``orchestrator_`` metrics in a text exposition break the Prometheus conventions."""
    for line in exposition.splitlines():
        declared = COUNTER_TYPE_LINE.match(line)
        if declared and declared["name"].startswith(PREFIX) and not declared["name"].endswith("_total"):
            yield f"{declared['name']}: a counter's name ends in _total"
    for family in parse(exposition):
        if not family.name.startswith(PREFIX):
            continue
        if SCALED_UNITS.search(family.name):
            yield f"{family.name}: not in base units"
        if family.type == "histogram" and not family.name.endswith("_seconds"):
            yield f"{family.name}: histograms here measure durations, in _seconds"
        for sample in family.samples:
            if family.type != "counter" and sample.name.endswith("_total"):
                yield f"{sample.name}: only counters end in _total"
            for label in sample.labels:
                if PER_JOB_LABELS.match(label):
                    yield f"{sample.name}: label {label!r} has one value per job"


def parse(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


def scrape() -> str:
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), HealthBoard(stuck_after_seconds=30))
    server.start()
    try:
        status, body, headers = http_get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        server.stop()
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    return body.decode()


def test_every_orchestrator_metric_served_follows_the_conventions() -> None:
    exposition = scrape()
    assert list(convention_problems(exposition)) == []
    families = parse(exposition)
    served = {f.name: f.type for f in families if f.name.startswith(PREFIX)}
    assert served == REQUIRED | served  # every required one is served, with its type
    assert set(served) == set(REQUIRED)  # and nothing else slipped in
    build_info = next(f for f in families if f.name == "orchestrator_build_info")
    assert [(s.labels, s.value) for s in build_info.samples] == [({"version": __version__}, 1.0)]


def test_closed_label_sets_are_served_at_zero_from_the_start() -> None:
    finished = next(f for f in parse(scrape()) if f.name == "orchestrator_jobs_finished")
    assert {s.labels["outcome"] for s in finished.samples} >= set(metrics.OUTCOMES)


def test_every_metric_object_in_the_module_is_served() -> None:
    defined = {value._name for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)}
    assert defined == set(REQUIRED)


@pytest.mark.parametrize(
    ("exposition", "problem"),
    [
        ("# TYPE orchestrator_things_total counter\norchestrator_things_total 1\n", None),
        ("# TYPE orchestrator_things counter\norchestrator_things 1\n", "a counter's name ends in _total"),
        ("# TYPE orchestrator_things gauge\norchestrator_things_total 1\n", "only counters end in _total"),
        (
            "# TYPE orchestrator_wait histogram\norchestrator_wait_count 1\norchestrator_wait_sum 1\n",
            "_seconds",
        ),
        ("# TYPE orchestrator_wait_ms gauge\norchestrator_wait_ms 1\n", "not in base units"),
        ('# TYPE orchestrator_jobs gauge\norchestrator_jobs{deploymentId="d-1"} 1\n', "one value per job"),
        ('# TYPE orchestrator_jobs gauge\norchestrator_jobs{task_arn="arn:x"} 1\n', "one value per job"),
        ("# TYPE other_things gauge\nother_things_total 1\n", None),
    ],
)
def test_the_convention_check_itself_catches_each_mistake(exposition: str, problem: str | None) -> None:
    found = list(convention_problems(exposition))
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert problem in found[0]
