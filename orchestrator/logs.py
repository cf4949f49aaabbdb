"""Logging set-up: human lines with the seed's emojis, or one JSON object per line for machines.

The emoji says how a line reads at a glance: ✅ success, ⚠️ warning, ❌ failure, 🔄 in progress.
Code picks one by passing ``extra={"emoji": PROGRESS}`` or by level (warnings and errors get theirs
automatically). Every line goes through :func:`orchestrator.redaction.redact_text`, so a URL with a
password never reaches a log.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
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


#: Lines of one throttled kind logged per interval before the rest are only counted.
DEFAULT_THROTTLE_BURST: Final = 20
DEFAULT_THROTTLE_INTERVAL_SECONDS: Final = 10.0


class LogThrottle:
    """At most ``burst`` lines of one kind per ``interval_seconds``; the rest are counted, not logged.

    For lines whose number an outsider controls (one per rejected message): a flood of hostile input
    must not flood the log, nor spend the CPU that writing it costs. The next line allowed says how
    many were left out, so nothing goes unseen; the metrics count every one.
    """

    def __init__(
        self,
        burst: int = DEFAULT_THROTTLE_BURST,
        interval_seconds: float = DEFAULT_THROTTLE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst = burst
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = -interval_seconds
        self._in_window = 0
        self._suppressed = 0

    def allow(self) -> tuple[bool, int]:
        """Whether to log this line, and how many were left out since the last one logged."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self._interval:
                self._window_start, self._in_window = now, 0
            if self._in_window >= self._burst:
                self._suppressed += 1
                return False, 0
            self._in_window += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed


def suppressed_note(count: int) -> str:
    """`` (and N more like it not logged)`` for a throttled line, or nothing."""
    return f" (and {count} more like it not logged)" if count else ""


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
