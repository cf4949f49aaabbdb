"""Redaction: no credential survives into logs, events, headers or dead-lettered bodies; bounded cost."""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from orchestrator.config import DEFAULT_MAX_MESSAGE_BYTES
from orchestrator.dead_letter_body import redact_body
from orchestrator.events import MAX_REASON_CHARS, make_event
from orchestrator.logs import JsonFormatter, TextFormatter
from orchestrator.redaction import MAX_SITES, redact_text, redact_url, redact_values

SECRET = "hunter2-S3cret"
MB = 1_000_000
#: The bound the issue sets for redacting 1 MB of adversarial text, or a maximum-size job.
BOUND_SECONDS = 0.050


def job(**fields: Any) -> bytes:
    """A build job as the wire carries it, with ``fields`` added or overriding."""
    doc = {"type": "build", "deploymentId": "dep-1", "repository": "https://github.com/a/b.git", **fields}
    return json.dumps(doc, separators=(",", ":")).encode()


def strings_of(document: Any) -> list[str]:
    """Every key and string value in a decoded JSON document."""
    found: list[str] = []
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


# --- URLs in free text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"cannot reach amqp://guest:{SECRET}@rabbit:5672/", "cannot reach amqp://***@rabbit:5672/"),
        (f"https://{SECRET}@github.com/a/b", "https://***@github.com/a/b"),
        # An "@" or "/" in the password: everything up to the last "@" of the word goes.
        ("https://user:p@ss/word@github.com/x", "https://***@github.com/x"),
        ("https://user:p@ss@github.com/x", "https://***@github.com/x"),
        ("https://user:pa/ss:wo@rd@github.com/x?y=1", "https://***@github.com/x?y=1"),
        # Even "://" in the password.
        ("https://user:pa://ss@github.com/x", "https://***@github.com/x"),
        ("see https://a:b@h1/x and ftp://c:d@h2/y.", "see https://***@h1/x and ftp://***@h2/y."),
        ('url="https://u:p@h/x" next="me@example.com"', 'url="https://***@h/x" next="me@example.com"'),
        ("<https://u:p@h/x>", "<https://***@h/x>"),
    ],
)
def test_user_info_is_redacted_up_to_the_last_at_of_its_word(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "escaped",
    [
        "https:\\/\\/u:{s}@github.com\\/x",  # JSON's escaped slash
        "https://u:{s}\\u0040github.com/x",  # "@" as \u0040
        "https\\u003a//u\\u003a{s}@github.com/x",  # ":" as \u003a
        "https\\u003A\\u002F\\u002Fu:{s}@github.com/x",  # upper-case hex
        "https:\\u002f\\u002fu:{s}\\u0040github.com/x",
        "https:\\\\\\/\\\\\\/u:{s}\\\\\\u0040github.com/x",  # escaped twice: JSON in a JSON string
        "https:\\\\\\\\\\\\\\/\\\\\\\\\\\\\\/u:{s}@github.com/x",  # three times
    ],
)
def test_json_escapes_do_not_hide_a_url(escaped: str) -> None:
    redacted = redact_text(escaped.format(s=SECRET))
    assert SECRET not in redacted
    assert redacted.startswith("https://***@github.com")


def test_text_without_credentials_comes_back_as_the_same_object() -> None:
    for text in [
        "plain words",
        "https://github.com/a/b.git and me@example.com",
        'escaped \\/ slash, "quoted" \\\\ backslashes, \\u0040 at, key=value&other=1',
        "scp-like git@github.com:a/b.git",
    ]:
        assert redact_text(text) is text


# --- token parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "token",
        "Token",
        "private_token",
        "PRIVATE-TOKEN",
        "access_token",
        "accessToken",
        "x-amz-security-token",
        "X-Amz-Security-Token",
        "password",
        "db_password",
        "PASSWD",
        "secret",
        "client_secret",
        "api_key",
        "API-KEY",
        "apiKey",
        "aws_secret_access_key",
        "sig",
        "SIG",
        "signature",
        "X-Amz-Signature",
        "X-Amz-Credential",
    ],
)
def test_token_like_parameter_values_are_redacted_in_any_case(name: str) -> None:
    for text in [
        f"https://github.com/a/b?{name}={SECRET}",
        f"https://github.com/a/b?x=1&{name}={SECRET}&y=2",
        f"{name}={SECRET} then more",
        f"--{name}={SECRET}",
    ]:
        redacted = redact_text(text)
        assert SECRET not in redacted, text
        assert f"{name}=***" in redacted


