"""The log source of ECS tasks: their ``awslogs`` streams, followed with CloudWatch Logs FilterLogEvents.

:class:`CloudWatchSource` is the :class:`~orchestrator.buildlogs.model.LogSource` the pump polls; it
never waits for AWS. Its parts, one concept each:

* :mod:`orchestrator.buildlogs.cloudwatch_stream` — each followed stream's position (cursors
  ``cw:<timestamp ms>:<eventId>``, the events already returned) and unpolled lines;
* :mod:`orchestrator.buildlogs.cloudwatch_fetch` — the background thread whose FilterLogEvents
  rounds (batched, paced, backing off) fill those lines, and that finds each task's stream;
* :mod:`orchestrator.buildlogs.cloudwatch_client` — the boto3 client and its errors;
* :mod:`orchestrator.buildlogs.awslogs` — where a task's ``awslogs`` stream is (its task definition).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from orchestrator.buildlogs.awslogs import AwslogsLocator, LogLocation
from orchestrator.buildlogs.cloudwatch_client import make_logs_client
from orchestrator.buildlogs.cloudwatch_fetch import CloudWatchFetcher
from orchestrator.buildlogs.cloudwatch_stream import FollowedStream, StreamTable, parse_cursor
from orchestrator.buildlogs.model import FollowedTask, RawLine
from orchestrator.config import Config
from orchestrator.launch.base import TaskHandle
from orchestrator.launch.ecs_client import make_ecs_client
from orchestrator.launch.pool import TokenBucket
from orchestrator.logs import WARNING, emoji

__all__ = ["CloudWatchSource"]

log = logging.getLogger(__name__)


class CloudWatchSource:
    """The :class:`~orchestrator.buildlogs.model.LogSource` of ECS tasks (launchers ``fargate``, ``ec2``).

    Args:
        config: the effective configuration (``ecs``: region, endpoint, ``logs_api_rate``/``_burst``).
        logs_client: a CloudWatch Logs client (tests); by default :func:`make_logs_client`.
        ecs_client: an ECS client for the task definitions (tests); by default one made like the
            launchers'.
        clock: wall time, epoch seconds (event times are compared with it).
        monotonic: monotonic seconds (pacing); the token bucket uses it too.
        autostart: start the fetch thread at the first :meth:`follow` (tests that call
            :meth:`fetch_once` themselves say False).
    """

    name = "cloudwatch"

    def __init__(
        self,
        config: Config,
        *,
        logs_client: Any = None,
        ecs_client: Any = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        autostart: bool = True,
    ) -> None:
        self.config = config
        self._autostart = autostart
        self.client = logs_client if logs_client is not None else make_logs_client(config.ecs)
        self.locator = AwslogsLocator(
            config, ecs_client if ecs_client is not None else make_ecs_client(config.ecs, 0)
        )
        self.bucket = TokenBucket(config.ecs.logs_api_rate, config.ecs.logs_api_burst, clock=monotonic)
        self._clock = clock
        self._streams = StreamTable()
        self._lock = self._streams.lock
        self._ended_at: dict[str, float] = {}
        self.fetcher = CloudWatchFetcher(
            self._streams, self.client, self.locator, self.bucket, clock=clock, monotonic=monotonic
        )

    # --- LogSource ------------------------------------------------------------------------------

    def follow(self, task: FollowedTask, resume_cursor: str | None) -> None:
        """Follow ``task``'s stream (its ``location``, or the one :meth:`location_of` finds), after
        ``resume_cursor`` (None: from the stream's start). Following a followed task changes nothing."""
        resume = parse_cursor(resume_cursor) if resume_cursor else None
        if resume_cursor and resume is None:
            log.warning(
                "%s: cursor %r is not a CloudWatch cursor: its log is read from the start",
                task.task_id,
                resume_cursor,
                extra=emoji(WARNING),
            )
        location = LogLocation.parse(task.location) or LogLocation.parse(
            self.locator.cached(task.task_id) or ""
        )
        with self._lock:
            if task.task_id not in self._streams.followed:
                self._streams.followed[task.task_id] = FollowedStream(task, location, resume)
        if self._autostart:
            self.start()
        self.fetcher.wake()

    def unfollow(self, task_id: str) -> None:
        """Stop following the task; its lines not yet polled are dropped."""
        with self._lock:
            followed = self._streams.followed.pop(task_id, None)
            self._streams.to_locate.pop(task_id, None)
            self._ended_at.pop(task_id, None)
            if followed is not None:
                self._streams.unbuffer(len(followed.buffer), sum(len(r.text) for r in followed.buffer))

    def poll(self, max_lines: int) -> list[tuple[str, list[RawLine]]]:
        """The lines fetched since the last poll, per task, at most ``max_lines`` in all; never waits."""
        polled: list[tuple[str, list[RawLine]]] = []
        with self._lock:
            for task_id, followed in self._streams.followed.items():
                if max_lines <= 0:
                    break
                if not followed.buffer:
                    continue
                lines = [followed.buffer.popleft() for _ in range(min(max_lines, len(followed.buffer)))]
                self._streams.unbuffer(len(lines), sum(len(r.text) for r in lines))
                polled.append((task_id, lines))
                max_lines -= len(lines)
            if polled:
                # (the next poll starts after the tasks served first this time)
                first = next(iter(self._streams.followed))
                self._streams.followed[first] = self._streams.followed.pop(first)
        return polled

    def location_of(self, handle: TaskHandle) -> str:
        """``"<group>\\n<stream>"`` of the task's ``awslogs`` stream; ``""`` when not known yet (it is
        then looked up in the background, and a followed task gets it as soon as it is found) or when
        its task definition has none. Never waits: :meth:`resolve_location` does."""
        known = self.locator.cached(handle.task_id)
        if known is not None:
            return known
        with self._lock:
            self._streams.to_locate.setdefault(handle.task_id, handle)
        self.fetcher.wake()
        return ""

    # --- beyond the protocol --------------------------------------------------------------------

    def resolve_location(self, handle: TaskHandle) -> str:
        """:meth:`location_of`, waiting for the ECS calls it needs (at most two, then cached).

        Raises:
            Exception: what the ECS client raised.
        """
        return self.locator.location(handle)

    def task_ended(self, task_id: str) -> None:
        """The task ended (the pump's word): :meth:`caught_up` waits for a read that starts from now."""
        with self._lock:
            if task_id in self._streams.followed:
                self._ended_at.setdefault(task_id, self._clock())
        self.fetcher.wake()

    def caught_up(self, task_id: str, since: float | None = None) -> bool:
        """Whether every line of the task visible at ``since`` (epoch s; default: when
        :meth:`task_ended` was told, else the first time this was asked) was fetched and polled: a
        complete call over its stream (or a look that found it still missing) started at or after
        ``since``. True for a task not followed or without a stream. The pump's final drain asks this
        after the task ended, until its ``logs.final_wait_seconds`` are over."""
        with self._lock:
            followed = self._streams.followed.get(task_id)
            if followed is None or (followed.location is None and task_id not in self._streams.to_locate):
                return True
            if since is None:
                since = self._ended_at.setdefault(task_id, self._clock())
            return not followed.buffer and followed.read_at is not None and followed.read_at >= since

    def start(self) -> None:
        """Start the fetch thread (:meth:`follow` does, unless made with ``autostart=False``)."""
        self.fetcher.start()

    def close(self) -> None:
        """Stop the fetch thread (waits for it up to :data:`~.cloudwatch_fetch.JOIN_TIMEOUT_SECONDS`)."""
        self.fetcher.close()

    def fetch_once(self) -> bool:
        """One fetch round (what the thread repeats). Returns whether work is left for right away."""
        return self.fetcher.fetch_once()
