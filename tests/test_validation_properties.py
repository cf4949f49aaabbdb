"""Properties of the validator: whatever comes in, a job or a reasoned rejection comes out, never a raise."""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import ValidationConfig
from orchestrator.messages import JobBase, SourceJob, encode
from orchestrator.validation import REASON_CLASSES, JobValidator, Rejection
from orchestrator.validation.rules import Issue, check_branch
from orchestrator.validation.validator import INTERNAL_ERROR_REASON

EXAMPLES = 300
DEFAULT = JobValidator(ValidationConfig())
STRICT = JobValidator(ValidationConfig(forbid_unknown_fields=True))
ALLOWED_HOSTS = {"github.com", "gitlab.com", "bitbucket.org"}
SECRET = "pw-S3CRET-x9"
# A reason starts with the field it is about: a plain name, or a quoted and escaped one.
REASON_START = re.compile(r"(?:[A-Za-z0-9_.-]+|'.*'|\".*\")(?:…? \(\d+ characters\))?: \S")

VALID_JOBS: list[dict[str, Any]] = [
    {
        "type": "build",
        "deploymentId": "dep-7f3a9c21",
        "repository": "https://github.com/blacktree-dev/sample-app.git",
        "branch": "main",
        "dockerFilePath": "Dockerfile",
        "composeFilePath": "docker-compose.yml",
        "contextDir": ".",
        "createdAt": "2026-01-15T10:30:00Z",
        "portNumber": "3000",
        "autoDeploy": False,
    },
    {
        "type": "deploy",
        "deploymentId": "dep-5b21e0d4",
        "repository": "https://gitlab.com/blacktree-dev/sample-api",
        "branch": "release/2026.01",
        "contextDir": "services/api",
        "portNumber": 8080,
        "autoDeploy": True,
    },
    {"type": "test", "deploymentId": "t1", "repository": "https://bitbucket.org/a/b.git"},
    {"type": "stop", "deploymentId": "dep-5b21e0d4"},
]
FIELDS = sorted({key for job in VALID_JOBS for key in job})

# Characters that matter to some rule: separators, git's forbidden ones, controls, look-alikes.
NASTY = "ab/.-_@{}~^:?*[]\\ \t\n\x00\x7f\x85%#&=+lockgit0123456789ü\u202eі"
nasty_text = st.text(alphabet=NASTY, max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars | nasty_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def check_outcome(outcome: JobBase | Rejection, validator: JobValidator) -> None:
    """The contract of ``validate``: a job that re-validates to itself, or a rejection with reasons."""
    if isinstance(outcome, Rejection):
        assert outcome.reasons
        # the catch-all keeps validate from raising; reaching it means a bug the property found
        assert outcome.reasons != (INTERNAL_ERROR_REASON,)
        assert outcome.reason_class in REASON_CLASSES
        for reason in outcome.reasons:
            assert REASON_START.match(reason), reason
            assert reason.isprintable(), reason
        return
    assert isinstance(outcome, JobBase)
    assert validator.validate(encode(outcome)) == outcome
    check_invariants(outcome)


def check_invariants(job: JobBase) -> None:
    """What an accepted job guarantees, checked independently of the rules' own code."""
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", job.deployment_id, re.ASCII)
    if not isinstance(job, SourceJob):
        return
    url = urlsplit(job.repository)
    assert url.scheme == "https"
    assert url.hostname in ALLOWED_HOSTS
    assert (url.username, url.password, url.port, url.query, url.fragment) == (None, None, None, "", "")
    assert job.repository.isascii()
    assert "%" not in job.repository
    assert len(url.path.split("/")) == 3
    for path in (job.docker_file_path, job.compose_file_path, job.context_dir):
        if path is not None:
            assert posixpath.normpath(path) == path
            assert not path.startswith("/")
            assert ".." not in path.split("/")
    assert job.port_number is None or 1 <= job.port_number <= 65535
    assert isinstance(job.auto_deploy, bool)


def dumps(doc: Any, ascii_only: bool) -> bytes:
    # ensure_ascii=False with a lone surrogate yields invalid UTF-8: another kind of input worth trying
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@settings(max_examples=EXAMPLES)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_outcome(DEFAULT.validate(raw), DEFAULT)
    check_outcome(STRICT.validate(raw), STRICT)


@settings(max_examples=EXAMPLES)
@given(json_values, st.booleans())
def test_arbitrary_json_never_raises(doc: Any, ascii_only: bool) -> None:
    raw = dumps(doc, ascii_only)
    check_outcome(DEFAULT.validate(raw), DEFAULT)


mutation = st.one_of(
    st.tuples(st.just("replace"), st.sampled_from(FIELDS), json_values),
    st.tuples(st.just("replace"), st.sampled_from(FIELDS), nasty_text),
    st.tuples(st.just("delete"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("add"), st.text(max_size=12), json_values),
)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID_JOBS), st.lists(mutation, max_size=4), st.booleans())
def test_mutated_jobs_never_raise_and_both_paths_agree(
    base: dict[str, Any], mutations: list[tuple[str, str, Any]], ascii_only: bool
) -> None:
    doc = dict(base)
    for op, key, value in mutations:
        if op == "delete":
            doc.pop(key, None)
        else:
            doc[key] = value
    raw = dumps(doc, ascii_only)
    lenient, strict = DEFAULT.validate(raw), STRICT.validate(raw)
    check_outcome(lenient, DEFAULT)
    check_outcome(strict, STRICT)
    # The typed fast path and the plain slow path (always taken when unknown fields are refused)
    # must agree: refusing unknown fields can only add reasons.
    if not isinstance(strict, Rejection):
        assert lenient == strict
    if isinstance(lenient, Rejection):
        assert isinstance(strict, Rejection)
        assert set(lenient.reasons) <= set(strict.reasons)