def test_other_parameters_are_kept() -> None:
    text = "https://github.com/a/b?branch=main&xsig=1&design=2&tokens=3&page_size=10"
    assert redact_text(text) is text
    assert redact_text("?x=1&sig=abc&y=2") == "?x=1&sig=***&y=2"


# --- redact_url ---------------------------------------------------------------------------------------


def test_redact_url_keeps_the_user_name_and_redacts_tokens() -> None:
    assert redact_url(f"amqp://builder:{SECRET}@rabbit:5672/%2F") == "amqp://builder:***@rabbit:5672/%2F"
    assert redact_url(f"redis://:{SECRET}@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url(f"https://h/x?private_token={SECRET}&a=1") == "https://h/x?private_token=***&a=1"


def test_redact_url_with_an_ambiguous_authority_redacts_up_to_the_last_at() -> None:
    redacted = redact_url(f"https://user:p/{SECRET}@github.com/x")
    assert SECRET not in redacted
    assert redacted == "https://***@github.com/x"


# --- limits -----------------------------------------------------------------------------------------


def test_a_limit_bounds_the_result_and_keeps_the_redaction() -> None:
    text = f"failed: https://u:{SECRET}@h/x " + "y" * 5000
    assert redact_text(text, limit=100) == redact_text(text)[:100]
    assert len(redact_text(text, limit=100)) == 100


def test_a_url_cut_by_the_limit_is_redacted_up_to_the_cut() -> None:
    # The "@" lies far beyond the limit and its look-ahead: what is shown of the URL may be a password.
    text = "failed: https://u:" + SECRET * 100 + "@h/x"
    redacted = redact_text(text, limit=60)
    assert redacted == "failed: https://***"
    assert SECRET[:4] not in redacted


def test_event_reasons_are_redacted_and_bounded() -> None:
    event = make_event("dep-1", "build", "failed", 1, reason=f"git: https://u:{SECRET}@h/x " + "z" * 5000)
    assert event.reason is not None
    assert SECRET not in event.reason
    assert len(event.reason) == MAX_REASON_CHARS


# --- logs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_log_lines_and_tracebacks_are_redacted(formatter: logging.Formatter) -> None:
    try:
        raise ConnectionError(f"cannot reach amqp://guest:{SECRET}@rabbit:5672/")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "orchestrator.x",
        logging.ERROR,
        __file__,
        1,
        "publish to %s failed",
        (f"https://u:{SECRET}@h",),
        exc_info,
    )
    line = formatter.format(record)
    assert SECRET not in line
    assert "amqp://***@rabbit:5672/" in line.replace("\\/", "/")


# --- dead-lettered bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        job(),
        job(branch="feature/x", dockerFilePath="docker/Dockerfile", note="a=b, c://d", mail="e@f"),
        b'{"repository":"https:\\/\\/github.com\\/a\\/b.git","x":"caf\\u00e9","n":1.50E+2,"t":true}',
        b'{"a" : [ 1, 2.0, "x" ] , "a" : null}',  # duplicate keys and spacing, kept as they came
        b"not json at all, https://github.com/a/b",
        b"\xff\xfe not UTF-8 \x80",
        b"x" * (DEFAULT_MAX_MESSAGE_BYTES + 1),
        b"",
    ],
)
def test_a_body_without_credentials_is_returned_byte_for_byte(body: bytes) -> None:
    assert redact_body(body) is body


def test_credentials_in_job_fields_are_redacted_and_the_rest_kept() -> None:
    body = job(repository=f"https://u:{SECRET}@github.com/a/b.git", branch="main")
    redacted = redact_body(body)
    assert redacted == job(repository="https://***@github.com/a/b.git", branch="main")


@pytest.mark.parametrize(
    "literal",
    [
        '"https:\\/\\/u:{s}@github.com\\/a\\/b"',
        '"https://u:{s}\\u0040github.com/a/b"',
        '"https\\u003a\\/\\/u\\u003a{s}\\u0040github.com/a/b"',
        '"https\\u003A\\u002F\\u002Fu:{s}@github.com/a/b"',
        '"https://user:p@ss/{s}@github.com/a/b"',
        '"https://user:{s} with spaces and \\"quotes\\"@github.com/a/b"',
        '"{{\\"url\\": \\"https:\\\\/\\\\/u:{s}@github.com\\/a\\/b\\"}}"',  # a JSON document in a string
    ],
)
def test_escaped_credentials_in_a_json_body_are_redacted(literal: str) -> None:
    body = b'{"type":"build","repository":' + literal.format(s=SECRET).encode() + b"}"
    redacted = redact_body(body)
    assert SECRET.encode() not in redacted
    repository = msgspec.json.decode(redacted)["repository"]
    assert SECRET not in repository
    assert "github.com/a/b" in repository.replace("\\/", "/")


