"""Throwaway RabbitMQ and Redis servers that a scenario may stop, kill and start again.

The shared services (RabbitMQ on 5672, Redis on 6379) are never restarted: other tests and other
engineers use them. A scenario that takes the broker or Redis down starts its own on free ports, in
its own temporary directory, and stops it at the end.

RabbitMQ runs from its own scripts directory (``/usr/lib/rabbitmq/bin`` on Debian and Ubuntu), not
through the ``/usr/sbin`` wrappers, which switch to the ``rabbitmq`` user (who cannot write our
temporary directory) and read the system's ``rabbitmq-env.conf`` (which names the shared node). The
node gets its own name, ports, data and log directories, an empty plugin list and config files, and
its own ``HOME``, where Erlang creates the cookie that ``rabbitmqctl`` (run with the same ``HOME``)
then presents. It registers with the host's ``epmd`` like any node (Erlang starts one if none runs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Final

import pika
import redis
from support import WaitTimeoutError, free_port, wait_until

RABBIT_START_SECONDS: Final = 60.0
RABBIT_STOP_SECONDS: Final = 30.0
REDIS_START_SECONDS: Final = 10.0
#: Where RabbitMQ's own scripts are looked for (the first with both scripts is used).
RABBIT_SCRIPT_DIRS: Final = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin", "/opt/rabbitmq/sbin")


class ServiceUnavailableError(Exception):
    """A throwaway service could not be started (the scenario is skipped, with this reason)."""


def _end_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)


def rabbit_scripts() -> Path | None:
    """The directory of ``rabbitmq-server`` and ``rabbitmqctl`` that run as the current user."""
    candidates = [Path(d) for d in RABBIT_SCRIPT_DIRS]
    found = shutil.which("rabbitmq-server")
    if found:
        candidates.append(Path(found).parent)
    for directory in candidates:
        if (directory / "rabbitmq-server").is_file() and (directory / "rabbitmqctl").is_file():
            return directory
    return None


class ThrowawayRabbit:
    """A RabbitMQ node of its own on free ports; its data survives :meth:`stop` and :meth:`start`.

    Args:
        base: an empty directory for its data, logs, config and ``HOME``.
    """

    def __init__(self, base: Path) -> None:
        scripts = rabbit_scripts()
        if scripts is None:
            raise ServiceUnavailableError(
                "RabbitMQ's rabbitmq-server and rabbitmqctl scripts are not installed"
            )
        self._scripts = scripts
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"rabbit-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        home = base / "home"
        home.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        self._env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.log_path = base / "server.out"
        self._process: subprocess.Popen[bytes] | None = None

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <this node> args...`` with this node's cookie."""
        return subprocess.run(
            [str(self._scripts / "rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def accepts(self) -> bool:
        """Whether an AMQP client can connect now."""
        try:
            params = pika.URLParameters(self.url)
            params.connection_attempts = 1
            params.socket_timeout = 2
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def start(self, timeout: float = RABBIT_START_SECONDS) -> float:
        """Start the node and wait until it accepts AMQP clients; returns the seconds it took.

        Raises:
            ServiceUnavailableError: it did not within ``timeout`` (it is stopped again).
        """
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self._scripts / "rabbitmq-server")],
                env=self._env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process = self._process
        with contextlib.suppress(WaitTimeoutError):  # not accepting is reported just below
            wait_until(
                lambda: process.poll() is not None or self.accepts(),
                timeout,
                f"RabbitMQ node {self.node} to accept clients or exit",
                interval=0.2,
            )
        if not self.accepts():
            self.stop()
            tail = self.log_path.read_text(errors="replace")[-1500:]
            raise ServiceUnavailableError(
                f"RabbitMQ node {self.node} did not accept clients within {timeout:.0f} s:\n{tail}"
            )
        return time.monotonic() - began

    def stop(self, timeout: float = RABBIT_STOP_SECONDS) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``), its data kept; kill it if that fails."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ctl("stop", timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        _end_group(process, 10)


class ThrowawayRedis:
    """A ``redis-server`` of its own, with no persistence: killing it loses every key."""

    def __init__(self, base: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceUnavailableError("redis-server is not installed")
        self._binary = binary
        base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = base / "redis.out"
        self._process: subprocess.Popen[bytes] | None = None

    def answers(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = REDIS_START_SECONDS) -> None:
        """Start a fresh, empty server on :attr:`port`.

        Raises:
            ServiceUnavailableError: it did not answer within ``timeout``.
        """
        argv = [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--daemonize", "no"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            wait_until(self.answers, timeout, f"redis-server on port {self.port} to answer", interval=0.05)
        except WaitTimeoutError:
            self.kill()
            raise ServiceUnavailableError(
                f"redis-server on port {self.port} did not answer within {timeout:.0f} s"
            ) from None

    def kill(self) -> None:
        """SIGKILL: every key is lost, every client sees its connection drop."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
