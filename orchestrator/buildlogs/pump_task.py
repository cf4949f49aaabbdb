"""What the log pump (:mod:`orchestrator.buildlogs.pump`) keeps of one followed attempt.

A few numbers whatever the task writes: the last ``seq`` given out and the last one known to be in
Redis (with their source cursors), the totals and rate buckets of its caps, its drops, and where its
finish stands. Everything here runs on the pump's one thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from orchestrator.buildlogs.model import FollowedTask, LogSource
from orchestrator.config import LogsConfig
from orchestrator.logs import FAILURE, emoji

__all__ = ["BURST_SECONDS", "OnFlushed", "PumpTask", "RateBucket", "call_back"]

log = logging.getLogger(__name__)

#: The per-second caps let a job write this many seconds' worth at once.
BURST_SECONDS: Final = 10.0

OnFlushed = Callable[[bool], None]


class RateBucket:
    """A token bucket of ``rate`` per second holding up to :data:`BURST_SECONDS` of it — or, after a
    longer pause between two reads of the task, that pause's worth.

    The local source stamps a line when it reads it, not when the worker wrote it: a pump running
    behind reads seconds of a well-behaved worker's output at once, which a one-second bucket would
    take for a burst and drop.
    """

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float, burst_seconds: float = BURST_SECONDS) -> None:
        self.rate = rate
        self.capacity = rate * burst_seconds
        self.tokens = self.capacity
        self.last = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens at ``now`` (epoch s); False, taking none, when there are fewer."""
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(max(self.capacity, self.rate * elapsed), self.tokens + elapsed * self.rate)
            self.last = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False


class PumpTask:
    """The pump's state of one followed attempt (a few numbers, whatever the task writes)."""

    def __init__(
        self, task: FollowedTask, source: LogSource, key: str, config: LogsConfig, now: float
    ) -> None:
        self.task = task
        self.source = source
        self.key = key
        self.resolved = False  # where its stream stands has been read
        self.seq = 0  # last seq given out
        self.written_seq = 0  # last seq known to be in Redis
        self.written_cursor: str | None = None
        self.cursor: str | None = None  # after the last line given out
        self.lines_total = 0
        self.bytes_total = 0
        self.dropped = 0
        self.marked: set[str] = set()
        self.written_marked: set[str] = set()
        self.line_rate = RateBucket(config.max_lines_per_second, now)
        self.byte_rate = RateBucket(config.max_bytes_per_second, now)
        self.finish_status: str | None = None
        self.finish_deadline = 0.0  # the finish is called back (False) by then at the latest
        self.give_up_at = 0.0  # the log is ended there by then at the latest
        self.polled_since_finish = False
        self.callbacks: list[OnFlushed] = []

    def begin_finish(self, status: str, finish_deadline: float, late_seconds: float) -> None:
        """The task ended with ``status``: its finish is called back by ``finish_deadline`` (epoch s),
        and its log ended where it is ``late_seconds`` after that at the latest."""
        self.finish_status = status
        self.finish_deadline = finish_deadline
        self.give_up_at = finish_deadline + late_seconds
        self.polled_since_finish = False
        if self.resolved:
            self.tell_source_ended()

    def log_complete(self, touched: set[str]) -> bool:
        """Whether the finished task's log has been read to its end: its source says so or, for a
        source that cannot tell, a round after the finish read nothing of it (``touched``: the tasks
        this round read lines of)."""
        caught_up = getattr(self.source, "caught_up", None)
        if callable(caught_up):
            complete = bool(caught_up(self.task.task_id))
        else:
            complete = self.polled_since_finish and self.task.task_id not in touched
        self.polled_since_finish = True
        return complete

    def tell_source_ended(self) -> None:
        """Tell the source the task ended, if it wants to know (CloudWatch then waits for a late read)."""
        ended = getattr(self.source, "task_ended", None)
        if callable(ended):
            ended(self.task.task_id)

    def written(self) -> None:
        """Everything given out so far is in Redis."""
        self.written_seq = self.seq
        self.written_cursor = self.cursor
        self.written_marked = set(self.marked)

    def rewind(self) -> None:
        """A write failed: go back to what the stream holds, and read the source again from there."""
        if self.seq == self.written_seq:
            return
        self.seq = self.written_seq
        self.cursor = self.written_cursor
        self.marked = set(self.written_marked)
        self.source.unfollow(self.task.task_id)
        self.source.follow(self.task, self.written_cursor)
        if self.finish_status is not None:
            self.tell_source_ended()


def call_back(callback: OnFlushed, flushed: bool) -> None:
    """Call a finish's ``on_flushed``; its failure is logged, never raised into the pump."""
    try:
        callback(flushed)
    except Exception:
        log.exception("log pump callback failed", extra=emoji(FAILURE))
