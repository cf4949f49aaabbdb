"""Configuration: one INI file plus ``ORCH_<SECTION>_<KEY>`` environment overrides.

Every key is typed and validated at start-up, and every error is reported at once with the key that
is wrong (and a "did you mean" for misspelled keys). Defaults are the named constants below; README.md
has the table of every key.
"""

from __future__ import annotations

import configparser
import difflib
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints

import msgspec

from orchestrator.errors import ConfigError
from orchestrator.redaction import redact_url

ENV_PREFIX: Final = "ORCH_"

# --- defaults --------------------------------------------------------------------------------------

DEFAULT_BROKER_URL: Final = "amqp://guest:guest@localhost:5672/%2F"
DEFAULT_EXCHANGE: Final = "blacktree"
DEFAULT_EXECUTE_QUEUE: Final = "execute.queue"
DEFAULT_DLQ: Final = "execute.dlq"
DEFAULT_RETRY_QUEUE_PREFIX: Final = "execute.retry"
DEFAULT_PREFETCH: Final = 50
DEFAULT_QUEUE_TYPE: Final = "quorum"
DEFAULT_HEARTBEAT_SECONDS: Final = 30
DEFAULT_RECONNECT_MAX_SECONDS: Final = 30.0
#: A delivery not acked by then goes back to the broker (below RabbitMQ's 30 min consumer timeout).
DEFAULT_HANDOFF_TIMEOUT_SECONDS: Final = 1200.0

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
DEFAULT_REDIS_KEY_PREFIX: Final = "blacktree"
DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS: Final = 2.0

DEFAULT_STATUS_SINKS: Final = ("amqp", "redis")
DEFAULT_STATUS_QUEUE: Final = "status.queue"
DEFAULT_STATUS_CHANNEL: Final = "build.status"
DEFAULT_STATUS_BUFFER: Final = 10_000

DEFAULT_LAUNCHER: Final = "local"
LAUNCHERS: Final = ("local", "fargate", "ec2")

DEFAULT_LOCAL_COMMAND: Final = f"{shlex.quote(sys.executable)} -m orchestrator.worker"
DEFAULT_LOCAL_STATE_DIR: Final = "/var/lib/blacktree-orchestrator"
DEFAULT_LOCAL_STOP_GRACE_SECONDS: Final = 10.0

DEFAULT_ECS_REGION: Final = "us-east-1"
DEFAULT_ECS_CLUSTER: Final = "default"
DEFAULT_ECS_CONTAINER_NAME: Final = "worker"
DEFAULT_ECS_STARTED_BY: Final = "blacktree-orchestrator"
#: Whether EC2 launches send the awsvpc network configuration (task definitions with networkMode awsvpc).
DEFAULT_ECS_EC2_AWSVPC: Final = False
DEFAULT_MAX_INFLIGHT_LAUNCHES: Final = 10
DEFAULT_LAUNCH_RATE: Final = 20.0
DEFAULT_LAUNCH_BURST: Final = 100

DEFAULT_MAX_CONCURRENT: Final = 10
DEFAULT_MAX_ATTEMPTS: Final = 3
DEFAULT_RETRY_DELAYS: Final = (10, 60, 300)
DEFAULT_START_TIMEOUT_SECONDS: Final = 600
#: Every worker gets a hard maximum lifetime, so nothing is orphaned (``deploy`` is exempt by default).
DEFAULT_MAX_RUNTIME_SECONDS: Final = 7200
DEFAULT_POLL_SECONDS: Final = 10.0
DEFAULT_LEASE_SECONDS: Final = 30

DEFAULT_DRAIN_SECONDS: Final = 20.0

DEFAULT_ALLOWED_HOSTS: Final = ("github.com", "gitlab.com", "bitbucket.org")
DEFAULT_MAX_MESSAGE_BYTES: Final = 65536

DEFAULT_HTTP_HOST: Final = "0.0.0.0"  # noqa: S104 - the load balancer reaches us from outside
DEFAULT_HTTP_PORT: Final = 8080
DEFAULT_STUCK_AFTER_SECONDS: Final = 30.0

DEFAULT_RESTART_BUDGET: Final = 5
DEFAULT_RESTART_WINDOW_SECONDS: Final = 60.0
DEFAULT_RESTART_BACKOFF_SECONDS: Final = 0.1
DEFAULT_RESTART_BACKOFF_MAX_SECONDS: Final = 5.0
DEFAULT_PING_INTERVAL_SECONDS: Final = 1.0
DEFAULT_TELL_BUFFER: Final = 10_000


