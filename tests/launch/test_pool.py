"""LaunchPool and TokenBucket: bounded concurrency, pacing, throttling retries, nothing escapes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import REGISTRY
from support import wait_until

from orchestrator.errors import CapacityError, LaunchError, PermanentLaunchError, ThrottledError
from orchestrator.launch.base import LaunchRequest, TaskHandle, TaskState
from orchestrator.launch.errors import LaunchCancelledError
from orchestrator.launch.pool import LaunchPool, TokenBucket
from orchestrator.messages import BuildJob, SourceJob

WAIT = 10.0


class FakeClock:
    """Monotonic time that moves only when told (or when the bucket 'sleeps')."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeLauncher:
    """Counts concurrent ``launch`` calls; each call waits for ``gate`` (when given) before returning.

    ``script`` maps a deployment id to what its successive calls raise (None: succeed).
    """

    name = "fake"

    def __init__(
        self, gate: threading.Event | None = None, script: dict[str, list[Exception | None]] | None = None
    ):
        self.gate = gate
        self.script = script or {}
        self.lock = threading.Lock()
        self.current = 0
        self.max_seen = 0
        self.calls: list[str] = []

    def launch(self, request: LaunchRequest) -> TaskHandle:
        deployment = request.job.deployment_id
        with self.lock:
            self.current += 1
            self.max_seen = max(self.max_seen, self.current)
            self.calls.append(deployment)
            planned = self.script.get(deployment)
            outcome = planned.pop(0) if planned else None
        try:
            if self.gate is not None:
                assert self.gate.wait(WAIT), "the test never opened the gate"
            if outcome is not None:
                raise outcome
            return handle_of(request)
        finally:
            with self.lock:
                self.current -= 1

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        return None

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        return []

    def stop(self, handle: TaskHandle, reason: str) -> None:
        return None

    def list_owned(self) -> list[TaskHandle]:
        return []

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        return None

    def forget(self, handle: TaskHandle) -> None:
        return None


def request(deployment_id: str, attempt: int = 1) -> LaunchRequest:
    job = BuildJob(deployment_id=deployment_id, repository="https://github.com/blacktree/app.git")
    return LaunchRequest(job=job, attempt=attempt, instance_id="orch-a", start_deadline=0.0, deadline=None)


def handle_of(req: LaunchRequest) -> TaskHandle:
    return TaskHandle(
        launcher="fake",
        task_id=f"task-{req.job.deployment_id}-{req.attempt}",
        deployment_id=req.job.deployment_id,
        attempt=req.attempt,
        job_type=req.job.type,
        instance_id=req.instance_id,
        launched_at=0.0,
        start_deadline=req.start_deadline,
        deadline=req.deadline,
    )


