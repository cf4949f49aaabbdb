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
from orchestrator.validation.characters import NAME_CHARS, CharacterProblem, character_problems

#: The longest echo of a sender's value in a reason; longer values are cut.
MAX_SHOWN_CHARS: Final = 60
#: git refuses longer ref names on most file systems; we cap them in bytes (UTF-8).
MAX_BRANCH_BYTES: Final = 255
#: Longest dockerFilePath, composeFilePath or contextDir, in bytes (UTF-8).
MAX_PATH_BYTES: Final = 1024
#: Highest TCP port.
MAX_PORT: Final = 65535
#: The longest value :func:`show` redacts; longer ones (no field may hold one) are not echoed beyond a
#: plain start, so a reason costs the same whatever the sender sends.
MAX_REDACTED_CHARS: Final = MAX_PATH_BYTES

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


_PLAIN_START: Final = re.compile(rf"[A-Za-z0-9_.-]{{0,{MAX_SHOWN_CHARS}}}")


def show(value: str) -> str:
    """``value`` quoted for a reason: credentials redacted, control characters escaped, cut short.

    A value longer than :data:`MAX_REDACTED_CHARS` is shown by its plain start only: letters,
    digits, ``_ . -`` (no credential or token can be written with them), so that no redaction runs
    on it at all.
    """
    if len(value) > MAX_REDACTED_CHARS:
        start = _PLAIN_START.match(value)
        return f"{start.group() if start else ''!r}… ({len(value)} characters)"
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

#: A full ref name for a branch; ``refs/heads/x`` is accepted and normalised to ``x`` (what
#: ``git clone --branch`` wants). Any other ``refs/...`` (tags, remotes, pull requests) is refused.
BRANCH_REF_PREFIX: Final = "refs/heads/"
#: Names git resolves to something other than a branch: HEAD and the pseudo-refs of its operations.
#: Refused in any letter case (HEAD's own file is found case-insensitively on some file systems).
SPECIAL_REFS: Final = (
    "HEAD",
    "FETCH_HEAD",
    "ORIG_HEAD",
    "MERGE_HEAD",
    "CHERRY_PICK_HEAD",
    "REVERT_HEAD",
    "REBASE_HEAD",
    "BISECT_HEAD",
    "AUTO_MERGE",
    "BISECT_EXPECTED_REV",
    "MERGE_AUTOSTASH",
    "NOTES_MERGE_PARTIAL",
    "NOTES_MERGE_REF",
)
_SPECIAL_REF_NAMES: Final = frozenset(SPECIAL_REFS)
# Any other name of git's pseudo-ref form: capitals and '_', ending in _HEAD.
_PSEUDO_REF: Final = re.compile(r"[A-Z_]+_HEAD")
# The common case, a valid branch name as it is, accepted by one match: allow-listed ASCII characters
# in components that neither start nor end with '.', hold no '..' and do not end with '.lock'; no
# leading '-' or '+', not '@' alone, not a full ref. (Special refs are looked for apart.) Linear: a
# component cannot hold '/', nor a run between dots a '.', so there is one way to split a value.
_RUN: Final = f"[{NAME_CHARS.replace('.', '')}]+"
_COMPONENT: Final = rf"{_RUN}(?:\.{_RUN})*(?<!\.lock)"
_PLAIN_BRANCH: Final = re.compile(rf"(?![-+]|refs/|@\Z){_COMPONENT}(?:/{_COMPONENT})*")
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


def _branch_problem(name: str, *, full_ref_allowed: bool = True) -> tuple[str, str] | None:
    """What is wrong with ``name`` as a branch to clone (the end of a reason), with its kind."""
    git_problem = _ref_name_problem(name)
    if git_problem is not None:
        why, kind = git_problem
        return f"is not a valid git ref name ({why})", kind
    if name.startswith("+"):
        return "must not start with '+' (git reads it as a forced refspec)", SECURITY
    characters = character_problems(name)
    if characters:
        return _must_not_contain(characters[0])
    if _is_special_ref(name):
        return "is a special git ref (like HEAD), not a branch", SCHEMA
    if name.startswith("refs/"):
        if full_ref_allowed and name.startswith(BRANCH_REF_PREFIX):
            # Checked once more without the prefix, which must not be there twice.
            return _branch_problem(name.removeprefix(BRANCH_REF_PREFIX), full_ref_allowed=False)
        return f"is a full ref name outside {BRANCH_REF_PREFIX}, not a branch", SCHEMA
    return None


