#!/usr/bin/env python3
"""Local launcher benchmark (issue 11's targets): the real orchestrator process against its peers.

Usage: ``.venv/bin/python scripts/bench_local.py [--n 1500] [--rounds 3] [--rate 200] [--seconds 30]
[--systems celery,dramatiq,raw,spawn,orchestrator] [--skip-latency] [--json FILE] [--plot FILE.png]``
(needs the bench extra: ``.venv/bin/pip install -e '.[test,bench]'``)

What is measured, all on the same broker, every name (queues, exchanges, the Redis key prefix and
channel) of each measurement its own and deleted afterwards:

1. Throughput, ``--rounds`` rounds; each round runs, one after the other:

   - Celery 5, prefork, c=4, and Dramatiq 2, p=2 t=4 (``bench_peers.py``: each job decoded and
     validated, ``true`` spawned and waited for, ``dispatched`` and ``succeeded`` published with a
     blocking confirm, acked late; clock from the worker's ready hook to the last ``succeeded``);
   - the floor (``bench_peers.raw_baseline``: the same work in plain pika, no framework, four forked
     processes, ``posix_spawn``): no system doing this work in Python on pika costs less, so its
     ratios to Celery, Dramatiq and the ceiling, reported beside the targets, say how far a target
     is within reach at all on the machine;
   - the bare spawn ceiling (``bench_peers.bare_spawn_ceiling``: ``true`` spawned and waited for in a
     Python loop, no broker; the ratio uses its ``posix_spawn`` variant);
   - the orchestrator, as in production: ``python -m orchestrator.cli --log-format json run --config
     FILE``, a separate process, with an INI config of its own (``launcher.default = local``,
     ``local.command`` = the path of ``true`` (``/usr/bin/true``: a bare ``true`` is a builtin of the
     ``sh`` wrapper, which would then spawn no worker process at all, unlike the peers),
     ``limits.max_concurrent = 64``, ``status.sinks = amqp``, the queues' type of the peers
     (``--queue-type``, classic by default), every other key at its default, so
     ``limits.poll_seconds`` stays 10). ``--n`` jobs in the backend's form (the
     seed DeploymentMessage, each with its own ``deploymentId``) are preloaded into its execute queue,
     on a topology declared as the orchestrator declares it, before it starts (not timed).

   The orchestrator's clock runs from the arrival here of its log line ``consuming <queue>
   (prefetch ...)`` (its stderr is read line by line by a thread of this process, each line stamped
   with ``time.monotonic()`` on arrival) to the arrival of the n-th terminal event at the status
   collector (``bench_status_collector.py``, a separate process reading the status queue; its
   ``time.monotonic()`` is the same ``CLOCK_MONOTONIC``). Every job must end ``succeeded`` exactly
   once, with no other terminal event and no duplicate event; anything else is an error, and so is a
   run in which no job ended for ``--stall-seconds`` (30) while some had not. CPU is read
   from ``/proc/<pid>/stat`` of the orchestrator at both ends of the clock: its own utime + stime (the
   orchestrator's cost, what the target "<= 2 ms per job excluding the worker" is about) and its
   cutime + cstime (its reaped children: the ``sh`` wrappers and the ``true`` they run), reported
   apart. Then it gets SIGTERM (it drains; SIGKILL after 30 s) and must exit 0.

2. Latency (``--skip-latency`` skips it): one orchestrator process as above but with
   ``status.sinks = amqp,redis``; once it is consuming, a paced publisher (its own pika connection,
   persistent and confirmed, like the backend; ``bench_pipeline.PacedPublisher``) offers ``--rate``
   jobs/s for ``--seconds`` s. Per job: the time just before its publish to the arrival of its
   ``dispatched`` and of its terminal event at the collector: p50, p99, max. Meanwhile a thread asks
   the orchestrator's ``/health`` every 50 ms, one new ``http.client`` connection per request as a load
   balancer does: p50, p99, max. The orchestrator kept up if every job ended within ``--deadline`` s
   of the last publish.

The orchestrator's code: by default (``--code snapshot``) every orchestrator process of the run
imports a copy of ``orchestrator/`` and ``actors/`` taken from the working tree when the run starts
(the tree is shared, and an edit landing mid-run once mixed two versions of the local launcher in one
round); ``--code live`` imports the tree itself.

An A/B in one run: ``--base-code TREE`` (a ``git worktree`` of the commit before, say) adds
``orchestrator-base``, one process importing a copy of TREE's packages, measured beside
``orchestrator`` in every round (the two swap places every other round); the summary gives each
round's CPU, context switches and jobs/s of both, and in how many rounds the tree used less CPU.
The latency run is then made ``--latency-rounds`` times for each (in pairs, swapping order), since
a change can matter at a moderate rate, where nothing is batched, and not at saturation. The
machine's speed drifts by ±30% over minutes, so two alternated runs compare worse than rounds of one.
Each orchestrator round also reports the context switches of its threads per job: unlike CPU time,
the count hardly moves with the machine's speed, and a thread hand-off or a system call that lets
go of a contended GIL costs one or two.

Output: one line per system per round, then medians, the ratios orchestrator/Celery,
orchestrator/Dramatiq and orchestrator/ceiling (posix_spawn), and the issue's targets (>= 2x, >= 1.5x,
>= 0.5x, orchestrator CPU <= 2 ms/job, p99 publish->dispatched < 50 ms, p99 publish->terminal < 100 ms,
/health p99 < 50 ms), reported, not asserted: the exit status is non-zero only on errors (a job lost,
duplicated or ending otherwise than ``succeeded``, a crash, a measurement that could not be made).
Problems of the orchestrator seen on the way (warnings and errors in its log, a shutdown that needed
SIGKILL, a non-zero exit) are printed with the figures; its log is kept when there were any.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _extra in (ROOT / "scripts", ROOT / "tests", ROOT):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import IO, Any, Final, TypeAlias  # noqa: E402

import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import redis  # noqa: E402
from bench_hostile import broker_cpu, broker_pids, cpu_seconds  # noqa: E402
from bench_peers import (  # noqa: E402
    DEFAULT_URL,
    MissingDependencyError,
    PeerResult,
    bare_spawn_ceiling,
    celery_baseline,
    dramatiq_baseline,
    raw_baseline,
)
from bench_pipeline import (  # noqa: E402
    BenchError,
    PacedPublisher,
    StatusCollector,
    clean_up,
    declare,
    describe_environment,
    percentile,
    preload,
)
from bench_status_collector import Collected  # noqa: E402
from support import free_port  # noqa: E402

from orchestrator.config import Config, load_config  # noqa: E402
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING  # noqa: E402

SYSTEMS: Final = (
    "celery",
    "dramatiq",
    "raw",
    "spawn",
    "orchestrator",
    "orchestrator-x2",
    "orchestrator-base",
)
#: The orchestrator systems: how many processes each runs (``orchestrator-x2`` is supervisor.conf's
#: ``numprocs=2``: two processes of one host sharing the broker, Redis and ``local.state_dir``;
#: ``orchestrator-base`` is one process of the code given with ``--base-code``, for an A/B).
ORCHESTRATOR_PROCESSES: Final = {"orchestrator": 1, "orchestrator-x2": 2, "orchestrator-base": 1}
MAX_CONCURRENT: Final = 64
#: The seed DeploymentMessage, the backend's form (read from the file the contract tests use).
SEED_JOB: Final[dict[str, Any]] = json.loads(
    (ROOT / "examples" / "backend" / "seed-deployment-message.json").read_text()
)
#: From starting the orchestrator to its "consuming" line.
STARTUP_SECONDS: Final = 60.0
#: SIGTERM, then SIGKILL after this.
STOP_SECONDS: Final = 30.0
HEALTH_INTERVAL_SECONDS: Final = 0.05
#: How often the latency run samples the machine (steal, CPU and I/O pressure, the processes' CPU).
SAMPLE_SECONDS: Final = 0.5
#: A job this many times slower than the run's median publish->dispatched is a slow one.
SLOW_FACTOR: Final = 4.0
HEALTH_TIMEOUT_SECONDS: Final = 10.0
MAX_HEALTH_FAILURES_KEPT: Final = 5
WAIT_SLICE_SECONDS: Final = 0.005
#: After the orchestrator stopped, how long events may still be on their way to the collector.
SETTLE_SECONDS: Final = 0.5
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
CONSUMING_PREFIX: Final = "consuming "
#: The Publisher actor logs every event it publishes: ``build <id> attempt <n>: <status>[ (reason)]``.
EVENT_LOGGER: Final = "actors.publisher"
EVENT_LINE: Final = re.compile(r"(?P<type>\w+) (?P<id>\S+) attempt (?P<attempt>\d+): (?P<status>\w+)")
TERMINAL: Final = frozenset({"rejected", "succeeded", "failed", "stopped"})
CLEAN_EXIT: Final = 0

TARGET_CELERY: Final = 2.0
TARGET_DRAMATIQ: Final = 1.5
TARGET_CEILING: Final = 0.5
TARGET_CPU_MS: Final = 2.0
TARGET_DISPATCHED_P99_MS: Final = 50.0
TARGET_TERMINAL_P99_MS: Final = 100.0
TARGET_HEALTH_P99_MS: Final = 50.0


# --- the machine ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """nproc, the CPU model, the kernel, the load: what the figures depend on."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


