"""Fixtures of the fault scenarios: a :class:`~faults.harness.FaultRun` factory, and throwaway
RabbitMQ and Redis servers for the scenarios that take one down."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import REPORTS, FaultRun, FaultSettings
from .services import ServiceUnavailableError, ThrowawayRabbit, ThrowawayRedis


@pytest.fixture
def fault_run(tmp_path: Path) -> Iterator[Callable[..., FaultRun]]:
    """``fault_run(name, **settings)``: a :class:`FaultRun` (not started), torn down after the test."""
    runs: list[FaultRun] = []

    def make(name: str, **settings: Any) -> FaultRun:
        run = FaultRun(tmp_path, name, FaultSettings(**settings))
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


@pytest.fixture
def throwaway_rabbit(tmp_path: Path) -> Iterator[ThrowawayRabbit]:
    """A RabbitMQ node of the test's own, started; skipped (with the reason) when it cannot start."""
    try:
        rabbit = ThrowawayRabbit(tmp_path / "rabbit")
        rabbit.start()
    except ServiceUnavailableError as e:
        pytest.skip(f"no throwaway RabbitMQ node: {e}")
    try:
        yield rabbit
    finally:
        rabbit.stop()


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A redis-server of the test's own, started; skipped (with the reason) when it cannot start."""
    try:
        server = ThrowawayRedis(tmp_path / "redis")
        server.start()
    except ServiceUnavailableError as e:
        pytest.skip(f"no throwaway Redis: {e}")
    try:
        yield server
    finally:
        server.kill()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Every scenario's figures (time, jobs, concurrency, recovery, broken invariants), even without -s."""
    if REPORTS:
        terminalreporter.section("fault scenarios")
        for report in REPORTS:
            terminalreporter.write_line(report)