# --- sections --------------------------------------------------------------------------------------


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of a config section: keys are the field names."""


class BrokerConfig(Section, frozen=True, kw_only=True):
    url: str = DEFAULT_BROKER_URL
    exchange: str = DEFAULT_EXCHANGE
    execute_queue: str = DEFAULT_EXECUTE_QUEUE
    dlq: str = DEFAULT_DLQ
    retry_queue_prefix: str = DEFAULT_RETRY_QUEUE_PREFIX
    prefetch: int = DEFAULT_PREFETCH
    queue_type: Literal["quorum", "classic"] = DEFAULT_QUEUE_TYPE
    declare: bool = True
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    reconnect_max_seconds: float = DEFAULT_RECONNECT_MAX_SECONDS
    handoff_timeout_seconds: float = DEFAULT_HANDOFF_TIMEOUT_SECONDS


class RedisConfig(Section, frozen=True, kw_only=True):
    url: str = DEFAULT_REDIS_URL
    key_prefix: str = DEFAULT_REDIS_KEY_PREFIX
    socket_timeout_seconds: float = DEFAULT_REDIS_SOCKET_TIMEOUT_SECONDS


class StatusConfig(Section, frozen=True, kw_only=True):
    sinks: tuple[Literal["amqp", "redis"], ...] = DEFAULT_STATUS_SINKS
    queue: str = DEFAULT_STATUS_QUEUE
    redis_channel: str = DEFAULT_STATUS_CHANNEL
    buffer: int = DEFAULT_STATUS_BUFFER


class LauncherConfig(Section, frozen=True, kw_only=True):
    default: Literal["local", "fargate", "ec2"] = DEFAULT_LAUNCHER


class LocalConfig(Section, frozen=True, kw_only=True):
    command: str = DEFAULT_LOCAL_COMMAND
    state_dir: str = DEFAULT_LOCAL_STATE_DIR
    stop_grace_seconds: float = DEFAULT_LOCAL_STOP_GRACE_SECONDS

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
    max_inflight_launches: int = DEFAULT_MAX_INFLIGHT_LAUNCHES
    launch_rate: float = DEFAULT_LAUNCH_RATE
    launch_burst: int = DEFAULT_LAUNCH_BURST


class LimitsConfig(Section, frozen=True, kw_only=True):
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    global_max_concurrent: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_delays: tuple[int, ...] = DEFAULT_RETRY_DELAYS
    no_retry_exit_codes: tuple[int, ...] = ()
    start_timeout_seconds: int = DEFAULT_START_TIMEOUT_SECONDS
    max_runtime_seconds: int | None = DEFAULT_MAX_RUNTIME_SECONDS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    lease_seconds: int = DEFAULT_LEASE_SECONDS


class ShutdownConfig(Section, frozen=True, kw_only=True):
    drain_seconds: float = DEFAULT_DRAIN_SECONDS


class ValidationConfig(Section, frozen=True, kw_only=True):
    allowed_hosts: tuple[str, ...] = DEFAULT_ALLOWED_HOSTS
    allow_file_repos: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    forbid_unknown_fields: bool = False


class HttpConfig(Section, frozen=True, kw_only=True):
    host: str = DEFAULT_HTTP_HOST
    port: int = DEFAULT_HTTP_PORT
    stuck_after_seconds: float = DEFAULT_STUCK_AFTER_SECONDS


class SupervisionConfig(Section, frozen=True, kw_only=True):
    restart_budget: int = DEFAULT_RESTART_BUDGET
    restart_window_seconds: float = DEFAULT_RESTART_WINDOW_SECONDS
    restart_backoff_seconds: float = DEFAULT_RESTART_BACKOFF_SECONDS
    restart_backoff_max_seconds: float = DEFAULT_RESTART_BACKOFF_MAX_SECONDS
    ping_interval_seconds: float = DEFAULT_PING_INTERVAL_SECONDS
    tell_buffer: int = DEFAULT_TELL_BUFFER


class TypeConfig(Section, frozen=True, kw_only=True):
    """Per job type overrides, section ``[type.<name>]``; unset keys fall back to the globals."""

    launcher: Literal["local", "fargate", "ec2"] | None = None
    task_definition: str | None = None
    container_name: str | None = None
    max_runtime_seconds: int | None = None
    start_timeout_seconds: int | None = None
    max_attempts: int | None = None


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The whole effective configuration."""

    broker: BrokerConfig = BrokerConfig()
    redis: RedisConfig = RedisConfig()
    status: StatusConfig = StatusConfig()
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

    def launcher_for(self, job_type: str) -> str:
        """The launcher that runs jobs of ``job_type``."""
        return self.for_type(job_type).launcher or self.launcher.default


SECTIONS: Final[dict[str, type[Section]]] = {
    name: hint
    for name, hint in get_type_hints(Config).items()
    if isinstance(hint, type) and issubclass(hint, Section)
}
TYPE_SECTION_PREFIX: Final = "type."


