"""Cross-process coordination through Redis: instance liveness, adoption claims, stop and launch markers.

Every orchestrator process holds a liveness lease (:class:`InstanceRegistry`); a live process adopts the
tasks of an instance whose lease expired, and :meth:`InstanceRegistry.claim_orphan` makes sure exactly
one process adopts each of them; :meth:`InstanceRegistry.claim` is also the create-if-absent guard
against launching one (deployment, attempt) twice. :class:`StopMarkers` let a ``stop`` cancel a retry
waiting in a delay queue whichever process consumes it; :class:`PendingRetries` and
:class:`DoneMarkers` tell a stop, and an adopter, what already happened to a job.

These are plain, thread-safe classes over redis-py; the actors wrap them. Every key lives under the
configured prefix (``redis.key_prefix``). Times that several processes compare (lease expiries) are
taken from the Redis server's clock inside Lua scripts, so clock skew between hosts does not matter.
redis-py errors are translated into :class:`~orchestrator.errors.CoordinationError` here; each method
says what it does when Redis is down.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Literal, TypeAlias

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import __version__
from orchestrator.config import RedisConfig
from orchestrator.errors import CoordinationError
from orchestrator.logs import SUCCESS, WARNING, emoji
from orchestrator.redaction import redact_text

log = logging.getLogger(__name__)

#: A redis-py client, with or without ``decode_responses``.
RedisClient: TypeAlias = "redis.Redis[Any]"
#: ``on_connectivity(ok, detail)``: called when Redis becomes reachable or unreachable.
ConnectivityCallback: TypeAlias = Callable[[bool, str], None]

#: Leases are renewed this many times per lease period, so one missed renewal does not lose them.
RENEWALS_PER_LEASE: Final = 3
#: How long ``stop()``/``close()`` wait for a background renewal thread to finish its current call.
THREAD_JOIN_SECONDS: Final = 5.0
#: Adoption claims outlive any task: a claim is taken over early only when its holder is dead.
DEFAULT_ADOPT_CLAIM_SECONDS: Final = 7 * 24 * 3600
#: One immediate retry covers a pooled connection that a Redis restart closed; more would only hold
#: the calling actor up while Redis is really down.
REDIS_RETRIES: Final = 1

#: ECS tag values allow letters, digits, spaces and ``_ . : / = + - @``; instance ids are tag values.
_NOT_TAG_SAFE: Final = re.compile(r"[^A-Za-z0-9_.:/=+@-]")
_HOSTNAME_MAX: Final = 200


def connect_redis(config: RedisConfig) -> RedisClient:
    """A redis-py client for ``config.url`` whose every call is bounded by ``socket_timeout_seconds``.

    Nothing is sent until the first command, so this never fails because Redis is down.

    Raises:
        CoordinationError: the URL cannot be used by redis-py.
    """
    timeout = config.socket_timeout_seconds
    try:
        return redis.Redis.from_url(
            config.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), REDIS_RETRIES),
        )
    except ValueError as e:
        raise CoordinationError(f"redis.url cannot be used: {redact_text(str(e))}") from None


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Translate redis-py errors raised inside the block into :class:`CoordinationError`.

    Args:
        action: what was being done, for the message (e.g. ``"acquiring a slot"``).
    """
    try:
        yield
    except redis.RedisError as e:
        raise CoordinationError(
            f"Redis failed while {action}: {redact_text(str(e)) or type(e).__name__}"
        ) from e


