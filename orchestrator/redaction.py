"""Keep secrets out of logs, events, headers, dead-lettered bodies and printed config.

Two kinds of secret are recognised: the user-info of a URL (``scheme://user:password@host``), and the
value of a token-like query or ``key=value`` parameter (``?private_token=…``, ``X-Amz-Signature=…``).

Where a password holds ``@`` or ``/`` the authority of a URL is ambiguous, so redaction is
conservative: everything from the first ``://`` of a word to the last ``@`` of that word goes, e.g.
``https://user:p@ss/word@github.com/x`` becomes ``https://***@github.com/x``. In free text a word ends
at ASCII whitespace, ``"``, ``<`` or ``>`` (characters a URL cannot hold unencoded); a *value* — a
decoded JSON string, see :func:`redact_values` — is one word whatever it holds. JSON escapes of the
characters that matter (``\\/``, ``\\u0040``, ``\\u003a``, ``\\u002f``, ``\\u003d``, nested to any
depth) are read as the characters they stand for.

Every scan takes time linear in the text: each regular expression starts at a literal (``://``, ``=``,
an escape) and reads no stretch another attempt read. A text with more than :data:`MAX_SITES` places
of one kind to examine — which no log line or job carries — is redacted coarsely instead, from the
first place a secret may start to the last it may end: redaction fails closed, never slow.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit, urlunsplit

REDACTED: Final = "***"

#: Above this many places of one kind to examine (``://``, ``=``, doubled backslashes), a text is
#: redacted coarsely (see the module docstring); below it, every scan together costs a few
#: milliseconds per megabyte.
MAX_SITES: Final = 4096

#: How far :func:`redact_text` reads past its ``limit``, so that a URL the limit cuts is still seen
#: whole when it ends soon after; one running on further is redacted up to the cut.
LIMIT_LOOKAHEAD: Final = 256

#: A parameter whose name ends with one of these (in any case) has its value redacted.
TOKEN_NAME_ENDINGS: Final = (
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "secret_key",
    "private_key",
    "signature",
    "credential",
    "credentials",
)
#: A parameter with exactly one of these names (in any case; after ``-`` too, as in ``--sig=``) has its
#: value redacted (Azure's SAS signature).
TOKEN_NAMES_EXACT: Final = ("sig",)

#: Where a word of free text ends: ASCII whitespace, quotes, angle brackets. (Fewer stops can only
#: redact more, and a short character class scans fast.)
_TEXT_STOPS: Final = r' \t\n\r\f\v"<>'

#: Stand-ins for ``://`` while a text is scanned, and separators joining values into one text: the
#: first absent from the text is used. ASCII control characters that are not whitespace come first,
#: so an ASCII text stays compact (and fast); then noncharacters, which no real text holds.
_MARKS: Final = (
    tuple(map(chr, range(0x01, 0x09)))
    + tuple(map(chr, range(0x0E, 0x1C)))
    + tuple(map(chr, range(0xFDD0, 0xFDF0)))
)

#: JSON escapes of the characters redaction looks for and what they stand for, grouped under a
#: common prefix so that a text holding none of a group costs one search.
_ESCAPES: Final = (
    ("\\/", (("\\/", "/"),)),
    ("\\u002", (("\\u002f", "/"), ("\\u002F", "/"))),
    ("\\u003", (("\\u003a", ":"), ("\\u003A", ":"), ("\\u003d", "="), ("\\u003D", "="))),
    ("\\u0040", (("\\u0040", "@"),)),
)
#: On reversed text: a run of two or more backslashes that escapes a ``/`` or starts a ``\u`` escape.
_RUN_BEFORE_ESCAPE: Final = re.compile(r"\\\\(?<=[/u]\\\\)\\*+")

_Trie = dict[str, "_Trie"]


def redact_text(text: str, limit: int | None = None) -> str:
    """Remove credentials embedded in URLs, and token-like ``key=value`` values, from free text.

    Args:
        text: any text: a reason, a log line, an error message, a raw message body.
        limit: when given, only the first ``limit`` characters are wanted: the cost is then bounded by
            ``limit`` whatever the length of ``text``, and the result is at most ``limit`` characters —
            ``redact_text(text)[:limit]``, except that a URL running on past ``limit`` plus
            :data:`LIMIT_LOOKAHEAD` is redacted from its ``://`` on.

    Returns:
        ``text`` itself when it holds nothing to redact, otherwise the redacted text (in which JSON
        escapes of ``/ @ : =`` are written as the characters).
    """
    if limit is None:
        return _TEXT.redact(text)
    if len(text) <= limit:
        return _TEXT.redact(text)[:limit]
    window = text[: limit + LIMIT_LOOKAHEAD]
    return _TEXT.redact(window, cut=len(window) < len(text))[:limit]


def redact_values(values: Sequence[str]) -> list[str] | None:
    """Redact each of ``values`` — decoded strings, e.g. of a JSON document — as one whole word.

    Unlike free text, a value holding a URL is taken to be all URL: whitespace or quotes in it do not
    end the user-info, so a password holding them is removed all the same. The values are scanned
    together, as one text, so the cost is linear in their total length however many there are.

    Returns:
        The values redacted, in order (the very strings where nothing was found); or None when they
        cannot be redacted one by one — every separator character is in use, or there is so much to
        examine that redaction turned coarse — and the caller should redact the text they came from
        with :func:`redact_text` instead.
    """
    if not values:
        return []
    plain = "".join(values)
    separator = next((s for s in _MARKS if s not in plain), None)
    if separator is None:
        return None
    joined = separator.join(values)
    redacted = _value_scanner(separator).redact(joined)
    if redacted is joined:
        return list(values)
    parts = redacted.split(separator)
    return parts if len(parts) == len(values) else None


def redact_url(url: str) -> str:
    """Return ``url`` with any password (and token-like query values) replaced by ``***``.

    The user name is kept because it helps an operator; the password never is. Where the authority is
    ambiguous (an ``@`` after the first ``/``, ``?`` or ``#``), the URL is redacted as text instead.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if "://" in url and "@" in parts.path + parts.query + parts.fragment:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{REDACTED}@{hostport}"
    query = _TEXT.redact(parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _Scanner:
    """The scans for one notion of where a word ends: ``stops``, the body of a character class."""

    def __init__(self, stops: str) -> None:
        self.stops = stops
        self.stop = re.compile(f"[{stops}]")
        last_letters = "".join(sorted({e[-1].lower() + e[-1].upper() for e in TOKEN_NAME_ENDINGS}))
        exact = "|".join(
            rf"(?<=[^\w.]{_either_case(n)}=)|(?<=^{_either_case(n)}=)" for n in TOKEN_NAMES_EXACT
        )
        # One attempt per "=": the character before it turns most away at once.
        self.token_value = re.compile(
            rf"=(?:(?<=[{last_letters}]=){_name_ends_with_any(TOKEN_NAME_ENDINGS)}|{exact})[^&{stops}]+"
        )

    def redact(self, text: str, *, cut: bool = False) -> str:
        """``text`` redacted; the very object when nothing changed. ``cut``: text goes on past its end."""
        work = _unescape(text)
        # Token values first: their "***" keeps an "@" that a value held, so a user-info the value
        # ended (a password holding "token=…@") is still found, and one starting before a token
        # name cannot swallow the name and leave the value ("…?token=@secret").
        out = self._user_info(self._token_values(work))
        if cut:
            out = self._cut_word(out)
        return text if out == work else out

    def _user_info(self, text: str) -> str:
        if "@" not in text:
            return text
        separators = text.count("://")
        if not separators:
            return text
        mark = next((m for m in _MARKS if m not in text), None)
        if mark is None or separators > MAX_SITES:
            # Coarse: nothing between the first "://" and the last "@" can be told from a secret.
            start, end = text.find("://") + 3, text.rfind("@")
            return text[:start] + REDACTED + text[end:] if end > start else text
        # With every "://" one character, a scan is a run of one character class up to the next mark
        # or stop, then back to its last "@": no attempt reads a stretch another one read.
        find, widen = _user_info_scans(self.stops, mark)
        marked, found = find.subn(f"{mark}{REDACTED}@", text.replace("://", mark))
        if not found:
            return text
        if marked.count(mark) > 1:
            # Reversed, widen each redaction back to the first "://" of its word, so that a password
            # holding "://" goes too; attempts start only at the redactions just made.
            marked = widen.sub(f"@{REDACTED}{mark}", marked[::-1])[::-1]
        return marked.replace(mark, "://")

    def _token_values(self, text: str) -> str:
        if "=" not in text:
            return text
        if text.count("=") > MAX_SITES:
            # Coarse: whatever follows the first "=" may be a token's value.
            first = text.find("=") + 1
            return text[:first] + REDACTED + ("@" if "@" in text[first:] else "")
        if "@" not in text:
            return self.token_value.sub(f"={REDACTED}", text)
        return self.token_value.sub(_redacted_token_value, text)

    def _cut_word(self, text: str) -> str:
        """Redact after the ``://`` of a last word the cut may have split before its ``@``."""
        stop = self.stop.search(text[::-1])
        word_start = len(text) - stop.start() if stop else 0
        scheme_end = text.find("://", word_start)
        return text if scheme_end == -1 else text[: scheme_end + 3] + REDACTED


def _redacted_token_value(match: re.Match[str]) -> str:
    return f"={REDACTED}@" if "@" in match.group() else f"={REDACTED}"


@functools.lru_cache(maxsize=64)
def _user_info_scans(stops: str, mark: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """For a text with every ``://`` replaced by ``mark``: the user-info scan, and the widening scan.

    An empty user-info (``://@host``) is redacted too: it may end a password that holds ``://``. The
    widening scan runs on the reversed text and reads forwards only (possessive runs, each to a mark).
    """
    m = re.escape(mark)
    return re.compile(f"{m}[^{stops}{m}]*@"), re.compile(rf"@\*\*\*{m}(?:[^{stops}{m}]*+{m})*+")


def _unescape(text: str) -> str:
    """``text`` with JSON escapes of ``/ @ : =`` (nested to any depth) read as those characters.

    Only a text that then needs redacting is returned in this form; it stays valid JSON wherever
    ``text`` was, since a run of backslashes is shortened only in front of an escape. A text with
    more than :data:`MAX_SITES` doubled backslashes is coarsely cut at its first backslash.
    """
    if "\\" not in text:
        return text
    if "\\\\" in text:
        if text.count("\\\\") > MAX_SITES:
            return text[: text.find("\\")] + REDACTED
        # Reversed, a run of backslashes follows what it escapes, so each run is read once.
        text = _RUN_BEFORE_ESCAPE.sub(r"\\", text[::-1])[::-1]
    for prefix, escapes in _ESCAPES:
        if prefix in text:
            for escape, char in escapes:
                text = text.replace(escape, char)  # the very string again when there is none
    return text


def _either_case(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


def _name_ends_with_any(endings: Sequence[str]) -> str:
    """Lookbehinds, to follow a literal ``=``, true when the name before it ends with one of ``endings``.

    Built as a trie of the reversed endings, one character more per lookbehind, so an ``=`` after no
    such name is turned away after a character or two, whatever precedes it.
    """
    trie: _Trie = {}
    for ending in endings:
        node = trie
        for char in reversed(ending):
            node = node.setdefault(char, {})
        node[""] = {}

    def branch(node: _Trie, suffix: str) -> str:
        alternatives = []
        for char, child in sorted(node.items()):
            if char == "":
                alternatives.append("")
            else:
                longer = char + suffix
                alternatives.append(f"(?<={_either_case(longer)}=)" + branch(child, longer))
        if alternatives == [""]:
            return ""
        return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"

    return branch(trie, "")


_TEXT: Final = _Scanner(_TEXT_STOPS)


@functools.lru_cache(maxsize=len(_MARKS))
def _value_scanner(separator: str) -> _Scanner:
    return _Scanner(re.escape(separator))
