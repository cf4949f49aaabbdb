"""The installed ``orchestrator`` command, run as a subprocess the way a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import __version__, cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))
ATTACKS = sorted((ROOT / "examples" / "invalid").glob("*.json"))
# The venv's bin directory as the interpreter sees it (not resolved: the venv's python is a symlink).
COMMAND = shutil.which("orchestrator", path=str(Path(sys.executable).parent))
SECRET = "s3cr3t-Br0ker-pw"
RUN_TIMEOUT = 60


def run(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed command with a clean ``ORCH_*`` environment plus ``env``."""
    assert COMMAND is not None, f"no orchestrator command next to {sys.executable}; pip install -e . first"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    environ.update(env or {})
    done = subprocess.run(
        [COMMAND, *args],
        input=stdin,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        env=environ,
        cwd=cwd or ROOT,
        check=False,
    )
    out = subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def test_the_examples_exist() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"build.json", "deploy.json", "test.json", "stop.json"} <= names
    assert len(ATTACKS) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_validate_prints_the_normalised_job(path: Path, tmp_path: Path) -> None:
    result = run("validate", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    original = json.loads(path.read_text())
    assert job["type"] == original["type"]
    assert job["deploymentId"] == original["deploymentId"]
    if "portNumber" in original:
        assert job["portNumber"] == int(original["portNumber"])


@pytest.mark.parametrize("path", ATTACKS, ids=lambda p: p.name)
def test_validate_rejects_attacks_with_reasons_on_stderr(path: Path) -> None:
    result = run("validate", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines
    known = {"message", "type", *json.loads(path.read_text())}
    for line in lines:
        assert line.startswith("❌ "), line
        assert line[2:].split(":", 1)[0] in known, line


def test_credentials_are_not_echoed_by_validate() -> None:
    result = run("validate", str(ROOT / "examples" / "invalid" / "credentials-in-url.json"))
    assert result.returncode == 2
    assert result.stderr == "❌ repository: must not contain credentials (user-info in the URL)\n"


def test_validate_reads_standard_input() -> None:
    good = run("validate", "-", stdin=(ROOT / "examples" / "build.json").read_bytes())
    assert good.returncode == 0
    assert json.loads(good.stdout)["portNumber"] == 3000
    bad = run(
        "validate", "-", stdin=b'{"type": "build", "deploymentId": "d", "repository": "x", "branch": "../x"}'
    )
    assert bad.returncode == 2
    assert "❌ branch: '../x' is not a valid git ref name (contains '..')" in bad.stderr.splitlines()


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        (b"x" * 70000, "❌ message: 70000 bytes exceeds the limit of 65536"),
        (b"\xff\xfe", "❌ message: is not valid UTF-8 (bad byte at offset 0)"),
        (b"{not json", "❌ message: is not valid JSON"),
        (b"[1, 2]", "❌ message: expected a JSON object, got an array"),
        (b"", "❌ message: is empty"),
    ],
)
def test_validate_rejects_what_is_not_a_job(stdin: bytes, reason: str) -> None:
    result = run("validate", "-", stdin=stdin)
    assert result.returncode == 2
    assert result.stderr.startswith(reason)
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("name", ["missing.json", "."])
def test_validate_of_an_unreadable_file_is_one_clear_line(name: str, tmp_path: Path) -> None:
    result = run("validate", name, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"❌ cannot read {name}: ")


def test_validate_uses_the_validation_config(tmp_path: Path) -> None:
    job = b'{"type": "build", "deploymentId": "d1", "repository": "file:///srv/git/app"}'
    refused = run("validate", "-", stdin=job)
    assert refused.returncode == 2
    assert "allow_file_repos is off" in refused.stderr
    allowed = run("validate", "-", stdin=job, env={"ORCH_VALIDATION_ALLOW_FILE_REPOS": "true"})
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["repository"] == "file:///srv/git/app"

    config = tmp_path / "orchestrator.ini"
    config.write_text("[validation]\nallowed_hosts = git.example.org:8443\nforbid_unknown_fields = yes\n")
    own_host = (
        b'{"type": "test", "deploymentId": "d2", "repository": "https://git.example.org:8443/a/b", "x": 1}'
    )
    result = run("validate", "--config", str(config), "-", stdin=own_host)
    assert result.returncode == 2
    assert result.stderr == "❌ x: unknown field for a test job (validation.forbid_unknown_fields is on)\n"


def test_config_prints_the_effective_config_redacted() -> None:
    result = run(
        "config",
        env={
            "ORCH_BROKER_URL": f"amqp://builder:{SECRET}@rabbit.internal:5672/%2F",
            "ORCH_REDIS_URL": f"redis://:{SECRET}@cache.internal:6379/0",
        },
    )
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    printed = json.loads(result.stdout)
    assert printed["broker"]["url"] == "amqp://builder:***@rabbit.internal:5672/%2F"
    assert printed["redis"]["url"] == "redis://:***@cache.internal:6379/0"
    assert printed["validation"]["allowed_hosts"] == ["github.com", "gitlab.com", "bitbucket.org"]


def test_bad_config_reports_every_error(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.ini"
    config.write_text("[broker]\nprefetc = 3\n[validation]\nmax_message_bytes = big\n[http]\nport = 70000\n")
    result = run("config", "--config", str(config), env={"ORCH_LAUNCHER_DEFAULT": "kubernetes"})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert all(line.startswith("❌ config: ") for line in lines), lines
    text = result.stderr
    assert "broker.prefetc: unknown key (did you mean 'prefetch'?)" in text
    assert "validation.max_message_bytes: expected a whole number (got 'big')" in text
    assert "http.port: must be 0-65535 (got 70000)" in text
    assert "launcher.default: expected one of local, fargate, ec2 (got 'kubernetes')" in text
    assert len(lines) == 4


def test_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    result = run("config", "--config", str(tmp_path / "nope.ini"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "cannot read config file" in result.stderr


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"orchestrator {__version__}"


@pytest.mark.parametrize(
    ("argv", "stream"),
    [
        (["run"], "stdout"),
        (["validate", "x.json"], "stderr"),
        (["config"], "stderr"),
        (["submit", "x.json"], "stderr"),
        (["--log-stream", "stderr", "run"], "stderr"),
        (["run", "--log-stream", "stderr"], "stderr"),
        (["config", "--log-stream", "stdout"], "stdout"),
    ],
)
def test_log_lines_go_to_stdout_for_run_and_to_stderr_for_commands_whose_stdout_is_their_result(
    argv: list[str], stream: str
) -> None:
    assert cli._log_stream(cli.build_parser().parse_args(argv)) == stream
