"""Concurrency slots: how many jobs run at once, per process and across all orchestrator processes.

A job takes a slot before it is launched and gives it back on its terminal state. Slots are keyed by
deployment id, so taking one twice for the same deployment (a redelivery) never takes a second slot,
and giving one back twice is seen (the second :meth:`SlotPool.release` returns False) without freeing
anybody else's.

- :class:`LocalSlots`: ``limits.max_concurrent`` per process, pure logic, no I/O.
- :class:`GlobalSlots`: ``limits.global_max_concurrent`` across every process sharing the Redis, as
  leases that the holder renews while it lives, so a crashed process's slots free themselves after
  ``limits.lease_seconds``.
- :class:`CombinedSlots`: both, which is what :func:`make_slot_pool` builds when the global limit is on.

All three are thread-safe (the RateLimiter actor calls them; GlobalSlots also renews from a thread).
"""

from __future__ import annotations

import logging
import threading
from typing import Final, Protocol

from orchestrator.config import Config
from orchestrator.coordination import (
    RENEWALS_PER_LEASE,
    ConnectivityCallback,
    ConnectivityReporter,
    Periodic,
    RedisClient,
    redis_errors,
    reply_text,
)
from orchestrator.errors import CoordinationError
from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)


class SlotPool(Protocol):
    """What the RateLimiter uses, whichever limits are configured."""

    def try_acquire(self, deployment_id: str) -> bool:
        """Take a slot for ``deployment_id`` if one is free; True if it holds one now (idempotent)."""
        ...

    def release(self, deployment_id: str) -> bool:
        """Give back ``deployment_id``'s slot; True if it was held, False if not (nothing freed)."""
        ...

    def release_all(self) -> int:
        """Give back every slot this process holds (drain); returns how many it held."""
        ...

    def held(self) -> int:
        """How many slots this process holds."""
        ...

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a slot in this process."""
        ...

    def close(self) -> None:
        """Stop background work; slots still held are not given back (see :meth:`release_all`)."""
        ...


class LocalSlots:
    """``limit`` slots in this process. Pure logic, thread-safe, no I/O.

    Args:
        limit: how many deployments may hold a slot at once (``limits.max_concurrent``).
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be greater than 0 (got {limit})")
        self.limit = limit
        self._lock = threading.Lock()
        self._holders: set[str] = set()

    def try_acquire(self, deployment_id: str) -> bool:
        """Take a slot; True if ``deployment_id`` holds one now (already holding counts: no 2nd slot)."""
        with self._lock:
            if deployment_id in self._holders:
                return True
            if len(self._holders) >= self.limit:
                return False
            self._holders.add(deployment_id)
            return True

    def release(self, deployment_id: str) -> bool:
        """Give back the slot; False (and nothing freed) if ``deployment_id`` did not hold one."""
        with self._lock:
            if deployment_id not in self._holders:
                return False
            self._holders.remove(deployment_id)
            return True

    def release_all(self) -> int:
        """Give back every slot; returns how many were held."""
        with self._lock:
            count = len(self._holders)
            self._holders.clear()
            return count

    def held(self) -> int:
        """How many slots are held."""
        with self._lock:
            return len(self._holders)

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a slot."""
        with self._lock:
            return frozenset(self._holders)

    def close(self) -> None:
        """Nothing to stop: local slots have no background work."""


# Every script takes its time from the Redis server, so processes on hosts with skewed clocks agree.
# The keys themselves expire with their latest lease, so an idle prefix leaves nothing behind;
# keep_for only lengthens a key's TTL, so a process configured with a shorter lease cannot cut
# another's leases short.
_NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep_for(ms)
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
  end
end
"""

# KEYS: slots zset (member -> lease expiry ms), owners hash (member -> instance id).
# ARGV: member, owner, limit, lease ms. Returns 1 when the member holds a slot now, else 0.
_ACQUIRE: Final = (
    _NOW_MS
    + """
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
local lease = tonumber(ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  keep_for(lease)
  return 1
end
return 0
"""
)

# KEYS: as above. ARGV: owner, lease ms, members... Extends the leases of the members this owner still
# holds (present and owned, even if just past expiry: nobody has purged it, so nobody took its place).
# Returns the members it no longer holds (purged after expiry, or taken over by another process).
_RENEW: Final = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[2])
local lost = {}
local renewed = false
for i = 3, #ARGV do
  local member = ARGV[i]
  if redis.call('HGET', KEYS[2], member) == ARGV[1] and redis.call('ZSCORE', KEYS[1], member) then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, member)
    renewed = true
  else
    table.insert(lost, member)
  end
end
if renewed then keep_for(lease) end
return lost
"""
)

# KEYS: as above. ARGV: owner, members... Removes the members this owner holds; returns how many.
_RELEASE: Final = """
local released = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    released = released + 1
  end
end
return released
"""

# KEYS: as above. Returns member, owner, member, owner... for the live leases.
_LIVE: Final = (
    _NOW_MS
    + """
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  table.insert(out, member)
  table.insert(out, redis.call('HGET', KEYS[2], member) or '')