# --- the orchestrator process -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcCpu:
    """``/proc/<pid>/stat`` CPU of one process, in seconds."""

    own: float  # utime + stime
    children: float  # cutime + cstime: children it has waited for
    #: Context switches of its live threads (voluntary and not): a thread hand-off costs one or two.
    #: Unlike CPU time, the count does not swing with the machine's speed.
    switches: int = 0

    @classmethod
    def read(cls, pid: int) -> ProcCpu:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
        # Field 2 (comm) may hold spaces and parentheses: split after its last ")".
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state); utime, stime, cutime, cstime are fields 14..17.
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return cls(
            own=(utime + stime) / CLOCK_TICKS,
            children=(cutime + cstime) / CLOCK_TICKS,
            switches=thread_switches(pid),
        )


def thread_switches(pid: int) -> int:
    """The context switches of ``pid``'s live threads (``/proc/<pid>/task/*/status``)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return total


@dataclass
class LogProblem:
    at: float
    level: str
    text: str


class OrchestratorProcess:
    """``python -m orchestrator.cli --log-format json run --config FILE`` in a session of its own.

    A thread reads its log (stdout and stderr merged) line by line, copies it to ``log_path``, stamps
    the line that says it is consuming, and reads its CPU at that moment; warnings, errors and
    anything that is not a JSON log line are kept as problems.
    """

    def __init__(
        self,
        config_path: str,
        log_path: str,
        workdir: str,
        extra_env: dict[str, str] | None = None,
        base: bool = False,
    ) -> None:
        self.config_path, self.log_path, self.workdir = config_path, log_path, workdir
        self.extra_env = dict(extra_env or {})
        self.base = base
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.consuming_at: float | None = None
        self.cpu_at_consuming: ProcCpu | None = None
        self.broker_cpu_at_consuming: float | None = None
        self.consuming = threading.Event()
        self.problems: list[LogProblem] = []
        #: deploymentId -> the statuses the orchestrator logged publishing for it, in order.
        self.events: dict[str, list[str]] = {}
        self.lines = 0
        self.stop_seconds: float | None = None
        self.killed = False
        self.returncode: int | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        env = {**orchestrator_env(self.base), **self.extra_env}
        env["PYTHONUNBUFFERED"] = "1"
        argv = [
            sys.executable, "-m", "orchestrator.cli", "--log-format", "json", "--log-level", "INFO",
            "run", "--config", self.config_path,
        ]  # fmt: skip
        self.spawned_at = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read_log, args=(self.process.stdout,), name="orchestrator-log", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu(self) -> ProcCpu:
        return ProcCpu.read(self.pid)

    def _read_log(self, stream: IO[bytes]) -> None:
        with open(self.log_path, "wb", buffering=0) as copy:
            for raw in stream:
                now = time.monotonic()
                if self.consuming_at is None and CONSUMING_PREFIX.encode() in raw:
                    self._maybe_consuming(raw, now)
                copy.write(raw)
                self.lines += 1
                self._note(raw, now)

    def _maybe_consuming(self, raw: bytes, now: float) -> None:
        try:
            message = str(json.loads(raw).get("msg", ""))
        except (ValueError, AttributeError):
            return
        if message.startswith(CONSUMING_PREFIX) and "(prefetch" in message:
            with contextlib.suppress(OSError):
                self.cpu_at_consuming = self.cpu()
                self.broker_cpu_at_consuming = broker_cpu()
            self.consuming_at = now
            self.consuming.set()

    def _note(self, raw: bytes, now: float) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\n")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            if text.strip():
                self.problems.append(LogProblem(now, "RAW", text))
            return
        level = str(doc.get("level", "?"))
        if doc.get("logger") == EVENT_LOGGER:
            event = EVENT_LINE.match(str(doc.get("msg", "")))
            if event is not None:
                self.events.setdefault(event["id"], []).append(event["status"])
        if level not in ("DEBUG", "INFO") or doc.get("exc"):
            exc = f"\n{doc['exc']}" if doc.get("exc") else ""
            self.problems.append(
                LogProblem(now, level, f"{doc.get('logger', '?')}: {doc.get('msg', '')}{exc}")
            )

    def wait_consuming(self, timeout: float = STARTUP_SECONDS) -> float:
        """Seconds from the spawn to the "consuming" line."""
        deadline = time.monotonic() + timeout
        while not self.consuming.wait(0.05):
            if not self.alive():
                raise BenchError(f"the orchestrator exited ({self._code()}) before consuming:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the orchestrator was not consuming after {timeout:g} s:\n{self.tail()}")
        assert self.consuming_at is not None
        return self.consuming_at - self.spawned_at

    def _code(self) -> str:
        return "running" if self.process is None else f"exit {self.process.poll()}"

    def stop(self) -> None:
        """SIGTERM, wait (it drains), SIGKILL after STOP_SECONDS; once."""
        if self.process is None or self.stop_seconds is not None:
            return
        started = time.monotonic()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.stop_seconds = time.monotonic() - started
        self.returncode = self.process.returncode
        if self._reader is not None:
            self._reader.join(timeout=10)

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def all_problems(self) -> list[str]:
        return self.shutdown_problems() + [f"log {p.level}: {p.text}" for p in self.problems]

    def shutdown_problems(self) -> list[str]:
        found = []
        if self.killed:
            found.append(f"did not stop within {STOP_SECONDS:g} s of SIGTERM: SIGKILLed")
        elif self.returncode not in (None, CLEAN_EXIT):
            found.append(f"exited {self.returncode} after SIGTERM (expected {CLEAN_EXIT})")
        return found


def event_anomalies(events: dict[str, list[str]], ids: Sequence[str], limit: int = 10) -> list[str]:
    """Statuses logged twice as published for a job, and jobs left without an end, from the
    ``deploymentId -> statuses`` of one log (or of several processes' logs, joined).

    The log's order is not checked: a status is logged when the broker confirms it, and RabbitMQ
    may confirm a later message first (a persistent message that its consumer took at once is
    confirmed before one that waits for the queue's next disk sync: a job's ``succeeded`` was seen
    logged 245 ms before its ``dispatched``). The order on the wire is checked by the collector
    (``Collected.out_of_order``)."""
    repeated, unended = [], []
    for deployment_id in ids:
        statuses = events.get(deployment_id, [])
        twice = sorted({s for s in statuses if statuses.count(s) > 1})
        if twice:
            repeated.append(f"{deployment_id} {'/'.join(twice)} twice ({' -> '.join(statuses)})")
        if not any(status in TERMINAL for status in statuses):
            unended.append(f"{deployment_id} ({' -> '.join(statuses) or 'no event'})")
    found = []
    if repeated:
        found.append(
            f"the log shows {len(repeated)} job(s) with a status logged twice as published: "
            + "; ".join(repeated[:limit])
        )
    if unended:
        found.append(
            f"the log shows {len(unended)} job(s) without a terminal status: " + "; ".join(unended[:limit])
        )
    return found


def write_config(
    workdir: str,
    tag: str,
    *,
    url: str,
    queue_type: str,
    sinks: str,
    worker_command: str,
    extra: Sequence[str],
) -> str:
    """An INI config whose broker names, Redis key prefix and channel, state dir and port are its own."""
    base = f"bench_local.{tag}"
    sections: dict[str, dict[str, str]] = {
        "broker": {
            "url": url,
            "exchange": f"{base}.x",
            "execute_queue": f"{base}.execute",
            "dlq": f"{base}.dlq",
            "retry_queue_prefix": f"{base}.retry",
            "queue_type": queue_type,
        },
        "redis": {"url": "redis://127.0.0.1:6379/0", "key_prefix": base},
        "status": {"sinks": sinks, "queue": f"{base}.status", "redis_channel": f"{base}.status"},
        "launcher": {"default": "local"},
        "local": {"command": worker_command, "state_dir": os.path.join(workdir, "state")},
        "limits": {"max_concurrent": str(MAX_CONCURRENT)},
        "http": {"host": "127.0.0.1", "port": str(free_port())},
        # No load balancer here: exit once drained instead of holding /health at 503.
        "shutdown": {"unhealthy_hold_seconds": "0"},
    }
    for assignment in extra:
        dotted, _, value = assignment.partition("=")
        section, _, key = dotted.strip().partition(".")
        sections.setdefault(section, {})[key] = value.strip()
    path = os.path.join(workdir, "orchestrator.ini")
    with open(path, "w") as f:
        for section, values in sections.items():
            f.write(f"[{section}]\n")
            f.writelines(f"{key} = {value}\n" for key, value in values.items())
            f.write("\n")
    return path


def job_bodies(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` jobs in the backend's form, deploymentIds unique to this measurement."""
    out = []
    for i in range(count):
        deployment_id = f"{prefix}-{i}"
        body = json.dumps({**SEED_JOB, "deploymentId": deployment_id}, separators=(",", ":")).encode()
        out.append((deployment_id, body))
    return out


#: Where the orchestrator's packages are imported from (``--code snapshot``); empty: the live tree.
_CODE_DIRS: list[str] = []
#: Where ``orchestrator-base`` imports them from (``--base-code``).
_BASE_CODE_DIRS: list[str] = []
#: Workspaces to delete when the benchmark ends (:meth:`Workspace.close` says why not sooner).
_WORKSPACE_DIRS: list[str] = []


def snapshot_code(root: Path = ROOT) -> str:
    """Copy the working tree's ``orchestrator`` and ``actors`` packages (uncommitted changes included):
    every orchestrator process of the run imports this copy, so edits made to the tree while the
    benchmark runs (the tree is shared) cannot mix two versions of the code in one measurement.
    (``root``: another tree, the ``--base-code`` of an A/B; its copy is not the run's default.)"""
    target = tempfile.mkdtemp(prefix="bench-local-code-")
    for package in ("orchestrator", "actors"):
        shutil.copytree(
            root / package, os.path.join(target, package), ignore=shutil.ignore_patterns("__pycache__")
        )
    if root == ROOT:
        _CODE_DIRS.append(target)
    else:
        _BASE_CODE_DIRS.append(target)
    return target


def orchestrator_env(base: bool = False) -> dict[str, str]:
    """The environment of an orchestrator process: no ``ORCH_*`` overrides; the snapshot first on the
    path (with ``base``, the ``--base-code`` snapshot)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    code = _BASE_CODE_DIRS if base else _CODE_DIRS
    if code:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (code[-1], env.get("PYTHONPATH")) if p)
    return env


def code_version(root: Path = ROOT) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def validate_job_with_cli(body: bytes) -> None:
    """``orchestrator validate -`` must accept the benchmark's job."""
    env = orchestrator_env()
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", "-"],
        input=body,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"orchestrator validate refused the job: {result.stderr.decode(errors='replace')}")


