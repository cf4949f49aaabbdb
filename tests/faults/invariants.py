"""The promises every fault scenario checks, as plain functions over what a run observed.

Each check returns the :class:`Violation` of one invariant (or None), naming the invariant, saying
what was wrong in numbers, and listing a few offending deploymentIds. :func:`violations` runs them all;
a scenario fails with every broken invariant at once, not only the first.

What is observed (:class:`Observation`):

- the status events as they arrived on status.queue (the AMQP side is the record: the Redis channel
  is fire-and-forget), in arrival order;
- the worker records (:mod:`faults.recording_worker`): when each (deploymentId, attempt) ran, where;
- after the run: the live global slot leases in Redis, each process's gauges, the depths of the
  execute and delay queues, the deploymentIds in the dead-letter queue, each process's /health, and
  how each process took a SIGTERM at the end.

Events are delivered at least once (README, "Jobs and status events"), so a repeated event — same
deploymentId, type, seq *and status* — is a duplicate and is dropped before counting. The status is
part of the key because every terminal status has the same rank: ``succeeded`` and ``stopped`` of one
attempt share a seq and are two different endings, not one.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from orchestrator.messages import StatusEvent

#: How many offending ids a violation lists.
EXAMPLES: Final = 5

ONE_TERMINAL: Final = "exactly one terminal event per job"
ONCE_PER_ATTEMPT: Final = "no (deploymentId, attempt) launched twice"
NOTHING_AFTER_TERMINAL: Final = "no event of a job after its terminal event"
OUTCOME: Final = "every job ends as its worker decided"
CAP: Final = "the global concurrency cap is never exceeded"
WORKERS_ENDED: Final = "every worker that started has ended"
NO_LEAKED_SLOT: Final = "no slot held by a finished job"
QUEUES_EMPTY: Final = "execute and delay queues empty at the end"
DEAD_LETTERS: Final = "the dead-letter queue holds exactly the jobs that failed every attempt, once each"
RECOVERY: Final = "both processes healthy and launching again within the bound after the fault"
CLEAN_SHUTDOWN: Final = "both processes shut down cleanly on SIGTERM (exit 0, no traceback)"


@dataclasses.dataclass(frozen=True)
class Arrival:
    """One status event as it arrived on status.queue."""

    index: int
    #: ``time.time()`` when the test's consumer got it.
    at: float
    event: StatusEvent


@dataclasses.dataclass(frozen=True)
class WorkerRun:
    """One run of the recording worker: a (deploymentId, attempt) started in process ``pid``."""

    deployment_id: str
    attempt: int
    pid: int
    started: float
    #: The orchestrator process that launched it (0 when it could not be read).
    launched_by: int
    ended: float | None = None
    exit_code: int | None = None


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken invariant."""

    invariant: str
    detail: str
    examples: tuple[str, ...] = ()

    def __str__(self) -> str:
        shown = f" (e.g. {', '.join(self.examples[:EXAMPLES])})" if self.examples else ""
        return f"BROKEN: {self.invariant}: {self.detail}{shown}"


@dataclasses.dataclass
class Observation:
    """Everything a scenario saw, for the checks."""

    #: deploymentId -> the terminal statuses it may end with.
    expected: Mapping[str, frozenset[str]]
    job_type: str
    arrivals: Sequence[Arrival]
    runs: Sequence[WorkerRun]
    cap: int
    #: Live global slot leases after the run settled: deploymentId -> owner instance id.
    live_slots: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Process name -> problems with its own view of its slots and tasks (non-zero gauges), if any.
    process_problems: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Queue name -> messages left in it.
    queue_depths: Mapping[str, int] = dataclasses.field(default_factory=dict)
    #: deploymentId of every message in the dead-letter queue (one entry per message).
    dead_lettered: Sequence[str] = ()
    #: deploymentIds that must end ``failed`` after every attempt failed (and so be dead-lettered).
    expected_dead: frozenset[str] = frozenset()
    #: Problems with recovery after the fault (unhealthy process, slow final batch), if any.
    recovery_problems: Sequence[str] = ()
    #: Problems when the processes were stopped with SIGTERM at the end, if any.
    shutdown_problems: Sequence[str] = ()


