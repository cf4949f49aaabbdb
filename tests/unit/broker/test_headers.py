"""The execute queue's headers are untrusted: bounded at arrival, and an attempt above 1 needs a signature."""

from __future__ import annotations

import pika
import pika.compat
import pytest

from orchestrator.broker.headers import (
    ATTEMPT_HEADER,
    ATTEMPT_SIGNATURE_HEADER,
    DELIVERY_COUNT_HEADER,
    MAX_SAFE_INTEGER,
    SCHEDULED_AT_HEADER,
    AttemptSigner,
    kept_headers,
    read_attempt,
    signing_key,
)
from orchestrator.config import load_config
from orchestrator.messages import BuildJob
from orchestrator.retry import Retry, attempt_signer, retry_publish

# --- x-attempt at arrival -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        (None, 1),
        ({}, 1),
        ({"other": "x"}, 1),
        ({ATTEMPT_HEADER: 3}, 3),
        ({ATTEMPT_HEADER: pika.compat.long(2)}, 2),
        ({ATTEMPT_HEADER: "2"}, 2),
        ({ATTEMPT_HEADER: b"2"}, 2),
        ({ATTEMPT_HEADER: " 3 "}, 3),
    ],
)
def test_a_usable_attempt_header_is_read(headers: dict[str, object] | None, attempt: int) -> None:
    assert read_attempt(headers, max_attempts=3) == (attempt, None)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -5,
        4,
        2**63,
        2**64 + 1,
        "9" * 30,
        "two",
        "²",
        2.5,
        True,
        None,
        [2],
        {"a": 1},
        b"\xff",
        "x" * 10_000,
    ],
)
def test_any_other_attempt_header_is_poison_naming_the_header_and_the_rule(value: object) -> None:
    attempt, problem = read_attempt({ATTEMPT_HEADER: value}, max_attempts=3)
    assert attempt == 1
    assert problem is not None
    assert problem.startswith(f"{ATTEMPT_HEADER} header: ")
    assert problem.endswith("is not an attempt number in 1..3")
    assert len(problem) < 200, "a hostile value is never echoed whole"


def test_only_the_headers_in_use_are_kept_each_a_bounded_scalar() -> None:
    deep: dict[str, object] = {}
    table = deep
    for _ in range(5000):  # deeper than Python's recursion limit: nothing may walk it
        table["t"] = {}
        table = table["t"]  # type: ignore[assignment]
    raw = {
        ATTEMPT_HEADER: pika.compat.long(2),
        SCHEDULED_AT_HEADER: 1_700_000_000_000,
        ATTEMPT_SIGNATURE_HEADER: b"abc",
        DELIVERY_COUNT_HEADER: 2**63,
        "x-death": [{"count": 1}],
        "nested": deep,
        "huge": "x" * 100_000,
    }
    kept = kept_headers(raw)
    assert kept == {
        ATTEMPT_HEADER: 2,
        SCHEDULED_AT_HEADER: 1_700_000_000_000,
        ATTEMPT_SIGNATURE_HEADER: "abc",
    }
    assert type(kept[ATTEMPT_HEADER]) is int
    assert kept_headers({SCHEDULED_AT_HEADER: MAX_SAFE_INTEGER + 1}) == {}
    assert kept_headers({ATTEMPT_SIGNATURE_HEADER: "s" * 129}) == {}


# --- signed attempts --------------------------------------------------------------------------------


def _signed(
    signer: AttemptSigner, attempt: int, deployment_id: str = "d-1", job_type: str = "build"
) -> dict[str, object]:
    scheduled_ms = 1_700_000_000_000
    return {
        ATTEMPT_HEADER: attempt,
        SCHEDULED_AT_HEADER: scheduled_ms,
        ATTEMPT_SIGNATURE_HEADER: signer.sign(deployment_id, job_type, attempt, scheduled_ms),
    }


def test_a_signed_attempt_is_believed() -> None:
    signer = AttemptSigner(b"k")
    assert signer.trusted_attempt("d-1", "build", _signed(signer, 3)) == 3


@pytest.mark.parametrize(
    "forge",
    [
        lambda h: {k: v for k, v in h.items() if k != ATTEMPT_SIGNATURE_HEADER},  # unsigned
        lambda h: {**h, ATTEMPT_HEADER: 3},  # the number changed
        lambda h: {**h, SCHEDULED_AT_HEADER: h[SCHEDULED_AT_HEADER] + 1},  # scheduled-at changed
        lambda h: {**h, ATTEMPT_SIGNATURE_HEADER: "0" * 32},  # made up
        lambda h: {**h, SCHEDULED_AT_HEADER: str(h[SCHEDULED_AT_HEADER])},  # wrong type
    ],
)
def test_an_attempt_the_orchestrator_did_not_sign_is_attempt_one(forge: object) -> None:
    signer = AttemptSigner(b"k")
    headers = forge(_signed(signer, 2))  # type: ignore[operator]
    assert signer.trusted_attempt("d-1", "build", headers) == 1


def test_a_signature_binds_the_deployment_and_the_type() -> None:
    signer = AttemptSigner(b"k")
    headers = _signed(signer, 2, "d-1", "build")
    assert signer.trusted_attempt("d-2", "build", headers) == 1
    assert signer.trusted_attempt("d-1", "deploy", headers) == 1
    assert AttemptSigner(b"other key").trusted_attempt("d-1", "build", headers) == 1


def test_the_key_is_the_configured_secret_or_derived_from_the_urls() -> None:
    assert signing_key("s3cret", "amqp://a", "redis://b") == b"s3cret"
    derived = signing_key("", "amqp://a", "redis://b")
    assert derived == signing_key("", "amqp://a", "redis://b")
    assert derived != signing_key("", "amqp://a", "redis://c")


def test_retries_the_orchestrator_schedules_are_signed() -> None:
    config = load_config(environ={})
    job = BuildJob(deployment_id="d-7", repository="https://github.com/o/r")
    retry = Retry(next_attempt=2, delay_seconds=10)
    publish = retry_publish(config.broker, job, 1, retry, "exit 1", signer=attempt_signer(config))
    [message] = publish.messages
    assert attempt_signer(config).trusted_attempt("d-7", "build", message.headers) == 2


# --- nesting pika cannot decode ----------------------------------------------------------------------


def _nested(depth: int, kind: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"t": value} if kind == "table" else [value]
    return value


@pytest.mark.parametrize("kind", ["table", "array"])
def test_headers_nested_deeper_than_pika_can_recurse_decode_to_a_marker(kind: str) -> None:
    import sys

    from orchestrator.broker import field_depth

    field_depth.install()
    field_depth.install()  # idempotent
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # only to encode the attack
    try:
        encoded = pika.BasicProperties(headers={"deep": _nested(5000, kind), ATTEMPT_HEADER: 2}).encode()
    finally:
        sys.setrecursionlimit(limit)
    decoded = pika.BasicProperties()
    decoded.decode(b"".join(encoded))
    assert decoded.headers[ATTEMPT_HEADER] == 2
    value = decoded.headers["deep"]
    levels = 0
    while not isinstance(value, str):
        value = value["t"] if kind == "table" else value[0]
        levels += 1
    assert value == field_depth.TOO_DEEP
    assert levels == field_depth.MAX_FIELD_DEPTH
