"""Raw lines into published entries: each job's caps, shaping, and numbering ``seq`` 1, 2, 3 ….

Per job: lines and bytes per second (:class:`~orchestrator.buildlogs.pump_task.RateBucket`) and in
total. A line over a cap is dropped without being shaped, counted in
``orchestrator_log_lines_dropped_total{reason}`` and in the attempt's end entry, and the first drop of
each kind publishes one marker line (stream :data:`MARKER_STREAM`). Every other line is shaped
(:mod:`orchestrator.buildlogs.shaping`: it may become several) and numbered. Runs on the pump's thread.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

import msgspec

from orchestrator import metrics
from orchestrator.buildlogs.model import LogLine, RawLine
from orchestrator.buildlogs.pump_task import PumpTask
from orchestrator.buildlogs.redis_stream import Entry, LineEntry
from orchestrator.buildlogs.shaping import shape_line
from orchestrator.config import LogsConfig

__all__ = ["DROP_REASONS", "MARKER_STREAM", "LineMaker", "cap_marker"]

#: The stream of the pump's own lines (cap markers).
MARKER_STREAM: Final = "orchestrator"
#: Reasons of dropped lines (``orchestrator_log_lines_dropped_total{reason}``).
DROP_REASONS: Final = metrics.LOG_DROP_REASONS

_ENCODER: Final = msgspec.json.Encoder()


class LineMaker:
    """Turns a task's raw lines into the entries the pump writes (see the module docstring).

    Args:
        config: the ``[logs]`` section (the caps, the longest line).
    """

    def __init__(self, config: LogsConfig) -> None:
        self._config = config
        self._at_cache: tuple[float, str] = (-1.0, "")

    def publish(
        self, task: PumpTask, raws: list[RawLine], entries: list[Entry], lag_from: dict[float, int]
    ) -> None:
        """Append ``raws``' entries to ``entries``; count each published line's read time in ``lag_from``."""
        config = self._config
        for raw in raws:
            size = len(raw.text) + 1
            reason = None
            if task.lines_total >= config.max_lines_total or task.bytes_total + size > config.max_bytes_total:
                reason = "total"
            elif not (task.line_rate.take(1, raw.at) and task.byte_rate.take(size, raw.at)):
                reason = "rate"
            if reason is not None:
                task.dropped += 1
                metrics.LOG_LINES_DROPPED.labels(reason=reason).inc()
                if reason not in task.marked:
                    task.marked.add(reason)
                    self._append(task, MARKER_STREAM, cap_marker(reason, config), raw, entries, lag_from)
                continue
            task.lines_total += 1
            task.bytes_total += size
            for piece in shape_line(raw.text, config.max_line_bytes):
                self._append(task, raw.stream, piece, raw, entries, lag_from)

    def _append(
        self,
        task: PumpTask,
        stream: str,
        text: str,
        raw: RawLine,
        entries: list[Entry],
        lag_from: dict[float, int],
    ) -> None:
        task.seq += 1
        line = LogLine(
            deployment_id=task.task.deployment_id,
            attempt=task.task.attempt,
            seq=task.seq,
            at=self._rfc3339(raw.at),
            stream=stream,
            line=text,
        )
        entries.append(LineEntry(task.key, _ENCODER.encode(line), raw.cursor))
        task.cursor = raw.cursor
        lag_from[raw.at] = lag_from.get(raw.at, 0) + 1

    def _rfc3339(self, at: float) -> str:
        cached_at, text = self._at_cache
        if at == cached_at:
            return text
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
        self._at_cache = (at, text)
        return text


def cap_marker(reason: str, config: LogsConfig) -> str:
    """The marker line published at a job's first drop for ``reason`` (``"total"`` or ``"rate"``)."""
    if reason == "total":
        text = (
            f"⚠️ this job's output reached its limit ({config.max_lines_total} lines or "
            f"{config.max_bytes_total} bytes): the rest is dropped"
        )
    else:
        text = (
            f"⚠️ this job's output is over its limit ({config.max_lines_per_second} lines or "
            f"{config.max_bytes_per_second} bytes per second): lines over it are dropped"
        )
    return text
