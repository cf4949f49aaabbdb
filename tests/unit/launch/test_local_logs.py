"""Retention of local worker logs: a forgotten task's log past the retention is deleted; a log whose
task still has its record, a recent log, and anything that is not a log are kept."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.launch.local import LocalLauncher
from orchestrator.launch.local_logs import MAX_SWEEP_SECONDS, LogSweeper, sweep_interval
from orchestrator.launch.local_store import TaskStore

DAY = 24 * 3600


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(tmp_path / "state")


def write(path: Path, age_seconds: float, data: bytes = b"a line\n") -> Path:
    path.write_bytes(data)
    at = time.time() - age_seconds
    os.utime(path, (at, at))
    return path


def test_only_old_logs_of_forgotten_tasks_are_deleted(
    store: TaskStore, caplog: pytest.LogCaptureFixture
) -> None:
    logs = store.logs_dir
    forgotten = write(logs / "dep-a-1.log", 2 * DAY)
    running = write(logs / "dep-b-1.log", 2 * DAY)  # a quiet task that still runs: its record is there
    write(store.path("dep-b-1"), 2 * DAY, b'{"taskId":"dep-b-1"}\n')
    recent = write(logs / "dep-c-1.log", 60)
    other = write(logs / "notes.txt", 2 * DAY)
    (logs / "dep-d-1.log").mkdir()  # not a file
    sweeper = LogSweeper(store, DAY)

    with caplog.at_level(logging.INFO):
        assert sweeper.sweep() == 1

    assert not forgotten.exists()
    assert running.exists() and recent.exists() and other.exists() and (logs / "dep-d-1.log").is_dir()
    assert "deleted 1 local worker log(s) of ended tasks not written to for 86400 s" in caplog.text
    assert sweeper.sweep() == 0, "nothing more is due"


def test_the_retention_counts_from_the_last_write(store: TaskStore) -> None:
    logs = store.logs_dir
    log = write(logs / "dep-a-1.log", 2 * DAY)
    now = time.time()
    # A log last written 2 days ago: kept with 3 days of retention, deleted with 1
    assert LogSweeper(store, 3 * DAY, clock=lambda: now).sweep() == 0
    assert log.exists()
    assert LogSweeper(store, DAY, clock=lambda: now).sweep() == 1
    assert not log.exists()


def test_retention_zero_keeps_every_log(store: TaskStore) -> None:
    logs = store.logs_dir
    log = write(logs / "dep-a-1.log", 365 * DAY)

    assert LogSweeper(store, 0).sweep() == 0
    assert log.exists()


def test_a_log_another_process_deleted_first_is_skipped(
    store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = store.logs_dir
    for n in range(3):
        write(logs / f"dep-{n}-1.log", 2 * DAY)
    real_unlink = os.unlink

    def raced(path: str | os.PathLike[str]) -> None:
        if str(path).endswith("dep-1-1.log"):
            real_unlink(path)  # the other process's sweep, just before ours
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", raced)

    assert LogSweeper(store, DAY).sweep() == 2
    assert list(logs.iterdir()) == []


def test_a_missing_logs_directory_is_nothing_to_sweep(store: TaskStore) -> None:
    store.logs_dir.rmdir()
    assert LogSweeper(store, DAY).sweep() == 0


def test_sweeps_come_four_times_per_retention_and_at_least_every_ten_minutes() -> None:
    assert sweep_interval(8) == 2.0
    assert sweep_interval(1) == 0.25
    assert sweep_interval(3 * DAY) == MAX_SWEEP_SECONDS == 600.0


def test_the_launcher_sweeps_on_its_own_thread_until_closed(tmp_path: Path) -> None:
    config = load_config(
        environ={"ORCH_LOCAL_STATE_DIR": str(tmp_path / "state"), "ORCH_LOCAL_LOG_RETENTION_SECONDS": "1"}
    )
    launcher = LocalLauncher(config)
    old = write(launcher.logs_dir / "dep-a-1.log", 10)
    launcher.sweep_logs()
    try:
        deadline = time.monotonic() + 10
        while old.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not old.exists()
    finally:
        launcher.close()
    # Closed: a log due now stays
    later = write(launcher.logs_dir / "dep-b-1.log", 10)
    time.sleep(0.6)
    assert later.exists()
