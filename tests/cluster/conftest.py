"""Fixtures of the cluster tests: a private three-node RabbitMQ cluster, and their figures in the summary."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faults.services import ServiceUnavailableError

from .private_cluster import PrivateCluster

#: Every cluster scenario's report, for the terminal summary.
REPORTS: list[str] = []


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[PrivateCluster]:
    """Three RabbitMQ nodes of the test's own, clustered; skipped (with the reason) when that fails.

    Every node is killed at the end, whatever the test did (the host's epmd stays).
    """
    try:
        cluster = PrivateCluster(tmp_path / "cluster")
        cluster.start()
    except ServiceUnavailableError as e:
        pytest.skip(str(e))
    try:
        yield cluster
    finally:
        cluster.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures of every cluster scenario (failover times, throughput), even without -s."""
    if REPORTS:
        terminalreporter.section("cluster scenarios")
        for report in REPORTS:
            terminalreporter.write_line(report)
