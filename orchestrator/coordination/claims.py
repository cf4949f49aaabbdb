"""Claims: create-if-absent keys that make exactly one process adopt a task, or launch an attempt.

``{prefix}:claim:<task_key>`` holds the claiming process's instance id (and, for a launch claim, the
job the claim is bound to). A claim whose holder's liveness lease (:mod:`.instances`) is gone is taken
over, so a claim never outlives the usefulness of its holder. Every decision is one Lua script, so two
processes racing for one key cannot both win.

**The legacy key.** Versions before this one kept claims under ``{prefix}:adopt:<task_key>`` (and
know no other key). So that old and new processes can share Redis during a rolling upgrade, this
version reads both keys (a value under either is the claim; another live holder under either keeps
it), writes both with the same value and TTL, and releases both: an old process racing a new one
for a task finds the new one's claim under the key it knows, and the new one finds the old one's.
The legacy key can be dropped (write and read ``claim:`` only) in a later version, deployed once
every process runs this one or a newer one *and* the longest claim TTL has passed since the last
older process stopped (:data:`DEFAULT_ADOPT_CLAIM_SECONDS`, seven days, for adoption claims; a claim
that only an old process wrote exists under the legacy key alone until it expires). Until then,
:data:`LEGACY_KEY_PART` must stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from orchestrator.coordination.client import RedisClient, redis_errors, reply_text

#: Adoption claims outlive any task: a claim is taken over early only when its holder is dead.
DEFAULT_ADOPT_CLAIM_SECONDS: Final = 7 * 24 * 3600
#: ``{prefix}:claim:<task_key>``: the key of a claim.
KEY_PART: Final = "claim"
#: ``{prefix}:adopt:<task_key>``: the key older versions keep claims under (see the module docstring).
LEGACY_KEY_PART: Final = "adopt"

# Every script below takes KEYS[1] = the claim's key and KEYS[2] = its legacy key (see the module
# docstring): a value under either key is the claim, and a claim is written, with the same value and
# TTL, and released under both, so a process that only knows the legacy key sees every claim made here.

# KEYS: claim key, legacy key. ARGV: owner, ttl ms, instance key prefix.
# The first claimer wins; the same owner claiming again keeps it; a claim whose holder's liveness lease
# is gone is taken over (that adopter died too, so its orphans need a new adopter). When the two keys
# name different holders (a process that only knows the legacy key took the claim over), another live
# holder under either key keeps it, and the owner holding either one gets "already this owner's".
# Returns 0 (held by another live owner), 1 (claimed now, or taken over) or 2 (already this owner's).
_CLAIM_ORPHAN: Final = """
local mine = false
for i = 1, 2 do
  local holder = redis.call('GET', KEYS[i])
  if holder then
    if holder == ARGV[1] then
      mine = true
    elseif redis.call('EXISTS', ARGV[3] .. holder) == 1 then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if mine then return 2 end
return 1
"""

# KEYS: claim key, legacy key. ARGV: owner, ttl ms, instance key prefix, identity.
# A launch claim's value is "<owner> <identity>": it binds (deploymentId, attempt) to one job. A claim
# bound to another identity (under either key) is a conflict whoever holds it, alive or dead (that job
# may have run); otherwise the rules of _CLAIM_ORPHAN apply. A claim without an identity (written
# before claims had one) binds nothing. The identity answered is the claim key's, else the legacy
# key's. Returns {0 other live owner | 1 new or taken over | 2 already this owner's | 3 another job's,
# the identity the claim is bound to}.
_CLAIM_LAUNCH: Final = """
local mine, other, bound = false, false, nil
for i = 1, 2 do
  local value = redis.call('GET', KEYS[i])
  if value then
    local holder, identity = value, ''
    local space = string.find(value, ' ', 1, true)
    if space then
      holder = string.sub(value, 1, space - 1)
      identity = string.sub(value, space + 1)
    end
    if identity ~= '' and identity ~= ARGV[4] then return {3, identity} end
    if bound == nil or bound == '' then bound = identity end
    if holder == ARGV[1] then
      mine = true
    elseif redis.call('EXISTS', ARGV[3] .. holder) == 1 then
      other = true
    end
  end
