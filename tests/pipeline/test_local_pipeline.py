"""The whole pipeline with the real local launcher: a task's end is judged when it happens, not at the
next poll, and a followed attempt's events reach the wire in order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support import unique, wait_until, with_overrides

from orchestrator.config import Config
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.local_files import file_id_of
from orchestrator.launch.local_watch import pidfd_supported
from orchestrator.messages import TERMINAL_STATUSES

from .harness import EventCollector, build_job, publish, queue_depth, running_pipeline

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(not pidfd_supported(), reason="pidfd_open is not available on this system"),
]

#: Far longer than the test: only the exit watcher can end these jobs.
NO_POLL_SECONDS = 600.0
JOBS = 30


def test_local_jobs_end_as_their_processes_do_with_events_in_order(
    pipeline_config: Config, tmp_path: Path
) -> None:
    config = with_overrides(
        pipeline_config,
        limits__poll_seconds=NO_POLL_SECONDS,
        limits__max_concurrent=8,
        limits__max_attempts=1,
        local__state_dir=str(tmp_path / "state"),
        local__command="sh -c 'case $DEPLOYMENT_ID in *-7) exit 9;; esac'",
    )
    launcher = LocalLauncher(config)
    prefix = unique("local-end").replace(".", "-")
    ids = [f"{prefix}-{i}" for i in range(JOBS)]
    with running_pipeline(config, launcher), EventCollector(config) as events:
        for deployment_id in ids:
            publish(config, build_job(deployment_id))
        # With 8 slots and 30 jobs, every slot was freed by an end the watcher saw (no poll ran).
        for deployment_id in ids:
            final = events.wait_terminal(deployment_id, timeout=60)
            if deployment_id.endswith("-7"):
                assert (final.status, final.exit_code) == ("failed", 9)
            else:
                assert (final.status, final.exit_code) == ("succeeded", 0)
            # dispatched is on the wire before the outcome, though the task ended first
            assert events.statuses(deployment_id) == ["dispatched", final.status]
        wait_until(lambda: queue_depth(config, config.broker.execute_queue) == 0, what="every ack")


def test_worker_logs_of_ended_jobs_are_deleted_after_the_retention_and_not_before(
    pipeline_config: Config, tmp_path: Path
) -> None:
    config = with_overrides(
        pipeline_config,
        limits__max_attempts=1,
        local__state_dir=str(tmp_path / "state"),
        local__command="sh -c 'echo built; sleep 5'",
        local__log_retention_seconds=2,
    )
    launcher = LocalLauncher(config)
    deployment_id = unique("local-logs").replace(".", "-")
    log = launcher.store.log_path(file_id_of(deployment_id, 1))
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job(deployment_id))
        wait_until(lambda: log.exists() and log.read_bytes() == b"built\n", what="the worker's line")
        # While the job runs, its log is kept past the retention (sweeps come every 0.5 s)
        time.sleep(3)
        assert log.read_bytes() == b"built\n"
        assert not any(s in TERMINAL_STATUSES for s in events.statuses(deployment_id)), "still running"
        assert events.wait_terminal(deployment_id, timeout=60).status == "succeeded"
        # Once the job ended and its task was forgotten, the sweep deletes its log
        wait_until(lambda: not log.exists(), timeout=30, what="the old log to be deleted")
