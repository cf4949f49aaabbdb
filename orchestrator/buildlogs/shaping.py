"""Bytes a worker wrote -> text safe to show in a browser and to store: :func:`shape_line`.

A line is decoded as UTF-8 (undecodable bytes become U+FFFD), redacted with the same code as status
events (URL credentials, token-like ``key=value`` values), stripped of one trailing ``\\r`` (CRLF
output), has its control characters escaped (``\\x1b``, ``\\u2028``; tab is kept) so that no line
can move a terminal's cursor, hide text or reorder it, and is split into pieces of at most
``max_line_bytes`` bytes of UTF-8. Every step is linear in the line, and the sources already bound a
line's raw length (they cut a longer one into several), so the work per line is bounded.

Splitting at a character boundary leaves every piece valid UTF-8; an escape is never cut in two.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from orchestrator.redaction import redact_text

#: What replaces each escaped character: C0 controls but tab, DEL, C1 controls, line and paragraph
#: separators, and the bidirectional overrides and isolates (which can reorder what a reader sees).
_ESCAPED_CODEPOINTS: Final = (
    [c for c in range(0x20) if c != 0x09]
    + list(range(0x7F, 0xA0))
    + [0x2028, 0x2029]
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
)
_ESCAPES: Final[dict[int, str]] = {
    c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _ESCAPED_CODEPOINTS
}
_NEEDS_ESCAPE: Final = re.compile("[" + "".join(re.escape(chr(c)) for c in _ESCAPED_CODEPOINTS) + "]")
#: Longest escape written (``\\uXXXX``): a split never falls inside one.
_LONGEST_ESCAPE: Final = 6


def escape_controls(text: str) -> str:
    """``text`` with control and direction-changing characters written as ``\\xNN`` / ``\\uNNNN``."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return text.translate(_ESCAPES)


def quote_lines(lines: Iterable[str], max_line_chars: int | None = None) -> list[str]:
    """How a failed task's reason quotes its log's last lines: the non-blank ``lines``, stripped,
    every character that is not printable (controls, invisible ones, tab too) escaped as ``\\xNN``
    (a reason is one line of text), each cut to ``max_line_chars``. The caller redacts the reason."""
    return [_printable(line.strip())[:max_line_chars] for line in lines if line.strip()]


def _printable(line: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def shape_line(raw: bytes, max_line_bytes: int) -> list[str]:
    """The pieces to publish for one raw line: decoded, redacted, escaped, split (see the module).

    Args:
        raw: the line without its newline, as the worker wrote it.
        max_line_bytes: the most UTF-8 bytes of one piece (at least 16).

    Returns:
        One piece, or several for a line longer than ``max_line_bytes`` once escaped; an empty line
        gives one empty piece.
    """
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", "replace")
    text = escape_controls(redact_text(text))
    if len(text) * 4 <= max_line_bytes:  # surely short enough, whatever it holds
        return [text]
    data = text.encode("utf-8")
    if len(data) <= max_line_bytes:
        return [text]
    return split_utf8(data, max_line_bytes)


def split_utf8(data: bytes, max_bytes: int) -> list[str]:
    """Cut valid UTF-8 ``data`` into pieces of at most ``max_bytes`` bytes, at character boundaries
    and never inside an escape :func:`escape_controls` wrote."""
    pieces: list[str] = []
    start, end = 0, len(data)
    while start < end:
        cut = min(start + max_bytes, end)
        if cut < end:
            while cut > start + 1 and (data[cut] & 0xC0) == 0x80:  # a continuation byte: back off
                cut -= 1
            # An escape ends at most _LONGEST_ESCAPE - 1 bytes after the cut when it straddles it.
            backslash = data.rfind(b"\\", max(start, cut - _LONGEST_ESCAPE + 1), cut)
            if backslash > start and _straddles_escape(data, backslash, cut):
                cut = backslash
        pieces.append(data[start:cut].decode("utf-8"))
        start = cut
    return pieces


def _straddles_escape(data: bytes, backslash: int, cut: int) -> bool:
    tail = data[backslash : backslash + _LONGEST_ESCAPE]
    if tail.startswith(b"\\x"):
        return backslash + 4 > cut
    if tail.startswith(b"\\u"):
        return backslash + 6 > cut
    return False


def split_raw(data: bytes, max_bytes: int) -> int:
    """Where to cut raw ``data`` (longer than ``max_bytes``) so the first part holds at most
    ``max_bytes`` bytes and does not end inside a UTF-8 sequence (when it can help it)."""
    cut = max_bytes
    for _ in range(3):
        if (data[cut] & 0xC0) != 0x80:
            return cut
        cut -= 1
    return cut if (data[cut] & 0xC0) != 0x80 else max_bytes