# --- loading ---------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the INI file at ``path`` (optional) and apply ``ORCH_*`` overrides from ``environ``.

    Raises:
        ConfigError: with every problem found, each naming its ``section.key``.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    if path is not None:
        raw = _read_ini(Path(path), problems)
    _apply_env(raw, environ, problems)

    sections: dict[str, Any] = {}
    types: dict[str, TypeConfig] = {}
    for section_name, values in raw.items():
        if section_name.startswith(TYPE_SECTION_PREFIX):
            type_name = section_name[len(TYPE_SECTION_PREFIX) :]
            types[type_name] = _build_section(section_name, TypeConfig, values, problems)
        elif section_name in SECTIONS:
            sections[section_name] = _build_section(section_name, SECTIONS[section_name], values, problems)
        else:
            known = [*SECTIONS, "type.<name>"]
            problems.append(f"[{section_name}]: unknown section{_did_you_mean(section_name, known)}")
    config = Config(**sections, types=types)
    _check_semantics(config, problems)
    _check_redis(config.redis, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _read_ini(path: Path, problems: list[str]) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        problems.append(f"{path}: cannot read config file ({e.strerror or e})")
        return {}
    except (configparser.Error, UnicodeDecodeError) as e:
        problems.append(f"{path}: not a valid INI file ({str(e).splitlines()[0]})")
        return {}
    return {name: dict(parser.items(name)) for name in parser.sections()}


def _apply_env(raw: dict[str, dict[str, str]], environ: Mapping[str, str], problems: list[str]) -> None:
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        target = _env_target(rest, raw)
        if target is None:
            problems.append(f"{var}: does not name a config key (expected ORCH_<SECTION>_<KEY>)")
            continue
        section, key = target
        raw.setdefault(section, {})[key] = value


def _env_target(rest: str, raw: Mapping[str, Mapping[str, str]]) -> tuple[str, str] | None:
    """Map ``broker_execute_queue`` to ``("broker", "execute_queue")``, ``type_build_launcher`` to a type."""
    if rest.startswith("type_"):
        for key in sorted(TypeConfig.__struct_fields__, key=len, reverse=True):
            suffix = "_" + key
            if rest.endswith(suffix) and len(rest) > len("type_") + len(suffix):
                return f"{TYPE_SECTION_PREFIX}{rest[len('type_') : -len(suffix)]}", key
        return None
    for section in sorted(SECTIONS, key=len, reverse=True):
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    return None


def _build_section(name: str, cls: type[Section], values: Mapping[str, str], problems: list[str]) -> Any:
    hints = get_type_hints(cls)
    fields = cls.__struct_fields__
    kwargs: dict[str, Any] = {}
    for key, text in values.items():
        if key not in fields:
            problems.append(f"{name}.{key}: unknown key{_did_you_mean(key, fields)}")
            continue
        try:
            kwargs[key] = _parse_value(text, hints[key])
        except (msgspec.ValidationError, ValueError) as e:
            problems.append(f"{name}.{key}: {_describe(e, text, hints[key])}")
    return cls(**kwargs)


def _parse_value(text: str, hint: Any) -> Any:
    text = text.strip()
    args = get_args(hint)
    if type(None) in args:
        if text == "" or text.lower() in ("off", "none"):
            return None
        hint = next(a for a in args if a is not type(None)) if len(args) == 2 else hint
    if get_origin(hint) is tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        return msgspec.convert(items, hint, strict=False)
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected a boolean (true/false, yes/no, on/off, 1/0)")
    return msgspec.convert(text, hint, strict=False)


def _describe(error: Exception, text: str, hint: Any) -> str:
    if isinstance(error, ValueError) and not isinstance(error, msgspec.ValidationError):
        return f"{error} (got {text!r})"
    return f"expected {_expected(hint)} (got {text!r})"


def _expected(hint: Any) -> str:
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if get_origin(hint) is tuple:
        plural = {int: "whole numbers", float: "numbers", str: "strings"}
        item = plural.get(args[0]) or _expected(args[0])
        return f"a comma-separated list of {item}"
    if len(args) == 1:
        return _expected(args[0]) + " or off"
    names = {int: "a whole number", float: "a number", str: "a string", bool: "a boolean"}
    return names.get(hint, str(hint))


def _did_you_mean(word: str, candidates: Any) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _check_semantics(config: Config, problems: list[str]) -> None:
    def positive(key: str, value: float | None) -> None:
        if value is not None and value <= 0:
            problems.append(f"{key}: must be greater than 0 (got {value})")

    positive("broker.prefetch", config.broker.prefetch)
    positive("status.buffer", config.status.buffer)
    positive("limits.max_concurrent", config.limits.max_concurrent)
    positive("limits.global_max_concurrent", config.limits.global_max_concurrent)
    positive("limits.max_attempts", config.limits.max_attempts)
    positive("limits.start_timeout_seconds", config.limits.start_timeout_seconds)
    positive("limits.max_runtime_seconds", config.limits.max_runtime_seconds)
    positive("broker.handoff_timeout_seconds", config.broker.handoff_timeout_seconds)
    positive("limits.poll_seconds", config.limits.poll_seconds)
    positive("limits.lease_seconds", config.limits.lease_seconds)
    positive("ecs.max_inflight_launches", config.ecs.max_inflight_launches)
    positive("ecs.launch_rate", config.ecs.launch_rate)
    positive("ecs.launch_burst", config.ecs.launch_burst)
    positive("validation.max_message_bytes", config.validation.max_message_bytes)
    _check_supervision(config, problems)
    if not config.limits.retry_delays:
        problems.append("limits.retry_delays: needs at least one delay in seconds (e.g. 10,60,300)")
    if any(d <= 0 for d in config.limits.retry_delays):
        problems.append(
            f"limits.retry_delays: every delay must be greater than 0 (got {config.limits.retry_delays})"
        )
    if not 0 <= config.http.port <= 65535:
        problems.append(f"http.port: must be 0-65535 (got {config.http.port})")
    if config.shutdown.drain_seconds < 0:
        problems.append(f"shutdown.drain_seconds: must not be negative (got {config.shutdown.drain_seconds})")
    if not config.status.sinks:
        problems.append("status.sinks: needs at least one of amqp, redis")
    for url_key, url, schemes in (
        ("broker.url", config.broker.url, ("amqp", "amqps")),
        ("redis.url", config.redis.url, ("redis", "rediss", "unix")),
    ):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in schemes:
            wanted = " or ".join(s + "://" for s in schemes)
            problems.append(f"{url_key}: must be a {wanted} URL (got {redact_url(url)!r})")
    try:
        config.local.argv  # noqa: B018 - evaluated only to see whether it splits
    except ValueError as e:
        problems.append(f"local.command: cannot be split like a shell command ({e})")
    for name, type_config in config.types.items():
        positive(f"type.{name}.max_runtime_seconds", type_config.max_runtime_seconds)
        positive(f"type.{name}.start_timeout_seconds", type_config.start_timeout_seconds)
        positive(f"type.{name}.max_attempts", type_config.max_attempts)
    if not config.ecs.task_definition:
        if config.launcher.default != "local":
            problems.append("ecs.task_definition: required when launcher.default is fargate or ec2")
        for name, type_config in config.types.items():
            if type_config.launcher not in (None, "local") and not type_config.task_definition:
                problems.append(
                    f"type.{name}.task_definition: required for launcher {type_config.launcher} "
                    "(or set ecs.task_definition)"
                )
    uses_fargate = config.launcher.default == "fargate" or any(
        t.launcher == "fargate" for t in config.types.values()
    )
    if uses_fargate and not config.ecs.subnets:
        problems.append("ecs.subnets: required for the fargate launcher (awsvpc networking)")


def _check_redis(redis: RedisConfig, problems: list[str]) -> None:
    if redis.socket_timeout_seconds <= 0:
        problems.append(
            f"redis.socket_timeout_seconds: must be greater than 0 (got {redis.socket_timeout_seconds})"
        )
    if not redis.key_prefix.strip():
        problems.append("redis.key_prefix: must not be empty (every Redis key lives under it)")


def _check_supervision(config: Config, problems: list[str]) -> None:
    supervision = config.supervision
    for key in ("restart_budget", "restart_window_seconds", "ping_interval_seconds", "tell_buffer"):
        value = getattr(supervision, key)
        if value <= 0:
            problems.append(f"supervision.{key}: must be greater than 0 (got {value})")
    if config.http.stuck_after_seconds <= supervision.ping_interval_seconds:
        problems.append(
            f"http.stuck_after_seconds: must be greater than supervision.ping_interval_seconds "
            f"({config.http.stuck_after_seconds} <= {supervision.ping_interval_seconds}), "
            "or every actor looks stuck between two pings"
        )


# --- printing --------------------------------------------------------------------------------------


def config_as_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The effective config as ``{section: {key: value}}``, secrets redacted, ready to print."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = msgspec.to_builtins(getattr(config, name))
        for key, value in section.items():
            if key == "url" and isinstance(value, str):
                section[key] = redact_url(value)
        out[name] = section
    for type_name, type_config in sorted(config.types.items()):
        out[f"{TYPE_SECTION_PREFIX}{type_name}"] = msgspec.to_builtins(type_config)
    return out
