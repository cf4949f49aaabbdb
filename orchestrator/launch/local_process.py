"""Which process is a local task: a pid *and* its start time, read from ``/proc/<pid>/stat``.

A pid alone may be reused by another process once the task has ended; the start time (clock ticks
since boot) tells them apart, so a reused pid is never mistaken for the task (Linux only).
"""

from __future__ import annotations

from typing import Final

from orchestrator.launch.local_files import read_small

__all__ = ["ENDED_PROC_STATES", "STAT_START_TIME_INDEX", "process_start_time"]

#: ``/proc/<pid>/stat`` process states of a process that has ended.
ENDED_PROC_STATES: Final = frozenset({"Z", "X", "x"})
#: Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot), counted after the ``)``
#: that ends the command name: state is field 3, so start time is index 19 of what follows.
STAT_START_TIME_INDEX: Final = 19


def process_start_time(pid: int) -> int | None:
    """The start time of live process ``pid`` (clock ticks since boot); None if gone or a zombie."""
    try:
        stat = read_small(f"/proc/{pid}/stat").decode("utf-8", "replace")
    except OSError:
        return None
    after_name = stat[stat.rfind(")") + 2 :].split()
    if not after_name or after_name[0] in ENDED_PROC_STATES:
        return None
    try:
        return int(after_name[STAT_START_TIME_INDEX])
    except (IndexError, ValueError):
        return None


def _start_time_of_child(pid: int) -> int | None:
    """The start time of a child we just started; read even if it already ended (still a zombie)."""
    try:
        stat = read_small(f"/proc/{pid}/stat").decode("utf-8", "replace")
    except OSError:
        return None
    try:
        return int(stat[stat.rfind(")") + 2 :].split()[STAT_START_TIME_INDEX])
    except (IndexError, ValueError):
        return None