end
return out
"""
)


class GlobalSlots:
    """``limit`` slots shared by every orchestrator process using the same Redis and key prefix.

    A slot is a lease: member ``<deploymentId>`` of the sorted set ``{prefix}:slots`` scored with its
    expiry (epoch ms, Redis server time), and its owner's instance id in the hash
    ``{prefix}:slots:owners``. Acquiring is one Lua script (drop expired leases; refresh the member if
    it is already there, taking it over if another process held it; else add it while fewer than
    ``limit`` are held). A daemon thread renews all of this process's leases in one script call every
    ``lease_seconds / 3``, so when the process dies its slots free themselves after ``lease_seconds``.

    Redis down: :meth:`try_acquire` returns False (the job waits for a slot and nothing is dropped),
    :meth:`release` forgets the slot locally and lets its lease expire; neither raises. Every change of
    reachability goes to ``on_connectivity(ok, detail)`` once.

    Args:
        client: a redis-py client with socket timeouts (see
            :func:`orchestrator.coordination.connect_redis`).
        prefix: the key prefix (``redis.key_prefix``).
        instance_id: this process's id, the owner of its leases.
        limit: how many slots exist across all processes (``limits.global_max_concurrent``).
        lease_seconds: how long a lease lives without renewal (``limits.lease_seconds``).
        on_connectivity: told ``(False, reason)`` when Redis fails, ``(True, "")`` when it works again.
        renew_in_background: start the renewal thread (tests of one renewal call :meth:`renew`).
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        instance_id: str,
        limit: int,
        lease_seconds: float,
        *,
        on_connectivity: ConnectivityCallback | None = None,
        renew_in_background: bool = True,
    ) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be greater than 0 (got {limit})")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be greater than 0 (got {lease_seconds})")
        self.limit = limit
        self.instance_id = instance_id
        self._keys = [f"{prefix}:slots", f"{prefix}:slots:owners"]
        self._lease_ms = round(lease_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._live = client.register_script(_LIVE)
        self._connectivity = ConnectivityReporter("global slots", on_connectivity)
        # One Redis operation at a time, so a renewal never races a release of the same lease; the
        # state lock alone guards the local set and is never held across a Redis call.
        self._redis_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._mine: set[str] = set()
        self._renewer = Periodic(f"slot-leases-{instance_id}", lease_seconds / RENEWALS_PER_LEASE, self.renew)
        if renew_in_background:
            self._renewer.start()

    def try_acquire(self, deployment_id: str) -> bool:
        """Take a global slot for ``deployment_id``, or refresh the one it holds.

        Returns:
            True if it holds a slot now; False if all ``limit`` are taken, or Redis is down.
        """
        with self._redis_lock:
            try:
                with redis_errors("acquiring a global slot"):
                    got = self._acquire(
                        keys=self._keys, args=[deployment_id, self.instance_id, self.limit, self._lease_ms]
                    )
            except CoordinationError as e:
                self._connectivity.report(False, str(e))
                return False
            self._connectivity.report(True)
            if got:
                with self._state_lock:
                    self._mine.add(deployment_id)
        return bool(got)

    def release(self, deployment_id: str) -> bool:
        """Give back ``deployment_id``'s slot.

        Returns:
            True if this process held it. False if it did not (a double release, or the lease was lost
            to expiry or taken over by another process): nothing is freed then. Redis down: the slot is
            forgotten here and its lease expires within ``lease_seconds``; True if it was held.
        """
        with self._redis_lock:
            with self._state_lock:
                was_mine = deployment_id in self._mine
                self._mine.discard(deployment_id)
            if not was_mine:
                return False
            return self._release_in_redis([deployment_id]) > 0

    def release_all(self) -> int:
        """Give back every slot this process holds, in one script call (for a drain).

        Returns:
            How many slots this process held. Redis down: they are forgotten and expire on their own.
        """
        with self._redis_lock:
            with self._state_lock:
                members = sorted(self._mine)
                self._mine.clear()
            if members:
                self._release_in_redis(members)
            return len(members)

    def _release_in_redis(self, members: list[str]) -> int:
        """Remove ``members`` owned by us; returns how many were held (all of them if Redis is down)."""
        try:
            with redis_errors("releasing global slots"):
                released = int(self._release(keys=self._keys, args=[self.instance_id, *members]))
        except CoordinationError as e:
            self._connectivity.report(False, str(e))
            log.warning(
                "%d global slot(s) not released (%s); their leases expire within %g s",
                len(members),
                e,
                self._lease_ms / 1000,
                extra=emoji(WARNING),
            )
            return len(members)
        self._connectivity.report(True)
        if released < len(members):
            log.warning(
                "%d global slot lease(s) had already been lost when released",
                len(members) - released,
                extra=emoji(WARNING),
            )
        return released

    def renew(self) -> frozenset[str]:
        """Extend the leases of every slot this process holds, in one script call.

        The renewal thread calls this every ``lease_seconds / 3``.

        Returns:
            The deployment ids whose lease was lost (expired and purged, or taken over by another
            process); they are no longer counted here. Redis down: empty (reported, never raised).
        """
        with self._redis_lock:
            with self._state_lock:
                members = sorted(self._mine)
            if not members:
                return frozenset()
            try:
                with redis_errors("renewing global slot leases"):
                    lost_replies = self._renew(
                        keys=self._keys, args=[self.instance_id, self._lease_ms, *members]
                    )
            except CoordinationError as e:
                self._connectivity.report(False, str(e))
                return frozenset()
            self._connectivity.report(True)
            lost = frozenset(reply_text(m) for m in lost_replies)
            if lost:
                with self._state_lock:
                    self._mine -= lost
                log.warning(
                    "lost %d global slot lease(s) (expired or taken over): %s",
                    len(lost),
                    ", ".join(sorted(lost)),
                    extra=emoji(WARNING),
                )
            return lost

    def held(self) -> int:
        """How many global slots this process holds (no Redis call, so the same when Redis is down)."""
        with self._state_lock:
            return len(self._mine)

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a global slot in this process (no Redis call: works when down)."""
        with self._state_lock:
            return frozenset(self._mine)

    def global_holders(self) -> dict[str, str]:
        """Every live lease across all processes, as ``{deploymentId: owner instance id}``.

        Raises:
            CoordinationError: Redis is down.
        """
        with redis_errors("listing global slots"):
            flat = [reply_text(v) for v in self._live(keys=self._keys)]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def close(self) -> None:
        """Stop renewing. Leases still held are not released: they expire after ``lease_seconds``
        (call :meth:`release_all` first for a clean drain). No Redis call, so Redis down changes nothing.
        """
        self._renewer.stop()


class CombinedSlots:
    """A local and a global limit together: a job needs a slot in both.

    The local slot is taken first (no Redis call when this process is full); if the global pool refuses,
    a local slot taken by this call is given back.
    """

    def __init__(self, local: LocalSlots, global_slots: GlobalSlots) -> None:
        self.local = local
        self.global_slots = global_slots
        self._lock = threading.Lock()

    def try_acquire(self, deployment_id: str) -> bool:
        """Take a local then a global slot; True if ``deployment_id`` holds both now.

        Redis down: False (the global slot cannot be had), with no local slot left behind.
        """
        with self._lock:
            newly_local = deployment_id not in self.local.holders()
            if not self.local.try_acquire(deployment_id):
                return False
            if self.global_slots.try_acquire(deployment_id):
                return True
            if newly_local:
                self.local.release(deployment_id)
            return False

    def release(self, deployment_id: str) -> bool:
        """Give back both slots; True if this process held either.

        Redis down: the global lease is left to expire (see :meth:`GlobalSlots.release`).
        """
        with self._lock:
            local = self.local.release(deployment_id)
            global_ = self.global_slots.release(deployment_id)
            return local or global_

    def release_all(self) -> int:
        """Give back every slot (drain); returns how many deployments held one here.

        Redis down: the global leases are left to expire (see :meth:`GlobalSlots.release_all`).
        """
        with self._lock:
            held = self.local.holders() | self.global_slots.holders()
            self.local.release_all()
            self.global_slots.release_all()
            return len(held)

    def held(self) -> int:
        """How many deployments hold a slot in this process (no Redis call)."""
        return self.local.held()

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a slot in this process (no Redis call)."""
        return self.local.holders()

    def close(self) -> None:
        """Stop renewing the global leases (they then expire; see :meth:`GlobalSlots.close`).

        No Redis call.
        """
        self.global_slots.close()


def make_slot_pool(
    config: Config,
    instance_id: str,
    redis_client: RedisClient | None,
    on_connectivity: ConnectivityCallback | None = None,
) -> SlotPool:
    """The slot pool ``config`` asks for.

    ``limits.global_max_concurrent`` off: :class:`LocalSlots` of ``limits.max_concurrent`` (Redis is
    not used, ``redis_client`` may be None). On: :class:`CombinedSlots` of that and
    :class:`GlobalSlots` under ``redis.key_prefix`` with ``limits.lease_seconds`` leases. Makes no
    Redis call itself, so Redis being down does not stop the pool from being built.

    Raises:
        ValueError: the global limit is on and ``redis_client`` is None.
    """
    local = LocalSlots(config.limits.max_concurrent)
    global_limit = config.limits.global_max_concurrent
    if global_limit is None:
        return local
    if redis_client is None:
        raise ValueError("limits.global_max_concurrent is set, so a Redis client is needed")
    global_slots = GlobalSlots(
        redis_client,
        config.redis.key_prefix,
        instance_id,
        global_limit,
        config.limits.lease_seconds,
        on_connectivity=on_connectivity,
    )
    return CombinedSlots(local, global_slots)
