"""Configuration: INI + environment overrides, every error at once, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.config import (
    DEFAULT_EXECUTE_QUEUE,
    DEFAULT_MAX_CONCURRENT,
    config_as_dict,
    load_config,
)
from orchestrator.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "orchestrator.ini"
    path.write_text(text)
    return path


def test_defaults_are_the_named_constants() -> None:
    config = load_config(environ={})
    assert config.broker.execute_queue == DEFAULT_EXECUTE_QUEUE
    assert config.limits.max_concurrent == DEFAULT_MAX_CONCURRENT
    assert config.limits.retry_delays == (10, 60, 300)
    assert config.status.sinks == ("amqp", "redis")
    assert config.launcher.default == "local"
    assert config.limits.global_max_concurrent is None


def test_file_values_are_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[broker]
prefetch = 7
declare = no
[limits]
retry_delays = 1, 2,3
global_max_concurrent = 40
[validation]
allowed_hosts = github.com, git.example.org
[type.deploy]
launcher = local
max_runtime_seconds = 3600
""",
    )
    config = load_config(path, environ={})
    assert config.broker.prefetch == 7
    assert config.broker.declare is False
    assert config.limits.retry_delays == (1, 2, 3)
    assert config.limits.global_max_concurrent == 40
    assert config.validation.allowed_hosts == ("github.com", "git.example.org")
    assert config.for_type("deploy").max_runtime_seconds == 3600
    assert config.launcher_for("deploy") == "local"
    assert config.for_type("build").max_runtime_seconds is None


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nprefetch = 7\n")
    config = load_config(
        path,
        environ={
            "ORCH_BROKER_PREFETCH": "9",
            "ORCH_BROKER_EXECUTE_QUEUE": "jobs",
            "ORCH_TYPE_BUILD_MAX_RUNTIME_SECONDS": "60",
            "ORCH_LIMITS_GLOBAL_MAX_CONCURRENT": "off",
            "UNRELATED": "x",
        },
    )
    assert config.broker.prefetch == 9
    assert config.broker.execute_queue == "jobs"
    assert config.for_type("build").max_runtime_seconds == 60
    assert config.limits.global_max_concurrent is None


def test_every_error_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[broker]
prefetc = 3
queue_type = fifo
[limits]
max_concurrent = lots
retry_delays = 10,soon
[http]
port = 70000
[brokr]
url = amqp://x
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"ORCH_LAUNCHER_DEFAULT": "kubernetes", "ORCH_NOSUCH_KEY": "1"})
    problems = info.value.problems
    text = "\n".join(problems)
    assert "broker.prefetc: unknown key (did you mean 'prefetch'?)" in problems
    assert "broker.queue_type: expected one of quorum, classic (got 'fifo')" in problems
    assert "limits.max_concurrent: expected a whole number (got 'lots')" in problems
    assert "limits.retry_delays:" in text
    assert "http.port: must be 0-65535 (got 70000)" in problems
    assert "[brokr]: unknown section (did you mean 'broker'?)" in problems
    assert "launcher.default: expected one of local, fargate, ec2 (got 'kubernetes')" in problems
    assert any(p.startswith("ORCH_NOSUCH_KEY:") for p in problems)
    assert len(problems) == 8


def test_ecs_launchers_need_their_settings() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"ORCH_LAUNCHER_DEFAULT": "fargate"})
    assert "ecs.task_definition: required when launcher.default is fargate or ec2" in info.value.problems
    assert "ecs.subnets: required for the fargate launcher (awsvpc networking)" in info.value.problems


def test_unreadable_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.ini", environ={})
    assert len(info.value.problems) == 1
    assert "cannot read config file" in info.value.problems[0]


def test_printed_config_redacts_passwords() -> None:
    config = load_config(
        environ={
            "ORCH_BROKER_URL": "amqp://builder:s3cr3t-pw@rabbit.internal:5672/%2F",
            "ORCH_REDIS_URL": "redis://:r3dis-pw@cache.internal:6379/0",
        }
    )
    printed = json.dumps(config_as_dict(config))
    assert "s3cr3t-pw" not in printed
    assert "r3dis-pw" not in printed
    assert "amqp://builder:***@rabbit.internal:5672/%2F" in printed
    assert "redis://:***@cache.internal:6379/0" in printed
