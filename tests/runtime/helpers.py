"""HTTP with urllib and running the orchestrator as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from support import unique, wait_until

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ORCHESTRATOR_COMMAND = VENV_BIN / "orchestrator"
PORT_LINE = re.compile(r"/health and /metrics on http://[^:]+:(\d+)")


def http_get(url: str, method: str = "GET", timeout: float = 5.0) -> tuple[int, bytes, dict[str, str]]:
    """``(status, body, headers)`` of one request; 4xx/5xx are returned, not raised."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read(), dict(e.headers)


def get_health(port: int) -> tuple[int, dict[str, Any]]:
    """``(status, JSON body)`` of ``GET /health`` on localhost."""
    status, body, _ = http_get(f"http://127.0.0.1:{port}/health")
    return status, json.loads(body)


def health_or_none(port: int) -> tuple[int, dict[str, Any]] | None:
    """Like :func:`get_health`, but None while nothing listens."""
    try:
        return get_health(port)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def healthy_or_none(port: int) -> tuple[int, dict[str, Any]] | None:
    """:func:`get_health` once it answers 200 (the process has connected to what it needs), else None."""
    answer = health_or_none(port)
    return answer if answer is not None and answer[0] == 200 else None


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without ``ORCH_*`` overrides, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(extra)
    return env


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write an INI config file for a test process.

    The pipeline runs in every ``orchestrator run``, so the file always names queues, channels and
    keys of this test alone (``sections`` can still override any key).
    """
    base = unique("app")
    merged: dict[str, dict[str, object]] = {
        "broker": {
            "exchange": f"{base}.x",
            "execute_queue": f"{base}.execute",
            "dlq": f"{base}.dlq",
            "retry_queue_prefix": f"{base}.retry",
            "queue_type": "classic",
        },
        "status": {"queue": f"{base}.status", "redis_channel": f"{base}.status"},
        "redis": {"key_prefix": base},
        "local": {"state_dir": str(path.parent / "state")},
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in merged.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class OrchestratorProcess:
    """A real orchestrator process whose log goes to a file the test can read."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            list(argv), cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env or clean_environ()
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = regex.search(self.log)
            if match is None and self.process.poll() is not None:
                raise AssertionError(
                    f"process exited ({self.process.returncode}) before {pattern!r}:\n{self.log}"
                )
            return match

        return wait_until(found, timeout, f"{pattern!r} in the log")

    def wait_for_port(self, timeout: float = 15.0) -> int:
        return int(self.wait_for_log(PORT_LINE.pattern, timeout).group(1))

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


def start_process(processes: list[OrchestratorProcess], tmp_path: Path, *argv: str) -> OrchestratorProcess:
    """Start ``argv`` as an :class:`OrchestratorProcess` logging under ``tmp_path``; kept in ``processes``."""
    process = OrchestratorProcess(argv, tmp_path / f"orchestrator-{len(processes)}.log")
    processes.append(process)
    return process
