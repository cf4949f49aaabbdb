"""The messages the pipeline's actors tell each other.

Each is an immutable struct naming what should happen next. A ``Delivery`` travels with a job until
its outcome is durable; whoever makes it durable (the Publisher, on the broker's confirm) tells the
QueueListener to ack it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.broker.consumer import Delivery
from orchestrator.launch.base import TaskHandle, TaskState
from orchestrator.messages import JobBase, SourceJob, StatusEvent


class Incoming(msgspec.Struct, frozen=True):
    """QueueListener -> Validator: a delivery from execute.queue."""

    delivery: Delivery


class Ack(msgspec.Struct, frozen=True):
    """-> QueueListener: the delivery's outcome is durable; ack it."""

    delivery: Delivery


class Requeue(msgspec.Struct, frozen=True):
    """-> QueueListener: give the delivery back to the broker (nack with requeue)."""

    delivery: Delivery


class Admit(msgspec.Struct, frozen=True):
    """Validator -> RateLimiter: a valid job that needs a concurrency slot."""

    job: SourceJob
    attempt: int
    delivery: Delivery


class Withdraw(msgspec.Struct, frozen=True):
    """QueueListener -> RateLimiter: the delivery went back to the broker; stop waiting for it."""

    delivery: Delivery


class Release(msgspec.Struct, frozen=True):
    """-> RateLimiter: the deployment's job reached a state that frees its slot."""

    deployment_id: str


class Launch(msgspec.Struct, frozen=True):
    """RateLimiter -> Dispatcher: launch (or adopt) the worker task of this attempt."""

    job: SourceJob
    attempt: int
    delivery: Delivery | None


class Track(msgspec.Struct, frozen=True):
    """Dispatcher -> TimeoutMonitor: follow this task until it ends."""

    handle: TaskHandle
    job: SourceJob


class Observed(msgspec.Struct, frozen=True):
    """TimeoutMonitor's poller -> TimeoutMonitor: what one poll cycle saw."""

    states: tuple[TaskState, ...]
    errors: tuple[str, ...] = ()


class StopRequest(msgspec.Struct, frozen=True):
    """Validator -> TimeoutMonitor: a ``stop`` job."""

    job: JobBase
    delivery: Delivery


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """One AMQP message to publish with a confirm (dead-letter or retry republish)."""

    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any] = {}


class Publish(msgspec.Struct, frozen=True, kw_only=True):
    """-> Publisher: publish these, then (once every AMQP part is confirmed) ack ``ack``.

    ``messages`` are published before ``events``: a job is in the retry or dead-letter queue before
    anyone hears it is retrying or failed.
    """

    events: tuple[StatusEvent, ...] = ()
    messages: tuple[Outgoing, ...] = ()
    ack: Delivery | None = None
    #: Called (on the Publisher's thread; it must only ``tell``) once every AMQP part is confirmed.
    after: Any = None


class Tick(msgspec.Struct, frozen=True):
    """An actor's own periodic wake-up."""