def read_worker_runs(path: Path) -> list[WorkerRun]:
    """Every run in a records file (see :mod:`faults.recording_worker`), ends matched to starts."""
    starts: dict[tuple[str, int, int], WorkerRun] = {}
    ends: dict[tuple[str, int, int], tuple[float, int]] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        words = line.split()
        if len(words) != 6:
            continue
        kind, deployment_id, attempt, pid, at, last = words
        key = (deployment_id, int(attempt), int(pid))
        if kind == "start":
            starts[key] = WorkerRun(deployment_id, int(attempt), int(pid), float(at), int(last))
        elif kind == "end":
            ends[key] = (float(at), int(last))
    runs = []
    for key, run in starts.items():
        ended, code = ends.get(key, (None, None))
        runs.append(dataclasses.replace(run, ended=ended, exit_code=code))
    return sorted(runs, key=lambda r: r.started)


def unique_events(arrivals: Iterable[Arrival]) -> list[Arrival]:
    """The first arrival of each (deploymentId, type, seq, status): duplicates dropped."""
    seen: set[tuple[str, str, int, str]] = set()
    first = []
    for arrival in arrivals:
        event = arrival.event
        key = (event.deployment_id, event.type, event.seq, event.status)
        if key not in seen:
            seen.add(key)
            first.append(arrival)
    return first


def events_by_job(observation: Observation) -> dict[str, list[Arrival]]:
    """Each expected job's unique events (of the job's own type), in arrival order."""
    jobs: dict[str, list[Arrival]] = {job: [] for job in observation.expected}
    for arrival in unique_events(observation.arrivals):
        event = arrival.event
        if event.deployment_id in jobs and event.type == observation.job_type:
            jobs[event.deployment_id].append(arrival)
    return jobs


