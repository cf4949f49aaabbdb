"""Fixtures of the runtime tests: real orchestrator processes, closed whatever happens in the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import OrchestratorProcess


@pytest.fixture
def processes() -> Iterator[list[OrchestratorProcess]]:
    """The processes a test started (with :func:`~.helpers.start_process`); closed at the end."""
    started: list[OrchestratorProcess] = []
    try:
        yield started
    finally:
        for process in started:
            process.close()
