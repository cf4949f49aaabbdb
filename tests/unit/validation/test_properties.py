"""Properties of the validator: whatever comes in, a job or a reasoned rejection comes out, never a raise."""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import subprocess
import unicodedata
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SAMPLE_JOB

from orchestrator.config import ValidationConfig
from orchestrator.messages import JobBase, SourceJob, encode
from orchestrator.validation import REASON_CLASSES, JobValidator, Rejection
from orchestrator.validation.duplicates import DuplicateKey, duplicate_keys, key_bound
from orchestrator.validation.rules import Issue, check_branch, check_relative_path
from orchestrator.validation.validator import INTERNAL_ERROR_REASON

EXAMPLES = 300
DEFAULT = JobValidator(ValidationConfig())
STRICT = JobValidator(ValidationConfig(forbid_unknown_fields=True))
ALLOWED_HOSTS = {"github.com", "gitlab.com", "bitbucket.org"}
SECRET = "pw-S3CRET-x9"
# A reason starts with the field it is about: a plain name, or a quoted and escaped one.
REASON_START = re.compile(r"(?:[A-Za-z0-9_.-]+|'.*'|\".*\")(?:…? \(\d+ characters\))?: \S")

VALID_JOBS: list[dict[str, Any]] = [
    SAMPLE_JOB,
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

# Characters that matter to some rule: separators, git's forbidden ones, controls, look-alikes,
# shell metacharacters, invisible and bidirectional characters, letters NFKC changes or keeps.
NASTY = (
    "ab/.-_@{}~^:?*[]\\ \t\n\x00\x7f\x85%#&=+lockgit0123456789ü\u202eі"
    ";$|'\"`!,\u2028\uff0e\uff0f\u2024\u2215\u200b\ufeff\u2066\uff21\u1100\u1161"
)
# What a branch or a path may hold (an independent statement of the allow-list of the rules).
ALLOWED_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+@=,/")
SPECIAL_REFS = {
    "HEAD",
    "FETCH_HEAD",
    "ORIG_HEAD",
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REBASE_HEAD",
    "AUTO_MERGE",
}
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
            assert all(not segment.startswith("-") for segment in path.split("/"))
            assert only_allowed_characters(path), path
    assert only_allowed_characters(job.branch), job.branch
    assert not job.branch.startswith(("-", "+", "refs/"))
    assert job.branch.upper() not in SPECIAL_REFS
    assert job.port_number is None or 1 <= job.port_number <= 65535
    assert isinstance(job.auto_deploy, bool)


def only_allowed_characters(value: str) -> bool:
    """ASCII letters, digits, ``_ . - + @ = , /``, and other letters and digits NFKC keeps."""
    return unicodedata.is_normalized("NFKC", value) and all(
        char in ALLOWED_ASCII
        or (
            not char.isascii()
            and unicodedata.category(char)[0] in "LN"
            and unicodedata.normalize("NFKC", char) == char
        )
        for char in value
    )


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


def refused_by_our_rules_alone(name: str) -> bool:
    """Our additions to git's rules: no option or forced refspec, not a special ref, allow-listed."""
    return (
        name.startswith(("-", "+", "refs/"))
        or name == "@"
        or name.upper() in SPECIAL_REFS
        or not only_allowed_characters(name)
    )


def agrees_with_git(name: str) -> None:
    """We refuse what git refuses, and accept what it accepts unless one of our own rules says no."""
    assert GIT is not None
    by_git = subprocess.run(
        [GIT, "check-ref-format", f"refs/heads/{name}"], capture_output=True, timeout=10, check=False
    )
    expected = by_git.returncode == 0 and not refused_by_our_rules_alone(name)
    assert accepts_branch(name) == expected, name


@pytest.mark.skipif(GIT is None, reason="needs git to compare with git check-ref-format")
@settings(max_examples=250, deadline=None)
@given(ref_names)
def test_branch_rule_agrees_with_git_check_ref_format(name: str) -> None:
    agrees_with_git(name)


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
    agrees_with_git(name)


@settings(max_examples=EXAMPLES)
@given(st.text(alphabet=NASTY, min_size=1, max_size=30))
def test_an_accepted_path_is_safe_on_a_command_line(value: str) -> None:
    issues: list[Issue] = []
    path = check_relative_path("contextDir", value, issues)
    if issues:
        assert all(i.reason.startswith("contextDir: ") for i in issues)
        return
    assert only_allowed_characters(path), path
    assert path == "." or all(segment not in ("", ".", "..") for segment in path.split("/"))
    assert not any(segment.startswith("-") for segment in path.split("/"))
    assert posixpath.normpath(value) == path


# --- duplicate keys -----------------------------------------------------------------------------


class Obj(list[tuple[str, str, Any]]):
    """A JSON object as written: (key, how it is written, value), equal keys allowed."""


KEY_STYLES = ("plain", "ascii", "escaped")
keys = st.sampled_from(["a", "b", "type", "", "é", "😀", "a/b", 'q"', "\\"]) | st.text(max_size=3)
finite_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
trees = st.recursive(
    finite_scalars | st.text(max_size=10) | nasty_text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(st.tuples(keys, st.sampled_from(KEY_STYLES), children), max_size=5).map(Obj)
    ),
    max_leaves=20,
)


