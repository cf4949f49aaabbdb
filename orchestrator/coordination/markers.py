"""Markers that tell every process what already happened to a job: stopped, retry waiting, done.

:class:`StopMarkers` let a ``stop`` cancel a retry waiting in a delay queue whichever process consumes
it; :class:`PendingRetries` and :class:`DoneMarkers` tell a stop, and an adopter, what already happened
to a job. Each method says what it does when Redis is down.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

from orchestrator.coordination.client import RedisClient, redis_errors, reply_text

# KEYS: stop marker, pending retry record. ARGV: marker value, ttl seconds.
# Sets the marker only while a retry of the deployment is recorded as waiting; 1 when it did.
_MARK_IF_RETRY_WAITING: Final = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


class StopMarkers:
    """Cancellation markers: a ``stop`` cancels a retry still waiting in a delay queue.

    The retry comes back through ``execute.queue`` to any process; every process checks the marker
    ``{prefix}:stop:<deploymentId>`` before launching it.

    One key per deployment, for its TTL only. The TimeoutMonitor bounds how many a flood of stops for
    ids nobody launched can write (see :mod:`orchestrator.stop_sweeps`); :meth:`mark_if_retry_waiting`
    writes one only for a deployment with a retry recorded as waiting.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._mark_if_waiting_script = client.register_script(_MARK_IF_RETRY_WAITING)

    def _key(self, deployment_id: str) -> str:
        return f"{self._prefix}:stop:{deployment_id}"

    def mark(self, deployment_id: str, ttl_seconds: int) -> None:
        """Mark ``deployment_id`` stopped for ``ttl_seconds`` (at least the longest retry delay).

        Raises:
            CoordinationError: Redis is down; the marker is not set, so a waiting retry would still run.
        """
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be greater than 0 (got {ttl_seconds})")
        with redis_errors("setting a stop marker"):
            self._client.set(self._key(deployment_id), str(time.time()), ex=ttl_seconds)

    def mark_if_retry_waiting(self, deployment_id: str, ttl_seconds: int, retries: PendingRetries) -> bool:
        """Mark ``deployment_id`` stopped if, and only if, a retry of it is recorded as waiting (one
        atomic call): the retry is then cancelled whenever it comes back, even before the stop's search
        has ended.

        Returns:
            True when the marker was set.

        Raises:
            CoordinationError: Redis is down; nothing is set.
        """
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be greater than 0 (got {ttl_seconds})")
        with redis_errors("setting a stop marker"):
            marked = self._mark_if_waiting_script(
                keys=[self._key(deployment_id), retries.key(deployment_id)],
                args=[str(time.time()), ttl_seconds],
            )
        return bool(marked)

    def is_marked(self, deployment_id: str) -> bool:
        """Whether a stop for ``deployment_id`` is pending.

        Raises:
            CoordinationError: Redis is down; the caller cannot tell, and should hold the job back
                (requeue it) rather than launch it.
        """
        with redis_errors("reading a stop marker"):
            return bool(self._client.exists(self._key(deployment_id)))

    def marked_at(self, deployment_id: str) -> float | None:
        """When the pending stop of ``deployment_id`` was asked for (epoch seconds), or None.

        A stop applies to the tasks launched before it, not to a new job of the same deployment.

        Raises:
            CoordinationError: Redis is down.
        """
        with redis_errors("reading a stop marker"):
            value = self._client.get(self._key(deployment_id))
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            return 0.0

    def clear(self, deployment_id: str) -> None:
        """Remove the marker (e.g. when a new job for the deployment is submitted after the stop).

        Raises:
            CoordinationError: Redis is down; the marker stays until its TTL ends.
        """
        with redis_errors("clearing a stop marker"):
            self._client.delete(self._key(deployment_id))


