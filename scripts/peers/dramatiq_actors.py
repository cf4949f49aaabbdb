"""The Dramatiq peer: its RabbitMQ broker and one actor, ``run_job``, taking the job's JSON string.

Dramatiq's defaults otherwise: its default middleware, durable queues (``<queue>``, ``<queue>.DQ`` and
``<queue>.XQ``), persistent messages, acks after the actor returns, prefetch ``2 * threads`` per process.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

from peers import common

ACTOR_NAME = "run_job"


class ReadyMarker(Middleware):
    """Writes the ready file once the worker has started its consumer and worker threads."""

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        common.mark_ready()


class TypedQueueRabbitmqBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker, with ``x-queue-type`` on the work and delay queues.

    Dramatiq has no queue-type option: this overrides its private ``_build_queue_arguments``.
    """

    def __init__(self, *, queue_type: str = "classic", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.queue_type = queue_type

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
        arguments["x-queue-type"] = self.queue_type
        return arguments


def run_job(body: str) -> None:
    common.run_job(body)


def make_broker(
    url: str, job_queue: str, queue_type: str = "classic", *, confirm_delivery: bool = False
) -> tuple[RabbitmqBroker, Any]:
    """A broker for ``url`` and the ``run_job`` actor on ``job_queue`` registered with it."""
    if queue_type == "classic":
        broker = RabbitmqBroker(url=url, confirm_delivery=confirm_delivery)
    else:
        broker = TypedQueueRabbitmqBroker(url=url, confirm_delivery=confirm_delivery, queue_type=queue_type)
    actor = dramatiq.actor(run_job, actor_name=ACTOR_NAME, queue_name=job_queue, broker=broker)
    return broker, actor
