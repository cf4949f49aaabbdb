#!/usr/bin/env python3
"""The baseline of the pipeline benchmark: the broker work of one job, done the simple way with pika.

Usage: .venv/bin/python scripts/bench_pipeline_baseline.py [--n 2000] [--queue-type quorum|classic]

For each job: consume it (manual ack, the configured prefetch), decode it with ``json``, publish one
status event with a blocking publisher confirm, ack. ``scripts/bench_pipeline.py`` compares the
orchestrator (which does the same broker work, pipelined) against :func:`raw_pika_job_loop`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

import msgspec
import pika

from orchestrator.broker.topology import declare_topology
from orchestrator.config import Config, load_config
from orchestrator.messages import utc_now_rfc3339

DEFAULT_N = 2000
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: A consumer that sees nothing for this long has lost the jobs: the benchmark fails.
INACTIVITY_SECONDS = 30.0


def job_body(i: int) -> bytes:
    """A valid build job with a unique deploymentId."""
    return json.dumps(
        {
            "type": "build",
            "deploymentId": f"dep-bench-{i}",
            "repository": "https://github.com/blacktree-dev/sample-app.git",
            "branch": "main",
            "dockerFilePath": "Dockerfile",
            "contextDir": ".",
        }
    ).encode()


def raw_pika_job_loop(config: Config, n: int, *, preload: bool = True) -> float:
    """Jobs per second of a plain pika loop doing one job's broker work: consume, decode, confirm, ack.

    Args:
        config: whose ``broker`` (url, exchange, execute queue, prefetch) and ``status`` (status queue)
            are used; the topology is declared first (idempotent).
        n: jobs to process. The clock runs from the first consume to the last ack.
        preload: publish ``n`` jobs to the execute queue first (not timed). With ``False`` the caller
            has put at least ``n`` jobs there.

    Returns:
        jobs per second. The ``n`` status events it published are left in the status queue.
    """
    broker, status = config.broker, config.status
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        setup = connection.channel()
        declare_topology(setup, broker, status, config.limits.retry_delays)
        if preload:
            setup.confirm_delivery()
            for i in range(n):
                setup.basic_publish(
                    "", broker.execute_queue, job_body(i), pika.BasicProperties(delivery_mode=2)
                )
        consume = connection.channel()
        consume.basic_qos(prefetch_count=broker.prefetch)
        publish = connection.channel()
        publish.confirm_delivery()
        persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")

        start = time.perf_counter()
        messages = consume.consume(
            broker.execute_queue, auto_ack=False, inactivity_timeout=INACTIVITY_SECONDS
        )
        for done in range(n):
            method, _properties, body = next(messages)
            if method is None:
                raise RuntimeError(f"no job for {INACTIVITY_SECONDS} s after {done} of {n}")
            job = json.loads(body)
            event = {
                "deploymentId": job["deploymentId"],
                "type": job["type"],
                "status": "dispatched",
                "attempt": 1,
                "seq": 1,
                "at": utc_now_rfc3339(),
                "launcher": "local",
            }
            publish.basic_publish(
                broker.exchange, status.queue, json.dumps(event).encode(), persistent, mandatory=True
            )
            consume.basic_ack(method.delivery_tag)
        elapsed = time.perf_counter() - start
        consume.cancel()
        return n / elapsed
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="jobs")
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default=None)
    args = parser.parse_args()

    config = load_config(environ={k: v for k, v in os.environ.items() if k.startswith("ORCH_")})
    base = f"bench.baseline.{uuid.uuid4().hex[:8]}"
    broker = msgspec.structs.replace(
        config.broker,
        url=config.broker.url if "ORCH_BROKER_URL" in os.environ else DEFAULT_URL,
        exchange=f"{base}.x",
        execute_queue=f"{base}.execute",
        dlq=f"{base}.dlq",
        retry_queue_prefix=f"{base}.retry",
        queue_type=args.queue_type or config.broker.queue_type,
    )
    config = msgspec.structs.replace(
        config, broker=broker, status=msgspec.structs.replace(config.status, queue=f"{base}.status")
    )
    try:
        rate = raw_pika_job_loop(config, args.n)
    finally:
        _delete(config)
    print(f"raw pika job loop ({broker.queue_type} queues, prefetch {broker.prefetch}): {rate:.0f} jobs/s")


def _delete(config: Config) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        names = [config.broker.execute_queue, config.broker.dlq, config.status.queue]
        names += [f"{config.broker.retry_queue_prefix}.{d}s" for d in config.limits.retry_delays]
        for name in names:
            channel.queue_delete(name)
        channel.exchange_delete(config.broker.exchange)
    finally:
        connection.close()


if __name__ == "__main__":
    main()
