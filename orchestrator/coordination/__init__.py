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
redis-py errors are translated into :class:`~orchestrator.errors.CoordinationError`; each method says
what it does when Redis is down.

One concept per module, each name importable from this package as before:

* :mod:`.client` — the redis-py client, error translation, reply decoding, reachability reports;
* :mod:`.periodic` — the daemon thread that renews leases;
* :mod:`.instances` — instance ids and liveness leases (:class:`InstanceRegistry`);
* :mod:`.claims` — the one-winner claims on adoptions and launches (:class:`Claims`);
* :mod:`.markers` — stop markers, pending retries and done markers.
"""

from orchestrator.coordination.claims import DEFAULT_ADOPT_CLAIM_SECONDS, Claim, Claims, LaunchClaim
from orchestrator.coordination.client import (
    REDIS_RETRIES,
    ConnectivityCallback,
    ConnectivityReporter,
    RedisClient,
    connect_redis,
    redis_errors,
    reply_text,
)
from orchestrator.coordination.instances import InstanceRegistry, instance_id
from orchestrator.coordination.markers import DoneMarkers, PendingRetries, StopMarkers, attempt_done_key
from orchestrator.coordination.periodic import (
    RENEWALS_PER_LEASE,
    STALL_FRACTION,
    THREAD_JOIN_SECONDS,
    Periodic,
    renewed_lately,
)

__all__ = [
    "DEFAULT_ADOPT_CLAIM_SECONDS",
    "REDIS_RETRIES",
    "RENEWALS_PER_LEASE",
    "STALL_FRACTION",
    "THREAD_JOIN_SECONDS",
    "Claim",
    "Claims",
    "ConnectivityCallback",
    "ConnectivityReporter",
    "DoneMarkers",
    "InstanceRegistry",
    "LaunchClaim",
    "PendingRetries",
    "Periodic",
    "RedisClient",
    "StopMarkers",
    "attempt_done_key",
    "connect_redis",
    "instance_id",
    "redis_errors",
    "renewed_lately",
    "reply_text",
]
