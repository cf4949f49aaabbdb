"""The newcomer's path: ``scripts/quickstart`` run twice in a row gives the same result and leaves
nothing behind (no task, queue, Redis key or worker)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pika
import pytest
import redis

pytestmark = [pytest.mark.services, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def run_quickstart() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "quickstart.py"), "--timeout", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


LEFTOVERS_NOTE = "removed what an interrupted quickstart left"


#: A ``running`` event of a job that ends by itself is seen or not depending on when the task is
#: polled (a quick build can end between two polls): not part of the result.
PASSING_RUNNING = re.compile(r"^🔄 (build|test) \S+ attempt \d+: running")


def comparable(output: str) -> str:
    """The output without what differs by nature between runs (the HTTP port, a passing ``running``),
    and without the note about an earlier interrupted run's leftovers (only the first may find it)."""
    lines = [
        line for line in output.splitlines() if LEFTOVERS_NOTE not in line and not PASSING_RUNNING.match(line)
    ]
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", "\n".join(lines))


def quickstart_workers() -> list[int]:
    """Processes whose environment names a quickstart job (a worker left running)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if b"DEPLOYMENT_ID=quickstart-" in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def queues_named(prefix: str) -> list[str]:
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F"))
    try:
        found = []
        for suffix in ("execute", "dlq", "status", "retry.2s"):
            channel = connection.channel()
            try:
                channel.queue_declare(f"{prefix}.{suffix}", passive=True)
                found.append(suffix)
            except pika.exceptions.ChannelClosedByBroker:
                pass
        return found
    finally:
        connection.close()


def test_the_quickstart_twice_in_a_row_gives_the_same_result_and_leaves_nothing_behind() -> None:
    first = run_quickstart()
    second = run_quickstart()

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert comparable(second.stdout) == comparable(first.stdout)
    # every example, the stop included, each with its outcome
    summary = first.stdout.split("summary:")[1]
    expected = ("build: exit 0", "test: exit 0", "deploy: exit 0", "stop: exit 0", "expected): exit 2")
    for line in expected:
        assert line in summary
    assert "deploy quickstart-deploy attempt 1: stopped" in first.stdout
    # nothing left behind by the first run (the second found nothing to clean) or by the second
    assert LEFTOVERS_NOTE not in second.stdout
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        assert list(client.scan_iter("quickstart:*")) == []
    finally:
        client.close()
    assert queues_named("quickstart") == []
    assert not list((ROOT / "var" / "quickstart" / "state").glob("tasks/*"))
    assert quickstart_workers() == [], "a worker outlived the quickstart"
