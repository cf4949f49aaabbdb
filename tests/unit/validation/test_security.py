"""Nothing dangerous reaches a worker: values a shell, git or docker would misread are refused.

Each refused value names its field and the rule it breaks; the attacks are security problems. Also
here: duplicate keys at any depth, and the time a maximum-size adversarial message takes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from support import SAMPLE_JOB

from orchestrator.config import DEFAULT_MAX_MESSAGE_BYTES, ValidationConfig
from orchestrator.messages import BuildJob, StopJob
from orchestrator.validation import JobValidator, Rejection
from orchestrator.validation.duplicates import DuplicateKey, duplicate_keys, key_bound

DEFAULT = JobValidator(ValidationConfig())
STRICT = JobValidator(ValidationConfig(forbid_unknown_fields=True))
SAMPLE: dict[str, Any] = SAMPLE_JOB
PATH_FIELDS = ("dockerFilePath", "composeFilePath", "contextDir")
#: The one timing bound of this suite, asked for by the issue: a maximum-size message of any shape.
ADVERSARIAL_BOUND_SECONDS = 0.05


def message(**changes: Any) -> bytes:
    return json.dumps({**SAMPLE, **changes}).encode()


def rejected(raw: bytes) -> Rejection:
    """The rejection of ``raw``, the same on the typed and the plain path."""
    outcome = DEFAULT.validate(raw)
    assert isinstance(outcome, Rejection), f"accepted: {outcome}"
    assert STRICT.validate(raw) == outcome
    return outcome


def only_reason(raw: bytes, field: str, rule: str, reason_class: str) -> str:
    """Assert that ``raw`` is refused for one reason, about ``field``, naming ``rule``."""
    rejection = rejected(raw)
    assert len(rejection.reasons) == 1, rejection.reasons
    reason = rejection.reasons[0]
    assert reason.startswith(f"{field}: "), reason
    assert rule in reason, reason
    assert reason.isprintable(), reason
    assert rejection.reason_class == reason_class
    return reason


# --- paths --------------------------------------------------------------------------------------

SHELL_METACHARACTERS = "$`;|&<>(){}'\"!#^ "
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
ZERO_WIDTH_AND_BOM = "\u200b\u200c\u200d\u2060\ufeff"
# Characters NFKC maps to '.', '/' or '\\', and look-alikes it leaves alone.
DOT_AND_SLASH_LOOKALIKES = "\uff0e\uff0f\u2025\u2024\ufe52\uff3c\u2215\u2044\u29f8\u3002"


def char_code(char: str) -> str:
    return f"U+{ord(char):04X}"


PATH_ATTACKS: list[Any] = [
    # option injection: docker build -f -x, git -C --upload-pack...
    pytest.param("-f", "must not have a segment starting with '-'", id="leading-dash"),
    pytest.param("--file=/etc/passwd", "must not have a segment starting with '-'", id="long-option"),
    pytest.param("app/-x/Dockerfile", "must not have a segment starting with '-'", id="segment-dash"),
    pytest.param("./-x", "must not have a segment starting with '-'", id="dot-then-dash"),
    *(
        pytest.param(f"a{c}b", f"must not contain shell metacharacters or spaces ({c!r})", id=f"shell-{c!r}")
        for c in SHELL_METACHARACTERS
    ),
    pytest.param("a\nb", "must not contain control characters (U+000A)", id="newline"),
    pytest.param("a\tb", "must not contain control characters (U+0009)", id="tab"),
    pytest.param("~/x", "must not contain '~' (a shell expands it to a home directory)", id="tilde"),
    pytest.param("~root", "must not contain '~'", id="tilde-user"),
    *(pytest.param(f"a{c}b", f"must not contain glob characters ({c!r})", id=f"glob-{c!r}") for c in "*?[]"),
    pytest.param("%2e%2e/etc", "must not contain '%' (no percent-encoding)", id="pct-dots-lower"),
    pytest.param("%2E%2E/etc", "must not contain '%' (no percent-encoding)", id="pct-dots-upper"),
    pytest.param("a%2fb", "must not contain '%'", id="pct-slash"),
    pytest.param("100%", "must not contain '%'", id="pct-bare"),
    *(
        pytest.param(
            f"{c}{c}{c}etc",
            f"must not contain look-alikes of '.', '/' or '\\' ({char_code(c)})",
            id=f"lookalike-{char_code(c)}",
        )
        for c in DOT_AND_SLASH_LOOKALIKES
    ),
    *(
        pytest.param(
            f"a{c}b", f"must not contain line or paragraph separators ({char_code(c)})", id=char_code(c)
        )
        for c in "\u2028\u2029"
    ),
    *(
        pytest.param(
            f"a{c}b", f"must not contain bidirectional control characters ({char_code(c)})", id=char_code(c)
        )
        for c in BIDI_CONTROLS
    ),
    *(
        pytest.param(f"a{c}b", f"must not contain invisible characters ({char_code(c)})", id=char_code(c))
        for c in ZERO_WIDTH_AND_BOM
    ),
    pytest.param("\ufeffDockerfile", "must not contain invisible characters (U+FEFF)", id="leading-bom"),
    pytest.param("a\u3164b", "must not contain invisible characters (U+3164)", id="hangul-filler"),
    pytest.param("a\ufe0fb", "must not contain invisible characters (U+FE0F)", id="variation-selector"),
    pytest.param(
        "Ｄockerfile",
        "must not contain characters that Unicode NFKC normalisation changes (U+FF24)",
        id="wide",
    ),
    pytest.param("a\u00a0b", "NFKC normalisation changes (U+00A0)", id="no-break-space"),
    pytest.param("ﬁle", "NFKC normalisation changes (U+FB01)", id="ligature"),
    # Each jamo is a letter NFKC keeps; together NFKC composes them into one syllable.
    pytest.param("\u1100\u1161", "NFKC normalisation changes", id="composing-jamo"),
]


@pytest.mark.parametrize("field", PATH_FIELDS)
@pytest.mark.parametrize(("value", "rule"), PATH_ATTACKS)
def test_dangerous_paths_are_refused_as_security_problems(field: str, value: str, rule: str) -> None:
    only_reason(message(**{field: value}), field, rule, "security")
    # whether the sender escapes non-ASCII or not
    only_reason(json.dumps({**SAMPLE, field: value}, ensure_ascii=False).encode(), field, rule, "security")


@pytest.mark.parametrize("field", PATH_FIELDS)
@pytest.mark.parametrize(
    "value",
    ["a:b", "a😀b", "a\u0301", "a\u00b7b", "a\ue000b"],
    ids=["colon", "emoji", "combining-mark", "middle-dot", "private-use"],
)
def test_other_characters_outside_the_allow_list_are_schema_problems(field: str, value: str) -> None:
    reason = only_reason(message(**{field: value}), field, "characters outside the allow-list", "schema")
    assert "allowed: letters, digits, '_', '.', '-', '+', '@', '=', ',' and '/'" in reason


def test_every_problem_of_a_path_is_reported_in_a_fixed_order() -> None:
    rejection = rejected(message(contextDir="/C:\\x/../-y;\u202e%"))
    assert [r.split(" must ")[1].split(" (")[0] for r in rejection.reasons] == [
        "not contain backslashes",
        "not contain bidirectional control characters",
        "not contain shell metacharacters or spaces",
        "not contain '%'",
        "not contain characters outside the allow-list",
        "be relative, not an absolute path",
        "not contain a '..' segment",
        "not have a segment starting with '-'",
    ]
    assert all(r.startswith("contextDir: ") for r in rejection.reasons)


def test_many_refused_characters_are_listed_five_at_a_time() -> None:
    reason = only_reason(message(contextDir="$;|&<>"), "contextDir", "shell metacharacters", "security")
    assert reason.endswith("must not contain shell metacharacters or spaces ('$', ';', '|', '&', '<', …)")


# --- branch -------------------------------------------------------------------------------------

BRANCH_ATTACKS: list[Any] = [
    pytest.param("+main", "must not start with '+' (git reads it as a forced refspec)", id="plus"),
    pytest.param("+refs/heads/main", "must not start with '+'", id="forced-refspec"),
    pytest.param("-c", "is not a valid git ref name (starts with '-')", id="dash"),
    *(
        pytest.param(f"a{c}b", f"must not contain shell metacharacters or spaces ({c!r})", id=f"shell-{c!r}")
        for c in "$`;|&<>(){}'\"!#"
    ),
    pytest.param("$(id)", "must not contain shell metacharacters or spaces ('$', '(', ')')", id="subshell"),
    pytest.param("a]b", "must not contain glob characters (']')", id="glob-close"),
    pytest.param("a%2e%2eb", "must not contain '%'", id="percent"),
    *(
        pytest.param(
            f"a{c}b", f"must not contain look-alikes of '.', '/' or '\\' ({char_code(c)})", id=char_code(c)
        )
        for c in DOT_AND_SLASH_LOOKALIKES
    ),
    *(
        pytest.param(
            f"a{c}b", f"must not contain line or paragraph separators ({char_code(c)})", id=char_code(c)
        )
        for c in "\u2028\u2029"
    ),
    *(
        pytest.param(
            f"a{c}b", f"must not contain bidirectional control characters ({char_code(c)})", id=char_code(c)
        )
        for c in BIDI_CONTROLS
    ),
    *(
        pytest.param(f"a{c}b", f"must not contain invisible characters ({char_code(c)})", id=char_code(c))
        for c in ZERO_WIDTH_AND_BOM
    ),
]


@pytest.mark.parametrize(("value", "rule"), BRANCH_ATTACKS)
def test_dangerous_branches_are_refused_as_security_problems(value: str, rule: str) -> None:
    reason = only_reason(message(branch=value), "branch", rule, "security")
    assert reason.startswith(f"branch: {value!r} ") or "\\u" in reason or "\\x" in reason


NOT_BRANCHES = [
    "HEAD",
    "head",
    "Head",
    "FETCH_HEAD",
    "ORIG_HEAD",
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REBASE_HEAD",
    "REVERT_HEAD",
    "BISECT_HEAD",
    "AUTO_MERGE",
    "auto_merge",
    "SOME_FUTURE_HEAD",
    "refs/heads/HEAD",
]


@pytest.mark.parametrize("value", NOT_BRANCHES)
def test_special_refs_are_not_branches(value: str) -> None:
    only_reason(
        message(branch=value), "branch", f"{value!r} is a special git ref (like HEAD), not a branch", "schema"
    )


@pytest.mark.parametrize(
    "value",
    ["refs/tags/v1.0", "refs/remotes/origin/main", "refs/pull/1/head", "refs/heads/refs/tags/v1", "refs/x"],
)
def test_full_refs_other_than_a_branch_are_refused(value: str) -> None:
    only_reason(
        message(branch=value), "branch", "is a full ref name outside refs/heads/, not a branch", "schema"
    )


def test_a_full_branch_ref_is_normalised_and_its_branch_checked() -> None:
    job = DEFAULT.validate(message(branch="refs/heads/release/2026.01"))
    assert isinstance(job, BuildJob)
    assert job.branch == "release/2026.01"
    assert STRICT.validate(message(branch="refs/heads/release/2026.01")) == job
    only_reason(message(branch="refs/heads/-x"), "branch", "(starts with '-')", "security")
    only_reason(message(branch="refs/heads/+x"), "branch", "must not start with '+'", "security")


@pytest.mark.parametrize(
    "value", ["main", "feature/retry-backoff", "fix/ümlaut", "a/-b", "HEADS", "ahead", "v1+2"]
)
def test_ordinary_branches_still_pass(value: str) -> None:
    job = DEFAULT.validate(message(branch=value))
    assert isinstance(job, BuildJob)
    assert job.branch == value


# --- empty optional values mean absent; required ones stay required ------------------------------


@pytest.mark.parametrize(
    ("field", "attr", "default"),
    [
        ("branch", "branch", "main"),
        ("dockerFilePath", "docker_file_path", "Dockerfile"),
        ("composeFilePath", "compose_file_path", None),
        ("contextDir", "context_dir", "."),
        ("createdAt", "created_at", None),
        ("portNumber", "port_number", None),
    ],
)
def test_an_empty_optional_field_takes_its_default(field: str, attr: str, default: object) -> None:
    for validator in (DEFAULT, STRICT):
        job = validator.validate(message(**{field: ""}))
        assert isinstance(job, BuildJob), job
        assert getattr(job, attr) == default
        without = {k: v for k, v in SAMPLE.items() if k != field}
        assert job == validator.validate(json.dumps(without).encode())


@pytest.mark.parametrize(
    ("field", "rule"),
    [
        ("type", "'' is not a known job type"),
        ("deploymentId", "'' does not match"),
        ("repository", "must not be empty"),
        ("autoDeploy", "expected a boolean, got a string"),
    ],
)
def test_an_empty_required_or_boolean_field_is_still_an_error(field: str, rule: str) -> None:
    rejection = rejected(message(**{field: ""}))
    assert any(r.startswith(f"{field}: ") and rule in r for r in rejection.reasons), rejection.reasons


def test_whitespace_is_not_empty() -> None:
    only_reason(
        message(composeFilePath=" "), "composeFilePath", "shell metacharacters or spaces (' ')", "security"
    )


# --- duplicate keys ------------------------------------------------------------------------------

BASE = '"type": "stop", "deploymentId": "dep-1"'

DUPLICATES: list[Any] = [
    pytest.param('{"type": "stop", "deploymentId": "dep-1", "type": "build"}', ["'type'"], id="type"),
    pytest.param(
        '{"type": "stop", "deploymentId": "dep-1", "typ\\u0065": "build"}', ["'type'"], id="escaped"
    ),
    pytest.param(
        '{"type": "stop", "deploymentId": "dep-1", "\\u0074ype": "stop"}', ["'type'"], id="escaped-2"
    ),
    pytest.param('{"type"  :  "stop", "deploymentId": "dep-1", "type"\n:"stop"}', ["'type'"], id="spaced"),
    pytest.param(f'{{{BASE}, "a\\/b": 1, "a/b": 2}}', ["'a/b'"], id="escaped-slash"),
    pytest.param(f'{{{BASE}, "\\ud83d\\ude00": 1, "😀": 2}}', ["'😀'"], id="surrogate-pair"),
    pytest.param(f'{{{BASE}, "": 1, "": 2}}', ["''"], id="empty-key"),
    pytest.param(f'{{{BASE}, "x": {{"k": 1, "k": 2}}}}', ["'k' in a nested object"], id="nested"),
    pytest.param(f'{{{BASE}, "x": [1, {{"k": 1, "k": 2}}]}}', ["'k' in a nested object"], id="in-array"),
    pytest.param(
        f'{{{BASE}, "x": ' + '{"a": ' * 40 + '{"k": 1, "k": 2}' + "}" * 40 + "}",
        ["'k' in a nested object"],
        id="deep",
    ),
    pytest.param(
        f'{{{BASE}, "x": {{"k": 1}}, "y": {{"k": 1, "z": {{}}, "k": 2}}}}',
        ["'k' in a nested object"],
        id="after-sibling",
    ),
    pytest.param(f'{{{BASE}, "a": 1, "b": 2, "a": 3, "b": 4}}', ["'a'", "'b'"], id="two"),
    pytest.param(
        f'{{{BASE}, "q\\"uote": "\\":", "q\\u0022uote": 1}}', ["'q\"uote'"], id="escaped-quote-in-key"
    ),
]


@pytest.mark.parametrize(("raw", "keys"), DUPLICATES)
def test_duplicate_keys_are_refused_at_any_depth(raw: str, keys: list[str]) -> None:
    rejection = rejected(raw.encode())
    assert rejection.reasons == tuple(f"message: duplicate key {key}" for key in keys)
    assert rejection.reason_class == "security"


NOT_DUPLICATES = [
    pytest.param(f'{{{BASE}, "x": {{"k": 1}}, "y": {{"k": 1}}}}', id="siblings"),
    pytest.param(f'{{{BASE}, "x": [{{"k": 1}}, {{"k": 2}}]}}', id="array-items"),
    pytest.param(f'{{{BASE}, "x": {{"type": "build", "x": {{"x": 1}}}}}}', id="levels"),
    pytest.param(f'{{{BASE}, "x": "type", "y": ["type", "x"]}}', id="values"),
    pytest.param(f'{{{BASE}, "x": "\\"type\\": \\"build\\"", "y": "\\"type\\":"}}', id="quoted-in-strings"),
    pytest.param(f'{{{BASE}, "x": ":", "y": "\\":", "z": "{{\\"type\\":1}}"}}', id="colons-and-braces"),
    pytest.param(f'{{{BASE}, "Type": 1, "TYPE": 2, "type ": 3}}', id="near-misses"),
    pytest.param(f'{{{BASE}, "\\\\": 1, "\\\\\\\\": 2}}', id="backslash-keys"),
]


@pytest.mark.parametrize("raw", NOT_DUPLICATES)
def test_equal_keys_in_different_objects_or_strings_are_not_duplicates(raw: str) -> None:
    assert DEFAULT.validate(raw.encode()) == StopJob(deployment_id="dep-1")


def test_a_duplicate_keeps_the_deployment_id_and_type_only_when_they_are_not_the_repeated_keys() -> None:
    repeated_type = rejected(b'{"type": "stop", "deploymentId": "dep-1", "type": "build"}')
    assert (repeated_type.deployment_id, repeated_type.job_type) == ("dep-1", None)
    repeated_id = rejected(b'{"type": "stop", "deploymentId": "dep-1", "deploymentId": "dep-2"}')
    assert (repeated_id.deployment_id, repeated_id.job_type) == (None, "stop")
    other = rejected(b'{"type": "stop", "deploymentId": "dep-1", "x": 1, "x": 2}')
    assert (other.deployment_id, other.job_type) == ("dep-1", "stop")
    unknown_type = rejected(b'{"type": "destroy", "deploymentId": "dep-1", "x": 1, "x": 2}')
    assert unknown_type.job_type is None


def test_duplicate_keys_are_found_before_any_other_problem() -> None:
    rejection = rejected(message(branch="../x", deploymentId="dep 1")[:-1] + b', "branch": "main"}')
    assert rejection.reasons == ("message: duplicate key 'branch'",)
    assert rejection.deployment_id is None


def test_many_duplicate_keys_are_summed_up() -> None:
    raw = "{" + BASE + "".join(f', "k{i}": 1, "k{i}": 2' for i in range(25)) + "}"
    rejection = rejected(raw.encode())
    assert len(rejection.reasons) == 11
    assert rejection.reasons[:2] == ("message: duplicate key 'k0'", "message: duplicate key 'k1'")
    assert rejection.reasons[-1] == "message: 15 more duplicate keys"


def test_duplicate_key_names_are_shown_safely() -> None:
    secret = "https://user:hunter2-S3CRET@github.com/a/b"
    raw = (
        json.dumps({"type": "stop", "deploymentId": "dep-1"})[:-1] + f', "{secret}\\n": 1, "{secret}\\n": 2}}'
    )
    rejection = rejected(raw.encode())
    assert "hunter2" not in rejection.reason
    assert rejection.reason.isprintable()


def test_the_contract_form_takes_the_quick_duplicate_check() -> None:
    # one object, nothing nested, no comma in a value: the byte counts alone prove no key repeats
    for raw in (json.dumps(SAMPLE).encode(), json.dumps(SAMPLE, indent=2).encode()):
        assert key_bound(raw) == len(SAMPLE)
    escaped = json.dumps(SAMPLE).encode().replace(b'"main"', b'"ma\\u0069n"')
    assert key_bound(escaped) == len(SAMPLE)
    assert key_bound(message(branch="a,b")) == len(SAMPLE) + 1  # an overestimate: the full scan runs
    assert key_bound(json.dumps({**SAMPLE, "x": {}}).encode()) is None
    assert key_bound(message(branch="a{b")) is None


def test_duplicate_keys_on_their_own() -> None:
    raw = b'{"a": {"b": 1, "b": [{"c": 1, "c": 2}]}, "a": 2, "d": "\\"a\\":"}'
    assert duplicate_keys(raw) == [
        DuplicateKey("b", nested=True),
        DuplicateKey("c", nested=True),
        DuplicateKey("a", nested=False),
    ]
    assert duplicate_keys(b"}]{") == []  # not JSON: no exception either


# --- maximum-size adversarial messages -----------------------------------------------------------


def sized(doc: dict[str, Any], field: str, unit: str, tail: str = "", head: str = "") -> bytes:
    """``doc`` with ``field`` = head + unit * n + tail, n as large as fits, padded to the size limit."""
    base = len(json.dumps({**doc, field: head + tail}).encode())
    unit_bytes = len(json.dumps(unit).encode()) - 2
    count = (DEFAULT_MAX_MESSAGE_BYTES - base) // unit_bytes
    raw = json.dumps({**doc, field: head + unit * count + tail}).encode()
    raw = raw[:-1] + b" " * (DEFAULT_MAX_MESSAGE_BYTES - len(raw)) + b"}"
    assert len(raw) == DEFAULT_MAX_MESSAGE_BYTES
    return raw


def whole(text: str) -> bytes:
    """``text`` padded with spaces to exactly the size limit."""
    raw = text.encode()
    assert len(raw) <= DEFAULT_MAX_MESSAGE_BYTES
    return raw + b" " * (DEFAULT_MAX_MESSAGE_BYTES - len(raw))


def repeat_to_fit(head: str, unit: str, tail: str) -> str:
    return head + unit * ((DEFAULT_MAX_MESSAGE_BYTES - len(head) - len(tail)) // len(unit)) + tail


def many_keys() -> str:
    """A flat object of as many distinct keys as fit."""
    text, i = '{"type": "stop", "deploymentId": "dep-1"', 0
    while len(text) + len(f', "k{i}": 0') + 1 <= DEFAULT_MAX_MESSAGE_BYTES:
        text += f', "k{i}": 0'
        i += 1
    return text + "}"


ADVERSARIAL: list[Any] = [
    pytest.param(sized(SAMPLE, "type", "b"), id="type"),
    pytest.param(sized(SAMPLE, "deploymentId", "a", "!"), id="deploymentId"),
    pytest.param(sized(SAMPLE, "repository", "a/", head="https://github.com/"), id="repository-path"),
    pytest.param(sized(SAMPLE, "repository", "a.", head="https://"), id="repository-host"),
    pytest.param(sized(SAMPLE, "repository", "%2e", head="https://github.com/"), id="repository-pct"),
    pytest.param(sized(SAMPLE, "branch", "a/", "."), id="branch"),
    pytest.param(sized(SAMPLE, "branch", "\u202e"), id="branch-bidi"),
    *(pytest.param(sized(SAMPLE, field, "a/", "!"), id=f"{field}-segments") for field in PATH_FIELDS),
    *(pytest.param(sized(SAMPLE, field, "./"), id=f"{field}-dots") for field in PATH_FIELDS),
    *(pytest.param(sized(SAMPLE, field, "-"), id=f"{field}-dashes") for field in PATH_FIELDS),
    *(pytest.param(sized(SAMPLE, field, "\uff0e"), id=f"{field}-lookalikes") for field in PATH_FIELDS),
    pytest.param(sized(SAMPLE, "createdAt", "0", head="2026-01-15T10:30:00"), id="createdAt"),
    pytest.param(sized(SAMPLE, "portNumber", "9"), id="portNumber"),
    pytest.param(sized(SAMPLE, "autoDeploy", "t"), id="autoDeploy"),
    pytest.param(sized(SAMPLE, "extra", "\\"), id="escaped-backslashes"),
    pytest.param(sized(SAMPLE, "extra", '"'), id="escaped-quotes"),
    pytest.param(
        whole(repeat_to_fit('{"type": "stop", "deploymentId": "dep-1"', ', "k": 0', "}")), id="dup-keys"
    ),
    pytest.param(
        whole(repeat_to_fit('{"type": "stop", "deploymentId": "dep-1", "x": [', '{"k":0},', "0]}")),
        id="many-objects",
    ),
    pytest.param(
        whole(repeat_to_fit('{"type": "stop", "deploymentId": "dep-1", "x": [', '"\\u0074",', "0]}")),
        id="many-escaped-strings",
    ),
    pytest.param(
        whole('{"type": "stop", "deploymentId": "dep-1", "x": ' + '{"a":' * 900 + "0" + "}" * 901),
        id="deep-objects",
    ),
    pytest.param(whole("[" * 30000 + "]" * 30000), id="deep-arrays"),
    pytest.param(whole(many_keys()), id="many-keys"),
]


@pytest.mark.parametrize("raw", ADVERSARIAL)
def test_a_maximum_size_adversarial_message_is_validated_quickly(raw: bytes) -> None:
    assert len(raw) == DEFAULT_MAX_MESSAGE_BYTES
    for validator in (DEFAULT, STRICT):
        validator.validate(raw)  # warm up
        # the best of three, so that another process's burst does not fail the test
        elapsed = min(timed(validator, raw) for _ in range(3))
        assert elapsed < ADVERSARIAL_BOUND_SECONDS, f"{elapsed * 1000:.1f} ms"


def timed(validator: JobValidator, raw: bytes) -> float:
    start = time.perf_counter()
    validator.validate(raw)
    return time.perf_counter() - start