def queue_depths(config: Config) -> dict[str, int]:
    """Messages left in the execute queue and the DLQ."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        return {
            name: int(channel.queue_declare(name, passive=True).method.message_count)
            for name in (config.broker.execute_queue, config.broker.dlq)
        }
    finally:
        connection.close()


def wait_status_queue_drained(config: Config, timeout: float = 10.0) -> None:
    """Until the collector has taken every event off the status queue (late duplicates included)."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        while channel.queue_declare(config.status.queue, passive=True).method.message_count:
            if time.monotonic() > deadline:
                break
            connection.sleep(0.05)
    finally:
        connection.close()
    time.sleep(SETTLE_SECONDS)


def wait_for_terminal(
    collector: StatusCollector,
    orchestrators: Sequence[OrchestratorProcess],
    count: int,
    timeout: float,
    what: str,
    stall: float | None = None,
) -> bool:
    """Poll the collector's live count until ``count`` jobs have a terminal event.

    False after ``timeout`` s, or once no job has ended for ``stall`` s (stuck jobs: no point waiting
    out the whole timeout).

    Raises:
        BenchError: an orchestrator or the collector died.
    """
    deadline = time.monotonic() + timeout
    progress, progress_at = collector.terminal, time.monotonic()
    while collector.terminal < count:
        now = time.monotonic()
        if collector.terminal != progress:
            progress, progress_at = collector.terminal, now
        elif stall is not None and now - progress_at > stall:
            return False
        for orchestrator in orchestrators:
            if not orchestrator.alive():
                raise BenchError(
                    f"{what}: an orchestrator exited ({orchestrator._code()}) with {collector.terminal} "
                    f"of {count} jobs ended:\n{orchestrator.tail()}"
                )
        if not collector._process.is_alive():
            raise BenchError(f"{what}: the status collector died")
        if time.monotonic() > deadline:
            return False
        time.sleep(WAIT_SLICE_SECONDS)
    return True


def check_outcomes(collected: Collected, ids: Sequence[str], what: str) -> list[str]:
    """Every job ``succeeded`` exactly once, nothing else: the errors found, if any."""
    errors = []
    expected = set(ids)
    ended, dispatched = set(collected.terminal_at), set(collected.dispatched_at)
    statuses = dict(collected.statuses)
    if ended != expected:
        missing = sorted(expected - ended)
        errors.append(
            f"{what}: {len(missing)} jobs without a terminal event ({', '.join(missing[:10])}), "
            f"{len(ended - expected)} unknown ones"
        )
    if dispatched != expected:
        errors.append(f"{what}: {len(expected - dispatched)} jobs without a dispatched event")
    if statuses.get("succeeded", 0) != len(expected):
        errors.append(f"{what}: {statuses.get('succeeded', 0)} succeeded events for {len(expected)} jobs")
    others = {
        s: c for s, c in statuses.items() if s in ("rejected", "failed", "stopped", "retrying", "timed_out")
    }
    if others:
        errors.append(f"{what}: events other than success: {others}")
    if collected.duplicates or collected.undecodable:
        errors.append(
            f"{what}: {collected.duplicates} duplicate and {collected.undecodable} undecodable status events"
        )
    if collected.out_of_order:
        errors.append(
            f"{what}: {collected.out_of_order} dispatched event(s) after their job's terminal event"
        )
    return errors


class BrokenPromiseError(BenchError):
    """The run went through but broke a promise (lost, duplicated or failed jobs)."""

    def __init__(self, errors: Sequence[str], problems: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.problems = list(problems)


@dataclass
class OrchestratorRun:
    """One orchestrator throughput run."""

    jobs: int
    seconds: float
    dispatch_seconds: float
    own_cpu_seconds: float
    children_cpu_seconds: float
    #: Context switches of the orchestrator processes' threads over the run.
    switches: int
    startup_seconds: float
    stop_seconds: float | None
    exit_code: int | None
    events: dict[str, int]
    log_lines: int
    problems: list[str]
    settings: dict[str, Any] = field(default_factory=dict)
    system: str = "orchestrator"
    #: RabbitMQ's CPU over the same window (every system's jobs cost the broker too).
    broker_cpu_seconds: float | None = None

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_ms_per_job(self) -> float:
        """The orchestrator's own CPU per job (the worker and its wrapper excluded)."""
        return 1000 * self.own_cpu_seconds / self.jobs

    @property
    def children_cpu_ms_per_job(self) -> float:
        return 1000 * self.children_cpu_seconds / self.jobs

    @property
    def broker_cpu_ms_per_job(self) -> float | None:
        return None if self.broker_cpu_seconds is None else 1000 * self.broker_cpu_seconds / self.jobs

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "jobs_per_second": self.jobs_per_second,
            "cpu_ms_per_job": self.cpu_ms_per_job,
            "children_cpu_ms_per_job": self.children_cpu_ms_per_job,
            "broker_cpu_ms_per_job": self.broker_cpu_ms_per_job,
            "dispatched_per_second": self.jobs / self.dispatch_seconds,
        }

    def line(self) -> str:
        return (
            f"{self.system:<22} {self.jobs} jobs in {self.seconds:.3f} s = "
            f"{self.jobs_per_second:8.1f} jobs/s, "
            f"CPU own {self.own_cpu_seconds:.2f} s ({self.cpu_ms_per_job:.2f} ms/job) + children "
            f"{self.children_cpu_seconds:.2f} s ({self.children_cpu_ms_per_job:.2f} ms/job), "
            f"{self.switches / self.jobs:.1f} context switches/job, "
            f"RabbitMQ {self.broker_cpu_ms_per_job or 0:.2f} ms/job, "
            f"startup {self.startup_seconds:.2f} s, stop {self.stop_seconds or 0:.2f} s, "
            f"exit {self.exit_code}"
        )


