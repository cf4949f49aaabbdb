"""The configuration's schema: sections, keys, types, defaults and the bounds of each key.

Every key is a field of a frozen msgspec Struct; a bound that concerns one key alone (greater than 0,
at most 1000, at least one item) is a ``msgspec.Meta`` constraint on its type, so msgspec enforces it
whenever a config is decoded or converted, and the loader words the message from the same constraint.
Rules that relate several keys are in :mod:`orchestrator.config.checks`. Defaults are the named
constants below; README.md has the table of every key.
"""

from __future__ import annotations

import re
import shlex
import sys
from typing import Annotated, Final, Literal, get_type_hints

import msgspec

# --- defaults --------------------------------------------------------------------------------------

DEFAULT_BROKER_URL: Final = "amqp://guest:guest@localhost:5672/%2F"
#: Where a new address starts in ``broker.url``: a comma followed by a scheme (``amqp://``, ``amqps://``,
#: or any other, so that a wrong one is reported). A comma anywhere else (in a password, a query) is
#: part of the URL.
BROKER_URL_START: Final = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
DEFAULT_EXCHANGE: Final = "blacktree"
DEFAULT_EXECUTE_QUEUE: Final = "execute.queue"
DEFAULT_DLQ: Final = "execute.dlq"
DEFAULT_RETRY_QUEUE_PREFIX: Final = "execute.retry"
#: Unacked deliveries per consumer: wide enough to keep the broker's confirms and this process's work
#: overlapping (a hostile flood is rejected 10-20% faster at 100 than at 50), narrow enough that one
#: process does not sit on jobs another could launch.
DEFAULT_PREFETCH: Final = 100
DEFAULT_QUEUE_TYPE: Final = "quorum"
DEFAULT_HEARTBEAT_SECONDS: Final = 30
DEFAULT_RECONNECT_MAX_SECONDS: Final = 30.0
#: A delivery not acked by then goes back to the broker (below RabbitMQ's 30 min consumer timeout).
DEFAULT_HANDOFF_TIMEOUT_SECONDS: Final = 1200.0
#: Most jobs one process holds waiting for a slot (beyond them the broker keeps the backlog).
DEFAULT_MAX_WAITING: Final = 200
#: A delivery handled (and handed back) more often than this is dead-lettered as poison.
DEFAULT_MAX_REDELIVERIES: Final = 20
#: Highest ``max_attempts`` accepted: attempt numbers (and event ``seq``) stay far inside 2^53.
MAX_ATTEMPTS_LIMIT: Final = 1000

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
DEFAULT_REDIS_KEY_PREFIX: Final = "blacktree"
DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS: Final = 2.0

DEFAULT_STATUS_SINKS: Final = ("amqp", "redis")
DEFAULT_STATUS_QUEUE: Final = "status.queue"
DEFAULT_STATUS_CHANNEL: Final = "build.status"
DEFAULT_STATUS_BUFFER: Final = 10_000

#: Where build logs go (empty: nowhere, logs are not followed).
DEFAULT_LOGS_SINKS: Final = ("redis",)
#: A line longer than this (in bytes, UTF-8) is split into several.
DEFAULT_LOGS_MAX_LINE_BYTES: Final = 8192
#: Approximate length bound of each job's Redis Stream (``XADD ... MAXLEN ~``).
DEFAULT_LOGS_MAX_LINES_KEPT: Final = 10_000
#: How long a job's log stream is kept after its last line (and after the job ended).
DEFAULT_LOGS_TTL_SECONDS: Final = 24 * 3600
#: Per job: lines and bytes per second (a one-second burst on top) and in total; beyond them lines
#: are dropped, counted, and one marker line says so.
DEFAULT_LOGS_MAX_LINES_PER_SECOND: Final = 5_000
DEFAULT_LOGS_MAX_BYTES_PER_SECOND: Final = 1024 * 1024
DEFAULT_LOGS_MAX_LINES_TOTAL: Final = 1_000_000
DEFAULT_LOGS_MAX_BYTES_TOTAL: Final = 100 * 1024 * 1024
#: How long a job's terminal event waits for its last log lines.
DEFAULT_LOGS_FINAL_WAIT_SECONDS: Final = 5.0
#: How often the log pump polls its sources (a round publishes everything new, in one Redis pipeline).
DEFAULT_LOGS_POLL_SECONDS: Final = 0.05

DEFAULT_LAUNCHER: Final = "local"
LAUNCHERS: Final = ("local", "fargate", "ec2")

