"""What the CloudWatch source (:mod:`orchestrator.buildlogs.cloudwatch`) keeps of each followed stream.

**Positions.** Events already returned are skipped per stream: an event older than the stream's
position is old; one at the position's very millisecond is new unless its eventId was returned (those
ids are kept, bounded by :data:`MAX_IDS_AT_POSITION`) or, after a resume, is at most the cursor's.
Positions are cursors ``cw:<timestamp ms>:<eventId>``; events within one stream are assumed to become
visible in timestamp order (one ``awslogs`` driver writes each stream, in order), and a stream without
new events is considered read up to :data:`SETTLE_MS` before the start of the last complete call.

**The table.** :class:`StreamTable` holds every followed stream, the tasks whose stream is still
looked for, and the lines fetched but not yet polled (bounded: :data:`MAX_BUFFERED_LINES`,
:data:`MAX_BUFFERED_BYTES`), under one lock: the source's API (any thread) and its fetch thread
(:mod:`orchestrator.buildlogs.cloudwatch_fetch`) share it.
"""

from __future__ import annotations

import collections
import threading
from typing import Final, Literal

from orchestrator.backoff import HALF_JITTER, Backoff
from orchestrator.buildlogs.awslogs import LogLocation
from orchestrator.buildlogs.model import FollowedTask, RawLine
from orchestrator.launch.base import TaskHandle

__all__ = [
    "CURSOR_PREFIX",
    "MAX_BUFFERED_BYTES",
    "MAX_BUFFERED_LINES",
    "SETTLE_MS",
    "FollowedStream",
    "StreamTable",
    "format_cursor",
    "parse_cursor",
]

CURSOR_PREFIX: Final = "cw:"
#: How long after its timestamp an event is assumed visible in FilterLogEvents (the ``awslogs`` driver
#: sends every 5 s, then CloudWatch ingests): a stream without news is read up to this long before the
#: start of the last complete call.
SETTLE_MS: Final = 15_000
#: Lines (and bytes) fetched but not yet polled, over every task; fetching waits when it is full.
MAX_BUFFERED_LINES: Final = 20_000
MAX_BUFFERED_BYTES: Final = 16 * 1024 * 1024
#: eventIds kept per stream at its position's millisecond (beyond: compared by cursor instead).
MAX_IDS_AT_POSITION: Final = 1_000
#: The backoff between two looks (DescribeLogStreams) for a stream that does not exist yet.
PROBE_BACKOFF_BASE_SECONDS: Final = 2.0
PROBE_BACKOFF_MAX_SECONDS: Final = 30.0

_Key = tuple[int, int, str]
StreamState = Literal["new", "live", "missing"]


def format_cursor(timestamp_ms: int, event_id: str) -> str:
    """``cw:<timestamp ms>:<eventId>``: the position after that event."""
    return f"{CURSOR_PREFIX}{timestamp_ms}:{event_id}"


def parse_cursor(cursor: str) -> tuple[int, str] | None:
    """``(timestamp ms, eventId)`` of a :func:`format_cursor` cursor; None when it is not one."""
    if not cursor.startswith(CURSOR_PREFIX):
        return None
    timestamp, sep, event_id = cursor[len(CURSOR_PREFIX) :].partition(":")
    if not sep or not timestamp.isdigit() or not event_id:
        return None
    return int(timestamp), event_id


def _event_key(timestamp_ms: int, event_id: str) -> _Key:
    # (eventIds are decimal strings: AWS's have 56 digits, moto's count from 0, so compare numbers)
    return timestamp_ms, int(event_id) if event_id.isdigit() else -1, event_id