def test_nested_values_and_keys_are_redacted() -> None:
    body = json.dumps(
        {
            "type": "build",
            "extra": {
                "mirrors": [[{"url": f"https://m:{SECRET}@mirror/x"}], f"ftp://{SECRET}@h/y"],
                f"https://k:{SECRET}@h/z": "key holding a URL",
                "query": f"https://h/x?private_token={SECRET}&page=2",
            },
        }
    ).encode()
    redacted = msgspec.json.decode(redact_body(body))
    assert all(SECRET not in s for s in strings_of(redacted))
    assert redacted["extra"]["query"] == "https://h/x?private_token=***&page=2"
    assert redacted["extra"]["mirrors"][0][0]["url"] == "https://***@mirror/x"


def test_values_of_secret_keys_are_redacted_whole() -> None:
    body = b'{"password": "' + SECRET.encode() + b'", "apiToken" : 123456, "Client_Secret":"", "ok": "x"}'
    assert redact_body(body) == b'{"password": "***", "apiToken" : "***", "Client_Secret":"", "ok": "x"}'


def test_deeply_nested_json_is_redacted_as_text() -> None:
    body = b"[" * 5000 + b'"https:\\/\\/u:' + SECRET.encode() + b'@h\\/x"' + b"]" * 5000
    redacted = redact_body(body)
    assert SECRET.encode() not in redacted
    assert redacted == b"[" * 5000 + b'"https://***@h/x"' + b"]" * 5000


def test_a_body_that_is_not_utf8_keeps_its_other_bytes() -> None:
    body = b'\xff\xfe{"repository":"https:\\/\\/u:' + SECRET.encode() + b'@github.com/a"}\x80'
    assert redact_body(body) == b'\xff\xfe{"repository":"https://***@github.com/a"}\x80'


def test_an_oversize_body_is_redacted_as_text_escapes_and_all() -> None:
    padding = "p" * DEFAULT_MAX_MESSAGE_BYTES
    body = job(repository=f"https://u:{SECRET}@github.com/a", padding=padding)
    body = body.replace(b"/", b"\\/").replace(b"@", b"\\u0040")
    redacted = redact_body(body)
    assert SECRET.encode() not in redacted
    assert msgspec.json.decode(redacted)["repository"] == "https://***@github.com/a"


def test_a_body_dense_with_urls_fails_closed() -> None:
    # More places to look at than MAX_SITES: redaction turns coarse, and no secret survives it.
    body = job(repository=f"https://u:{SECRET}@github.com/a", urls=["https://h/x"] * (MAX_SITES + 1))
    redacted = redact_body(body, max_decoded_bytes=10 * MB)
    assert SECRET.encode() not in redacted


@pytest.mark.parametrize(
    "text",
    [
        "a=b&" * MAX_SITES + f"token={SECRET}",
        f"https://u:pa=ss{SECRET}@h/x " + "=x" * MAX_SITES,
        "https://h/x " * MAX_SITES + f"https://u:{SECRET}@h/x",
        "\\\\" * MAX_SITES + f"https:\\u002f\\u002fu:{SECRET}\\u0040h",
    ],
)
def test_text_with_too_much_to_examine_is_redacted_coarsely(text: str) -> None:
    assert SECRET not in redact_text(text)


def test_redact_values_keeps_values_apart() -> None:
    values = ["https://u:pa ss@h", "plain", f"x://a b://c@d {SECRET}", "token=x y", ""]
    assert redact_values(values) == ["https://***@h", "plain", f"x://***@d {SECRET}", "token=***", ""]
    assert redact_values(["a", "b"]) == ["a", "b"]


# --- property: no password survives, however the JSON escapes it ------------------------------------


def json_escaped(text: str, rnd: random.Random, *, only: str | None = None) -> str:
    """``text`` escaped for a JSON string literal, each character in a form picked at random.

    With ``only``, characters not in it are written plainly (escaped only where JSON must).
    """
    out = []
    for char in text:
        code = ord(char)
        forms = []
        if char in '"\\':
            forms.append("\\" + char)
        elif code < 0x20:
            forms.append(json.dumps(char)[1:-1])
        else:
            forms.append(char)
        if char == "/":
            forms.append("\\/")
        if code > 0xFFFF:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            forms.append(f"\\u{high:04x}\\u{low:04X}")
        else:
            forms.extend((f"\\u{code:04x}", f"\\u{code:04X}"))
        out.append(forms[0] if only is not None and char not in only else rnd.choice(forms))
    return "".join(out)


