"""The tiny wrapper a local task runs in.

Usage: ``python -m orchestrator.launch.local_task --state DIR --id ID -- ARGV...``

It runs the worker command (an argv list, never a shell) and, when the worker ends, writes its exit
status to ``DIR/tasks/ID.exit``, so the status stays readable after the orchestrator that started it
has crashed or restarted (a process's exit status otherwise only reaches its parent).

The launcher starts it in a session of its own (so supervisord stopping the orchestrator's process
group does not kill builds) with standard output and error already pointing at the task's log file,
which the worker inherits. A SIGTERM sent to the task's process group reaches the worker too; the
wrapper itself outlives it just long enough to record the worker's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

#: Exit status recorded when the worker command cannot be started at all (like a shell's).
EXIT_CANNOT_START: Final = 127
#: A worker killed by signal N is recorded as 128 + N (like a shell's ``$?``).
SIGNAL_EXIT_BASE: Final = 128
TASKS_DIR: Final = "tasks"
EXIT_SUFFIX: Final = ".exit"


def exit_status(returncode: int) -> int:
    """A ``Popen.returncode`` as a shell would report it: ``-15`` (killed by SIGTERM) -> 143."""
    return SIGNAL_EXIT_BASE - returncode if returncode < 0 else returncode


def write_exit_file(path: Path, code: int) -> None:
    """Write ``code`` to ``path`` atomically (a reader sees no file or the whole number)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{code}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.launch.local_task")
    parser.add_argument("--state", required=True, help="the local launcher's state directory")
    parser.add_argument("--id", required=True, help="the task's file id")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the worker's argv")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no worker command after --")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker, record its exit status, and exit with it."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    exit_path = Path(args.state) / TASKS_DIR / f"{args.id}{EXIT_SUFFIX}"

    def note_signal(signum: int, frame: FrameType | None) -> None:
        # The worker shares our process group and got the same signal; we wait for it to end.
        del signum, frame

    signal.signal(signal.SIGTERM, note_signal)
    signal.signal(signal.SIGINT, note_signal)
    try:
        worker = subprocess.Popen(list(args.command), stdin=subprocess.DEVNULL)
    except OSError as e:
        print(
            f"❌ cannot start the worker {args.command[0]!r}: {e.strerror or e}", file=sys.stderr, flush=True
        )
        code = EXIT_CANNOT_START
    else:
        code = exit_status(worker.wait())
    write_exit_file(exit_path, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
