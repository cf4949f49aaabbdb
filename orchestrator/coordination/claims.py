"""Claims: create-if-absent keys that make exactly one process adopt a task, or launch an attempt.

``{prefix}:adopt:<task_key>`` holds the claiming process's instance id (and, for a launch claim, the
job the claim is bound to). A claim whose holder's liveness lease (:mod:`.instances`) is gone is taken
over, so a claim never outlives the usefulness of its holder. Every decision is one Lua script, so two
processes racing for one key cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from orchestrator.coordination.client import RedisClient, redis_errors, reply_text

#: Adoption claims outlive any task: a claim is taken over early only when its holder is dead.
DEFAULT_ADOPT_CLAIM_SECONDS: Final = 7 * 24 * 3600

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

# KEYS: claim key. ARGV: owner, ttl ms, instance key prefix, identity.
# A launch claim's value is "<owner> <identity>": it binds (deploymentId, attempt) to one job. A claim
# bound to another identity is a conflict whoever holds it, alive or dead (that job may have run);
# otherwise the rules of _CLAIM_ORPHAN apply. A claim without an identity (written before claims had
# one) binds nothing. Returns {0 other live owner | 1 new or taken over | 2 already this owner's |
# 3 another job's, the identity the claim is bound to}.
_CLAIM_LAUNCH: Final = """
local value = redis.call('GET', KEYS[1])
local holder, bound = value, ''
if value then
  local space = string.find(value, ' ', 1, true)
  if space then
    holder = string.sub(value, 1, space - 1)
    bound = string.sub(value, space + 1)
  end
  if bound ~= '' and bound ~= ARGV[4] then return {3, bound} end
  if holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then return {0, bound} end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[4], 'PX', ARGV[2])
if value and holder == ARGV[1] then return {2, bound} end
return {1, bound}
"""

# KEYS: claim key. ARGV: owner. Deletes the claim only when that owner holds it (with or without an
# identity after its name).
_RELEASE_CLAIM: Final = """
local value = redis.call('GET', KEYS[1])
if value and (value == ARGV[1] or string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  return redis.call('DEL', KEYS[1])
end
return 0
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
        return f"{self._prefix}:adopt:{task_key}"

    def owners(self, task_keys: Sequence[str]) -> list[str | None]:
        """Who holds the claim of each of ``task_keys`` (None: nobody), same order; one round trip.

        A launch claim's value is ``<owner> <identity>``: the whole value is returned, as stored.

        Raises:
            CoordinationError: Redis is down.
        """
        with redis_errors("checking who owns the tasks"):
            values = self._client.mget([self.key(task_key) for task_key in task_keys])
        return [None if value is None else reply_text(value) for value in values]

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
                keys=[self.key(task_key)],
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
                keys=[self.key(task_key)],
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
            self._release_claim_script(keys=[self.key(task_key)], args=[owner])
