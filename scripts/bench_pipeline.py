#!/usr/bin/env python3
"""Pipeline benchmark (issue 4's figures): raw pika loop vs the orchestrator, and dispatch latency.

Usage: ``.venv/bin/python scripts/bench_pipeline.py [--n 2000] [--rate 200] [--seconds 5]
[--queue-types quorum,classic] [--variants amqp/50,amqp+redis/50,amqp/200] [--log-level WARNING]``

All on the same broker, in one run, per queue type (each measurement on queues and an exchange of its
own, deleted afterwards, plus a Redis key prefix of its own):

(a) the raw pika loop of ``bench_pipeline_baseline.py``: consume, decode, publish one confirmed status
    event (blocking confirm), ack; jobs/s from the first consume to the last ack. Measured before and
    after the pipeline variants of its queue type (the broker's confirm latency drifts, quorum queues'
    most); b/a uses their mean.
(b) the orchestrator pipeline in this process (every actor under a real Supervisor) with the real
    local launcher running ``true`` (``--launcher local``, the default: a shell wrapper and a process
    per job, ends seen by the exit watcher; ``local.state_dir`` under ``$TMPDIR``) or, as a second
    figure, :class:`InstantLauncher` (``--launcher instant``: launch returns at once, the task ends
    at once, no process): ``--n`` jobs preloaded
    into the execute queue before the pipeline starts; jobs/s from the moment its consumer is
    consuming to the arrival of the last job's ``dispatched`` event on the status queue (and, as a
    second figure, to the last terminal event). Ratio b/a.
(c) latency: on the same running pipeline, a paced publisher thread (its own connection, persistent
    and confirmed like the backend) offers ``--rate`` jobs/s for ``--seconds`` seconds; per job, time
    from just before its publish to the arrival of its ``dispatched`` event: p50, p99, max.

The (a) and (b) clocks both start when consuming starts (connections and topology are set up before).
Status events are read by a separate process (``bench_status_collector.py``), in (a) as in (b) and
(c), so both sides pay the same broker cost for a consumer of status.queue and neither pays for it in
its own interpreter. Times are ``time.monotonic()`` in both processes (``CLOCK_MONOTONIC``, one clock
per machine on Linux).

Config of (b)/(c): ``ecs.launch_rate`` unlimited, ``status.sinks`` and ``broker.prefetch`` per
variant; local: ``limits.max_concurrent`` 64 (``--max-concurrent``) and the default
``limits.poll_seconds`` (ends are watched, not polled); instant: ``limits.max_concurrent`` 100000 and
``limits.poll_seconds`` 0.05 (neither limiter is what is measured). Logging at WARNING to stderr
(``--log-level INFO --log-file F`` measures with the production level). Targets (b/a >= 1,
p99 < 50 ms at 200 jobs/s) are reported, not asserted: the exit status is non-zero only on errors
(a job lost or late past the deadline, an actor that gave up, a broker error).
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
import itertools  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from typing import Any, Final, Literal  # noqa: E402

import msgspec  # noqa: E402
import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import redis  # noqa: E402
from bench_pipeline_baseline import raw_pika_job_loop  # noqa: E402
from bench_status_collector import (  # noqa: E402
    DISPATCHED,
    TERMINAL_COUNT,
    Collected,
    collect_status_events,
    decode_collected,
)
from pipeline.fakes import InstantLauncher  # noqa: E402
from support import AMQP_URL, RUN_ID, isolated_config, with_overrides  # noqa: E402

from orchestrator.broker.names import retry_queue_name  # noqa: E402
from orchestrator.broker.topology import declare_topology  # noqa: E402
from orchestrator.config import DEFAULT_POLL_SECONDS, DEFAULT_PREFETCH, Config  # noqa: E402
from orchestrator.launch.base import Launcher  # noqa: E402
from orchestrator.launch.local import LocalLauncher  # noqa: E402
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING, TextFormatter  # noqa: E402
from orchestrator.messages import BuildJob, encode  # noqa: E402
from orchestrator.pipeline import register_pipeline  # noqa: E402
from orchestrator.runtime.health import HealthBoard  # noqa: E402
from orchestrator.runtime.supervisor import Supervisor  # noqa: E402

QueueType = Literal["quorum", "classic"]

DEFAULT_N: Final = 2000
DEFAULT_RATE: Final = 200.0
DEFAULT_SECONDS: Final = 5.0
DEFAULT_QUEUE_TYPES: Final = ("quorum", "classic")
DEFAULT_VARIANTS: Final = ("amqp/50", "amqp+redis/50", "amqp/200")
#: The raw loop's prefetch (``broker.prefetch``'s default; the loop handles one job at a time anyway).
RAW_PREFETCH: Final = DEFAULT_PREFETCH
#: So that the concurrency limiter is never what is measured.
MAX_CONCURRENT: Final = 100_000
#: So that the launch pool's token bucket (``ecs.launch_rate``/``ecs.launch_burst``, which every
#: Dispatcher applies, the local one too) is not what is measured either: at its defaults (20/s after
#: a burst of 100) it caps phase (b) at about 20 jobs/s. ``--launch-rate 20 --launch-burst 100`` shows it.
UNPACED_LAUNCH_RATE: Final = 1_000_000.0
UNPACED_LAUNCH_BURST: Final = 1_000_000
POLL_SECONDS: Final = 0.05
#: ``limits.max_concurrent`` with ``--launcher local`` (issue 11's setting: not binding for ``true``).
LOCAL_MAX_CONCURRENT: Final = 64
DRAIN_SECONDS: Final = 5.0
#: Longest wait for jobs to come out of a phase before they count as lost (an error).
PHASE_DEADLINE_SECONDS: Final = 60.0
STARTUP_SECONDS: Final = 30.0
COLLECTOR_START_SECONDS: Final = 30.0
COLLECTOR_RESULT_SECONDS: Final = 30.0
WAIT_SLICE_SECONDS: Final = 0.005
TARGET_RATIO: Final = 1.0
TARGET_P99_MS: Final = 50.0
REPOSITORY: Final = "https://github.com/blacktree-dev/sample-app.git"

_phase_numbers = itertools.count(1)


class BenchError(Exception):
    """A measurement could not be made (as opposed to a target that was missed)."""


#: What makes a measurement fail (reported and counted; the run goes on with the next one).
MEASUREMENT_ERRORS: Final = (BenchError, pika.exceptions.AMQPError, redis.RedisError, OSError)


Sink = Literal["amqp", "redis"]


class Variant(msgspec.Struct, frozen=True):
    """Status sinks and prefetch of one pipeline configuration, written ``amqp+redis/50``."""

    sinks: tuple[Sink, ...]
    prefetch: int

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``amqp+redis/50`` -> ``Variant(("amqp", "redis"), 50)``."""
        sinks, _, prefetch = text.partition("/")
        try:
            names = msgspec.convert([s for s in sinks.split("+") if s], tuple[Sink, ...])
        except msgspec.ValidationError:
            names = ()
        if not names or not prefetch.isdigit() or int(prefetch) < 1:
            raise argparse.ArgumentTypeError(f"variant {text!r}: expected SINKS/PREFETCH, e.g. amqp+redis/50")
        return cls(sinks=names, prefetch=int(prefetch))

    def __str__(self) -> str:
        return f"{','.join(self.sinks)} p{self.prefetch}"


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Publish -> ``dispatched`` latency of phase (c), in milliseconds."""

    count: int
    offered_rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    terminal_p99_ms: float
    publisher_lag_ms: float


class RawResult(msgspec.Struct, frozen=True, kw_only=True):
    """Phase (a): jobs/s, and CPU time of this process per job while the loop ran."""

    rate: float
    cpu_ms_per_job: float


class PipelineResult(msgspec.Struct, frozen=True, kw_only=True):
    """Phases (b) and (c) of one variant.

    ``cpu_ms_per_job`` is this process's CPU time (user + system, every thread) from the start of
    consumption to the last terminal event of (b), per job: the whole pipeline's cost of one job.
    """

    queue_type: str
    variant: Variant
    dispatch_rate: float
    terminal_rate: float
    cpu_ms_per_job: float
    #: Hand-offs from one thread to another per job (see :class:`HopCounter`).
    hops_per_job: float
    latency: Latency | None


# --- configuration and clean-up ------------------------------------------------------------------


def bench_config(
    queue_type: QueueType,
    variant: Variant,
    state_dir: str,
    launch_rate: float = UNPACED_LAUNCH_RATE,
    launch_burst: int = UNPACED_LAUNCH_BURST,
) -> Config:
    """A config whose queues, exchange, Redis channel and key prefix belong to this measurement."""
    return isolated_config(
        "bench",
        broker__queue_type=queue_type,
        broker__prefetch=variant.prefetch,
        status__sinks=variant.sinks,
        limits__max_concurrent=MAX_CONCURRENT,
        limits__poll_seconds=POLL_SECONDS,
        ecs__launch_rate=launch_rate,
        ecs__launch_burst=launch_burst,
        local__state_dir=state_dir,
        shutdown__drain_seconds=DRAIN_SECONDS,
    )


def make_bench_launcher(kind: str, config: Config, state_dir: str) -> Launcher:
    """``local``: the real local launcher running ``/usr/bin/true`` (a shell wrapper and a process per
    job, ends seen by its exit watcher); ``instant``: :class:`InstantLauncher`, no process at all."""
    if kind == "instant":
        return InstantLauncher()
    # The binary, not the word: dash runs ``true`` as a builtin, and the worker would never exist.
    true = shutil.which("true") or "/bin/true"
    local = with_overrides(config, local__command=true, local__state_dir=state_dir)
    return LocalLauncher(local)


def declare(config: Config) -> None:
    """Declare the whole topology (what the pipeline and the raw loop declare too, idempotently)."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        declare_topology(connection.channel(), config.broker, config.status, config.limits.retry_delays)
    finally:
        connection.close()


