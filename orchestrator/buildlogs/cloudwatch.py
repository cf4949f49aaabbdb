"""The log source of ECS tasks: their ``awslogs`` streams, followed with CloudWatch Logs FilterLogEvents.

One background thread (:meth:`CloudWatchSource.start`) fetches; the pump's :meth:`~CloudWatchSource.poll`
only takes what it buffered, so no pump round ever waits for AWS.

Each fetch round:

* finds the stream of tasks whose location was asked for (:meth:`~CloudWatchSource.location_of`) and
  not known yet (:class:`~orchestrator.buildlogs.awslogs.AwslogsLocator`: DescribeTaskDefinition,
  cached per revision);
* groups the followed streams by log group, and within a group into streams that are current and
  streams still catching up (new, resumed, or far behind), so a task that joins does not make every
  other stream of its call be read again from the start; cuts each set into calls of at most
  :data:`MAX_STREAMS_PER_CALL` streams: FilterLogEvents ``logStreamNames``;
* calls FilterLogEvents with ``startTime`` = the oldest position of the call's streams, at most
  :data:`MAX_PAGES_PER_ROUND` pages per call and round (a call not finished keeps its ``nextToken``
  and goes on in the next round), and a call whose streams were all read less than
  :data:`MIN_QUERY_INTERVAL_SECONDS` ago waits;
* spends one token of a :class:`~orchestrator.launch.pool.TokenBucket` (``ecs.logs_api_rate``,
  ``ecs.logs_api_burst``) per call, so the rate CloudWatch Logs allows is never exceeded; after
  throttling or any other error, the whole source backs off.

Events already returned are skipped per stream: an event older than the stream's position is old;
one at the position's very millisecond is new unless its eventId was returned (those ids are kept,
bounded) or, after a resume, is at most the cursor's. Positions are cursors ``cw:<timestamp
ms>:<eventId>``; events within one stream are assumed to become visible in timestamp order (one
``awslogs`` driver writes each stream, in order), and a stream without new events is considered
read up to :data:`SETTLE_MS` before the start of the last complete call.

A stream that does not exist yet (the task has not started) is not an error. On AWS, FilterLogEvents
fails as a whole when one named stream is missing: the streams never seen to exist are then taken out
of the call and looked for one by one with DescribeLogStreams, with backoff, until they appear.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final, Literal

from orchestrator.backoff import HALF_JITTER, Backoff
from orchestrator.buildlogs.awslogs import AwslogsLocator, LogLocation
from orchestrator.buildlogs.cloudwatch_client import (
    LogsError,
    LogsNotFoundError,
    logs_call,
    make_logs_client,
)
from orchestrator.buildlogs.model import FollowedTask, RawLine
from orchestrator.config import Config
from orchestrator.launch.base import TaskHandle
from orchestrator.launch.ecs_client import make_ecs_client
from orchestrator.launch.pool import TokenBucket
from orchestrator.logs import WARNING, LogThrottle, emoji

__all__ = [
    "CURSOR_PREFIX",
    "MAX_BUFFERED_BYTES",
    "MAX_BUFFERED_LINES",
    "MAX_PAGES_PER_ROUND",
    "MAX_STREAMS_PER_CALL",
    "CloudWatchSource",
    "format_cursor",
    "parse_cursor",
]

log = logging.getLogger(__name__)

CURSOR_PREFIX: Final = "cw:"
#: FilterLogEvents takes at most 100 ``logStreamNames`` and returns at most 10,000 events a page.
MAX_STREAMS_PER_CALL: Final = 100
MAX_EVENTS_PER_PAGE: Final = 10_000
#: Pages of one call read in one round (each page is a call, and spends a token).
MAX_PAGES_PER_ROUND: Final = 5
#: A set of streams completely read less than this long ago is not asked again yet.
MIN_QUERY_INTERVAL_SECONDS: Final = 1.0
#: How long after its timestamp an event is assumed visible in FilterLogEvents (the ``awslogs`` driver
#: sends every 5 s, then CloudWatch ingests): a stream without news is read up to this long before the
#: start of the last complete call.
SETTLE_MS: Final = 15_000
#: A stream whose position is further back than this reads in a call of its own (catching up).
BEHIND_MS: Final = 2 * SETTLE_MS
#: Lines (and bytes) fetched but not yet polled, over every task; fetching waits when it is full.
MAX_BUFFERED_LINES: Final = 20_000
MAX_BUFFERED_BYTES: Final = 16 * 1024 * 1024
#: eventIds kept per stream at its position's millisecond (beyond: compared by cursor instead).
MAX_IDS_AT_POSITION: Final = 1_000
#: Locations looked up (ECS calls) per round.
MAX_LOCATES_PER_ROUND: Final = 20
#: Missing streams looked for (DescribeLogStreams) per round, and the backoff between two looks.
MAX_PROBES_PER_ROUND: Final = 5
PROBE_BACKOFF_BASE_SECONDS: Final = 2.0
PROBE_BACKOFF_MAX_SECONDS: Final = 30.0
#: The source's backoff after throttling or an error.
ERROR_BACKOFF_BASE_SECONDS: Final = 1.0
ERROR_BACKOFF_MAX_SECONDS: Final = 60.0
#: The fetch thread's sleep when it has nothing to do, and the shortest one.
IDLE_SECONDS: Final = 0.25
MIN_SLEEP_SECONDS: Final = 0.02
JOIN_TIMEOUT_SECONDS: Final = 5.0

_Key = tuple[int, int, str]
_State = Literal["new", "live", "missing"]


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


def _key(timestamp_ms: int, event_id: str) -> _Key:
    # (eventIds are decimal strings: AWS's have 56 digits, moto's count from 0, so compare numbers)
    return timestamp_ms, int(event_id) if event_id.isdigit() else -1, event_id


class _Followed:
    """What the source keeps of one followed task: its stream, its position, its unpolled lines."""

    def __init__(
        self, task: FollowedTask, location: LogLocation | None, resume: tuple[int, str] | None
    ) -> None:
        self.task = task
        self.location = location
        #: Events older than this are old.
        self.position_ms = resume[0] if resume else 0
        #: Events at or before this key are old (the resume cursor, and ids dropped from ``ids``).
        self.floor: _Key | None = _key(*resume) if resume else None
        #: eventIds returned at ``position_ms``.
        self.ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: The cursor after the furthest event returned (the resume cursor to begin with).
        self.cursor = format_cursor(*resume) if resume else ""
        self.cursor_key: _Key | None = self.floor
        self.state: _State = "new"
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
        key = _key(timestamp_ms, event_id)
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
            dropped_key = _key(timestamp_ms, dropped)
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


class _Call:
    """A FilterLogEvents call under way: its parameters and its next page."""

    def __init__(self, params: dict[str, Any], started_wall: float) -> None:
        self.params = params
        self.started_wall = started_wall
        self.next_token: str | None = None


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
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._followed: dict[str, _Followed] = {}
        self._to_locate: dict[str, TaskHandle] = {}
        self._ended_at: dict[str, float] = {}
        self._calls: dict[tuple[str, tuple[str, ...]], _Call] = {}
        self._buffered_lines = 0
        self._buffered_bytes = 0
        self._paused_until = 0.0
        self._backoff = Backoff(ERROR_BACKOFF_BASE_SECONDS, ERROR_BACKOFF_MAX_SECONDS, jitter=HALF_JITTER)
        self._warnings = LogThrottle()
        self._round = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

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
            if task.task_id not in self._followed:
                self._followed[task.task_id] = _Followed(task, location, resume)
        if self._autostart:
            self.start()
        self._wake.set()

    def unfollow(self, task_id: str) -> None:
        """Stop following the task; its lines not yet polled are dropped."""
        with self._lock:
            followed = self._followed.pop(task_id, None)
            self._to_locate.pop(task_id, None)
            self._ended_at.pop(task_id, None)
            if followed is not None:
                self._unbuffer(len(followed.buffer), sum(len(r.text) for r in followed.buffer))

    def poll(self, max_lines: int) -> list[tuple[str, list[RawLine]]]:
        """The lines fetched since the last poll, per task, at most ``max_lines`` in all; never waits."""
        polled: list[tuple[str, list[RawLine]]] = []
        with self._lock:
            for task_id, followed in self._followed.items():
                if max_lines <= 0:
                    break
                if not followed.buffer:
                    continue
                lines = [followed.buffer.popleft() for _ in range(min(max_lines, len(followed.buffer)))]
                self._unbuffer(len(lines), sum(len(r.text) for r in lines))
                polled.append((task_id, lines))
                max_lines -= len(lines)
            if polled:
                # (the next poll starts after the tasks served first this time)
                first = next(iter(self._followed))
                self._followed[first] = self._followed.pop(first)
        return polled

    def location_of(self, handle: TaskHandle) -> str:
        """``"<group>\\n<stream>"`` of the task's ``awslogs`` stream; ``""`` when not known yet (it is
        then looked up in the background, and a followed task gets it as soon as it is found) or when
        its task definition has none. Never waits: :meth:`resolve_location` does."""
        known = self.locator.cached(handle.task_id)
        if known is not None:
            return known
        with self._lock:
            self._to_locate.setdefault(handle.task_id, handle)
        self._wake.set()
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
            if task_id in self._followed:
                self._ended_at.setdefault(task_id, self._clock())
        self._wake.set()

    def caught_up(self, task_id: str, since: float | None = None) -> bool:
        """Whether every line of the task visible at ``since`` (epoch s; default: when
        :meth:`task_ended` was told, else the first time this was asked) was fetched and polled: a
        complete call over its stream (or a look that found it still missing) started at or after
        ``since``. True for a task not followed or without a stream. The pump's final drain asks this
        after the task ended, until its ``logs.final_wait_seconds`` are over."""
        with self._lock:
            followed = self._followed.get(task_id)
            if followed is None or (followed.location is None and task_id not in self._to_locate):
                return True
            if since is None:
                since = self._ended_at.setdefault(task_id, self._clock())
            return not followed.buffer and followed.read_at is not None and followed.read_at >= since

    def start(self) -> None:
        """Start the fetch thread (:meth:`follow` does, unless made with ``autostart=False``)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="cloudwatch-logs", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the fetch thread (waits for it up to :data:`JOIN_TIMEOUT_SECONDS`)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_SECONDS)

    def fetch_once(self) -> bool:
        """One fetch round (what the thread repeats). Returns whether work is left for right away."""
        if self._monotonic() < self._paused_until:
            return False
        self._locate()
        busy = False
        try:
            busy = self._filter_all()
            self._probe()
        except LogsError as e:
            self._pause(e)
            return False
        self._backoff.reset()
        return busy

    # --- fetching -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.fetch_once()
            except Exception:
                log.exception("CloudWatch log fetch round failed")
                self._paused_until = self._monotonic() + self._backoff.next_delay()
                busy = False
            now = self._monotonic()
            if now < self._paused_until:
                delay = self._paused_until - now
            elif busy:
                delay = max(MIN_SLEEP_SECONDS, self.bucket.wait_time())
            else:
                delay = IDLE_SECONDS
            self._wake.wait(delay)
            self._wake.clear()

    def _pause(self, error: LogsError) -> None:
        delay = self._backoff.next_delay()
        self._paused_until = self._monotonic() + delay
        allowed, left_out = self._warnings.allow()
        if allowed:
            log.warning(
                "CloudWatch Logs: %s; following again in %.1fs%s",
                error,
                delay,
                f" ({left_out} similar warnings not logged)" if left_out else "",
                extra=emoji(WARNING),
            )

    def _locate(self) -> None:
        with self._lock:
            handles = list(self._to_locate.values())[:MAX_LOCATES_PER_ROUND]
        for handle in handles:
            try:
                location = self.locator.location(handle)
            except Exception as e:  # (the ECS client's error: tried again next round)
                allowed, _ = self._warnings.allow()
                if allowed:
                    log.warning("log location of %s: %s", handle.task_id, e, extra=emoji(WARNING))
                return
            with self._lock:
                self._to_locate.pop(handle.task_id, None)
                followed = self._followed.get(handle.task_id)
                if followed is not None and followed.location is None:
                    followed.location = LogLocation.parse(location)

    def _room(self) -> int:
        with self._lock:
            if self._buffered_bytes >= MAX_BUFFERED_BYTES:
                return 0
            return min(MAX_EVENTS_PER_PAGE, MAX_BUFFERED_LINES - self._buffered_lines)

    def _plan(self) -> list[tuple[str, tuple[str, ...]]]:
        """The calls of this round: (group, stream names), current streams and catching-up ones apart."""
        now_ms = int(self._clock() * 1000)
        groups: dict[tuple[str, bool], list[_Followed]] = {}
        with self._lock:
            for followed in self._followed.values():
                if followed.location is None or followed.state == "missing":
                    continue
                behind = followed.position_ms < now_ms - BEHIND_MS
                groups.setdefault((followed.location.group, behind), []).append(followed)
        plan: list[tuple[str, tuple[str, ...]]] = []
        for (group, _), members in sorted(groups.items(), key=lambda item: item[0]):
            names = sorted(f.location.stream for f in members if f.location is not None)
            plan.extend(
                (group, tuple(names[i : i + MAX_STREAMS_PER_CALL]))
                for i in range(0, len(names), MAX_STREAMS_PER_CALL)
            )
        # (calls under way go on whatever the plan: their streams may have moved between sets)
        plan.extend(key for key in self._calls if key not in plan)
        if plan:
            self._round = (self._round + 1) % len(plan)
            plan = plan[self._round :] + plan[: self._round]
        return plan

    def _filter_all(self) -> bool:
        busy = False
        for key in self._plan():
            if self._room() <= 0:
                return False
            done = self._filter(key)
            if done is None:
                return True  # out of tokens: the rest next round
            busy = busy or not done
        return busy

    def _streams_of(self, group: str, names: tuple[str, ...]) -> dict[str, _Followed]:
        wanted = set(names)
        return {
            f.location.stream: f
            for f in self._followed.values()
            if f.location is not None and f.location.group == group and f.location.stream in wanted
        }

    def _filter(self, key: tuple[str, tuple[str, ...]]) -> bool | None:
        """Read one call's pages for this round. Returns whether the call is complete (None: no token)."""
        group, names = key
        call = self._calls.get(key)
        if call is None:
            with self._lock:
                streams = self._streams_of(group, names)
                if not streams:
                    return True
                if all(
                    self._monotonic() - f.read_complete_at < MIN_QUERY_INTERVAL_SECONDS
                    for f in streams.values()
                ):
                    return True
                start_ms = min(f.position_ms for f in streams.values())
            params = {"logGroupName": group, "logStreamNames": list(names), "startTime": start_ms}
            call = _Call(params, self._clock())
        for _ in range(MAX_PAGES_PER_ROUND):
            room = self._room()
            if room <= 0:
                self._calls[key] = call
                return False
            if not self.bucket.try_acquire():
                self._calls[key] = call
                return None
            page = dict(call.params, limit=room)
            if call.next_token:
                page["nextToken"] = call.next_token
            try:
                response = logs_call("FilterLogEvents", self.client.filter_log_events, **page)
            except LogsNotFoundError as e:
                self._calls.pop(key, None)
                self._missing(group, names, e)
                return True
            except LogsError:
                self._calls.pop(key, None)
                raise
            self._take(group, names, response.get("events") or [])
            call.next_token = response.get("nextToken") or None
            if call.next_token is None:
                self._calls.pop(key, None)
                with self._lock:
                    for followed in self._streams_of(group, names).values():
                        followed.settle(call.started_wall)
                        followed.read_complete_at = self._monotonic()
                return True
        self._calls[key] = call
        return False

    def _take(self, group: str, names: tuple[str, ...], events: list[dict[str, Any]]) -> None:
        with self._lock:
            streams = self._streams_of(group, names)
            for followed in streams.values():
                if followed.state == "new":
                    followed.state = "live"
                    followed.probe_backoff.reset()
            for event in events:
                owner = streams.get(str(event.get("logStreamName") or ""))
                timestamp = event.get("timestamp")
                event_id = str(event.get("eventId") or "")
                if owner is None or not isinstance(timestamp, int) or not event_id:
                    continue
                if not owner.take(timestamp, event_id):
                    continue
                text = str(event.get("message") or "").encode("utf-8", "surrogatepass")
                owner.buffer.append(RawLine(stream="", text=text, at=timestamp / 1000, cursor=owner.cursor))
                self._buffered_lines += 1
                self._buffered_bytes += len(text)

    def _missing(self, group: str, names: tuple[str, ...], error: LogsNotFoundError) -> None:
        """FilterLogEvents said the group, or one of the streams, does not exist: the streams never
        seen to exist (all of them, if none is new or the group is missing) are looked for one by one."""
        with self._lock:
            streams = list(self._streams_of(group, names).values())
            suspects = [f for f in streams if f.state == "new"]
            for followed in streams if error.group_missing or not suspects else suspects:
                followed.state = "missing"
                followed.next_probe = self._monotonic()
        log.debug("%s", error)

    def _probe(self) -> None:
        now = self._monotonic()
        with self._lock:
            due = [
                f
                for f in self._followed.values()
                if f.state == "missing" and f.location is not None and f.next_probe <= now
            ][:MAX_PROBES_PER_ROUND]
        for followed in due:
            location = followed.location
            if location is None or not self.bucket.try_acquire():
                return
            started = self._clock()
            try:
                response = logs_call(
                    "DescribeLogStreams",
                    self.client.describe_log_streams,
                    logGroupName=location.group,
                    logStreamNamePrefix=location.stream,
                    limit=1,
                )
                found = any(
                    s.get("logStreamName") == location.stream for s in response.get("logStreams") or []
                )
            except LogsNotFoundError:
                found = False
            with self._lock:
                if found:
                    followed.state = "new"
                else:
                    followed.next_probe = self._monotonic() + followed.probe_backoff.next_delay()
                    followed.read_at = started

    def _unbuffer(self, lines: int, size: int) -> None:
        self._buffered_lines -= lines
        self._buffered_bytes -= size
