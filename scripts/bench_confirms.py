#!/usr/bin/env python3
"""Publisher confirms: one blocking round trip per message against the pipelined ConfirmingPublisher.

Usage: .venv/bin/python scripts/bench_confirms.py [--n 5000] [--queue-type quorum|classic] [--url URL]

Both publish ``n`` small persistent messages to the same fresh durable queue (purged in between, deleted
at the end) and count a message only when the broker confirmed it:

(a) a ``BlockingChannel`` in confirm mode: every ``basic_publish`` waits for its own confirm;
(b) :class:`orchestrator.broker.publisher.ConfirmingPublisher`: all messages in flight, confirms
    matched by delivery tag (connection set-up is not timed).

Prints messages per second for both and the ratio b/a.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid

import pika

from orchestrator.broker.publisher import ConfirmingPublisher
from orchestrator.broker.topology import queue_arguments
from orchestrator.config import DEFAULT_QUEUE_TYPE, BrokerConfig

DEFAULT_N = 5000
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
BODY = b'{"deploymentId":"dep-bench","type":"build","status":"dispatched","attempt":1,"seq":1}'
WAIT_SECONDS = 120.0


def blocking_confirms(url: str, queue: str, n: int) -> float:
    """Messages per second with one blocking confirm round trip per message."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2)
        start = time.perf_counter()
        for _ in range(n):
            channel.basic_publish("", queue, BODY, properties, mandatory=True)
        return n / (time.perf_counter() - start)
    finally:
        connection.close()


def pipelined_confirms(url: str, queue: str, n: int) -> float:
    """Messages per second with :class:`ConfirmingPublisher` (everything in flight)."""
    connected = threading.Event()
    all_confirmed = threading.Event()
    lock = threading.Lock()
    confirmed = 0
    failed: list[str] = []

    def on_confirm(ok: bool, detail: str) -> None:
        nonlocal confirmed
        with lock:
            confirmed += 1
            if not ok:
                failed.append(detail)
            if confirmed == n:
                all_confirmed.set()

    publisher = ConfirmingPublisher(
        BrokerConfig(url=url),
        name="bench",
        max_pending=n,
        on_connectivity=lambda ok, _detail: connected.set() if ok else None,
    )
    publisher.start()
    try:
        if not connected.wait(WAIT_SECONDS):
            raise SystemExit("❌ the publisher did not connect")
        start = time.perf_counter()
        for _ in range(n):
            publisher.publish("", queue, BODY, on_confirm=on_confirm)
        if not all_confirmed.wait(WAIT_SECONDS):
            raise SystemExit(f"❌ only {confirmed} of {n} confirmed within {WAIT_SECONDS} s")
        elapsed = time.perf_counter() - start
    finally:
        publisher.close(10)
    if failed:
        raise SystemExit(f"❌ {len(failed)} messages failed, e.g. {failed[0]}")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="messages per run")
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default=DEFAULT_QUEUE_TYPE)
    parser.add_argument("--url", default=os.environ.get("ORCH_BROKER_URL", DEFAULT_URL))
    args = parser.parse_args()

    queue = f"bench.confirms.{uuid.uuid4().hex[:8]}"
    admin = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = admin.channel()
    channel.queue_declare(queue, durable=True, arguments=queue_arguments(args.queue_type))
    try:
        a = blocking_confirms(args.url, queue, args.n)
        channel.queue_purge(queue)
        b = pipelined_confirms(args.url, queue, args.n)
    finally:
        channel.queue_delete(queue)
        admin.close()
    print(f"{args.n} messages, {args.queue_type} queue, persistent, publisher confirms")
    print(f"(a) BlockingChannel, one confirm round trip per message: {a:10.0f} msgs/s")
    print(f"(b) ConfirmingPublisher, pipelined:                      {b:10.0f} msgs/s")
    print(f"ratio b/a: {b / a:.1f}")


if __name__ == "__main__":
    main()
