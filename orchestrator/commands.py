"""The messages the pipeline's actors tell each other.

Each is an immutable struct naming what should happen next. A ``Delivery`` travels with a job until
its outcome is durable; whoever makes it durable (the Publisher, on the broker's confirm) tells the
QueueListener to ack it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.delivery import Delivery
from orchestrator.launch.base import TaskHandle, TaskState
from orchestrator.messages import JobBase, SourceJob, StatusEvent


class Incoming(msgspec.Struct, frozen=True):
    """Consumer (on the QueueListener's behalf) -> Validator: a delivery from execute.queue."""

    delivery: Delivery


class Admit(msgspec.Struct, frozen=True):
    """Validator -> RateLimiter: a valid job that needs a concurrency slot."""

    job: SourceJob
    attempt: int
    delivery: Delivery


class Withdraw(msgspec.Struct, frozen=True):
    """QueueListener -> RateLimiter: the delivery went back to the broker; stop waiting for it."""

    delivery: Delivery


class Stale(msgspec.Struct, frozen=True):
    """QueueListener -> RateLimiter: the channel changed; deliveries of a generation below
    ``generation`` are back with the broker (another process may have them now): drop them."""

    generation: int


class Widen(msgspec.Struct, frozen=True):
    """RateLimiter -> QueueListener: consume with this many consumers (each a prefetch window), so
    that the jobs waiting for a slot never fill every window and a ``stop`` behind them still comes."""

    consumers: int


class Release(msgspec.Struct, frozen=True):
    """-> RateLimiter: the deployment's job reached a state that frees its slot."""

    deployment_id: str


class Hold(msgspec.Struct, frozen=True):
    """TimeoutMonitor -> RateLimiter: this process now follows an adopted task of the deployment;
    count its slot (even beyond the limit: the task runs whatever the count says)."""

    deployment_id: str


class Launch(msgspec.Struct, frozen=True):
    """RateLimiter -> Dispatcher: launch (or adopt) the worker task of this attempt."""

    job: SourceJob
    attempt: int
    delivery: Delivery | None


class Track(msgspec.Struct, frozen=True):
    """Dispatcher -> TimeoutMonitor: follow this task until it ends.

    ``dispatched`` (the attempt's ``dispatched`` event and the ack of its delivery) is passed on to the
    Publisher before anything the monitor learns of the task: one sender for all of a followed
    attempt's events keeps them in order on the wire, even for a task that ends within a millisecond.
    """

    handle: TaskHandle
    job: SourceJob
    dispatched: Publish | None = None


class Observed(msgspec.Struct, frozen=True):
    """TimeoutMonitor's poller -> TimeoutMonitor: what one poll cycle saw."""

    states: tuple[TaskState, ...]
    errors: tuple[str, ...] = ()


class TasksEnded(msgspec.Struct, frozen=True):
    """A launcher's exit watcher -> TimeoutMonitor: these tasks ended just now (not at the next poll)."""

    states: tuple[TaskState, ...]


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
    #: Called (on the publisher's I/O thread; it must only ``tell``) once every AMQP part is confirmed.
    after: Any = None
    #: The job outcome this publish makes final (``succeeded``, ``failed``, ``stopped``,
    #: ``rejected``): counted in ``jobs_finished_total`` once every AMQP part is confirmed, not when
    #: it is sent (a publish that fails is redelivered and counted when it finally goes through).
    finished: str | None = None


class Tick(msgspec.Struct, frozen=True):
    """An actor's own periodic wake-up."""
