"""Real ``orchestrator run`` processes for tests that kill things."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec

from orchestrator.config import Config

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        deadline = time.monotonic() + timeout
        while not self.healthy():
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"orchestrator exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"/health not 200 within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

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
