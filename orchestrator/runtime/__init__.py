"""The actor runtime: the base actor, the supervisor that restarts crashed actors, the health board."""

from orchestrator.runtime.actor import (
    PONG,
    ActorReporter,
    Drain,
    Ping,
    StandaloneReporter,
    SupervisedActor,
)
from orchestrator.runtime.health import ActorStatus, HealthBoard
from orchestrator.runtime.supervisor import ActorFactory, ActorHandle, RestartBudget, Supervisor

__all__ = [
    "PONG",
    "ActorFactory",
    "ActorHandle",
    "ActorReporter",
    "ActorStatus",
    "Drain",
    "HealthBoard",
    "Ping",
    "RestartBudget",
    "StandaloneReporter",
    "SupervisedActor",
    "Supervisor",
]
