"""``orchestrator run`` as a real process: signals, draining, exit codes."""

from __future__ import annotations

import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from orchestrator.app import EXIT_OK, EXIT_RESTART_BUDGET_EXCEEDED, EXIT_STARTUP_FAILED

from .helpers import ORCHESTRATOR_COMMAND, OrchestratorProcess, get_health, write_config
from .helpers import start_process as start

EXIT_TIMEOUT = 30.0


def _healthy(port: int) -> tuple[int, dict[str, Any]] | None:
    status, body = get_health(port)
    return (status, body) if status == 200 else None


def config_file(tmp_path: Path, port: int = 0, drain_seconds: float = 5.0) -> Path:
    # No unhealthy hold here: test_unhealthy_hold.py is about it, these tests about the rest.
    return write_config(
        tmp_path / "orchestrator.ini",
        {
            "http": {"host": "127.0.0.1", "port": port},
            "shutdown": {"drain_seconds": drain_seconds, "unhealthy_hold_seconds": 0},
            "supervision": {
                "restart_budget": 3,
                "restart_backoff_seconds": 0.05,
                "restart_backoff_max_seconds": 0.2,
                "ping_interval_seconds": 0.2,
            },
        },
    )


def sample_app(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "tests.runtime.sample_app", *args)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_real_command_serves_health_logs_stacks_on_sigusr1_and_drains_on_a_stop_signal(
    tmp_path: Path, processes: list[OrchestratorProcess], stop_signal: signal.Signals
) -> None:
    orchestrator = start(
        processes, tmp_path, str(ORCHESTRATOR_COMMAND), "run", "--config", str(config_file(tmp_path))
    )
    port = orchestrator.wait_for_port()
    status, body = wait_until(lambda: _healthy(port), timeout=30, what="/health 200 once connected")
    assert (status, body["status"]) == (200, "ok")
    assert set(body["actors"]) == {
        "instance_lease",
        "publisher",
        "timeout_monitor",
        "dispatcher.local",
        "rate_limiter",
        "validator",
        "queue_listener",
    }
    assert {actor["state"] for actor in body["actors"].values()} == {"running"}
    assert body["dependencies"]["broker"]["ok"] is True

    orchestrator.signal(signal.SIGUSR1)
    orchestrator.wait_for_log(r"stacks of \d+ threads \(SIGUSR1\)")
    orchestrator.wait_for_log(r"--- thread MainThread")
    orchestrator.wait_for_log(r"--- thread supervisor-monitor")
    assert orchestrator.process.poll() is None  # SIGUSR1 does not stop it

    orchestrator.signal(stop_signal)

    assert orchestrator.wait(EXIT_TIMEOUT) == EXIT_OK
    log = orchestrator.log
    assert f"🔄 {stop_signal.name} received: draining" in log
    assert "✅ stopped (exit code 0)" in log
    assert "Traceback" not in log


def test_a_slow_drain_answers_503_draining_until_done_then_exits_0(
    tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    # Given an actor that needs about a second to drain
    orchestrator = start(
        processes, tmp_path, *sample_app("--config", str(config_file(tmp_path)), "--slow-drain", "1")
    )
    port = orchestrator.wait_for_port()
    wait_until(lambda: get_health(port)[0] == 200, what="a healthy process")

    # When
    started = time.monotonic()
    orchestrator.signal(signal.SIGTERM)

    # Then the load balancer is told to go away while it drains, and it exits cleanly after the drain
    def draining() -> int | None:
        status, body = get_health(port)
        return status if body["status"] == "draining" else None

    assert wait_until(draining, what="/health to say draining") == 503
    assert orchestrator.wait(EXIT_TIMEOUT) == EXIT_OK
    assert 0.9 < time.monotonic() - started < EXIT_TIMEOUT
    assert float(orchestrator.wait_for_log(r"✅ drained in (\d+\.\d) s").group(1)) >= 0.9
    assert "✅ stopped slow_drainer" in orchestrator.log


def test_an_actor_past_its_restart_budget_makes_the_process_exit_non_zero(
    tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    orchestrator = start(
        processes, tmp_path, *sample_app("--config", str(config_file(tmp_path)), "--crashing")
    )

    assert orchestrator.wait(EXIT_TIMEOUT) == EXIT_RESTART_BUDGET_EXCEEDED

    log = orchestrator.log
    for restart in (1, 2, 3):
        assert f"❌ crasher crashed (restart {restart} in" in log
    assert "❌ crasher exceeded its restart budget (3 restarts in 60 s), giving up" in log
    assert "actor crasher exceeded its restart budget: draining" in log
    assert "❌ stopped (exit code 3)" in log


def test_a_port_in_use_fails_the_start_up_with_exit_1(
    tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_file(tmp_path, port=port)
        orchestrator = start(processes, tmp_path, str(ORCHESTRATOR_COMMAND), "run", "--config", str(config))

        assert orchestrator.wait(EXIT_TIMEOUT) == EXIT_STARTUP_FAILED
    assert f"❌ start-up failed: cannot serve /health on 127.0.0.1:{port}" in orchestrator.log
