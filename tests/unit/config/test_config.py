"""Configuration: INI + environment overrides, every error at once, redaction."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from orchestrator.config import (
    DEFAULT_EXECUTE_QUEUE,
    DEFAULT_MAX_CONCURRENT,
    Config,
    check_launchers,
    config_as_dict,
    load_config,
)
from orchestrator.config.loader import env_variable_names
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
    wrong_launcher = "launcher.default: expected one of local, fargate, ec2 (got 'kubernetes')"
    assert f"{wrong_launcher} (from ORCH_LAUNCHER_DEFAULT)" in problems
    assert "ORCH_NOSUCH_KEY: does not name a config key (expected ORCH_<SECTION>_<KEY>)" in problems
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


def test_printed_config_never_shows_the_retry_signing_key() -> None:
    config = load_config(environ={"ORCH_BROKER_RETRY_SIGNING_KEY": "k3y-material"})
    assert config.broker.retry_signing_key == "k3y-material"
    printed = json.dumps(config_as_dict(config))
    assert "k3y-material" not in printed
    assert config_as_dict(config)["broker"]["retry_signing_key"] == "***"


def test_attempt_numbers_are_bounded_so_events_stay_inside_javascript_integers() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"ORCH_LIMITS_MAX_ATTEMPTS": "1001", "ORCH_TYPE_BUILD_MAX_ATTEMPTS": "5000"})
    text = str(caught.value)
    assert "limits.max_attempts: must be at most 1000 (got 1001)" in text
    assert "type.build.max_attempts: must be at most 1000 (got 5000)" in text
    config = load_config(environ={"ORCH_TYPE_DEPLOY_MAX_ATTEMPTS": "7"})
    assert config.highest_max_attempts() == 7


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"ORCH_BROKER_PREFETCH": "0"}, "broker.prefetch: must be greater than 0 (got 0)"),
        ({"ORCH_BROKER_MAX_WAITING": "-1"}, "broker.max_waiting: must not be negative (got -1)"),
        ({"ORCH_SHUTDOWN_DRAIN_SECONDS": "-2"}, "shutdown.drain_seconds: must not be negative (got -2.0)"),
        ({"ORCH_HTTP_PORT": "-1"}, "http.port: must be 0-65535 (got -1)"),
        (
            {"ORCH_LIMITS_GLOBAL_MAX_CONCURRENT": "0"},
            "limits.global_max_concurrent: must be greater than 0 (got 0)",
        ),
        (
            {"ORCH_TYPE_BUILD_START_TIMEOUT_SECONDS": "0"},
            "type.build.start_timeout_seconds: must be greater than 0 (got 0)",
        ),
        (
            {"ORCH_LIMITS_RETRY_DELAYS": "10,-1"},
            "limits.retry_delays: every value must be greater than 0 (got (10, -1))",
        ),
        (
            {"ORCH_LIMITS_RETRY_DELAYS": ""},
            "limits.retry_delays: needs at least one value (seconds before each retry, e.g. 10,60,300)",
        ),
        ({"ORCH_STATUS_SINKS": ""}, "status.sinks: needs at least one of amqp, redis"),
    ],
)
def test_a_value_out_of_its_bounds_is_one_problem_naming_the_key(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    [variable] = env
    assert info.value.problems == [f"{problem} (from {variable})"]


def test_the_bounds_are_enforced_by_msgspec_wherever_a_config_is_decoded() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.limits\.max_attempts"):
        msgspec.convert({"limits": {"max_attempts": 1001}}, Config)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.http\.port"):
        msgspec.convert({"http": {"port": 70000}}, Config)
    assert msgspec.convert({"limits": {"max_attempts": 1000}}, Config).limits.max_attempts == 1000


# --- misspellings: type sections and environment variables ------------------------------------------


def test_a_misspelled_type_section_is_an_error_with_the_type_meant(tmp_path: Path) -> None:
    path = write(tmp_path, "[type.biuld]\nlauncher = local\n[type.deploy]\nmax_runtime_seconds = 60\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        "[type.biuld]: unknown job type 'biuld' (did you mean [type.build]?); "
        "job types are build, deploy, test, stop"
    ]


def test_a_type_section_for_no_job_type_lists_the_job_types(tmp_path: Path) -> None:
    path = write(tmp_path, "[type.kubernetes]\nlauncher = local\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        "[type.kubernetes]: unknown job type 'kubernetes'; job types are build, deploy, test, stop"
    ]


def test_every_job_type_may_have_its_section(tmp_path: Path) -> None:
    sections = "".join(f"[type.{name}]\nmax_attempts = 2\n" for name in ("build", "deploy", "test", "stop"))
    config = load_config(write(tmp_path, sections), environ={})
    assert set(config.types) == {"build", "deploy", "test", "stop"}


@pytest.mark.parametrize(
    ("variable", "problem"),
    [
        ("ORCH_BROKER_URLL", "ORCH_BROKER_URLL: unknown key broker.urll, did you mean ORCH_BROKER_URL"),
        ("ORCH_BROKR_URL", "ORCH_BROKR_URL: does not name a config key, did you mean ORCH_BROKER_URL"),
        ("ORCH_HTTP_PROT", "ORCH_HTTP_PROT: unknown key http.prot, did you mean ORCH_HTTP_PORT"),
        (
            "ORCH_TYPE_BIULD_LAUNCHER",
            "ORCH_TYPE_BIULD_LAUNCHER: unknown job type 'biuld', did you mean ORCH_TYPE_BUILD_LAUNCHER",
        ),
        (
            "ORCH_TYPE_BUILD_LAUNCHR",
            "ORCH_TYPE_BUILD_LAUNCHR: does not name a config key, did you mean ORCH_TYPE_BUILD_LAUNCHER",
        ),
        ("ORCH_NOSUCH_KEY", "ORCH_NOSUCH_KEY: does not name a config key (expected ORCH_<SECTION>_<KEY>)"),
    ],
)
def test_a_misspelled_variable_is_named_as_the_variable_with_the_one_meant(
    variable: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={variable: "local"})
    assert info.value.problems == [problem]


def test_a_wrong_value_names_the_variable_that_set_it_and_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 99999\n[broker]\nprefetch = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"ORCH_HTTP_PORT": "70000"})
    assert info.value.problems == [
        "http.port: must be 0-65535 (got 70000) (from ORCH_HTTP_PORT)",
        "broker.prefetch: must be greater than 0 (got 0)",
    ]


def test_every_key_has_its_variable_and_every_variable_names_its_key() -> None:
    names = env_variable_names()
    assert {"ORCH_BROKER_URL", "ORCH_LIMITS_GLOBAL_MAX_CONCURRENT", "ORCH_TYPE_STOP_MAX_ATTEMPTS"} <= set(
        names
    )
    for name in names:  # none is reported as unknown (a value may still be wrong for its key)
        try:
            load_config(environ={name: "1"})
        except ConfigError as e:
            assert all("unknown" not in p and "does not name" not in p for p in e.problems), e.problems


# --- what run checks, checked without running ---------------------------------------------------------


def launcher_problems(env: dict[str, str]) -> list[str]:
    problems: list[str] = []
    check_launchers(load_config(environ=env), problems)
    return problems


def test_launcher_checks_find_what_run_finds_building_its_launchers(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    problems = launcher_problems(
        {
            "ORCH_ECS_CAPACITY_PROVIDER": "FARGATE:x",
            "ORCH_ECS_PLACEMENT_CONSTRAINTS": "sameHost",
            "ORCH_ECS_PLACEMENT_STRATEGY": "spread",
            "ORCH_LOCAL_PASS_ENV": "ORCH_BROKER_URL",
            "ORCH_LOCAL_COMMAND": "",
            "ORCH_LOCAL_STATE_DIR": str(not_a_dir / "state"),
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "ecs.capacity_provider",
        "ecs.placement_constraints",
        "ecs.placement_strategy",
        "local.pass_env",
        "local.command",
        "local.state_dir",
    ]
    assert (
        problems[-1]
        == f"local.state_dir: {not_a_dir / 'state'} cannot be created: {not_a_dir} is not a directory"
    )


def test_launcher_checks_pass_for_a_usable_config_and_create_nothing(tmp_path: Path) -> None:
    state = tmp_path / "not" / "yet" / "there"
    assert launcher_problems({"ORCH_LOCAL_STATE_DIR": str(state)}) == []
    assert not (tmp_path / "not").exists()
    assert launcher_problems({"ORCH_ECS_CAPACITY_PROVIDER": "FARGATE:1:1,FARGATE_SPOT:3"}) == []


def test_the_local_launchers_own_checks_apply_only_when_it_is_in_use(tmp_path: Path) -> None:
    unused = {
        "ORCH_LAUNCHER_DEFAULT": "ec2",
        "ORCH_ECS_TASK_DEFINITION": "worker:1",
        "ORCH_LOCAL_COMMAND": "",
        "ORCH_LOCAL_STATE_DIR": "/proc/version/state",
    }
    assert launcher_problems(unused) == []
    in_use_by_a_type = {**unused, "ORCH_TYPE_TEST_LAUNCHER": "local"}
    assert [p.split(":")[0] for p in launcher_problems(in_use_by_a_type)] == [
        "local.command",
        "local.state_dir",
    ]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"ORCH_ECS_REGION": "us east 1"}, "ecs.region: 'us east 1' is not a region name (e.g. us-east-1)"),
        (
            {"ORCH_ECS_ENDPOINT_URL": "localhost:4566"},
            "ecs.endpoint_url: must be an http:// or https:// URL (got 'localhost:4566')",
        ),
        (
            {"ORCH_ECS_ENDPOINT_URL": "http://user:pw@moto:port"},
            "ecs.endpoint_url: must be an http:// or https:// URL (got 'http://user:***@moto:port')",
        ),
    ],
)
def test_what_boto3_would_refuse_is_a_config_error_before_any_client(
    env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ=env)
    assert info.value.problems == [problem]
    assert load_config(environ={"ORCH_ECS_ENDPOINT_URL": "http://127.0.0.1:5000"}).ecs.endpoint_url