def clean_up(config: Config) -> None:
    """Delete the measurement's queues, exchange and Redis keys; report what could not be deleted."""
    broker = config.broker
    names = [broker.execute_queue, broker.dlq, config.status.queue]
    names += [retry_queue_name(broker, delay) for delay in config.limits.retry_delays]
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        try:
            for name in names:
                connection.channel().queue_delete(name)
            connection.channel().exchange_delete(broker.exchange)
        finally:
            if connection.is_open:
                connection.close()
    except pika.exceptions.AMQPError as e:
        print(f"{WARNING} could not delete the queues of {broker.exchange}: {e!r}", file=sys.stderr)
    client = redis.Redis.from_url(config.redis.url)
    try:
        keys = list(client.scan_iter(match=f"{config.redis.key_prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError as e:
        print(f"{WARNING} could not delete Redis keys {config.redis.key_prefix}:*: {e!r}", file=sys.stderr)
    finally:
        client.close()


# --- the status-queue collector (a separate process) ---------------------------------------------


class StatusCollector:
    """Runs :func:`collect_status_events` in a spawned process for the lifetime of a ``with`` block."""

    def __init__(self, config: Config) -> None:
        context = multiprocessing.get_context("spawn")
        self._ready = context.Event()
        self._stop = context.Event()
        self._counts: Any = context.Array("q", 2, lock=False)  # written by the child only
        self._results, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=collect_status_events,
            args=(config.broker.url, config.status.queue, self._ready, self._stop, self._counts, child_end),
            name="status-collector",
            daemon=True,
        )
        self._child_end = child_end
        self._collected: Collected | None = None

    def __enter__(self) -> StatusCollector:
        self._process.start()
        self._child_end.close()
        deadline = time.monotonic() + COLLECTOR_START_SECONDS
        while not self._ready.wait(0.05):
            if not self._process.is_alive() or time.monotonic() > deadline:
                raise BenchError("the status collector did not start consuming")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.finish()
            return
        # Already failing: stop the child without letting a second error hide the first.
        self._stop.set()
        self._process.join(COLLECTOR_RESULT_SECONDS)
        if self._process.is_alive():
            self._process.kill()

    @property
    def dispatched(self) -> int:
        """Distinct deployments whose ``dispatched`` event arrived so far."""
        return int(self._counts[DISPATCHED])

    @property
    def terminal(self) -> int:
        """Distinct deployments whose terminal event arrived so far."""
        return int(self._counts[TERMINAL_COUNT])

    def wait_for(self, *, dispatched: int, terminal: int = 0, timeout: float, what: str) -> None:
        """Poll the live counts until both reach their targets.

        Raises:
            BenchError: the collector died, or ``timeout`` seconds passed (jobs are lost or stuck).
        """
        deadline = time.monotonic() + timeout
        while self.dispatched < dispatched or self.terminal < terminal:
            if not self._process.is_alive():
                raise BenchError(f"the status collector died while waiting for {what}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"timed out after {timeout:g} s waiting for {what}: {self.dispatched}/{dispatched} "
                    f"dispatched, {self.terminal}/{terminal} terminal events"
                )
            time.sleep(WAIT_SLICE_SECONDS)

    def finish(self) -> Collected:
        """Stop the collector and return what it saw (once; later calls return the same)."""
        if self._collected is not None:
            return self._collected
        self._stop.set()
        if not self._results.poll(COLLECTOR_RESULT_SECONDS):
            self._process.kill()
            raise BenchError("the status collector sent no result")
        self._collected = decode_collected(self._results.recv_bytes())
        self._process.join(COLLECTOR_RESULT_SECONDS)
        return self._collected


# --- the pipeline under test -----------------------------------------------------------------------


class TimedBoard(HealthBoard):
    """A health board that notes when the execute-queue consumer first reported it was consuming."""

    def __init__(self, stuck_after_seconds: float) -> None:
        super().__init__(stuck_after_seconds)
        self.consuming_since: float | None = None
        self.cpu_at_consuming = 0.0
        self.hops_at_consuming = 0

    def set_dependency(self, name: str, ok: bool, detail: str = "", *, required: bool = True) -> None:
        if name == "broker" and ok and self.consuming_since is None:
            self.cpu_at_consuming = cpu_seconds()
            self.hops_at_consuming = HOPS.count()
            self.consuming_since = time.monotonic()
        super().set_dependency(name, ok, detail, required=required)


@contextlib.contextmanager
def running_pipeline(config: Config, launcher: Launcher) -> Iterator[TimedBoard]:
    """Every pipeline actor under a real Supervisor (as ``tests/pipeline/harness.py`` does), with a
    board that times the start of consumption (the harness's own board is not reachable)."""
    board = TimedBoard(config.http.stuck_after_seconds)
    give_ups: list[str] = []
    supervisor = Supervisor(config.supervision, board, on_give_up=lambda name, exc: give_ups.append(name))
    register_pipeline(supervisor, board, config, launcher_factory=lambda name, cfg: launcher)
    try:
        supervisor.start_all(timeout=STARTUP_SECONDS)
        yield board
    finally:
        supervisor.stop_all(timeout=STARTUP_SECONDS)
    if give_ups:
        raise BenchError(f"actors gave up: {give_ups}")


def job_bodies(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` valid build jobs with deploymentIds unique to this run and phase."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    return [(i, encode(BuildJob(deployment_id=i, repository=REPOSITORY))) for i in ids]


def preload(config: Config, bodies: Sequence[tuple[str, bytes]]) -> None:
    """Publish ``bodies`` to the execute queue, persistent (not timed).

    Without per-message confirms, which would make a large preload take longer than the measurement;
    the queue's depth is then checked, so every job is known to be there before the pipeline starts.
    """
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        channel = connection.channel()
        persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        for _id, body in bodies:
            channel.basic_publish("", config.broker.execute_queue, body, persistent)
        deadline = time.monotonic() + PHASE_DEADLINE_SECONDS
        while (depth := queue_depth(channel, config.broker.execute_queue)) < len(bodies):
            if time.monotonic() > deadline:
                raise BenchError(f"preload: only {depth} of {len(bodies)} jobs reached the execute queue")
            connection.sleep(WAIT_SLICE_SECONDS)
    finally:
        connection.close()


def queue_depth(channel: Any, queue: str) -> int:
    """Messages ready in ``queue``."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


class PacedPublisher(threading.Thread):
    """Publishes jobs at a fixed offered rate on its own connection, like the backend (confirmed).

    Each job is due at ``start + i / rate``; the time recorded is taken just before its publish. When
    the broker's confirms make it fall behind schedule, the late jobs go out back to back, so the rate
    offered over the whole run stays the same; :attr:`lag` says how late it was at worst.
    """

    def __init__(self, config: Config, bodies: Sequence[tuple[str, bytes]], rate: float) -> None:
        super().__init__(name="paced-publisher", daemon=True)
        self._config = config
        self._bodies = bodies
        self._rate = rate
        self.published_at: dict[str, float] = {}
        self.lag = 0.0
        self.elapsed = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._publish_all()
        except BaseException as e:  # reported by the main thread
            self.error = e

    def _publish_all(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self._config.broker.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            persistent = pika.BasicProperties(delivery_mode=2, content_type="application/json")
            start = time.monotonic()
            for i, (deployment_id, body) in enumerate(self._bodies):
                due = start + i / self._rate
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)  # pacing to a schedule, not waiting for a condition
                    now = time.monotonic()
                self.lag = max(self.lag, now - due)
                self.published_at[deployment_id] = now
                channel.basic_publish(
                    self._config.broker.exchange,
                    self._config.broker.execute_queue,
                    body,
                    persistent,
                    mandatory=True,
                )
            self.elapsed = time.monotonic() - start
        finally:
            connection.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(len(ordered), rank) - 1]


class HopCounter:
    """Counts hand-offs between threads in this process: pykka tells (actor to actor), pika's
    ``add_callback_threadsafe`` (to a connection's I/O thread) and thread-pool submits (to a worker).

    Each is one message put in another thread's queue and one wake-up of that thread: the unit of
    the "thread hops per job" figure. Installed once, before any pipeline starts.
    """

    def __init__(self) -> None:
        self._counter = itertools.count()
        self._reads = itertools.count()

    def hop(self) -> None:
        next(self._counter)

    def count(self) -> int:
        """Hops so far (``next`` on an ``itertools.count`` is atomic in CPython)."""
        return next(self._counter) - next(self._reads)

    def install(self) -> None:
        import concurrent.futures

        import pika.adapters.blocking_connection
        import pika.adapters.select_connection
        import pykka

        for owner, name in (
            (pykka.ActorRef, "tell"),
            (pika.adapters.blocking_connection.BlockingConnection, "add_callback_threadsafe"),
            (pika.adapters.select_connection.IOLoop, "add_callback_threadsafe"),
            (concurrent.futures.ThreadPoolExecutor, "submit"),
        ):
            original = getattr(owner, name)

            def counted(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
                self.hop()
                return __original(*args, **kwargs)

            setattr(owner, name, counted)


HOPS: Final = HopCounter()


def cpu_seconds() -> float:
    """CPU time this process has used so far (user + system, all threads)."""
    times = os.times()
    return times.user + times.system


def measure_raw(queue_type: QueueType, n: int, state_dir: str) -> RawResult:
    """Phase (a): the raw pika loop's jobs/s, with the status queue read by the collector meanwhile."""
    config = bench_config(queue_type, Variant(sinks=("amqp",), prefetch=RAW_PREFETCH), state_dir)
    try:
        declare(config)
        preload(config, job_bodies(f"bench-{RUN_ID}-{next(_phase_numbers)}-a", n))
        with StatusCollector(config) as collector:
            cpu = cpu_seconds()
            rate = raw_pika_job_loop(config, n, preload=False)
            cpu = cpu_seconds() - cpu
            collector.wait_for(dispatched=n, timeout=PHASE_DEADLINE_SECONDS, what="the raw loop's events")
            collected = collector.finish()
        if len(collected.dispatched_at) != n or collected.duplicates:
            raise BenchError(
                f"raw loop: {len(collected.dispatched_at)} of {n} events, {collected.duplicates} duplicates"
            )
        return RawResult(rate=rate, cpu_ms_per_job=1000 * cpu / n)
    finally:
        clean_up(config)


def measure_pipeline(
    queue_type: QueueType, variant: Variant, args: argparse.Namespace, state_dir: str
) -> PipelineResult:
    """Phases (b) and (c) on one pipeline instance with its own queues."""
    config = bench_config(queue_type, variant, state_dir, args.launch_rate, args.launch_burst)
    if not args.build_logs:
        config = with_overrides(config, logs__sinks=())
    if args.launcher == "local":
        # The product's settings: a real concurrency cap, and the default poll (ends are watched).
        config = with_overrides(
            config, limits__max_concurrent=args.max_concurrent, limits__poll_seconds=DEFAULT_POLL_SECONDS
        )
    prefix = f"bench-{RUN_ID}-{next(_phase_numbers)}"
    preloaded = job_bodies(f"{prefix}-b", args.n)
    paced = job_bodies(f"{prefix}-c", round(args.rate * args.seconds))
    publisher = PacedPublisher(config, paced, args.rate)
    try:
        declare(config)
        preload(config, preloaded)
        print(
            f"{PROGRESS} {queue_type} {variant}: {args.n} jobs preloaded; starting the pipeline", flush=True
        )
        launcher = make_bench_launcher(args.launcher, config, os.path.join(state_dir, prefix))
        with StatusCollector(config) as collector, running_pipeline(config, launcher) as board:
            # (b): the preloaded jobs, timed from the start of consumption.
            collector.wait_for(
                dispatched=args.n, terminal=args.n, timeout=PHASE_DEADLINE_SECONDS, what="phase (b)"
            )
            cpu_b = cpu_seconds() - board.cpu_at_consuming
            hops_b = HOPS.count() - board.hops_at_consuming
            if paced:
                # (c): a steady offered rate on the same pipeline, once (b) is over.
                publisher.start()
                publisher.join(args.seconds + PHASE_DEADLINE_SECONDS)
                if publisher.is_alive() or publisher.error is not None:
                    raise BenchError(f"the paced publisher failed: {publisher.error!r}")
                total = args.n + len(paced)
                collector.wait_for(
                    dispatched=total, terminal=total, timeout=PHASE_DEADLINE_SECONDS, what="phase (c)"
                )
            collected = collector.finish()
        started = board.consuming_since
        if started is None:
            raise BenchError("the consumer never reported that it was consuming")
        if collected.duplicates or collected.undecodable or collected.out_of_order:
            raise BenchError(
                f"{collected.duplicates} duplicate and {collected.undecodable} undecodable status events, "
                f"{collected.out_of_order} dispatched after their job's terminal event"
            )
        b_ids = [deployment_id for deployment_id, _ in preloaded]
        return PipelineResult(
            queue_type=queue_type,
            variant=variant,
            dispatch_rate=args.n / (max(collected.dispatched_at[i] for i in b_ids) - started),
            terminal_rate=args.n / (max(collected.terminal_at[i] for i in b_ids) - started),
            cpu_ms_per_job=1000 * cpu_b / args.n,
            hops_per_job=hops_b / args.n,
            latency=latency_of(publisher, collected) if paced else None,
        )
    finally:
        clean_up(config)


def latency_of(publisher: PacedPublisher, collected: Collected) -> Latency:
    """Phase (c)'s figures: publish -> ``dispatched`` (and -> terminal) per job."""
    published = publisher.published_at
    latencies = [collected.dispatched_at[i] - at for i, at in published.items()]
    to_terminal = [collected.terminal_at[i] - at for i, at in published.items()]
    return Latency(
        count=len(latencies),
        offered_rate=len(published) / publisher.elapsed if publisher.elapsed else float("nan"),
        p50_ms=1000 * statistics.median(latencies),
        p99_ms=1000 * percentile(latencies, 0.99),
        max_ms=1000 * max(latencies),
        terminal_p99_ms=1000 * percentile(to_terminal, 0.99),
        publisher_lag_ms=1000 * publisher.lag,
    )


# --- the report ------------------------------------------------------------------------------------


def print_table(
    raw: dict[str, list[RawResult]], results: Sequence[PipelineResult], args: argparse.Namespace
) -> None:
    """The figures of every measurement, then each target met or missed."""
    print()
    print(
        f"Pipeline benchmark: n={args.n} preloaded jobs for (a)/(b); (c) {args.rate:.0f} jobs/s offered "
        f"for {args.seconds:g} s; launcher {args.launcher}; build logs {'on' if args.build_logs else 'off'}; "
        f"ecs.launch_rate {args.launch_rate:g}"
    )
    header = (
        f"{'queue':<8} {'sinks':<11} {'prefetch':>8} {'(a) raw/s':>10} {'(b) disp/s':>11} {'b/a':>6} "
        f"{'(b) term/s':>11} {'(c) p50 ms':>11} {'p99 ms':>8} {'max ms':>8} {'term p99':>9} "
        f"{'offered/s':>9} {'pub lag ms':>10} {'CPU ms/job':>10} {'hops/job':>8}"
    )
    print(header)
    print("-" * len(header))
    for queue_type, measured in raw.items():
        for when, a in zip(("before", "after"), measured, strict=False):
            print(
                f"{queue_type:<8} {'raw ' + when:<11} {RAW_PREFETCH:>8} {a.rate:>10.0f} {'':>11} {'':>6} "
                f"{'':>11} {'':>11} {'':>8} {'':>8} {'':>9} {'':>9} {'':>10} {a.cpu_ms_per_job:>10.2f}"
            )
    for r in results:
        ratio = ratio_of(r, raw)
        line = (
            f"{r.queue_type:<8} {','.join(r.variant.sinks):<11} {r.variant.prefetch:>8} {'':>10} "
            f"{r.dispatch_rate:>11.0f} {'-' if ratio is None else f'{ratio:.2f}':>6} {r.terminal_rate:>11.0f}"
        )
        if r.latency is not None:
            lat = r.latency
            line += (
                f" {lat.p50_ms:>11.1f} {lat.p99_ms:>8.1f} {lat.max_ms:>8.1f} {lat.terminal_p99_ms:>9.1f}"
                f" {lat.offered_rate:>9.0f} {lat.publisher_lag_ms:>10.1f}"
            )
        else:
            line += f" {'':>11} {'':>8} {'':>8} {'':>9} {'':>9} {'':>10}"
        print(f"{line} {r.cpu_ms_per_job:>10.2f} {r.hops_per_job:>8.1f}")
    print()
    for r in results:
        ratio = ratio_of(r, raw)
        if ratio is not None:
            mark = SUCCESS if ratio >= TARGET_RATIO else WARNING
            print(f"{mark} {r.queue_type} {r.variant}: b/a = {ratio:.2f} (target >= {TARGET_RATIO:.1f})")
        if r.latency is not None:
            mark = SUCCESS if r.latency.p99_ms < TARGET_P99_MS else WARNING
            print(
                f"{mark} {r.queue_type} {r.variant}: p99 publish -> dispatched = {r.latency.p99_ms:.1f} ms "
                f"at {r.latency.offered_rate:.0f} jobs/s offered (target < {TARGET_P99_MS:.0f} ms)"
            )


def ratio_of(result: PipelineResult, raw: dict[str, list[RawResult]]) -> float | None:
    """(b)/(a) for the result's queue type, (a) being the mean of its measurements (if any)."""
    measured = raw.get(result.queue_type)
    return result.dispatch_rate / statistics.fmean(a.rate for a in measured) if measured else None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="jobs of (a) and (b)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="offered jobs/s of (c)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of (c); 0 skips it")
    parser.add_argument(
        "--queue-types",
        type=lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
        default=DEFAULT_QUEUE_TYPES,
        help="comma-separated: quorum, classic",
    )
    parser.add_argument(
        "--variants",
        type=lambda text: tuple(Variant.parse(v.strip()) for v in text.split(",") if v.strip()),
        default=tuple(Variant.parse(v) for v in DEFAULT_VARIANTS),
        help="comma-separated SINKS/PREFETCH, sinks joined by '+' (default: %(default)s)",
    )
    parser.add_argument(
        "--launch-rate", type=float, default=UNPACED_LAUNCH_RATE, help="ecs.launch_rate of (b)/(c)"
    )
    parser.add_argument(
        "--launch-burst", type=int, default=UNPACED_LAUNCH_BURST, help="ecs.launch_burst of (b)/(c)"
    )
    parser.add_argument("--no-raw", action="store_true", help="skip (a) (e.g. while profiling (b))")
    parser.add_argument(
        "--launcher",
        choices=("local", "instant"),
        default="local",
        help="local: the real local launcher running `true`; instant: a stand-in with no process",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=LOCAL_MAX_CONCURRENT,
        help="limits.max_concurrent with --launcher local (default %(default)s)",
    )
    parser.add_argument(
        "--build-logs",
        choices=("on", "off"),
        default="on",
        help="follow the workers' build logs (logs.sinks redis, the default) or not (logs.sinks empty)",
    )
    parser.add_argument("--log-level", default="WARNING", help="the orchestrator's log level")
    parser.add_argument("--log-file", help="write the orchestrator's log here instead of stderr")
    args = parser.parse_args()
    args.build_logs = args.build_logs == "on"
    for queue_type in args.queue_types:
        if queue_type not in ("quorum", "classic"):
            parser.error(f"--queue-types: {queue_type!r} is neither quorum nor classic")
    if args.n < 1 or args.rate <= 0 or args.seconds < 0:
        parser.error("--n must be >= 1, --rate > 0, --seconds >= 0")
    return args


def setup_logging(level: str, path: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("pika", "pykka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def describe_environment() -> str:
    """What the figures depend on: the code's commit, the broker, the machine and how busy it is."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    try:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    except pika.exceptions.AMQPError as e:
        raise BenchError(f"cannot connect to RabbitMQ ({e!r})") from None
    try:
        server = connection._impl.server_properties  # pika keeps them only here
        version = server.get("version", b"?")
        version = version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"code {commit}; RabbitMQ {version}; {os.cpu_count()} CPUs; load average {load}"


def main() -> int:
    args = parse_args()
    setup_logging(args.log_level, args.log_file)
    HOPS.install()
    raw: dict[str, list[RawResult]] = {}
    results: list[PipelineResult] = []
    errors = 0
    started = time.monotonic()
    try:
        print(f"{PROGRESS} {describe_environment()}", flush=True)
    except BenchError as e:
        print(f"{FAILURE} {e}", flush=True)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as state_dir:

        def measure_a(queue_type: QueueType, when: str) -> int:
            if args.no_raw:
                return 0
            try:
                a = measure_raw(queue_type, args.n, state_dir)
            except MEASUREMENT_ERRORS as e:
                print(f"{FAILURE} {queue_type} (a) raw pika loop, {when}: {e!r}", flush=True)
                return 1
            raw.setdefault(queue_type, []).append(a)
            print(f"{PROGRESS} {queue_type} (a) raw pika loop, {when}: {a.rate:.0f} jobs/s", flush=True)
            return 0

        for queue_type in args.queue_types:
            errors += measure_a(queue_type, "before")
            for variant in args.variants:
                try:
                    result = measure_pipeline(queue_type, variant, args, state_dir)
                except MEASUREMENT_ERRORS as e:
                    errors += 1
                    print(f"{FAILURE} {queue_type} {variant}: {e!r}", flush=True)
                    continue
                results.append(result)
                lat = result.latency
                print(
                    f"{PROGRESS} {queue_type} {variant}: (b) {result.dispatch_rate:.0f} jobs/s dispatched, "
                    f"{result.terminal_rate:.0f} jobs/s terminal"
                    + (f"; (c) p50 {lat.p50_ms:.1f} ms p99 {lat.p99_ms:.1f} ms" if lat else ""),
                    flush=True,
                )
            errors += measure_a(queue_type, "after")
    print_table(raw, results, args)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    summary = f"took {time.monotonic() - started:.0f} s; load average at the end {load}"
    print(f"\n{FAILURE} {errors} error(s); {summary}" if errors else f"\n{SUCCESS} {summary}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
