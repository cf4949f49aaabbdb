"""Liveness leases of orchestrator processes, and who takes over a dead one's tasks.

Every orchestrator process holds a liveness lease (:class:`InstanceRegistry`), renewed from a daemon
thread; a live process adopts the tasks of an instance whose lease expired, and the registry's claims
(:mod:`.claims`) make sure exactly one process adopts each of them, and that one (deployment, attempt)
is launched once. Lease expiries are compared on the Redis server's clock, inside Lua scripts, so clock
skew between hosts does not matter.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Final

import msgspec

from orchestrator import __version__
from orchestrator.coordination.claims import (
    DEFAULT_ADOPT_CLAIM_SECONDS,
    Claim,
    Claims,
    LaunchClaim,
    pick_owners,
)
from orchestrator.coordination.client import (
    ConnectivityCallback,
    ConnectivityReporter,
    RedisClient,
    redis_errors,
    reply_text,
)
from orchestrator.coordination.markers import DoneMarkers
from orchestrator.coordination.periodic import RENEWALS_PER_LEASE, Periodic, renewed_lately
from orchestrator.errors import CoordinationError
from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

#: ECS tag values allow letters, digits, spaces and ``_ . : / = + - @``; instance ids are tag values.
_NOT_TAG_SAFE: Final = re.compile(r"[^A-Za-z0-9_.:/=+@-]")
_HOSTNAME_MAX: Final = 200


def instance_id() -> str:
    """A new id for this orchestrator process: ``<hostname>-<pid>-<6 random hex>``.

    Safe as an ECS tag value and in Redis keys.
    """
    host = _NOT_TAG_SAFE.sub("-", socket.gethostname())[:_HOSTNAME_MAX] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


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
        #: The claims under the same prefix, taken over from holders whose lease here is gone.
        self.claims = Claims(client, prefix, self._instance_key(""))
        self._connectivity = ConnectivityReporter(f"instance lease {instance_id}", on_connectivity)
        self._registered = False
        #: When (``time.monotonic()``) the last heartbeat that reached Redis started.
        self._renewed: float | None = None
        #: When the heartbeat that began the lease's current unbroken run started (after a lapse, the
        #: one that found it lapsed): claims taken before then may be another process's now.
        self._unbroken_since: float | None = None
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
        started = time.monotonic()
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
        if not previous or self._unbroken_since is None:
            self._unbroken_since = started
        self._renewed = started
        self._registered = True
        return True

    def held_since(self) -> float | None:
        """Since when (``time.monotonic()``) this process has held its lease without a break, as far as
        it can know: None when no heartbeat has reached Redis for most of a lease (a stall such as
        SIGSTOP, or Redis away), when the lease may have lapsed and others may be adopting its tasks.

        A claim taken before this time may have been taken over (its holder looked dead): what this
        process was about to do under it must not go ahead.
        """
        renewed, since = self._renewed, self._unbroken_since
        if renewed is None or not renewed_lately(renewed, self._lease_ms):
            return None
        return since

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

    def handled_elsewhere(
        self, task_ids: Sequence[str], done: DoneMarkers, attempt_keys: Sequence[str]
    ) -> set[str]:
        """Which of ``task_ids`` another process has taken from this one: adopted (its orphan claim is
        another instance's) or finished (its done marker, or its attempt's, is set). One round trip.

        The fence of a process that was only slow: its lease lapsed, another process adopted its tasks
        and may have published their outcomes; this process must then not publish (or retry) them.

        Args:
            task_ids: the tasks this process is about to publish an outcome for.
            done: the done markers.
            attempt_keys: for each task, its attempt's done key (:func:`attempt_done_key`), same order.

        Raises:
            CoordinationError: Redis is down (the caller goes on: fencing is then best effort).
        """
        if not task_ids:
            return set()
        n = len(task_ids)
        claim_keys = [self.claims.key(t) for t in task_ids] + [self.claims.legacy_key(t) for t in task_ids]
        keys = claim_keys + [done.key(k) for k in [*task_ids, *attempt_keys]]
        with redis_errors("checking who owns the tasks"):
            values = self._client.mget(keys)
        owners = pick_owners(values[: 2 * n])
        task_done, attempt_done = values[2 * n : 3 * n], values[3 * n :]
        taken = set()
        for index, task_id in enumerate(task_ids):
            owner = owners[index]
            adopted = owner is not None and owner != self.instance_id
            if adopted or task_done[index] is not None or attempt_done[index] is not None:
                taken.add(task_id)
        return taken

    # --- claims (the rules and the scripts are in :class:`~.claims.Claims`) ----------------------

    def claim_orphan(self, task_key: str, owner: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS) -> bool:
        """Claim the adoption of one task of a dead instance; True for the one winner only.

        See :meth:`Claims.claim_orphan`.

        Raises:
            CoordinationError: Redis is down (nobody adopts; try again on the next reconciliation).
        """
        return self.claims.claim_orphan(task_key, owner, ttl_seconds)

    def claim(self, task_key: str, owner: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS) -> Claim:
        """Like :meth:`claim_orphan`, saying whether the claim is new or was already ``owner``'s.

        Raises:
            CoordinationError: Redis is down.
        """
        return self.claims.claim(task_key, owner, ttl_seconds)

    def claim_launch(
        self, task_key: str, owner: str, identity: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS
    ) -> LaunchClaim:
        """Like :meth:`claim`, and bind the claim to ``identity`` (the job it is for).

        See :meth:`Claims.claim_launch`.

        Raises:
            CoordinationError: Redis is down.
        """
        return self.claims.claim_launch(task_key, owner, identity, ttl_seconds)

    def release_claim(self, task_key: str, owner: str) -> None:
        """Give up ``owner``'s claim on ``task_key`` (a launch that failed: the next try claims anew).

        Raises:
            CoordinationError: Redis is down (the claim stays until its TTL; the same owner can reclaim).
        """
        self.claims.release_claim(task_key, owner)
