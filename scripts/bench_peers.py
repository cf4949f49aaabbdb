#!/usr/bin/env python3
"""Peer baselines for the local launcher benchmark: Celery, Dramatiq and the bare spawn ceiling.

Usage: .venv/bin/python scripts/bench_peers.py [--n 1500] [--rounds 3] [--systems celery,dramatiq,raw,spawn]
(needs the bench extra: ``.venv/bin/pip install -e '.[bench]'``)

Every system does the same work per job (``peers/common.py``): a JSON job, published persistent to a
durable queue of the run's own, is decoded and validated; ``true`` is launched as a local process and
waited for; two status events (``dispatched``, ``succeeded``) are published persistent to a status queue
of the run's own, each with a blocking publisher confirm (pika, one connection per worker process and
thread); the job is acked after that (acks late).

The clock runs from the moment the worker starts consuming (a ready file written by the peer's own
hook: Celery's ``worker_ready`` signal, sent right after ``basic_consume``; Dramatiq's
``after_worker_boot``, once its consumer and worker threads are started) to the arrival of the last
``succeeded`` event at a status collector (a thread of this process with its own pika connection). The
jobs are preloaded before the worker starts; that is not timed.

``raw`` is the floor: the same work in plain pika with no framework (``peers/raw_worker.py``).

Import it from ``scripts/`` (``bench_local.py`` does): :func:`celery_baseline`,
:func:`dramatiq_baseline`, :func:`raw_baseline` and :func:`bare_spawn_ceiling` return
:class:`PeerResult` objects. Celery and Dramatiq are imported only inside the functions; without them
:class:`MissingDependencyError` says what to install.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
if SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, SCRIPTS_DIR)

import pika  # noqa: E402
from peers import common  # noqa: E402
from peers.common import DEFAULT_URL, job_body  # noqa: E402

__all__ = [
    "DEFAULT_URL",
    "MissingDependencyError",
    "PeerResult",
    "bare_spawn_ceiling",
    "celery_baseline",
    "dramatiq_baseline",
    "job_body",
    "raw_baseline",
    "spawn_posix_spawn",
    "spawn_subprocess_run",
]

INSTALL_HINT = "pip install -e '.[bench]'  (from /work/main: .venv/bin/pip install -e '.[test,bench]')"
#: How long a worker may take from its start to its ready file.
STARTUP_TIMEOUT = 60.0
#: How long a worker may take to stop after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT = 20.0


class MissingDependencyError(RuntimeError):
    """A peer's package is not installed."""


@dataclass(frozen=True)
class PeerResult:
    """One measured run of one system.

    ``seconds`` is the timed window (see ``clock``); ``cpu_seconds`` is the CPU (user + system) that the
    system's processes used in that window, the ``true`` children included; ``None`` where it could not
    be measured.
    """

    system: str
    jobs: int
    seconds: float
    cpu_seconds: float | None
    #: What the timed window starts at, e.g. ``"worker ready (celery worker_ready signal)"``.
    clock: str
    #: From starting the worker process to its ready hook (not timed in ``seconds``).
    startup_seconds: float | None = None
    #: CPU of the worker's whole process tree over its life, startup and shutdown included
    #: (``getrusage(RUSAGE_CHILDREN)``); ``None`` if it had to be SIGKILLed.
    cpu_seconds_total: float | None = None
    #: The whole call: queue setup, preload, startup, the run, shutdown and cleanup.
    wall_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else float("inf")

    @property
    def cpu_ms_per_job(self) -> float | None:
        return None if self.cpu_seconds is None else 1000.0 * self.cpu_seconds / self.jobs

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "jobs_per_second": self.jobs_per_second,
            "cpu_ms_per_job": self.cpu_ms_per_job,
        }

    def line(self) -> str:
        cpu = "n/a" if self.cpu_seconds is None else f"{self.cpu_seconds:.2f}"
        per_job = "" if self.cpu_ms_per_job is None else f" ({self.cpu_ms_per_job:.2f} ms/job)"
        startup = "" if self.startup_seconds is None else f", startup {self.startup_seconds:.2f} s"
        return (
            f"{self.system:<22} {self.jobs} jobs in {self.seconds:.3f} s = "
            f"{self.jobs_per_second:8.1f} jobs/s, "
            f"CPU {cpu} s{per_job}{startup}, call {self.wall_seconds:.1f} s"
            + (f" [{self.settings['note']}]" if "note" in self.settings else "")
        )


