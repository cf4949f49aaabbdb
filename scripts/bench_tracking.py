#!/usr/bin/env python3
"""Issue 5's tracking figures: the memory of one process following 10,000 running tasks, and the ECS
calls one poll cycle of that many tasks costs.

Memory. Each measurement runs in a fresh Python process (this script with ``--stage``), so that no
stage inherits memory that an earlier one freed but the allocator kept. RSS is ``VmRSS`` from
``/proc/self/status`` after ``gc.collect()``. The inputs are realistic: every job is decoded and
validated from its own JSON body shaped like examples/build.json (own deploymentId), every handle has a
task ARN shaped like a real ECS one (``arn:aws:ecs:<region>:<account>:task/<cluster>/<32 hex>``).

* ``table``: a :class:`~orchestrator.tracking.TaskTable` holding the n (handle, job) pairs;
* ``monitor``: the real ``TimeoutMonitorActor`` (pykka thread, executor, coordination on the real
  Redis under a key prefix of this run) told to ``Track`` the n tasks, after one poll cycle in which a
  launcher that reports every task RUNNING made it publish n ``running`` events; each launch also went
  through the Dispatcher's :class:`~orchestrator.launch.guard.GuardedLauncher` (its in-process map of
  launched attempts) and took a concurrency slot (:class:`~orchestrator.slots.LocalSlots`), which is
  all the per-task state a process keeps. Launch markers live in Redis, not in the process, and are
  left out (``markers=None``).

ECS calls. moto in-process (``mock_aws``) gets the n tasks from RunTask calls with ``count=10`` and the
parameters :meth:`EcsLauncher.run_task_params` builds for a real request (so n/10 RunTask calls, far
faster than n), then one ``EcsLauncher.describe`` of all n handles, as the TimeoutMonitor makes once per
poll: the DescribeTasks calls it made (``launcher.api_calls``) against ceil(n/100), and the time, with
the part of it spent inside moto's own ``describe_tasks`` (which scans every task it holds per call).

Usage: ``.venv/bin/python scripts/bench_tracking.py [--tasks 10000]``
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import math
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final
from unittest import mock


def rss_kb() -> int:
    """This process's resident set size in kB (``VmRSS``), after a full garbage collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


# Read before the orchestrator is imported: the interpreter and the standard library only.
START_RSS_KB: Final = rss_kb()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from launch.helpers import fargate_network  # noqa: E402 - the tests' moto world

from orchestrator.attempt_events import OutcomeDurable  # noqa: E402
from orchestrator.config import Config, load_config  # noqa: E402 - after the reading above
from orchestrator.launch.base import LaunchRequest, TaskHandle, TaskState  # noqa: E402
from orchestrator.launch.ecs import DESCRIBE_CONCURRENCY  # noqa: E402

#: The added latency of the network experiment, and how many tasks it describes.
ECS_LATENCY_SECONDS: Final = 0.1
LATENCY_TASKS: Final = 2000
from orchestrator.messages import SourceJob, encode  # noqa: E402
from orchestrator.tracking import TaskTable  # noqa: E402
from orchestrator.validation import JobValidator  # noqa: E402

DEFAULT_TASKS: Final = 10_000
REGION: Final = "us-east-1"
ACCOUNT: Final = "123456789012"
CLUSTER: Final = "blacktree-builds"
#: RunTask starts at most 10 tasks per call.
RUN_TASK_COUNT: Final = 10
#: DescribeTasks takes at most 100 tasks per call.
DESCRIBE_BATCH: Final = 100
#: Longest any child stage or wait may take.
STAGE_TIMEOUT_SECONDS: Final = 120.0
MONITOR_POLL_SECONDS: Final = 0.2
KB: Final = 1024
MB: Final = 1024 * 1024

#: examples/build.json (portNumber as a number, as the schema wants it).
BUILD_JOB: Final[dict[str, Any]] = {
    "type": "build",
    "deploymentId": "dep-7f3a9c21",
    "repository": "https://github.com/blacktree-dev/sample-app.git",
    "branch": "main",
    "dockerFilePath": "Dockerfile",
    "composeFilePath": "docker-compose.yml",
    "contextDir": ".",
    "createdAt": "2026-01-15T10:30:00Z",
    "portNumber": 3000,
    "autoDeploy": False,
}


