"""The body a rejected message is dead-lettered with: as received, minus the credentials it holds.

An operator reads the dead-letter queue to see what was sent, so the body is kept — but a password or
token in it would then sit in the broker for anyone with access to the queue. So:

* A body that is JSON (and no larger than the messages the validator accepts) is redacted on its
  decoded strings, keys and values alike, so that no JSON escape (``https:\\/\\/u:p\\u0040host``) can
  hide a credential; a string is one word, so a password holding spaces or quotes goes too. The
  value of a key named like a token (``"password": …``, ``"apiToken": …``) is redacted whole. Only
  the strings that change are re-encoded: the rest of the body stays byte for byte as it came.
* Any other body — larger, not JSON, not even UTF-8 — is redacted as text
  (:func:`~orchestrator.redaction.redact_text`, which reads the common JSON escapes too); bytes that
  are not UTF-8 are carried through unchanged.

A body with nothing to redact is returned as the very bytes received. The cost is linear in the size
of the body (see :mod:`orchestrator.redaction`).
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from orchestrator.config import DEFAULT_MAX_MESSAGE_BYTES
from orchestrator.redaction import (
    REDACTED,
    TOKEN_NAME_ENDINGS,
    TOKEN_NAMES_EXACT,
    redact_text,
    redact_values,
)

#: A JSON string literal, quotes included; captured, so that splitting a document on it keeps it.
#: Possessive throughout: on a valid document every attempt succeeds at once.
_STRING_LITERAL: Final = re.compile(r'("[^"\\]*+(?:\\.[^"\\]*+)*+")', re.DOTALL)

#: A key whose value is redacted whole (the same names as token parameters in text).
_SECRET_KEY: Final = re.compile(
    "(?i)(?:"
    + "|".join(map(re.escape, TOKEN_NAME_ENDINGS))
    + ")$|^(?:"
    + "|".join(map(re.escape, TOKEN_NAMES_EXACT))
    + ")$"
)
#: What follows a key whose value is a number: the colon, then the number.
_COLON_NUMBER: Final = re.compile(r"(\s*:\s*)-?[0-9][0-9.eE+-]*")

_REDACTED_LITERAL: Final = f'"{REDACTED}"'


def redact_body(body: bytes, *, max_decoded_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """``body`` as it may be dead-lettered: every credential in it replaced by ``***``.

    Args:
        body: the message as received, any bytes.
        max_decoded_bytes: a larger body is not decoded as JSON, only redacted as text.

    Returns:
        ``body`` itself when there is nothing to redact; otherwise the redacted body.
    """
    if len(body) <= max_decoded_bytes:
        redacted = _redact_json(body)
        if redacted is not None:
            return redacted
    text = body.decode("utf-8", "surrogateescape")
    redacted_text = redact_text(text)
    return body if redacted_text is text else redacted_text.encode("utf-8", "surrogateescape")


def _redact_json(body: bytes) -> bytes | None:
    """``body`` redacted string by string; None when it is not JSON or cannot be redacted that way."""
    try:
        # Checked as JSON without building its values (three times faster); UTF-8 on its own.
        msgspec.json.decode(body, type=msgspec.Raw)
        text = body.decode("utf-8")
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return None
    # Valid JSON has a '"' only in string literals, so the split is exact: odd parts are literals.
    parts = _split_literals(text)
    literals = parts[1::2]
    changed = _redact_secret_keys(text, parts, literals)
    # Only a literal holding one of these can hold a credential (an escape may stand for ":/@=").
    chosen = [i for i, s in enumerate(literals) if "://" in s or "=" in s or "\\" in s]
    if chosen:
        try:
            values: list[str] = msgspec.json.decode("[" + ",".join(literals[i] for i in chosen) + "]")
            redacted = redact_values(values)
            if redacted is None:
                return None
            for i, before, after in zip(chosen, values, redacted, strict=True):
                if after != before:
                    literals[i] = msgspec.json.encode(after).decode("utf-8")
                    changed = True
        except (msgspec.MsgspecError, UnicodeError):  # e.g. a lone surrogate cannot be re-encoded
            return None
    if not changed:
        return body
    parts[1::2] = literals
    return "".join(parts).encode("utf-8")


#: Characters per quote below which the literals are found by the regex rather than by ``str.split``
#: (a Python step per quote costs about as much as the regex's scan of this many characters).
_CHARS_PER_QUOTE: Final = 100


def _split_literals(text: str) -> list[str]:
    """``text`` (valid JSON) split into what lies between string literals and the literals, quotes
    included: the odd items are the literals. The same as ``_STRING_LITERAL.split(text)``, several
    times faster on long strings: ``str.split`` finds every quote, and a quote after an odd number of
    backslashes (escaped) joins its neighbours again. (Text with many quotes goes to the regex.)"""
    if text.count('"') * _CHARS_PER_QUOTE > len(text):
        return _STRING_LITERAL.split(text)  # many short literals: the regex's C loop is faster
    pieces = text.split('"')
    parts: list[str] = []
    current = [pieces[0]]
    inside = False
    for piece in pieces[1:]:
        before = current[-1]
        if inside and (len(before) - len(before.rstrip("\\"))) % 2 == 1:
            current.append(piece)  # an escaped quote: still the same literal
            continue
        if inside:
            parts.append('"' + '"'.join(current) + '"')
        else:
            parts.append('"'.join(current))
        current = [piece]
        inside = not inside
    parts.append('"'.join(current))
    return parts


#: Names a key must end with (or be) to have its value redacted: scanned for in the whole text first
#: when the document has many literals (one fast pass per name beats a Python step per literal).
_KEY_NAMES: Final = (*TOKEN_NAME_ENDINGS, *TOKEN_NAMES_EXACT)
#: Characters of text per literal above which the literals are checked one by one straight away.
_SCAN_CHARS_PER_LITERAL: Final = 64


def _redact_secret_keys(text: str, parts: list[str], literals: list[str]) -> bool:
    """Redact, in place, the string or number value of every key named like a token.

    ``parts`` alternates what lies between literals and the literals themselves (``literals`` is its
    odd half, a copy); returns whether anything was redacted.
    """
    if len(text) < _SCAN_CHARS_PER_LITERAL * len(literals):
        lowered = text.lower()
        if not any(name in lowered for name in _KEY_NAMES):
            return False
    changed = False
    for k, literal in enumerate(literals):
        after = parts[2 * k + 2]
        if not after.lstrip().startswith(":"):
            continue  # not a key
        key = msgspec.json.decode(literal) if "\\" in literal else literal[1:-1]
        if not _SECRET_KEY.search(key):
            continue
        if after.strip() == ":" and k + 1 < len(literals):
            if literals[k + 1] != '""':
                literals[k + 1] = _REDACTED_LITERAL
                changed = True
        elif number := _COLON_NUMBER.match(after):
            parts[2 * k + 2] = number.group(1) + _REDACTED_LITERAL + after[number.end() :]
            changed = True
    return changed
