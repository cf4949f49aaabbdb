"""The worker of the fault scenarios: records its start and end, sleeps a while, and exits as its
deploymentId says.

Run by the local launcher as ``local.command`` (``python recording_worker.py``) with the job in its
environment (``DEPLOYMENT_ID``, ``ATTEMPT``) and ``FAULT_RECORDS`` passed on through
``local.pass_env``. It appends one line when it starts and one when it ends to that file, each with a
single ``write`` on an ``O_APPEND`` descriptor (atomic for lines this short, so every worker of every
orchestrator process can share the file)::

    start <deploymentId> <attempt> <pid> <epoch seconds> <pid of the orchestrator that launched it>
    end <deploymentId> <attempt> <pid> <epoch seconds> <exit status>

What a job does is written in its deploymentId, ``<tag><n>-<kind>``, so the tests know what every job
should end as without asking the worker (see :func:`behaviour`). A SIGTERM (a ``stop``) ends the
worker at once with status 143, as a shell reports a process killed by SIGTERM, after it recorded its
end.

Importable too: the tests use :func:`behaviour` and :func:`expected_outcome`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Final

RECORDS_ENV: Final = "FAULT_RECORDS"
#: A job of kind ``long`` runs this long unless it is stopped (the stops scenario's targets).
LONG_SECONDS: Final = 25.0
#: The recovery batch's jobs are all this short.
RECOVERY_SECONDS: Final = 0.5
FAIL_STATUS: Final = 3
STOPPED_STATUS: Final = 128 + signal.SIGTERM
#: ``<tag><n>-<kind>``; the tag is letters only.
ID_PATTERN: Final = re.compile(r"[A-Za-z]+(?P<n>[0-9]+)-(?P<kind>[a-z0-9]+)")

#: ok: succeeds; f1: fails its first attempt only (so a retry runs); fa: fails every attempt (so it
#: ends ``failed`` and dead-lettered); f1s: as f1, and the stops scenario stops it while its retry
#: waits; long: runs LONG_SECONDS unless stopped; r: the recovery batch, short and successful.
KINDS: Final = ("ok", "f1", "fa", "f1s", "long", "r")


def parse(deployment_id: str) -> tuple[int, str]:
    """``(n, kind)`` of a scenario job's deploymentId."""
    match = ID_PATTERN.fullmatch(deployment_id)
    if match is None or match["kind"] not in KINDS:
        raise ValueError(f"not a fault scenario job id: {deployment_id!r}")
    return int(match["n"]), match["kind"]


def behaviour(deployment_id: str, attempt: int) -> tuple[float, int]:
    """How long the worker of ``attempt`` runs and the status it exits with."""
    n, kind = parse(deployment_id)
    seconds = 0.2 + (n * 7919 % 14) / 10  # 0.2 to 1.5 s, spread over the ids
    if kind == "long":
        return LONG_SECONDS, 0
    if kind == "r":
        return RECOVERY_SECONDS, 0
    if kind == "fa" or (kind in ("f1", "f1s") and attempt == 1):
        return seconds, FAIL_STATUS
    return seconds, 0


def expected_outcome(deployment_id: str, max_attempts: int) -> str:
    """The terminal status a job ends with when nothing stops it."""
    for attempt in range(1, max_attempts + 1):
        if behaviour(deployment_id, attempt)[1] == 0:
            return "succeeded"
    return "failed"


def _record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _launcher_pid() -> int:
    """The orchestrator that launched us: the parent of our parent (the launcher's wrapper)."""
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        return int(stat[stat.rfind(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def main() -> int:
    path = os.environ[RECORDS_ENV]
    deployment_id = os.environ["DEPLOYMENT_ID"]
    attempt = int(os.environ["ATTEMPT"])
    pid = os.getpid()
    seconds, status = behaviour(deployment_id, attempt)

    def end(code: int) -> None:
        _record(path, f"end {deployment_id} {attempt} {pid} {time.time():.6f} {code}\n")

    def stopped(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        end(STOPPED_STATUS)
        os._exit(STOPPED_STATUS)

    signal.signal(signal.SIGTERM, stopped)
    _record(path, f"start {deployment_id} {attempt} {pid} {time.time():.6f} {_launcher_pid()}\n")
    time.sleep(seconds)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the end is being recorded: one end line only
    end(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
