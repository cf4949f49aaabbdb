"""Logging set-up: human lines with the seed's emojis, or one JSON object per line for machines.

The emoji says how a line reads at a glance: ✅ success, ⚠️ warning, ❌ failure, 🔄 in progress.
Code picks one by passing ``extra={"emoji": PROGRESS}`` or by level (warnings and errors get theirs
automatically). Every line goes through :func:`orchestrator.redaction.redact_text`, so a URL with a
password never reaches a log.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal

import msgspec

from orchestrator.redaction import redact_text

SUCCESS: Final = "✅"
WARNING: Final = "⚠️"
FAILURE: Final = "❌"
PROGRESS: Final = "🔄"

LogFormat = Literal["text", "json"]

_LEVEL_EMOJI: Final = {logging.WARNING: WARNING, logging.ERROR: FAILURE, logging.CRITICAL: FAILURE}
_JSON: Final = msgspec.json.Encoder()


def emoji(kind: str) -> dict[str, str]:
    """``extra=`` for a log call, e.g. ``log.info("launched", extra=emoji(SUCCESS))``."""
    return {"emoji": kind}


def _emoji_of(record: logging.LogRecord) -> str:
    chosen = getattr(record, "emoji", None)
    if isinstance(chosen, str):
        return chosen
    return _LEVEL_EMOJI.get(record.levelno, "")


class TextFormatter(logging.Formatter):
    """``2026-01-02 03:04:05,678 INFO orchestrator.x ✅ message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        mark = _emoji_of(record)
        if mark:
            head = f"{record.levelname} {record.name} "
            line = line.replace(head, f"{head}{mark} ", 1)
        return redact_text(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``emoji``, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        mark = _emoji_of(record)
        if mark:
            doc["emoji"] = mark
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        return _JSON.encode(doc).decode()


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Send the root logger to stderr in ``fmt``; quiet the chattiest libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "pykka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pika logs every failed connection attempt as an ERROR with socket details; our broker layer
    # translates those failures and reports each once, in one line, with what to do.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
