"""The slot pool the RateLimiter uses: the :class:`SlotPool` protocol, the local and global limits
together (:class:`CombinedSlots`), and :func:`make_slot_pool`, which builds what the configuration asks
for.
"""

from __future__ import annotations

import threading
from typing import Protocol

from orchestrator.config import Config
from orchestrator.coordination import ConnectivityCallback, RedisClient
from orchestrator.slots.global_slots import RESTART_GRACE_LEASES, GlobalSlots
from orchestrator.slots.local import LocalSlots


class SlotPool(Protocol):
    """What the RateLimiter uses, whichever limits are configured."""

    def try_acquire(self, deployment_id: str) -> bool:
        """Take a slot for ``deployment_id`` if one is free; True if it holds one now (idempotent)."""
        ...

    def release(self, deployment_id: str) -> bool:
        """Give back ``deployment_id``'s slot; True if it was held, False if not (nothing freed)."""
        ...

    def held(self) -> int:
        """How many slots this process holds."""
        ...

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a slot in this process."""
        ...

    def holds_surely(self, deployment_id: str) -> bool:
        """Whether ``deployment_id``'s slot is surely still this process's (False after a stall past
        the leases, or once the lease is known lost)."""
        ...

    def close(self) -> None:
        """Stop background work; slots still held are not given back: their tasks run on, and the
        leases expire unless a process that adopts the tasks renews them."""
        ...


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

    def held(self) -> int:
        """How many deployments hold a slot in this process (no Redis call)."""
        return self.local.held()

    def holders(self) -> frozenset[str]:
        """The deployment ids holding a slot in this process (no Redis call)."""
        return self.local.holders()

    def holds_surely(self, deployment_id: str) -> bool:
        """Whether the global lease is surely held (see :meth:`GlobalSlots.holds_surely`)."""
        return self.global_slots.holds_surely(deployment_id)

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
        restart_grace_seconds=config.limits.lease_seconds * RESTART_GRACE_LEASES,
    )
    return CombinedSlots(local, global_slots)
