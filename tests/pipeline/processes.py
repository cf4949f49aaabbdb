"""Real ``orchestrator run`` processes for tests that kill things."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
from support import WaitTimeoutError, free_port, wait_until

from orchestrator.config import Config

BIN = Path(sys.executable).parent


def config_environment(config: Config) -> dict[str, str]:
    """``ORCH_*`` variables that make a process use ``config``'s sections (types excepted)."""
    env: dict[str, str] = {}
    for section, values in msgspec.to_builtins(config).items():
        if section == "types":
            continue
        for key, value in values.items():
            if value is None:
                text = "off"
            elif isinstance(value, list | tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"ORCH_{section.upper()}_{key.upper()}"] = text
    return env


class OrchestratorProcess:
    """One ``orchestrator run`` subprocess, its log in ``log_path``, /health on its own port."""

    def __init__(self, config: Config, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env.update(config_environment(config))
        env.update(extra_env or {})
        env["ORCH_HTTP_PORT"] = str(self.port)
        env["ORCH_HTTP_HOST"] = "127.0.0.1"
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OrchestratorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "orchestrator"), "run"], env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until /health answers 200; fail at once if the process exits, with its log either way."""
        process = self.process
        assert process is not None

        def healthy_or_exited() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"orchestrator exited with {process.returncode}:\n{self.log()}")
            return self.healthy()

        try:
            wait_until(healthy_or_exited, timeout, f"/health on port {self.port} to answer 200", interval=0.1)
        except WaitTimeoutError as e:
            raise WaitTimeoutError(f"{e}\n{self.log()}") from None

    @property
    def pid(self) -> int:
        """The process id (started processes only)."""
        assert self.process is not None
        return int(self.process.pid)

    def connection_fragment(self) -> str:
        """What identifies this process's broker connections in ``rabbitmqctl list_connections``
        (every connection is named ``... <host> pid=<pid> <suffix>``)."""
        return f"{socket.gethostname()} pid={self.pid} "

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the process stalls (no thread runs, its sockets stay open) until :meth:`resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def metrics(self) -> str | None:
        """The text of ``GET /metrics``; None when the process does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, OSError):
            return None

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]
