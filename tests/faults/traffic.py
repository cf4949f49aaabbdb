"""The fault scenarios' traffic with the broker: the jobs they publish, the status events they
read, and the connections they close.

:class:`EventLog` reads status.queue with a consumer that reconnects (so it outlives a broker restart)
and acks an event only once it has recorded it, so nothing is lost however the connection ends; a
redelivered event is recorded again, and the checks drop it as a duplicate.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Final

import pika
from pipeline.harness import connection_pids
from pipeline.processes import OrchestratorProcess
from support import broker_connection

from orchestrator.config import Config
from orchestrator.messages import EVENT_DECODER, BuildJob, StatusEvent, encode

from .invariants import Arrival

REPOSITORY: Final = "https://github.com/blacktree-dev/app.git"
JOB_TYPE: Final = "build"
#: Events the consumer may hold unacked (it acks each as soon as it is recorded).
EVENT_PREFETCH: Final = 500


def build_body(deployment_id: str) -> bytes:
    """A build job's body."""
    return encode(BuildJob(deployment_id=deployment_id, repository=REPOSITORY))


def stop_body(deployment_id: str) -> bytes:
    """A ``stop`` job's body."""
    return encode({"type": "stop", "deploymentId": deployment_id})


class EventLog:
    """Every status event on status.queue, in arrival order, read by a consumer that reconnects."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self.arrivals: list[Arrival] = []
        self._terminal: dict[str, Arrival] = {}
        self._statuses: dict[str, list[str]] = collections.defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-events", daemon=True)
        self.reconnects = 0
        self._connected = threading.Event()

    def start(self, timeout: float = 30) -> None:
        self._thread.start()
        if not self._connected.wait(timeout):
            raise AssertionError(
                f"the event consumer did not connect to {self._config.broker.url} in {timeout} s"
            )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume()
            except (pika.exceptions.AMQPError, OSError):
                self.reconnects += 1
                self._stop.wait(0.2)  # backoff before reconnecting

    def _consume(self) -> None:
        status = self._config.status
        connection = broker_connection(self._config.broker)
        try:
            channel = connection.channel()
            channel.exchange_declare(self._config.broker.exchange, "direct", durable=True)
            channel.queue_declare(
                status.queue, durable=True, arguments={"x-queue-type": self._config.broker.queue_type}
            )
            channel.queue_bind(status.queue, self._config.broker.exchange, status.queue)
            channel.basic_qos(prefetch_count=EVENT_PREFETCH)
            self._connected.set()
            for method, _props, body in channel.consume(status.queue, inactivity_timeout=0.1):
                if self._stop.is_set():
                    break
                if method is None:
                    continue
                self._record(EVENT_DECODER.decode(body))
                channel.basic_ack(method.delivery_tag)  # after recording: a lost ack only repeats it
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                if connection.is_open:
                    connection.close()

    def _record(self, event: StatusEvent) -> None:
        with self._lock:
            arrival = Arrival(index=len(self.arrivals), at=time.time(), event=event)
            self.arrivals.append(arrival)
            if event.type == JOB_TYPE:
                self._statuses[event.deployment_id].append(event.status)
                if event.terminal and event.deployment_id not in self._terminal:
                    self._terminal[event.deployment_id] = arrival

    def terminal(self, deployment_id: str) -> Arrival | None:
        with self._lock:
            return self._terminal.get(deployment_id)

    def ended(self, ids: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for d in ids if d in self._terminal)

    def statuses(self, deployment_id: str) -> list[str]:
        with self._lock:
            return list(self._statuses.get(deployment_id, ()))

    def snapshot(self) -> list[Arrival]:
        with self._lock:
            return list(self.arrivals)

    def last_terminal_at(self) -> float:
        with self._lock:
            return max((a.at for a in self._terminal.values()), default=0.0)


class JobFeed:
    """Publishes bodies to the execute queue at a steady rate, confirmed, from a thread of its own."""

    def __init__(self, config: Config, bodies: Sequence[bytes], rate: float) -> None:
        self._config = config
        self._bodies = list(bodies)
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self.error: BaseException | None = None
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="fault-feed", daemon=True)

    def start(self) -> JobFeed:
        self._thread.start()
        return self

    def _run(self) -> None:
        broker = self._config.broker
        try:
            connection = broker_connection(broker)
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                began = time.monotonic()
                for n, body in enumerate(self._bodies):
                    pause = began + n * self._interval - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)  # pacing the producer, not waiting for a condition
                    channel.basic_publish(
                        broker.exchange,
                        broker.execute_queue,
                        body,
                        pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                        mandatory=True,
                    )
                    self.published += 1
            finally:
                connection.close()
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout: float) -> None:
        """Wait for every body to be published and confirmed."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"publishing did not finish in {timeout:.0f} s ({self.published} published)")
        if self.error is not None:
            raise AssertionError(f"publishing failed after {self.published}: {self.error!r}")


def close_connections(processes: Sequence[OrchestratorProcess]) -> int:
    """Close, from the broker's side and all at once, every connection of ``processes`` (and no
    other: the test's own and other tests' stay open); returns how many were closed."""
    pids = connection_pids(*(p.connection_fragment() for p in processes))
    closers = [
        subprocess.Popen(
            ["rabbitmqctl", "-q", "close_connection", pid, "fault test"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    for closer in closers:
        closer.wait(timeout=60)
    return len(pids)