# --- realistic inputs ---------------------------------------------------------------------------


def bench_config(**environ: str) -> Config:
    """A valid config for the benchmark (Fargate launcher; nothing is contacted by building it)."""
    return load_config(
        environ={
            "ORCH_LAUNCHER_DEFAULT": "fargate",
            "ORCH_ECS_REGION": REGION,
            "ORCH_ECS_CLUSTER": CLUSTER,
            "ORCH_ECS_TASK_DEFINITION": "blacktree-worker:12",
            "ORCH_ECS_SUBNETS": "subnet-0a1b2c3d4e5f67890",
            "ORCH_ECS_SECURITY_GROUPS": "sg-0123456789abcdef0",
            **environ,
        }
    )


def job_body(n: int) -> bytes:
    """The n-th job's JSON body: examples/build.json with its own deploymentId."""
    return encode({**BUILD_JOB, "deploymentId": f"dep-{n:08x}"})


def make_jobs(config: Config, count: int) -> list[SourceJob]:
    """``count`` jobs, each validated from its own body, as the Validator hands them on."""
    validator = JobValidator(config.validation)
    jobs: list[SourceJob] = []
    for n in range(count):
        job = validator.validate(job_body(n))
        if not isinstance(job, SourceJob):
            raise SystemExit(f"❌ the benchmark's job does not validate: {job}")
        jobs.append(job)
    return jobs


def task_arn() -> str:
    """A task ARN shaped like a real ECS one (long ARN format, 32 hex digit task id)."""
    return f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/{CLUSTER}/{uuid.uuid4().hex}"


def request_for(job: SourceJob, instance: str, now: float) -> LaunchRequest:
    return LaunchRequest(
        job=job, attempt=1, instance_id=instance, start_deadline=now + 600, deadline=now + 7200
    )


def handle_for(request: LaunchRequest, arn: str, cluster: str) -> TaskHandle:
    """The handle EcsLauncher.launch builds for ``request`` once RunTask answered ``arn``."""
    return TaskHandle.launched(request, launcher="fargate", task_id=arn, cluster=cluster)


# --- memory stages (each in its own process) ----------------------------------------------------------


class RunningLauncher:
    """A launcher whose every task is RUNNING; ``launch`` returns the handle prepared for the request."""

    name = "fargate"

    def __init__(self, handles: dict[str, TaskHandle]) -> None:
        self._handles = handles
        self.described: list[int] = []

    def launch(self, request: LaunchRequest) -> TaskHandle:
        return self._handles.pop(request.job.deployment_id)

    def find(self, deployment_id: str, attempt: int) -> TaskHandle | None:
        return None

    def describe(self, handles: Sequence[TaskHandle]) -> list[TaskState]:
        self.described.append(len(handles))
        return [TaskState(handle=h, phase="running") for h in handles]

    def stop(self, handle: TaskHandle, reason: str) -> None:
        """Nothing runs."""

    def list_owned(self) -> list[TaskHandle]:
        return []

    def job_of(self, handle: TaskHandle) -> SourceJob | None:
        return None

    def forget(self, handle: TaskHandle) -> None:
        """Nothing is kept."""


class CountingSink:
    """Stands in for an actor the monitor tells things to (publisher, rate limiter, listener)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.told = 0

    def tell(self, message: object) -> None:
        with self._lock:
            self.told += 1


def wait_for(condition: Callable[[], bool], what: str, timeout: float = STAGE_TIMEOUT_SECONDS) -> None:
    """Poll ``condition`` until it holds; give up with an error after ``timeout`` seconds."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"❌ timed out after {timeout:.0f} s waiting for {what}")
        pause.wait(0.05)