end
bound = bound or ''
if other then return {0, bound} end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[4], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[4], 'PX', ARGV[2])
if mine then return {2, bound} end
return {1, bound}
"""

# KEYS: claim key, legacy key. ARGV: owner. Deletes each of the two that this owner holds (with or
# without an identity after its name); returns how many it deleted.
_RELEASE_CLAIM: Final = """
local deleted = 0
for i = 1, 2 do
  local value = redis.call('GET', KEYS[i])
  if value and (value == ARGV[1] or string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
    deleted = deleted + redis.call('DEL', KEYS[i])
  end
end
return deleted
"""

#: What :meth:`Claims.claim` found: claimed now (or taken over from a dead holder), already
#: held by the same owner, or held by another live owner.
Claim: TypeAlias = Literal["new", "mine", "other"]


class LaunchClaim(msgspec.Struct, frozen=True):
    """What :meth:`Claims.claim_launch` found.

    ``state`` is a :data:`Claim`, or ``"conflict"`` when the claim is bound to another job; ``bound``
    is the identity the claim was bound to before this call (``""`` when it was new or had none).
    """

    state: Literal["new", "mine", "other", "conflict"]
    bound: str = ""


class Claims:
    """The claims under one key prefix; the backing of :class:`~.instances.InstanceRegistry`'s claims.

    Args:
        client: a redis-py client (see :func:`~.client.connect_redis`).
        prefix: the key prefix (``redis.key_prefix``).
        lease_key_prefix: what an instance id is appended to for its liveness lease's key (a claim
            whose holder has no lease there is taken over).
    """

    def __init__(self, client: RedisClient, prefix: str, lease_key_prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_key_prefix = lease_key_prefix
        self._claim_script = client.register_script(_CLAIM_ORPHAN)
        self._claim_launch_script = client.register_script(_CLAIM_LAUNCH)
        self._release_claim_script = client.register_script(_RELEASE_CLAIM)

    def key(self, task_key: str) -> str:
        """The Redis key of ``task_key``'s claim."""
        return f"{self._prefix}:{KEY_PART}:{task_key}"

    def legacy_key(self, task_key: str) -> str:
        """The key older versions keep ``task_key``'s claim under (read and written beside :meth:`key`)."""
        return f"{self._prefix}:{LEGACY_KEY_PART}:{task_key}"

    def keys(self, task_key: str) -> list[str]:
        """Both keys of ``task_key``'s claim, as the scripts take them: :meth:`key`, :meth:`legacy_key`."""
        return [self.key(task_key), self.legacy_key(task_key)]

    def owners(self, task_keys: Sequence[str]) -> list[str | None]:
        """Who holds the claim of each of ``task_keys`` (None: nobody), same order; one round trip.

        A launch claim's value is ``<owner> <identity>``: the whole value is returned, as stored. The
        claim key's value is preferred; the legacy key's is the answer when only an older process
        claimed the task.

        Raises:
            CoordinationError: Redis is down.
        """
        if not task_keys:
            return []
        keys = [self.key(task_key) for task_key in task_keys] + [self.legacy_key(t) for t in task_keys]
        with redis_errors("checking who owns the tasks"):
            values = self._client.mget(keys)
        return pick_owners(values)

    def claim_orphan(self, task_key: str, owner: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS) -> bool:
        """Claim the adoption of one task of a dead instance; exactly one claimer wins.

        ``{prefix}:claim:<task_key>`` (and its legacy key) is set to ``owner`` if absent (one atomic
        script). The owner that already holds the claim gets True again, so a retried call is harmless.
        A claim whose holder's own lease has expired (the adopter died as well) is taken over, which is
        why ``owner`` should be the claiming process's instance id.

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
                keys=self.keys(task_key),
                args=[owner, ttl_seconds * 1000, self._lease_key_prefix],
            )
        claims: tuple[Claim, Claim, Claim] = ("other", "new", "mine")
        return claims[int(answer)]

    def claim_launch(
        self, task_key: str, owner: str, identity: str, ttl_seconds: int = DEFAULT_ADOPT_CLAIM_SECONDS
    ) -> LaunchClaim:
        """Like :meth:`claim`, and bind the claim to ``identity`` (the job it is for).

        A claim already bound to another identity is not touched and answers ``"conflict"``, whether
        its holder lives or not: the key is used by another job. The same owner claiming again, or a
        takeover from a dead holder, keeps (or sets) the binding.

        Args:
            task_key: e.g. ``launch:<deploymentId>:<attempt>``.
            owner: the claiming process's instance id (no spaces: instance ids are tag-safe).
            identity: what the claim is for, e.g. ``<type>:<digest>`` (no spaces).
            ttl_seconds: how long the claim, and its binding, are kept.

        Raises:
            CoordinationError: Redis is down.
        """
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be greater than 0 (got {ttl_seconds})")
        if " " in owner or " " in identity:
            raise ValueError("owner and identity must not contain spaces")
        with redis_errors("claiming a launch"):
            answer, bound = self._claim_launch_script(
                keys=self.keys(task_key),
                args=[owner, ttl_seconds * 1000, self._lease_key_prefix, identity],
            )
        states: tuple[Literal["other", "new", "mine", "conflict"], ...] = ("other", "new", "mine", "conflict")
        return LaunchClaim(states[int(answer)], reply_text(bound))

    def release_claim(self, task_key: str, owner: str) -> None:
        """Give up ``owner``'s claim on ``task_key`` (a launch that failed: the next try claims anew).

        Raises:
            CoordinationError: Redis is down (the claim stays until its TTL; the same owner can reclaim).
        """
        with redis_errors("releasing a claim"):
            self._release_claim_script(keys=self.keys(task_key), args=[owner])


def pick_owners(values: Sequence[bytes | str | None]) -> list[str | None]:
    """The owners of :meth:`Claims.owners` from one MGET of every claim key, then every legacy key.

    (:meth:`~.instances.InstanceRegistry.handled_elsewhere` reads the claims in the same round trip as
    the done markers, so it picks the owners out of its own MGET with this.)
    """
    n = len(values) // 2
    picked = [new if new is not None else old for new, old in zip(values[:n], values[n:], strict=True)]
    return [None if value is None else reply_text(value) for value in picked]
