"""The whole pipeline with the real local launcher: a task's end is judged when it happens, not at the
next poll, and a followed attempt's events reach the wire in order."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import unique, wait_until, with_overrides

from orchestrator.config import Config
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.local_watch import pidfd_supported

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