# --- process CPU from /proc -------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime + stime + cutime + cstime in seconds) for every process we can read."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] is the state (field 3 of proc(5)): ppid is field 4, utime..cstime are fields 14..17.
        ppid = int(fields[1])
        ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry)] = (ppid, ticks / _CLOCK_TICKS)
    return table


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and its descendants, by pid (waited-for children's CPU included)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, ()))
    return found


def _cpu_between(start: dict[int, float], end: dict[int, float]) -> float:
    return sum(cpu - start.get(pid, 0.0) for pid, cpu in end.items())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- broker helpers ---------------------------------------------------------------------------------


def _connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def _declare_status_queue(url: str, queue: str, queue_type: str) -> None:
    connection = _connect(url)
    try:
        connection.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": queue_type})
    finally:
        connection.close()


def _queue_depth(url: str, queue: str) -> int:
    connection = _connect(url)
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def _wait_for_depth(url: str, queue: str, n: int, timeout: float = 30.0) -> None:
    """Wait until the preloaded jobs are all in the queue (a publisher without confirms may lag)."""
    deadline = time.monotonic() + timeout
    depth = _queue_depth(url, queue)
    while depth < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"preload: {depth} of {n} jobs in {queue} after {timeout:.0f} s")
        time.sleep(0.05)
        depth = _queue_depth(url, queue)


def _delete(url: str, queues: Iterable[str], exchanges: Iterable[str] = ()) -> None:
    """Delete what a run declared; each on its own channel, so one failure does not stop the rest."""
    try:
        connection = _connect(url)
    except pika.exceptions.AMQPError as exc:
        print(f"cleanup: cannot connect to delete {list(queues)}: {exc}", file=sys.stderr)
        return
    try:
        for queue in queues:
            try:
                connection.channel().queue_delete(queue)
            except pika.exceptions.ChannelClosed as exc:
                print(f"cleanup: queue {queue}: {exc}", file=sys.stderr)
        for exchange in exchanges:
            try:
                connection.channel().exchange_delete(exchange)
            except pika.exceptions.ChannelClosed as exc:
                print(f"cleanup: exchange {exchange}: {exc}", file=sys.stderr)
    finally:
        connection.close()


class StatusCollector(threading.Thread):
    """Consumes the status queue on its own pika connection; notes when the n-th job has succeeded."""

    def __init__(self, url: str, queue: str, n: int) -> None:
        super().__init__(name=f"status-collector-{queue}", daemon=True)
        self.url, self.queue, self.n = url, queue, n
        self.consuming = threading.Event()
        self.done = threading.Event()
        self._stop_requested = threading.Event()
        self.succeeded: set[str] = set()
        self.counts: dict[str, int] = {}
        self.first_event_at: float | None = None
        self.last_succeeded_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            connection = _connect(self.url)
            try:
                channel = connection.channel()
                channel.basic_consume(self.queue, self._on_message, auto_ack=True)
                self.consuming.set()
                while not self._stop_requested.is_set():
                    connection.process_data_events(time_limit=0.05)
            finally:
                connection.close()
        except BaseException as exc:
            self.error = exc
            self.consuming.set()
            self.done.set()

    def _on_message(self, _channel: Any, _method: Any, _properties: Any, body: bytes) -> None:
        now = time.monotonic()
        if self.first_event_at is None:
            self.first_event_at = now
        event = json.loads(body)
        status = event.get("status", "?")
        self.counts[status] = self.counts.get(status, 0) + 1
        if status == "succeeded":
            self.succeeded.add(event["deploymentId"])
            if len(self.succeeded) == self.n and not self.done.is_set():
                self.last_succeeded_at = now
                self.done.set()

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=10)