def assert_password_gone(redacted: bytes, password: str, encoded: str) -> None:
    text = redacted.decode("utf-8", "surrogateescape")
    for form in {
        password,
        json.dumps(password)[1:-1],
        json.dumps(password, ensure_ascii=False)[1:-1],
        encoded,
    }:
        assert form not in text, form
    start = text.index("{")
    document = msgspec.json.decode(text[start : text.rindex("}") + 1])
    assert all(password not in s for s in strings_of(document))


#: Anything but a lone surrogate, which a JSON text cannot carry as UTF-8.
ANY_CHARACTER = st.characters(blacklist_categories=["Cs"])
#: What free text may hold in a password: not what ends a word there (ASCII whitespace, quotes, angle
#: brackets), none of which a URL holds unencoded.
TEXT_CHARACTER = st.characters(blacklist_categories=["Cs"], blacklist_characters=' \t\n\r\f\v"<>')

URL_FORMS = [
    "https://builder:{}@github.com/a/b.git",
    "https://{}@github.com/a/b.git",
    "ssh://git:{}@github.com:22/a/b",
    "https://github.com/a/b.git?private_token={}",
    "https://bucket.s3.amazonaws.com/k?X-Amz-Credential=AKIA&X-Amz-Signature={}",
]
#: Where a password may land after redaction without having leaked (the templates' own text).
REDACTED_FORMS = (
    " ".join(redact_text(form.format("x")) for form in URL_FORMS)
    + ' {"type":"build","deploymentId":"dep-1","repository":"***"}'
)


def body_with(
    password: str, form: str, rnd: random.Random, *, padding: int = 0, only: str | None = None
) -> tuple[bytes, str]:
    """A job whose repository is ``form`` holding ``password``, JSON-escaped at random; and how the
    password was written.

    ``only``: the characters of ``form`` that may be escaped (all when None); the password's may be.
    """
    before, after = form.split("{}")
    escaped = [
        json_escaped(before, rnd, only=only),
        json_escaped(password, rnd),
        json_escaped(after, rnd, only=only),
    ]
    url = '"' + "".join(escaped) + '"'
    # Padding is whitespace between tokens: it cannot collide with a password in a word.
    return (
        '{"type":"build","deploymentId":"dep-1","repository":' + url + " " * padding + "}"
    ).encode(), escaped[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    password=st.text(ANY_CHARACTER, min_size=8, max_size=40),
    form=st.sampled_from(URL_FORMS),
    rnd=st.randoms(use_true_random=False),
)
def test_no_password_survives_in_a_json_body(password: str, form: str, rnd: random.Random) -> None:
    if "token" in form or "Signature" in form:
        assume("&" not in password)  # "&" ends a query parameter: the rest is another parameter
    assume(password not in REDACTED_FORMS)
    body, encoded = body_with(password, form, rnd)
    assert_password_gone(redact_body(body), password, encoded)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    password=st.text(TEXT_CHARACTER, min_size=8, max_size=40),
    form=st.sampled_from(URL_FORMS),
    rnd=st.randoms(use_true_random=False),
    how=st.sampled_from(["oversize", "not UTF-8"]),
)
def test_no_password_survives_in_a_body_redacted_as_text(
    password: str, form: str, rnd: random.Random, how: str
) -> None:
    if "token" in form or "Signature" in form:
        assume("&" not in password)
    assume(password not in REDACTED_FORMS)
    # Read as text, the escapes of ": / @ =" are understood, not escaped letters in parameter names.
    if how == "oversize":
        body, encoded = body_with(password, form, rnd, padding=DEFAULT_MAX_MESSAGE_BYTES, only=":/@=")
    else:
        body, encoded = body_with(password, form, rnd, only=":/@=")
        body = b"\xff" + body
    assert_password_gone(redact_body(body), password, encoded)


# --- cost ---------------------------------------------------------------------------------------------


def worst_of_three(redact: Callable[[], object]) -> float:
    redact()  # the first call may build a cached scan
    times = []
    for _ in range(3):
        start = time.perf_counter()
        redact()
        times.append(time.perf_counter() - start)
    return max(times)


