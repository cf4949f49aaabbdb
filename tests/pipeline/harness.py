"""Run the real pipeline (every actor, real RabbitMQ and Redis) in the test process, and watch it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pika
import redis
from support import DEFAULT_WAIT_SECONDS, wait_until

from orchestrator.config import Config
from orchestrator.launch.base import Launcher
from orchestrator.messages import EVENT_DECODER, BuildJob, StatusEvent, encode
from orchestrator.pipeline import register_pipeline
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.supervisor import Supervisor

REPOSITORY = "https://github.com/blacktree-dev/app.git"


def build_job(deployment_id: str, repository: str = REPOSITORY) -> bytes:
    """A minimal build job's body."""
    return encode(BuildJob(deployment_id=deployment_id, repository=repository))


def stop_job(deployment_id: str) -> bytes:
    """A stop job's body."""
    return encode({"type": "stop", "deploymentId": deployment_id})


def own_connections(role: str = "") -> str:
    """What identifies this process's connections (of ``role``: consumer, publisher:...) in
    ``rabbitmqctl list_connections`` (the broker layer names every connection so)."""
    return f"{role} {socket.gethostname()} pid={os.getpid()} ".lstrip()


def connection_pids(*fragments: str) -> list[str]:
    """The broker's pids of the connections whose client properties contain any of ``fragments``."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.split("\t", 1)[0] for line in listed.splitlines() if any(f in line for f in fragments)]


def close_connections_named(fragment: str) -> int:
    """Close, from the broker's side, every connection whose client properties contain ``fragment``."""
    pids = connection_pids(fragment)
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test"], check=True, timeout=60)
    return len(pids)


class Running(NamedTuple):
    """A pipeline running in the test process: its supervisor and the health board /health serves."""

    supervisor: Supervisor
    board: HealthBoard

    def health(self) -> tuple[bool, dict[str, Any]]:
        """What /health would answer now: (healthy, body)."""
        return self.board.report(time.monotonic())


@contextlib.contextmanager
def running_pipeline(config: Config, launcher: Launcher | dict[str, Launcher]) -> Iterator[Running]:
    """Every pipeline actor under a real Supervisor, with ``launcher`` standing in for the back-ends."""
    launchers = launcher if isinstance(launcher, dict) else {launcher.name: launcher}
    board = HealthBoard(config.http.stuck_after_seconds)
    give_ups: list[str] = []
    supervisor = Supervisor(config.supervision, board, on_give_up=lambda name, exc: give_ups.append(name))
    register_pipeline(supervisor, board, config, launcher_factory=lambda name, cfg: launchers[name])
    try:
        supervisor.start_all(timeout=30)
        wait_until(lambda: _broker_up(board), what="the consumer to connect and declare its topology")
        yield Running(supervisor, board)
    finally:
        supervisor.stop_all(timeout=30)
    assert not give_ups, f"actors gave up: {give_ups}"


def _broker_up(board: HealthBoard) -> bool:
    _, body = board.report(time.monotonic())
    return bool(body["dependencies"].get("broker", {}).get("ok"))


def publish(config: Config, body: bytes, headers: dict[str, Any] | None = None) -> None:
    """Publish one job to the execute queue like the backend does (persistent, confirmed)."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            config.broker.exchange,
            config.broker.execute_queue,
            body,
            pika.BasicProperties(delivery_mode=2, headers=headers),
            mandatory=True,
        )
    finally:
        connection.close()


def drain_queue(config: Config, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every message now in ``queue`` (acked), as (body, headers)."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    got: list[tuple[bytes, dict[str, Any]]] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return got
            got.append((body, dict(properties.headers or {})))
    finally:
        connection.close()


def queue_depth(config: Config, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


class EventCollector:
    """Collects status events from status.queue (AMQP) and the Redis channel, each in its own thread."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.amqp: list[StatusEvent] = []
        self.redis: list[StatusEvent] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._redis = redis.Redis.from_url(config.redis.url)
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(config.status.redis_channel)
        self._threads = [
            threading.Thread(target=self._consume_amqp, daemon=True),
            threading.Thread(target=self._consume_redis, daemon=True),
        ]

    def __enter__(self) -> EventCollector:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._pubsub.close()
        self._redis.close()

    def _consume_amqp(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self._config.broker.url))
        try:
            channel = connection.channel()
            channel.exchange_declare(self._config.broker.exchange, "direct", durable=True)
            channel.queue_declare(
                self._config.status.queue,
                durable=True,
                arguments={"x-queue-type": self._config.broker.queue_type},
            )
            channel.queue_bind(
                self._config.status.queue, self._config.broker.exchange, self._config.status.queue
            )
            for method, _props, body in channel.consume(self._config.status.queue, inactivity_timeout=0.1):
                if self._stop.is_set():
                    break
                if method is None:
                    continue
                channel.basic_ack(method.delivery_tag)
                with self._lock:
                    self.amqp.append(EVENT_DECODER.decode(body))
        finally:
            connection.close()

    def _consume_redis(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None:
                with self._lock:
                    self.redis.append(EVENT_DECODER.decode(message["data"]))

    def events(self, deployment_id: str, source: str = "amqp") -> list[StatusEvent]:
        with self._lock:
            events = self.amqp if source == "amqp" else self.redis
            return [e for e in events if e.deployment_id == deployment_id]

    def statuses(self, deployment_id: str, source: str = "amqp") -> list[str]:
        return [e.status for e in self.events(deployment_id, source)]

    def terminal(self, deployment_id: str, source: str = "amqp") -> StatusEvent | None:
        return next((e for e in self.events(deployment_id, source) if e.terminal), None)

    def wait_terminal(
        self, deployment_id: str, timeout: float = DEFAULT_WAIT_SECONDS, source: str = "amqp"
    ) -> StatusEvent:
        wait_until(
            lambda: self.terminal(deployment_id, source) is not None, timeout, f"{deployment_id} to end"
        )
        event = self.terminal(deployment_id, source)
        assert event is not None
        return event
