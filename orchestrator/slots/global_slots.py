"""Global concurrency slots: ``limits.global_max_concurrent`` across every process sharing the Redis.

A slot is a lease the holder renews while it lives, so a crashed process's slots free themselves after
``limits.lease_seconds``. The decisions are Lua scripts run by Redis (its clock, one atomic step each),
so processes on hosts with skewed clocks agree; :class:`GlobalSlots` is their thread-safe client.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Final

from orchestrator.coordination import (
    RENEWALS_PER_LEASE,
    ConnectivityCallback,
    ConnectivityReporter,
    Periodic,
    RedisClient,
    redis_errors,
    renewed_lately,
    reply_text,
)
from orchestrator.errors import CoordinationError
from orchestrator.logs import WARNING, emoji

log = logging.getLogger(__name__)

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

# Redis that lost its keys (a restart without persistence) looks empty while workers still run: the
# ledger key (one small key per prefix, kept for good) is missing. Then slots are handed out only after
# a grace period (ARGV names the grace key and its length), in which every holder's renewal puts back
# the leases of its running workers. The ledger and grace keys are passed in ARGV, not KEYS, so that
# keep_for never gives them a TTL or lengthens the grace.
_LEDGER: Final = """
local function ledger_ok(ledger, grace, grace_ms, lease)
  if redis.call('EXISTS', ledger) == 0 and grace_ms > 0 then
    redis.call('SET', grace, '1', 'PX', grace_ms)
  end
  redis.call('SET', ledger, '1')
  return redis.call('EXISTS', grace) == 0
end
"""

# KEYS: slots zset (member -> lease expiry ms), owners hash (member -> instance id).
# ARGV: member, owner, limit, lease ms, ledger key, grace key, grace ms. Returns 1 when the member
# holds a slot of this owner now, 2 when another live process holds its slot (its lease has not
# expired), else 0 (all taken, or Redis lost its keys less than a grace period ago).
_ACQUIRE: Final = (
    _NOW_MS
    + _LEDGER
    + """
local settled = ledger_ok(ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[4]))
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
local lease = tonumber(ARGV[4])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local owner = redis.call('HGET', KEYS[2], ARGV[1])
  if owner and owner ~= ARGV[2] then
    return 2
  end
end
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if held or (settled and redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3])) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  keep_for(lease)
  return 1
end
return 0
"""
)

# KEYS: as above. ARGV: owner, lease ms, ledger key, grace key, grace ms, members... Extends the leases
# of the members this owner still holds (present and owned, even if just past expiry: nobody has purged
# it, so nobody took its place), and, in the grace after Redis lost its keys, puts back those that
# vanished with no owner.
# Returns the members it no longer holds (purged after expiry, or taken over by another process).
_RENEW: Final = (
    _NOW_MS
    + _LEDGER
    + """
local lease = tonumber(ARGV[2])
local restarted = not ledger_ok(ARGV[3], ARGV[4], tonumber(ARGV[5]), lease)
local lost = {}
local renewed = false
for i = 6, #ARGV do
  local member = ARGV[i]
  local owner = redis.call('HGET', KEYS[2], member)
  if owner == ARGV[1] and redis.call('ZSCORE', KEYS[1], member) then
    redis.call('ZADD', KEYS[1], 'XX', now + lease, member)
    renewed = true
  elseif restarted and not owner and not redis.call('ZSCORE', KEYS[1], member) then
    -- Redis lost its keys (we are in the grace that follows) and our worker still runs: put it back
    redis.call('ZADD', KEYS[1], now + lease, member)
    redis.call('HSET', KEYS[2], member, ARGV[1])
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


#: After Redis lost its keys, no new global slot for this many leases: holders put theirs back first
#: (they renew every third of a lease).
RESTART_GRACE_LEASES: Final = 0.5
#: :class:`GlobalSlots` acquire's answer when another live process holds the deployment's slot.
HELD_ELSEWHERE: Final = 2