def reply_text(value: bytes | str) -> str:
    """A Redis reply as ``str``, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def instance_id() -> str:
    """A new id for this orchestrator process: ``<hostname>-<pid>-<6 random hex>``.

    Safe as an ECS tag value and in Redis keys.
    """
    host = _NOT_TAG_SAFE.sub("-", socket.gethostname())[:_HOSTNAME_MAX] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class ConnectivityReporter:
    """Reports Redis reachability to a callback and the log, once per change (not once per call).

    Thread-safe. A failing callback is logged and otherwise ignored: reporting never breaks the caller.
    """

    def __init__(self, what: str, callback: ConnectivityCallback | None = None) -> None:
        self._what = what
        self._callback = callback
        self._lock = threading.Lock()
        self._ok: bool | None = None

    @property
    def ok(self) -> bool | None:
        """The last state seen: True reachable, False not, None nothing tried yet."""
        return self._ok

    def report(self, ok: bool, detail: str = "") -> None:
        """Record the outcome of one Redis call; the callback hears only about changes."""
        with self._lock:
            changed = ok != self._ok
            self._ok = ok
        if not changed:
            return
        if ok:
            log.info("%s: Redis reachable", self._what, extra=emoji(SUCCESS))
        else:
            log.warning("%s: Redis unreachable: %s", self._what, detail, extra=emoji(WARNING))
        if self._callback is not None:
            try:
                self._callback(ok, detail)
            except Exception:
                log.exception("%s: connectivity callback failed", self._what)


class Periodic:
    """Calls ``action`` every ``interval`` seconds in a daemon thread until :meth:`stop`.

    An exception from ``action`` is logged and the next round still happens.
    """

    def __init__(self, name: str, interval: float, action: Callable[[], object]) -> None:
        self._interval = interval
        self._action = action
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread (the first call happens one interval from now)."""
        self._thread.start()

    def stop(self, timeout: float = THREAD_JOIN_SECONDS) -> None:
        """Ask the thread to end and wait up to ``timeout`` seconds for its current call to return."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self._action()
            except Exception:
                log.exception("%s: periodic call failed", self._thread.name)


# --- instance liveness and adoption ------------------------------------------------------------------

# KEYS: instance key, index set. ARGV: instance id, info JSON, lease ms.
# Returns 1 when the previous lease was still live, 0 when it had lapsed (or this is the first beat).
_HEARTBEAT: Final = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if previous then return 1 end
return 0
"""

# KEYS: index set. ARGV: instance key prefix. Drops ids whose lease is gone; returns the live ones
# and the ones this call dropped (the caller is the one process that saw them go).
_ALIVE: Final = """
local live = {}
local gone = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then
    table.insert(live, id)
  else
    redis.call('SREM', KEYS[1], id)
    table.insert(gone, id)
  end
end
return {live, gone}
"""

