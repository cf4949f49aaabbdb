"""``shutdown.unhealthy_hold_seconds``: after SIGTERM, /health answers 503 (not a refused connection)
long enough for the load balancer to see the process leave, even when nothing is in flight.

The process tests run the real ``orchestrator run`` (or the sample app, for a slow drain or a crashing
actor) and poll /health over HTTP while they signal it.
"""

from __future__ import annotations

import configparser
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from orchestrator import http
from orchestrator.app import EXIT_OK, EXIT_RESTART_BUDGET_EXCEEDED, STOP_TIMEOUT_SECONDS
from orchestrator.config import load_config
from orchestrator.config.schema import (
    DEFAULT_DRAIN_SECONDS,
    DEFAULT_UNHEALTHY_HOLD_SECONDS,
    LB_HEALTH_CHECK_INTERVAL_SECONDS,
    LB_HEALTH_CHECK_TIMEOUT_SECONDS,
    LB_UNHEALTHY_THRESHOLD,
)
from orchestrator.errors import ConfigError

from .helpers import (
    ORCHESTRATOR_COMMAND,
    REPO_ROOT,
    OrchestratorProcess,
    health_or_none,
    healthy_or_none,
    write_config,
)
from .helpers import (
    start_process as start,
)

#: The hold of the process tests: long enough for many polls, short enough for a quick test.
HOLD_SECONDS = 1.5
#: A hold no test waits for: only a second signal (or no hold at all) ends the process in time.
LONG_HOLD_SECONDS = 120.0
#: Between two polls of /health.
POLL_SECONDS = 0.05
#: "At once": /health must say 503 this soon after SIGTERM (the main thread wakes from its wait).
FIRST_503_WITHIN_SECONDS = 0.5
#: After the hold (or a second signal): stopping the idle actors and the HTTP server.
EXIT_WITHIN_SECONDS = 15.0
#: Start-up to /health 200 (broker connected).
HEALTHY_WITHIN_SECONDS = 30.0


@dataclass(frozen=True)
class Poll:
    """One ``GET /health``: when it started and ended (seconds after the signal) and the answer."""

    started: float
    ended: float
    answer: tuple[int, dict[str, Any]] | None  # None: refused (or no answer at all)


def config_file(tmp_path: Path, hold_seconds: float, drain_seconds: float = 5.0) -> Path:
    return write_config(
        tmp_path / "orchestrator.ini",
        {
            "http": {"host": "127.0.0.1", "port": 0},
            "shutdown": {"drain_seconds": drain_seconds, "unhealthy_hold_seconds": hold_seconds},
            "supervision": {
                "restart_budget": 3,
                "restart_backoff_seconds": 0.05,
                "restart_backoff_max_seconds": 0.2,
                "ping_interval_seconds": 0.2,
            },
        },
    )


def run_command(config: Path) -> tuple[str, ...]:
    return (str(ORCHESTRATOR_COMMAND), "run", "--config", str(config))


def sample_app(config: Path, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "tests.runtime.sample_app", "--config", str(config), *args)


def start_healthy(
    processes: list[OrchestratorProcess], tmp_path: Path, *argv: str
) -> tuple[OrchestratorProcess, int]:
    process = start(processes, tmp_path, *argv)
    port = process.wait_for_port()
    wait_until(lambda: healthy_or_none(port), timeout=HEALTHY_WITHIN_SECONDS, what="/health 200")
    return process, port


def poll_until_exit(process: OrchestratorProcess, port: int, signalled: float, bound: float) -> list[Poll]:
    """Poll /health every :data:`POLL_SECONDS` until the process exits (or ``bound`` s after the signal)."""
    polls: list[Poll] = []
    while process.process.poll() is None and time.monotonic() - signalled < bound:
        started = time.monotonic() - signalled
        answer = health_or_none(port)
        polls.append(Poll(started, time.monotonic() - signalled, answer))
        time.sleep(POLL_SECONDS)
    return polls


