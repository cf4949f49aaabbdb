"""The status-queue side of the pipeline benchmark: a separate process that times every status event.

``scripts/bench_pipeline.py`` runs it with ``multiprocessing`` (spawn), so reading status.queue costs
the measured process nothing but what a real consumer of status events (the backend, in its own
process) costs the broker. It consumes with ``auto_ack`` (the cheapest way to read a queue), decodes
only ``deploymentId`` and ``status``, and records for each deployment when (``time.monotonic()``, the
system-wide ``CLOCK_MONOTONIC`` on Linux, so comparable with the parent's publish times) its first
``dispatched`` and its first terminal event arrived.

Only pika and msgspec are imported here: the module is the child's entry point and should start fast.
"""

from __future__ import annotations

import multiprocessing.connection
import multiprocessing.synchronize
import time
from typing import Any, Final

import msgspec
import pika

#: Statuses that end a job (ARCHITECTURE.md, "Wire contracts").
TERMINAL: Final = frozenset({"rejected", "succeeded", "failed", "stopped"})
#: Longest the consuming loop blocks before it looks at the stop request.
POLL_SECONDS: Final = 0.05
#: Index of each live counter in the shared array.
DISPATCHED: Final = 0
TERMINAL_COUNT: Final = 1


class _EventHead(msgspec.Struct):
    """The two fields of a status event the benchmark needs (the others are skipped unparsed)."""

    deploymentId: str  # noqa: N815 - the wire name
    status: str


class Collected(msgspec.Struct, kw_only=True):
    """What the collector saw, sent to the parent when it stops.

    Attributes:
        dispatched_at: deploymentId -> arrival time of its first ``dispatched`` event.
        terminal_at: deploymentId -> arrival time of its first terminal event.
        duplicates: ``dispatched`` or terminal events seen again for the same deployment.
        out_of_order: ``dispatched`` events that arrived after their deployment's terminal event.
        statuses: how many events of each status arrived.
        undecodable: messages that were not status events.
    """

    dispatched_at: dict[str, float]
    terminal_at: dict[str, float]
    duplicates: int
    out_of_order: int
    statuses: dict[str, int]
    undecodable: int


def collect_status_events(
    url: str,
    queue: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    counts: Any,
    results: multiprocessing.connection.Connection,
) -> None:
    """Consume ``queue`` until ``stop`` is set, then send a :class:`Collected` (msgpack) on ``results``.

    Args:
        url: the AMQP URL.
        queue: the status queue; it must exist already (declared by the parent).
        ready: set once the consumer is registered with the broker.
        stop: set by the parent when it has seen what it waited for.
        counts: shared array of two integers, distinct deployments with a ``dispatched`` and with a
            terminal event so far; the parent polls them while it waits.
        results: where the :class:`Collected` goes, encoded with ``msgspec.msgpack``.
    """
    decoder = msgspec.json.Decoder(_EventHead)
    collected = Collected(
        dispatched_at={}, terminal_at={}, duplicates=0, out_of_order=0, statuses={}, undecodable=0
    )

    def on_message(_channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        now = time.monotonic()
        try:
            head = decoder.decode(body)
        except msgspec.DecodeError:
            collected.undecodable += 1
            return
        collected.statuses[head.status] = collected.statuses.get(head.status, 0) + 1
        if head.status == "dispatched":
            seen, index = collected.dispatched_at, DISPATCHED
            if head.deploymentId in collected.terminal_at:
                collected.out_of_order += 1
        elif head.status in TERMINAL:
            seen, index = collected.terminal_at, TERMINAL_COUNT
        else:
            return
        if head.deploymentId in seen:
            collected.duplicates += 1
            return
        seen[head.deploymentId] = now
        counts[index] += 1

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.basic_consume(queue, on_message, auto_ack=True)
        ready.set()
        while not stop.is_set():
            connection.process_data_events(time_limit=POLL_SECONDS)
    finally:
        results.send_bytes(msgspec.msgpack.encode(collected))
        results.close()
        if connection.is_open:
            connection.close()


def decode_collected(data: bytes) -> Collected:
    """The parent's side of :func:`collect_status_events`' result."""
    return msgspec.msgpack.decode(data, type=Collected)
