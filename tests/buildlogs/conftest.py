"""Fixtures of the build log tests: a pipeline config with fast polling and its own Redis keys."""

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
