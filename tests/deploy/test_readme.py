"""deploy/README.md has a paragraph for every file of deploy/ (and names no file that is not there)."""

from __future__ import annotations

import re

from .promql import DEPLOY

README = DEPLOY / "README.md"


def test_every_file_of_the_kit_has_its_paragraph() -> None:
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*") if p.is_file() and p != README}
    described = set(re.findall(r"^\*\*`([^`]+)`\*\*", README.read_text(encoding="utf-8"), re.MULTILINE))
    assert files, "the kit has files"
    assert described == files
