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

One concept per module, each name importable from this package as before:

* :mod:`.pool` — the :class:`SlotPool` protocol, :class:`CombinedSlots` and :func:`make_slot_pool`;
* :mod:`.local` — :class:`LocalSlots`;
* :mod:`.global_slots` — :class:`GlobalSlots` and its Lua scripts.
"""

from orchestrator.slots.global_slots import HELD_ELSEWHERE, RESTART_GRACE_LEASES, GlobalSlots
from orchestrator.slots.local import LocalSlots
from orchestrator.slots.pool import CombinedSlots, SlotPool, make_slot_pool

__all__ = [
    "HELD_ELSEWHERE",
    "RESTART_GRACE_LEASES",
    "CombinedSlots",
    "GlobalSlots",
    "LocalSlots",
    "SlotPool",
    "make_slot_pool",
]