DEFAULT_LOCAL_COMMAND: Final = f"{shlex.quote(sys.executable)} -m orchestrator.worker"
DEFAULT_LOCAL_STATE_DIR: Final = "/var/lib/blacktree-orchestrator"
DEFAULT_LOCAL_STOP_GRACE_SECONDS: Final = 10.0
#: Worker logs of ended local tasks are deleted this long after their last write (0: never).
DEFAULT_LOCAL_LOG_RETENTION_SECONDS: Final = 3 * 24 * 3600
#: Orchestrator environment variables a local worker gets besides the base allow-list (none).
DEFAULT_LOCAL_PASS_ENV: Final[tuple[str, ...]] = ()
#: Local launches in flight at once per process. A launch waits on the disk (the record's fsync) and
#: on Redis (its claim) for most of its time, so the launch threads bound the launch rate: 10 held a
#: process near 370 jobs/s. Measured in interleaved rounds of ``scripts/bench_local.py --base-code``
#: (CPU per job, median ratio): 32 threads 0.895 of 10 (less CPU and more jobs/s in 8 of 8 rounds),
#: 20 threads 0.95 of 10, 64 threads 1.09 of 32 (more context switches per job).
DEFAULT_LOCAL_MAX_INFLIGHT_LAUNCHES: Final = 32

DEFAULT_ECS_REGION: Final = "us-east-1"
DEFAULT_ECS_CLUSTER: Final = "default"
DEFAULT_ECS_CONTAINER_NAME: Final = "worker"
DEFAULT_ECS_STARTED_BY: Final = "blacktree-orchestrator"
#: Whether EC2 launches send the awsvpc network configuration (task definitions with networkMode awsvpc).
DEFAULT_ECS_EC2_AWSVPC: Final = False
DEFAULT_MAX_INFLIGHT_LAUNCHES: Final = 10
DEFAULT_LAUNCH_RATE: Final = 20.0
DEFAULT_LAUNCH_BURST: Final = 100
#: CloudWatch Logs calls per second of one process's ECS log follower. FilterLogEvents and
#: DescribeLogStreams are limited to 5 transactions per second per account and Region (a hard limit
#: for FilterLogEvents; https://repost.aws/knowledge-center/cloudwatch-logs-throttling and
#: https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/cloudwatch_limits_cwl.html), shared by
#: every process and person using the account: 2/s leaves room for a second orchestrator process and
#: for the console.
DEFAULT_ECS_LOGS_API_RATE: Final = 2.0
DEFAULT_ECS_LOGS_API_BURST: Final = 2

DEFAULT_MAX_CONCURRENT: Final = 10
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_RETRY_DELAYS: Final = (10, 60, 300)
DEFAULT_START_TIMEOUT_SECONDS: Final = 600
#: Every worker gets a hard maximum lifetime, so nothing is orphaned (``deploy`` is exempt by default).
DEFAULT_MAX_RUNTIME_SECONDS: Final = 7200
DEFAULT_POLL_SECONDS: Final = 10.0
DEFAULT_LEASE_SECONDS: Final = 30

DEFAULT_DRAIN_SECONDS: Final = 20.0

# The load balancer health check README.md recommends ("Operations", "Load balancer health check"):
# the unhealthy hold's default follows from it, and tests/runtime/test_unhealthy_hold.py checks that
# these still match the README.
#: Seconds between two health checks of one target.
LB_HEALTH_CHECK_INTERVAL_SECONDS: Final = 10.0
#: Seconds the load balancer waits for an answer.
LB_HEALTH_CHECK_TIMEOUT_SECONDS: Final = 5.0
#: Consecutive failed checks after which the load balancer marks a target unhealthy.
LB_UNHEALTHY_THRESHOLD: Final = 2
#: After SIGTERM, /health keeps answering 503 this long, so the load balancer sees the process leave
#: (a 503) instead of a refused connection. The next check may come up to one interval after the
#: signal, and the target is unhealthy after ``LB_UNHEALTHY_THRESHOLD`` failed checks: that is
#: threshold x interval (20 s) in the worst case, plus one check timeout (5 s) of slack for checks
#: that do not come exactly on time: 25 s.
DEFAULT_UNHEALTHY_HOLD_SECONDS: Final = (
    LB_UNHEALTHY_THRESHOLD * LB_HEALTH_CHECK_INTERVAL_SECONDS + LB_HEALTH_CHECK_TIMEOUT_SECONDS
)