url_parts = st.tuples(
    st.sampled_from(["https://", "HTTPS://", "http://", "file://", "ssh://", "https:/", ""]),
    st.sampled_from(["", "", f"git:{SECRET}@", f"{SECRET}@", f"a:{SECRET}@b@"]),
    st.sampled_from(
        [
            "github.com",
            "GitHub.COM",
            "github.com.",
            "gitlab.com",
            "evil.example",
            "127.0.0.1",
            "[::1]",
            "localhost",
        ]
    ),
    st.sampled_from(["", "", ":443", ":8443", ":", ":0x1"]),
    st.lists(st.text(alphabet="ab.-_%2e/\\@:?# ", max_size=8), min_size=0, max_size=3),
    st.sampled_from(["", "", ".git", "?ref=main", "#x", "/"]),
)


@settings(max_examples=EXAMPLES)
@given(url_parts)
def test_repository_urls_never_leak_credentials(parts: tuple[str, str, str, str, list[str], str]) -> None:
    scheme, user_info, host, port, segments, suffix = parts
    url = f"{scheme}{user_info}{host}{port}/{'/'.join(segments)}{suffix}"
    outcome = DEFAULT.validate(json.dumps({**VALID_JOBS[0], "repository": url}).encode())
    check_outcome(outcome, DEFAULT)
    if SECRET in url:
        assert isinstance(outcome, Rejection)
        assert SECRET not in repr(outcome)


GIT = shutil.which("git")


def accepts_branch(name: str) -> bool:
    issues: list[Issue] = []
    check_branch("branch", name, issues)
    return not issues


# Mostly plausible names made of components, so that the subtle rules get exercised, not only the
# characters that fail at once.
ref_component = st.sampled_from(
    [
        "a",
        "b.c",
        ".lock",
        "x.lock",
        "..",
        ".",
        "@",
        "@{",
        "ü",
        "a~",
        "a:b",
        "a b",
        "x*",
        "[",
        "a\\b",
        "\t",
        "\x7f",
    ]
) | st.text(alphabet="ab.-@{}/", max_size=5)
ref_names = st.one_of(
    st.lists(ref_component, min_size=1, max_size=4).map("/".join),
    st.lists(ref_component, min_size=1, max_size=4).map("".join),
    st.text(alphabet=NASTY.replace("\x00", ""), min_size=1, max_size=12),
)


@pytest.mark.skipif(GIT is None, reason="needs git to compare with git check-ref-format")
@settings(max_examples=250, deadline=None)
@given(ref_names)
def test_branch_rule_agrees_with_git_check_ref_format(name: str) -> None:
    # Our own additions to git's rules (no leading '-', not '@' alone) are tested in the table.
    if name.startswith("-") or name == "@":
        return
    assert GIT is not None
    by_git = subprocess.run(
        [GIT, "check-ref-format", f"refs/heads/{name}"], capture_output=True, timeout=10, check=False
    )
    assert accepts_branch(name) == (by_git.returncode == 0), name


TRICKY_REFS = [
    "main",
    "a..b",
    "a.lock/b",
    "x.lock",
    "a/.b",
    ".a",
    "a.",
    "a//b",
    "/a",
    "a/",
    "@",
    "@a",
    "a@{b",
    "a@b{",
    "a{b}",
    "ü/ß",
    "a b",
    "a\tb",
    "a~b",
    "a^b",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a]b",
    "a\\b",
    "a\x7fb",
    "a/b.lockx",
    "a.lock.b",
    "a/..b",
    "a../b",
    "...",
    "a/...",
    "-a",
    "a/-b",
    "a-",
    "#",
    "a#b",
    "{",
    "}",
]


@pytest.mark.skipif(GIT is None, reason="needs git to compare with git check-ref-format")
@pytest.mark.parametrize("name", TRICKY_REFS)
def test_tricky_branch_names_agree_with_git(name: str) -> None:
    if name.startswith("-") or name == "@":
        assert not accepts_branch(name)
        return
    assert GIT is not None
    by_git = subprocess.run(
        [GIT, "check-ref-format", f"refs/heads/{name}"], capture_output=True, timeout=10, check=False
    )
    assert accepts_branch(name) == (by_git.returncode == 0), name
