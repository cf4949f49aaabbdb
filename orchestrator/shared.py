"""What the pipeline's actors share: coordination through Redis, created once per process.

It lives outside the actors, so a restarted actor picks up the same slots, markers and registry.
Every member is thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.coordination import (
    DoneMarkers,
    InstanceRegistry,
    PendingRetries,
    StopMarkers,
)
from orchestrator.poison import RedeliveryCounter
from orchestrator.reconcile import Reconciler
from orchestrator.slots import SlotPool


@dataclass(frozen=True)
class Coordination:
    """Cross-process state of one orchestrator process (all of it in Redis)."""

    instance_id: str
    slots: SlotPool
    stop_markers: StopMarkers
    pending_retries: PendingRetries
    done_markers: DoneMarkers
    registry: InstanceRegistry
    reconciler: Reconciler
    #: Counts redeliveries of classic-queue messages (quorum queues count them for us).
    redeliveries: RedeliveryCounter = field(default_factory=lambda: RedeliveryCounter(None, ""))