DEFAULT_ALLOWED_HOSTS: Final = ("github.com", "gitlab.com", "bitbucket.org")
DEFAULT_MAX_MESSAGE_BYTES: Final = 65536

DEFAULT_HTTP_HOST: Final = "0.0.0.0"  # noqa: S104 - the load balancer reaches us from outside
DEFAULT_HTTP_PORT: Final = 8080
DEFAULT_STUCK_AFTER_SECONDS: Final = 30.0
#: Concurrent HTTP connections (the load balancer and Prometheus need a handful); see orchestrator/http.py.
DEFAULT_HTTP_MAX_CONNECTIONS: Final = 64
#: Seconds a client has to send a request line and headers (also how long a keep-alive may idle).
DEFAULT_HTTP_READ_TIMEOUT_SECONDS: Final = 5.0

DEFAULT_RESTART_BUDGET: Final = 5
DEFAULT_RESTART_WINDOW_SECONDS: Final = 60.0
DEFAULT_RESTART_BACKOFF_SECONDS: Final = 0.1
DEFAULT_RESTART_BACKOFF_MAX_SECONDS: Final = 5.0
DEFAULT_PING_INTERVAL_SECONDS: Final = 1.0
DEFAULT_TELL_BUFFER: Final = 10_000


# --- bounds ----------------------------------------------------------------------------------------

#: A count that must be at least 1.
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
#: A duration or rate that must be above 0.
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
#: An attempt count: at least 1, and small enough that attempt numbers and event ``seq`` stay exact.
AttemptCount = Annotated[int, msgspec.Meta(gt=0, le=MAX_ATTEMPTS_LIMIT)]


