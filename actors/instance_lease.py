"""InstanceLease: keeps this process's liveness lease in Redis while the process runs.

Other processes adopt the tasks of an instance whose lease has expired, so the lease must live exactly
as long as the process: it starts first and stops last. A clean stop deletes it at once, so the
remaining processes adopt this one's running tasks at their next reconciliation instead of after a
lease period.
"""

from __future__ import annotations

from typing import Never, assert_never

from orchestrator.coordination import InstanceRegistry
from orchestrator.runtime.actor import ActorReporter, SupervisedActor


class InstanceLeaseActor(SupervisedActor[Never]):
    """Runs the :class:`~orchestrator.coordination.InstanceRegistry` heartbeat."""

    def __init__(self, reporter: ActorReporter, registry: InstanceRegistry) -> None:
        super().__init__(reporter)
        self._registry = registry

    def on_start(self) -> None:
        self._registry.start()

    def on_stop(self) -> None:
        self._registry.stop()

    def receive(self, message: Never) -> None:
        assert_never(message)  # (told nothing: its work is the registry's own heartbeat thread)
