"""The field rules of a job: one function per kind of field, shared by both validation paths.

A rule is called as ``rule(field, value, issues)``: it appends an :class:`Issue` for every problem it
finds (each reason starts with ``field:``) and returns the normalised value. Rules check the Python
type themselves, so the same rule serves a value decoded into a typed struct (where the check always
passes) and one read from a plain dict (where it may not).

Values the sender chose are echoed only through :func:`show`: quoted, escaped, cut short and with
anything that looks like a credential redacted, so a reason is safe in logs, events and headers.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from typing import Any, Final

import msgspec

from orchestrator.redaction import redact_text

#: The longest echo of a sender's value in a reason; longer values are cut.
MAX_SHOWN_CHARS: Final = 60
#: git refuses longer ref names on most file systems; we cap them in bytes (UTF-8).
MAX_BRANCH_BYTES: Final = 255
#: Longest dockerFilePath, composeFilePath or contextDir, in bytes (UTF-8).
MAX_PATH_BYTES: Final = 1024
#: Highest TCP port.
MAX_PORT: Final = 65535

SCHEMA: Final = "schema"
SECURITY: Final = "security"


class Issue(msgspec.Struct, frozen=True):
    """One problem of a message: the reason (``field: what is wrong``) and its kind.

    ``kind`` is :data:`SECURITY` for problems that look like an attack or could become one
    (credentials, traversal, injection), :data:`SCHEMA` for the rest.
    """

    reason: str
    kind: str = SCHEMA


#: ``rule(field, value, issues) -> normalised value``.
Rule = Callable[[str, Any, list[Issue]], Any]


# --- describing values --------------------------------------------------------------------------

_KIND_NAMES: Final[dict[type, str]] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
    list: "an array",
    dict: "an object",
}


def kind_of(value: Any) -> str:
    """The JSON kind of ``value`` as a reader says it: ``"an integer"``, ``"null"``, ``"an array"``."""
    return _KIND_NAMES.get(type(value), type(value).__name__)


def show(value: str) -> str:
    """``value`` quoted for a reason: credentials redacted, control characters escaped, cut short."""
    text = redact_text(value)
    if len(text) > MAX_SHOWN_CHARS:
        return f"{text[:MAX_SHOWN_CHARS]!r}… ({len(value)} characters)"
    return repr(text)


def expected(field: str, what: str, value: Any) -> Issue:
    """The type error ``field: expected <what>, got <kind>``."""
    return Issue(f"{field}: expected {what}, got {kind_of(value)}")


def _utf8_length(field: str, value: str, issues: list[Issue]) -> int | None:
    """The UTF-8 length of ``value``; ``None`` (and an issue) when it holds a lone surrogate."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        issues.append(Issue(f"{field}: is not valid Unicode (contains a lone surrogate)"))
        return None


# --- deploymentId -------------------------------------------------------------------------------

DEPLOYMENT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# fullmatch, not match: "$" alone would also accept a trailing newline.
_DEPLOYMENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def is_deployment_id(value: object) -> bool:
    """Whether ``value`` is a valid deploymentId (and therefore safe to echo and to use as a tag)."""
    return isinstance(value, str) and _DEPLOYMENT_ID.fullmatch(value) is not None


def check_deployment_id(field: str, value: Any, issues: list[Issue]) -> Any:
    """``deploymentId``: safe in ECS tags, RunTask clientToken and file names."""
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
    elif _DEPLOYMENT_ID.fullmatch(value) is None:
        issues.append(
            Issue(
                f"{field}: {show(value)} does not match {DEPLOYMENT_ID_PATTERN} "
                "(1-64 letters, digits, '_' or '-', starting with a letter or digit)"
            )
        )
    return value


# --- branch -------------------------------------------------------------------------------------

# Anything that could break one of git's ref-name rules; only a hit needs the (slower) explanation.
_SUSPECT_REF: Final = re.compile(r"\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{|^[-/.]|/\.|//|[/.]$|\.lock(?:/|$)")
_REF_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_REF_FORBIDDEN_CHARS: Final = "~^:?*[\\"


def _ref_name_problem(name: str) -> tuple[str, str] | None:
    """The first rule of ``git check-ref-format`` (plus ours) that ``name`` breaks, with its kind."""
    if ".." in name:
        return "contains '..'", SECURITY
    if _REF_CONTROL.search(name):
        return "contains a control character", SECURITY
    if name.startswith("-"):
        # git would read it as an option
        return "starts with '-'", SECURITY
    if " " in name:
        return "contains a space", SCHEMA
    for char in _REF_FORBIDDEN_CHARS:
        if char in name:
            return f"contains {char!r}", SECURITY if char == "\\" else SCHEMA
    if "@{" in name:
        return "contains '@{'", SCHEMA
    if name == "@":
        return "is '@' alone", SCHEMA
    if name.startswith("/"):
        return "starts with '/'", SCHEMA
    if name.endswith("/"):
        return "ends with '/'", SCHEMA
    if "//" in name:
        return "contains '//'", SCHEMA
    if name.endswith("."):
        return "ends with '.'", SCHEMA
    if name.endswith(".lock"):
        return "ends with '.lock'", SCHEMA
    for component in name.split("/"):
        if component.startswith("."):
            return f"component {show(component)} starts with '.'", SCHEMA
        if component.endswith(".lock"):
            return f"component {show(component)} ends with '.lock'", SCHEMA
    return None