class Workspace:
    """A temp dir, a config and the orchestrator's names for one measurement; cleaned up at the end."""

    def __init__(self, args: argparse.Namespace, what: str, sinks: str) -> None:
        self.tag = f"{uuid.uuid4().hex[:10]}.{what}"
        self.dir = tempfile.mkdtemp(prefix=f"bench-local-{what}-")
        self.config_path = write_config(
            self.dir,
            self.tag,
            url=args.url,
            queue_type=args.queue_type,
            sinks=sinks,
            worker_command=args.worker_command,
            extra=args.orch_set,
        )
        self.config = load_config(self.config_path, environ={})
        self.log_path = os.path.join(self.dir, "orchestrator.log")
        self.keep = args.keep_logs
        self.clean_now = args.clean_each_round

    def close(self, had_problems: bool) -> None:
        """Delete the run's queues and keys now; its directory at the end of the benchmark.

        Not at once: on ext4 without a journal (these machines), creating a file scans past every
        inode of its block group deleted in the last 60 s (300 s while the inode table block is still
        dirty: the kernel's ``recently_deleted``), so deleting a round's thousands of task logs made
        the next rounds' orchestrator pay for the benchmark's own ``rm`` with each log it created
        (measured: 450–750 µs per create up to 100 s after such an ``rm``, 18 µs without one). The
        peers create no files, so only the orchestrator paid. ``--clean-each-round`` deletes at once,
        as before. (A benchmark started within 5 minutes of another's end still pays for that one's.)
        """
        clean_up(self.config)
        if self.keep or had_problems:
            print(f"{WARNING} kept {self.dir} (config, orchestrator.log, state)", flush=True)
        elif self.clean_now:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            _WORKSPACE_DIRS.append(self.dir)


def orchestrator_processes(space: Workspace, processes: int, base: bool = False) -> list[OrchestratorProcess]:
    """``processes`` orchestrators of one workspace's config, as supervisor.conf runs them: the first on
    the config's ``http.port``, each other on its own (``ORCH_HTTP_PORT``), each with its own log.
    ``base``: of the ``--base-code``."""
    return [
        OrchestratorProcess(
            space.config_path,
            space.log_path if i == 1 else space.log_path.replace(".log", f"-{i}.log"),
            space.dir,
            extra_env={} if i == 1 else {"ORCH_HTTP_PORT": str(free_port())},
            base=base,
        )
        for i in range(1, processes + 1)
    ]


def joined_events(orchestrators: Sequence[OrchestratorProcess]) -> dict[str, list[str]]:
    """Every process's ``deploymentId -> statuses``, joined (a job is normally one process's)."""
    events: dict[str, list[str]] = {}
    for orchestrator in orchestrators:
        for deployment_id, statuses in orchestrator.events.items():
            events.setdefault(deployment_id, []).extend(statuses)
    return events


def exit_code_of(orchestrators: Sequence[OrchestratorProcess]) -> int | None:
    """The first exit code of the processes that is not a clean one; else the first process's."""
    return next(
        (o.returncode for o in orchestrators if o.returncode != CLEAN_EXIT), orchestrators[0].returncode
    )


def stop_seconds_of(orchestrators: Sequence[OrchestratorProcess]) -> float:
    """How long the slowest process took to stop."""
    return max(orchestrator.stop_seconds or 0.0 for orchestrator in orchestrators)


def orchestrator_throughput(
    n: int, args: argparse.Namespace, round_no: int, system: str = "orchestrator"
) -> OrchestratorRun:
    """Preload n jobs, start the real process(es), time it from "consuming" to the n-th terminal event.

    With more than one process (``ORCHESTRATOR_PROCESSES``) they share one config, as supervisor.conf's
    do (each its own ``http.port`` through ``ORCH_HTTP_PORT``); the clock starts at the first
    "consuming" line and the CPU is the sum of each process's from its own "consuming" on.
    """
    processes = ORCHESTRATOR_PROCESSES[system]
    space = Workspace(args, f"r{round_no}", "amqp")
    orchestrators = orchestrator_processes(space, processes, base=system == "orchestrator-base")
    problems: list[str] = []
    failed = True
    try:
        bodies = job_bodies(f"bl-{space.tag.split('.')[0]}", n)
        declare(space.config)
        preload(space.config, bodies)
        with StatusCollector(space.config) as collector:
            try:
                for orchestrator in orchestrators:
                    orchestrator.start()
                startup = max(orchestrator.wait_consuming() for orchestrator in orchestrators)
                ended = wait_for_terminal(
                    collector, orchestrators, n, args.timeout, f"round {round_no}", args.stall_seconds
                )
                cpu_end = [orchestrator.cpu() for orchestrator in orchestrators]
                broker_end = broker_cpu()
                live = f"{collector.dispatched} dispatched and {collector.terminal} of {n} jobs ended"
            finally:
                for orchestrator in orchestrators:
                    orchestrator.stop()
            wait_status_queue_drained(space.config)
            collected = collector.finish()
        cpu_start = [o.cpu_at_consuming for o in orchestrators if o.cpu_at_consuming is not None]
        if len(cpu_start) < len(orchestrators):
            raise BenchError("could not read the orchestrator's CPU when it started consuming")
        cpu_spans = list(zip(cpu_start, cpu_end, strict=True))
        first = min(orchestrators, key=lambda o: o.consuming_at or math.inf)
        assert first.consuming_at is not None
        ids = [i for i, _ in bodies]
        what = f"round {round_no} {system}"
        errors = [] if ended else [f"{what}: {live}; none ended in the last {args.stall_seconds:g} s"]
        errors += check_outcomes(collected, ids, what)
        depths = queue_depths(space.config)
        if any(depths.values()):
            errors.append(f"{what}: messages left behind {depths}")
        for orchestrator in orchestrators:
            problems += orchestrator.all_problems()
        problems += event_anomalies(joined_events(orchestrators), ids)
        if errors:
            raise BrokenPromiseError(errors, problems)
        failed = False
        return OrchestratorRun(
            system=system,
            jobs=n,
            seconds=max(collected.terminal_at[i] for i in ids) - first.consuming_at,
            dispatch_seconds=max(collected.dispatched_at[i] for i in ids) - first.consuming_at,
            own_cpu_seconds=sum(end.own - start.own for start, end in cpu_spans),
            children_cpu_seconds=sum(end.children - start.children for start, end in cpu_spans),
            switches=sum(end.switches - start.switches for start, end in cpu_spans),
            broker_cpu_seconds=(
                None if first.broker_cpu_at_consuming is None else broker_end - first.broker_cpu_at_consuming
            ),
            startup_seconds=startup,
            stop_seconds=stop_seconds_of(orchestrators),
            exit_code=exit_code_of(orchestrators),
            events=dict(collected.statuses),
            log_lines=sum(orchestrator.lines for orchestrator in orchestrators),
            problems=problems,
            settings={
                "command": "python -m orchestrator.cli --log-format json --log-level INFO run --config FILE",
                "processes": processes,
                "clock": '"consuming <queue> (prefetch ...)" log line (the first process\'s) -> n-th '
                "terminal event at the collector",
                "local.command": args.worker_command,
                "limits.max_concurrent": MAX_CONCURRENT,
                "status.sinks": "amqp",
                "broker.queue_type": args.queue_type,
                "extra": list(args.orch_set),
            },
        )
    finally:
        if failed:
            for orchestrator in orchestrators:
                orchestrator.stop()
        space.close(had_problems=failed or bool(problems))