class GlobalSlots:
    """``limit`` slots shared by every orchestrator process using the same Redis and key prefix.

    A slot is a lease: member ``<deploymentId>`` of the sorted set ``{prefix}:slots`` scored with its
    expiry (epoch ms, Redis server time), and its owner's instance id in the hash
    ``{prefix}:slots:owners``. Acquiring is one Lua script (drop expired leases; refresh the member if
    this process holds it; when another process holds a live lease on it, answer that the deployment
    is counted already, without taking it over; else add it while fewer than ``limit`` are held). A
    daemon thread renews all of this process's leases in one script call every ``lease_seconds / 3``,
    so when the process dies its slots free themselves after ``lease_seconds``.

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
        restart_grace_seconds: after Redis lost its keys (or on a fresh Redis), no new slot is handed
            out for this long, so that every holder's renewal first puts back the leases of workers
            still running (0: none; :func:`make_slot_pool` uses half a lease).
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
        restart_grace_seconds: float = 0.0,
    ) -> None:
        if limit <= 0:
            raise ValueError(f"limit must be greater than 0 (got {limit})")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be greater than 0 (got {lease_seconds})")
        self.limit = limit
        self.instance_id = instance_id
        self._keys = [f"{prefix}:slots", f"{prefix}:slots:owners"]
        grace_ms = round(restart_grace_seconds * 1000)
        self._ledger = [f"{prefix}:slots:ledger", f"{prefix}:slots:grace", grace_ms]
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
        #: ``time.monotonic()`` when a renewal last started (None: none yet, or no renewal thread).
        self._renewal_started: float | None = None
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
                        keys=self._keys,
                        args=[deployment_id, self.instance_id, self.limit, self._lease_ms, *self._ledger],
                    )
            except CoordinationError as e:
                self._connectivity.report(False, str(e))
                return False
            self._connectivity.report(True)
            if got == HELD_ELSEWHERE:
                # A redelivery of a job another live process launched: its slot is counted there, and
                # taking it over would leave that process's task running without one.
                return True
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
        started = time.monotonic()
        with self._redis_lock:
            with self._state_lock:
                members = sorted(self._mine)
            if not members:
                self._renewal_started = started
                return frozenset()
            try:
                with redis_errors("renewing global slot leases"):
                    lost_replies = self._renew(
                        keys=self._keys, args=[self.instance_id, self._lease_ms, *self._ledger, *members]
                    )
            except CoordinationError as e:
                self._connectivity.report(False, str(e))
                return frozenset()
            self._connectivity.report(True)
            lost = frozenset(reply_text(m) for m in lost_replies)
            with self._state_lock:
                self._mine -= lost
                # Only now: until the lost leases are out of ``_mine``, a stalled process is not fresh.
                self._renewal_started = started
            if lost:
                log.warning(
                    "lost %d global slot lease(s) (expired or taken over): %s",
                    len(lost),
                    ", ".join(sorted(lost)),
                    extra=emoji(WARNING),
                )
            return lost

    def holds_surely(self, deployment_id: str) -> bool:
        """Whether ``deployment_id``'s slot is this process's for sure: it holds the lease and the
        leases are :meth:`fresh` (a renewal after a stall removes the leases lost meanwhile first)."""
        with self._state_lock:
            held = deployment_id in self._mine
        return held and self.fresh()

    def fresh(self) -> bool:
        """Whether this process's leases can be counted on now: False when no renewal has reached
        Redis for most of a lease — the process stalled (SIGSTOP, a frozen VM) or Redis was away,
        its leases may have expired, and other processes may have taken the slots. A launch that
        waited through that must not start (it would run beyond the global limit)."""
        started = self._renewal_started
        return started is None or renewed_lately(started, self._lease_ms)

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
        (the tasks holding them run on after a drain). No Redis call, so Redis down changes nothing.
        """
        self._renewer.stop()
