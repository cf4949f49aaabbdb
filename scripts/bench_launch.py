#!/usr/bin/env python3
"""Launch throughput: LaunchPool vs one-at-a-time, against moto's ECS with a slow RunTask.

Every RunTask is delayed by ``--delay`` seconds (default 0.15, a realistic RunTask latency) by a botocore
``before-send`` hook, and goes to moto's server over HTTP. The same ``--launches`` Fargate launches
(default 200) are made twice in one run: one at a time (the baseline), then through a
:class:`~orchestrator.launch.pool.LaunchPool` (``--max-inflight`` 10, ``--rate`` 20/s, ``--burst`` 100,
the defaults of ``ecs.max_inflight_launches``, ``ecs.launch_rate``, ``ecs.launch_burst``).

The bucket starts full, so the first ``--burst`` launches go as fast as the in-flight limit allows;
the rates printed are overall, during the burst, after it, and over the last quarter (the sustained
rate, which the token bucket holds at ``--rate``). Finally one DescribeTasks poll of every launched
task shows the ECS calls a poll cycle costs.

Usage: ``.venv/bin/python scripts/bench_launch.py [--launches 200] [--delay 0.15] [--no-baseline]``
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from launch.helpers import fargate_network

from orchestrator.config import load_config
from orchestrator.errors import LaunchError
from orchestrator.launch.base import LaunchRequest, TaskHandle
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.launch.pool import LaunchPool
from orchestrator.messages import BuildJob

REGION = "us-east-1"
CLUSTER = "bench"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--delay", type=float, default=0.15, help="seconds added to every RunTask")
    parser.add_argument("--max-inflight", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time run")
    return parser.parse_args()


def make_world(endpoint: str) -> dict[str, str]:
    """Subnet, security group, cluster and a Fargate task definition in moto."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
    ecs = boto3.client("ecs", region_name=REGION, endpoint_url=endpoint)
    subnet, group, task_definition = fargate_network(ec2, ecs, CLUSTER, "bench-worker")
    return {
        "ORCH_LAUNCHER_DEFAULT": "fargate",
        "ORCH_ECS_REGION": REGION,
        "ORCH_ECS_ENDPOINT_URL": endpoint,
        "ORCH_ECS_CLUSTER": CLUSTER,
        "ORCH_ECS_TASK_DEFINITION": task_definition,
        "ORCH_ECS_SUBNETS": subnet,
        "ORCH_ECS_SECURITY_GROUPS": group,
    }


def requests(prefix: str, count: int) -> list[LaunchRequest]:
    now = time.time()
    return [
        LaunchRequest(
            job=BuildJob(deployment_id=f"{prefix}-{i}", repository="https://github.com/blacktree/app.git"),
            attempt=1,
            instance_id="bench",
            start_deadline=now + 600,
            deadline=now + 3600,
        )
        for i in range(count)
    ]


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


def run_baseline(launcher: EcsLauncher, count: int) -> tuple[float, list[TaskHandle]]:
    started = time.monotonic()
    handles = [launcher.launch(r) for r in requests("serial", count)]
    return rate(count, time.monotonic() - started), handles


def run_pool(launcher: EcsLauncher, args: argparse.Namespace) -> tuple[list[float], list[TaskHandle], int]:
    pool = LaunchPool(launcher, max_inflight=args.max_inflight, rate=args.rate, burst=args.burst)
    done_at: list[float] = []
    handles: list[TaskHandle] = []
    errors: list[LaunchError] = []
    lock = threading.Lock()
    all_done = threading.Event()

    def on_done(request: LaunchRequest, result: TaskHandle | LaunchError) -> None:
        with lock:
            done_at.append(time.monotonic())
            if isinstance(result, TaskHandle):
                handles.append(result)
            else:
                errors.append(result)
            if len(done_at) == args.launches:
                all_done.set()

    started = time.monotonic()
    for request in requests("pooled", args.launches):
        pool.submit(request, on_done)
    if not all_done.wait(timeout=600):
        raise SystemExit("❌ the pooled launches did not finish within 600 s")
    pool.close(timeout=10)
    return [t - started for t in sorted(done_at)], handles, len(errors)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        config = load_config(environ=make_world(f"http://{host}:{port}"))
        launcher = EcsLauncher(config, "FARGATE")

        def slow_run_task(**_: Any) -> None:
            time.sleep(args.delay)  # the latency of a real RunTask; returning None lets the request go

        launcher.client.meta.events.register("before-send.ecs.RunTask", slow_run_task)
        print(
            f"🔄 {args.launches} Fargate launches, RunTask delayed {args.delay * 1000:.0f} ms, "
            f"moto server at {host}:{port}; "
            f"pool: max_inflight={args.max_inflight} rate={args.rate:g}/s burst={args.burst}"
        )

        baseline = None
        handles: list[TaskHandle] = []
        if not args.no_baseline:
            baseline, handles = run_baseline(launcher, args.launches)
            print(f"one at a time:  {baseline:6.1f} launches/s")

        times, pooled, failed = run_pool(launcher, args)
        handles += pooled
        n = len(times)
        burst = min(args.burst, n)
        overall = rate(n, times[-1])
        print(
            f"LaunchPool:     {overall:6.1f} launches/s overall ({n} in {times[-1]:.2f} s, {failed} failed)"
        )
        print(f"  first {burst} (burst):      {rate(burst, times[burst - 1]):6.1f} /s")
        if n > burst:
            print(f"  after the burst ({n - burst}): {rate(n - burst, times[-1] - times[burst - 1]):6.1f} /s")
        quarter = max(1, n // 4)
        tail = rate(quarter, times[-1] - times[n - quarter - 1])
        print(f"  last {quarter} (sustained):  {tail:6.1f} /s   (target >= 18/s at rate {args.rate:g}/s)")
        if baseline:
            print(f"ratio pool/one-at-a-time: {overall / baseline:.1f}x")

        launcher.api_calls.clear()
        launcher.describe(handles)
        expected = math.ceil(len(handles) / 100)
        print(
            f"one poll of {len(handles)} tasks: {launcher.api_calls['DescribeTasks']} DescribeTasks calls "
            f"(ceil(n/100) = {expected})"
        )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