# --- latency -------------------------------------------------------------------------------------


class MachineSampler(threading.Thread):
    """Every SAMPLE_SECONDS: how much the machine kept the run waiting, and what the processes used.

    Per sample (one row): seconds since start; the CPU time the hypervisor gave to other guests
    (``steal`` of ``/proc/stat``, ms summed over the CPUs); the time runnable tasks waited for a CPU
    (``/proc/pressure/cpu``, ``some``: ms of the wall clock in which at least one did) and waited for I/O
    (``/proc/pressure/io``); the CPU ms of the orchestrator processes (their own) and of RabbitMQ. A
    slow stretch of jobs that lines up with steal or CPU pressure while the orchestrator used no more
    CPU than elsewhere was the machine; one that lines up with the orchestrator's own CPU was not.
    A source this kernel lacks reads as 0.
    """

    def __init__(self, pids: Callable[[], Sequence[int]]) -> None:
        super().__init__(name="machine-sampler", daemon=True)
        self._pids = pids
        #: RabbitMQ's processes, found once (a scan of /proc every sample would cost more than it reads).
        self._broker_pids: list[int] = []
        self.started_at = 0.0
        self.rows: list[list[float]] = []
        self._stop_requested = threading.Event()

    def _counters(self, pids: Sequence[int]) -> tuple[float, float, float, float, float]:
        steal = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/stat") as f:
            steal = 1000.0 * int(f.readline().split()[8]) / CLOCK_TICKS
        pressure = []
        for kind in ("cpu", "io"):
            value = 0.0
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/pressure/{kind}") as f:
                value = int(f.readline().rsplit("total=", 1)[1]) / 1000.0
            pressure.append(value)
        own = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, IndexError, ValueError):
                own += 1000.0 * cpu_seconds(pid)  # (not ProcCpu.read: no thread counts needed)
        return steal, pressure[0], pressure[1], own, 1000.0 * broker_cpu(self._broker_pids)

    def run(self) -> None:
        self._broker_pids = broker_pids()
        self.started_at = time.monotonic()
        before = self._counters(self._pids())
        while not self._stop_requested.wait(SAMPLE_SECONDS):
            now = self._counters(self._pids())
            at = time.monotonic() - self.started_at
            self.rows.append([round(at, 2), *(round(b - a, 1) for a, b in zip(before, now, strict=True))])
            before = now

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=5)

    def around(self, stretches: Sequence[tuple[float, float]]) -> dict[str, dict[str, float]]:
        """Per second, the columns' means over the samples that overlap ``stretches`` (from-to, seconds
        since start; a stretch of one slow job is one instant) and over the others."""
        names = ("steal_ms", "cpu_pressure_ms", "io_pressure_ms", "orchestrator_cpu_ms", "rabbitmq_cpu_ms")
        inside: list[list[float]] = []
        outside: list[list[float]] = []
        for row in self.rows:
            start, end = row[0] - SAMPLE_SECONDS, row[0]  # the sample covers (start, end]
            (inside if any(a <= end and start <= b for a, b in stretches) else outside).append(row[1:])

        def per_second(rows: list[list[float]]) -> dict[str, float]:
            if not rows:
                return {}
            return {n: sum(r[i] for r in rows) / len(rows) / SAMPLE_SECONDS for i, n in enumerate(names)}

        return {"slow": per_second(inside), "rest": per_second(outside), "samples": len(inside)}


class HealthPoller(threading.Thread):
    """GET /health every HEALTH_INTERVAL_SECONDS, one new connection per request (like a load balancer)."""

    def __init__(self, port: int) -> None:
        super().__init__(name="health-poller", daemon=True)
        self.port = port
        self.first_at = 0.0
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        #: (seconds since the first request, status, body) of the first answers other than 200.
        self.failures: list[tuple[float, str, str]] = []
        self._stop_requested = threading.Event()

    def run(self) -> None:
        next_at = self.first_at = time.monotonic()
        while not self._stop_requested.is_set():
            started = time.monotonic()
            status, body = "error", ""
            try:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=HEALTH_TIMEOUT_SECONDS
                )
                try:
                    connection.request("GET", "/health")
                    response = connection.getresponse()
                    body = response.read().decode("utf-8", "replace")
                    status = str(response.status)
                finally:
                    connection.close()
            except (OSError, http.client.HTTPException) as e:
                status, body = type(e).__name__, str(e)
            if status != "200" and len(self.failures) < MAX_HEALTH_FAILURES_KEPT:
                self.failures.append((started - self.first_at, status, body[:500]))
            self.latencies.append(time.monotonic() - started)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            next_at += HEALTH_INTERVAL_SECONDS
            self._stop_requested.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=HEALTH_TIMEOUT_SECONDS + 1)


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p99, max in milliseconds."""
    return {
        "p50_ms": 1000 * statistics.median(values),
        "p99_ms": 1000 * percentile(values, 0.99),
        "max_ms": 1000 * max(values),
    }


def slow_stretches(series: Sequence[Sequence[float]], gap: float = 1.0) -> list[tuple[float, float]]:
    """Where the slow jobs of a latency run were: from-to (seconds from the first publish) of runs of
    jobs whose publish->dispatched took SLOW_FACTOR times the median or more, joined across gaps shorter
    than ``gap`` s. ``series``: ``[published at, dispatched ms, terminal ms]`` per job."""
    if not series:
        return []
    median = statistics.median(row[1] for row in series)
    stretches: list[tuple[float, float]] = []
    for at, dispatched_ms, _ in series:
        if dispatched_ms < SLOW_FACTOR * median:
            continue
        if stretches and at - stretches[-1][1] < gap:
            stretches[-1] = (stretches[-1][0], at)
        else:
            stretches.append((at, at))
    return stretches


def machine_during_line(lat: dict[str, Any]) -> str:
    """The machine in the latency run's slow stretches against the rest of it."""
    machine = lat["machine"]
    stretches = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in lat["slow_stretches"]) or "none"

    def row(values: dict[str, float]) -> str:
        if not values:
            return "n/a"
        return ", ".join(f"{name} {value:.0f}" for name, value in values.items())

    return (
        f"machine per second: in the slow stretches ({stretches} s) {row(machine['slow'])}; "
        f"elsewhere {row(machine['rest'])}"
    )


