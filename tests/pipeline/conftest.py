"""Fixtures of the pipeline tests: a config whose poll and retry timings suit a test."""

from __future__ import annotations

import pytest
from support import unique, with_overrides

from orchestrator.config import Config


@pytest.fixture
def pipeline_config(service_config: Config) -> Config:
    """``service_config`` with fast polling, a 1 s retry tier and its own Redis key prefix."""
    return with_overrides(
        service_config,
        limits__poll_seconds=0.05,
        limits__retry_delays=(1,),
        redis__key_prefix=unique("redis"),
        shutdown__drain_seconds=5.0,
    )