class Results:
    """Collects on_done calls (from pool threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_deployment: dict[str, TaskHandle | LaunchError] = {}
        self.threads: set[str] = set()
        self.count = 0

    def __call__(self, req: LaunchRequest, result: TaskHandle | LaunchError) -> None:
        with self.lock:
            self.by_deployment[req.job.deployment_id] = result
            self.threads.add(threading.current_thread().name)
            self.count += 1


@pytest.fixture
def pools() -> Iterator[list[LaunchPool]]:
    """Pools to close after the test, whatever happens in it."""
    made: list[LaunchPool] = []
    yield made
    for pool in made:
        pool.close(WAIT)


# --- TokenBucket -------------------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock, sleep=clock.sleep)

    assert [bucket.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.now += 0.25
    assert not bucket.try_acquire()
    clock.now += 0.25
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_bucket_saves_no_more_than_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        assert bucket.try_acquire()

    clock.now += 3600

    assert sum(bucket.try_acquire() for _ in range(20)) == 5


def test_bucket_acquire_waits_for_the_next_token_within_its_timeout() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=4.0, burst=1, clock=clock, sleep=clock.sleep)
    assert bucket.acquire(timeout=0)

    assert not bucket.acquire(timeout=0.1)  # the next token is 0.25 s away
    assert bucket.acquire(timeout=1.0)

    assert clock.now == pytest.approx(1000.25)
    assert sum(clock.slept) == pytest.approx(0.25)


def test_bucket_paces_a_long_run_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=20.0, burst=100, clock=clock, sleep=clock.sleep)
    start = clock.now

    for _ in range(300):
        assert bucket.acquire(timeout=60)

    # 100 at once, then 200 more at 20/s.
    assert clock.now - start == pytest.approx(10.0)


def test_bucket_is_thread_safe() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=500, clock=clock, sleep=clock.sleep)
    taken = []
    lock = threading.Lock()

    def grab() -> None:
        mine = sum(bucket.try_acquire() for _ in range(100))
        with lock:
            taken.append(mine)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)

    assert sum(taken) == 500


# --- LaunchPool --------------------------------------------------------------------------------------


def test_pool_keeps_at_most_max_inflight_launches_in_flight(pools: list[LaunchPool]) -> None:
    gate = threading.Event()
    launcher = FakeLauncher(gate=gate)
    pool = LaunchPool(launcher, max_inflight=4, rate=1000.0, burst=1000)
    pools.append(pool)
    results = Results()

    started = time.monotonic()
    for i in range(25):
        pool.submit(request(f"dep-{i}"), results)
    submit_seconds = time.monotonic() - started

    wait_until(lambda: launcher.current == 4, WAIT, "4 launches in flight")
    assert pool.inflight() == 25
    gate.set()
    wait_until(lambda: results.count == 25, WAIT, "every on_done")

    assert submit_seconds < 0.5, "submit must not block on the launches"
    assert launcher.max_seen == 4
    assert all(isinstance(r, TaskHandle) for r in results.by_deployment.values())
    assert sorted(launcher.calls) == sorted(f"dep-{i}" for i in range(25))
    assert all(name.startswith("launch-fake-") for name in results.threads)
    assert pool.inflight() == 0


def test_pool_spends_one_token_per_launch(pools: list[LaunchPool]) -> None:
    clock = FakeClock()
    # The bucket's own "sleep" yields briefly without moving the fake clock: only the test adds tokens.
    pause = threading.Event()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock, sleep=lambda s: pause.wait(0.005))
    launcher = FakeLauncher()
    pool = LaunchPool(launcher, max_inflight=4, rate=1.0, burst=2, bucket=bucket)
    pools.append(pool)
    results = Results()

    for i in range(5):
        pool.submit(request(f"dep-{i}"), results)
    wait_until(lambda: results.count == 2, WAIT, "the burst of 2")
    assert len(launcher.calls) == 2

    clock.now += 1.0  # one more token
    wait_until(lambda: results.count == 3, WAIT, "one launch per token")
    assert len(launcher.calls) == 3

    clock.now += 2.0
    wait_until(lambda: results.count == 5, WAIT, "the rest")


def test_throttling_is_retried_inside_the_pool(pools: list[LaunchPool]) -> None:
    launcher = FakeLauncher(
        script={"dep-1": [ThrottledError("Rate exceeded"), ThrottledError("Rate exceeded")]}
    )
    pool = LaunchPool(launcher, max_inflight=2, rate=1000.0, burst=1000, backoff_base=0.001, backoff_max=0.01)
    pools.append(pool)
    results = Results()

    pool.submit(request("dep-1"), results)
    wait_until(lambda: results.count == 1, WAIT, "on_done")

    assert isinstance(results.by_deployment["dep-1"], TaskHandle)
    assert launcher.calls == ["dep-1"] * 3
    assert results.count == 1


def test_each_launch_call_is_timed_in_the_launch_duration_histogram(pools: list[LaunchPool]) -> None:
    # Two throttled calls and a successful one: three calls, each timed on its own (the backoff
    # between them is not launch time).
    launcher = FakeLauncher(
        script={"timed-1": [ThrottledError("Rate exceeded"), ThrottledError("Rate exceeded")]}
    )
    launcher.name = "timed-fake"
    pool = LaunchPool(launcher, max_inflight=1, rate=1000.0, burst=1000, backoff_base=0.2, backoff_max=0.2)
    pools.append(pool)
    results = Results()
    labels = {"launcher": "timed-fake"}

    def sample(suffix: str) -> float:
        value = REGISTRY.get_sample_value(f"orchestrator_launch_duration_seconds_{suffix}", labels)
        return value or 0.0

    before_count, before_sum = sample("count"), sample("sum")
    pool.submit(request("timed-1"), results)
    wait_until(lambda: results.count == 1, WAIT, "on_done")

    assert sample("count") - before_count == 3
    assert sample("sum") - before_sum < 0.2, "two backoffs of 0.2 s were counted as launch time"


def test_persistent_throttling_reaches_on_done_after_the_bound(pools: list[LaunchPool]) -> None:
    launcher = FakeLauncher(script={"dep-1": [ThrottledError("Rate exceeded")] * 10})
    pool = LaunchPool(
        launcher,
        max_inflight=1,
        rate=1000.0,
        burst=1000,
        throttle_retries=2,
        backoff_base=0.001,
        backoff_max=0.01,
    )
    pools.append(pool)
    results = Results()

    pool.submit(request("dep-1"), results)
    wait_until(lambda: results.count == 1, WAIT, "on_done")

    assert isinstance(results.by_deployment["dep-1"], ThrottledError)
    assert launcher.calls == ["dep-1"] * 3


def test_backoff_grows_exponentially_with_jitter_up_to_a_ceiling(pools: list[LaunchPool]) -> None:
    highest = LaunchPool(FakeLauncher(), 1, 1.0, 1, backoff_base=0.5, backoff_max=4.0, jitter=lambda: 0.999)
    lowest = LaunchPool(FakeLauncher(), 1, 1.0, 1, backoff_base=0.5, backoff_max=4.0, jitter=lambda: 0.0)
    pools.extend([highest, lowest])

    assert [round(highest.backoff(n), 2) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert [lowest.backoff(n) for n in (1, 2, 3, 4, 5)] == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_errors_never_escape_and_other_launch_errors_pass_through(pools: list[LaunchPool]) -> None:
    launcher = FakeLauncher(
        script={
            "bug": [RuntimeError("launcher bug")],
            "bad": [PermanentLaunchError("RunTask: ClientException: TaskDefinition not found")],
            "full": [CapacityError("RunTask failure: RESOURCE:MEMORY")],
        }
    )
    pool = LaunchPool(launcher, max_inflight=2, rate=1000.0, burst=1000)
    pools.append(pool)
    results = Results()

    for name in ("bug", "bad", "full", "fine"):
        pool.submit(request(name), results)
    wait_until(lambda: results.count == 4, WAIT, "every on_done")

    bug = results.by_deployment["bug"]
    assert type(bug) is LaunchError and "RuntimeError" in str(bug) and "launcher bug" in str(bug)
    assert type(results.by_deployment["bad"]) is PermanentLaunchError
    assert type(results.by_deployment["full"]) is CapacityError
    assert isinstance(results.by_deployment["fine"], TaskHandle)
    assert launcher.calls.count("bug") == 1  # not retried: only throttling is


def test_a_failing_on_done_does_not_stop_the_pool(pools: list[LaunchPool]) -> None:
    pool = LaunchPool(FakeLauncher(), max_inflight=1, rate=1000.0, burst=1000)
    pools.append(pool)
    results = Results()

    def explode(req: LaunchRequest, result: TaskHandle | LaunchError) -> None:
        raise ValueError("caller bug")

    pool.submit(request("dep-1"), explode)
    pool.submit(request("dep-2"), results)
    wait_until(lambda: results.count == 1, WAIT, "the second on_done")

    assert pool.inflight() == 0


def test_close_cancels_queued_requests_and_lets_running_ones_finish() -> None:
    gate = threading.Event()
    launcher = FakeLauncher(gate=gate)
    pool = LaunchPool(launcher, max_inflight=1, rate=1000.0, burst=1000)
    results = Results()
    pool.submit(request("running"), results)
    wait_until(lambda: launcher.current == 1, WAIT, "the first launch to start")
    pool.submit(request("queued-1"), results)
    pool.submit(request("queued-2"), results)

    closer = threading.Thread(target=pool.close, args=(WAIT,))
    closer.start()
    wait_until(lambda: results.count == 2, WAIT, "queued requests cancelled")
    gate.set()
    closer.join(WAIT)

    assert not closer.is_alive()
    assert isinstance(results.by_deployment["running"], TaskHandle)
    for name in ("queued-1", "queued-2"):
        cancelled = results.by_deployment[name]
        assert isinstance(cancelled, LaunchCancelledError)
        assert not cancelled.counts_as_attempt
    assert launcher.calls == ["running"]

    pool.submit(request("late"), results)  # after close: answered at once, in this thread
    assert isinstance(results.by_deployment["late"], LaunchCancelledError)
    assert pool.inflight() == 0
