"""The orchestrator SIGKILLed mid-build: the process that adopts the task continues its log stream
with no line twice and none missing (real ``orchestrator run`` processes and real workers)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pipeline.harness import EventCollector, build_job, publish
from pipeline.processes import OrchestratorProcess
from support import unique, wait_until, with_overrides

from orchestrator.buildlogs.model import LogLine
from orchestrator.buildlogs.reader import LogEnd, StreamReader
from orchestrator.buildlogs.redis_stream import stream_key
from orchestrator.config import Config

pytestmark = [pytest.mark.services, pytest.mark.slow]

PRINTER = Path(__file__).with_name("printer.py")
#: Each worker prints this many lines over about five seconds: the kill falls in the middle.
LINES = 1500
RATE = 300


@pytest.fixture
def processes() -> Iterator[list[OrchestratorProcess]]:
    started: list[OrchestratorProcess] = []
    yield started
    for process in started:
        if process.process is not None and process.process.poll() is None:
            process.stop()


def spawn(
    config: Config, tmp_path: Path, started: list[OrchestratorProcess], name: str
) -> OrchestratorProcess:
    process = OrchestratorProcess(config, tmp_path / f"{name}.log").start()
    started.append(process)
    process.wait_healthy()
    return process


def test_the_adopter_continues_the_log_with_no_duplicate_and_no_gap(
    pipeline_config: Config, tmp_path: Path, processes: list[OrchestratorProcess]
) -> None:
    config = with_overrides(
        pipeline_config,
        limits__lease_seconds=2,
        limits__poll_seconds=0.2,
        limits__max_attempts=1,
        local__state_dir=str(tmp_path / "state"),
        local__command=f"{sys.executable} {PRINTER} {LINES} {RATE}",
        logs__poll_seconds=0.02,
    )
    ids = [unique("adopt").replace(".", "-") + f"-{n}" for n in range(3)]
    keys = {d: stream_key(config.redis.key_prefix, d) for d in ids}
    client = redis.Redis.from_url(config.redis.url)
    try:
        with EventCollector(config) as events:
            first = spawn(config, tmp_path, processes, "first")
            for deployment_id in ids:
                publish(config, build_job(deployment_id))
            # When the orchestrator is killed while every worker is printing (a few hundred lines in)
            wait_until(lambda: all(client.xlen(k) >= 200 for k in keys.values()), 60, "200 lines each")
            first.kill9()
            assert all(client.xlen(k) < LINES for k in keys.values()), "the kill came after a worker ended"
            spawn(config, tmp_path, processes, "second")
            # Then the new process adopts the tasks and follows them to their end
            for deployment_id in ids:
                final = events.wait_terminal(deployment_id, timeout=60)
                assert final.status == "succeeded", processes[-1].log()
                assert final.logs == keys[deployment_id]
        for deployment_id, key in keys.items():
            seen = list(StreamReader(client, key).backlog())
            lines = [e for e in seen if isinstance(e, LogLine)]
            # and the stream holds every line once, in order, with seq 1..N and one end
            assert [line.line for line in lines] == [f"{deployment_id} line {n}" for n in range(LINES)]
            assert [line.seq for line in lines] == list(range(1, LINES + 1))
            assert [e for e in seen if isinstance(e, LogEnd)] == [
                LogEnd(attempt=1, status="succeeded", last_seq=LINES, dropped=0)
            ]
        assert "resuming the log of" in processes[-1].log()
    finally:
        client.close()
