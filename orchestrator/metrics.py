"""Every Prometheus metric of the orchestrator, defined once here as module-level objects.

Names follow Prometheus conventions: ``orchestrator_`` prefix, counters end in ``_total``, durations are
``_seconds`` histograms, values in base units, and labels have few values (a launcher, an outcome, an
actor name) — never a deployment id or a task ARN, which would make one series per job.

Label values that form a closed set are initialised here, so their series exist (at 0) from the start
and dashboards and alerts need no "absent" special cases.
"""

from __future__ import annotations

import bisect
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from orchestrator import __version__
from orchestrator.config import LAUNCHERS
from orchestrator.lifecycle.policy import CONFLICT_REASON_CLASS
from orchestrator.poison import POISON_REASON_CLASS
from orchestrator.validation.validator import REASON_CLASSES

# The ``*_created`` series (start time of each counter) double the series count for no use here:
# Prometheus detects counter resets without them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

#: ``orchestrator_jobs_finished_total{outcome}`` values.
OUTCOMES: Final = ("succeeded", "failed", "stopped", "rejected", "timed_out")
#: ``orchestrator_timeouts_total{kind}`` values: never reached RUNNING, or ran past its maximum runtime.
TIMEOUT_KINDS: Final = ("start", "runtime")
#: ``orchestrator_launch_errors_total{kind}`` values (see orchestrator.errors' LaunchError subclasses).
LAUNCH_ERROR_KINDS: Final = ("throttled", "capacity", "permanent")
#: ``orchestrator_jobs_rejected_total{reason_class}`` values: the validator's classes, poison (a
#: delivery over its redelivery limit), conflict (a deploymentId in use by another job) and the
#: catch-all of a rejection without a class.
REJECTION_CLASSES: Final = (*REASON_CLASSES, POISON_REASON_CLASS, CONFLICT_REASON_CLASS, "rejected")
#: ``orchestrator_status_events_published_total{sink,outcome}`` values.
STATUS_SINKS: Final = ("amqp", "redis")
PUBLISH_OUTCOMES: Final = ("ok", "error", "dropped")
#: ``orchestrator_ecs_api_calls_total{operation}`` values: every ECS operation the launcher calls.
ECS_OPERATIONS: Final = ("RunTask", "DescribeTasks", "ListTasks", "StopTask", "DescribeTaskDefinition")
#: ``orchestrator_broker_failovers_total{connection}`` values: the execute.queue consumer, and the
#: confirming publisher (status events, retries, dead letters).
BROKER_CONNECTIONS: Final = ("consumer", "publisher")

#: ``orchestrator_log_lines_dropped_total{reason}`` values: over a per-second cap, or past a total one.
LOG_DROP_REASONS: Final = ("rate", "total")
#: ``orchestrator_cloudwatch_api_calls_total{operation}`` values: every CloudWatch Logs operation called.
CLOUDWATCH_OPERATIONS: Final = ("FilterLogEvents", "GetLogEvents", "DescribeLogStreams")
#: A log line's time -> its XADD: from a millisecond to a minute.
LOG_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: Receive -> dispatched: from one millisecond to a minute.
DISPATCH_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)
#: One launch call (RunTask, or starting a local process): the same, up to two minutes.
LAUNCH_DURATION_BUCKETS: Final = (*DISPATCH_LATENCY_BUCKETS[:-1], 120)
#: Dispatched -> terminal: from one second to four hours.
JOB_DURATION_BUCKETS: Final = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400)

BUILD_INFO: Final = Gauge("orchestrator_build_info", "Always 1; the version is the label.", ["version"])