def test_after_sigterm_with_nothing_in_flight_health_answers_503_for_the_whole_hold_then_exit_0(
    tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    # Given an idle orchestrator with a short hold
    orchestrator, port = start_healthy(processes, tmp_path, *run_command(config_file(tmp_path, HOLD_SECONDS)))

    # When it gets SIGTERM while the load balancer polls /health
    signalled = time.monotonic()
    orchestrator.signal(signal.SIGTERM)
    polls = poll_until_exit(orchestrator, port, signalled, HOLD_SECONDS + EXIT_WITHIN_SECONDS)
    code = orchestrator.wait(timeout=EXIT_WITHIN_SECONDS)
    exited_after = time.monotonic() - signalled

    # Then /health never refused a connection before the hold was over: it answered, and 503 at once
    in_hold = [p for p in polls if p.ended < HOLD_SECONDS]
    refused = [p for p in in_hold if p.answer is None]
    assert not refused, f"connection refused {refused[0].ended:.2f} s into a {HOLD_SECONDS} s hold"
    first_503 = next(p for p in polls if p.answer is not None and p.answer[0] == 503)
    assert first_503.ended < FIRST_503_WITHIN_SECONDS
    late = [p for p in in_hold if p.started >= first_503.ended]
    assert late and all(p.answer is not None and p.answer[0] == 503 for p in late)
    assert all(p.answer is not None and p.answer[1]["status"] == "draining" for p in late)
    assert len(late) >= 10, f"only {len(late)} polls during the hold"
    assert any(p.started >= 0.8 * HOLD_SECONDS for p in late), "answering 503 late into the hold"
    # And the drain was over long before (nothing in flight): the hold, not the drain, kept it up
    drained_in = float(orchestrator.wait_for_log(r"✅ drained in (\d+\.\d) s").group(1))
    assert drained_in < HOLD_SECONDS / 2
    assert "holding /health at 503 for" in orchestrator.log
    # And it exited 0 after the hold, within the bound
    assert code == EXIT_OK
    assert HOLD_SECONDS <= exited_after < HOLD_SECONDS + EXIT_WITHIN_SECONDS
    assert orchestrator.log.rstrip().endswith("✅ stopped (exit code 0)")
    assert "Traceback" not in orchestrator.log
    print(
        f"\nSIGTERM -> first 503 after {first_503.ended:.3f} s; {len(late)} polls answered 503 during the "
        f"{HOLD_SECONDS} s hold; drained in {drained_in} s; exited 0 after {exited_after:.2f} s"
    )


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_during_the_hold_exits_at_once(
    tmp_path: Path, processes: list[OrchestratorProcess], second: signal.Signals
) -> None:
    # Given a process holding /health at 503 after SIGTERM
    config = config_file(tmp_path, LONG_HOLD_SECONDS)
    orchestrator, port = start_healthy(processes, tmp_path, *run_command(config))
    orchestrator.signal(signal.SIGTERM)
    orchestrator.wait_for_log(r"holding /health at 503 for \d+\.\d s more")
    answer = health_or_none(port)
    assert answer is not None and answer[0] == 503

    # When the operator signals again
    signalled = time.monotonic()
    orchestrator.signal(second)

    # Then it exits 0 at once instead of holding for the rest of the hold
    assert orchestrator.wait(timeout=EXIT_WITHIN_SECONDS) == EXIT_OK
    assert time.monotonic() - signalled < EXIT_WITHIN_SECONDS < LONG_HOLD_SECONDS / 2
    assert f"{second.name} received during the unhealthy hold: exiting now" in orchestrator.log
    assert orchestrator.log.rstrip().endswith("✅ stopped (exit code 0)")


def test_a_second_sigterm_while_draining_skips_the_hold_but_not_the_drain(
    tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    # Given an actor that needs about 2 s to drain
    config = config_file(tmp_path, LONG_HOLD_SECONDS)
    orchestrator, _ = start_healthy(processes, tmp_path, *sample_app(config, "--slow-drain", "2"))

    # When SIGTERM comes twice while it drains
    orchestrator.signal(signal.SIGTERM)
    orchestrator.wait_for_log("SIGTERM received: draining")
    orchestrator.signal(signal.SIGTERM)

    # Then the drain still takes its time, but no hold follows
    assert orchestrator.wait(timeout=EXIT_WITHIN_SECONDS) == EXIT_OK
    assert float(orchestrator.wait_for_log(r"✅ drained in (\d+\.\d) s").group(1)) >= 1.9
    log = orchestrator.log
    assert "SIGTERM received while draining: the drain goes on, the unhealthy hold after it is skipped" in log
    assert "holding /health at 503" not in log


def test_a_process_past_its_restart_budget_exits_without_the_hold(
    tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    # (supervisord should restart it at once; no operator asked it to leave)
    config = config_file(tmp_path, LONG_HOLD_SECONDS)
    orchestrator = start(processes, tmp_path, *sample_app(config, "--crashing"))

    assert orchestrator.wait(timeout=HEALTHY_WITHIN_SECONDS) == EXIT_RESTART_BUDGET_EXCEEDED
    assert "holding /health at 503" not in orchestrator.log


# --- the default, its bounds, and supervisord ------------------------------------------------------

#: README's recipe: "... success code 200 only, interval 10 s, timeout 5 s, unhealthy after 2 failures".
README_RECIPE = re.compile(r"interval (\d+) s, timeout (\d+) s, unhealthy after (\d+) failures")


def documented_recipe() -> tuple[float, float, int]:
    """``(interval, timeout, unhealthy threshold)`` of README's load balancer health check."""
    text = " ".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split())
    match = README_RECIPE.search(text)
    assert match, "README no longer states the load balancer health check recipe"
    return float(match.group(1)), float(match.group(2)), int(match.group(3))


def test_the_schema_constants_are_the_recipe_readme_documents() -> None:
    assert documented_recipe() == (
        LB_HEALTH_CHECK_INTERVAL_SECONDS,
        LB_HEALTH_CHECK_TIMEOUT_SECONDS,
        LB_UNHEALTHY_THRESHOLD,
    )


def test_the_default_hold_covers_at_least_two_documented_intervals_and_the_unhealthy_threshold() -> None:
    interval, _, threshold = documented_recipe()
    default = load_config(environ={}).shutdown.unhealthy_hold_seconds
    assert default == DEFAULT_UNHEALTHY_HOLD_SECONDS
    assert default >= 2 * interval
    assert default >= threshold * interval  # the worst case for the load balancer to see enough 503s


def test_the_hold_is_a_config_key_with_a_lower_bound() -> None:
    assert (
        load_config(environ={"ORCH_SHUTDOWN_UNHEALTHY_HOLD_SECONDS": "0"}).shutdown.unhealthy_hold_seconds
        == 0
    )
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"ORCH_SHUTDOWN_UNHEALTHY_HOLD_SECONDS": "-1"})
    assert "shutdown.unhealthy_hold_seconds: must not be negative (got -1.0)" in str(caught.value)


def test_supervisords_stopwaitsecs_outlasts_the_drain_the_hold_and_the_stop_together() -> None:
    parser = configparser.RawConfigParser()
    parser.read(REPO_ROOT / "supervisor.conf", encoding="utf-8")
    stopwaitsecs = parser.getint("program:orchestrator", "stopwaitsecs")
    defaults = load_config(environ={}).shutdown
    assert defaults.drain_seconds == DEFAULT_DRAIN_SECONDS
    # The hold overlaps the drain, so this sum is an upper bound on the time to exit after SIGTERM.
    worst = (
        defaults.drain_seconds
        + defaults.unhealthy_hold_seconds
        + STOP_TIMEOUT_SECONDS
        + http.STOP_TIMEOUT_SECONDS
        + http.STOP_POLL_SECONDS
    )
    assert stopwaitsecs > worst
