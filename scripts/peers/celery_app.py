"""The Celery peer: one task, ``bench.run_job``, whose only argument is the job's JSON string.

Settings a Celery user on RabbitMQ runs: prefork pool, ``acks_late``, no result backend, JSON only,
task messages persistent (Celery's default) on a durable queue of the run's own (bound to a direct
exchange of the same name). Remote control, task events, gossip, mingle and worker heartbeats are off,
so the worker declares nothing outside the run's own queue and exchange.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from peers import common

TASK_NAME = "bench.run_job"
#: Celery's default ``worker_prefetch_multiplier``; the prefetch is ``concurrency * multiplier``.
DEFAULT_PREFETCH_MULTIPLIER = 4


def run_job(body: str) -> None:
    common.run_job(body)


def make_app(
    url: str,
    job_queue: str,
    prefetch_multiplier: int = DEFAULT_PREFETCH_MULTIPLIER,
    queue_type: str = "classic",
) -> Celery:
    """A Celery app whose one task consumes ``job_queue`` on the broker at ``url``."""
    app = Celery("bench_peers", broker=url, set_as_current=False)
    queue = Queue(
        job_queue,
        Exchange(job_queue, type="direct", durable=True),
        routing_key=job_queue,
        durable=True,
        queue_arguments={"x-queue-type": queue_type},
    )
    app.conf.update(
        task_queues=[queue],
        task_default_queue=job_queue,
        task_default_exchange=job_queue,
        task_default_routing_key=job_queue,
        task_acks_late=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=prefetch_multiplier,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    app.task(name=TASK_NAME, acks_late=True, ignore_result=True)(run_job)
    return app