def write_key(key: str, style: str) -> str:
    if style == "plain":
        return json.dumps(key, ensure_ascii=False)
    if style == "ascii":
        return json.dumps(key)
    # every character escaped, surrogate pairs for those beyond the BMP
    units = key.encode("utf-16-be")
    return '"' + "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2)) + '"'


def write(node: Any, space: str) -> str:
    if isinstance(node, Obj):
        pairs = (f"{write_key(k, style)}{space}:{space}{write(v, space)}" for k, style, v in node)
        return "{" + ",".join(pairs) + "}"
    if isinstance(node, list):
        return "[" + f",{space}".join(write(item, space) for item in node) + "]"
    return json.dumps(node, ensure_ascii=False)


def repeated_keys(node: Any, depth: int = 0) -> list[DuplicateKey]:
    """The reference: each repeated key once, in the order a reader meets its second occurrence."""
    found: list[DuplicateKey] = []
    if isinstance(node, Obj):
        seen: set[str] = set()
        for key, _, value in node:
            duplicate = DuplicateKey(key, nested=depth > 0)
            if key in seen and duplicate not in found:
                found.append(duplicate)
            seen.add(key)
            found.extend(d for d in repeated_keys(value, depth + 1) if d not in found)
    elif isinstance(node, list):
        for item in node:
            found.extend(d for d in repeated_keys(item, depth + 1) if d not in found)
    return found


def key_count(node: Any) -> int:
    if isinstance(node, Obj):
        return len(node) + sum(key_count(v) for _, _, v in node)
    if isinstance(node, list):
        return sum(key_count(item) for item in node)
    return 0


@settings(max_examples=EXAMPLES)
@given(trees, st.sampled_from(["", " ", "\n  "]))
def test_duplicate_keys_are_found_exactly(tree: Any, space: str) -> None:
    raw = write(tree, space).encode("utf-8", "surrogatepass")
    expected = repeated_keys(tree)
    if not isinstance(tree, Obj):
        expected = [DuplicateKey(d.key, nested=True) for d in expected]
    assert duplicate_keys(raw) == expected
    bound = key_bound(raw)
    if bound is not None:
        # the quick check may only ever overestimate
        assert bound >= key_count(tree)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, st.sampled_from(KEY_STYLES), trees), max_size=4), st.booleans())
def test_a_message_with_a_repeated_key_is_refused_on_both_paths(
    extra: list[tuple[str, str, Any]], int_port: bool
) -> None:
    job = {**VALID_JOBS[0], "portNumber": 3000 if int_port else "3000"}
    tree = Obj([*((k, "plain", v) for k, v in job.items()), *extra])
    raw = write(tree, " ").encode("utf-8", "surrogatepass")
    repeated = repeated_keys(tree)
    for validator in (DEFAULT, STRICT):
        outcome = validator.validate(raw)
        check_outcome(outcome, validator)
        if repeated:
            assert isinstance(outcome, Rejection)
            assert outcome.reason_class == "security"
            assert all(reason.startswith("message: ") for reason in outcome.reasons)
        elif isinstance(outcome, Rejection):
            assert not any("duplicate key" in reason for reason in outcome.reasons)
