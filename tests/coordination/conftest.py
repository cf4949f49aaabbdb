"""Fixtures of the coordination tests (``client``, ``prefix`` and ``down_redis`` are tests/conftest.py's)."""

from __future__ import annotations

import pytest
from support import REDIS_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (``TEST_REDIS_URL``)."""
    return REDIS_URL