def stage_table(count: int) -> dict[str, Any]:
    """RSS of a TaskTable following ``count`` tasks."""
    config = bench_config()
    from orchestrator.coordination import instance_id

    me = instance_id()
    before = rss_kb()
    jobs = make_jobs(config, count)
    now = time.time()
    table = TaskTable()
    for job in jobs:
        table.add(handle_for(request_for(job, me, now), task_arn(), config.ecs.cluster), job)
    del jobs
    after = rss_kb()
    assert len(table) == count
    # Cross-check: the bytes of live Python objects a second, identical table adds (tracemalloc's
    # own bookkeeping would distort RSS, so this comes after the RSS reading).
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    second = TaskTable()
    for job in make_jobs(config, count):
        second.add(handle_for(request_for(job, me, now), task_arn(), config.ecs.cluster), job)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    return {"before_kb": before, "after_kb": after, "traced_bytes": traced}


def _ignore_durable(_: OutcomeDurable) -> None:
    """Kept nothing: a list of outcomes would be memory this stage measures."""


def stage_monitor(count: int) -> dict[str, Any]:
    """RSS of the real TimeoutMonitor actor (plus guard and slots) following ``count`` tasks."""
    import redis

    from actors.timeout_monitor import TimeoutMonitorActor
    from orchestrator.commands import Track
    from orchestrator.coordination import (
        DoneMarkers,
        InstanceRegistry,
        PendingRetries,
        StopMarkers,
        connect_redis,
        instance_id,
    )
    from orchestrator.delivery import Settler
    from orchestrator.launch.guard import GuardedLauncher
    from orchestrator.reconcile import Reconciler
    from orchestrator.runtime.actor import Ping, StandaloneReporter
    from orchestrator.shared import Coordination
    from orchestrator.slots import make_slot_pool

    prefix = f"bench-tracking-{uuid.uuid4().hex[:8]}"
    config = bench_config(
        ORCH_LIMITS_POLL_SECONDS=str(MONITOR_POLL_SECONDS),
        ORCH_LIMITS_MAX_CONCURRENT=str(count * 2),
        ORCH_REDIS_KEY_PREFIX=prefix,
    )
    me = instance_id()
    client = connect_redis(config.redis)
    registry = InstanceRegistry(client, prefix, me, config.limits.lease_seconds)
    done = DoneMarkers(client, prefix)
    prepared: dict[str, TaskHandle] = {}
    launcher = RunningLauncher(prepared)
    coordination = Coordination(
        instance_id=me,
        slots=make_slot_pool(config, me, client),
        stop_markers=StopMarkers(client, prefix),
        pending_retries=PendingRetries(client, prefix),
        done_markers=done,
        registry=registry,
        reconciler=Reconciler({"fargate": launcher}, registry, done, me),
    )
    guard = GuardedLauncher(launcher, me, None)
    table = TaskTable()
    publisher = CountingSink()
    sinks: dict[str, Any] = {"publisher": publisher, "rate_limiter": CountingSink()}
    monitor = TimeoutMonitorActor.start(
        StandaloneReporter(),
        config,
        {"fargate": launcher},
        {"fargate": guard},
        table,
        coordination,
        sinks,
        Settler(),
        _ignore_durable,  # (Completions' hand-off in the real process; no task ends in this stage)
    )
    try:
        monitor.ask(Ping(), timeout=STAGE_TIMEOUT_SECONDS)
        before = rss_kb()
        jobs = make_jobs(config, count)
        now = time.time()
        for job in jobs:
            request = request_for(job, me, now)
            prepared[job.deployment_id] = handle_for(request, task_arn(), config.ecs.cluster)
            coordination.slots.try_acquire(job.deployment_id)  # as the RateLimiter does
            handle = guard.launch(request)  # as the Dispatcher's launch thread does
            monitor.tell(Track(handle=handle, job=job))
        del jobs, job, request, handle
        wait_for(lambda: publisher.told >= count, f"{count} running events (one poll cycle)")
        after = rss_kb()
        followed = len(table)
        all_running = all(t.seen_running for t in table)
    finally:
        monitor.stop(timeout=30)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass
        client.close()
    if followed != count or not all_running:
        raise SystemExit(f"❌ the monitor follows {followed} tasks (all running: {all_running}), not {count}")
    return {"before_kb": before, "after_kb": after, "polls": launcher.described}


