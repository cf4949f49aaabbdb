"""Broker-level fuzzing: thousands of hostile bodies and headers published to a running orchestrator.

A real ``orchestrator run`` process (local launcher, real RabbitMQ and Redis) takes a seeded corpus of
hostile messages (``tests/hostile.py``). Nothing may restart an actor, /health must stay 200
throughout, nothing may be launched, every message must be dead-lettered exactly once with a reason,
and no secret the corpus generated may appear in any output: the dead-lettered bodies and headers,
the status events on both sinks, and the process's log.
"""

from __future__ import annotations

import collections
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from hostile import SECRET_MARKER, corpus, publish_hostile
from support import wait_until, with_overrides

from orchestrator.config import Config
from orchestrator.messages import encode
from orchestrator.retry import REASON_HEADER

from .harness import EventCollector, queue_depth
from .processes import OrchestratorProcess

pytestmark = pytest.mark.services

SEED = int(os.environ.get("FUZZ_SEED", "20261202"))


class HealthWatch:
    """Polls /health every 20 ms from its own thread; remembers every answer that was not a 200."""

    def __init__(self, port: int) -> None:
        self._url = f"http://127.0.0.1:{port}/health"
        self._stop = threading.Event()
        self.polls = 0
        self.failures: list[str] = []
        self.last_body: dict[str, object] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.polls += 1
            try:
                with urllib.request.urlopen(self._url, timeout=2) as response:
                    self.last_body = json.loads(response.read())
                    if response.status != 200:
                        self.failures.append(f"status {response.status}")
            except urllib.error.HTTPError as e:
                self.failures.append(f"status {e.code}: {e.read()[:300]!r}")
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")


def drain_all(config: Config, queue: str, count: int) -> list[tuple[bytes, dict[str, object]]]:
    """Every message in ``queue`` (consumed with a prefetch window, not one basic_get each)."""
    got: list[tuple[bytes, dict[str, object]]] = []
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        for method, properties, body in channel.consume(queue, inactivity_timeout=2):
            if method is None:
                break
            got.append((body, dict(properties.headers or {})))
            if len(got) % 500 == 0 or len(got) >= count:
                channel.basic_ack(method.delivery_tag, multiple=True)
        channel.cancel()
    finally:
        connection.close()
    return got


@pytest.fixture
def fuzz_config(pipeline_config: Config, tmp_path: Path) -> Config:
    launched = tmp_path / "launched"
    return with_overrides(
        pipeline_config,
        launcher__default="local",
        local__state_dir=str(tmp_path / "state"),
        local__command=f"sh -c 'echo launched >> {launched}'",
    )


@pytest.fixture
def orchestrator(fuzz_config: Config, tmp_path: Path) -> Iterator[OrchestratorProcess]:
    process = OrchestratorProcess(fuzz_config, tmp_path / "orchestrator.log").start()
    try:
        process.wait_healthy()
        yield process
    finally:
        process.stop()


def run_fuzz(config: Config, orchestrator: OrchestratorProcess, tmp_path: Path, count: int) -> None:
    # Given a seeded corpus of hostile messages
    messages = list(corpus(SEED, count, config.validation))
    secrets = {secret for message in messages for secret in message.secrets}
    assert secrets, "the corpus carries credentials to look for"
    with EventCollector(config) as events, HealthWatch(orchestrator.port) as health:
        # When they are published to the running orchestrator
        publish_hostile(config, messages, confirm=True)
        wait_until(
            lambda: queue_depth(config, config.broker.dlq) >= count,
            timeout=120,
            what=f"{count} dead-lettered messages",
        )
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="every ack")
        time.sleep(1.0)  # room for a duplicate dead-letter to show, if the orchestrator made one
        health_body = health.last_body
        rejected_events = [e for e in events.amqp if e.status == "rejected"]
        event_text = "\n".join(encode(e).decode() for e in (*events.amqp, *events.redis))

    # Then: /health was 200 throughout, and no actor restarted
    assert health.polls > 10
    assert not health.failures, health.failures[:5]
    actors = health_body["actors"]
    assert isinstance(actors, dict)
    assert {name: a["restarts"] for name, a in actors.items() if a["restarts"]} == {}
    # nothing was launched, and every event is a rejection
    assert not (tmp_path / "launched").exists(), "a hostile message reached a launcher"
    assert {e.status for e in events.amqp} <= {"rejected"}
    # every message was dead-lettered exactly once, with a reason
    dead = drain_all(config, config.broker.dlq, count)
    assert len(dead) == count, f"{len(dead)} dead-lettered for {count} published"
    assert all(headers.get(REASON_HEADER) for _, headers in dead)
    plain = [m.body for m in messages if not m.secrets and b"@" not in m.body and b"token" not in m.body]
    unmatched = collections.Counter(plain) - collections.Counter(body for body, _ in dead)
    assert not unmatched, f"{sum(unmatched.values())} bodies were not dead-lettered as received"
    assert len(rejected_events) <= count
    # and no generated secret appears in any output
    outputs = {
        "dead-lettered bodies": b"\n".join(body for body, _ in dead).decode("utf-8", "replace"),
        "dead-letter headers": "\n".join(repr(headers) for _, headers in dead),
        "status events": event_text,
        "the process log": orchestrator.log_path.read_text(errors="replace"),
    }
    for where, text in outputs.items():
        leaked = leaked_secrets(text, secrets)
        assert not leaked, f"{len(leaked)} secrets in {where}, e.g. {leaked[:3]}"


def leaked_secrets(text: str, secrets: set[str]) -> list[str]:
    """The secrets of which any part shows in ``text``: its start (every secret begins with the
    corpus's marker) or its end (a password split by '@' or '/' leaves one), in one pass over ``text``."""
    words = set(re.findall(r"[A-Za-z0-9]{6,}", text))
    with_marker = {w for w in words if SECRET_MARKER in w}
    return sorted(s for s in secrets if s in words or s[8:] in words or any(s[:8] in w for w in with_marker))


def test_hostile_messages_are_dead_lettered_once_and_crash_nothing(
    fuzz_config: Config, orchestrator: OrchestratorProcess, tmp_path: Path
) -> None:
    run_fuzz(fuzz_config, orchestrator, tmp_path, count=1000)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_hostile_messages_at_scale(
    fuzz_config: Config, orchestrator: OrchestratorProcess, tmp_path: Path
) -> None:
    run_fuzz(fuzz_config, orchestrator, tmp_path, count=10_000)


def test_the_leak_check_finds_any_part_of_a_secret() -> None:
    secret = "S3CR3Tabcdefghijklmnop"
    assert leaked_secrets(f"x https://u:{secret}@h", {secret}) == [secret]
    assert leaked_secrets("x https://u:S3CR3Tabcd***", {secret}) == [secret], "its start"
    assert leaked_secrets("x ***@cdefghijklmnop@github.com", {secret}) == [secret], "its end"
    assert leaked_secrets("x https://***@github.com", {secret}) == []