# --- sections --------------------------------------------------------------------------------------


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of a config section: keys are the field names."""


class BrokerConfig(Section, frozen=True, kw_only=True):
    #: One RabbitMQ URL, or the nodes of a cluster as several URLs separated by commas (see :attr:`urls`).
    url: str = DEFAULT_BROKER_URL
    exchange: str = DEFAULT_EXCHANGE
    execute_queue: str = DEFAULT_EXECUTE_QUEUE
    dlq: str = DEFAULT_DLQ
    retry_queue_prefix: str = DEFAULT_RETRY_QUEUE_PREFIX
    prefetch: PositiveInt = DEFAULT_PREFETCH
    queue_type: Literal["quorum", "classic"] = DEFAULT_QUEUE_TYPE
    declare: bool = True
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    reconnect_max_seconds: float = DEFAULT_RECONNECT_MAX_SECONDS
    handoff_timeout_seconds: PositiveFloat = DEFAULT_HANDOFF_TIMEOUT_SECONDS
    max_redeliveries: PositiveInt = DEFAULT_MAX_REDELIVERIES
    max_waiting: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_MAX_WAITING
    #: Secret shared by every process: signs the attempt number of retries. Empty: derived from the URLs.
    retry_signing_key: str = ""

    @property
    def urls(self) -> tuple[str, ...]:
        """The node addresses of ``url``, in the order they are tried.

        ``url`` holds one URL or several separated by commas. A comma starts a new address only where
        a scheme (``amqp://``, ``amqps://``) follows it, so a comma in a password or a query string
        stays in its URL; an empty address (two commas in a row) is kept as ``""`` for the checks to
        report.
        """
        urls: list[str] = []
        for piece in self.url.split(","):
            if urls and piece.strip() and not BROKER_URL_START.match(piece):
                urls[-1] += "," + piece
            else:
                urls.append(piece)
        return tuple(u.strip() for u in urls)


class RedisConfig(Section, frozen=True, kw_only=True):
    url: str = DEFAULT_REDIS_URL
    key_prefix: str = DEFAULT_REDIS_KEY_PREFIX
    socket_timeout_seconds: PositiveFloat = DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS


class StatusConfig(Section, frozen=True, kw_only=True):
    sinks: Annotated[tuple[Literal["amqp", "redis"], ...], msgspec.Meta(min_length=1)] = DEFAULT_STATUS_SINKS
    queue: str = DEFAULT_STATUS_QUEUE
    redis_channel: str = DEFAULT_STATUS_CHANNEL
    buffer: PositiveInt = DEFAULT_STATUS_BUFFER


class LogsConfig(Section, frozen=True, kw_only=True):
    sinks: tuple[Literal["redis"], ...] = DEFAULT_LOGS_SINKS
    max_line_bytes: Annotated[int, msgspec.Meta(ge=256)] = DEFAULT_LOGS_MAX_LINE_BYTES
    max_lines_kept: PositiveInt = DEFAULT_LOGS_MAX_LINES_KEPT
    ttl_seconds: PositiveInt = DEFAULT_LOGS_TTL_SECONDS
    max_lines_per_second: PositiveInt = DEFAULT_LOGS_MAX_LINES_PER_SECOND
    max_bytes_per_second: PositiveInt = DEFAULT_LOGS_MAX_BYTES_PER_SECOND
    max_lines_total: PositiveInt = DEFAULT_LOGS_MAX_LINES_TOTAL
    max_bytes_total: PositiveInt = DEFAULT_LOGS_MAX_BYTES_TOTAL
    final_wait_seconds: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_LOGS_FINAL_WAIT_SECONDS
    poll_seconds: PositiveFloat = DEFAULT_LOGS_POLL_SECONDS


class LauncherConfig(Section, frozen=True, kw_only=True):
    default: Literal["local", "fargate", "ec2"] = DEFAULT_LAUNCHER


class LocalConfig(Section, frozen=True, kw_only=True):
    command: str = DEFAULT_LOCAL_COMMAND
    state_dir: str = DEFAULT_LOCAL_STATE_DIR
    stop_grace_seconds: float = DEFAULT_LOCAL_STOP_GRACE_SECONDS
    #: Seconds an ended task's worker log is kept after its last write; 0 keeps every log.
    log_retention_seconds: Annotated[int, msgspec.Meta(ge=0)] = DEFAULT_LOCAL_LOG_RETENTION_SECONDS
    #: Names of the orchestrator's environment variables passed on to local workers (e.g. DOCKER_HOST).
    pass_env: tuple[str, ...] = DEFAULT_LOCAL_PASS_ENV
    #: Local launches in flight at once per process (its launch threads).
    max_inflight_launches: PositiveInt = DEFAULT_LOCAL_MAX_INFLIGHT_LAUNCHES

    @property
    def argv(self) -> list[str]:
        """The worker command split like a shell would (the command is trusted config)."""
        return shlex.split(self.command)


class EcsConfig(Section, frozen=True, kw_only=True):
    region: str = DEFAULT_ECS_REGION
    endpoint_url: str | None = None
    cluster: str = DEFAULT_ECS_CLUSTER
    task_definition: str | None = None
    container_name: str = DEFAULT_ECS_CONTAINER_NAME
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    assign_public_ip: bool = False
    capacity_provider: tuple[str, ...] = ()
    placement_constraints: tuple[str, ...] = ()
    placement_strategy: tuple[str, ...] = ()
    ec2_awsvpc: bool = DEFAULT_ECS_EC2_AWSVPC
    started_by: str = DEFAULT_ECS_STARTED_BY
    max_inflight_launches: PositiveInt = DEFAULT_MAX_INFLIGHT_LAUNCHES
    launch_rate: PositiveFloat = DEFAULT_LAUNCH_RATE
    launch_burst: PositiveInt = DEFAULT_LAUNCH_BURST
    #: Client-side token bucket of the CloudWatch Logs calls that follow ECS tasks' logs.
    logs_api_rate: PositiveFloat = DEFAULT_ECS_LOGS_API_RATE
    logs_api_burst: PositiveInt = DEFAULT_ECS_LOGS_API_BURST


class LimitsConfig(Section, frozen=True, kw_only=True):
    max_concurrent: PositiveInt = DEFAULT_MAX_CONCURRENT
    global_max_concurrent: PositiveInt | None = None
    max_attempts: AttemptCount = DEFAULT_MAX_ATTEMPTS
    retry_delays: Annotated[
        tuple[PositiveInt, ...],
        msgspec.Meta(min_length=1, description="seconds before each retry, e.g. 10,60,300"),
    ] = DEFAULT_RETRY_DELAYS
    no_retry_exit_codes: tuple[int, ...] = ()
    start_timeout_seconds: PositiveInt = DEFAULT_START_TIMEOUT_SECONDS
    max_runtime_seconds: PositiveInt | None = DEFAULT_MAX_RUNTIME_SECONDS
    poll_seconds: PositiveFloat = DEFAULT_POLL_SECONDS
    lease_seconds: PositiveInt = DEFAULT_LEASE_SECONDS


class ShutdownConfig(Section, frozen=True, kw_only=True):
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_DRAIN_SECONDS
    #: Seconds from SIGTERM (or SIGINT) during which /health answers 503 and the HTTP server stays up,
    #: even when the drain is over sooner (it runs alongside the drain, not after it). A second
    #: SIGTERM/SIGINT cuts it short; 0 means none. Not applied when the process stops by itself (an
    #: actor past its restart budget), which should be restarted at once.
    unhealthy_hold_seconds: Annotated[float, msgspec.Meta(ge=0)] = DEFAULT_UNHEALTHY_HOLD_SECONDS


class ValidationConfig(Section, frozen=True, kw_only=True):
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allow_file_repos: bool = False
    max_message_bytes: PositiveInt = DEFAULT_MAX_MESSAGE_BYTES
    forbid_unknown_fields: bool = False


class HttpConfig(Section, frozen=True, kw_only=True):
    host: str = DEFAULT_HTTP_HOST
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = DEFAULT_HTTP_PORT
    stuck_after_seconds: float = DEFAULT_STUCK_AFTER_SECONDS
    max_connections: PositiveInt = DEFAULT_HTTP_MAX_CONNECTIONS
    read_timeout_seconds: PositiveFloat = DEFAULT_HTTP_READ_TIMEOUT_SECONDS


class SupervisionConfig(Section, frozen=True, kw_only=True):
    restart_budget: PositiveInt = DEFAULT_RESTART_BUDGET
    restart_window_seconds: PositiveFloat = DEFAULT_RESTART_WINDOW_SECONDS
    restart_backoff_seconds: float = DEFAULT_RESTART_BACKOFF_SECONDS
    restart_backoff_max_seconds: float = DEFAULT_RESTART_BACKOFF_MAX_SECONDS
    ping_interval_seconds: PositiveFloat = DEFAULT_PING_INTERVAL_SECONDS
    tell_buffer: PositiveInt = DEFAULT_TELL_BUFFER


class TypeConfig(Section, frozen=True, kw_only=True):
    """Per job type overrides, section ``[type.<name>]``; unset keys fall back to the globals."""

    launcher: Literal["local", "fargate", "ec2"] | None = None
    task_definition: str | None = None
    container_name: str | None = None
    max_runtime_seconds: PositiveInt | None = None
    start_timeout_seconds: PositiveInt | None = None
    max_attempts: AttemptCount | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole effective configuration."""

    broker: BrokerConfig = BrokerConfig()
    redis: RedisConfig = RedisConfig()
    status: StatusConfig = StatusConfig()
    logs: LogsConfig = LogsConfig()
    launcher: LauncherConfig = LauncherConfig()
    local: LocalConfig = LocalConfig()
    ecs: EcsConfig = EcsConfig()
    limits: LimitsConfig = LimitsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    validation: ValidationConfig = ValidationConfig()
    http: HttpConfig = HttpConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    types: dict[str, TypeConfig] = {}

    def for_type(self, job_type: str) -> TypeConfig:
        """The overrides for ``job_type`` (an empty :class:`TypeConfig` when there are none)."""
        return self.types.get(job_type, TypeConfig())

    def max_runtime_for(self, job_type: str, runs_until_stopped: bool) -> int | None:
        """Maximum runtime of ``job_type`` jobs: the type's override, else the global limit, except
        for jobs whose goal is to keep running (``deploy``), which have none unless configured."""
        override = self.for_type(job_type).max_runtime_seconds
        if override is not None or runs_until_stopped:
            return override
        return self.limits.max_runtime_seconds

    def start_timeout_for(self, job_type: str) -> int:
        """Seconds a ``job_type`` task may take to reach RUNNING."""
        return self.for_type(job_type).start_timeout_seconds or self.limits.start_timeout_seconds

    def highest_max_attempts(self) -> int:
        """The largest ``max_attempts`` of any job type: no valid ``x-attempt`` header is above it."""
        overrides = (t.max_attempts for t in self.types.values() if t.max_attempts is not None)
        return max((self.limits.max_attempts, *overrides))

    def launcher_for(self, job_type: str) -> str:
        """The launcher that runs jobs of ``job_type``."""
        return self.for_type(job_type).launcher or self.launcher.default


SECTIONS: Final[dict[str, type[Section]]] = {
    name: hint
    for name, hint in get_type_hints(Config).items()
    if isinstance(hint, type) and issubclass(hint, Section)
}
TYPE_SECTION_PREFIX: Final = "type."
#: Keys whose values are secrets: never printed.
SECRET_KEYS: Final = frozenset({"retry_signing_key"})