JOBS_RECEIVED: Final = Counter("orchestrator_jobs_received_total", "Job deliveries taken from the queue.")
JOBS_REJECTED: Final = Counter(
    "orchestrator_jobs_rejected_total", "Jobs rejected as invalid, by class of reason.", ["reason_class"]
)
JOBS_DISPATCHED: Final = Counter(
    "orchestrator_jobs_dispatched_total", "Worker tasks launched (or adopted), by launcher.", ["launcher"]
)
JOBS_FINISHED: Final = Counter(
    "orchestrator_jobs_finished_total",
    "Jobs that reached their terminal state, by outcome (timed_out: failed after a timeout).",
    ["outcome"],
)
DISPATCH_LATENCY: Final = Histogram(
    "orchestrator_dispatch_latency_seconds",
    "Time from receiving a job to its worker task being dispatched.",
    buckets=DISPATCH_LATENCY_BUCKETS,
)
JOB_DURATION: Final = Histogram(
    "orchestrator_job_duration_seconds",
    "Time from dispatch to the terminal state, by launcher.",
    ["launcher"],
    buckets=JOB_DURATION_BUCKETS,
)
LAUNCH_DURATION: Final = Histogram(
    "orchestrator_launch_duration_seconds",
    "One launch call to the back-end (RunTask, or starting a local process), by launcher; each "
    "throttled retry is a call of its own.",
    ["launcher"],
    buckets=LAUNCH_DURATION_BUCKETS,
)
JOBS_RUNNING: Final = Gauge("orchestrator_jobs_running", "Worker tasks this process is tracking now.")
JOBS_WAITING: Final = Gauge("orchestrator_jobs_waiting", "Jobs waiting for a concurrency slot.")
SLOTS_RELEASED_BY_AUDIT: Final = Counter(
    "orchestrator_slots_released_by_audit_total",
    "Slots the self-check gave back because no job of theirs was followed any more (a leak found).",
)
RETRIES: Final = Counter("orchestrator_retries_total", "Jobs scheduled for another attempt.")
TIMEOUTS: Final = Counter(
    "orchestrator_timeouts_total", "Tasks stopped for a timeout, by kind (start, runtime).", ["kind"]
)
ACTOR_RESTARTS: Final = Counter(
    "orchestrator_actor_restarts_total", "Actors restarted by the supervisor after a crash.", ["actor"]
)
STATUS_EVENTS_PUBLISHED: Final = Counter(
    "orchestrator_status_events_published_total",
    "Status events handed to a sink, by sink and outcome.",
    ["sink", "outcome"],
)
BROKER_CONNECTED: Final = Gauge(
    "orchestrator_broker_connected", "1 when the consuming AMQP connection is up."
)
BROKER_FAILOVERS: Final = Counter(
    "orchestrator_broker_failovers_total",
    "Broker connections that came back on another node of the cluster than the one they were on.",
    ["connection"],
)
REDIS_CONNECTED: Final = Gauge("orchestrator_redis_connected", "1 when Redis answers.")
LAUNCH_ERRORS: Final = Counter(
    "orchestrator_launch_errors_total",
    "Failed launches, by launcher and kind (throttled, capacity, permanent).",
    ["launcher", "kind"],
)
LAUNCHES_INFLIGHT: Final = Gauge(
    "orchestrator_launches_inflight", "Launch calls in progress, by launcher.", ["launcher"]
)
ECS_API_CALLS: Final = Counter(
    "orchestrator_ecs_api_calls_total", "Calls to the ECS API, by operation.", ["operation"]
)
LOG_LINES_PUBLISHED: Final = Counter(
    "orchestrator_log_lines_published_total", "Build log lines written to the log streams (markers included)."
)
LOG_BYTES_PUBLISHED: Final = Counter(
    "orchestrator_log_bytes_published_total", "Bytes of build log lines written (their JSON entries)."
)
LOG_LINES_DROPPED: Final = Counter(
    "orchestrator_log_lines_dropped_total",
    "Build log lines dropped by a per-job cap, by reason (rate: per second; total: per job).",
    ["reason"],
)
LOG_LAG: Final = Histogram(
    "orchestrator_log_lag_seconds",
    "Time from a build log line being read (or its source's timestamp) to its publication.",
    buckets=LOG_LAG_BUCKETS,
)
CLOUDWATCH_API_CALLS: Final = Counter(
    "orchestrator_cloudwatch_api_calls_total",
    "Calls to the CloudWatch Logs API, by operation.",
    ["operation"],
)


def _initialise_closed_label_sets() -> None:
    BUILD_INFO.labels(version=__version__).set(1)
    for outcome in OUTCOMES:
        JOBS_FINISHED.labels(outcome=outcome)
    for kind in TIMEOUT_KINDS:
        TIMEOUTS.labels(kind=kind)
    for reason_class in REJECTION_CLASSES:
        JOBS_REJECTED.labels(reason_class=reason_class)
    for sink in STATUS_SINKS:
        for outcome in PUBLISH_OUTCOMES:
            STATUS_EVENTS_PUBLISHED.labels(sink=sink, outcome=outcome)
    for operation in ECS_OPERATIONS:
        ECS_API_CALLS.labels(operation=operation)
    for reason in LOG_DROP_REASONS:
        LOG_LINES_DROPPED.labels(reason=reason)
    for operation in CLOUDWATCH_OPERATIONS:
        CLOUDWATCH_API_CALLS.labels(operation=operation)
    for connection in BROKER_CONNECTIONS:
        BROKER_FAILOVERS.labels(connection=connection)
    for launcher in LAUNCHERS:
        JOBS_DISPATCHED.labels(launcher=launcher)
        JOB_DURATION.labels(launcher=launcher)
        LAUNCH_DURATION.labels(launcher=launcher)
        LAUNCHES_INFLIGHT.labels(launcher=launcher)
        for kind in LAUNCH_ERROR_KINDS:
            LAUNCH_ERRORS.labels(launcher=launcher, kind=kind)


_initialise_closed_label_sets()


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``histogram.observe(value)`` ``count`` times, at the cost of one (many log lines share a lag)."""
    if count == 1:
        histogram.observe(value)
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:  # another prometheus-client: the slow way
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    buckets[bisect.bisect_left(bounds, value)].inc(count)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every registered metric, and its content type (for ``GET /metrics``)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
