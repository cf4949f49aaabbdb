"""Fixtures of the coordination tests: a Redis client with timeouts, and a key prefix of the test's own."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from orchestrator.config import RedisConfig
from orchestrator.coordination import RedisClient, connect_redis

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


@pytest.fixture(scope="session")
def shared(pytestconfig: pytest.Config) -> ModuleType:
    """tests/conftest.py, as pytest loaded it.

    ``from conftest import unique`` is not safe here: every conftest.py outside a package is imported
    as the module ``conftest``, so that name means whichever directory's was loaded last.
    """
    module = pytestconfig.pluginmanager.get_plugin(str(ROOT_CONFTEST))
    assert isinstance(module, ModuleType), f"pytest has not loaded {ROOT_CONFTEST}"
    return module


@pytest.fixture(scope="session")
def redis_url(shared: ModuleType) -> str:
    """The test Redis (``TEST_REDIS_URL``)."""
    url: str = shared.REDIS_URL
    return url


@pytest.fixture
def client(redis_url: str) -> Iterator[RedisClient]:
    """A client of the real Redis, made the way the orchestrator makes one."""
    redis_client = connect_redis(RedisConfig(url=redis_url))
    try:
        yield redis_client
    finally:
        redis_client.close()


@pytest.fixture
def prefix(client: RedisClient, shared: ModuleType) -> Iterator[str]:
    """A key prefix no other test uses (``unique()``); every key under it is deleted afterwards."""
    unique: Callable[[str], str] = shared.unique
    name = unique("coord")
    try:
        yield name
    finally:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def unused_port() -> int:
    """A local TCP port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def down_redis(unused_port: int) -> Iterator[RedisClient]:
    """A client pointed at a port where no Redis listens, with a password that must never be shown."""
    redis_client = connect_redis(
        RedisConfig(url=f"redis://:hunter2secret@127.0.0.1:{unused_port}/0", socket_timeout_seconds=0.5)
    )
    try:
        yield redis_client
    finally:
        redis_client.close()