def orchestrator_latency(args: argparse.Namespace, base: bool = False) -> dict[str, Any]:
    """``--latency-processes`` orchestrators (both sinks), a paced publisher, /health of the first
    polled meanwhile. ``base``: of the ``--base-code``."""
    space = Workspace(args, "latency", "amqp,redis")
    orchestrators = orchestrator_processes(space, args.latency_processes, base=base)
    count = round(args.rate * args.seconds)
    bodies = job_bodies(f"bl-{space.tag.split('.')[0]}", count)
    publisher = PacedPublisher(space.config, bodies, args.rate)
    poller = HealthPoller(space.config.http.port)
    sampler = MachineSampler(lambda: [o.pid for o in orchestrators if o.alive])
    failed = True
    problems: list[str] = []
    try:
        declare(space.config)
        with StatusCollector(space.config) as collector:
            try:
                for orchestrator in orchestrators:
                    orchestrator.start()
                startup = max(orchestrator.wait_consuming() for orchestrator in orchestrators)
                cpu_start = [o.cpu_at_consuming or o.cpu() for o in orchestrators]
                poller.start()
                sampler.start()
                publisher.start()
                publisher.join(args.seconds + args.timeout)
                if publisher.is_alive() or publisher.error is not None:
                    raise BenchError(f"the paced publisher failed: {publisher.error!r}")
                last_publish = max(publisher.published_at.values())
                left = max(0.0, last_publish + args.deadline - time.monotonic())
                kept_up = wait_for_terminal(collector, orchestrators, count, left, "latency")
                ended = kept_up or wait_for_terminal(
                    collector, orchestrators, count, args.timeout, "latency", args.stall_seconds
                )
                cpu_end = [orchestrator.cpu() for orchestrator in orchestrators]
                live = f"{collector.dispatched} dispatched and {collector.terminal} of {count} jobs ended"
            finally:
                poller.stop()
                sampler.stop()
                for orchestrator in orchestrators:
                    orchestrator.stop()
            wait_status_queue_drained(space.config)
            collected = collector.finish()
        ids = [i for i, _ in bodies]
        errors = [] if ended else [f"latency: {live}; none ended in the last {args.stall_seconds:g} s"]
        errors += check_outcomes(collected, ids, "latency")
        for orchestrator in orchestrators:
            problems += orchestrator.all_problems()
        problems += event_anomalies(joined_events(orchestrators), ids)
        problems += [
            f"/health answered {status} {at:.2f} s into the run: {body}"
            for at, status, body in poller.failures
        ]
        if errors:
            raise BrokenPromiseError(errors, problems)
        failed = False
        published = publisher.published_at
        dispatched = [collected.dispatched_at[i] - at for i, at in published.items()]
        terminal = [collected.terminal_at[i] - at for i, at in published.items()]
        last_end = max(collected.terminal_at[i] for i in ids)
        spans = list(zip(cpu_start, cpu_end, strict=True))
        first_publish = min(published.values())
        series = [
            [round(at - first_publish, 4), round(1000 * d, 2), round(1000 * t, 2)]
            for at, d, t in sorted(
                (at, collected.dispatched_at[i] - at, collected.terminal_at[i] - at)
                for i, at in published.items()
            )
        ]
        offset = first_publish - sampler.started_at
        stretches = [(a + offset, b + offset) for a, b in slow_stretches(series)]
        return {
            "processes": args.latency_processes,
            "jobs": count,
            "offered_rate": len(published) / publisher.elapsed if publisher.elapsed else float("nan"),
            "publisher_lag_ms": 1000 * publisher.lag,
            "dispatched": spread(dispatched),
            #: Per job, in publish order: seconds from the first publish, then ms to dispatched and
            #: to terminal (to see whether the slow ones cluster in time: ``--json``).
            "series": series,
            #: Stretches (seconds from the first publish) of jobs SLOW_FACTOR x slower than the median,
            #: and what the machine did in them and outside them (MachineSampler; rows in "samples").
            "slow_stretches": [[round(a - offset, 2), round(b - offset, 2)] for a, b in stretches],
            "machine": sampler.around(stretches),
            "samples": sampler.rows,
            "terminal": spread(terminal),
            "health": spread(poller.latencies)
            | {"requests": len(poller.latencies), "statuses": poller.statuses, "failures": poller.failures},
            "kept_up": kept_up,
            "deadline_seconds": args.deadline,
            "last_end_after_last_publish_seconds": last_end - last_publish,
            "own_cpu_ms_per_job": 1000 * sum(end.own - start.own for start, end in spans) / count,
            "children_cpu_ms_per_job": 1000
            * sum(end.children - start.children for start, end in spans)
            / count,
            "switches_per_job": sum(end.switches - start.switches for start, end in spans) / count,
            "startup_seconds": startup,
            "stop_seconds": stop_seconds_of(orchestrators),
            "exit_code": exit_code_of(orchestrators),
            "events": dict(collected.statuses),
            "problems": problems,
            "settings": {
                "status.sinks": "amqp,redis",
                "local.command": args.worker_command,
                "processes": args.latency_processes,
            },
        }
    finally:
        if failed:
            for orchestrator in orchestrators:
                orchestrator.stop()
        space.close(had_problems=failed or bool(problems))


# --- the report ------------------------------------------------------------------------------------

Result: TypeAlias = PeerResult | OrchestratorRun


