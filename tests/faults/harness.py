"""A fault scenario in a few lines: :class:`FaultRun` starts two real ``orchestrator run`` processes
sharing the broker and Redis, feeds them jobs, lets the test inject its fault, and checks every
invariant of :mod:`faults.invariants` at the end.

A scenario reads::

    run.start()
    run.feed(run.main_jobs(), rate=40)
    run.wait_for_ended(0.3)
    with run.fault("close every connection of both processes"):
        close_connections(list(run.processes.values()))
    run.check()   # waits for every job, runs the recovery batch, settles, asserts every invariant

Every wait has a deadline. The status events are read from status.queue by a consumer of the test's
own that reconnects (so it survives a broker restart) and acks only what it has recorded; the worker
records come from :mod:`faults.recording_worker`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import msgspec
import redis
from pipeline.processes import OrchestratorProcess
from support import broker_connection, delete_broker_objects, isolated_config

from orchestrator.broker.names import retry_queue_name
from orchestrator.coordination import connect_redis
from orchestrator.slots import GlobalSlots

from . import recording_worker
from .invariants import (
    Observation,
    Violation,
    launches_by_process,
    max_overlap,
    read_worker_runs,
    unique_events,
    violations,
)
from .traffic import JOB_TYPE, EventLog, JobFeed, build_body

WORKER: Final = Path(recording_worker.__file__)
PROCESS_NAMES: Final = ("a", "b")
HEALTHY_SECONDS: Final = 60.0
#: The main batch is given up on when no job has ended for this long (something is stuck).
QUIET_SECONDS: Final = 30.0
#: Metrics that must read 0 once every job has ended: tasks followed, jobs waiting for a slot, slots
#: held (when a process exposes that gauge), and slots the self-check had to give back (each one a
#: slot that leaked). /health's ``slots`` detail is not used: the self-check refreshes it only every
#: 30 s, so it lags behind the end of a run.
ZERO_METRICS: Final = (
    "orchestrator_jobs_running",
    "orchestrator_jobs_waiting",
    "orchestrator_slots_held",
    "orchestrator_slots_released_by_audit_total",
)
#: How much longer than ``shutdown.drain_seconds`` a process may take to exit after SIGTERM.
SHUTDOWN_MARGIN_SECONDS: Final = 10.0
#: Every scenario's report, for the terminal summary (conftest.py).
REPORTS: list[str] = []


@dataclasses.dataclass(frozen=True)
class FaultSettings:
    """How a scenario's processes are configured and how much work it gets.

    Classic queues by default: they are faster to declare and to publish to than quorum queues, which
    matters on a 2-core CI machine, and nothing here depends on the queue type except a broker
    restart (quorum queues' at-least-once dead-lettering keeps a retry from being lost on its way
    back from a delay queue while the node stops), so that scenario asks for quorum.
    """

    jobs: int = 200
    #: Jobs published per second.
    rate: float = 40.0
    cap: int = 8
    per_process: int = 6
    lease_seconds: int = 3
    poll_seconds: float = 0.2
    retry_delays: tuple[int, ...] = (1, 2)
    max_attempts: int = 3
    queue_type: str = "classic"
    prefetch: int | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    #: The final batch, published once the main batch has ended: it must finish within
    #: 2 x lease_seconds + recovery_margin.
    recovery_jobs: int = 16
    recovery_margin: float = 10.0
    #: Longest wait for the main batch to end (also bounded by QUIET_SECONDS without progress).
    main_deadline: float = 150.0
    #: More config keys for both processes, as for :func:`support.with_overrides` (``broker__x``).
    config_keys: dict[str, object] = dataclasses.field(default_factory=dict)
    #: ``broker.url`` of the named processes, where it differs from the run's (e.g. a cluster's nodes
    #: in another order); the run's own clients use ``broker_url``.
    process_broker_urls: dict[str, str] = dataclasses.field(default_factory=dict)


def job_kind(n: int) -> str:
    """The kind of the main batch's job ``n``: one in ten fails its first attempt, one in fifty
    fails every attempt, the rest succeed (see :mod:`faults.recording_worker`)."""
    if n % 50 == 13:
        return "fa"
    if n % 10 == 7:
        return "f1"
    return "ok"


def gauges(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition."""
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[name] = float(value)
    return values


