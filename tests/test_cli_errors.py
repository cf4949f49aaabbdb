"""Every error path of the ``orchestrator`` command, run as a subprocess against real endpoints.

Each failure must be one clear line (a config error: one per problem), the documented exit code
(see the docstring of :mod:`orchestrator.cli`), never a traceback; a dependency's failure names its
``host:port`` and the cause, and never the password. RabbitMQ (127.0.0.1:5672, guest/guest) and Redis
(127.0.0.1:6379) are the machine's; "refused" is a port nobody listens on, "timeout" a socket that
listens and never answers, DNS a name under ``.invalid`` (RFC 6761: never resolves).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import cli

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "examples" / "build.json"
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
ATTACKS = sorted((ROOT / "examples" / "invalid").glob("*.json"))
#: A password that must never be printed (the servers reject it, or are never reached).
PASSWORD = "Pw-n0t-t0-be-sh0wn"
RABBIT = "127.0.0.1:5672"
REDIS = "127.0.0.1:6379"
#: Seconds the slowest case may take: each connects once, with short timeouts.
FAST = 20


def orchestrator(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b"", cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator.cli ARGS`` with a clean ``ORCH_*`` environment plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=FAST * 3,
        env=environ,
        cwd=cwd,
        check=False,
    )
    out = subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    )
    assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    assert PASSWORD not in out.stdout + out.stderr
    return out


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of ``result`` (nothing on stdout)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("❌ "), lines[0]
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def test_the_exit_codes_are_documented_as_implemented() -> None:
    doc = cli.__doc__ or ""
    table = dict(re.findall(r"^(\d+)\s{2,}(\S.*)$", doc, flags=re.MULTILINE))
    assert set(table) == {"0", "1", "2", "3", "4", "130"}
    assert (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_INVALID) == (0, 1, 2)
    assert (cli.EXIT_TIMEOUT, cli.EXIT_UNAVAILABLE, cli.EXIT_INTERRUPTED) == (3, 4, 130)
    from orchestrator import submit

    assert (submit.EXIT_FAILED, submit.EXIT_INVALID, submit.EXIT_TIMEOUT) == (1, 2, 3)


# --- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--log-level", "LOUD", "config"], "argument --log-level: invalid choice: 'LOUD'"),
        (["config", "--log-level", "LOUD"], "argument --log-level: invalid choice: 'LOUD'"),
        (["run", "--log-level", "LOUD"], "argument --log-level: invalid choice: 'LOUD'"),
        (["--log-format", "xml", "validate", str(BUILD)], "argument --log-format: invalid choice: 'xml'"),
        (["submit", "--timeout", "0", str(BUILD)], "argument --timeout: must be greater than 0 (got 0)"),
        (["submit", "--timeout", "soon", str(BUILD)], "argument --timeout: expected a number of seconds"),
        (["deploy"], "argument COMMAND: invalid choice: 'deploy'"),
        ([], "the following arguments are required: COMMAND"),
        (["validate"], "the following arguments are required: FILE"),
        (["config", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_a_wrong_option_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = orchestrator(*args)
    assert result.returncode == cli.EXIT_INVALID
    line = one_line(result)
    assert expected in line
    assert line.endswith("--help)")


def test_log_levels_are_case_insensitive() -> None:
    result = orchestrator("--log-level", "debug", "validate", str(BUILD))
    assert result.returncode == 0, result.stderr


def test_global_options_go_before_or_after_the_command(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.ini"
    config.write_text("[broker]\nexecute_queue = jobs-here\n")
    before = orchestrator("--config", str(config), "--log-level", "ERROR", "config")
    after = orchestrator("config", "--config", str(config), "--log-format", "json", "--log-level", "ERROR")
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert before.stdout == after.stdout
    assert json.loads(before.stdout)["broker"]["execute_queue"] == "jobs-here"
    # ... for every command
    job = b'{"type": "build", "deploymentId": "d1", "repository": "file:///srv/git/app"}'
    config.write_text("[validation]\nallow_file_repos = yes\n")
    for args in (["--config", str(config), "validate", "-"], ["validate", "-", "--config", str(config)]):
        assert orchestrator(*args, stdin=job).returncode == 0
    assert orchestrator("validate", "-", stdin=job).returncode == 2


# --- files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "submit"])
@pytest.mark.parametrize("name", ["missing.json", "."])
def test_a_job_file_that_cannot_be_read_is_one_line_and_exit_2(
    command: str, name: str, tmp_path: Path
) -> None:
    result = orchestrator(command, name, cwd=tmp_path)
    assert result.returncode == cli.EXIT_INVALID
    assert one_line(result).startswith(f"❌ cannot read {name}: ")


def test_a_job_that_is_not_json_is_refused_before_any_connection(closed_port: int, tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_bytes(b"\xff{not json")
    env = {"ORCH_BROKER_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:{closed_port}/%2F"}
    for command in ("validate", "submit"):
        result = orchestrator(command, str(path), env=env)
        assert result.returncode == cli.EXIT_INVALID
        assert one_line(result).startswith("❌ message: is not valid UTF-8")


@pytest.mark.parametrize("command", ["config", "run", "validate", "submit"])
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read config file (No such file or directory)"),
        ("dir", "cannot read config file (Is a directory)"),
        (b"\xff\xfe[broker]\n", "not a valid INI file"),
        (b"just text\n", "not a valid INI file"),
    ],
    ids=["missing", "directory", "binary", "not-ini"],
)
def test_a_config_file_that_cannot_be_used_is_one_line_and_exit_2(
    command: str, content: bytes | str | None, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "orchestrator.ini"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    args = ["--config", str(path), command] + ([str(BUILD)] if command in ("validate", "submit") else [])
    result = orchestrator(*args)
    assert result.returncode == cli.EXIT_INVALID
    line = one_line(result)
    assert line.startswith(f"❌ config: {path}: ")
    assert expected in line


# --- validate, several files --------------------------------------------------------------------


def test_validate_takes_several_files_one_line_each() -> None:
    result = orchestrator("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(EXAMPLES)
    for path, line in zip(EXAMPLES, lines, strict=True):
        job = json.loads(path.read_text())
        assert line == f"✅ {path}: valid {job['type']} job {job['deploymentId']}"
    assert result.stderr == ""


def test_validate_exits_2_when_any_of_several_files_is_invalid(tmp_path: Path) -> None:
    names = [str(BUILD), *map(str, ATTACKS), str(tmp_path / "missing.json"), "-"]
    result = orchestrator("validate", *names, stdin=b"{not json")
    assert result.returncode == cli.EXIT_INVALID
    lines = result.stdout.splitlines()
    assert len(lines) == len(names), result.stdout
    assert lines[0].startswith(f"✅ {BUILD}: valid build job ")
    for name, line in zip(names[1:-2], lines[1:-2], strict=True):
        assert line.startswith(f"❌ {name}: "), line
    assert lines[-2] == f"❌ {tmp_path / 'missing.json'}: cannot read (No such file or directory)"
    assert lines[-1].startswith("❌ (standard input): message: is not valid JSON")
    credentials = next(i for i, path in enumerate(ATTACKS, 1) if path.name == "credentials-in-url.json")
    assert lines[credentials].endswith(": repository: must not contain credentials (user-info in the URL)")


# --- submit: RabbitMQ --------------------------------------------------------------------------


def broker_url(host_port: str, password: str = PASSWORD, vhost: str = "%2F", query: str = "") -> str:
    return f"amqp://guest:{password}@{host_port}/{vhost}{query}"


def assert_unavailable(result: subprocess.CompletedProcess[str], endpoint: str, cause: str) -> str:
    assert result.returncode == cli.EXIT_UNAVAILABLE, result.stderr
    line = one_line(result)
    assert f" at {endpoint}" in line, line
    assert cause in line, line
    assert "is it running?" not in line or cause == "connection refused"
    return line


@pytest.mark.parametrize("wait", [[], ["--wait", "--timeout", "5"]], ids=["publish", "wait-amqp"])
def test_submit_to_a_refusing_broker(closed_port: int, wait: list[str]) -> None:
    env = {"ORCH_BROKER_URL": broker_url(f"127.0.0.1:{closed_port}"), "ORCH_STATUS_SINKS": "amqp"}
    result = orchestrator("submit", *wait, str(BUILD), env=env)
    assert_unavailable(result, f"127.0.0.1:{closed_port}", "connection refused")


@pytest.mark.parametrize("wait", [[], ["--wait", "--timeout", "5"]], ids=["publish", "wait-amqp"])
def test_submit_to_a_broker_whose_name_does_not_resolve(wait: list[str]) -> None:
    env = {"ORCH_BROKER_URL": broker_url("nonexistent.invalid:5672"), "ORCH_STATUS_SINKS": "amqp"}
    result = orchestrator("submit", *wait, str(BUILD), env=env)
    assert_unavailable(result, "nonexistent.invalid:5672", "DNS lookup of 'nonexistent.invalid' failed")


@pytest.mark.parametrize("wait", [[], ["--wait", "--timeout", "5"]], ids=["publish", "wait-amqp"])
def test_submit_with_a_wrong_password_says_authentication_failed(wait: list[str]) -> None:
    env = {"ORCH_BROKER_URL": broker_url(RABBIT), "ORCH_STATUS_SINKS": "amqp"}
    result = orchestrator("submit", *wait, str(BUILD), env=env)
    line = assert_unavailable(result, RABBIT, "authentication failed for user 'guest'")
    assert "is it running" not in line
    wrong = orchestrator("submit", str(BUILD), env={"ORCH_BROKER_URL": broker_url(RABBIT, "wrongpassword")})
    assert_unavailable(wrong, RABBIT, "authentication failed")
    assert "wrongpassword" not in wrong.stderr


def test_submit_to_a_virtual_host_that_does_not_exist() -> None:
    vhost = f"no-such-vhost-{uuid.uuid4().hex[:8]}"
    result = orchestrator("submit", str(BUILD), env={"ORCH_BROKER_URL": broker_url(RABBIT, "guest", vhost)})
    assert_unavailable(result, RABBIT, f"access to virtual host '{vhost}' refused (530 NOT_ALLOWED")


def test_submit_with_tls_to_a_plain_port() -> None:
    env = {"ORCH_BROKER_URL": f"amqps://guest:{PASSWORD}@{RABBIT}/%2F?socket_timeout=2&stack_timeout=3"}
    result = orchestrator("submit", str(BUILD), env=env)
    assert_unavailable(result, RABBIT, "TLS handshake failed")


def test_submit_to_a_broker_that_never_answers_times_out(silent_port: int) -> None:
    url = broker_url(f"127.0.0.1:{silent_port}", query="?socket_timeout=0.5&stack_timeout=1")
    result = orchestrator("submit", str(BUILD), env={"ORCH_BROKER_URL": url})
    assert_unavailable(result, f"127.0.0.1:{silent_port}", "timed out during the AMQP handshake")


@pytest.mark.parametrize("wait", [[], ["--wait", "--timeout", "5"]], ids=["publish", "wait-amqp"])
def test_submit_to_an_exchange_that_does_not_exist(wait: list[str]) -> None:
    exchange = f"no-such-exchange-{uuid.uuid4().hex[:8]}"
    env = {
        "ORCH_BROKER_URL": f"amqp://guest:guest@{RABBIT}/%2F",
        "ORCH_BROKER_EXCHANGE": exchange,
        "ORCH_STATUS_SINKS": "amqp",
    }
    result = orchestrator("submit", *wait, str(BUILD), env=env)
    line = assert_unavailable(result, RABBIT, f"not found (NOT_FOUND - no exchange '{exchange}'")
    assert "guest:guest" not in line


def test_submit_to_a_queue_that_does_not_exist() -> None:
    queue = f"no-such-queue-{uuid.uuid4().hex[:8]}"
    env = {  # amq.direct always exists; nothing is bound to it under this name
        "ORCH_BROKER_URL": f"amqp://guest:guest@{RABBIT}/%2F",
        "ORCH_BROKER_EXCHANGE": "amq.direct",
        "ORCH_BROKER_EXECUTE_QUEUE": queue,
    }
    result = orchestrator("submit", str(BUILD), env=env)
    assert_unavailable(result, RABBIT, f"could not be routed to queue '{queue}'")


# --- submit --wait: Redis --------------------------------------------------------------------------


def redis_env(url: str) -> dict[str, str]:
    # The broker is never reached: Redis is subscribed to before the job is published.
    return {
        "ORCH_REDIS_URL": url,
        "ORCH_REDIS_SOCKET_TIMEOUT_SECONDS": "0.5",
        "ORCH_BROKER_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:1/%2F",
    }


def test_submit_wait_with_redis_refusing(closed_port: int) -> None:
    result = orchestrator("submit", "--wait", str(BUILD), env=redis_env(f"redis://127.0.0.1:{closed_port}/0"))
    assert_unavailable(result, f"127.0.0.1:{closed_port}", "connection refused")
    assert "Redis" in result.stderr


def test_submit_wait_with_redis_unresolvable() -> None:
    result = orchestrator("submit", "--wait", str(BUILD), env=redis_env("redis://nonexistent.invalid:6379/0"))
    assert_unavailable(result, "nonexistent.invalid:6379", "DNS lookup of 'nonexistent.invalid' failed")


@pytest.mark.parametrize("user", ["", "builder"])
def test_submit_wait_with_a_wrong_redis_password(user: str) -> None:
    result = orchestrator(
        "submit", "--wait", str(BUILD), env=redis_env(f"redis://{user}:{PASSWORD}@{REDIS}/0")
    )
    line = assert_unavailable(result, REDIS, "authentication failed")
    assert (f"for user '{user}'" in line) == bool(user)


def test_submit_wait_with_redis_never_answering(silent_port: int) -> None:
    result = orchestrator("submit", "--wait", str(BUILD), env=redis_env(f"redis://127.0.0.1:{silent_port}/0"))
    assert_unavailable(result, f"127.0.0.1:{silent_port}", "timed out")


def test_submit_wait_with_tls_to_a_plain_redis() -> None:
    result = orchestrator("submit", "--wait", str(BUILD), env=redis_env(f"rediss://:{PASSWORD}@{REDIS}/0"))
    assert_unavailable(result, REDIS, "TLS handshake")


# --- logs ------------------------------------------------------------------------------------------


def test_logs_with_redis_refusing(closed_port: int) -> None:
    result = orchestrator("logs", "abc123", env=redis_env(f"redis://127.0.0.1:{closed_port}/0"))
    assert_unavailable(result, f"127.0.0.1:{closed_port}", "connection refused")
    assert "Redis" in result.stderr


def test_logs_with_a_wrong_redis_password_never_shows_it() -> None:
    result = orchestrator("logs", "abc123", "--follow", env=redis_env(f"redis://:{PASSWORD}@{REDIS}/0"))
    assert_unavailable(result, REDIS, "authentication failed")
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["logs", "abc123", "--attempt", "0"],
            "argument --attempt: expected a whole number from 1 (got '0')",
        ),
        (["logs", "abc123", "--timeout", "0"], "argument --timeout: must be greater than 0 (got 0)"),
        (["logs"], "the following arguments are required: DEPLOYMENT_ID"),
    ],
)
def test_a_wrong_logs_option_is_one_line_and_exit_2(args: list[str], expected: str) -> None:
    result = orchestrator(*args)
    assert result.returncode == cli.EXIT_INVALID
    assert expected in one_line(result)


def test_submit_logs_needs_wait() -> None:
    result = orchestrator("submit", "--logs", str(BUILD))
    assert result.returncode == cli.EXIT_INVALID
    assert one_line(result) == "❌ submit: --logs needs --wait"


# --- config: what run checks, and misspellings --------------------------------------------------


def test_config_names_a_misspelled_type_section(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.ini"
    path.write_text("[type.biuld]\nlauncher = local\n")
    result = orchestrator("config", "--config", str(path))
    assert result.returncode == cli.EXIT_INVALID
    assert one_line(result) == (
        "❌ config: [type.biuld]: unknown job type 'biuld' (did you mean [type.build]?); "
        "job types are build, deploy, test, stop"
    )


def test_config_names_a_misspelled_variable_as_the_variable() -> None:
    result = orchestrator("config", env={"ORCH_BROKER_URLL": f"amqp://guest:{PASSWORD}@rabbit:5672/%2F"})
    assert result.returncode == cli.EXIT_INVALID
    assert (
        one_line(result)
        == "❌ config: ORCH_BROKER_URLL: unknown key broker.urll, did you mean ORCH_BROKER_URL"
    )


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"ORCH_ECS_CAPACITY_PROVIDER": "FARGATE_SPOT:x"},
            "ecs.capacity_provider: 'FARGATE_SPOT:x' is not NAME[:WEIGHT[:BASE]] (e.g. FARGATE_SPOT:3)",
        ),
        (
            {"ORCH_ECS_PLACEMENT_STRATEGY": "spread"},
            "ecs.placement_strategy: 'spread' is not random, spread:FIELD or binpack:FIELD",
        ),
        (
            {"ORCH_LOCAL_PASS_ENV": "ORCH_REDIS_URL"},
            "local.pass_env: ORCH_REDIS_URL is an orchestrator setting (ORCH_*), which may hold secrets; "
            "it is never passed to workers",
        ),
        (
            {"ORCH_LOCAL_STATE_DIR": "/proc/version/state"},
            "local.state_dir: /proc/version/state cannot be created",
        ),
        ({"ORCH_ECS_REGION": "eu west 1"}, "ecs.region: 'eu west 1' is not a region name (e.g. us-east-1)"),
    ],
)
def test_config_makes_the_checks_run_makes_and_both_exit_2(
    env: dict[str, str], problem: str, tmp_path: Path
) -> None:
    env = {
        "ORCH_LOCAL_STATE_DIR": str(tmp_path),
        **env,
        "ORCH_BROKER_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:1/%2F",
    }
    for command in ("config", "run"):
        result = orchestrator(command, env=env)
        assert result.returncode == cli.EXIT_INVALID, (command, result.stderr)
        assert one_line(result).startswith(f"❌ config: {problem}"), (command, result.stderr)


# --- run -----------------------------------------------------------------------------------------


def run_with_its_port_taken(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``orchestrator run`` that starts, fails to serve /health (the port is taken) and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = orchestrator(
            *args,
            env={
                "ORCH_HTTP_HOST": "127.0.0.1",
                "ORCH_HTTP_PORT": str(port),
                "ORCH_BROKER_URL": f"amqp://guest:{PASSWORD}@127.0.0.1:1/%2F",
                "ORCH_REDIS_URL": "redis://127.0.0.1:1/0",
                **env,
            },
        )
    assert result.returncode == cli.EXIT_FAILURE, result.stdout + result.stderr
    assert f"cannot serve /health on 127.0.0.1:{port}" in result.stdout + result.stderr
    return result


def test_run_without_a_config_warns_once_which_defaults_it_uses(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run_with_its_port_taken("run", env={"ORCH_LOCAL_STATE_DIR": str(state)})
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "built-in defaults" in line]
    assert len(warnings) == 1, output
    [warning] = warnings
    assert "⚠️" in warning
    assert "broker amqp://" in warning and "@127.0.0.1:1/%2F" in warning
    assert "execute queue execute.queue" in warning
    assert f"local state dir {state}" in warning
    assert "HTTP port 127.0.0.1:" in warning


def test_run_with_a_config_does_not_warn(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.ini"
    config.write_text(f"[local]\nstate_dir = {tmp_path / 'state'}\n")
    result = run_with_its_port_taken("run", "--config", str(config), env={})
    assert "built-in defaults" not in result.stdout + result.stderr


# --- where run's log lines go ----------------------------------------------------------------------


def test_run_writes_every_log_line_to_stdout_warnings_and_errors_too(tmp_path: Path) -> None:
    result = run_with_its_port_taken("run", env={"ORCH_LOCAL_STATE_DIR": str(tmp_path / "state")})
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    # (the logger is __main__ under ``python -m orchestrator.cli``)
    assert any(" WARNING " in line and "⚠️ no --config: built-in defaults" in line for line in lines)
    assert any(" ERROR orchestrator.app ❌ start-up failed: cannot serve /health" in line for line in lines)
    assert any(" INFO orchestrator.runtime.supervisor 🔄 starting " in line for line in lines)


def test_run_with_log_stream_stderr_writes_its_log_lines_there(tmp_path: Path) -> None:
    result = run_with_its_port_taken(
        "run", "--log-stream", "stderr", env={"ORCH_LOCAL_STATE_DIR": str(tmp_path / "state")}
    )
    assert result.stdout == ""
    assert "❌ start-up failed: cannot serve /health" in result.stderr


def test_run_json_log_lines_carry_an_rfc3339_utc_timestamp(tmp_path: Path) -> None:
    # Given a local time zone far from UTC (a POSIX TZ string: no tzdata needed)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = run_with_its_port_taken(
        "--log-format", "json", "run", env={"ORCH_LOCAL_STATE_DIR": str(tmp_path / "state"), "TZ": "IST-5:30"}
    )
    after = dt.datetime.now(dt.UTC)
    assert result.stderr == ""
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(docs) > 3
    for doc in docs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["ts"]), doc
        assert before <= dt.datetime.fromisoformat(doc["ts"]) <= after, doc  # UTC, not local time
        assert doc["level"] in ("INFO", "WARNING", "ERROR") and doc["logger"] and doc["msg"]
    [failure] = [doc for doc in docs if doc["msg"].startswith("start-up failed")]
    assert (failure["level"], failure["emoji"]) == ("ERROR", "❌")
