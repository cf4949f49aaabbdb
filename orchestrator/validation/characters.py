"""Which characters a path or a branch name may hold, and the named rule each other character breaks.

An allow-list, not a deny-list: ASCII letters and digits, ``_ . - + @ = ,`` and ``/``, and non-ASCII
letters and digits (Unicode categories ``L*`` and ``N*``) that NFKC normalisation leaves unchanged.
None of these means anything to ``sh``, ``git`` or ``docker`` in the middle of an argument; the
places where ``-``, ``+``, ``.`` or ``@`` do matter (the start of a value or a segment, ``..``,
``@{``) are the business of the rules that call this module. Non-ASCII letters are allowed because
file and branch names in other languages are real (``docs/café``, ``fix/ümlaut``); only those NFKC
keeps as they are, so that no tool that normalises can turn one into a ``.``, a ``/`` or something else.

Every other character is refused with the rule it breaks, so that the reason says why: a shell
metacharacter, a glob, a bidirectional control, a look-alike of ``/`` and so on. The checks here run
only on the characters the allow-list refused, so a plain value costs one regular-expression match.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final, NamedTuple

#: How many of the offending characters a reason lists.
MAX_CHARS_LISTED: Final = 5

#: The ASCII characters the allow-list admits besides '/', as the body of a regular-expression class.
NAME_CHARS: Final = r"A-Za-z0-9_.+@=,-"
# Everything else; findall over a value yields the characters the rules below must look at.
_NOT_PLAIN: Final = re.compile(f"[^/{NAME_CHARS}]")

_SHELL: Final = frozenset("$`;|&<>(){}'\"!#^ ")
_GLOB: Final = frozenset("*?[]")
# Bidirectional controls: they reorder what a reader sees (Trojan Source, CVE-2021-42574).
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Default-ignorable code points that are not format (Cf) characters: rendered as nothing at all.
_INVISIBLE: Final = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0000-\U000e0fff]"
)
# Look-alikes of '.', '/' and '\\' that NFKC does not map to them (those it does are found by NFKC).
_LOOKALIKES: Final = frozenset("\u2215\u2044\u29f8\u2571\u3002\uff61\u2216\u29f5\u29f9")
_SEPARATORS: Final = frozenset("./\\")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: there is one of each
class Category:
    """A class of refused characters: what a reason calls them, and whether they are an attack."""

    noun: str
    #: Whether the characters look like an attack (a rule reports them as a security problem).
    security: bool
    #: Added after the listed characters, e.g. what to use instead.
    hint: str = ""
    #: Whether a reason lists the characters found (not when the noun already names the only one).
    lists: bool = True


CONTROL: Final = Category("control characters", security=True)
BACKSLASH: Final = Category("backslashes", security=True, hint="use '/'", lists=False)
SEPARATOR: Final = Category("line or paragraph separators", security=True)
BIDI: Final = Category("bidirectional control characters", security=True)
INVISIBLE: Final = Category("invisible characters", security=True)
LOOKALIKE: Final = Category("look-alikes of '.', '/' or '\\'", security=True)
SHELL: Final = Category("shell metacharacters or spaces", security=True)
TILDE: Final = Category("'~'", security=True, hint="a shell expands it to a home directory", lists=False)
GLOB: Final = Category("glob characters", security=True)
PERCENT: Final = Category("'%'", security=True, hint="no percent-encoding", lists=False)
NFKC: Final = Category("characters that Unicode NFKC normalisation changes", security=True)
OTHER: Final = Category(
    "characters outside the allow-list",
    security=False,
    hint="allowed: letters, digits, '_', '.', '-', '+', '@', '=', ',' and '/'",
)
#: The order in which the problems of one value are reported.
CATEGORIES: Final = (
    CONTROL,
    BACKSLASH,
    SEPARATOR,
    BIDI,
    INVISIBLE,
    LOOKALIKE,
    SHELL,
    TILDE,
    GLOB,
    PERCENT,
    NFKC,
    OTHER,
)


class CharacterProblem(NamedTuple):
    """The refused characters of one category found in a value."""

    category: Category
    chars: tuple[str, ...]

    def describe(self) -> str:
        """E.g. ``shell metacharacters or spaces (';', '|')``: printable, whatever the characters."""
        listed = ""
        if self.category.lists:
            listed = ", ".join(_name(char) for char in self.chars[:MAX_CHARS_LISTED])
            if len(self.chars) > MAX_CHARS_LISTED:
                listed += ", …"
        details = "; ".join(part for part in (listed, self.category.hint) if part)
        return f"{self.category.noun} ({details})" if details else self.category.noun


def is_plain(value: str) -> bool:
    """Whether every character of ``value`` is one of the allow-list's ASCII characters."""
    return _NOT_PLAIN.search(value) is None


def character_problems(value: str) -> list[CharacterProblem]:
    """The refused characters of ``value``, by category in :data:`CATEGORIES` order; empty when none.

    Lone surrogates must have been refused before (they cannot be normalised).
    """
    refused = _NOT_PLAIN.findall(value)
    if not refused:
        return []
    found: dict[Category, list[str]] = {}
    for char in dict.fromkeys(refused):
        category = classify(char)
        if category is not None:
            found.setdefault(category, []).append(char)
    # Characters NFKC keeps one by one may still change together (Hangul jamo compose, for one);
    # worth saying only when nothing else is wrong.
    if not found and not value.isascii() and not unicodedata.is_normalized("NFKC", value):
        found[NFKC] = []
    return [
        CharacterProblem(category, tuple(found[category])) for category in CATEGORIES if category in found
    ]


def classify(char: str) -> Category | None:
    """The category of a character outside the ASCII allow-list; ``None`` when it is allowed."""
    if char in _SHELL:
        return SHELL
    if char in _GLOB:
        return GLOB
    if char == "~":
        return TILDE
    if char == "%":
        return PERCENT
    if char == "\\":
        return BACKSLASH
    general = unicodedata.category(char)
    if general == "Cc":
        return CONTROL
    if general in ("Zl", "Zp"):
        return SEPARATOR
    if char in _BIDI:
        return BIDI
    if general == "Cf" or _INVISIBLE.match(char):
        return INVISIBLE
    normalised = unicodedata.normalize("NFKC", char)
    if char in _LOOKALIKES or not _SEPARATORS.isdisjoint(normalised):
        return LOOKALIKE
    if normalised != char:
        return NFKC
    if general[0] in "LN":
        return None
    return OTHER


def _name(char: str) -> str:
    """A character as a reason shows it: quoted when printable ASCII, as U+XXXX otherwise."""
    if char.isascii() and char.isprintable():
        return repr(char)
    return f"U+{ord(char):04X}"