def _is_special_ref(name: str) -> bool:
    """Whether ``name`` is HEAD or a pseudo-ref, which git would resolve before any branch."""
    return name.upper() in _SPECIAL_REF_NAMES or (
        name.endswith("_HEAD") and _PSEUDO_REF.fullmatch(name) is not None
    )


def check_branch(field: str, value: Any, issues: list[Issue]) -> Any:
    """``branch``: a branch name to clone, at most 255 bytes; ``refs/heads/x`` is normalised to ``x``.

    A name ``git check-ref-format`` accepts, made of the characters of
    :mod:`~orchestrator.validation.characters`, not starting with ``-`` or ``+`` (an option, a forced
    refspec), and not a special ref (``HEAD``, ``FETCH_HEAD``...) or a full ref other than a branch's.
    """
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
        return value
    if (
        len(value) <= MAX_BRANCH_BYTES
        and _PLAIN_BRANCH.fullmatch(value)
        and value.upper() not in _SPECIAL_REF_NAMES
        and not value.endswith("_HEAD")
    ):
        return value
    size = _utf8_length(field, value, issues)
    if size is None:
        return value
    if not value:
        issues.append(Issue(f"{field}: must not be empty"))
        return value
    if size > MAX_BRANCH_BYTES:
        issues.append(Issue(f"{field}: is {size} bytes long, at most {MAX_BRANCH_BYTES} allowed"))
        return value
    problem = _branch_problem(value)
    if problem is not None:
        why, kind = problem
        issues.append(Issue(f"{field}: {show(value)} {why}", kind))
        return value
    return value.removeprefix(BRANCH_REF_PREFIX)


# --- paths inside the repository ----------------------------------------------------------------

# The common case: an already normalised path of plain characters, accepted as is by one match
# (no empty, "." or ".." segment, no segment starting with '-', no leading or trailing "/"). Linear:
# a segment cannot hold '/', so there is one way to split a value into segments.
_PLAIN_PATH: Final = re.compile(rf"(?:(?!\.{{1,2}}/|-)[{NAME_CHARS}]+/)*(?!\.{{1,2}}\Z|-)[{NAME_CHARS}]+")
# The seed's own form of a path in the repository's root ("./Dockerfile"): plain once this is cut.
_CURRENT_DIR: Final = "./"
_OPTION_SEGMENT: Final = re.compile(r"(?:\A|/)-")


def check_relative_path(field: str, value: Any, issues: list[Issue]) -> Any:
    """``dockerFilePath``, ``composeFilePath``, ``contextDir``: a relative path inside the checkout.

    Normalised (``./a//b/`` becomes ``a/b``, an empty result ``.``); a ``..`` segment is rejected,
    never resolved, so the path cannot leave the checkout. Only the characters of
    :mod:`~orchestrator.validation.characters` are allowed, and no segment may start with ``-``
    (a tool would read it as an option), so the path is safe on a command line.
    """
    if not isinstance(value, str):
        issues.append(expected(field, "a string", value))
        return value
    plain = value.removeprefix(_CURRENT_DIR)
    if value == "." or (len(plain) <= MAX_PATH_BYTES and _PLAIN_PATH.fullmatch(plain)):
        return plain
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
    for problem in character_problems(value):
        why, kind = _must_not_contain(problem)
        issues.append(Issue(f"{field}: {show(value)} {why}", kind))
    if value.startswith("/"):
        issues.append(Issue(f"{field}: {show(value)} must be relative, not an absolute path", SECURITY))
    segments = value.split("/")
    if ".." in segments:
        issues.append(Issue(f"{field}: {show(value)} must not contain a '..' segment", SECURITY))
    if _OPTION_SEGMENT.search(value):
        issues.append(
            Issue(
                f"{field}: {show(value)} must not have a segment starting with '-' "
                "(a tool would read it as an option)",
                SECURITY,
            )
        )
    if len(issues) > before:
        return value
    return "/".join(s for s in segments if s not in ("", ".")) or "."


def _must_not_contain(problem: CharacterProblem) -> tuple[str, str]:
    """The end of a reason for refused characters, e.g. ``must not contain glob characters ('*')``."""
    return f"must not contain {problem.describe()}", SECURITY if problem.category.security else SCHEMA


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
