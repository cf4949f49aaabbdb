"""Every orchestrator process's /health, sampled in the background: its code and the node each of its
broker connections says it is on (``connected to host:port``), for the failover checks."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Final

from pipeline.processes import OrchestratorProcess

#: How often each process is asked.
INTERVAL_SECONDS: Final = 0.1
#: The broker connections /health reports: the consumer and the status publisher.
CONNECTIONS: Final = ("broker", "status.amqp")
CONNECTED: Final = "connected to "


@dataclasses.dataclass(frozen=True)
class HealthSample:
    """One answer of one process's /health (``code`` None: no answer)."""

    at: float
    process: str
    code: int | None
    #: Connection (``broker``, ``status.amqp``) -> the node it is on, or None while it is not connected.
    nodes: dict[str, str | None]
    reasons: tuple[str, ...]

    @property
    def draining(self) -> bool:
        return any("draining" in reason for reason in self.reasons)


def _ask(port: int) -> tuple[int | None, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read())
        except ValueError:
            return e.code, {}
    except (urllib.error.URLError, OSError, ValueError):
        return None, {}


def _sample(name: str, port: int) -> HealthSample:
    code, body = _ask(port)
    dependencies = body.get("dependencies", {})
    nodes: dict[str, str | None] = {}
    for connection in CONNECTIONS:
        dependency = dependencies.get(connection, {})
        detail = str(dependency.get("detail", ""))
        ok = bool(dependency.get("ok")) and detail.startswith(CONNECTED)
        nodes[connection] = detail.removeprefix(CONNECTED) if ok else None
    return HealthSample(time.monotonic(), name, code, nodes, tuple(body.get("reasons", ())))


class HealthWatch:
    """Samples the /health of ``processes`` (name -> process) every :data:`INTERVAL_SECONDS`."""

    def __init__(self, processes: Mapping[str, OrchestratorProcess]) -> None:
        self._ports = {name: process.port for name, process in processes.items()}
        self._lock = threading.Lock()
        self._samples: list[HealthSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-watch", daemon=True)

    def start(self) -> HealthWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, port in self._ports.items():
                sample = _sample(name, port)
                with self._lock:
                    self._samples.append(sample)
            self._stop.wait(INTERVAL_SECONDS)

    def samples(self, process: str | None = None) -> list[HealthSample]:
        with self._lock:
            return [s for s in self._samples if process is None or s.process == process]

    def latest(self, process: str) -> HealthSample | None:
        with self._lock:
            for sample in reversed(self._samples):
                if sample.process == process:
                    return sample
        return None

    def consumer_node(self, process: str) -> str | None:
        """The node (``host:port``) the process's consumer said it was on, in its latest answer."""
        sample = self.latest(process)
        return sample.nodes["broker"] if sample is not None else None