def check_branch(field: str, value: Any, issues: list[Issue]) -> Any:
    """``branch``: a ref name ``git check-ref-format`` accepts, not an option, at most 255 bytes."""
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
        return value
    size = _utf8_length(field, value, issues)
    if size is None:
        return value
    if not value:
        issues.append(Issue(f"{field}: must not be empty"))
    elif size > MAX_BRANCH_BYTES:
        issues.append(Issue(f"{field}: is {size} bytes long, at most {MAX_BRANCH_BYTES} allowed"))
    elif _SUSPECT_REF.search(value) or value == "@":
        problem = _ref_name_problem(value)
        if problem is not None:
            why, kind = problem
            issues.append(Issue(f"{field}: {show(value)} is not a valid git ref name ({why})", kind))
    return value


# --- paths inside the repository ----------------------------------------------------------------

# C0 and C1 controls and DEL: they have no business in a file name and upset terminals and logs.
_PATH_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# The common case: an already normalised path of plain characters, accepted as is by one match
# (no empty, "." or ".." segment, no leading or trailing "/").
_PLAIN_PATH: Final = re.compile(r"(?:(?!\.{1,2}/)[\w.+@=,-]+/)*(?!\.{1,2}\Z)[\w.+@=,-]+", re.ASCII)


def check_relative_path(field: str, value: Any, issues: list[Issue]) -> Any:
    """``dockerFilePath``, ``composeFilePath``, ``contextDir``: a relative path inside the checkout.

    Normalised (``./a//b/`` becomes ``a/b``, an empty result ``.``); a ``..`` segment is rejected,
    never resolved, so the path cannot leave the checkout.
    """
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
        return value
    if value == "." or (len(value) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(value)):
        return value
    size = _utf8_length(field, value, issues)
    if size is None:
        return value
    if not value:
        issues.append(Issue(f"{field}: must not be empty"))
        return value
    if size > MAX_PATH_BYTES:
        issues.append(Issue(f"{field}: is {size} bytes long, at most {MAX_PATH_BYTES} allowed"))
        return value
    before = len(issues)
    if _PATH_CONTROL.search(value):
        issues.append(Issue(f"{field}: {show(value)} must not contain control characters", SECURITY))
    if "\\" in value:
        issues.append(Issue(f"{field}: {show(value)} must not contain backslashes (use '/')", SECURITY))
    if value.startswith("/"):
        issues.append(Issue(f"{field}: {show(value)} must be relative, not an absolute path", SECURITY))
    segments = value.split("/")
    if ".." in segments:
        issues.append(Issue(f"{field}: {show(value)} must not contain a '..' segment", SECURITY))
    if len(issues) > before:
        return value
    return "/".join(s for s in segments if s not in ("", ".")) or "."


# --- createdAt ----------------------------------------------------------------------------------

# The ranges are in the pattern so that a valid stamp costs one match; only days 29-31 need the
# calendar. Seconds may be 60 (RFC 3339 allows a leap second).
_RFC3339: Final = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    r"(?:\.[0-9]{1,9})?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_RFC3339_SHAPE: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_NAIVE_TIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?"
)
_SHORTEST_MONTH: Final = 28


def check_timestamp(field: str, value: Any, issues: list[Issue]) -> Any:
    """``createdAt``: an RFC 3339 date-time with a time zone (``Z`` or ``±hh:mm``)."""
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
        return value
    match = _RFC3339.fullmatch(value)
    if match is not None:
        day = int(match.group(3))
        if day <= _SHORTEST_MONTH or day <= calendar.monthrange(int(match.group(1)), int(match.group(2)))[1]:
            return value
        issues.append(Issue(f"{field}: {show(value)} is not a valid date and time"))
    elif _RFC3339_SHAPE.fullmatch(value):
        issues.append(Issue(f"{field}: {show(value)} is not a valid date and time"))
    elif _NAIVE_TIME.fullmatch(value):
        issues.append(Issue(f"{field}: {show(value)} has no time zone (add Z or ±hh:mm)"))
    else:
        issues.append(
            Issue(f"{field}: {show(value)} is not an RFC 3339 date-time (e.g. 2026-01-15T10:30:00Z)")
        )
    return value


# --- portNumber, autoDeploy ---------------------------------------------------------------------

_PORT_TEXT: Final = re.compile(r"[0-9]{1,5}")


def check_port(field: str, value: Any, issues: list[Issue]) -> Any:
    """``portNumber``: 1-65535, as an integer or a string of digits; normalised to an integer."""
    if isinstance(value, str):
        if _PORT_TEXT.fullmatch(value) is None:
            issues.append(Issue(f"{field}: {show(value)} is not a port number (1-{MAX_PORT})"))
            return value
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        issues.append(expected(field, "an integer or a numeric string", value))
        return value
    if not 1 <= value <= MAX_PORT:
        issues.append(Issue(f"{field}: {value} is out of range (1-{MAX_PORT})"))
    return value


def check_boolean(field: str, value: Any, issues: list[Issue]) -> Any:
    """A JSON boolean, nothing else (not ``"true"``, not ``1``)."""
    if not isinstance(value, bool):
        issues.append(expected(field, "a boolean", value))
    return value


def check_string(field: str, value: Any, issues: list[Issue]) -> Any:
    """A string, with no further rule."""
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
    return value
