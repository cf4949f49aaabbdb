"""Faults injected mid-stream into two real orchestrator processes sharing RabbitMQ and Redis (issue 9).

Each scenario feeds a few hundred jobs (one in ten failing its first attempt, one in fifty failing
every attempt) to two ``orchestrator run`` processes with the local launcher and a global cap of 8,
injects its fault while they work, then checks every invariant of :mod:`faults.invariants`: one
terminal event per job, no attempt launched twice, nothing after a terminal event, every job ending
as its worker decided, the cap held, no slot leaked, queues empty, the dead-letter queue holding
exactly the jobs that failed every attempt, and both processes healthy and running a final batch
within 2 x ``limits.lease_seconds`` + a margin.

The figures of every scenario (time, runs, concurrency, recovery, stop latency) are printed in the
"fault scenarios" section of pytest's summary.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Final

import pytest
from pipeline.harness import publish

from . import recording_worker
from .harness import FaultRun, job_kind
from .invariants import read_worker_runs
from .services import ThrowawayRabbit, ThrowawayRedis
from .traffic import close_connections, stop_body

pytestmark = [pytest.mark.services, pytest.mark.slow]

MakeRun = Callable[..., FaultRun]

#: Longer than the lease (3 s): the stalled process's lease and slots lapse while it cannot act.
STALL_SECONDS: Final = 8.0
#: The issue's target is 2 s p99; this generous bound only catches stops that wait behind the backlog.
STOP_LATENCY_BOUND: Final = 10.0
STOPPED: Final = frozenset({"stopped"})
#: How long the stops scenario waits for its targets to run (or wait for their retry).
READY_SECONDS: Final = 120.0
#: The issue's condition for the stop latency target: this many jobs waiting for a slot.
BUSY_WAITING: Final = 50


def test_without_a_fault_every_invariant_holds(fault_run: MakeRun) -> None:
    # The control: if this fails, the other scenarios' failures are not about their fault.
    run = fault_run("control", jobs=100).start()
    run.feed(run.main_jobs())
    run.check()


def test_connections_closed_twice_mid_stream(fault_run: MakeRun) -> None:
    # First one process loses its connections while the other consumes on (the broker hands the
    # deliveries it held to the other), then both do, as with `rabbitmqctl close_all_connections`
    run = fault_run("close").start()
    run.feed(run.main_jobs())
    for fraction, names in ((0.25, ("a",)), (0.55, ("a", "b"))):
        run.wait_for_ended(fraction)
        with run.fault(f"the broker closed every connection of process {' and '.join(names)}"):
            closed = close_connections([run.processes[name] for name in names])
        run.notes.append(f"closed {closed} connections at {fraction:.0%} of the main batch")
        assert closed >= len(names), "each process has at least one connection to close"
    run.check()


def test_broker_restart_mid_stream(throwaway_rabbit: ThrowawayRabbit, fault_run: MakeRun) -> None:
    # Quorum queues, as in production: their at-least-once dead-lettering is what carries a retry
    # across a restart (classic queues' dead-lettering is at most once).
    run = fault_run("restart", broker_url=throwaway_rabbit.url, queue_type="quorum").start()
    run.feed(run.main_jobs()).join(60)  # all published first: the feed does not ride out the restart
    run.wait_for_ended(0.35)
    with run.fault("broker node stopped and started again"):
        throwaway_rabbit.stop()
        took = throwaway_rabbit.start()
    run.notes.append(f"the node took {took:.1f} s to accept clients again")
    run.check()


def test_redis_restart_that_loses_every_key(throwaway_redis: ThrowawayRedis, fault_run: MakeRun) -> None:
    run = fault_run("redis", redis_url=throwaway_redis.url).start()
    run.feed(run.main_jobs())
    run.wait_for_ended(0.35)
    with run.fault("redis-server killed and a fresh, empty one started on its port"):
        throwaway_redis.kill()
        throwaway_redis.start()
    run.check()


def test_one_process_killed_three_times(fault_run: MakeRun) -> None:
    run = fault_run("kill").start()
    run.feed(run.main_jobs())
    for fraction in (0.2, 0.4, 0.6):
        run.wait_for_ended(fraction)
        with run.fault("SIGKILL of process b, restarted at once"):
            run.processes["b"].kill9()
            run.restart("b")
    run.check()


def test_a_process_stalled_longer_than_its_lease(fault_run: MakeRun) -> None:
    run = fault_run("stall").start()
    run.feed(run.main_jobs())
    for fraction, name in ((0.25, "b"), (0.55, "a")):
        run.wait_for_ended(fraction)
        with run.fault(f"SIGSTOP of process {name} for {STALL_SECONDS:.0f} s, then SIGCONT"):
            process = run.processes[name]
            process.pause()
            try:
                time.sleep(STALL_SECONDS)  # the fault itself: how long the process cannot run
            finally:
                process.resume()
    run.check()


def test_stops_for_running_and_retry_waiting_jobs_while_jobs_wait_for_slots(fault_run: MakeRun) -> None:
    # Given a backlog (180 jobs at once: 8 run, scores wait for a slot, the rest wait in the queue)
    # among which 8 long jobs to stop while they run and 8 to stop while their retry waits 6 s; the
    # targets come early, so that the backlog is still there when each is stopped
    run = fault_run("stops", prefetch=30, retry_delays=(6, 6)).start()
    ids = []
    for n in range(180):
        if n < 96 and n % 12 == 5:
            ids.append(run.add_job(n, "long", STOPPED))
        elif n < 96 and n % 12 == 11:
            ids.append(run.add_job(n, "f1s", STOPPED))
        else:
            ids.append(run.add_job(n, job_kind(n)))
    run.main_ids = ids
    run.feed(ids, rate=200).join(60)
    targets = [d for d in ids if d.endswith(("-long", "-f1s"))]

    # When each is stopped as soon as it runs (long) or its retry waits (f1s)
    stopped_at: dict[str, float] = {}
    waiting_then: dict[str, int] = {}

    def stop_what_is_ready() -> bool:
        started = {r.deployment_id for r in read_worker_runs(run.records)}
        for target in targets:
            if target in stopped_at:
                continue
            ready = (
                target in started if target.endswith("-long") else "retrying" in run.events.statuses(target)
            )
            if ready:
                waiting_then[target] = sum(1 for d in ids if run.events.statuses(d)[-1:] == ["queued"])
                publish(run.config, stop_body(target))
                stopped_at[target] = time.time()
        return len(stopped_at) == len(targets)

    # (bounded waits: a target never stopped, or never ending, counts as a stop that never took effect)
    with run.fault(f"{len(targets)} stops published, each once its target ran or its retry waited"):
        deadline = time.monotonic() + READY_SECONDS
        while not stop_what_is_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
    deadline = time.monotonic() + recording_worker.LONG_SECONDS + 30
    while time.monotonic() < deadline and any(run.events.terminal(t) is None for t in stopped_at):
        time.sleep(0.05)

    # Then each ends stopped (the invariants check the outcome), soon
    latencies = {}
    for target in targets:
        terminal = run.events.terminal(target)
        ok = target in stopped_at and terminal is not None and terminal.event.status == "stopped"
        latencies[target] = terminal.at - stopped_at[target] if ok and terminal else math.inf
    busy = [latencies[t] for t in stopped_at if waiting_then[t] >= BUSY_WAITING]
    run.notes.append(
        f"stop latency (publish -> stopped event): {describe(list(latencies.values()))}; "
        f"while >= {BUSY_WAITING} jobs waited for a slot: {describe(busy)}; jobs waiting for a slot "
        f"when the stops were published: {min(waiting_then.values(), default=0)}-"
        f"{max(waiting_then.values(), default=0)}"
    )
    slow = sorted(f"{t}: {v:.1f} s" for t, v in latencies.items() if v > STOP_LATENCY_BOUND)
    outcome = run.finish()
    problems = [str(v) for v in outcome.violations]
    if slow:
        problems.append(
            f"BROKEN: a stop takes effect within {STOP_LATENCY_BOUND:.0f} s (target 2 s p99): "
            f"{len(slow)} of {len(latencies)} took longer or never did (e.g. {', '.join(slow[:5])})"
        )
    assert not problems, "\n".join(problems) + "\n" + outcome.report


def describe(latencies: list[float]) -> str:
    """``n stops: p50 .., p99 .., max ..`` (nearest rank; a stop that never took effect is infinite)."""
    if not latencies:
        return "no stops"
    ranked = sorted(latencies)
    p99 = ranked[min(len(ranked) - 1, math.ceil(0.99 * len(ranked)) - 1)]
    return (
        f"{len(ranked)} stops: p50 {statistics.median(ranked):.2f} s, p99 {p99:.2f} s, max {ranked[-1]:.2f} s"
    )
