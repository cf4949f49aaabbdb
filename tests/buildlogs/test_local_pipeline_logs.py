"""Build logs through the whole pipeline with the real local launcher, RabbitMQ and Redis: a worker's
lines reach the job's stream in order, before its last event; readers join mid-build; the CLI."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pipeline.harness import EventCollector, build_job, publish, running_pipeline
from support import unique, wait_until, with_overrides

from orchestrator.buildlogs.command import show_logs
from orchestrator.buildlogs.model import LogLine
from orchestrator.buildlogs.reader import LogEnd, StreamReader
from orchestrator.buildlogs.redis_stream import stream_key
from orchestrator.config import Config
from orchestrator.launch.local import LocalLauncher
from orchestrator.messages import EVENT_DECODER, StatusEvent
from orchestrator.submit import submit

pytestmark = [pytest.mark.services]

PRINTER = Path(__file__).with_name("printer.py")
BIN = Path(sys.executable).parent


def logs_config(pipeline_config: Config, tmp_path: Path, lines: int, rate: float, code: int = 0) -> Config:
    return with_overrides(
        pipeline_config,
        limits__max_attempts=1,
        local__state_dir=str(tmp_path / "state"),
        local__command=f"{sys.executable} {PRINTER} {lines} {rate} {code}",
        logs__poll_seconds=0.02,
    )


class TerminalWatch:
    """Subscribes to the status channel; when a job's terminal event arrives, reads its log stream at
    once: what a consumer that reacts to the event would find."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._client = redis.Redis.from_url(config.redis.url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(config.status.redis_channel)
        self.found: dict[str, tuple[StatusEvent, list[LogLine | LogEnd]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            event = EVENT_DECODER.decode(message["data"])
            if event.terminal and event.deployment_id not in self.found:
                key = stream_key(self._config.redis.key_prefix, event.deployment_id)
                self.found[event.deployment_id] = (event, list(StreamReader(self._client, key).backlog()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


@pytest.fixture
def watch(pipeline_config: Config) -> Iterator[list[TerminalWatch]]:
    made: list[TerminalWatch] = []
    yield made
    for w in made:
        w.close()


def test_a_local_workers_lines_are_in_the_stream_in_order_before_its_last_event(
    pipeline_config: Config, tmp_path: Path, watch: list[TerminalWatch]
) -> None:
    # A slow pump round (0.5 s): only the finish, not the next round, can make the log complete in time
    config = with_overrides(
        logs_config(pipeline_config, tmp_path, lines=2000, rate=0), logs__poll_seconds=0.5
    )
    deployment_ids = [unique("logs").replace(".", "-") + f"-{n}" for n in range(3)]
    watcher = TerminalWatch(config)
    watch.append(watcher)
    with running_pipeline(config, LocalLauncher(config)), EventCollector(config) as events:
        for deployment_id in deployment_ids:
            publish(config, build_job(deployment_id))
        for deployment_id in deployment_ids:
            assert events.wait_terminal(deployment_id, 60).status == "succeeded"
        wait_until(lambda: len(watcher.found) == len(deployment_ids), 30, "every terminal event on Redis")
    for deployment_id in deployment_ids:
        key = stream_key(config.redis.key_prefix, deployment_id)
        terminal, seen = watcher.found[deployment_id]
        # The terminal event found the whole log already there: every line in order, then the end
        lines = [e for e in seen if isinstance(e, LogLine)]
        assert [line.line for line in lines] == [f"{deployment_id} line {n}" for n in range(2000)]
        assert [line.seq for line in lines] == list(range(1, 2001))
        assert seen[-1] == LogEnd(attempt=1, status="succeeded", last_seq=2000, dropped=0)
        # and every event of the attempt names the stream
        assert terminal.logs == key
        statuses = events.statuses(deployment_id)
        assert statuses[0] == "dispatched" and statuses[-1] == "succeeded"
        assert {e.logs for e in events.events(deployment_id)} == {key}


def test_a_reader_that_joins_mid_build_gets_the_backlog_then_the_live_lines(
    pipeline_config: Config, tmp_path: Path
) -> None:
    # A worker printing 1,500 lines over about three seconds
    config = logs_config(pipeline_config, tmp_path, lines=1500, rate=500, code=4)
    deployment_id = unique("join").replace(".", "-")
    key = stream_key(config.redis.key_prefix, deployment_id)
    printed: list[str] = []
    notes: list[str] = []
    with running_pipeline(config, LocalLauncher(config)), EventCollector(config) as events:
        publish(config, build_job(deployment_id))
        reader = redis.Redis.from_url(config.redis.url)
        try:
            wait_until(lambda: reader.xlen(key) >= 100, 30, "the first 100 lines")
        finally:
            reader.close()
        # When a reader joins now and follows the job to its end
        code = show_logs(
            config,
            deployment_id,
            attempt=None,
            follow=True,
            timeout=60,
            out=printed.append,
            note=notes.append,
        )
        final = events.wait_terminal(deployment_id, 30)
    # Then it printed every line once, in order, and how the attempt ended
    assert code == 0
    assert printed == [f"{deployment_id} line {n}" for n in range(1500)]
    assert notes[0] == "🔄 attempt 1"
    assert notes[-1] == "❌ attempt 1: failed · 1500 lines"
    assert final.status == "failed" and final.logs == key


def test_the_cli_prints_a_jobs_log_and_submit_wait_logs_shows_it_between_the_events(
    pipeline_config: Config, tmp_path: Path
) -> None:
    config = logs_config(pipeline_config, tmp_path, lines=20, rate=0)
    config = with_overrides(config, validation__allow_file_repos=True)
    deployment_id = unique("cli").replace(".", "-")
    job = tmp_path / "job.json"
    job.write_bytes(build_job(deployment_id))
    out: list[str] = []
    with running_pipeline(config, LocalLauncher(config)):
        code = submit(config, job.read_bytes(), wait=True, timeout=60, out=out.append, logs=True)
    assert code == 0, out
    # submit --wait --logs: the status lines, with the log's lines between dispatched and the end
    statuses = [n for n, line in enumerate(out) if line.startswith(("🔄 build", "✅ build"))]
    logged = [n for n, line in enumerate(out) if line.startswith("  │ ")]
    assert [out[n] for n in logged] == [f"  │ {deployment_id} line {i}" for i in range(20)]
    assert statuses[0] < logged[0] and logged[-1] < statuses[-1]
    assert out[statuses[-1]].startswith(f"✅ build {deployment_id} attempt 1: succeeded")
    # orchestrator logs: the log alone on stdout, notes on stderr
    env = {
        "ORCH_REDIS_URL": config.redis.url,
        "ORCH_REDIS_KEY_PREFIX": config.redis.key_prefix,
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [str(BIN / "orchestrator"), "logs", deployment_id, "--attempt", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{deployment_id} line {i}" for i in range(20)]
    assert done.stderr.strip() == "✅ attempt 1: succeeded · 20 lines"
    missing = subprocess.run(
        [str(BIN / "orchestrator"), "logs", "no-such-deployment"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("❌ no build log for no-such-deployment")