# KEYS: claim key. ARGV: owner, ttl ms, instance key prefix.
# The first claimer wins; the same owner claiming again keeps it; a claim whose holder's liveness lease
# is gone is taken over (that adopter died too, so its orphans need a new adopter).
# Returns 0 (held by another live owner), 1 (claimed now, or taken over) or 2 (already this owner's).
_CLAIM_ORPHAN: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if holder == ARGV[1] then return 2 end
return 1
"""

# KEYS: claim key. ARGV: owner. Deletes the claim only when that owner holds it.
_RELEASE_CLAIM: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: What :meth:`InstanceRegistry.claim` found: claimed now (or taken over from a dead holder), already
#: held by the same owner, or held by another live owner.
Claim: TypeAlias = Literal["new", "mine", "other"]


class InstanceRegistry:
    """Liveness leases of orchestrator processes, and the one-adopter rule for a dead one's tasks.

    Each process keeps ``{prefix}:instance:<id>`` (a JSON description, with a TTL of ``lease_seconds``)
    alive from a heartbeat thread, and lists itself in the ``{prefix}:instances`` set. A process that
    dies stops beating, so its lease expires on its own after at most ``lease_seconds``.

    Args:
        client: a redis-py client (see :func:`connect_redis`).
        prefix: the key prefix (``redis.key_prefix``).
        instance_id: this process's id (see :func:`instance_id`).
        lease_seconds: how long a lease lives without a heartbeat (``limits.lease_seconds``).
        on_connectivity: told ``(False, reason)`` when a heartbeat fails, ``(True, "")`` when one works.
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        instance_id: str,
        lease_seconds: int,
        *,
        on_connectivity: ConnectivityCallback | None = None,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be greater than 0 (got {lease_seconds})")
        self.instance_id = instance_id
        self._client = client
        self._prefix = prefix
        self._lease_ms = lease_seconds * 1000
        self._key = self._instance_key(instance_id)
        self._index_key = f"{prefix}:instances"
        self._info = msgspec.json.encode(
            {
                "instance_id": instance_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": time.time(),
                "version": __version__,
            }
        )
        self._heartbeat_script = client.register_script(_HEARTBEAT)
        self._alive_script = client.register_script(_ALIVE)
        self._claim_script = client.register_script(_CLAIM_ORPHAN)
        self._release_claim_script = client.register_script(_RELEASE_CLAIM)
        self._connectivity = ConnectivityReporter(f"instance lease {instance_id}", on_connectivity)
        self._registered = False
        self._heart = Periodic(f"lease-{instance_id}", lease_seconds / RENEWALS_PER_LEASE, self.heartbeat)

    def _instance_key(self, instance_id: str) -> str:
        return f"{self._prefix}:instance:{instance_id}"

    def start(self) -> None:
        """Take the lease now and keep renewing it from a daemon thread.

        Redis down: does not raise; the failure goes to ``on_connectivity`` and the log, and the thread
        keeps trying every ``lease_seconds / 3``. Meanwhile other processes see this one as dead.
        """
        self.heartbeat()
        self._heart.start()

    def heartbeat(self) -> bool:
        """Renew the lease once (the heartbeat thread calls this).

        Returns:
            True when the lease was renewed. Redis down: False (reported, never raised).
        """
        try:
            with redis_errors("renewing the instance lease"):
                previous = self._heartbeat_script(
                    keys=[self._key, self._index_key], args=[self.instance_id, self._info, self._lease_ms]
                )
        except CoordinationError as e:
            self._connectivity.report(False, str(e))
            return False
        self._connectivity.report(True)
        if self._registered and not previous:
            log.warning(
                "instance lease %s had expired before this heartbeat: other processes may have adopted "
                "this process's tasks",
                self.instance_id,
                extra=emoji(WARNING),
            )
        self._registered = True
        return True

    def stop(self) -> None:
        """Stop the heartbeat and delete this process's lease (a clean shutdown: nothing to adopt).

        Redis down: does not raise; the lease then expires on its own within ``lease_seconds``.
        """
        self._heart.stop()
        try:
            with redis_errors("deleting the instance lease"):
                pipe = self._client.pipeline(transaction=True)
                pipe.delete(self._key)
                pipe.srem(self._index_key, self.instance_id)
                pipe.execute()
        except CoordinationError as e:
            log.warning("%s; the lease will expire on its own", e, extra=emoji(WARNING))

    def alive(self) -> set[str]:
        """The ids of the instances whose lease is live (this one included once started).

        Raises:
            CoordinationError: Redis is down (do not adopt anything on a guess).
        """
        return self.alive_and_gone()[0]

    def alive_and_gone(self) -> tuple[set[str], set[str]]:
        """The live instances, and the ones whose lease this call found expired.

        Exactly one caller sees an expired instance as gone (it is dropped from the index then), so
        that caller is the one to look for its orphaned tasks; an instance that died before any other
        process ever saw it alive is found this way too.

        Raises:
            CoordinationError: Redis is down (do not adopt anything on a guess).
        """
        with redis_errors("listing live instances"):
            live, gone = self._alive_script(keys=[self._index_key], args=[self._instance_key("")])
        return {reply_text(i) for i in live}, {reply_text(i) for i in gone}

    def is_alive(self, instance_id: str) -> bool:
        """Whether ``instance_id`` holds a live lease.

        Raises:
            CoordinationError: Redis is down (do not adopt anything on a guess).
        """
        with redis_errors("checking an instance lease"):
            return bool(self._client.exists(self._instance_key(instance_id)))

    def claim_orphan(self, task_key: str, owner: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS) -> bool:
        """Claim the adoption of one task of a dead instance; exactly one claimer wins.

        ``{prefix}:adopt:<task_key>`` is set to ``owner`` if absent (one atomic script). The owner that
        already holds the claim gets True again, so a retried call is harmless. A claim whose holder's
        own lease has expired (the adopter died as well) is taken over, which is why ``owner`` should be
        the claiming process's instance id.

        Args:
            task_key: identifies the task, e.g. its ARN or ``<deploymentId>:<attempt>``.
            owner: the instance id of the claiming process.
            ttl_seconds: how long the claim is kept (longer than the task can live).

        Returns:
            True for the winner only.

        Raises:
            CoordinationError: Redis is down (nobody adopts; try again on the next reconciliation).
        """
        return self.claim(task_key, owner, ttl_seconds) != "other"

    def claim(self, task_key: str, owner: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS) -> Claim:
        """Like :meth:`claim_orphan`, saying whether the claim is new or was already ``owner``'s.

        Raises:
            CoordinationError: Redis is down.
        """
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be greater than 0 (got {ttl_seconds})")
        with redis_errors("claiming"):
            answer = self._claim_script(
                keys=[f"{self._prefix}:adopt:{task_key}"],
                args=[owner, ttl_seconds * 1000, self._instance_key("")],
            )
        claims: tuple[Claim, Claim, Claim] = ("other", "new", "mine")
        return claims[int(answer)]

    def release_claim(self, task_key: str, owner: str) -> None:
        """Give up ``owner``'s claim on ``task_key`` (a launch that failed: the next try claims anew).

        Raises:
            CoordinationError: Redis is down (the claim stays until its TTL; the same owner can reclaim).
        """
        with redis_errors("releasing a claim"):
            self._release_claim_script(keys=[f"{self._prefix}:adopt:{task_key}"], args=[owner])