def rates_by_system(results: Sequence[tuple[int, Result]]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for _, result in results:
        found.setdefault(result.system, []).append(result.jobs_per_second)
    return found


def summarize(results: Sequence[tuple[int, Result]], latency: dict[str, Any] | None) -> dict[str, Any]:
    rates = rates_by_system(results)
    systems = {
        system: {"median": statistics.median(r), "min": min(r), "max": max(r), "rounds": len(r)}
        for system, r in rates.items()
    }
    per_system_cpu: dict[str, list[float]] = {}
    per_system_children: dict[str, list[float]] = {}
    for _, result in results:
        if result.cpu_ms_per_job is not None:
            per_system_cpu.setdefault(result.system, []).append(result.cpu_ms_per_job)
        if isinstance(result, OrchestratorRun):
            per_system_children.setdefault(result.system, []).append(result.children_cpu_ms_per_job)
    for system, values in per_system_cpu.items():
        systems[system]["cpu_ms_per_job_median"] = statistics.median(values)
    for system, values in per_system_children.items():
        systems[system]["children_cpu_ms_per_job_median"] = statistics.median(values)

    by_round: dict[int, dict[str, float]] = {}
    for round_no, result in results:
        by_round.setdefault(round_no, {})[result.system] = result.jobs_per_second
    ratios: dict[str, Any] = {}
    for orch in ORCHESTRATOR_PROCESSES:
        ratios.update(ratios_to_peers(orch, systems, by_round))
    floor = ratios_to_peers("raw", systems, by_round)
    return {
        "systems": systems,
        "ratios": ratios,
        "floor": floor,
        "latency": latency,
        "a_b": a_b_rounds(results),
    }


#: (label, peer system, target ratio) of every ratio the issue asks for.
PEER_TARGETS: Final = (
    ("celery", "celery", TARGET_CELERY),
    ("dramatiq", "dramatiq", TARGET_DRAMATIQ),
    ("ceiling", "spawn:posix_spawn", TARGET_CEILING),
)


def ratios_to_peers(
    system: str, systems: dict[str, dict[str, Any]], by_round: dict[int, dict[str, float]]
) -> dict[str, Any]:
    """``system``'s jobs/s against each peer's: of the medians, per round, and the target."""
    ratios: dict[str, Any] = {}
    for label, peer, target in PEER_TARGETS:
        if system in systems and peer in systems:
            per_round = [r[system] / r[peer] for r in by_round.values() if system in r and peer in r]
            ratios[f"{system}/{label}"] = {
                "of_medians": systems[system]["median"] / systems[peer]["median"],
                "per_round": per_round,
                "target": target,
            }
    return ratios


def a_b_rounds(results: Sequence[tuple[int, Result]]) -> list[dict[str, float]]:
    """Per round with both: ``orchestrator`` (the tree) against ``orchestrator-base`` (``--base-code``)."""
    runs: dict[int, dict[str, OrchestratorRun]] = {}
    for round_no, result in results:
        if isinstance(result, OrchestratorRun) and result.system in ("orchestrator", "orchestrator-base"):
            runs.setdefault(round_no, {})[result.system] = result
    rows = []
    for round_no, pair in sorted(runs.items()):
        if len(pair) == 2:
            new, base = pair["orchestrator"], pair["orchestrator-base"]
            rows.append(
                {
                    "round": round_no,
                    "cpu_ms_per_job": new.cpu_ms_per_job,
                    "base_cpu_ms_per_job": base.cpu_ms_per_job,
                    "switches_per_job": new.switches / new.jobs,
                    "base_switches_per_job": base.switches / base.jobs,
                    "jobs_per_second": new.jobs_per_second,
                    "base_jobs_per_second": base.jobs_per_second,
                }
            )
    return rows


def a_b_lines(rows: Sequence[dict[str, float]]) -> list[str]:
    """The A/B's rounds, then how many of them the tree won on CPU per job."""
    lines = [
        f"A/B round {row['round']:.0f}: CPU {row['cpu_ms_per_job']:.2f} against "
        f"{row['base_cpu_ms_per_job']:.2f} ms/job, {row['switches_per_job']:.1f} against "
        f"{row['base_switches_per_job']:.1f} context switches/job, "
        f"{row['jobs_per_second']:.0f} against {row['base_jobs_per_second']:.0f} jobs/s"
        for row in rows
    ]
    if rows:
        won = sum(row["cpu_ms_per_job"] < row["base_cpu_ms_per_job"] for row in rows)
        ratio = statistics.median(row["cpu_ms_per_job"] / row["base_cpu_ms_per_job"] for row in rows)
        lines.append(
            f"A/B: the tree used less CPU per job in {won} of {len(rows)} rounds; median ratio {ratio:.3f}"
        )
    return lines


def target_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for name, ratio in summary["ratios"].items():
        mark = SUCCESS if ratio["of_medians"] >= ratio["target"] else WARNING
        rounds = ", ".join(f"{r:.2f}" for r in ratio["per_round"])
        lines.append(
            f"{mark} {name} = {ratio['of_medians']:.2f} (medians; per round {rounds}) "
            f"target >= {ratio['target']:g}"
        )
    for name, ratio in summary.get("floor", {}).items():
        rounds = ", ".join(f"{r:.2f}" for r in ratio["per_round"])
        reach = "reaches" if ratio["of_medians"] >= ratio["target"] else "does not reach"
        lines.append(
            f"{PROGRESS} floor: {name} = {ratio['of_medians']:.2f} (per round {rounds}): the same work in "
            f"plain pika with no framework {reach} the {ratio['target']:g}x asked of the orchestrator"
        )
    for system in ORCHESTRATOR_PROCESSES:
        orch = summary["systems"].get(system)
        if orch is None or "cpu_ms_per_job_median" not in orch:
            continue
        cpu = orch["cpu_ms_per_job_median"]
        mark = SUCCESS if cpu <= TARGET_CPU_MS else WARNING
        lines.append(
            f"{mark} {system} CPU = {cpu:.2f} ms/job (own, median; its children "
            f"{orch.get('children_cpu_ms_per_job_median', float('nan')):.2f} ms/job) "
            f"target <= {TARGET_CPU_MS:g}"
        )
    latency = summary.get("latency")
    if latency:
        for key, label, target in (
            ("dispatched", "p99 publish -> dispatched", TARGET_DISPATCHED_P99_MS),
            ("terminal", "p99 publish -> terminal", TARGET_TERMINAL_P99_MS),
            ("health", "/health p99", TARGET_HEALTH_P99_MS),
        ):
            value = latency[key]["p99_ms"]
            mark = SUCCESS if value < target else WARNING
            lines.append(
                f"{mark} {label} = {value:.1f} ms at {latency['offered_rate']:.0f} jobs/s "
                f"(target < {target:g})"
            )
        mark = SUCCESS if latency["kept_up"] else WARNING
        lines.append(
            f"{mark} kept up: {latency['kept_up']} (last job ended "
            f"{latency['last_end_after_last_publish_seconds']:.2f} s "
            f"after the last publish; deadline {latency['deadline_seconds']:g} s)"
        )
    return lines


def latency_line(lat: dict[str, Any]) -> str:
    """The latency run's other figures, in one line."""
    health = lat["health"]
    return (
        f"latency: {lat['jobs']} jobs to {lat['processes']} process(es), "
        f"offered {lat['offered_rate']:.1f} jobs/s "
        f"(publisher lag {lat['publisher_lag_ms']:.1f} ms), /health {health['requests']} requests "
        f"{health['statuses']}, orchestrator CPU {lat['own_cpu_ms_per_job']:.2f} ms/job "
        f"+ children {lat['children_cpu_ms_per_job']:.2f} ms/job, "
        f"{lat['switches_per_job']:.1f} context switches/job, "
        f"stop {lat['stop_seconds']:.2f} s, exit {lat['exit_code']}"
    )


def plot(path: str, summary: dict[str, Any], machine_line: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = summary["systems"]
    latency = summary.get("latency")
    columns = 2 if latency else 1
    fig, axes = plt.subplots(1, columns, figsize=(7 * columns, 5), squeeze=False)
    ax = axes[0][0]
    names = list(systems)
    medians = [systems[s]["median"] for s in names]
    low = [systems[s]["median"] - systems[s]["min"] for s in names]
    high = [systems[s]["max"] - systems[s]["median"] for s in names]
    colors = ["tab:red" if s in ORCHESTRATOR_PROCESSES else "tab:gray" for s in names]
    bars = ax.bar(names, medians, yerr=[low, high], capsize=5, color=colors)
    for bar, value in zip(bars, medians, strict=True):
        ax.annotate(f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    ax.set_ylabel("jobs/s (median; bars: min-max over rounds)")
    ax.set_title("Throughput: true, local, 1 job = spawn + confirmed events")
    ax.tick_params(axis="x", rotation=20)
    if latency:
        ax = axes[0][1]
        groups = [
            ("dispatched", "publish->dispatched"),
            ("terminal", "publish->terminal"),
            ("health", "/health"),
        ]
        stats = [("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")]
        width = 0.25
        for j, (key, label) in enumerate(stats):
            values = [latency[g][key] for g, _ in groups]
            xs = [i + (j - 1) * width for i in range(len(groups))]
            ax.bar(xs, values, width, label=label)
        targets = [TARGET_DISPATCHED_P99_MS, TARGET_TERMINAL_P99_MS, TARGET_HEALTH_P99_MS]
        for i, target in enumerate(targets):
            ax.hlines(target, i - 1.5 * width, i + 1.5 * width, colors="black", linestyles="dashed")
        ax.set_xticks(range(len(groups)), [label for _, label in groups])
        ax.set_yscale("log")
        ax.set_ylabel("ms (dashed: p99 target)")
        ax.set_title(
            f"Orchestrator latency at {latency['offered_rate']:.0f} jobs/s offered "
            f"({latency.get('processes', 1)} process(es))"
        )
        ax.legend()
    fig.suptitle(machine_line, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command line ---------------------------------------------------------------------------------


def report_problems(where: str, found: Sequence[str], into: list[str]) -> None:
    """Print the orchestrator's problems of one run and keep them for the summary and the JSON."""
    for problem in found:
        into.append(f"{where}: {problem}")
        print(f"{WARNING}   orchestrator ({where}): {problem}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="jobs per throughput run (default 1500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--systems",
        default=",".join(s for s in SYSTEMS if s != "orchestrator-base"),
        help=f"comma-separated subset of {SYSTEMS}",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--rate", type=float, default=200.0, help="latency: offered jobs/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency: how long it is offered")
    parser.add_argument(
        "--latency-rounds",
        type=int,
        default=2,
        help="with --base-code: pairs of latency runs, the tree's and the base's (default 2)",
    )
    parser.add_argument(
        "--latency-processes",
        type=int,
        default=1,
        choices=(1, 2),
        help="latency: orchestrator processes (2: as supervisor.conf deploys them)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=10.0,
        help="latency: kept up if every job ended this long after the last publish",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="longest wait for a run's jobs (then: error)"
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=30.0,
        help="a run whose jobs stop ending for this long has stuck jobs (an error); limits.poll_seconds "
        "is 10",
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument(
        "--queue-type", choices=("classic", "quorum"), default="classic", help="every system's queues"
    )
    parser.add_argument(
        "--worker-command",
        default=shutil.which("true") or "true",
        help="local.command (default: true's path; a bare `true` is a builtin of sh and spawns nothing)",
    )
    parser.add_argument(
        "--orch-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="more orchestrator config",
    )
    parser.add_argument(
        "--code",
        choices=("snapshot", "live"),
        default="snapshot",
        help="snapshot (default): the orchestrator processes import a copy of orchestrator/ and actors/ "
        "taken at the start; live: the tree itself (edits made meanwhile then reach later rounds)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep each orchestrator's temp dir")
    parser.add_argument(
        "--base-code",
        metavar="TREE",
        help="an A/B in one run: also measure one process of TREE's orchestrator/ and actors/ (a git "
        "worktree of the commit before, say) as orchestrator-base, in every round beside orchestrator "
        "(the two swap places every other round)",
    )
    parser.add_argument(
        "--clean-each-round",
        action="store_true",
        help="delete each run's temp dir when the run ends, not when the benchmark does (the next "
        "round's file creations then scan past the deleted inodes: Workspace.close)",
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw throughput and latency (matplotlib, Agg)")
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {SYSTEMS}")
    if args.base_code:
        if not (Path(args.base_code) / "orchestrator").is_dir():
            parser.error(f"--base-code {args.base_code}: no orchestrator/ package there")
        if "orchestrator-base" not in args.systems:
            at = args.systems.index("orchestrator") + 1 if "orchestrator" in args.systems else 0
            args.systems.insert(at, "orchestrator-base")
    elif "orchestrator-base" in args.systems:
        parser.error("orchestrator-base needs --base-code TREE")
    if args.n < 1 or args.rounds < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--n, --rounds, --rate and --seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    box = machine()
    machine_line = (
        f"{box['nproc']} CPUs ({box['cpu_model']}), {box['kernel']}, Python {box['python']}, "
        f"load {', '.join(str(x) for x in box['load_average'])}"
    )
    print(f"{PROGRESS} machine: {machine_line}", flush=True)
    code = f"the live tree {ROOT}"
    if args.code == "snapshot":
        code = f"a copy of the working tree at {code_version()} in {snapshot_code()}"
    print(f"{PROGRESS} orchestrator code: {code}", flush=True)
    if args.base_code:
        base = Path(args.base_code).absolute()
        print(
            f"{PROGRESS} orchestrator-base code: a copy of {base} at {code_version(base)} in "
            f"{snapshot_code(base)}",
            flush=True,
        )
    try:
        print(f"{PROGRESS} {describe_environment()}", flush=True)
        validate_job_with_cli(job_bodies("bl-check", 1)[0][1])
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        print(f"{FAILURE} {e}", flush=True)
        return 1
    try:
        return measure_all(args, box, machine_line, code)
    finally:
        for directory in _WORKSPACE_DIRS + _CODE_DIRS + _BASE_CODE_DIRS:
            shutil.rmtree(directory, ignore_errors=True)


def run_latency(
    args: argparse.Namespace, base: bool, errors: list[str], problems: list[str]
) -> dict[str, Any] | None:
    """One latency run, printed; None (and the error noted) when it failed."""
    try:
        latency = orchestrator_latency(args, base=base)
    except BrokenPromiseError as e:
        errors.append(str(e))
        print(f"{FAILURE} {e}", flush=True)
        report_problems("latency", e.problems, problems)
        return None
    except (BenchError, pika.exceptions.AMQPError, redis.RedisError, OSError) as e:
        errors.append(f"latency: {e}")
        print(f"{FAILURE} latency: {e}", flush=True)
        return None
    for key in ("dispatched", "terminal", "health"):
        s = latency[key]
        print(
            f"latency {key:<10} p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  "
            f"max {s['max_ms']:7.1f} ms",
            flush=True,
        )
    print(latency_line(latency), flush=True)
    print(machine_during_line(latency), flush=True)
    report_problems("latency", latency["problems"], problems)
    return latency


def latency_figures(latency: dict[str, Any]) -> dict[str, float]:
    """What an A/B of latency runs compares."""
    return {
        "dispatched_p50_ms": latency["dispatched"]["p50_ms"],
        "dispatched_p99_ms": latency["dispatched"]["p99_ms"],
        "terminal_p99_ms": latency["terminal"]["p99_ms"],
        "cpu_ms_per_job": latency["own_cpu_ms_per_job"],
        "switches_per_job": latency["switches_per_job"],
    }


def latency_a_b_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The latency A/B's runs, in the order run."""
    return [
        f"latency A/B pair {row['pair']} {row['system']:<18}: CPU {row['cpu_ms_per_job']:.2f} ms/job, "
        f"{row['switches_per_job']:.1f} context switches/job, dispatched p50 {row['dispatched_p50_ms']:.1f} "
        f"p99 {row['dispatched_p99_ms']:.1f} ms, terminal p99 {row['terminal_p99_ms']:.1f} ms"
        for row in rows
    ]


def measure_all(args: argparse.Namespace, box: dict[str, Any], machine_line: str, code: str) -> int:
    started = time.monotonic()
    print(
        f"{PROGRESS} n={args.n}, rounds={args.rounds}, systems={args.systems}, queues {args.queue_type}, "
        f"local.command={args.worker_command!r}",
        flush=True,
    )

    runners: dict[str, Callable[[int], list[Result]]] = {
        "celery": lambda _r: [
            celery_baseline(args.n, 4, url=args.url, queue_type=args.queue_type, timeout=args.timeout)
        ],
        "dramatiq": lambda _r: [
            dramatiq_baseline(args.n, 2, 4, url=args.url, queue_type=args.queue_type, timeout=args.timeout)
        ],
        "raw": lambda _r: [
            raw_baseline(args.n, 4, url=args.url, queue_type=args.queue_type, timeout=args.timeout)
        ],
        "spawn": lambda _r: list(bare_spawn_ceiling(args.n)),
        "orchestrator": lambda r: [orchestrator_throughput(args.n, args, r)],
        "orchestrator-x2": lambda r: [orchestrator_throughput(args.n, args, r, "orchestrator-x2")],
        "orchestrator-base": lambda r: [orchestrator_throughput(args.n, args, r, "orchestrator-base")],
    }
    results: list[tuple[int, Result]] = []
    errors: list[str] = []
    problems: list[str] = []
    missing: set[str] = set()
    for round_no in range(1, args.rounds + 1):
        systems = list(args.systems)
        if round_no % 2 == 0 and {"orchestrator", "orchestrator-base"} <= set(systems):
            # An A/B: the two swap places every other round (neither always runs first).
            i, j = systems.index("orchestrator"), systems.index("orchestrator-base")
            systems[i], systems[j] = systems[j], systems[i]
        for system in systems:
            if system in missing:
                continue
            try:
                measured = runners[system](round_no)
            except MissingDependencyError as e:
                errors.append(f"{system}: {e}")
                print(f"{FAILURE} round {round_no} {system}: {e}", flush=True)
                missing.add(system)
                continue
            except BrokenPromiseError as e:
                errors.append(str(e))
                print(f"{FAILURE} {e}", flush=True)
                report_problems(f"round {round_no}", e.problems, problems)
                continue
            except (BenchError, pika.exceptions.AMQPError, redis.RedisError, OSError, RuntimeError) as e:
                errors.append(f"round {round_no} {system}: {e}")
                print(f"{FAILURE} round {round_no} {system}: {e}", flush=True)
                continue
            for result in measured:
                print(f"round {round_no} {result.line()}", flush=True)
                results.append((round_no, result))
                if isinstance(result, OrchestratorRun):
                    report_problems(f"round {round_no}", result.problems, problems)

    latency: dict[str, Any] | None = None
    latency_a_b: list[dict[str, Any]] = []
    if not args.skip_latency and "orchestrator" in args.systems:
        # With --base-code, --latency-rounds pairs of runs: the tree's and the base's, swapping order.
        pairs = args.latency_rounds if args.base_code else 1
        for pair in range(pairs):
            codes = [False, True] if args.base_code else [False]
            for base in codes if pair % 2 == 0 else codes[::-1]:
                label = "orchestrator-base" if base else "orchestrator"
                print(
                    f"{PROGRESS} latency ({label}): {args.rate:g} jobs/s offered for {args.seconds:g} s to "
                    f"{args.latency_processes} process(es), both sinks, /health polled",
                    flush=True,
                )
                measured = run_latency(args, base, errors, problems)
                if measured is None:
                    continue
                if args.base_code:
                    latency_a_b.append({"system": label, "pair": pair + 1, **latency_figures(measured)})
                if not base and latency is None:
                    latency = measured
        for line in latency_a_b_lines(latency_a_b):
            print(line, flush=True)

    summary = summarize(results, latency)
    print("\nsummary (medians over rounds):")
    for system, s in summary["systems"].items():
        cpu = s.get("cpu_ms_per_job_median")
        cpu_text = "" if cpu is None else f", CPU {cpu:.2f} ms/job"
        if "children_cpu_ms_per_job_median" in s:
            cpu_text += f" (own) + {s['children_cpu_ms_per_job_median']:.2f} ms/job (children)"
        print(
            f"  {system:<22} {s['median']:8.1f} jobs/s (min {s['min']:.1f}, max {s['max']:.1f}, "
            f"{s['rounds']} rounds){cpu_text}"
        )
    for line in a_b_lines(summary["a_b"]):
        print(line)
    print("targets (reported, not asserted):")
    for line in target_lines(summary):
        print(f"  {line}")
    if problems:
        print(f"{WARNING} {len(problems)} problem(s) of the orchestrator seen (above)")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"took {time.monotonic() - started:.0f} s; load average at the end {load}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": box,
                    "orchestrator_code": code,
                    "args": {k: v for k, v in vars(args).items()},
                    "results": [{"round": r, **result.as_dict()} for r, result in results],
                    "summary": summary,
                    "latency_a_b": latency_a_b,
                    "problems": problems,
                    "errors": errors,
                },
                f,
                indent=2,
            )
    if args.plot and results:
        plot(args.plot, summary, machine_line)
    if errors:
        print(f"{FAILURE} {len(errors)} error(s):")
        for error in errors:
            print(f"  {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
