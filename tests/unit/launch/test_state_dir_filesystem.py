"""Which file system ``local.state_dir`` is on, read from a mount table, and the warning for tmpfs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from orchestrator.launch.local_store import VOLATILE_FILESYSTEMS, TaskStore, filesystem_type

TABLE = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=4096k 0 0
/dev/vdb /var/lib ext4 rw,relatime 0 0
tmpfs /var/lib/blacktree\\040state tmpfs rw,relatime 0 0
/dev/vdc /var/lib/blacktree\\040state xfs rw,relatime 0 0
tmpfs /var/lib/volatile tmpfs rw 0 0
"""


@pytest.fixture
def mounts(tmp_path: Path) -> str:
    path = tmp_path / "mounts"
    path.write_text(TABLE)
    return str(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "ext4"),
        ("/home/builds", "ext4"),
        ("/run/blacktree", "tmpfs"),
        ("/run", "tmpfs"),
        ("/runner/state", "ext4"),  # a name that only starts like a mount point is not under it
        ("/var/lib/blacktree-orchestrator", "ext4"),
        ("/var/lib/volatile/state", "tmpfs"),
        ("/var/lib/blacktree state/tasks", "xfs"),  # an escaped space; the later mount on a point wins
    ],
)
def test_the_longest_mount_point_holding_the_path_gives_its_type(
    mounts: str, path: str, expected: str
) -> None:
    assert filesystem_type(Path(path), mounts) == expected


def test_an_unreadable_mount_table_gives_no_answer(tmp_path: Path) -> None:
    assert filesystem_type(Path("/"), str(tmp_path / "no-such-table")) is None


def test_a_state_dir_on_tmpfs_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shm = Path("/dev/shm")
    if filesystem_type(shm) not in VOLATILE_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm on this machine")
    state_dir = shm / f"blacktree-test-{tmp_path.name}"
    try:
        with caplog.at_level(logging.WARNING, logger="orchestrator.launch.local_store"):
            TaskStore(state_dir)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    [record] = [r for r in caplog.records if "local.state_dir" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f"{state_dir} is on tmpfs" in record.getMessage()
    assert "would never end" in record.getMessage()


def test_a_state_dir_on_a_disk_is_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if filesystem_type(tmp_path) in VOLATILE_FILESYSTEMS:
        pytest.skip(f"{tmp_path} is on tmpfs on this machine")
    with caplog.at_level(logging.WARNING, logger="orchestrator.launch.local_store"):
        TaskStore(tmp_path / "state")
    assert not [r for r in caplog.records if "local.state_dir" in r.getMessage()]