# --- stop markers ---------------------------------------------------------------------------------


class StopMarkers:
    """Cancellation markers: a ``stop`` cancels a retry still waiting in a delay queue.

    The retry comes back through ``execute.queue`` to any process; every process checks the marker
    ``{prefix}:stop:<deploymentId>`` before launching it.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

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

    def _key(self, deployment_id: str) -> str:
        return f"{self._prefix}:retry:{deployment_id}"

    def waiting(self, deployment_id: str, job_type: str, attempt: int, ttl_seconds: int) -> None:
        """Record that attempt ``attempt`` failed and its retry is waiting.

        Raises:
            CoordinationError: Redis is down; a stop arriving meanwhile will say there is nothing to stop.
        """
        with redis_errors("recording a pending retry"):
            self._client.set(self._key(deployment_id), f"{job_type} {attempt}", ex=max(1, ttl_seconds))

    def take(self, deployment_id: str) -> tuple[str, int] | None:
        """Remove and return ``(type, failed attempt)`` of the deployment's waiting retry, if any.

        Raises:
            CoordinationError: Redis is down.
        """
        with redis_errors("reading a pending retry"):
            value = self._client.getdel(self._key(deployment_id))
        if value is None:
            return None
        job_type, _, attempt = reply_text(value).partition(" ")
        return (job_type, int(attempt)) if attempt.isdigit() else None


class DoneMarkers:
    """Tasks whose outcome was already published, so that no adopter publishes (or retries) it again.

    ECS lists a stopped task for about an hour; an adopter that finds one must know whether its owner
    handled it before dying. ``{prefix}:done:<task id>`` says so, for ``ttl_seconds``.
    """

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}:done:{task_id}"

    def mark(self, task_id: str, ttl_seconds: int) -> None:
        """Record that ``task_id``'s outcome was handled.

        Raises:
            CoordinationError: Redis is down; an adopter could handle the outcome a second time.
        """
        with redis_errors("marking a task done"):
            self._client.set(self._key(task_id), "1", ex=ttl_seconds)

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
