"""The log pump: one thread that polls every log source, shapes, numbers, caps and publishes lines.

Each round (every ``logs.poll_seconds``, or at once while sources have more, or when a request
comes, which reads only the tasks that ended: see :meth:`LogPump.run_round`): carry out the requests
made since the last round (follow, finish, unfollow: any thread may make them, none blocks), look up
in Redis where each newly followed attempt's log stands (one round trip for all of them), poll every
source, turn each raw line into published lines — capped, shaped
(:mod:`orchestrator.buildlogs.shaping`), numbered ``seq`` 1, 2, 3 … per (deploymentId, attempt) —
and write all of the round's entries, for every job, with one Redis command
(:class:`~orchestrator.buildlogs.redis_stream.RedisStreamSink`).

**Resuming.** Each published line is stored with its source cursor. A process that follows an
attempt (after a launch, or adopting it after its owner died) reads the stream's last entry of that
attempt and continues after it, with the next ``seq``, from that cursor: no line twice, none missed.
A round's entries are written by one Lua script call, which Redis runs atomically, so a process
killed mid-write leaves all or none of them. When the write fails (Redis down) every task goes back
to where its stream stands and is read again from there once Redis is back.

**Caps.** Per job, lines and bytes per second and in total (:mod:`~orchestrator.buildlogs.pump_lines`).
What is held per task is bounded (its source keeps at most one unfinished line; the pump a few
counters, :mod:`~orchestrator.buildlogs.pump_task`), whatever it writes.

**Finishing.** :meth:`LogPump.finish` (the task ended) makes the pump read the task's log to its end,
then write the attempt's end entry and call back ``on_flushed(True)``. When the log is not complete
``logs.final_wait_seconds`` after the finish, ``on_flushed(False)`` is called then (the job's last
event goes out, saying so) and the log is still read, for up to :data:`LATE_SECONDS` more, before
its end entry is written. Callbacks run on the pump's thread: they must only hand on (``tell``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import msgspec
import redis

from orchestrator import metrics
from orchestrator.backoff import Backoff
from orchestrator.buildlogs.model import FollowedTask, LogSource
from orchestrator.buildlogs.pump_lines import LineMaker
from orchestrator.buildlogs.pump_task import OnFlushed, PumpTask, call_back
from orchestrator.buildlogs.redis_stream import EndEntry, Entry, LineEntry, RedisStreamSink, Resume
from orchestrator.config import LogsConfig
from orchestrator.logs import FAILURE, SUCCESS, WARNING, emoji
from orchestrator.redaction import redact_text

if TYPE_CHECKING:
    from orchestrator.launch.base import TaskHandle

log = logging.getLogger(__name__)

#: Most raw lines read from all sources in one round (the round's memory and Redis write are bounded).
ROUND_LINES: Final = 10_000
#: After the final wait, how long a finished task's log is still read before it is ended where it is.
LATE_SECONDS: Final = 60.0
#: Bound of the pump's wait between two failed Redis writes.
RETRY_MAX_SECONDS: Final = 5.0
#: ``close`` waits this long for the thread.
CLOSE_TIMEOUT_SECONDS: Final = 5.0


class _Follow(msgspec.Struct, frozen=True):
    handle: TaskHandle


class _Finish(msgspec.Struct, frozen=True):
    handle: TaskHandle
    status: str
    on_flushed: OnFlushed | None


class _Unfollow(msgspec.Struct, frozen=True):
    task_id: str


class LogPump:
    """Publishes the build logs of followed tasks (see the module docstring).

    Args:
        config: the ``[logs]`` section.
        sink: the Redis Stream sink.
        sources: the log source of each launcher (``{"local": LocalLogSource(...)}``); tasks of a
            launcher without one are not followed (their ``finish`` calls back at once).
        clock: epoch seconds (tests).
        late_seconds: how long after ``logs.final_wait_seconds`` a finished task's log is still read
            (its last event already published) before it is ended where it is.
    """

    def __init__(
        self,
        config: LogsConfig,
        sink: RedisStreamSink,
        sources: Mapping[str, LogSource],
        *,
        clock: Callable[[], float] = time.time,
        late_seconds: float = LATE_SECONDS,
    ) -> None:
        self._config = config
        self._late_seconds = late_seconds
        self._sink = sink
        self._sources = dict(sources)
        self._clock = clock
        self._tasks: dict[str, PumpTask] = {}
        self._requests: collections.deque[_Follow | _Finish | _Unfollow] = collections.deque()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(0.1, RETRY_MAX_SECONDS)
        self._retry_at = 0.0
        self._down = False
        self._lines = LineMaker(config)

    # --- any thread -----------------------------------------------------------------------------

    def key(self, deployment_id: str) -> str:
        """The stream key of ``deployment_id`` (what status events carry as ``logs``)."""
        return self._sink.key(deployment_id)

    def follows(self, launcher: str) -> bool:
        """Whether tasks of ``launcher`` have their logs followed."""
        return launcher in self._sources

    def location(self, handle: TaskHandle) -> str:
        """Where ``handle``'s log is in its source (``"<group>\\n<stream>"`` for CloudWatch), as far
        as the source knows now; ``""`` when not (yet) known. Never blocks."""
        source = self._sources.get(handle.launcher)
        return "" if source is None else source.location_of(handle)

    def follow(self, handle: TaskHandle) -> None:
        """Start publishing ``handle``'s log (after what its stream already holds). Never blocks.

        Does not wake the pump: a running task's log is read in the full rounds (every
        ``logs.poll_seconds``), and a task that ends sooner is read by the round its :meth:`finish`
        wakes, which takes this request first. A round per launch would only look up where the new
        task's stream stands, one Redis round trip and one thread wake-up per job.
        """
        self._requests.append(_Follow(handle))

    def finish(self, handle: TaskHandle, status: str, on_flushed: OnFlushed | None = None) -> None:
        """The task ended with ``status``: publish the rest of its log, then its end entry, then call
        ``on_flushed(True)`` — or ``on_flushed(False)`` after ``logs.final_wait_seconds``. Never blocks."""
        self._request(_Finish(handle, status, on_flushed))

    def unfollow(self, task_id: str) -> None:
        """Stop publishing the task's log without ending it (another process follows it now)."""
        self._request(_Unfollow(task_id))

    def start(self) -> None:
        """Start the pump's thread."""
        self._thread = threading.Thread(target=self._run, name="log-pump", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; every finish still waiting is called back with False."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT_SECONDS)
        pending = [cb for task in self._tasks.values() for cb in task.callbacks]
        pending += [r.on_flushed for r in self._requests if isinstance(r, _Finish) and r.on_flushed]
        self._tasks.clear()
        self._requests.clear()
        for source in self._distinct_sources():
            closer = getattr(source, "close", None)
            if callable(closer):
                closer()
        for callback in pending:
            call_back(callback, False)

    def _distinct_sources(self) -> list[LogSource]:
        """Each source once (one may serve several launchers: CloudWatch serves fargate and ec2)."""
        return list({id(source): source for source in self._sources.values()}.values())

    def _request(self, request: _Follow | _Finish | _Unfollow) -> None:
        self._requests.append(request)
        self._wake.set()

    # --- the pump's thread ------------------------------------------------------------------------

    def _run(self) -> None:
        next_full = time.monotonic()
        while not self._closed.is_set():
            started = time.monotonic()
            full = started >= next_full
            if full:
                # Full rounds start every poll_seconds (a long round is not followed by a full wait).
                next_full = started + self._config.poll_seconds
            busy = False
            try:
                busy = self.run_round(full=full)
            except Exception:
                log.exception("log pump round failed", extra=emoji(FAILURE))
            if busy:
                next_full = time.monotonic()
            else:
                self._wake.wait(max(0.0, next_full - time.monotonic()))
                self._wake.clear()

    def run_round(self, *, full: bool = True) -> bool:
        """One round (see the module docstring). Returns whether a source had more than a round's worth.

        ``full``: poll every followed task. A round that a request woke between two full ones (each
        end and each unfollow wakes the pump) reads only the tasks that ended, from sources that can
        tell them apart (``poll_ended``): reading every running task's log at every launch and every end
        was 15.6 reads per job of a busy local launcher, where one poll per ``poll_seconds`` does.
        """
        now = self._clock()
        self._take_requests(now)
        self._call_back_late(now)
        if now < self._retry_at:
            self._expire_finishes(now)
            return False
        if not self._resolve(now):
            return False
        entries: list[Entry] = []
        lag_from: dict[float, int] = {}
        touched: set[str] = set()
        polled = 0
        for source in self._distinct_sources():
            poll = source.poll if full else getattr(source, "poll_ended", source.poll)
            for task_id, raws in poll(ROUND_LINES):
                task = self._tasks.get(task_id)
                if task is None or not task.resolved:
                    continue
                touched.add(task_id)
                polled += len(raws)
                self._lines.publish(task, raws, entries, lag_from)
        ended = self._ending(now, touched, entries)
        published = len(entries) - len(ended)
        try:
            self._sink.write(entries)
        except redis.RedisError as e:
            self._write_failed(e, now)
            return False
        self._written(entries, lag_from, ended)
        return polled >= ROUND_LINES or published >= ROUND_LINES

    def _take_requests(self, now: float) -> None:
        while self._requests:
            request = self._requests.popleft()
            match request:
                case _Follow(handle):
                    self._add(handle, now)
                case _Finish(handle, status, on_flushed):
                    task = self._add(handle, now)
                    if task is None:
                        if on_flushed is not None:
                            call_back(on_flushed, True)
                        continue
                    if task.finish_status is None:
                        task.begin_finish(status, now + self._config.final_wait_seconds, self._late_seconds)
                    if on_flushed is not None:
                        task.callbacks.append(on_flushed)
                case _Unfollow(task_id):
                    task = self._tasks.pop(task_id, None)
                    if task is not None:
                        task.source.unfollow(task_id)
                        callbacks, task.callbacks = task.callbacks, []
                        for callback in callbacks:
                            call_back(callback, False)

    def _add(self, handle: TaskHandle, now: float) -> PumpTask | None:
        task = self._tasks.get(handle.task_id)
        if task is not None:
            return task
        source = self._sources.get(handle.launcher)
        if source is None:
            return None
        followed = FollowedTask(
            task_id=handle.task_id,
            deployment_id=handle.deployment_id,
            attempt=handle.attempt,
            launcher=handle.launcher,
            location=source.location_of(handle),
        )
        task = PumpTask(followed, source, self._sink.key(handle.deployment_id), self._config, now)
        self._tasks[handle.task_id] = task
        return task

    def _resolve(self, now: float) -> bool:
        """Read where newly followed attempts stand and start their sources there. False: Redis is down."""
        new = [t for t in self._tasks.values() if not t.resolved]
        if not new:
            return True
        try:
            points = self._sink.resume_points([(t.task.deployment_id, t.task.attempt) for t in new])
        except redis.RedisError as e:
            self._write_failed(e, now)
            return False
        for task, point in zip(new, points, strict=True):
            self._start(task, point)
        return True

    def _start(self, task: PumpTask, point: Resume) -> None:
        task.resolved = True
        task.seq = task.written_seq = point.seq
        task.cursor = task.written_cursor = point.cursor
        if point.ended:  # a previous owner published the whole attempt, its end too
            self._tasks.pop(task.task.task_id, None)
            for callback in task.callbacks:
                call_back(callback, True)
            return
        task.source.follow(task.task, point.cursor)
        if task.finish_status is not None:
            task.tell_source_ended()
        if point.seq:
            log.info(
                "resuming the log of %s attempt %d after line %d",
                task.task.deployment_id,
                task.task.attempt,
                point.seq,
                extra=emoji(SUCCESS),
            )

    def _ending(self, now: float, touched: set[str], entries: list[Entry]) -> list[tuple[PumpTask, bool]]:
        """The finishing tasks whose log is complete (or whose wait is over): their end entries."""
        ended: list[tuple[PumpTask, bool]] = []
        for task in self._tasks.values():
            if task.finish_status is None or not task.resolved:
                continue
            complete = task.log_complete(touched)
            if complete or now >= task.give_up_at:
                entries.append(
                    EndEntry(task.key, task.task.attempt, task.finish_status, task.seq, task.dropped)
                )
                ended.append((task, complete))
        return ended

    def _call_back_late(self, now: float) -> None:
        """A finish whose wait is over is called back (False) now; its log is still read after."""
        for task in self._tasks.values():
            if task.callbacks and task.finish_status is not None and now >= task.finish_deadline:
                log.warning(
                    "the log of %s attempt %d was not complete %.0f s after the task ended: its last "
                    "event goes out now, the rest of its log follows",
                    task.task.deployment_id,
                    task.task.attempt,
                    self._config.final_wait_seconds,
                    extra=emoji(WARNING),
                )
                callbacks, task.callbacks = task.callbacks, []
                for callback in callbacks:
                    call_back(callback, False)

    def _expire_finishes(self, now: float) -> None:
        """While Redis is down: a finished task past its last chance is forgotten (no end entry)."""
        for task in [t for t in self._tasks.values() if t.finish_status and now >= t.give_up_at]:
            self._tasks.pop(task.task.task_id, None)
            task.source.unfollow(task.task.task_id)

    def _written(
        self, entries: list[Entry], lag_from: dict[float, int], ended: list[tuple[PumpTask, bool]]
    ) -> None:
        if self._down:
            self._down = False
            log.info("log pump: Redis is back; publishing logs again", extra=emoji(SUCCESS))
        self._backoff.reset()
        written_at = self._clock()
        lines = len(entries) - len(ended)
        if lines:
            metrics.LOG_LINES_PUBLISHED.inc(lines)
            metrics.LOG_BYTES_PUBLISHED.inc(sum(len(e.line) for e in entries if isinstance(e, LineEntry)))
            for at, count in lag_from.items():
                metrics.observe_many(metrics.LOG_LAG, max(0.0, written_at - at), count)
        for task in self._tasks.values():
            task.written()
        for task, complete in ended:
            self._tasks.pop(task.task.task_id, None)
            task.source.unfollow(task.task.task_id)
            if not complete:
                log.warning(
                    "the log of %s attempt %d was still not complete %.0f s after the task ended; "
                    "ended it there",
                    task.task.deployment_id,
                    task.task.attempt,
                    self._config.final_wait_seconds + self._late_seconds,
                    extra=emoji(WARNING),
                )
            for callback in task.callbacks:
                call_back(callback, complete)

    def _write_failed(self, error: redis.RedisError, now: float) -> None:
        """Every task goes back to what its stream holds, to be read again from there."""
        if not self._down:
            self._down = True
            log.warning(
                "log pump: cannot write to Redis (%s); lines wait in the logs and are published when it "
                "is back",
                redact_text(str(error)),
                extra=emoji(WARNING),
            )
        for task in self._tasks.values():
            if task.resolved:
                task.rewind()
        self._retry_at = now + self._backoff.next_delay()
        self._expire_finishes(now)