class FollowedStream:
    """What the source keeps of one followed task: its stream, its position, its unpolled lines."""

    def __init__(
        self, task: FollowedTask, location: LogLocation | None, resume: tuple[int, str] | None
    ) -> None:
        self.task = task
        self.location = location
        #: Events older than this are old.
        self.position_ms = resume[0] if resume else 0
        #: Events at or before this key are old (the resume cursor, and ids dropped from ``ids``).
        self.floor: _Key | None = _event_key(*resume) if resume else None
        #: eventIds returned at ``position_ms``.
        self.ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: The cursor after the furthest event returned (the resume cursor to begin with).
        self.cursor = format_cursor(*resume) if resume else ""
        self.cursor_key: _Key | None = self.floor
        self.state: StreamState = "new"
        self.next_probe = 0.0
        self.probe_backoff = Backoff(
            PROBE_BACKOFF_BASE_SECONDS, PROBE_BACKOFF_MAX_SECONDS, jitter=HALF_JITTER
        )
        #: Wall time (epoch s) at which the last complete call over this stream (or the last probe
        #: that found it missing) started: every event visible then has been fetched.
        self.read_at: float | None = None
        self.read_complete_at = 0.0  # monotonic, for MIN_QUERY_INTERVAL_SECONDS
        self.buffer: collections.deque[RawLine] = collections.deque()

    def take(self, timestamp_ms: int, event_id: str) -> bool:
        """Whether the event is new to this stream; if so, it becomes the position."""
        if timestamp_ms < self.position_ms:
            return False
        key = _event_key(timestamp_ms, event_id)
        if self.floor is not None and key <= self.floor:
            return False
        if timestamp_ms > self.position_ms:
            self.position_ms = timestamp_ms
            self.ids.clear()
        elif event_id in self.ids:
            return False
        self.ids[event_id] = None
        if len(self.ids) > MAX_IDS_AT_POSITION:
            dropped, _ = self.ids.popitem(last=False)
            dropped_key = _event_key(timestamp_ms, dropped)
            self.floor = dropped_key if self.floor is None else max(self.floor, dropped_key)
        if self.cursor_key is None or key > self.cursor_key:
            self.cursor_key = key
            self.cursor = format_cursor(timestamp_ms, event_id)
        return True

    def settle(self, started_wall: float) -> None:
        """A call over this stream that started at ``started_wall`` read it completely."""
        settled = int(started_wall * 1000) - SETTLE_MS
        if settled > self.position_ms:
            self.position_ms = settled
            self.ids.clear()
        self.read_at = started_wall


class StreamTable:
    """Every followed stream of one source, and its unpolled lines' budget, under :attr:`lock`.

    The attributes are read and changed only under :attr:`lock`; so are the streams in
    :attr:`followed`.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: The followed streams by task id, in the order :meth:`~.cloudwatch.CloudWatchSource.poll`
        #: serves them.
        self.followed: dict[str, FollowedStream] = {}
        #: Tasks whose stream's location was asked for and is not known yet.
        self.to_locate: dict[str, TaskHandle] = {}
        self.buffered_lines = 0
        self.buffered_bytes = 0

    def room(self, most: int) -> int:
        """How many more lines may be fetched now, at most ``most`` (0: the buffers are full)."""
        with self.lock:
            if self.buffered_bytes >= MAX_BUFFERED_BYTES:
                return 0
            return min(most, MAX_BUFFERED_LINES - self.buffered_lines)

    def buffer(self, followed: FollowedStream, line: RawLine) -> None:
        """(Under the lock.) Keep ``line`` of ``followed`` until it is polled."""
        followed.buffer.append(line)
        self.buffered_lines += 1
        self.buffered_bytes += len(line.text)

    def unbuffer(self, lines: int, size: int) -> None:
        """(Under the lock.) ``lines`` lines of ``size`` bytes in all were polled or dropped."""
        self.buffered_lines -= lines
        self.buffered_bytes -= size

    def streams_of(self, group: str, names: tuple[str, ...]) -> dict[str, FollowedStream]:
        """(Under the lock.) The followed streams of ``group`` named in ``names``, by stream name."""
        wanted = set(names)
        return {
            f.location.stream: f
            for f in self.followed.values()
            if f.location is not None and f.location.group == group and f.location.stream in wanted
        }