STAGES: Final[dict[str, Callable[[int], dict[str, Any]]]] = {"table": stage_table, "monitor": stage_monitor}


def run_stage(name: str, count: int) -> dict[str, Any]:
    """Run one memory stage in a fresh interpreter and return what it measured."""
    out = subprocess.run(
        [sys.executable, __file__, "--stage", name, "--tasks", str(count)],
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "PYTHONPATH": _repo_path()},
    )
    if out.returncode != 0:
        raise SystemExit(f"❌ stage {name} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _repo_path() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{root}{os.pathsep}{existing}" if existing else root


def print_memory(count: int) -> None:
    print(f"🔄 memory of {count:,} tracked tasks (each stage in a fresh process; VmRSS after gc.collect())")
    print(f"   empty process (python + stdlib, this run):     {START_RSS_KB / KB:7.1f} MB")
    table = run_stage("table", count)
    monitor = run_stage("monitor", count)
    print(f"   stage process after imports (table stage):     {table['before_kb'] / KB:7.1f} MB")
    print(f"   stage process after imports (monitor stage):   {monitor['before_kb'] / KB:7.1f} MB")
    for label, result in (
        ("TaskTable alone (handle + job per task)", table),
        ("real TimeoutMonitor + guard + slots, polled", monitor),
    ):
        grown = (result["after_kb"] - result["before_kb"]) * KB
        print(
            f"✅ {label:<44} +{grown / MB:6.1f} MB = {grown / count:6.0f} bytes/task "
            f"(RSS {result['before_kb'] / KB:.1f} -> {result['after_kb'] / KB:.1f} MB)"
        )
    print(
        f"   Python objects of the TaskTable (tracemalloc, a second table): "
        f"{table['traced_bytes'] / count:.0f} bytes/task"
    )
    polls = monitor["polls"]
    print(
        f"   the monitor saw all {count:,} RUNNING after {len(polls)} poll(s) of its launcher "
        f"(handles per describe() call: {', '.join(f'{n:,}' for n in polls)})"
    )


# --- ECS calls per poll cycle (moto) ----------------------------------------------------------------


def print_ecs_calls(count: int) -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    import boto3
    from moto import mock_aws
    from moto.ecs.models import ecs_backends
    from moto.moto_api import state_manager

    from orchestrator.coordination import instance_id
    from orchestrator.launch.ecs import EcsLauncher

    print(f"🔄 ECS calls of one poll cycle of {count:,} tasks (moto in-process, mock_aws)")
    # moto moves a task one state on per DescribeTasks by default; ours stay RUNNING, like build workers.
    state_manager.set_transition("ecs::task", {"progression": "manual", "times": 10**9})
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ecs = boto3.client("ecs", region_name=REGION)
        subnet, group, task_definition = fargate_network(ec2, ecs, CLUSTER, "blacktree-worker")
        config = bench_config(
            ORCH_ECS_TASK_DEFINITION=task_definition, ORCH_ECS_SUBNETS=subnet, ORCH_ECS_SECURITY_GROUPS=group
        )
        launcher = EcsLauncher(config, "FARGATE")
        me = instance_id()

        # Given count tasks in ECS: RunTask of count=10 with the launcher's own parameters per call
        started = time.monotonic()
        jobs = make_jobs(config, count // RUN_TASK_COUNT)
        handles: list[TaskHandle] = []
        now = time.time()
        for job in jobs:
            request = request_for(job, me, now)
            params = {**launcher.run_task_params(request), "count": RUN_TASK_COUNT}
            for task in launcher.client.run_task(**params)["tasks"]:
                handles.append(handle_for(request, str(task["taskArn"]), config.ecs.cluster))
        created = time.monotonic() - started
        print(
            f"   created {len(handles):,} tasks with {len(jobs):,} RunTask calls (count={RUN_TASK_COUNT}, "
            f"EcsLauncher.run_task_params of a real request) in {created:.1f} s"
        )

        # When the monitor's poll describes them all
        batch_sizes: list[int] = []

        def note_batch(params: dict[str, Any], **_: Any) -> None:
            batch_sizes.append(len(params["tasks"]))  # None: the parameters go on unchanged

        launcher.client.meta.events.register("provide-client-params.ecs.DescribeTasks", note_batch)
        backend = ecs_backends[ACCOUNT][REGION]
        in_moto = [0.0]
        moto_describe = backend.describe_tasks

        def timed_describe(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return moto_describe(*args, **kwargs)
            finally:
                in_moto[0] += time.perf_counter() - began

        launcher.api_calls.clear()
        # Instrument moto (not our code) to split the cycle's time.
        with mock.patch.object(backend, "describe_tasks", timed_describe):
            began = time.perf_counter()
            states = launcher.describe(handles)
            cycle = time.perf_counter() - began
        calls = launcher.api_calls["DescribeTasks"]

        # And with a network between us and ECS: 100 ms added to every DescribeTasks, one at a time
        # (the baseline) against DESCRIBE_CONCURRENCY at a time.
        def network(**_: Any) -> None:
            time.sleep(ECS_LATENCY_SECONDS)

        launcher.client.meta.events.register("before-call.ecs.DescribeTasks", network)
        some = handles[:LATENCY_TASKS]
        timings: dict[int, float] = {}
        for workers in (1, DESCRIBE_CONCURRENCY):
            launcher._describe_pool = concurrent.futures.ThreadPoolExecutor(workers)
            began = time.perf_counter()
            launcher.describe(some)
            timings[workers] = time.perf_counter() - began
    state_manager.unset_transition("ecs::task")

    expected = math.ceil(len(handles) / DESCRIBE_BATCH)
    phases = {phase: sum(s.phase == phase for s in states) for phase in {s.phase for s in states}}
    in_order = [s.handle for s in states] == handles
    sizes = sorted(set(batch_sizes))
    mark = "✅" if calls == expected and len(states) == len(handles) and in_order else "❌"
    print(
        f"{mark} one EcsLauncher.describe({len(handles):,} handles): {calls} DescribeTasks calls "
        f"(expected ceil({len(handles)}/{DESCRIBE_BATCH}) = {expected}), ARNs per call {sizes}, "
        f"other ECS calls {sum(launcher.api_calls.values()) - launcher.api_calls['DescribeTasks']}"
    )
    print(f"   states: {len(states):,} {phases}, in the handles' order: {in_order}")
    print(
        f"   naive one DescribeTasks per task: {len(handles):,} calls; batched makes "
        f"{len(handles) / max(calls, 1):.0f}x fewer"
    )
    print(
        f"   cycle time {cycle:.1f} s wall for {calls} calls, {DESCRIBE_CONCURRENCY} at a time; moto's "
        f"describe_tasks (it scans all {len(handles):,} tasks per call, one thread at a time) was busy "
        f"{in_moto[0]:.1f} s summed over the threads"
    )
    one, several = timings[1], timings[DESCRIBE_CONCURRENCY]
    print(
        f"   with {ECS_LATENCY_SECONDS * 1000:.0f} ms added to each DescribeTasks, {len(some):,} tasks: "
        f"one call at a time {one:.2f} s, {DESCRIBE_CONCURRENCY} at a time {several:.2f} s "
        f"({one / several:.1f}x faster; moto's own CPU time per call does not overlap)"
    )
    if mark == "❌":
        raise SystemExit(1)


# --- main -----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS, help="tasks to track (default 10000)")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.stage:
        print(json.dumps(STAGES[args.stage](args.tasks)))
        return
    if args.tasks < 1 or args.tasks % RUN_TASK_COUNT:
        raise SystemExit(f"--tasks must be a positive multiple of {RUN_TASK_COUNT}")
    began = time.monotonic()
    print_memory(args.tasks)
    print_ecs_calls(args.tasks)
    print(f"   whole run: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