class PendingRetries:
    """Which deployments have a retry waiting in a delay queue, so a ``stop`` can answer for them.

    ``{prefix}:retry:<deploymentId>`` holds ``<type> <failed attempt>`` until the retry comes back
    (or its TTL, a little past the delay, ends).
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def key(self, deployment_id: str) -> str:
        """The Redis key of ``deployment_id``'s pending retry record."""
        return f"{self._prefix}:retry:{deployment_id}"

    def waiting(self, deployment_id: str, job_type: str, attempt: int, ttl_seconds: int) -> None:
        """Record that attempt ``attempt`` failed and its retry is waiting.

        Raises:
            CoordinationError: Redis is down; a stop arriving meanwhile will say there is nothing to stop.
        """
        with redis_errors("recording a pending retry"):
            self._client.set(self.key(deployment_id), f"{job_type} {attempt}", ex=max(1, ttl_seconds))

    def take(self, deployment_id: str) -> tuple[str, int] | None:
        """Remove and return ``(type, failed attempt)`` of the deployment's waiting retry, if any.

        Raises:
            CoordinationError: Redis is down.
        """
        with redis_errors("reading a pending retry"):
            value = self._client.getdel(self.key(deployment_id))
        return _pending_retry(value)

    def take_many(self, deployment_ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """:meth:`take` for several deployments in one round trip; only those with a retry waiting.

        Raises:
            CoordinationError: Redis is down.
        """
        if not deployment_ids:
            return {}
        with redis_errors("reading pending retries"):
            pipe = self._client.pipeline(transaction=False)
            for deployment_id in deployment_ids:
                pipe.getdel(self.key(deployment_id))
            values = pipe.execute()
        taken = {d: _pending_retry(v) for d, v in zip(deployment_ids, values, strict=True)}
        return {d: pending for d, pending in taken.items() if pending is not None}


def _pending_retry(value: bytes | str | None) -> tuple[str, int] | None:
    """A pending retry record's ``<type> <failed attempt>`` as a pair; None if absent or unreadable."""
    if value is None:
        return None
    job_type, _, attempt = reply_text(value).partition(" ")
    return (job_type, int(attempt)) if attempt.isdigit() else None


def attempt_done_key(deployment_id: str, attempt: int) -> str:
    """The done marker of a job attempt (beside its task's): its outcome was published, whoever ran it.

    A local task's files are gone once its outcome is handled, so a late duplicate of the attempt
    finds no task; this marker tells it the attempt is over rather than still being launched.
    """
    return f"attempt:{deployment_id}:{attempt}"


def outcome_key(deployment_id: str) -> str:
    """The key (beside the done markers) of the last outcome published for a deployment: the status
    event a late duplicate of an ended job is answered with."""
    return f"outcome:{deployment_id}"


class DoneMarkers:
    """Tasks whose outcome was already published, so that no adopter publishes (or retries) it again.

    ECS lists a stopped task for about an hour; an adopter that finds one must know whether its owner
    handled it before dying. ``{prefix}:done:<task id>`` says so, for ``ttl_seconds``; so does
    ``{prefix}:done:attempt:<deploymentId>:<attempt>`` for the attempt (:func:`attempt_done_key`).
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def key(self, task_id: str) -> str:
        """The Redis key of ``task_id``'s done marker (for callers that read it with other keys)."""
        return f"{self._prefix}:done:{task_id}"

    def _key(self, task_id: str) -> str:
        return self.key(task_id)

    def mark(self, task_id: str, ttl_seconds: int) -> None:
        """Record that ``task_id``'s outcome was handled.

        Raises:
            CoordinationError: Redis is down; an adopter could handle the outcome a second time.
        """
        with redis_errors("marking a task done"):
            self._client.set(self._key(task_id), "1", ex=ttl_seconds)

    def mark_all(
        self, task_ids: Sequence[str], ttl_seconds: int, outcome: tuple[str, bytes] | None = None
    ) -> None:
        """Record that the outcome of every one of ``task_ids`` was handled (one round trip), and,
        with ``outcome`` (deploymentId, encoded status event), that event as the deployment's last
        outcome (:meth:`last_outcome`).

        Raises:
            CoordinationError: Redis is down.
        """
        self.mark_many([(task_ids, outcome)], ttl_seconds)

    def mark_many(
        self,
        entries: Sequence[tuple[Sequence[str], tuple[str, bytes] | None]],
        ttl_seconds: int,
    ) -> None:
        """:meth:`mark_all` of each ``(task_ids, outcome)`` entry, all in one round trip.

        Raises:
            CoordinationError: Redis is down.
        """
        if not entries:
            return
        with redis_errors("marking tasks done"):
            pipe = self._client.pipeline(transaction=False)
            for task_ids, outcome in entries:
                for task_id in task_ids:
                    pipe.set(self._key(task_id), "1", ex=ttl_seconds)
                if outcome is not None:
                    pipe.set(self._key(outcome_key(outcome[0])), outcome[1], ex=ttl_seconds)
            pipe.execute()

    def last_outcome(self, deployment_id: str) -> bytes | None:
        """The last outcome event recorded for ``deployment_id`` (encoded), or None.

        Raises:
            CoordinationError: Redis is down.
        """
        with redis_errors("reading a job's last outcome"):
            value = self._client.get(self._key(outcome_key(deployment_id)))
        if value is None:
            return None
        return value if isinstance(value, bytes) else value.encode()

    def done(self, task_ids: Sequence[str]) -> set[str]:
        """The ones of ``task_ids`` already handled (one round trip).

        Raises:
            CoordinationError: Redis is down.
        """
        if not task_ids:
            return set()
        with redis_errors("reading done markers"):
            values = self._client.mget([self._key(t) for t in task_ids])
        return {task_id for task_id, value in zip(task_ids, values, strict=True) if value is not None}
