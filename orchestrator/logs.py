"""Logging set-up: human lines with the seed's emojis, or one JSON object per line for machines.

The emoji says how a line reads at a glance: ✅ success, ⚠️ warning, ❌ failure, 🔄 in progress.
Code picks one by passing ``extra=emoji(PROGRESS)`` or by level (warnings and errors get theirs
automatically). A line about a job passes ``extra=job_fields(deployment_id, attempt, task_arn,
mark=...)`` instead: the JSON format then carries ``deploymentId``, ``attempt``, ``taskArn`` (and
``type``, ``status`` when given) as keys of their own, while the text format shows only the message,
which names the job already. A job's status is logged with the level and emoji of
:func:`status_mark`, by what it means: a rejection is bad input (⚠️), a stop done as asked and a
deploy that reached ``running`` are successes (✅), ❌ is for failures.

Every line, and every field, goes through redaction (:mod:`orchestrator.redaction`), so a URL with a
password never reaches a log.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol

import msgspec

from orchestrator.messages import JOB_TYPE_BY_NAME, StatusEvent
from orchestrator.redaction import redact_text, redact_values

SUCCESS: Final = "✅"
WARNING: Final = "⚠️"
FAILURE: Final = "❌"
PROGRESS: Final = "🔄"

LogFormat = Literal["text", "json"]
LogStream = Literal["stdout", "stderr"]

#: Where ``orchestrator run`` writes its log lines (supervisord keeps stdout in the ``.out.log``).
DEFAULT_RUN_LOG_STREAM: Final[LogStream] = "stdout"
#: Where the other commands write theirs: their standard output is their result.
DEFAULT_COMMAND_LOG_STREAM: Final[LogStream] = "stderr"

#: The record attribute :func:`job_fields` sets: the job's fields, by their JSON key.
JOB_FIELDS_ATTRIBUTE: Final = "job_fields"

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


def job_fields(
    deployment_id: str,
    attempt: int | None = None,
    task_arn: str | None = None,
    *,
    job_type: str | None = None,
    status: str | None = None,
    mark: str = "",
) -> dict[str, object]:
    """``extra=`` for a line about a job: its fields as keys of their own in JSON, with the emoji.

    ``log.info("launched %s", arn, extra=job_fields(job.deployment_id, 2, arn, mark=SUCCESS))``.
    Fields left ``None`` are left out; without ``mark`` the level's emoji is used.
    """
    fields = {
        "deploymentId": deployment_id,
        "attempt": attempt,
        "taskArn": task_arn,
        "type": job_type,
        "status": status,
    }
    extra: dict[str, object] = {
        JOB_FIELDS_ATTRIBUTE: {key: value for key, value in fields.items() if value is not None}
    }
    if mark:
        extra["emoji"] = mark
    return extra


class TaskLike(Protocol):
    """What :func:`task_fields` reads: a task handle, or a local task's record."""

    @property
    def deployment_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def task_id(self) -> str: ...
    @property
    def job_type(self) -> str: ...


def task_fields(task: TaskLike, mark: str = "") -> dict[str, object]:
    """:func:`job_fields` of a line about one task of a job attempt."""
    return job_fields(task.deployment_id, task.attempt, task.task_id, job_type=task.job_type, mark=mark)


def event_fields(event: StatusEvent, mark: str = "") -> dict[str, object]:
    """:func:`job_fields` of a line about one status event."""
    return job_fields(
        event.deployment_id,
        event.attempt,
        event.task_arn,
        job_type=event.type,
        status=event.status,
        mark=mark,
    )


_STATUS_MARKS: Final[dict[str, tuple[int, str]]] = {
    "queued": (logging.INFO, PROGRESS),
    "dispatched": (logging.INFO, PROGRESS),
    "running": (logging.INFO, PROGRESS),
    "succeeded": (logging.INFO, SUCCESS),
    # Only a stop request ends a job as "stopped": the stop did what it was asked.
    "stopped": (logging.INFO, SUCCESS),
    # Bad input, refused as designed: worth a look, not a failure of the job or of the orchestrator.
    "rejected": (logging.WARNING, WARNING),
    "retrying": (logging.WARNING, WARNING),
    "timed_out": (logging.ERROR, FAILURE),
    "failed": (logging.ERROR, FAILURE),
}


def status_mark(job_type: str, status: str) -> tuple[int, str]:
    """The level and emoji of a line saying that a ``job_type`` job reached ``status``.

    ``running`` is the goal of a job type that runs until stopped (``deploy``): ✅, not 🔄.
    """
    job_class = JOB_TYPE_BY_NAME.get(job_type)
    if status == "running" and job_class is not None and job_class.runs_until_stopped:
        return logging.INFO, SUCCESS
    return _STATUS_MARKS.get(status, (logging.INFO, PROGRESS))


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


def rfc3339_utc(created: float) -> str:
    """``created`` (epoch seconds) as RFC 3339 UTC with milliseconds: ``2026-12-03T07:41:02.123Z``."""
    seconds = int(created)
    millis = min(999, int((created - seconds) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _redacted_fields(fields: dict[str, object]) -> dict[str, object]:
    """The job fields with every string value redacted, each as one whole value."""
    keys = [key for key, value in fields.items() if isinstance(value, str)]
    texts = [str(fields[key]) for key in keys]
    redacted = redact_values(texts)
    if redacted is None:
        redacted = [redact_text(text) for text in texts]
    return {**fields, **dict(zip(keys, redacted, strict=True))}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339 UTC), ``level``, ``logger``, ``msg``, ``emoji``, the
    job fields of :func:`job_fields` (``deploymentId``, ``attempt``, ``taskArn``, ``type``,
    ``status``) when the line is about a job, and ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": rfc3339_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        mark = _emoji_of(record)
        if mark:
            doc["emoji"] = mark
        fields = getattr(record, JOB_FIELDS_ATTRIBUTE, None)
        if isinstance(fields, dict):
            doc.update(_redacted_fields(fields))
        if record.exc_info:
            doc["exc"] = redact_text(self.formatException(record.exc_info))
        return _JSON.encode(doc).decode()


def setup_logging(
    level: str = "INFO", fmt: LogFormat = "text", stream: LogStream = DEFAULT_RUN_LOG_STREAM
) -> None:
    """Send the root logger to ``stream`` in ``fmt``; quiet the chattiest libraries."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    if isinstance(out, io.TextIOWrapper):
        # As stderr does: a locale that cannot show an emoji gets an escape, not an error per line.
        out.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(out)
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
