"""Duplicate keys in a JSON message, at any depth, in linear time and without recursion.

JSON decoders keep the last of two equal keys (msgspec does), so ``{"type": "stop", ..., "type":
"build"}`` is a build to the orchestrator and may be a stop to the producer or to a log reader. A
message with a repeated key means two things at once and is refused.

Two steps, so that the common message pays almost nothing:

- :func:`key_bound` bounds the number of keys with two byte counts when the message is one object
  with no object inside (what producers send); when that bound is not above the number of distinct
  keys the decoder found, no key can repeat;
- otherwise :func:`duplicate_keys` scans the whole message: one regular expression tokenises it
  (strings, escapes included, and brackets), and a stack holds the keys seen in each open object.
  Keys are compared decoded, so ``"typ\\u0065"`` repeats ``"type"``.

Both expect a message that a JSON decoder has already accepted.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import msgspec

# A string (group 1: its body, escapes unresolved) and, when it is a key, the colon after it
# (group 2); or a bracket (group 3). No nested quantifier can backtrack: an escape starts with '\',
# which the plain-character class excludes, so there is one way to match a string body.
_TOKEN: Final = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"[ \t\r\n]*(:)?|([{}\[\]])', re.DOTALL)
_OPEN_OBJECT: Final = b"{"
_COMMA: Final = b","
_OPEN_ARRAY: Final = b"["


class DuplicateKey(NamedTuple):
    """A key that appears more than once in one object."""

    key: str
    #: Whether the object is inside the message rather than the message itself.
    nested: bool


def key_bound(raw: bytes) -> int | None:
    """An upper bound on the keys of ``raw`` when it is one object with no object inside; else ``None``.

    With a single ``{`` in the message (a brace in a string counts too, and gives up) there is no
    nested object, so every key is the message's own, and ``k`` keys are separated by ``k - 1``
    commas outside strings. Commas in strings and arrays only add to the count: it bounds the keys
    from above, escapes or not.
    """
    if raw.count(_OPEN_OBJECT) != 1:
        return None
    return raw.count(_COMMA) + 1


def duplicate_keys(raw: bytes) -> list[DuplicateKey]:
    """Every key that repeats within one object of ``raw``, once each, in the order found.

    Linear in ``len(raw)``; the stack grows with the nesting depth, which the decoder has bounded.
    Malformed input does not raise (it was decoded before, so it cannot be malformed).
    """
    found: dict[tuple[bytes, bool], None] = {}
    # One entry per open object (the keys seen so far) or array (None).
    stack: list[set[bytes] | None] = []
    for body, colon, bracket in _TOKEN.findall(raw):
        if bracket:
            if bracket == _OPEN_OBJECT:
                stack.append(set())
            elif bracket == _OPEN_ARRAY:
                stack.append(None)
            elif stack:
                stack.pop()
            continue
        if not colon or not stack:
            continue
        keys = stack[-1]
        if keys is None:
            continue
        key = _canonical(body) if b"\\" in body else body
        if key in keys:
            found[key, len(stack) > 1] = None
        else:
            keys.add(key)
    return [DuplicateKey(key.decode("utf-8", "replace"), nested) for key, nested in found]


def _canonical(body: bytes) -> bytes:
    """A key's body with its escapes resolved, as UTF-8, so that equal keys have equal bytes."""
    try:
        text = msgspec.json.decode(b'"' + body + b'"', type=str)
    except msgspec.DecodeError:
        return body
    return text.encode("utf-8", "surrogatepass")
