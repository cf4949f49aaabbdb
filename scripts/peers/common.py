"""The work of one benchmark job, the same for every peer.

Decode the job JSON, validate it (a few lines), launch ``true`` as a local process and wait for it, then
publish two status events (``dispatched``, then ``succeeded``) persistent to the run's status queue, each
with a blocking publisher confirm. The peer acks the job after this function returns (acks late).

Status events go through pika: one ``BlockingConnection`` (with ``confirm_delivery``) per worker process
and thread, opened on first use, so forked pool processes never share the parent's socket.

Settings come from the environment, set by ``scripts/bench_peers.py`` for the worker it starts:
``BENCH_PEERS_URL``, ``BENCH_PEERS_STATUS_QUEUE`` and ``BENCH_PEERS_READY_DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pika

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

ENV_URL = "BENCH_PEERS_URL"
ENV_JOB_QUEUE = "BENCH_PEERS_JOB_QUEUE"
ENV_STATUS_QUEUE = "BENCH_PEERS_STATUS_QUEUE"
ENV_READY_DIR = "BENCH_PEERS_READY_DIR"
ENV_QUEUE_TYPE = "BENCH_PEERS_QUEUE_TYPE"
ENV_PREFETCH_MULTIPLIER = "BENCH_PEERS_PREFETCH_MULTIPLIER"
#: The floor's settings (``peers/raw_worker.py``): its processes, and each one's prefetch.
ENV_RAW_PROCESSES = "BENCH_PEERS_RAW_PROCESSES"
ENV_PREFETCH = "BENCH_PEERS_PREFETCH"

JOB_TYPES = frozenset({"build", "deploy", "test", "stop"})


class InvalidJobError(ValueError):
    """The job body failed validation."""


def job_body(run_id: str, i: int) -> str:
    """The JSON of benchmark job ``i`` of run ``run_id``."""
    return json.dumps(
        {
            "type": "build",
            "deploymentId": f"bench-{run_id}-{i}",
            "repoUrl": "https://github.com/acme/app.git",
            "branch": "main",
            "portNumber": "8080",
        }
    )


def validate(body: str | bytes) -> dict[str, Any]:
    """The decoded job, or :class:`InvalidJobError`."""
    try:
        job = json.loads(body)
    except ValueError as exc:
        raise InvalidJobError(f"not JSON: {exc}") from None
    if not isinstance(job, dict):
        raise InvalidJobError("not an object")
    if job.get("type") not in JOB_TYPES:
        raise InvalidJobError(f"unknown type {job.get('type')!r}")
    deployment_id = job.get("deploymentId")
    if not isinstance(deployment_id, str) or not deployment_id:
        raise InvalidJobError("deploymentId must be a non-empty string")
    repo_url = job.get("repoUrl")
    if not isinstance(repo_url, str) or not repo_url.startswith("https://"):
        raise InvalidJobError("repoUrl must start with https://")
    port = job.get("portNumber")
    if not isinstance(port, str) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidJobError("portNumber must be digits in 1..65535")
    return job


def status_event(deployment_id: str, status: str, attempt: int = 1) -> bytes:
    """One status event's JSON body."""
    return json.dumps(
        {
            "deploymentId": deployment_id,
            "status": status,
            "attempt": attempt,
            "timestamp": datetime.now(UTC).isoformat(),
        }
    ).encode()


class StatusPublisher:
    """A pika connection with publisher confirms, publishing persistent events to one queue."""

    def __init__(self, url: str, queue: str) -> None:
        self.queue = queue
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")

    def publish(self, body: bytes) -> None:
        """Publish and block until the broker confirms (raises on a nack or an unroutable event)."""
        self.channel.basic_publish("", self.queue, body, self.properties, mandatory=True)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


_local = threading.local()


def publisher() -> StatusPublisher:
    """This process's and thread's publisher, opened on first use (after any fork)."""
    pid = os.getpid()
    current: StatusPublisher | None = getattr(_local, "publisher", None)
    if current is None or getattr(_local, "pid", None) != pid:
        current = StatusPublisher(os.environ.get(ENV_URL, DEFAULT_URL), os.environ[ENV_STATUS_QUEUE])
        _local.publisher, _local.pid = current, pid
    return current


def true_spawner() -> Callable[[], int]:
    """The cheapest spawn of ``true`` from Python: ``os.posix_spawn`` (its path resolved once, here)
    and ``os.waitpid``; the returned function runs it once and returns its exit code."""
    path = shutil.which("true")
    if path is None:
        raise RuntimeError("no `true` on PATH")
    argv, env = ["true"], dict(os.environ)

    def run() -> int:
        pid = os.posix_spawn(path, argv, env)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    return run


def run_job(body: str) -> None:
    """The whole work of one job; the caller acks the job when this returns."""
    events = publisher()
    try:
        job = validate(body)
    except InvalidJobError:
        events.publish(status_event("", "rejected"))
        return
    deployment_id = job["deploymentId"]
    result = subprocess.run(["true"], check=False)
    events.publish(status_event(deployment_id, "dispatched"))
    events.publish(status_event(deployment_id, "succeeded" if result.returncode == 0 else "failed"))


def mark_ready() -> None:
    """Record that this worker process has started consuming: a file named by pid holding the time.

    The time is ``time.monotonic()`` (system-wide on Linux, so the benchmark process can compare it).
    """
    ready_dir = os.environ.get(ENV_READY_DIR)
    if not ready_dir:
        return
    path = os.path.join(ready_dir, str(os.getpid()))
    with open(path + ".tmp", "w") as f:
        f.write(repr(time.monotonic()))
    os.replace(path + ".tmp", path)