@dataclasses.dataclass
class Outcome:
    """What :meth:`FaultRun.finish` found."""

    observation: Observation
    violations: list[Violation]
    report: str


class FaultRun:
    """Two orchestrator processes, the jobs fed to them, and the checks of every invariant.

    Args:
        base: the test's temporary directory (local state, logs, worker records).
        name: the scenario's name, for queue names and the report.
        settings: configuration and amounts.
    """

    def __init__(self, base: Path, name: str, settings: FaultSettings) -> None:
        self.base = base
        self.name = name
        self.settings = settings
        self.records = base / "worker-records.txt"
        keys: dict[str, object] = {
            "broker__queue_type": settings.queue_type,
            "local__state_dir": str(base / "state"),
            "local__command": f"{sys.executable} {WORKER}",
            "local__pass_env": (recording_worker.RECORDS_ENV,),
            "local__stop_grace_seconds": 5.0,
            "limits__max_concurrent": settings.per_process,
            "limits__global_max_concurrent": settings.cap,
            "limits__lease_seconds": settings.lease_seconds,
            "limits__poll_seconds": settings.poll_seconds,
            "limits__retry_delays": settings.retry_delays,
            "limits__max_attempts": settings.max_attempts,
            "shutdown__drain_seconds": 5.0,
            "shutdown__unhealthy_hold_seconds": 0.0,
        }
        if settings.prefetch is not None:
            keys["broker__prefetch"] = settings.prefetch
        if settings.broker_url is not None:
            keys["broker__url"] = settings.broker_url
        if settings.redis_url is not None:
            keys["redis__url"] = settings.redis_url
        self.config = isolated_config(f"fault.{name}", **(keys | settings.config_keys))
        self.tag = "".join(c for c in name if c.isalpha())[:6] or "job"
        self.expected: dict[str, frozenset[str]] = {}
        self.expected_dead: set[str] = set()
        self.processes: dict[str, OrchestratorProcess] = {}
        #: Every process started under each name, in order (a restart adds one).
        self._history: dict[str, list[OrchestratorProcess]] = collections.defaultdict(list)
        self.retired: list[OrchestratorProcess] = []
        self.events = EventLog(self.config)
        self.feeds: list[JobFeed] = []
        self.faults: list[tuple[str, float, float]] = []
        self.notes: list[str] = []
        self.began = time.monotonic()
        self.main_ids: list[str] = []
        self.recovery_ids: list[str] = []

    # --- set-up --------------------------------------------------------------------------------

    def start(self) -> FaultRun:
        """Start the event consumer, then both processes; wait until both are healthy."""
        self.began = time.monotonic()
        self.events.start()
        for name in PROCESS_NAMES:
            self._spawn(name)
        for process in self.processes.values():
            process.wait_healthy(HEALTHY_SECONDS)
        return self

    def _spawn(self, name: str) -> OrchestratorProcess:
        log = self.base / f"{name}-{len(self._history[name]) + 1}.log"
        env = {recording_worker.RECORDS_ENV: str(self.records)}
        if name in self.settings.process_broker_urls:
            env["ORCH_BROKER_URL"] = self.settings.process_broker_urls[name]
        process = OrchestratorProcess(self.config, log, extra_env=env).start()
        self.processes[name] = process
        self._history[name].append(process)
        return process

    def restart(self, name: str) -> OrchestratorProcess:
        """Start a new process in place of ``name`` (after it was killed), like supervisord would."""
        self.retired.append(self.processes[name])
        process = self._spawn(name)
        process.wait_healthy(HEALTHY_SECONDS)
        return process

    # --- jobs ----------------------------------------------------------------------------------

    def job_id(self, n: int, kind: str) -> str:
        return f"{self.tag}{n:04d}-{kind}"

    def add_job(self, n: int, kind: str, outcomes: frozenset[str] | None = None) -> str:
        """Register a job the run expects to end (as its worker decides, unless ``outcomes``)."""
        deployment_id = self.job_id(n, kind)
        expected = recording_worker.expected_outcome(deployment_id, self.settings.max_attempts)
        self.expected[deployment_id] = outcomes or frozenset({expected})
        if expected == "failed" and outcomes is None:
            self.expected_dead.add(deployment_id)
        return deployment_id

    def main_jobs(self) -> list[str]:
        """The main batch (``settings.jobs`` jobs of :func:`job_kind`), registered."""
        self.main_ids = [self.add_job(n, job_kind(n)) for n in range(self.settings.jobs)]
        return self.main_ids

    def feed(self, ids: Sequence[str], rate: float | None = None) -> JobFeed:
        """Publish ``ids`` at ``rate`` per second (``settings.rate``) in the background."""
        feed = JobFeed(self.config, [build_body(d) for d in ids], rate or self.settings.rate).start()
        self.feeds.append(feed)
        return feed

    def ended(self, ids: Sequence[str] | None = None) -> int:
        return self.events.ended(self.main_ids if ids is None else ids)

    def wait_for_ended(self, fraction: float, timeout: float = 60) -> None:
        """Wait until ``fraction`` of the main batch has ended (a point mid-stream to inject at).

        After ``timeout`` the scenario goes on (and says so in its report): the fault is injected
        late, and the checks at the end describe what got stuck, which a timeout here would hide.
        """
        want = int(len(self.main_ids) * fraction)
        deadline = time.monotonic() + timeout
        while self.ended() < want:
            if time.monotonic() > deadline:
                self.notes.append(f"only {self.ended()} of {want} jobs had ended {timeout:.0f} s into a wait")
                return
            time.sleep(0.05)

    @contextlib.contextmanager
    def fault(self, what: str) -> Iterator[None]:
        """Mark the fault's start and end, for the report."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.faults.append((what, began - self.began, time.monotonic() - self.began))

    # --- the end -------------------------------------------------------------------------------

    def _wait_main(self) -> str:
        """Wait for every job registered so far to end; returns how the wait ended."""
        ids = list(self.expected)
        deadline = time.monotonic() + self.settings.main_deadline
        last_progress, last_count = time.monotonic(), -1
        for feed in self.feeds:
            feed.join(self.settings.main_deadline)
        while True:
            count = self.events.ended(ids)
            now = time.monotonic()
            if count == len(ids):
                return f"all {count} jobs ended"
            if count != last_count:
                last_progress, last_count = now, count
            if now - last_progress > QUIET_SECONDS:
                return (
                    f"gave up: {len(ids) - count} jobs had not ended and none ended for {QUIET_SECONDS:.0f} s"
                )
            if now > deadline:
                left = len(ids) - count
                return f"gave up: {left} jobs had not ended after {self.settings.main_deadline:.0f} s"
            time.sleep(0.1)

    def _recovery(self) -> tuple[list[str], float | None]:
        """Publish the recovery batch; its problems and how long it took (None: it did not finish)."""
        settings = self.settings
        problems = []
        for name, process in self.processes.items():
            if not process.healthy():
                problems.append(f"process {name} is not healthy (/health not 200)")
        first = 9000
        ids = [self.add_job(first + n, "r") for n in range(settings.recovery_jobs)]
        self.recovery_ids = ids
        bound = 2 * settings.lease_seconds + settings.recovery_margin
        began = time.monotonic()
        JobFeed(self.config, [build_body(d) for d in ids], rate=0).start().join(30)
        deadline = began + bound
        while self.events.ended(ids) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - began
        done = self.events.ended(ids)
        if done < len(ids):
            problems.append(
                f"{len(ids) - done} of {len(ids)} recovery jobs had not ended {bound:.0f} s after publishing"
            )
            return problems, None
        return problems, took

    def _live_slots(self) -> dict[str, str]:
        client = connect_redis(self.config.redis)
        slots = GlobalSlots(
            client,
            self.config.redis.key_prefix,
            "fault-test-observer",
            self.settings.cap,
            self.settings.lease_seconds,
            renew_in_background=False,
        )
        try:
            return slots.global_holders()
        finally:
            slots.close()
            client.close()

    def _process_problems(self) -> dict[str, str]:
        """Each process's own account of its slots and tasks, where it is not all zero."""
        problems = {}
        for name, process in self.processes.items():
            text = process.metrics()
            if text is None:
                problems[name] = "/metrics does not answer"
                continue
            values = gauges(text)
            wrong = [f"{g} = {values[g]:g}" for g in ZERO_METRICS if values.get(g, 0) != 0]
            if wrong:
                problems[name] = ", ".join(wrong)
        return problems

    def _queue_depths(self) -> dict[str, int]:
        broker = self.config.broker
        names = [broker.execute_queue, *(retry_queue_name(broker, d) for d in self.settings.retry_delays)]
        connection = broker_connection(broker)
        try:
            channel = connection.channel()
            return {
                name: int(channel.queue_declare(name, passive=True).method.message_count) for name in names
            }
        finally:
            connection.close()

    def _dead_lettered(self) -> list[str]:
        connection = broker_connection(self.config.broker)
        ids: list[str] = []
        try:
            channel = connection.channel()
            while True:
                method, _props, body = channel.basic_get(self.config.broker.dlq, auto_ack=True)
                if method is None:
                    return ids
                try:
                    ids.append(str(msgspec.json.decode(body)["deploymentId"]))
                except (msgspec.DecodeError, KeyError, TypeError):
                    ids.append(f"<undecodable: {body[:40]!r}>")
        finally:
            connection.close()

    def _settle(self) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
        """Wait (bounded) for leases of killed processes to expire, gauges to drop to 0 and delay
        queues to empty; returns what is left then."""
        settings = self.settings
        timeout = settings.lease_seconds + max(settings.retry_delays) + 10
        deadline = time.monotonic() + timeout
        while True:
            slots, problems, depths = self._live_slots(), self._process_problems(), self._queue_depths()
            if (not slots and not problems and not any(depths.values())) or time.monotonic() > deadline:
                return slots, problems, depths
            time.sleep(0.25)

    def _shut_down(self) -> list[str]:
        """SIGTERM each process, as supervisord stops it; what went wrong (exit status, tracebacks)."""
        problems = []
        for name, process in self.processes.items():
            offset = process.log_path.stat().st_size
            code = process.stop(timeout=self.config.shutdown.drain_seconds + SHUTDOWN_MARGIN_SECONDS)
            with process.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            if code != 0:
                problems.append(f"process {name} exited with {code} after SIGTERM")
            tracebacks = text.count("Traceback (most recent call last)")
            if tracebacks:
                errors = [
                    line for line in text.splitlines() if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", line)
                ]
                first = errors[0] if errors else "?"
                problems.append(
                    f"process {name} logged {tracebacks} tracebacks while shutting down ({first})"
                )
        return problems

    def finish(self) -> Outcome:
        """Wait for the jobs, run the recovery batch, settle, stop both processes with SIGTERM, and
        check every invariant."""
        how_main_ended = self._wait_main()
        main_done = time.monotonic() - self.began
        recovery_problems, recovery_took = self._recovery()
        settling = time.monotonic()
        slots, process_problems, depths = self._settle()
        self.notes.append(f"settled (leases, gauges, queues) in {time.monotonic() - settling:.1f} s")
        arrivals = self.events.snapshot()
        shutdown_problems = self._shut_down()
        observation = Observation(
            expected=self.expected,
            job_type=JOB_TYPE,
            arrivals=arrivals,
            runs=read_worker_runs(self.records),
            cap=self.settings.cap,
            live_slots=slots,
            process_problems=process_problems,
            queue_depths=depths,
            dead_lettered=self._dead_lettered(),
            expected_dead=frozenset(self.expected_dead),
            recovery_problems=recovery_problems,
            shutdown_problems=shutdown_problems,
        )
        found = violations(observation)
        report = self._report(observation, found, how_main_ended, main_done, recovery_took)
        REPORTS.append(report)
        print(report)
        return Outcome(observation, found, report)

    def check(self) -> Outcome:
        """:meth:`finish`, then fail the test with every broken invariant."""
        outcome = self.finish()
        assert not outcome.violations, "\n".join(str(v) for v in outcome.violations) + "\n" + outcome.report
        return outcome

    def _report(
        self,
        observation: Observation,
        found: list[Violation],
        how_main_ended: str,
        main_done: float,
        recovery_took: float | None,
    ) -> str:
        runs = observation.runs
        unique = unique_events(observation.arrivals)
        intervals = [(r.started, r.ended) for r in runs if r.ended is not None]
        peak, _ = max_overlap(intervals)
        recovery_runs = [
            (r.started, r.ended) for r in runs if r.deployment_id in self.recovery_ids and r.ended
        ]
        recovery_peak, _ = max_overlap(recovery_runs)
        by_process = launches_by_process(runs)
        names = {p.pid: f"{n}-{i + 1}" for n in PROCESS_NAMES for i, p in enumerate(self._history[n])}
        launches = ", ".join(
            f"{names.get(pid, 'unknown')}: {count}"
            for pid, count in sorted(by_process.items(), key=lambda kv: -kv[1])
        )
        lines = [
            f"⏱ fault scenario {self.name}: {time.monotonic() - self.began:.1f} s "
            f"(main batch done at {main_done:.1f} s: {how_main_ended})",
            f"   jobs {len(observation.expected)} (main {len(self.main_ids)}, "
            f"recovery {len(self.recovery_ids)}); worker runs {len(runs)}; launches by process {launches}",
            f"   events {len(observation.arrivals)} ({len(observation.arrivals) - len(unique)} duplicates); "
            f"peak concurrency {peak} (cap {self.settings.cap}); "
            f"consumer reconnects {self.events.reconnects}",
            "   recovery batch: "
            + (
                f"{recovery_took:.1f} s, peak concurrency {recovery_peak}"
                if recovery_took is not None
                else "did not finish"
            )
            + f" (bound {2 * self.settings.lease_seconds + self.settings.recovery_margin:.0f} s)",
        ]
        lines += [f"   fault at {start:.1f}-{end:.1f} s: {what}" for what, start, end in self.faults]
        lines += [f"   {note}" for note in self.notes]
        lines += [f"   {v}" for v in found] or ["   every invariant held"]
        return "\n".join(lines)

    # --- tear-down -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop both processes (resumed first, in case a test left one stopped), the consumer, and any
        worker still running; delete the queues on the shared broker."""
        for process in [*self.processes.values(), *self.retired]:
            if process.process is not None and process.process.poll() is None:
                process.resume()
                process.stop(timeout=30)
        self.events.close()
        for run in read_worker_runs(self.records):
            if run.ended is None:
                _kill_worker(run.pid)
        if self.settings.broker_url is None:
            delete_broker_objects(self.config)
        if self.settings.redis_url is None:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis.from_url(self.config.redis.url)
                keys = list(client.scan_iter(match=f"{self.config.redis.key_prefix}*", count=1000))
                if keys:
                    client.delete(*keys)
                client.close()


def _kill_worker(pid: int) -> None:
    """SIGKILL a recording worker that is still running (checked by its command line, by pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(WORKER).encode() in command:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
