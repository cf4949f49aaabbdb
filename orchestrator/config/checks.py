"""The rules a :class:`Config` must follow that no single key's bounds can express.

A key's own bounds (greater than 0, at most 1000, at least one item) are ``msgspec.Meta`` constraints
in :mod:`orchestrator.config.schema`. What is left here relates several keys (a timeout against an
interval, a launcher against the settings it needs) or needs more than a bound (a URL's scheme, a
command that must split like a shell command). Each problem names the key to change.

:func:`check_config` runs on every load. :func:`check_launchers` adds what ``orchestrator run`` checks
when it builds its launchers (the ECS launchers' capacity providers and placement, the local
launcher's command, ``local.pass_env`` and state directory), without building them: no AWS client is
made and nothing is created on disk. ``orchestrator config`` and ``orchestrator run`` make both, so a
config that ``config`` accepts is one that ``run`` starts with (what only the network can tell — the
broker, Redis, AWS credentials, a free HTTP port — is not checked here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from orchestrator.config.schema import Config
from orchestrator.redaction import redact_url

#: What botocore accepts as a region name (``botocore.utils.validate_region_name``).
_REGION: Final = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?")


def check_config(config: Config, problems: list[str]) -> None:
    """Append to ``problems`` one line per rule ``config`` breaks, each starting with its key."""
    _check_urls(config, problems)
    _check_redis(config, problems)
    _check_local(config, problems)
    _check_ecs(config, problems)
    _check_ecs_endpoint(config, problems)
    _check_http(config, problems)


def launchers_in_use(config: Config) -> set[str]:
    """The launchers ``run`` builds: the default one and every job type's."""
    return {config.launcher.default} | {t.launcher for t in config.types.values() if t.launcher}


def check_launchers(config: Config, problems: list[str]) -> None:
    """Append the problems ``run`` would find building its launchers, without building them.

    The ECS settings and ``local.pass_env`` are checked whichever launcher is in use (a malformed value
    is never meant); the local launcher's command and state directory only when it is in use.
    """
    # Imported here: the launch package imports this one (the parsers are the launchers' own).
    from orchestrator.launch.ecs_params import (
        parse_capacity_providers,
        parse_placement_constraints,
        parse_placement_strategy,
    )
    from orchestrator.launch.local_env import check_pass_env

    parse_capacity_providers(config.ecs.capacity_provider, problems)
    parse_placement_constraints(config.ecs.placement_constraints, problems)
    parse_placement_strategy(config.ecs.placement_strategy, problems)
    problems.extend(check_pass_env(config.local.pass_env))
    if "local" in launchers_in_use(config):
        try:
            if not config.local.argv:
                problems.append("local.command: must name the worker command")
        except ValueError:
            pass  # reported by check_config
        _check_state_dir(config.local.state_dir, problems)


def _check_state_dir(text: str, problems: list[str]) -> None:
    """``local.state_dir`` must be a directory this user can write, or one it can create."""
    path = Path(text).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    blocker = "" if existing == path else f"cannot be created: {existing} "
    if not existing.is_dir():
        problems.append(f"local.state_dir: {path} {blocker}is not a directory")
    elif not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"local.state_dir: {path} {blocker}is not writable by this user (uid {os.getuid()})")


def _check_urls(config: Config, problems: list[str]) -> None:
    urls = config.broker.urls
    several = len(urls) > 1
    for n, url in enumerate(urls, 1):
        which = f"broker.url (address {n} of {len(urls)})" if several else "broker.url"
        if not url:
            problems.append(f"{which}: is empty (separate the nodes' URLs with single commas)")
            continue
        _check_scheme(which, url, ("amqp", "amqps"), problems)
    _check_scheme("redis.url", config.redis.url, ("redis", "rediss", "unix"), problems)


def _check_scheme(key: str, url: str, schemes: tuple[str, ...], problems: list[str]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in schemes:
        wanted = " or ".join(s + "://" for s in schemes)
        problems.append(f"{key}: must be a {wanted} URL (got {redact_url(url)!r})")


def _check_redis(config: Config, problems: list[str]) -> None:
    if not config.redis.key_prefix.strip():
        problems.append("redis.key_prefix: must not be empty (every Redis key lives under it)")


def _check_local(config: Config, problems: list[str]) -> None:
    try:
        config.local.argv  # noqa: B018 - evaluated only to see whether it splits
    except ValueError as e:
        problems.append(f"local.command: cannot be split like a shell command ({e})")


def _check_ecs(config: Config, problems: list[str]) -> None:
    """An ECS launcher, as the default or for a job type, needs a task definition (fargate: subnets)."""
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


def _check_ecs_endpoint(config: Config, problems: list[str]) -> None:
    """What boto3 refuses when the ECS client is made: a malformed region or endpoint URL."""
    if not _REGION.fullmatch(config.ecs.region):
        problems.append(f"ecs.region: {config.ecs.region!r} is not a region name (e.g. us-east-1)")
    url = config.ecs.endpoint_url
    if url:
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError when the port is not a number
        except ValueError:
            valid = False
        if not valid:
            problems.append(f"ecs.endpoint_url: must be an http:// or https:// URL (got {redact_url(url)!r})")


def _check_http(config: Config, problems: list[str]) -> None:
    stuck_after, ping_interval = config.http.stuck_after_seconds, config.supervision.ping_interval_seconds
    if stuck_after <= ping_interval:
        problems.append(
            f"http.stuck_after_seconds: must be greater than supervision.ping_interval_seconds "
            f"({stuck_after} <= {ping_interval}), or every actor looks stuck between two pings"
        )
