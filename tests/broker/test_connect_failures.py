"""A consumer or publisher that cannot connect says where and why (log line and /health detail).

pika reports a failed connect as ``AMQPConnectionError: AMQPConnectorSocketConnectError`` and hides the
cause (refused, DNS, authentication, TLS, timeout) several wrappers deep; an operator needs the
endpoint and that cause, never the password.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest
from support import AMQP_URL

from orchestrator.broker.consumer import Consumer
from orchestrator.broker.publisher import ConfirmingPublisher
from orchestrator.config import BrokerConfig, Config, load_config

pytestmark = pytest.mark.services

WAIT = 30.0
REFUSED = "amqp://guest:s3cret@127.0.0.1:1/%2F"
WRONG_PASSWORD = AMQP_URL.replace("guest:guest@", "guest:wrong-s3cret@")
#: (broker URL, what the failure must say)
CASES = [
    (REFUSED, "127.0.0.1:1: connection refused"),
    (WRONG_PASSWORD, "authentication failed for user 'guest'"),
]


def _broker(url: str) -> BrokerConfig:
    config = load_config(environ={"ORCH_BROKER_URL": url, "ORCH_BROKER_RECONNECT_MAX_SECONDS": "0.5"})
    return config.broker


def _first_failure(reports: queue.Queue[tuple[bool, str]]) -> str:
    while True:
        ok, detail = reports.get(timeout=WAIT)
        if not ok:
            return detail


@pytest.fixture
def reports() -> Iterator[queue.Queue[tuple[bool, str]]]:
    yield queue.Queue()


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_a_publisher_that_cannot_connect_names_the_endpoint_and_the_cause(
    url: str, expected: str, reports: queue.Queue[tuple[bool, str]]
) -> None:
    publisher = ConfirmingPublisher(
        _broker(url), name="t", max_pending=10, on_connectivity=lambda ok, detail: reports.put((ok, detail))
    )
    publisher.start()
    try:
        detail = _first_failure(reports)
    finally:
        publisher.close(1)
    assert expected in detail
    assert "s3cret" not in detail


@pytest.mark.parametrize(("url", "expected"), CASES)
def test_a_consumer_that_cannot_connect_names_the_endpoint_and_the_cause(
    url: str, expected: str, service_config: Config, reports: queue.Queue[tuple[bool, str]]
) -> None:
    consumer = Consumer(
        _broker(url),
        service_config.status,
        service_config.limits.retry_delays,
        max_attempts=service_config.highest_max_attempts(),
        on_delivery=lambda delivery: None,
        on_connectivity=lambda ok, detail: reports.put((ok, detail)),
        on_stale=lambda generation: None,
    )
    consumer.start()
    try:
        detail = _first_failure(reports)
    finally:
        consumer.stop(5)
    assert expected in detail
    assert "s3cret" not in detail
