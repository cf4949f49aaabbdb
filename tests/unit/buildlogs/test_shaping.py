"""Shaping a raw line: valid UTF-8, control characters escaped, long lines split, secrets redacted."""

from __future__ import annotations

import pytest

from orchestrator.buildlogs.shaping import escape_controls, shape_line, split_raw, split_utf8

LIMIT = 8192


def test_a_plain_line_is_left_as_it_is() -> None:
    assert shape_line(b"Step 3/7 : RUN npm ci", LIMIT) == ["Step 3/7 : RUN npm ci"]


def test_an_empty_line_stays_one_empty_line() -> None:
    assert shape_line(b"", LIMIT) == [""]


def test_a_crlf_line_loses_its_carriage_return_only() -> None:
    assert shape_line(b"done\r", LIMIT) == ["done"]
    assert shape_line(b"10%\r20%\r", LIMIT) == ["10%\\x0d20%"]


def test_control_characters_are_escaped_but_tab_is_kept() -> None:
    assert shape_line(b"\x1b[31mred\x1b[0m\tok\x00\x07\x7f", LIMIT) == [
        "\\x1b[31mred\\x1b[0m\tok\\x00\\x07\\x7f"
    ]


def test_characters_that_reorder_or_break_lines_are_escaped() -> None:
    assert escape_controls("a\u202eb\u2028c\u0085d\u2066e") == "a\\u202eb\\u2028c\\x85d\\u2066e"


def test_binary_garbage_becomes_valid_utf8_text() -> None:
    garbage = bytes(range(256)) * 4
    pieces = shape_line(garbage, LIMIT)
    for piece in pieces:
        piece.encode("utf-8")  # valid (a str with lone surrogates would raise here)
        assert all(c == "\t" or c.isprintable() or c == "\ufffd" for c in piece)
    assert "\ufffd" in "".join(pieces)


def test_a_long_line_is_split_into_pieces_within_the_bound_that_join_back() -> None:
    line = ("é" * 5000 + "x" * 3).encode()  # 10,003 bytes, two-byte characters
    pieces = shape_line(line, 4096)
    assert len(pieces) == 3
    assert all(len(p.encode()) <= 4096 for p in pieces)
    assert "".join(pieces) == line.decode()


def test_a_split_never_cuts_an_escape_in_two() -> None:
    text = ("a" * 4094 + "\\x1b" + "b" * 10).encode()
    pieces = split_utf8(text, 4096)
    assert pieces[0] == "a" * 4094
    assert pieces[1].startswith("\\x1b")


def test_a_raw_cut_does_not_fall_inside_a_utf8_sequence() -> None:
    data = "a€b".encode()  # € is 3 bytes at offsets 1..3
    assert split_raw(data, 2) == 1
    assert split_raw(data, 3) == 1
    assert split_raw(data, 4) == 4


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        (b"Cloning https://deploy:ghp_s3cr3tTOKEN@github.com/acme/app.git", b"ghp_s3cr3tTOKEN"),
        (b"GET /artifact?X-Amz-Signature=abcdef0123&x=1", b"abcdef0123"),
        (b"export API_TOKEN=hunter2hunter2", b"hunter2hunter2"),
        (b"\x1b[32mpushing to https://user:pa55word@registry.example.com\x1b[0m", b"pa55word"),
    ],
)
def test_credentials_are_redacted(raw: bytes, secret: bytes) -> None:
    shaped = "".join(shape_line(raw, LIMIT))
    assert secret.decode() not in shaped
    assert "***" in shaped