def max_overlap(intervals: Iterable[tuple[float, float]]) -> tuple[int, float]:
    """The most intervals open at one instant, and the first instant it happened (ends before
    starts at the same instant: a slot given back can be taken at once)."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    peak_at = 0.0
    for at, step in points:
        running += step
        if running > peak:
            peak, peak_at = running, at
    return peak, peak_at


# --- the checks ------------------------------------------------------------------------------------


def check_one_terminal(observation: Observation) -> Violation | None:
    missing, several = [], []
    for job, arrivals in events_by_job(observation).items():
        terminals = [a.event for a in arrivals if a.event.terminal]
        if not terminals:
            missing.append(job)
        elif len(terminals) > 1:
            several.append(f"{job}: {'+'.join(f'{e.status}@{e.attempt}' for e in terminals)}")
    if not missing and not several:
        return None
    return Violation(
        ONE_TERMINAL,
        f"{len(missing)} of {len(observation.expected)} jobs have no terminal event, "
        f"{len(several)} have more than one",
        tuple(several[:EXAMPLES] + missing[:EXAMPLES]),
    )


def check_once_per_attempt(observation: Observation) -> Violation | None:
    counts = Counter((run.deployment_id, run.attempt) for run in observation.runs)
    twice = sorted(f"{job} attempt {attempt} x{n}" for (job, attempt), n in counts.items() if n > 1)
    if not twice:
        return None
    return Violation(ONCE_PER_ATTEMPT, f"{len(twice)} attempts were launched more than once", tuple(twice))


def check_nothing_after_terminal(observation: Observation) -> Violation | None:
    late = []
    for job, arrivals in events_by_job(observation).items():
        terminal_at = next((i for i, a in enumerate(arrivals) if a.event.terminal), None)
        if terminal_at is None:
            continue
        terminal = arrivals[terminal_at].event
        after_arrival = [a.event for a in arrivals[terminal_at + 1 :]]
        higher_seq = [a.event for a in arrivals if a.event.seq > terminal.seq]
        for event in {id(e): e for e in after_arrival + higher_seq}.values():
            late.append(f"{job}: {event.status}@{event.attempt} (seq {event.seq}) after {terminal.status}")
    if not late:
        return None
    jobs = {entry.split(":")[0] for entry in late}
    return Violation(
        NOTHING_AFTER_TERMINAL,
        f"{len(late)} events of {len(jobs)} jobs arrived after the job's terminal event or carry a "
        "higher seq",
        tuple(late),
    )


def check_outcomes(observation: Observation) -> Violation | None:
    wrong = []
    for job, arrivals in events_by_job(observation).items():
        terminal = next((a.event for a in arrivals if a.event.terminal), None)
        if terminal is not None and terminal.status not in observation.expected[job]:
            wanted = "/".join(sorted(observation.expected[job]))
            wrong.append(f"{job}: {terminal.status} (expected {wanted}; {terminal.reason or 'no reason'})")
    if not wrong:
        return None
    return Violation(OUTCOME, f"{len(wrong)} jobs ended otherwise than their worker decided", tuple(wrong))


def check_cap(observation: Observation) -> Violation | None:
    intervals = [(run.started, run.ended) for run in observation.runs if run.ended is not None]
    peak, at = max_overlap(intervals)
    if peak <= observation.cap:
        return None
    running = sorted(
        run.deployment_id
        for run in observation.runs
        if run.ended is not None and run.started <= at < run.ended
    )
    return Violation(CAP, f"{peak} workers ran at once (cap {observation.cap})", tuple(running))


def check_workers_ended(observation: Observation) -> Violation | None:
    open_runs = sorted(f"{r.deployment_id} attempt {r.attempt}" for r in observation.runs if r.ended is None)
    if not open_runs:
        return None
    return Violation(WORKERS_ENDED, f"{len(open_runs)} workers never recorded their end", tuple(open_runs))


def check_slots(observation: Observation) -> Violation | None:
    leaked = sorted(f"{job} (held by {owner})" for job, owner in observation.live_slots.items())
    problems = [f"{name}: {problem}" for name, problem in observation.process_problems.items()]
    if not leaked and not problems:
        return None
    return Violation(
        NO_LEAKED_SLOT,
        f"{len(leaked)} global slot leases still live after every job ended"
        + (f"; {'; '.join(problems)}" if problems else ""),
        tuple(leaked),
    )


def check_queues(observation: Observation) -> Violation | None:
    left = {name: n for name, n in observation.queue_depths.items() if n}
    if not left:
        return None
    return Violation(QUEUES_EMPTY, ", ".join(f"{n} message(s) left in {name}" for name, n in left.items()))


def check_dead_letters(observation: Observation) -> Violation | None:
    counts = Counter(observation.dead_lettered)
    unexpected = sorted(job for job in counts if job not in observation.expected_dead)
    repeated = sorted(f"{job} x{n}" for job, n in counts.items() if n > 1)
    absent = sorted(observation.expected_dead - set(counts))
    if not unexpected and not repeated and not absent:
        return None
    return Violation(
        DEAD_LETTERS,
        f"{len(unexpected)} unexpected, {len(repeated)} dead-lettered more than once, "
        f"{len(absent)} of {len(observation.expected_dead)} expected failures missing",
        tuple(unexpected[:EXAMPLES] + repeated[:EXAMPLES] + absent[:EXAMPLES]),
    )


def check_recovery(observation: Observation) -> Violation | None:
    if not observation.recovery_problems:
        return None
    return Violation(RECOVERY, "; ".join(observation.recovery_problems))


def check_shutdown(observation: Observation) -> Violation | None:
    if not observation.shutdown_problems:
        return None
    return Violation(CLEAN_SHUTDOWN, "; ".join(observation.shutdown_problems))


CHECKS: Final[tuple[Callable[[Observation], Violation | None], ...]] = (
    check_one_terminal,
    check_once_per_attempt,
    check_nothing_after_terminal,
    check_outcomes,
    check_cap,
    check_workers_ended,
    check_slots,
    check_queues,
    check_dead_letters,
    check_recovery,
    check_shutdown,
)


def violations(observation: Observation) -> list[Violation]:
    """Every invariant ``observation`` breaks."""
    return [v for v in (check(observation) for check in CHECKS) if v is not None]


def launches_by_process(runs: Iterable[WorkerRun]) -> dict[int, int]:
    """How many workers each orchestrator process (by pid) launched."""
    counts: dict[int, int] = defaultdict(int)
    for run in runs:
        counts[run.launched_by] += 1
    return dict(counts)
