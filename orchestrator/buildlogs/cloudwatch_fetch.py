"""The CloudWatch source's fetch thread: FilterLogEvents rounds that fill each followed stream's buffer.

One background thread fetches, so the pump's poll
(:meth:`~orchestrator.buildlogs.cloudwatch.CloudWatchSource.poll`) only takes what is buffered and
no pump round ever waits for AWS. Each round:

* finds the stream of tasks whose location was asked for and not known yet
  (:class:`~orchestrator.buildlogs.awslogs.AwslogsLocator`: DescribeTaskDefinition, cached per
  revision);
* groups the followed streams by log group, and within a group into streams that are current and
  streams still catching up (new, resumed, or further than :data:`BEHIND_MS` behind), so a task that
  joins does not make every other stream of its call be read again from the start; cuts each set into
  calls of at most :data:`MAX_STREAMS_PER_CALL` streams: FilterLogEvents ``logStreamNames``;
* calls FilterLogEvents with ``startTime`` = the oldest position of the call's streams, at most
  :data:`MAX_PAGES_PER_ROUND` pages per call and round (a call not finished keeps its ``nextToken``
  and goes on in the next round), and a call whose streams were all read less than
  :data:`MIN_QUERY_INTERVAL_SECONDS` ago waits;
* spends one token of a :class:`~orchestrator.launch.pool.TokenBucket` (``ecs.logs_api_rate``,
  ``ecs.logs_api_burst``) per call, so the rate CloudWatch Logs allows is never exceeded; after
  throttling or any other error, the whole source backs off.

A stream that does not exist yet (the task has not started) is not an error. On AWS, FilterLogEvents
fails as a whole when one named stream is missing: the streams never seen to exist are then taken out
of the call and looked for one by one with DescribeLogStreams, with backoff, until they appear.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Final

from orchestrator.backoff import HALF_JITTER, Backoff
from orchestrator.buildlogs.awslogs import AwslogsLocator, LogLocation
from orchestrator.buildlogs.cloudwatch_client import LogsError, LogsNotFoundError, logs_call
from orchestrator.buildlogs.cloudwatch_stream import SETTLE_MS, FollowedStream, StreamTable
from orchestrator.buildlogs.model import RawLine
from orchestrator.launch.pool import TokenBucket
from orchestrator.logs import WARNING, LogThrottle, emoji

__all__ = ["MAX_PAGES_PER_ROUND", "MAX_STREAMS_PER_CALL", "CloudWatchFetcher"]

log = logging.getLogger(__name__)

#: FilterLogEvents takes at most 100 ``logStreamNames`` and returns at most 10,000 events a page.
MAX_STREAMS_PER_CALL: Final = 100
MAX_EVENTS_PER_PAGE: Final = 10_000
#: Pages of one call read in one round (each page is a call, and spends a token).
MAX_PAGES_PER_ROUND: Final = 5
#: A set of streams completely read less than this long ago is not asked again yet.
MIN_QUERY_INTERVAL_SECONDS: Final = 1.0
#: A stream whose position is further back than this reads in a call of its own (catching up).
BEHIND_MS: Final = 2 * SETTLE_MS
#: Locations looked up (ECS calls) per round.
MAX_LOCATES_PER_ROUND: Final = 20
#: Missing streams looked for (DescribeLogStreams) per round.
MAX_PROBES_PER_ROUND: Final = 5
#: The source's backoff after throttling or an error.
ERROR_BACKOFF_BASE_SECONDS: Final = 1.0
ERROR_BACKOFF_MAX_SECONDS: Final = 60.0
#: The fetch thread's sleep when it has nothing to do, and the shortest one.
IDLE_SECONDS: Final = 0.25
MIN_SLEEP_SECONDS: Final = 0.02
JOIN_TIMEOUT_SECONDS: Final = 5.0

_CallKey = tuple[str, tuple[str, ...]]


class _Call:
    """A FilterLogEvents call under way: its parameters and its next page."""

    def __init__(self, params: dict[str, Any], started_wall: float) -> None:
        self.params = params
        self.started_wall = started_wall
        self.next_token: str | None = None


class CloudWatchFetcher:
    """The fetch thread of one :class:`~orchestrator.buildlogs.cloudwatch.CloudWatchSource`.

    Args:
        streams: the source's followed streams (shared with the source, under their lock).
        client: a CloudWatch Logs client.
        locator: finds a task's ``awslogs`` stream.
        bucket: the calls' token bucket (``ecs.logs_api_rate``, ``ecs.logs_api_burst``).
        clock: wall time, epoch seconds (event times are compared with it).
        monotonic: monotonic seconds (pacing).
    """

    def __init__(
        self,
        streams: StreamTable,
        client: Any,
        locator: AwslogsLocator,
        bucket: TokenBucket,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.streams = streams
        self.client = client
        self.locator = locator
        self.bucket = bucket
        self._clock = clock
        self._monotonic = monotonic
        self._calls: dict[_CallKey, _Call] = {}
        self._paused_until = 0.0
        self._backoff = Backoff(ERROR_BACKOFF_BASE_SECONDS, ERROR_BACKOFF_MAX_SECONDS, jitter=HALF_JITTER)
        self._warnings = LogThrottle()
        self._round = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the fetch thread (once; not after :meth:`close`)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="cloudwatch-logs", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Start the next round now (there is news: a task followed, located or ended)."""
        self._wake.set()

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
        with self.streams.lock:
            handles = list(self.streams.to_locate.values())[:MAX_LOCATES_PER_ROUND]
        for handle in handles:
            try:
                location = self.locator.location(handle)
            except Exception as e:  # (the ECS client's error: tried again next round)
                allowed, _ = self._warnings.allow()
                if allowed:
                    log.warning("log location of %s: %s", handle.task_id, e, extra=emoji(WARNING))
                return
            with self.streams.lock:
                self.streams.to_locate.pop(handle.task_id, None)
                followed = self.streams.followed.get(handle.task_id)
                if followed is not None and followed.location is None:
                    followed.location = LogLocation.parse(location)

    def _plan(self) -> list[_CallKey]:
        """The calls of this round: (group, stream names), current streams and catching-up ones apart."""
        now_ms = int(self._clock() * 1000)
        groups: dict[tuple[str, bool], list[FollowedStream]] = {}
        with self.streams.lock:
            for followed in self.streams.followed.values():
                if followed.location is None or followed.state == "missing":
                    continue
                behind = followed.position_ms < now_ms - BEHIND_MS
                groups.setdefault((followed.location.group, behind), []).append(followed)
        plan: list[_CallKey] = []
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
            if self.streams.room(MAX_EVENTS_PER_PAGE) <= 0:
                return False
            done = self._filter(key)
            if done is None:
                return True  # out of tokens: the rest next round
            busy = busy or not done
        return busy

    def _filter(self, key: _CallKey) -> bool | None:
        """Read one call's pages for this round. Returns whether the call is complete (None: no token)."""
        group, names = key
        call = self._calls.get(key)
        if call is None:
            with self.streams.lock:
                streams = self.streams.streams_of(group, names)
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
            room = self.streams.room(MAX_EVENTS_PER_PAGE)
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
                with self.streams.lock:
                    for followed in self.streams.streams_of(group, names).values():
                        followed.settle(call.started_wall)
                        followed.read_complete_at = self._monotonic()
                return True
        self._calls[key] = call
        return False

    def _take(self, group: str, names: tuple[str, ...], events: list[dict[str, Any]]) -> None:
        with self.streams.lock:
            streams = self.streams.streams_of(group, names)
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
                line = RawLine(stream="", text=text, at=timestamp / 1000, cursor=owner.cursor)
                self.streams.buffer(owner, line)

    def _missing(self, group: str, names: tuple[str, ...], error: LogsNotFoundError) -> None:
        """FilterLogEvents said the group, or one of the streams, does not exist: the streams never
        seen to exist (all of them, if none is new or the group is missing) are looked for one by one."""
        with self.streams.lock:
            streams = list(self.streams.streams_of(group, names).values())
            suspects = [f for f in streams if f.state == "new"]
            for followed in streams if error.group_missing or not suspects else suspects:
                followed.state = "missing"
                followed.next_probe = self._monotonic()
        log.debug("%s", error)

    def _probe(self) -> None:
        now = self._monotonic()
        with self.streams.lock:
            due = [
                f
                for f in self.streams.followed.values()
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
            with self.streams.lock:
                if found:
                    followed.state = "new"
                else:
                    followed.next_probe = self._monotonic() + followed.probe_backoff.next_delay()
                    followed.read_at = started