ADVERSARIAL_TEXTS = {
    "a:// repeated": "a://" * (MB // 4),
    "a:// repeated, one @": "a://" * (MB // 4) + "b@c",
    "long run, then ://": "a" * MB + "://",
    ":// and no @": "://" * (MB // 3),
    ":// then many @": "https://" + "@" * MB,
    "many @ then ://": "@" * MB + "://x",
    "many token=": "token=" * (MB // 6),
    "many token=&": "token=&" * (MB // 7),
    "many n=": "n=" * (MB // 2),
    "many sig=": " sig=" * (MB // 5),
    "long scheme": "a" * MB + "://u:p@h",
    "https:// then a: repeated": "https://" + "a:" * (MB // 2),
    "https:// then a: repeated, one @": "https://" + "a:" * (MB // 2) + "@h",
    "many credentials": "a://b@ " * (MB // 7),
    "many credentials in one word": "a://b@" * (MB // 6),
    "credentials under the coarse limit": ("a://b@ " * (MAX_SITES - 1) + "x" * MB)[:MB],
    "backslashes": "\\" * MB,
    "escaped slashes": "\\/" * (MB // 2),
    "doubled escaped slashes": "\\\\/" * (MB // 3),
    "escaped at": "\\u0040" * (MB // 6),
    "escape prefixes": "\\\\u00" * (MB // 5) + "://a@b",
    "long backslash runs": ("\\" * 1000 + "/") * (MB // 1001),
    "redaction marks": "@***//:" * (MB // 7) + "a://b@c",
    "words": "hello world " * (MB // 12),
}


@pytest.mark.parametrize("name", ADVERSARIAL_TEXTS)
def test_redacting_a_megabyte_of_adversarial_text_is_fast(name: str) -> None:
    text = ADVERSARIAL_TEXTS[name]
    assert worst_of_three(lambda: redact_text(text)) < BOUND_SECONDS
    assert worst_of_three(lambda: redact_body(text.encode())) < BOUND_SECONDS


def max_size_job(filler: str) -> bytes:
    """A job of exactly the maximum message size, its fields full of ``filler``."""
    empty = job(repository="", branch="", extra=[""])
    room = DEFAULT_MAX_MESSAGE_BYTES - len(empty)
    text = filler * (room // 3 // len(json.dumps(filler)[1:-1]))
    body = job(repository=text, branch=text, extra=[text])
    body = body[:-3] + b" " * (DEFAULT_MAX_MESSAGE_BYTES - len(body)) + body[-3:]
    assert len(body) == DEFAULT_MAX_MESSAGE_BYTES
    return body


@pytest.mark.parametrize(
    "filler",
    ["a://", "a:", "@", "https://u:p@h ", "token=", "n=", "a://b@", "\\", "/", "\\u0040", "x"],
)
def test_redacting_a_maximum_size_job_is_fast(filler: str) -> None:
    body = max_size_job(filler)
    assert worst_of_three(lambda: redact_body(body)) < BOUND_SECONDS
    assert worst_of_three(lambda: redact_text(body.decode())) < BOUND_SECONDS


def test_redacting_a_maximum_size_job_of_many_strings_is_fast() -> None:
    kinds = ["https://u:p@h", "a=b", "\\/", "x", "https://h/x?token=t"]
    count = DEFAULT_MAX_MESSAGE_BYTES // 4
    body = b""
    while not body or len(body) > DEFAULT_MAX_MESSAGE_BYTES:
        count -= 100
        body = json.dumps({"type": "build", "extra": (kinds * count)[:count]}).encode()
    assert len(body) > DEFAULT_MAX_MESSAGE_BYTES - 1000
    assert worst_of_three(lambda: redact_body(body)) < BOUND_SECONDS


# --- finding the string literals of a body fast -----------------------------------------------------

_LITERAL_PIECES = st.sampled_from(['"', "\\", 'a"', "\\\\", ":", "=", "x" * 300, "é", "\u2028", "@"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_LITERAL_PIECES, max_size=12).map("".join), max_size=6), st.booleans())
def test_the_fast_literal_split_finds_exactly_what_the_regex_finds(
    strings: list[str], force_fast_path: bool
) -> None:
    from orchestrator import dead_letter_body

    text = msgspec.json.encode({f'k{i}\\"': s for i, s in enumerate(strings)}).decode()
    saved = dead_letter_body._CHARS_PER_QUOTE
    setattr(dead_letter_body, "_CHARS_PER_QUOTE", 0 if force_fast_path else saved)  # noqa: B010
    try:
        assert dead_letter_body._split_literals(text) == dead_letter_body._STRING_LITERAL.split(text)
    finally:
        setattr(dead_letter_body, "_CHARS_PER_QUOTE", saved)  # noqa: B010 (a Final, set in a test)
