"""A real supervisord runs the project's own ``[program:orchestrator]`` section.

The section is read from supervisor.conf with configparser and only what must differ on a test machine
is rewritten: the command's paths (venv, config file), the health port (keeping its
``%(process_num)02d`` template), the log paths, ``numprocs`` (1) and ``user`` (whoever runs the tests).
Everything else (autorestart, startsecs, stopsignal, stopwaitsecs, stopasgroup, ...) is the project's.
"""

from __future__ import annotations

import configparser
import getpass
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until

from .helpers import (
    ORCHESTRATOR_COMMAND,
    REPO_ROOT,
    VENV_BIN,
    clean_environ,
    health_or_none,
    healthy_or_none,
    write_config,
)

pytestmark = pytest.mark.slow

PROJECT_CONF = REPO_ROOT / "supervisor.conf"
SECTION = "program:orchestrator"
PROCESS = "orchestrator:orchestrator_00"
PORT_TEMPLATE = re.compile(r'ORCH_HTTP_PORT="(\d+)%\(process_num\)02d"')
CTL_TIMEOUT = 30.0
#: shutdown.unhealthy_hold_seconds of the test's config: short, but long enough to see in the stop time.
HOLD_SECONDS = 3.0
#: Ports tried for the health port: multiples of 100, so "<port // 100>%(process_num)02d" gives it.
PORT_CANDIDATES = range(20000, 60000, 100)


def free_port_ending_in_00() -> int:
    for port in PORT_CANDIDATES:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port ending in 00")


def project_program_section() -> dict[str, str]:
    parser = configparser.RawConfigParser()  # raw: %(process_num)s is supervisord's to expand
    assert parser.read(PROJECT_CONF) == [str(PROJECT_CONF)]
    return dict(parser[SECTION])


def with_test_overrides(section: dict[str, str], config: Path, port: int, log_dir: Path) -> dict[str, str]:
    """The project's section with only paths, port, log paths, numprocs and user replaced."""
    argv = shlex.split(section["command"])
    assert Path(argv[0]).name == "orchestrator"
    assert argv[1:3] == ["run", "--config"]
    argv[0], argv[3] = str(ORCHESTRATOR_COMMAND), str(config)
    assert PORT_TEMPLATE.search(section["environment"]), "the health port must depend on process_num"
    overridden = dict(section)
    overridden["command"] = shlex.join(argv)
    overridden["environment"] = PORT_TEMPLATE.sub(
        f'ORCH_HTTP_PORT="{port // 100}%(process_num)02d"', section["environment"]
    )
    overridden["numprocs"] = "1"
    overridden["user"] = getpass.getuser()
    for key in ("stdout_logfile", "stderr_logfile"):
        if key in section:
            overridden[key] = str(log_dir / Path(section[key]).name)
    return overridden


class Supervisord:
    def __init__(self, directory: Path, program: dict[str, str]) -> None:
        self.directory = directory
        self.conf = directory / "supervisord.conf"
        self.log = directory / "supervisord.log"
        conf = configparser.RawConfigParser()
        socket_path = directory / "s.sock"
        conf["unix_http_server"] = {"file": str(socket_path)}
        conf["supervisord"] = {
            "logfile": str(self.log),
            "pidfile": str(directory / "supervisord.pid"),
            "childlogdir": str(directory),
            "nodaemon": "true",
            "loglevel": "info",
        }
        conf["rpcinterface:supervisor"] = {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
        }
        conf["supervisorctl"] = {"serverurl": f"unix://{socket_path}"}
        conf[SECTION] = program
        with self.conf.open("w", encoding="utf-8") as f:
            conf.write(f)
        self.process = subprocess.Popen(
            [str(VENV_BIN / "supervisord"), "-c", str(self.conf)],
            env=clean_environ(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=CTL_TIMEOUT,
            env=clean_environ(),
            check=False,
        )
        return result.stdout + result.stderr

    def state(self) -> str:
        fields = self.ctl("status", PROCESS).split()
        return fields[1] if len(fields) > 1 else ""

    def pid(self) -> int:
        return int(self.ctl("pid", PROCESS).strip())

    def shutdown(self) -> None:
        if self.process.poll() is None:
            self.ctl("shutdown")
            try:
                self.process.wait(timeout=CTL_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=CTL_TIMEOUT)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # A unix socket path must stay under ~100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sv-") as directory:
        yield Path(directory)


def test_supervisord_runs_restarts_and_stops_the_project_program(short_tmp: Path) -> None:
    # Given the project's program section, with test paths and a free port
    section = project_program_section()
    stopwaitsecs = int(section["stopwaitsecs"])
    config = write_config(
        short_tmp / "orchestrator.ini",
        {
            "http": {"host": "127.0.0.1"},
            "shutdown": {"drain_seconds": 2, "unhealthy_hold_seconds": HOLD_SECONDS},
        },
    )
    port = free_port_ending_in_00()
    program = with_test_overrides(section, config, port, short_tmp)
    supervisord = Supervisord(short_tmp, program)
    try:
        # When supervisord starts it, /health answers
        assert wait_until(lambda: healthy_or_none(port), timeout=30, what="/health")[0] == 200
        wait_until(lambda: supervisord.state() == "RUNNING", timeout=30, what="RUNNING (after startsecs)")
        first_pid = supervisord.pid()

        # When the process is killed with -9, supervisord starts a new one that answers again
        killed_at = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        wait_until(
            lambda: health_or_none(port) is None, timeout=10, what="the killed process to stop answering"
        )
        status, _ = wait_until(lambda: healthy_or_none(port), timeout=30, what="/health 200 after kill -9")
        recovery = time.monotonic() - killed_at
        print(f"\nkill -9 -> /health answering {status} again: {recovery:.2f} s")
        assert status == 200
        assert supervisord.pid() != first_pid
        wait_until(lambda: supervisord.state() == "RUNNING", timeout=30, what="RUNNING again")

        # When it is stopped, it drains, holds /health at 503 and exits 0 well within stopwaitsecs
        # (its log lines, stderr's too, are in the program's .out.log: every one on stdout)
        assert program["redirect_stderr"] == "true"
        process_log_path = Path(
            program["stdout_logfile"] % {"program_name": "orchestrator", "process_num": 0}
        )
        assert process_log_path.name == "orchestrator_00.out.log"
        running_lines = process_log_path.read_text(encoding="utf-8").count("✅ orchestrator")
        assert running_lines == 2  # the first process and its replacement
        stop_started = time.monotonic()
        output = supervisord.ctl("stop", PROCESS)
        stop_took = time.monotonic() - stop_started
        print(f"supervisorctl stop took {stop_took:.2f} s (stopwaitsecs={stopwaitsecs})")

        # Then
        assert "stopped" in output
        assert HOLD_SECONDS <= stop_took < stopwaitsecs
        assert supervisord.state() == "STOPPED"
        supervisord_log = supervisord.log.read_text(encoding="utf-8")
        assert "exited: orchestrator_00 (terminated by SIGKILL; not expected)" in supervisord_log
        assert "stopped: orchestrator_00 (exit status 0)" in supervisord_log
        process_log = process_log_path.read_text(encoding="utf-8")
        assert "🔄 SIGTERM received: draining" in process_log
        assert "✅ drained" in process_log
        assert "holding /health at 503 for" in process_log
        assert process_log.rstrip().endswith("✅ stopped (exit code 0)")
    finally:
        supervisord.shutdown()
