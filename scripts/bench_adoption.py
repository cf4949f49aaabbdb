"""Time from one orchestrator process's SIGKILL to its tasks being adopted by another.

Two real ``orchestrator run`` processes share RabbitMQ, Redis and a local-launcher state directory.
Jobs whose workers sleep long are spread over both; the victim is killed with SIGKILL; the survivor's
``orchestrator_jobs_running`` gauge is polled until it follows every task. The expected time is about
one lease (``limits.lease_seconds``: the victim's liveness lease must expire) plus half a lease (how
often a process looks for lost owners) plus one poll.

Usage: .venv/bin/python scripts/bench_adoption.py [--lease 5] [--jobs 6] [--runs 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipeline.harness import EventCollector, publish, wait_until  # noqa: E402
from pipeline.processes import OrchestratorProcess  # noqa: E402
from support import isolated_config, with_overrides  # noqa: E402

from orchestrator.messages import BuildJob, encode  # noqa: E402

WORKER_SECONDS = 120


def running_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("orchestrator_jobs_running "):
                return float(line.split()[1])
    return -1.0


def one_run(lease: int, jobs: int, work: Path) -> tuple[float, int]:
    config = isolated_config(
        "adopt",
        broker__queue_type="classic",
        limits__lease_seconds=lease,
        limits__poll_seconds=0.5,
        local__command=f"{sys.executable} -c 'import time; time.sleep({WORKER_SECONDS})'",
    )
    base = config.redis.key_prefix
    config = with_overrides(config, local__state_dir=str(work / base / "state"))
    victim = OrchestratorProcess(config, work / f"{base}-victim.log").start()
    survivor = OrchestratorProcess(config, work / f"{base}-survivor.log").start()
    try:
        victim.wait_healthy()
        survivor.wait_healthy()
        ids = [f"{base.replace('.', '-')}-{n}" for n in range(jobs)]
        with EventCollector(config) as events:
            for deployment_id in ids:
                publish(
                    config, encode(BuildJob(deployment_id=deployment_id, repository="https://github.com/a/b"))
                )
            wait_until(lambda: all("running" in events.statuses(d) for d in ids), 60, "every task running")
        owned_by_victim = jobs - int(running_gauge(survivor.port))
        killed = time.monotonic()
        victim.kill9()
        wait_until(
            lambda: running_gauge(survivor.port) == jobs, 10 * lease + 30, "the survivor to follow all"
        )
        return time.monotonic() - killed, owned_by_victim
    finally:
        for process in (victim, survivor):
            if process.process is not None and process.process.poll() is None:
                process.stop()
        subprocess.run(["pkill", "-f", "--", str(work / base / "state")], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lease", type=int, default=5, help="limits.lease_seconds")
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the logs (printed path)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-adoption-"))
    print(f"logs in {work}")
    times: list[float] = []
    try:
        for n in range(args.runs):
            took, moved = one_run(args.lease, args.jobs, work)
            times.append(took)
            print(
                f"run {n + 1}: SIGKILL -> {moved} task(s) adopted by the survivor in {took:.2f} s", flush=True
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"lease {args.lease} s: adoption took median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s ({statistics.median(times) / args.lease:.2f} leases)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
