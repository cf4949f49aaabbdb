"""The tiny wrapper a local task runs in: a POSIX shell script, not an interpreter per task.

The launcher starts ``/bin/sh -c WRAPPER_SCRIPT blacktree-task STATE_DIR TASK_FILE ARGV...`` in a
session of its own (so supervisord stopping the orchestrator's process group does not kill builds),
with standard input from ``/dev/null`` and standard output and error already pointing at the task's
log file, which the worker inherits. The shell changes to ``STATE_DIR``, runs the worker command
there (an argv list, never a command line built from a job) in the foreground and, when it ends,
appends ``exit <status>`` to ``TASK_FILE`` (``tasks/<id>.json``, relative to the state directory;
see :mod:`~orchestrator.launch.local_files`), so the status stays readable after the orchestrator
that started it has crashed or restarted (a process's exit status otherwise only reaches its parent).

A SIGTERM sent to the task's process group reaches the worker too; the shell traps it (a trapped
signal is reset to its default in the worker, an ignored one would not be) and outlives the worker just
long enough to record its status. A worker killed by signal N is recorded as 128 + N, like the
shell's ``$?``; a worker that cannot be started as 127 (not found) or 126 (not executable).

The line is appended in one write; readers count a line only once its newline is there, and judge
a task by its process first, reading its status only once the process is gone. Starting a shell
costs about a millisecond and a few hundred kilobytes, against ~110 ms of CPU for the Python wrapper
this replaced.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_CANNOT_START",
    "EXIT_SUFFIX",
    "SIGNAL_EXIT_BASE",
    "TASKS_DIR",
    "WRAPPER_NAME",
    "WRAPPER_SCRIPT",
]

#: Exit status recorded when the worker command cannot be started at all (like a shell's).
EXIT_CANNOT_START: Final = 127
#: A worker killed by signal N is recorded as 128 + N (like a shell's ``$?``).
SIGNAL_EXIT_BASE: Final = 128
TASKS_DIR: Final = "tasks"
#: Where an older version's wrapper wrote the exit status (``tasks/<id>.exit``); still read.
EXIT_SUFFIX: Final = ".exit"
#: The wrapper's ``$0``: what ``ps`` shows for a local task's wrapper.
WRAPPER_NAME: Final = "blacktree-task"
#: ``sh -c WRAPPER_SCRIPT blacktree-task STATE_DIR TASK_FILE ARGV...``
WRAPPER_SCRIPT: Final = """cd "$1" || exit 126
task_file=$2; shift 2
trap : TERM INT
if command -v "$1" >/dev/null 2>&1; then
  "$@"
  code=$?
else
  printf '\\342\\235\\214 cannot start the worker %s: not found\\n' "$1" >&2
  code=127
fi
printf 'exit %s\\n' "$code" >> "$task_file"
exit "$code"
"""
