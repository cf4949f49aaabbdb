"""Classification of AWS failures: API errors, RunTask ``failures`` entries, transport errors."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from orchestrator.errors import CapacityError, LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.launch.errors import (
    AmbiguousLaunchError,
    classify_client_error,
    classify_exception,
    classify_failure,
)


def client_error(code: str, message: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "RunTask",
    )


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ThrottlingException", "Rate exceeded"),
        ("ClientException", "Rate exceeded"),
        ("RequestLimitExceeded", "Request limit exceeded."),
        ("TooManyRequestsException", "Too many requests"),
        ("TooManyRequests", ""),
        ("Throttling", "slow down"),
    ],
)
def test_throttling_errors(code: str, message: str) -> None:
    error = classify_client_error(client_error(code, message), "RunTask")

    assert type(error) is ThrottledError
    assert not error.counts_as_attempt
    assert error.retryable


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        ("ServerException", "Service unavailable, please try again later", 500),
        ("InternalError", "", 500),
        ("ClientException", "Capacity is unavailable at this time. Please try again later.", 400),
        ("ClientException", "No Container Instances were found in your cluster.", 400),
        ("Unknown", "whatever", 503),
    ],
)
def test_capacity_and_server_errors_are_retryable(code: str, message: str, status: int) -> None:
    error = classify_client_error(client_error(code, message, status), "RunTask")

    assert type(error) is CapacityError
    assert error.retryable
    assert error.counts_as_attempt


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ClientException", "TaskDefinition not found."),
        (
            "ClientException",
            "The specified platform does not satisfy the task definition's required capabilities",
        ),
        (
            "InvalidParameterException",
            "Network Configuration must be provided when networkMode 'awsvpc' is specified.",
        ),
        ("AccessDeniedException", "User: arn:aws:iam::1:user/ci is not authorized to perform: ecs:RunTask"),
        ("ClusterNotFoundException", "Cluster not found."),
        ("SomethingNewException", "a code nobody has seen"),
    ],
)
def test_permanent_errors_carry_the_aws_message(code: str, message: str) -> None:
    error = classify_client_error(client_error(code, message), "RunTask")

    assert type(error) is PermanentLaunchError
    assert not error.retryable
    assert str(error) == f"RunTask: {code}: {message}"


@pytest.mark.parametrize(
    "reason",
    [
        "RESOURCE:CPU",
        "RESOURCE:MEMORY",
        "RESOURCE:PORTS",
        "RESOURCE:ENI",
        "AGENT",
        "Capacity is unavailable at this time",
    ],
)
def test_capacity_failures(reason: str) -> None:
    error = classify_failure({"arn": "arn:aws:ecs:us-east-1:1:container-instance/x", "reason": reason})

    assert type(error) is CapacityError
    assert reason in str(error)


@pytest.mark.parametrize(
    ("reason", "detail"), [("ATTRIBUTE", "no instance matches"), ("MISSING", None), (None, None)]
)
def test_other_failures_are_permanent(reason: str | None, detail: str | None) -> None:
    error = classify_failure({"reason": reason, "detail": detail})

    assert type(error) is PermanentLaunchError
    if detail:
        assert detail in str(error)


def test_connection_and_read_timeouts_are_ambiguous_and_keep_the_attempt() -> None:
    for raised in (
        EndpointConnectionError(endpoint_url="https://ecs.us-east-1.amazonaws.com/"),
        ReadTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com/"),
        ConnectTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com/"),
    ):
        error = classify_exception(raised, "RunTask")

        assert isinstance(error, AmbiguousLaunchError)
        assert isinstance(error, CapacityError)
        assert error.retryable
        assert not error.counts_as_attempt, "a new attempt number would change the clientToken"


def test_other_exceptions_are_translated_never_passed_through() -> None:
    assert type(classify_exception(NoCredentialsError(), "RunTask")) is PermanentLaunchError
    odd = classify_exception(KeyError("taskArn"), "RunTask")
    assert type(odd) is LaunchError
    assert "KeyError" in str(odd)
    throttled = ThrottledError("already ours")
    assert classify_exception(throttled, "RunTask") is throttled
    assert (
        type(classify_exception(client_error("ThrottlingException", "Rate exceeded"), "StopTask"))
        is ThrottledError
    )


def test_messages_are_redacted_and_bounded() -> None:
    message = "cannot reach https://user:hunter2@registry.example.com/v2 " + "x" * 2000

    error = classify_client_error(client_error("ClientException", message), "RunTask")

    assert "hunter2" not in str(error)
    assert len(str(error)) < 600
