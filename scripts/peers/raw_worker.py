"""The floor: the peers' work per job in plain pika, no framework, in forked processes.

``python -m peers.raw_worker`` (from ``scripts/``, settings from the environment as for the other peers,
plus ``BENCH_PEERS_RAW_PROCESSES`` and ``BENCH_PEERS_PREFETCH``) forks that many processes. Each opens
its own pika connection, sets the prefetch, consumes the job queue and, per job, does exactly what
``common.run_job`` does, with the cheapest spawn there is: decode and validate, ``os.posix_spawn`` of
``true`` (path resolved once) and ``os.waitpid``, two status events each with a blocking confirm, then
the ack. Nothing else: no retries, no records, no claims, no second thread.

It is not a product: it is the least that any Python consumer doing this work on pika costs, so its
jobs/s bound what a system doing at least this work reaches on the machine (``bench_local.py`` reports
its ratio to Celery beside the targets).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pika

from peers import common


def consume(url: str, queue: str, prefetch: int) -> None:
    """One process's loop; returns only if the connection closes."""
    run_true = common.true_spawner()
    events = common.publisher()
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)

    def on_message(ch: Any, method: Any, _properties: Any, body: bytes) -> None:
        try:
            job = common.validate(body)
        except common.InvalidJobError:
            events.publish(common.status_event("", "rejected"))
        else:
            ok = run_true() == 0
            deployment_id = job["deploymentId"]
            events.publish(common.status_event(deployment_id, "dispatched"))
            events.publish(common.status_event(deployment_id, "succeeded" if ok else "failed"))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message)
    common.mark_ready()
    channel.start_consuming()


def main() -> int:
    url = os.environ.get(common.ENV_URL, common.DEFAULT_URL)
    queue = os.environ[common.ENV_JOB_QUEUE]
    processes = int(os.environ.get(common.ENV_RAW_PROCESSES, "4"))
    prefetch = int(os.environ.get(common.ENV_PREFETCH, "4"))
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                consume(url, queue, prefetch)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    # The benchmark stops the whole process group with SIGTERM; until then, wait for the children.
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