def _stop_worker(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM the worker's process group, SIGKILL it after STOP_TIMEOUT. True if it stopped on SIGTERM."""
    if process.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
        graceful = True
    except subprocess.TimeoutExpired:
        graceful = False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    process.wait()
    return graceful


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _run_worker_system(
    *,
    system: str,
    n: int,
    url: str,
    job_queue: str,
    status_queue: str,
    queue_type: str,
    argv: list[str],
    env: dict[str, str],
    preload: Callable[[], None],
    clock: str,
    cleanup_queues: list[str],
    cleanup_exchanges: list[str],
    settings: dict[str, Any],
    timeout: float | None,
) -> PeerResult:
    """Preload, start the worker, time it from its ready file to the n-th ``succeeded``, clean up."""
    run_timeout = timeout if timeout is not None else 60.0 + 0.1 * n
    workdir = tempfile.mkdtemp(prefix=f"bench-peers-{system}-")
    ready_dir = os.path.join(workdir, "ready")
    os.mkdir(ready_dir)
    log_path = os.path.join(workdir, "worker.log")
    collector: StatusCollector | None = None
    process: subprocess.Popen[bytes] | None = None
    try:
        _declare_status_queue(url, status_queue, queue_type)
        preload()
        _wait_for_depth(url, job_queue, n)

        collector = StatusCollector(url, status_queue, n)
        collector.start()
        if not collector.consuming.wait(10) or collector.error is not None:
            raise RuntimeError(f"status collector did not start: {collector.error!r}")

        worker_env = {
            **os.environ,
            **env,
            common.ENV_URL: url,
            common.ENV_JOB_QUEUE: job_queue,
            common.ENV_STATUS_QUEUE: status_queue,
            common.ENV_READY_DIR: ready_dir,
            common.ENV_QUEUE_TYPE: queue_type,
            "PYTHONPATH": os.pathsep.join(p for p in (SCRIPTS_DIR, os.environ.get("PYTHONPATH")) if p),
            "PYTHONUNBUFFERED": "1",
        }
        children_cpu_before = _children_cpu()
        spawned_at = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                env=worker_env,
                cwd=SCRIPTS_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        # The ready file: poll for it, and snapshot the tree's CPU as soon as it shows.
        deadline = spawned_at + STARTUP_TIMEOUT
        while not os.listdir(ready_dir):
            if process.poll() is not None:
                raise RuntimeError(f"{system} worker exited ({process.returncode}):\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{system} worker not ready after {STARTUP_TIMEOUT:.0f} s:\n{_tail(log_path)}"
                )
            time.sleep(0.002)
        cpu_start = tree_cpu(process.pid)

        deadline = time.monotonic() + run_timeout
        while not collector.done.wait(0.2):
            if process.poll() is not None:
                raise RuntimeError(f"{system} worker exited ({process.returncode}):\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{system}: {len(collector.succeeded)} of {n} jobs succeeded after {run_timeout:.0f} s "
                    f"(events {collector.counts}):\n{_tail(log_path)}"
                )
        if collector.error is not None:
            raise RuntimeError(f"status collector failed: {collector.error!r}")
        cpu_end = tree_cpu(process.pid)

        ready_times = []
        for name in os.listdir(ready_dir):
            if name.isdigit():
                with open(os.path.join(ready_dir, name)) as f:
                    ready_times.append(float(f.read()))
        started_at = min(ready_times)
        graceful = _stop_worker(process)
        cpu_total = _children_cpu() - children_cpu_before if graceful else None
        assert collector.last_succeeded_at is not None
        extra: dict[str, Any] = {
            "events": dict(collector.counts),
            "ready_processes": len(ready_times),
            "ready_spread_seconds": max(ready_times) - started_at,
        }
        if collector.first_event_at is not None and collector.first_event_at < started_at:
            extra["note"] = "an event arrived before the ready hook fired"
        return PeerResult(
            system=system,
            jobs=n,
            seconds=collector.last_succeeded_at - started_at,
            cpu_seconds=_cpu_between(cpu_start, cpu_end),
            clock=clock,
            startup_seconds=started_at - spawned_at,
            cpu_seconds_total=cpu_total,
            settings={**settings, **extra},
        )
    finally:
        if process is not None:
            _stop_worker(process)
        if collector is not None:
            collector.stop()
        _delete(url, [*cleanup_queues, status_queue], cleanup_exchanges)
        if os.environ.get("BENCH_PEERS_KEEP_LOGS"):
            print(f"{system}: worker log kept in {log_path}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_id() -> str:
    return uuid.uuid4().hex[:12]


# --- the systems -------------------------------------------------------------------------------------


def celery_baseline(
    n: int,
    concurrency: int = 4,
    *,
    prefetch_multiplier: int = 4,
    url: str = DEFAULT_URL,
    queue_type: str = "classic",
    timeout: float | None = None,
) -> PeerResult:
    """Celery 5, prefork pool, ``-c concurrency``, acks_late, ``worker_prefetch_multiplier``.

    ``n`` task messages (``bench.run_job`` with the job's JSON string as its one argument) are sent
    with ``app.send_task`` before the worker starts (not timed). The worker is
    ``python -m celery -A peers.celery_worker worker -P prefork -c N --without-gossip --without-mingle
    --without-heartbeat``. Status events: pika, one confirmed connection per pool process.
    """
    call_start = time.monotonic()
    try:
        import celery
        from peers.celery_app import TASK_NAME, make_app
    except ImportError as exc:
        raise MissingDependencyError(f"Celery is not installed ({exc}): {INSTALL_HINT}") from None

    run_id = _run_id()
    job_queue = f"bench_peers_celery_{run_id}"
    status_queue = f"bench_peers_celery_{run_id}.status"

    def preload() -> None:
        app = make_app(url, job_queue, prefetch_multiplier, queue_type)
        try:
            with app.connection_for_write() as connection:
                app.amqp.queues[job_queue](connection.default_channel).declare()
            with app.producer_or_acquire() as producer:
                for i in range(n):
                    app.send_task(TASK_NAME, args=[job_body(run_id, i)], queue=job_queue, producer=producer)
        finally:
            app.close()

    argv = [
        sys.executable, "-m", "celery", "-A", "peers.celery_worker", "worker",
        "-P", "prefork", "-c", str(concurrency), "-Q", job_queue, "-n", f"bench-{run_id}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
    ]  # fmt: skip
    result = _run_worker_system(
        system="celery",
        n=n,
        url=url,
        job_queue=job_queue,
        status_queue=status_queue,
        queue_type=queue_type,
        argv=argv,
        env={common.ENV_PREFETCH_MULTIPLIER: str(prefetch_multiplier)},
        preload=preload,
        clock="worker_ready signal (right after basic_consume) -> last succeeded at the collector",
        cleanup_queues=[job_queue],
        cleanup_exchanges=[job_queue],
        settings={
            "celery": celery.__version__,
            "pool": "prefork",
            "concurrency": concurrency,
            "prefetch_multiplier": prefetch_multiplier,
            "acks_late": True,
            "queue_type": queue_type,
            "status_publisher": "pika BlockingConnection per pool process, confirm_delivery",
        },
        timeout=timeout,
    )
    return replace(result, wall_seconds=time.monotonic() - call_start)


def dramatiq_baseline(
    n: int,
    processes: int = 2,
    threads: int = 4,
    *,
    url: str = DEFAULT_URL,
    queue_type: str = "classic",
    timeout: float | None = None,
) -> PeerResult:
    """Dramatiq 2 with its RabbitMQ broker: ``dramatiq peers.dramatiq_worker:broker -p P -t T``.

    ``n`` messages for the ``run_job`` actor (the job's JSON string as its one argument) are sent with
    ``actor.send`` (confirmed) before the worker starts (not timed). Dramatiq acks after the actor
    returns and prefetches ``2 * threads`` per process. Status events: pika, one confirmed connection
    per worker thread.
    """
    call_start = time.monotonic()
    try:
        import dramatiq
        from peers.dramatiq_actors import make_broker
    except ImportError as exc:
        raise MissingDependencyError(f"Dramatiq is not installed ({exc}): {INSTALL_HINT}") from None

    run_id = _run_id()
    job_queue = f"bench_peers_dramatiq_{run_id}"
    status_queue = f"bench_peers_dramatiq_{run_id}.status"

    def preload() -> None:
        broker, actor = make_broker(url, job_queue, queue_type, confirm_delivery=True)
        try:
            for i in range(n):
                actor.send(job_body(run_id, i))
        finally:
            broker.close()

    argv = [
        sys.executable, "-m", "dramatiq", "peers.dramatiq_worker:broker",
        "-p", str(processes), "-t", str(threads),
    ]  # fmt: skip
    result = _run_worker_system(
        system="dramatiq",
        n=n,
        url=url,
        job_queue=job_queue,
        status_queue=status_queue,
        queue_type=queue_type,
        argv=argv,
        env={},
        preload=preload,
        clock="first after_worker_boot (consumer threads started) -> last succeeded at the collector",
        cleanup_queues=[job_queue, f"{job_queue}.DQ", f"{job_queue}.XQ"],
        cleanup_exchanges=[],
        settings={
            "dramatiq": dramatiq.__version__,
            "processes": processes,
            "threads": threads,
            "prefetch_per_process": 2 * threads,
            "queue_type": queue_type,
            "status_publisher": "pika BlockingConnection per worker thread, confirm_delivery",
        },
        timeout=timeout,
    )
    return replace(result, wall_seconds=time.monotonic() - call_start)


def raw_baseline(
    n: int,
    processes: int = 4,
    *,
    prefetch: int = 4,
    url: str = DEFAULT_URL,
    queue_type: str = "classic",
    timeout: float | None = None,
) -> PeerResult:
    """The floor: ``python -m peers.raw_worker``, the same work in plain pika in ``processes`` forked
    processes of one connection each (prefetch ``prefetch``), ``posix_spawn`` for ``true``.

    ``n`` job bodies are published persistent to a durable queue of the run's own before the worker
    starts (not timed). It is the least that a system doing this work in Python on pika costs here,
    so its jobs/s bound the ratios to Celery and Dramatiq that such a system can reach.
    """
    call_start = time.monotonic()
    run_id = _run_id()
    job_queue = f"bench_peers_raw_{run_id}"
    status_queue = f"bench_peers_raw_{run_id}.status"

    def preload() -> None:
        connection = _connect(url)
        try:
            channel = connection.channel()
            channel.queue_declare(job_queue, durable=True, arguments={"x-queue-type": queue_type})
            properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            for i in range(n):
                channel.basic_publish("", job_queue, job_body(run_id, i).encode(), properties)
        finally:
            connection.close()

    result = _run_worker_system(
        system="raw",
        n=n,
        url=url,
        job_queue=job_queue,
        status_queue=status_queue,
        queue_type=queue_type,
        argv=[sys.executable, "-m", "peers.raw_worker"],
        env={common.ENV_RAW_PROCESSES: str(processes), common.ENV_PREFETCH: str(prefetch)},
        preload=preload,
        clock="first process consuming (its ready file) -> last succeeded at the collector",
        cleanup_queues=[job_queue],
        cleanup_exchanges=[],
        settings={
            "processes": processes,
            "prefetch": prefetch,
            "queue_type": queue_type,
            "spawn": "os.posix_spawn + os.waitpid",
            "status_publisher": "pika BlockingConnection per process, confirm_delivery",
        },
        timeout=timeout,
    )
    return replace(result, wall_seconds=time.monotonic() - call_start)


def _spawn_loop(system: str, n: int, spawn_one: Callable[[], None], clock: str) -> PeerResult:
    self_before, children_before = _self_cpu(), _children_cpu()
    start = time.monotonic()
    for _ in range(n):
        spawn_one()
    seconds = time.monotonic() - start
    cpu = (_self_cpu() - self_before) + (_children_cpu() - children_before)
    return PeerResult(
        system=system,
        jobs=n,
        seconds=seconds,
        cpu_seconds=cpu,
        clock=clock,
        wall_seconds=seconds,
        settings={"broker": "none"},
    )


def spawn_subprocess_run(n: int) -> PeerResult:
    """``subprocess.run(["true"])`` n times in a loop; CPU is this process's plus the children's."""
    return _spawn_loop(
        "spawn:subprocess.run", n, lambda: subprocess.run(["true"], check=True), "loop start -> loop end"
    )


def spawn_posix_spawn(n: int) -> PeerResult:
    """``os.posix_spawn`` of ``true`` (path resolved once) and ``os.waitpid``, n times in a loop."""
    run_true = common.true_spawner()

    def spawn_one() -> None:
        code = run_true()
        if code != 0:
            raise RuntimeError(f"true exited with {code}")

    return _spawn_loop("spawn:posix_spawn", n, spawn_one, "loop start -> loop end")


def bare_spawn_ceiling(n: int) -> tuple[PeerResult, PeerResult]:
    """The ceiling without a broker: (:func:`spawn_subprocess_run`, :func:`spawn_posix_spawn`)."""
    return spawn_subprocess_run(n), spawn_posix_spawn(n)


# --- the command line ---------------------------------------------------------------------------------

SYSTEMS = ("celery", "dramatiq", "raw", "spawn")
#: Settings entries that differ per run (left out of the summary's settings line).
_PER_RUN_KEYS = frozenset({"events", "ready_processes", "ready_spread_seconds", "note"})


def _summary(results: list[PeerResult]) -> list[str]:
    by_system: dict[str, list[PeerResult]] = {}
    for result in results:
        by_system.setdefault(result.system, []).append(result)
    lines = []
    for system, runs in by_system.items():
        rates = [r.jobs_per_second for r in runs]
        cpus = [r.cpu_seconds for r in runs if r.cpu_seconds is not None]
        per_job = [r.cpu_ms_per_job for r in runs if r.cpu_ms_per_job is not None]
        walls = [r.wall_seconds for r in runs]
        startups = [r.startup_seconds for r in runs if r.startup_seconds is not None]
        line = (
            f"{system:<22} jobs/s median {statistics.median(rates):8.1f} "
            f"(min {min(rates):.1f}, max {max(rates):.1f}, {len(runs)} rounds)"
        )
        if cpus:
            line += f", CPU median {statistics.median(cpus):.2f} s ({statistics.median(per_job):.2f} ms/job)"
        if startups:
            line += f", startup median {statistics.median(startups):.2f} s"
        line += f", one call median {statistics.median(walls):.1f} s"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1500, help="jobs per run (default 1500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every system once")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--queue-type", choices=("classic", "quorum"), default="classic")
    parser.add_argument("--celery-concurrency", type=int, default=4)
    parser.add_argument("--celery-prefetch-multiplier", type=int, default=4)
    parser.add_argument("--dramatiq-processes", type=int, default=2)
    parser.add_argument("--dramatiq-threads", type=int, default=4)
    parser.add_argument("--raw-processes", type=int, default=4)
    parser.add_argument("--json", metavar="PATH", help="also write every result as JSON to PATH")
    args = parser.parse_args(argv)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {SYSTEMS}")

    runners: dict[str, Callable[[], list[PeerResult]]] = {
        "celery": lambda: [
            celery_baseline(
                args.n,
                args.celery_concurrency,
                prefetch_multiplier=args.celery_prefetch_multiplier,
                url=args.url,
                queue_type=args.queue_type,
            )
        ],
        "dramatiq": lambda: [
            dramatiq_baseline(
                args.n,
                args.dramatiq_processes,
                args.dramatiq_threads,
                url=args.url,
                queue_type=args.queue_type,
            )
        ],
        "raw": lambda: [raw_baseline(args.n, args.raw_processes, url=args.url, queue_type=args.queue_type)],
        "spawn": lambda: list(bare_spawn_ceiling(args.n)),
    }
    print(f"bench_peers: n={args.n}, rounds={args.rounds}, systems={systems}, queues {args.queue_type}")
    results: list[PeerResult] = []
    missing: set[str] = set()
    failures = 0
    for round_no in range(1, args.rounds + 1):
        for system in systems:
            if system in missing:
                continue
            try:
                round_results = runners[system]()
            except MissingDependencyError as exc:
                print(f"round {round_no} {system}: skipped: {exc}")
                missing.add(system)
                continue
            except Exception as exc:
                print(f"round {round_no} {system}: FAILED: {exc}")
                failures += 1
                continue
            for result in round_results:
                print(f"round {round_no} {result.line()}", flush=True)
            results.extend(round_results)

    print("summary:")
    for line in _summary(results):
        print(f"  {line}")
    settings_seen: dict[str, dict[str, Any]] = {}
    for result in results:
        settings_seen.setdefault(
            result.system,
            {k: v for k, v in result.settings.items() if k not in _PER_RUN_KEYS},
        )
    for system, settings in settings_seen.items():
        print(f"  {system} settings: {settings}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=2)
    return 1 if failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
