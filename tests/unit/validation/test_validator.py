"""Job validation: a table of good and bad messages for every rule, and the guarantees around it."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import msgspec
import pytest
from support import SAMPLE_JOB

from orchestrator.config import DEFAULT_MAX_MESSAGE_BYTES, ValidationConfig
from orchestrator.errors import ValidationError
from orchestrator.messages import JOB_TYPES, BuildJob, DeployJob, JobBase, StopJob, TestJob, encode
from orchestrator.validation import REASON_CLASSES, JobValidator, Rejection
from orchestrator.validation.rules import Issue, check_branch, check_relative_path
from orchestrator.validation.validator import INTERNAL_ERROR_REASON

SAMPLE: dict[str, Any] = SAMPLE_JOB
DELETE = object()
SECRET = "hunter2-S3CRET"
KNOWN_FIELDS = {*SAMPLE, "message"}


def message(base: dict[str, Any] | None = None, /, **changes: Any) -> bytes:
    """The sample message (or ``base``) with fields changed; a ``DELETE`` value removes the field."""
    doc = dict(SAMPLE if base is None else base)
    for key, value in changes.items():
        if value is DELETE:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def validator(**rules: Any) -> JobValidator:
    return JobValidator(ValidationConfig(**rules))


def accept(raw: bytes, **rules: Any) -> JobBase:
    outcome = validator(**rules).validate(raw)
    assert not isinstance(outcome, Rejection), outcome.reasons
    return outcome


def reject(raw: bytes, **rules: Any) -> Rejection:
    outcome = validator(**rules).validate(raw)
    assert isinstance(outcome, Rejection), f"accepted: {outcome}"
    assert outcome.reasons, "a rejection needs at least one reason"
    assert outcome.reason_class in REASON_CLASSES
    return outcome


# --- the table of good messages -----------------------------------------------------------------

GOOD: list[Any] = [
    # deploymentId
    pytest.param({"deploymentId": "a"}, {"deployment_id": "a"}, id="id-one-char"),
    pytest.param({"deploymentId": "A" * 64}, {"deployment_id": "A" * 64}, id="id-64-chars"),
    pytest.param({"deploymentId": "0dep_7-x"}, {"deployment_id": "0dep_7-x"}, id="id-digit-underscore"),
    # repository
    pytest.param({"repository": "https://gitlab.com/group/project"}, {}, id="repo-gitlab-no-suffix"),
    pytest.param({"repository": "https://bitbucket.org/team/repo.git"}, {}, id="repo-bitbucket"),
    pytest.param({"repository": "https://github.com/my.org/repo_name-2.git"}, {}, id="repo-dots-in-names"),
    pytest.param(
        {"repository": "HTTPS://GitHub.COM/Owner/Repo.git"},
        {"repository": "https://github.com/Owner/Repo.git"},
        id="repo-case-normalised",
    ),
    # branch
    pytest.param({"branch": "feature/retry-backoff"}, {"branch": "feature/retry-backoff"}, id="branch-slash"),
    pytest.param({"branch": "release/2026.01"}, {}, id="branch-dots"),
    pytest.param({"branch": "v1.0.0-rc.1"}, {}, id="branch-version"),
    pytest.param({"branch": "@foo"}, {}, id="branch-at-not-alone"),
    pytest.param({"branch": "fix/ümlaut"}, {}, id="branch-non-ascii"),
    pytest.param({"branch": "a/b.lockx"}, {}, id="branch-lock-not-at-end"),
    pytest.param({"branch": "b" * 255}, {}, id="branch-255-bytes"),
    pytest.param({"branch": DELETE}, {"branch": "main"}, id="branch-default"),
    pytest.param({"branch": ""}, {"branch": "main"}, id="branch-empty-is-absent"),
    pytest.param({"branch": "refs/heads/feature/x"}, {"branch": "feature/x"}, id="branch-full-ref"),
    pytest.param({"branch": "a/-b"}, {"branch": "a/-b"}, id="branch-dash-inside"),
    pytest.param({"branch": "my_head"}, {"branch": "my_head"}, id="branch-lowercase-head-suffix"),
    # paths
    pytest.param(
        {"dockerFilePath": "./Dockerfile"}, {"docker_file_path": "Dockerfile"}, id="path-dot-prefix"
    ),
    pytest.param(
        {"dockerFilePath": "a/./b//Dockerfile"}, {"docker_file_path": "a/b/Dockerfile"}, id="path-norm"
    ),
    pytest.param({"contextDir": "services/api/"}, {"context_dir": "services/api"}, id="path-trailing-slash"),
    pytest.param({"contextDir": "./"}, {"context_dir": "."}, id="path-dot-slash-is-dot"),
    pytest.param({"contextDir": "..."}, {"context_dir": "..."}, id="path-three-dots-is-a-name"),
    pytest.param({"composeFilePath": "x" * 1024}, {}, id="path-1024-bytes"),
    pytest.param({"composeFilePath": None}, {"compose_file_path": None}, id="compose-null"),
    pytest.param({"composeFilePath": DELETE}, {"compose_file_path": None}, id="compose-absent"),
    pytest.param({"composeFilePath": ""}, {"compose_file_path": None}, id="compose-empty-is-absent"),
    pytest.param({"dockerFilePath": ""}, {"docker_file_path": "Dockerfile"}, id="dockerfile-empty-is-absent"),
    pytest.param({"contextDir": ""}, {"context_dir": "."}, id="context-empty-is-absent"),
    pytest.param({"dockerFilePath": "a+b@c=d,e_f.g-h"}, {}, id="path-allowed-punctuation"),
    pytest.param(
        {"contextDir": "docs/café/ünï"}, {"context_dir": "docs/café/ünï"}, id="path-unicode-letters"
    ),
    pytest.param({"contextDir": "a-/b-"}, {"context_dir": "a-/b-"}, id="path-dash-not-leading"),
    # createdAt
    pytest.param({"createdAt": "2026-01-15T10:30:00+01:00"}, {}, id="time-offset"),
    pytest.param({"createdAt": "2026-01-15T10:30:00.123456-05:30"}, {}, id="time-fraction"),
    pytest.param({"createdAt": "2026-01-15t10:30:00z"}, {}, id="time-lowercase"),
    pytest.param({"createdAt": "2016-12-31T23:59:60Z"}, {}, id="time-leap-second"),
    pytest.param({"createdAt": "2024-02-29T00:00:00Z"}, {}, id="time-leap-day"),
    pytest.param({"createdAt": None}, {"created_at": None}, id="time-null"),
    pytest.param({"createdAt": ""}, {"created_at": None}, id="time-empty-is-absent"),
    # portNumber
    pytest.param({"portNumber": 1}, {"port_number": 1}, id="port-int-min"),
    pytest.param({"portNumber": 65535}, {"port_number": 65535}, id="port-int-max"),
    pytest.param({"portNumber": "3000"}, {"port_number": 3000}, id="port-string"),
    pytest.param({"portNumber": "08080"}, {"port_number": 8080}, id="port-leading-zero"),
    pytest.param({"portNumber": None}, {"port_number": None}, id="port-null"),
    pytest.param({"portNumber": ""}, {"port_number": None}, id="port-empty-is-absent"),
    # autoDeploy
    pytest.param({"autoDeploy": True}, {"auto_deploy": True}, id="auto-deploy-true"),
    pytest.param({"autoDeploy": DELETE}, {"auto_deploy": False}, id="auto-deploy-default"),
]


@pytest.mark.parametrize(("changes", "expected"), GOOD)
def test_good_message_is_accepted_and_normalised(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    job = accept(message(**changes))
    assert isinstance(job, BuildJob)
    for attr, value in expected.items():
        assert getattr(job, attr) == value


@pytest.mark.parametrize(("changes", "expected"), GOOD)
def test_both_paths_agree_on_good_messages(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    # forbid_unknown_fields always takes the plain-dict path; the default takes the typed one when it can
    assert accept(message(**changes)) == accept(message(**changes), forbid_unknown_fields=True)


# --- the table of bad messages ------------------------------------------------------------------

LONG = "x" * 1025
BAD: list[Any] = [
    # type
    pytest.param(
        {"type": DELETE}, "type", "is required (one of build, deploy, test, stop)", id="type-missing"
    ),
    pytest.param(
        {"type": "destroy"},
        "type",
        "'destroy' is not a known job type (known: build, deploy, test, stop)",
        id="type-unknown-lists-known",
    ),
    pytest.param({"type": "BUILD"}, "type", "not a known job type", id="type-case-sensitive"),
    pytest.param({"type": 5}, "type", "expected a string, got an integer", id="type-int"),
    pytest.param({"type": ""}, "type", "'' is not a known job type", id="type-empty"),
    # deploymentId
    pytest.param({"deploymentId": DELETE}, "deploymentId", "is required", id="id-missing"),
    pytest.param({"deploymentId": ""}, "deploymentId", "does not match", id="id-empty"),
    pytest.param({"deploymentId": "-dep"}, "deploymentId", "does not match", id="id-leading-dash"),
    pytest.param({"deploymentId": "_dep"}, "deploymentId", "does not match", id="id-leading-underscore"),
    pytest.param({"deploymentId": "a" * 65}, "deploymentId", "does not match", id="id-65-chars"),
    pytest.param({"deploymentId": "dep 1"}, "deploymentId", "does not match", id="id-space"),
    pytest.param({"deploymentId": "dep-1\n"}, "deploymentId", "does not match", id="id-trailing-newline"),
    pytest.param({"deploymentId": "dép"}, "deploymentId", "does not match", id="id-non-ascii"),
    pytest.param({"deploymentId": "a/../b"}, "deploymentId", "does not match", id="id-path"),
    pytest.param({"deploymentId": 42}, "deploymentId", "expected a string, got an integer", id="id-int"),
    pytest.param({"deploymentId": None}, "deploymentId", "expected a string, got null", id="id-null"),
    # repository: shape and scheme
    pytest.param({"repository": DELETE}, "repository", "is required", id="repo-missing"),
    pytest.param({"repository": ""}, "repository", "must not be empty", id="repo-empty"),
    pytest.param({"repository": 7}, "repository", "expected a string, got an integer", id="repo-int"),
    pytest.param(
        {"repository": "https://github.com/" + "a" * 2100}, "repository", "at most 2048", id="repo-long"
    ),
    pytest.param(
        {"repository": "http://github.com/a/b"}, "repository", "https://, not http://", id="repo-http"
    ),
    pytest.param({"repository": "ssh://github.com/a/b"}, "repository", "https:// URL", id="repo-ssh"),
    pytest.param(
        {"repository": "git@github.com:a/b.git"}, "repository", "https:// URL", id="repo-scp-syntax"
    ),
    pytest.param({"repository": "github.com/a/b"}, "repository", "https:// URL", id="repo-no-scheme"),
    pytest.param({"repository": "https:github.com/a/b"}, "repository", "https:// URL", id="repo-no-slashes"),
    pytest.param(
        {"repository": "file:///srv/repo"}, "repository", "allow_file_repos is off", id="repo-file-off"
    ),
    # repository: host
    pytest.param({"repository": "https://evil.example/a/b"}, "repository", "not allowed", id="repo-host"),
    pytest.param(
        {"repository": "https://github.com.evil.example/a/b"}, "repository", "not allowed", id="suffix"
    ),
    pytest.param({"repository": "https://evilgithub.com/a/b"}, "repository", "not allowed", id="repo-prefix"),
    pytest.param(
        {"repository": "https://github.com./a/b"}, "repository", "end with '.'", id="repo-trailing-dot"
    ),
    pytest.param({"repository": "https://10.0.0.1/a/b"}, "repository", "IP address", id="repo-ipv4"),
    pytest.param({"repository": "https://127.1/a/b"}, "repository", "IP address", id="repo-ipv4-short"),
    pytest.param({"repository": "https://2130706433/a/b"}, "repository", "IP address", id="repo-ipv4-int"),
    pytest.param({"repository": "https://0x7f.0.0.1/a/b"}, "repository", "IP address", id="repo-ipv4-hex"),
    pytest.param({"repository": "https://[::1]/a/b"}, "repository", "IP address", id="repo-ipv6"),
    pytest.param(
        {"repository": "https://[::ffff:7f00:1]:443/a/b"}, "repository", "IP address", id="ipv6-port"
    ),
    pytest.param({"repository": "https://localhost/a/b"}, "repository", "localhost", id="repo-localhost"),
    pytest.param({"repository": "https://LocalHost./a/b"}, "repository", "end with '.'", id="localhost-dot"),
    pytest.param(
        {"repository": "https://git.localhost/a/b"}, "repository", "localhost", id="repo-sub-localhost"
    ),
    pytest.param({"repository": "https://gіthub.com/a/b"}, "repository", "non-ASCII", id="repo-homoglyph"),
    pytest.param({"repository": "https:///a/b"}, "repository", "has no host", id="repo-empty-host"),
    pytest.param(
        {"repository": "https://git_hub.com/a/b"}, "repository", "not a valid host name", id="host-char"
    ),
    pytest.param(
        {"repository": "https://github.com:8443/a/b"}, "repository", "port 8443 is not", id="repo-port"
    ),
    pytest.param({"repository": "https://github.com:443/a/b"}, "repository", "port 443", id="repo-port-443"),
    pytest.param(
        {"repository": "https://github.com:/a/b"}, "repository", "invalid port", id="repo-port-empty"
    ),
    pytest.param(
        {"repository": "https://github.com:99999/a/b"}, "repository", "invalid port", id="port-range"
    ),
    # repository: path, query, tricks
    pytest.param(
        {"repository": "https://github.com/a/b?ref=x"}, "repository", "query or fragment", id="query"
    ),
    pytest.param(
        {"repository": "https://github.com/a/b#x"}, "repository", "query or fragment", id="fragment"
    ),
    pytest.param(
        {"repository": "https://github.com/a/b?"}, "repository", "query or fragment", id="query-empty"
    ),
    pytest.param(
        {"repository": "https://github.com/a"}, "repository", "must be /owner/name", id="repo-one-seg"
    ),
    pytest.param(
        {"repository": "https://github.com"}, "repository", "must be /owner/name", id="repo-no-path"
    ),
    pytest.param(
        {"repository": "https://github.com/a/b/c"}, "repository", "'/a/b/c' must be", id="repo-three"
    ),
    pytest.param(
        {"repository": "https://github.com/a/b/"}, "repository", "must be /owner/name", id="repo-slash"
    ),
    pytest.param(
        {"repository": "https://github.com/../b"}, "repository", "not '.' or '..'", id="repo-dotdot"
    ),
    pytest.param(
        {"repository": "https://github.com/a/.."}, "repository", "not '.' or '..'", id="repo-dotdot-2"
    ),
    pytest.param(
        {"repository": "https://github.com/a/.git"}, "repository", "must be /owner/name", id="bare-git"
    ),
    pytest.param(
        {"repository": "https://github.com/a/%2e%2e"}, "repository", "percent-encoded", id="repo-pct"
    ),
    pytest.param(
        {"repository": "https://github.com/a%2Fb/c"}, "repository", "percent-encoded", id="pct-slash"
    ),
    pytest.param(
        {"repository": "https://github%2ecom/a/b"}, "repository", "percent-encoded", id="repo-pct-host"
    ),
    pytest.param({"repository": " https://github.com/a/b"}, "repository", "whitespace", id="leading-space"),
    pytest.param({"repository": "https://github.com/a/b\n"}, "repository", "whitespace", id="repo-newline"),
    pytest.param({"repository": "https://git\thub.com/a/b"}, "repository", "control", id="repo-tab"),
    pytest.param(
        {"repository": "https://github.com\\evil.example/a/b"}, "repository", "backslash", id="bslash"
    ),
    # branch (the git check-ref-format rules)
    pytest.param(
        {"branch": "../x"}, "branch", "'../x' is not a valid git ref name (contains '..')", id="branch-dotdot"
    ),
    pytest.param({"branch": "a..b"}, "branch", "(contains '..')", id="branch-inner-dotdot"),
    pytest.param({"branch": "-x"}, "branch", "(starts with '-')", id="branch-option"),
    pytest.param({"branch": "--upload-pack=x"}, "branch", "(starts with '-')", id="branch-upload-pack"),
    pytest.param({"branch": "/x"}, "branch", "(starts with '/')", id="branch-leading-slash"),
    pytest.param({"branch": "x/"}, "branch", "(ends with '/')", id="branch-trailing-slash"),
    pytest.param({"branch": "a//b"}, "branch", "(contains '//')", id="branch-double-slash"),
    pytest.param({"branch": "x."}, "branch", "(ends with '.')", id="branch-trailing-dot"),
    pytest.param({"branch": "x.lock"}, "branch", "(ends with '.lock')", id="branch-lock"),
    pytest.param(
        {"branch": "a.lock/b"}, "branch", "component 'a.lock' ends with '.lock'", id="branch-comp-lock"
    ),
    pytest.param({"branch": ".hidden"}, "branch", "starts with '.'", id="branch-leading-dot"),
    pytest.param({"branch": "a/.b"}, "branch", "component '.b' starts with '.'", id="branch-comp-dot"),
    pytest.param({"branch": "@"}, "branch", "(is '@' alone)", id="branch-at"),
    pytest.param({"branch": "a@{1}"}, "branch", "(contains '@{')", id="branch-reflog"),
    pytest.param({"branch": "a b"}, "branch", "(contains a space)", id="branch-space"),
    pytest.param({"branch": "a~1"}, "branch", "(contains '~')", id="branch-tilde"),
    pytest.param({"branch": "a^"}, "branch", "(contains '^')", id="branch-caret"),
    pytest.param({"branch": "a:b"}, "branch", "(contains ':')", id="branch-colon"),
    pytest.param({"branch": "a?"}, "branch", "(contains '?')", id="branch-question"),
    pytest.param({"branch": "a*"}, "branch", "(contains '*')", id="branch-star"),
    pytest.param({"branch": "a[b"}, "branch", "(contains '[')", id="branch-bracket"),
    pytest.param({"branch": "a\\b"}, "branch", "(contains '\\\\')", id="branch-backslash"),
    pytest.param({"branch": "a\x00b"}, "branch", "(contains a control character)", id="branch-nul"),
    pytest.param({"branch": "a\nb"}, "branch", "(contains a control character)", id="branch-newline"),
    pytest.param({"branch": "a\x7fb"}, "branch", "(contains a control character)", id="branch-del"),
    pytest.param({"branch": "b" * 256}, "branch", "is 256 bytes long, at most 255", id="branch-256"),
    pytest.param({"branch": "ü" * 128}, "branch", "is 256 bytes long", id="branch-bytes-not-chars"),
    pytest.param({"branch": 5}, "branch", "expected a string, got an integer", id="branch-int"),
    pytest.param({"branch": None}, "branch", "expected a string, got null", id="branch-null"),
    pytest.param({"branch": ["main"]}, "branch", "expected a string, got an array", id="branch-array"),
    # dockerFilePath, composeFilePath, contextDir
    pytest.param({"dockerFilePath": "/Dockerfile"}, "dockerFilePath", "not an absolute path", id="path-abs"),
    pytest.param({"dockerFilePath": "../Dockerfile"}, "dockerFilePath", "'..' segment", id="path-up"),
    pytest.param({"composeFilePath": "a/../../b"}, "composeFilePath", "'..' segment", id="path-inner-up"),
    pytest.param({"contextDir": "a/.."}, "contextDir", "'..' segment", id="path-trailing-up"),
    pytest.param({"contextDir": ".."}, "contextDir", "'..' segment", id="path-just-up"),
    pytest.param({"contextDir": "a\\b"}, "contextDir", "backslashes", id="path-backslash"),
    pytest.param(
        {"contextDir": "C:"}, "contextDir", "characters outside the allow-list (':';", id="path-colon"
    ),
    pytest.param({"dockerFilePath": "a\x00b"}, "dockerFilePath", "control characters", id="path-nul"),
    pytest.param({"dockerFilePath": "a\nb"}, "dockerFilePath", "control characters", id="path-newline"),
    pytest.param({"dockerFilePath": "a\x85b"}, "dockerFilePath", "control characters", id="path-c1"),
    pytest.param(
        {"composeFilePath": LONG}, "composeFilePath", "1025 bytes long, at most 1024", id="path-long"
    ),
    pytest.param({"dockerFilePath": None}, "dockerFilePath", "expected a string, got null", id="path-null"),
    pytest.param({"contextDir": {}}, "contextDir", "expected a string, got an object", id="path-object"),
    # createdAt
    pytest.param({"createdAt": "2026-01-15T10:30:00"}, "createdAt", "has no time zone", id="time-naive"),
    pytest.param({"createdAt": "2026-01-15 10:30"}, "createdAt", "has no time zone", id="time-naive-space"),
    pytest.param({"createdAt": "2026-01-15"}, "createdAt", "not an RFC 3339 date-time", id="time-date-only"),
    pytest.param({"createdAt": "yesterday"}, "createdAt", "not an RFC 3339 date-time", id="time-garbage"),
    pytest.param(
        {"createdAt": "2026-01-15T10:30:00+0100"}, "createdAt", "RFC 3339", id="time-offset-no-colon"
    ),
    pytest.param({"createdAt": "2026-01-15T10:30:00Z\n"}, "createdAt", "RFC 3339", id="time-newline"),
    pytest.param({"createdAt": "２０２６-01-15T10:30:00Z"}, "createdAt", "RFC 3339", id="time-wide-digits"),
    pytest.param(
        {"createdAt": "2026-13-01T00:00:00Z"}, "createdAt", "not a valid date and time", id="time-month"
    ),
    pytest.param(
        {"createdAt": "2026-02-29T00:00:00Z"}, "createdAt", "not a valid date and time", id="time-feb29"
    ),
    pytest.param(
        {"createdAt": "2026-01-15T24:00:00Z"}, "createdAt", "not a valid date and time", id="time-hour"
    ),
    pytest.param(
        {"createdAt": "2026-01-15T10:30:61Z"}, "createdAt", "not a valid date and time", id="time-sec"
    ),
    pytest.param(
        {"createdAt": "2026-01-15T10:30:00+24:00"}, "createdAt", "not a valid date", id="time-offset"
    ),
    pytest.param(
        {"createdAt": 1768473000}, "createdAt", "expected a string, got an integer", id="time-epoch"
    ),
    # portNumber
    pytest.param({"portNumber": 0}, "portNumber", "0 is out of range (1-65535)", id="port-zero"),
    pytest.param({"portNumber": 65536}, "portNumber", "65536 is out of range (1-65535)", id="port-high"),
    pytest.param({"portNumber": -1}, "portNumber", "out of range", id="port-negative"),
    pytest.param({"portNumber": 10**30}, "portNumber", "out of range", id="port-huge"),
    pytest.param({"portNumber": "0"}, "portNumber", "0 is out of range", id="port-string-zero"),
    pytest.param({"portNumber": "70000"}, "portNumber", "70000 is out of range", id="port-string-high"),
    pytest.param({"portNumber": "abc"}, "portNumber", "'abc' is not a port number", id="port-garbage"),
    pytest.param({"portNumber": " "}, "portNumber", "is not a port number", id="port-blank"),
    pytest.param({"portNumber": " 80"}, "portNumber", "is not a port number", id="port-space"),
    pytest.param({"portNumber": "+80"}, "portNumber", "is not a port number", id="port-plus"),
    pytest.param({"portNumber": "80.0"}, "portNumber", "is not a port number", id="port-decimal-string"),
    pytest.param({"portNumber": "٨٠"}, "portNumber", "is not a port number", id="port-arabic-digits"),
    pytest.param(
        {"portNumber": 80.0}, "portNumber", "expected an integer or a numeric string, got a number", id="fl"
    ),
    pytest.param(
        {"portNumber": True}, "portNumber", "expected an integer or a numeric string, got a boolean", id="b"
    ),
    # autoDeploy
    pytest.param({"autoDeploy": "true"}, "autoDeploy", "expected a boolean, got a string", id="auto-string"),
    pytest.param({"autoDeploy": 1}, "autoDeploy", "expected a boolean, got an integer", id="auto-int"),
    pytest.param({"autoDeploy": None}, "autoDeploy", "expected a boolean, got null", id="auto-null"),
]


@pytest.mark.parametrize(("changes", "field", "rule"), BAD)
def test_bad_message_is_rejected_naming_field_and_rule(
    changes: dict[str, Any], field: str, rule: str
) -> None:
    rejection = reject(message(**changes))
    assert len(rejection.reasons) == 1, rejection.reasons
    reason = rejection.reasons[0]
    assert reason.startswith(f"{field}: "), reason
    assert rule in reason, reason


@pytest.mark.parametrize(("changes", "field", "rule"), BAD)
def test_both_paths_agree_on_bad_messages(changes: dict[str, Any], field: str, rule: str) -> None:
    assert reject(message(**changes)) == reject(message(**changes), forbid_unknown_fields=True)


def test_type_error_reason_is_exact() -> None:
    assert reject(message(branch=5)).reasons == ("branch: expected a string, got an integer",)


def test_every_problem_of_a_message_is_reported_in_field_order() -> None:
    rejection = reject(
        message(
            repository="http://github.com/a/b",
            branch="../x",
            dockerFilePath="/etc/passwd",
            contextDir="a/../..",
            createdAt="2026-01-15T10:30:00",
            portNumber="0",
            autoDeploy="no",
        )
    )
    assert [r.split(":", 1)[0] for r in rejection.reasons] == [
        "repository",
        "branch",
        "dockerFilePath",
        "contextDir",
        "createdAt",
        "portNumber",
        "autoDeploy",
    ]
    assert rejection.reason_class == "security"
    assert rejection.deployment_id == "dep-7f3a9c21"
    assert rejection.job_type == "build"


def test_several_problems_in_one_url_are_all_reported() -> None:
    rejection = reject(message(repository="https://evil.example:8443/a/b/c?x=1"))
    assert rejection.reasons == (
        "repository: host 'evil.example' is not allowed (allowed: bitbucket.org, github.com, gitlab.com)",
        "repository: must not have a query or fragment ('?' or '#')",
        "repository: path '/a/b/c' must be /owner/name or /owner/name.git "
        "(letters, digits, '.', '_' and '-'; not '.' or '..')",
    )


def test_missing_required_fields_are_each_named() -> None:
    rejection = reject(b'{"type": "deploy"}')
    assert rejection.reasons == ("deploymentId: is required", "repository: is required")
    assert rejection.job_type == "deploy"
    assert rejection.deployment_id is None


# --- secrets ------------------------------------------------------------------------------------

CREDENTIAL_URLS = [
    f"https://deploy-bot:{SECRET}@github.com/a/b.git",
    f"https://{SECRET}@github.com/a/b.git",
    f"https://{SECRET}:x-oauth-basic@github.com/a/b",
    f"https://x-access-token:{SECRET}@github.com:8443/a/b",
    f"https://builder:{SECRET}@evil.example/a/b?x=1#y",
    f"https://builder:{SECRET}@10.0.0.1/a/b",
    f"https://builder:{SECRET}@@github.com/a/b",
    f"https://builder:pre/{SECRET}@github.com/a/b",
    f"https://builder:{SECRET}@github.com\\@evil.example/a/b",
    f"https://github.com/a/b?token={SECRET}",
    f"https://github.com/a/b#{SECRET}",
    f"http://builder:{SECRET}@github.com/a/b",
    f"ssh://git:{SECRET}@github.com/a/b",
    f"ftp://{SECRET}@github.com/a/b",
    f"file://builder:{SECRET}@host/srv/repo",
    f"builder:{SECRET}@github.com:a/b.git",
    f"https://builder:{SECRET} @github.com/a/b",
    f"https://builder:{SECRET}%40@github.com/a/b",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
@pytest.mark.parametrize("allow_file_repos", [False, True])
def test_secrets_in_the_url_are_never_echoed(url: str, allow_file_repos: bool) -> None:
    for raw in (message(repository=url), message(repository=url, type="unknown-type")):
        outcome = validator(allow_file_repos=allow_file_repos).validate(raw)
        assert isinstance(outcome, Rejection)
        assert SECRET not in repr(outcome)
        assert all(field in KNOWN_FIELDS for field in (r.split(":", 1)[0] for r in outcome.reasons))


@pytest.mark.parametrize("url", [u for u in CREDENTIAL_URLS if "@" in u.partition("?")[0] and "://" in u])
def test_credentials_in_the_url_are_named_without_user_info(url: str) -> None:
    reasons = reject(message(repository=url)).reasons
    assert "repository: must not contain credentials (user-info in the URL)" in reasons
    user_info = url.partition("://")[2].rpartition("@")[0]
    for piece in re.split(r"[:/@\\ ]", user_info):
        if len(piece) > 3:
            assert all(piece not in reason for reason in reasons), (piece, reasons)


def test_credentials_with_an_otherwise_valid_url_are_the_only_reason() -> None:
    rejection = reject(message(repository=f"https://deploy-bot:{SECRET}@github.com/a/b.git"))
    assert rejection.reasons == ("repository: must not contain credentials (user-info in the URL)",)
    assert rejection.reason_class == "security"


def test_credential_looking_text_in_other_fields_is_redacted() -> None:
    rejection = reject(message(branch=f"https://u:{SECRET}@x/..", dockerFilePath=f"/password={SECRET}"))
    assert len(rejection.reasons) == 2
    assert SECRET not in rejection.reason


# --- configuration of the rules -----------------------------------------------------------------


def test_allow_listed_port_and_extra_host() -> None:
    rules = {"allowed_hosts": ("github.com", "Git.Example.org:8443")}
    job = accept(message(repository="https://GIT.example.org:8443/team/app.git"), **rules)
    assert isinstance(job, BuildJob)
    assert job.repository == "https://git.example.org:8443/team/app.git"
    assert reject(message(repository="https://git.example.org/team/app"), **rules).reasons == (
        "repository: host 'git.example.org' is allowed only with the port its entry names",
    )
    assert reject(message(repository="https://git.example.org:9000/team/app"), **rules).reasons == (
        "repository: port 9000 is not allowed on host 'git.example.org' "
        "(allow it with an entry host:port in validation.allowed_hosts)",
    )
    assert (
        reject(message(repository="https://github.com:443/a/b"), **rules)
        .reasons[0]
        .startswith("repository: port 443 is not allowed on host 'github.com'")
    )
    assert reject(message(repository="https://gitlab.com/a/b"), **rules).reasons == (
        "repository: host 'gitlab.com' is not allowed (allowed: git.example.org:8443, github.com)",
    )


def test_allow_listing_an_ip_or_localhost_does_not_let_it_through() -> None:
    rules = {"allowed_hosts": ("127.0.0.1", "localhost")}
    assert "IP address" in reject(message(repository="https://127.0.0.1/a/b"), **rules).reason
    assert "localhost" in reject(message(repository="https://localhost/a/b"), **rules).reason


def test_file_repositories_only_when_allowed() -> None:
    raw = message(repository="file:///srv/git/sample-app")
    assert reject(raw).reasons == (
        "repository: file:// repositories are not allowed (validation.allow_file_repos is off)",
    )
    job = accept(raw, allow_file_repos=True)
    assert isinstance(job, BuildJob)
    assert job.repository == "file:///srv/git/sample-app"
    assert accept(message(repository="FILE:///srv/x"), allow_file_repos=True).repository == "file:///srv/x"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("file://host/srv/repo", "file:///absolute/path (no host)"),
        ("file://srv/repo", "file:///absolute/path (no host)"),
        ("file:///srv/../etc", "'..' segment"),
        ("file:///srv/repo?x", "query or fragment"),
        ("file:///srv/re po", "whitespace"),
        ("file:/srv/repo", "https:// URL"),
    ],
)
def test_file_repository_rules(url: str, rule: str) -> None:
    rejection = reject(message(repository=url), allow_file_repos=True)
    assert len(rejection.reasons) == 1
    assert rejection.reasons[0].startswith("repository: ")
    assert rule in rejection.reasons[0]


def test_unknown_fields_are_dropped_by_default() -> None:
    raw = message(extra="x", nested={"deploymentId": "other"}, Type="deploy")
    job = accept(raw)
    assert job == accept(message())
    assert b"extra" not in encode(job)
    assert b"nested" not in encode(job)


def test_unknown_fields_are_each_named_when_forbidden() -> None:
    rejection = reject(message(extra="x", **{"bad key\n": 1}), forbid_unknown_fields=True)
    assert rejection.reasons == (
        "extra: unknown field for a build job (validation.forbid_unknown_fields is on)",
        "'bad key\\n': unknown field for a build job (validation.forbid_unknown_fields is on)",
    )
    assert rejection.reason_class == "schema"


def test_unknown_fields_are_reported_with_the_other_problems() -> None:
    rejection = reject(message(extra="x", branch="-x"), forbid_unknown_fields=True)
    assert [r.split(":")[0] for r in rejection.reasons] == ["branch", "extra"]


def test_many_unknown_fields_are_summed_up() -> None:
    extras = {f"x{i}": i for i in range(25)}
    rejection = reject(message(**extras), forbid_unknown_fields=True)
    assert len(rejection.reasons) == 11
    assert rejection.reasons[-1] == "message: 15 more unknown fields"


def test_stop_needs_only_type_and_deployment_id() -> None:
    job = accept(b'{"type": "stop", "deploymentId": "dep-1"}')
    assert job == StopJob(deployment_id="dep-1")
    with_extras = message(type="stop", repository="https://user:pw@10.0.0.1/x", branch="../x")
    assert accept(with_extras) == StopJob(deployment_id="dep-7f3a9c21")
    rejection = reject(with_extras, forbid_unknown_fields=True)
    assert (
        "repository: unknown field for a stop job (validation.forbid_unknown_fields is on)"
        in rejection.reasons
    )
    assert "pw" not in rejection.reason
    assert reject(b'{"type": "stop"}').reasons == ("deploymentId: is required",)


@pytest.mark.parametrize("cls", [BuildJob, DeployJob, TestJob])
def test_every_source_job_type_has_the_same_rules(cls: type[JobBase]) -> None:
    tag = str(cls.__struct_config__.tag)
    assert isinstance(accept(message(type=tag)), cls)
    rejection = reject(message(type=tag, branch="../x"))
    assert rejection.job_type == tag
    assert rejection.reasons == ("branch: '../x' is not a valid git ref name (contains '..')",)


# --- the message as a whole ---------------------------------------------------------------------


def test_size_limit_is_checked_before_decoding() -> None:
    raw = b"\xff" * 70000
    assert reject(raw) == Rejection(("message: 70000 bytes exceeds the limit of 65536",), "too_large")


def test_message_at_the_size_limit_is_accepted() -> None:
    raw = message()
    padded = raw[:-1] + b" " * (DEFAULT_MAX_MESSAGE_BYTES - len(raw)) + b"}"
    assert len(padded) == DEFAULT_MAX_MESSAGE_BYTES
    assert accept(padded) == accept(raw)
    assert reject(padded + b" ").reason_class == "too_large"
    assert reject(raw, max_message_bytes=len(raw) - 1).reasons == (
        f"message: {len(raw)} bytes exceeds the limit of {len(raw) - 1}",
    )


@pytest.mark.parametrize(
    ("raw", "reason_class", "reason"),
    [
        (b"\xff\xfe{}", "not_utf8", "message: is not valid UTF-8 (bad byte at offset 0)"),
        (
            b'{"type": "build", "deploymentId": "d\xe9p"}',
            "not_utf8",
            "message: is not valid UTF-8 (bad byte at",
        ),
        (b"", "not_json", "message: is empty"),
        (b"  \n", "not_json", "message: is empty"),
        (b"{", "not_json", "message: is not valid JSON"),
        (b'{"type": "build",}', "not_json", "message: is not valid JSON"),
        (b'{"portNumber": NaN}', "not_json", "message: is not valid JSON"),
        (b'{"deploymentId": "\\ud800"}', "not_json", "message: is not valid JSON"),
        (b"\xef\xbb\xbf{}", "not_json", "message: is not valid JSON"),
        (b"[" * 50000, "not_json", "message: is not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not_json", "message: is not valid JSON (nested too deeply)"),
        (b"[]", "not_object", "message: expected a JSON object, got an array"),
        (b"null", "not_object", "message: expected a JSON object, got null"),
        (b'"build"', "not_object", "message: expected a JSON object, got a string"),
        (b"3000", "not_object", "message: expected a JSON object, got an integer"),
        (b"{}", "unknown_type", "type: is required (one of build, deploy, test, stop)"),
    ],
)
def test_undecodable_messages_are_rejected_with_a_reason(raw: bytes, reason_class: str, reason: str) -> None:
    rejection = reject(raw)
    assert rejection.reason_class == reason_class
    assert rejection.reasons[0].startswith(reason)


def test_deployment_id_and_type_are_given_only_when_valid() -> None:
    unknown_type = reject(message(type="destroy"))
    assert (unknown_type.deployment_id, unknown_type.job_type) == ("dep-7f3a9c21", None)
    assert unknown_type.reason_class == "unknown_type"
    bad_id = reject(message(deploymentId="dep 1", branch="../x"))
    assert (bad_id.deployment_id, bad_id.job_type) == (None, "build")
    not_json = reject(b'{"deploymentId": "dep-1", ')
    assert not_json.deployment_id is None


def test_bytes_like_input_is_accepted() -> None:
    # The signature says bytes; other buffers are still handled rather than raising.
    assert accept(bytearray(message())) == accept(message())  # type: ignore[arg-type]
    assert validator().validate(memoryview(message())) == accept(message())  # type: ignore[arg-type]


def test_an_internal_error_costs_one_message_not_the_validator(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    subject = validator()

    def broken(job: JobBase, raw: bytes) -> JobBase:
        raise RuntimeError("bug")

    monkeypatch.setattr(subject, "_check_typed", broken)
    with caplog.at_level(logging.ERROR, logger="orchestrator.validation.validator"):
        outcome = subject.validate(message(portNumber=3000))
    assert outcome == Rejection((INTERNAL_ERROR_REASON,), "schema")
    assert "validator failed on a message" in caplog.text


def test_rejection_as_error_and_one_line_reason() -> None:
    rejection = reject(message(branch="-x", portNumber=0))
    assert rejection.reason == "; ".join(rejection.reasons)
    error = rejection.as_error()
    assert isinstance(error, ValidationError)
    assert error.reasons == list(rejection.reasons)


# --- extension: a new job type is one class and one registration --------------------------------


class ScaleJob(JobBase, frozen=True, kw_only=True, tag="scale"):
    replicas: int = 1
    zones: tuple[str, ...] = ()


def test_a_new_job_type_is_validated_by_its_declared_field_types() -> None:
    subject = JobValidator(ValidationConfig(), job_types=(*JOB_TYPES, ScaleJob))
    job = subject.validate(b'{"type": "scale", "deploymentId": "dep-1", "replicas": 3, "zones": ["a"]}')
    assert job == ScaleJob(deployment_id="dep-1", replicas=3, zones=("a",))
    rejection = subject.validate(b'{"type": "scale", "deploymentId": "-", "replicas": "3", "zones": 1}')
    assert isinstance(rejection, Rejection)
    assert rejection.reasons[1:] == (
        "replicas: expected an integer, got a string",
        "zones: expected an array, got an integer",
    )
    unknown = subject.validate(b'{"type": "resize", "deploymentId": "dep-1"}')
    assert isinstance(unknown, Rejection)
    assert "(known: build, deploy, test, stop, scale)" in unknown.reasons[0]


# --- rules called directly (values JSON cannot carry) -------------------------------------------


@pytest.mark.parametrize("rule", [check_branch, check_relative_path])
def test_lone_surrogates_are_refused(rule: Any) -> None:
    issues: list[Issue] = []
    rule("field", "a\ud800b", issues)
    assert [i.reason for i in issues] == ["field: is not valid Unicode (contains a lone surrogate)"]


def test_long_values_are_cut_short_in_reasons() -> None:
    rejection = reject(message(branch="-" + "x" * 250))
    assert len(rejection.reasons[0]) < 160
    assert "(251 characters)" in rejection.reasons[0]


def test_round_trip_of_the_sample() -> None:
    job = accept(message())
    assert accept(encode(job)) == job
    assert msgspec.json.decode(encode(job))["portNumber"] == 3000
