"""Run the whole pipeline on this machine: orchestrator + local launcher + reference worker.

Creates a small git repository to build (the examples name GitHub repositories, which a machine
without network cannot clone), points the example jobs at it, starts ``orchestrator run``, submits
each example with ``orchestrator submit --wait`` — build, test, deploy (which stays up, as a deployed
service does) and the stop that ends the deploy — and stops the orchestrator gracefully at the end.

Everything it writes is under ``var/quickstart/``; its queues, exchange and Redis keys are named
``quickstart*``. It removes them, and the tasks' state, when it ends (and, first, whatever an
interrupted run left), so a second run starts from nothing and shows the same result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pika
import redis

from orchestrator.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HEALTH_WAIT_SECONDS = 60.0
EXAMPLES = ("build", "test", "deploy", "stop")
RUN_ID = "quickstart"
#: How long the quickstart's deploy stays up unless stopped (the stop example ends it at once).
SERVE_SECONDS = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=quickstart", "-c", "user.email=quickstart@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


DOCKERFILE = 'FROM alpine:3.20\nCMD ["echo", "hello from blacktree"]\n'
COMPOSE = "services:\n  app:\n    build: .\n    ports: ['3000:3000']\n"


def make_demo_repository(path: Path, examples: list[dict[str, object]]) -> str:
    """A local repository with every file and branch the example jobs name."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for job in examples:
        context = path / str(job.get("contextDir", "."))
        context.mkdir(parents=True, exist_ok=True)
        (context / ".keep").touch()
        dockerfile = path / str(job.get("dockerFilePath", "Dockerfile"))
        dockerfile.parent.mkdir(parents=True, exist_ok=True)
        dockerfile.write_text(DOCKERFILE)
        if job.get("composeFilePath"):
            compose = path / str(job["composeFilePath"])
            compose.parent.mkdir(parents=True, exist_ok=True)
            compose.write_text(COMPOSE)
    git("init", "-q", "-b", "main", cwd=path)
    git("add", ".", cwd=path)
    git("commit", "-q", "-m", "demo app", cwd=path)
    for branch in {str(job.get("branch", "main")) for job in examples} - {"main"}:
        git("branch", branch, cwd=path)
    return f"file://{path}"


def write_config(work: Path, port: int) -> Path:
    run_id = RUN_ID
    config = work / "orchestrator.ini"
    config.write_text(
        f"""[broker]
exchange = {run_id}
execute_queue = {run_id}.execute
dlq = {run_id}.dlq
retry_queue_prefix = {run_id}.retry
queue_type = classic

[status]
queue = {run_id}.status
redis_channel = {run_id}.status

[redis]
key_prefix = {run_id}

[launcher]
default = local

[local]
state_dir = {work / "state"}
# the reference worker's knob that keeps the deploy up until the stop example ends it
pass_env = WORKER_SERVE_SECONDS

[limits]
poll_seconds = 0.2
retry_delays = 2

[validation]
allow_file_repos = true

[http]
host = 127.0.0.1
port = {port}

[shutdown]
# No load balancer watches the quickstart: exit once drained instead of holding /health at 503.
unhealthy_hold_seconds = 0
"""
    )
    return config


def wait_healthy(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HEALTH_WAIT_SECONDS
    url = f"http://127.0.0.1:{port}/health"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"❌ the orchestrator exited with {process.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    print(f"✅ orchestrator healthy at {url}")
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"❌ {url} did not answer 200 within {HEALTH_WAIT_SECONDS:.0f} s")


def show_expected_rejection(argv: list[str]) -> int:
    """Run ``orchestrator validate`` on an attack and show its reasons as what they are here: the
    expected outcome of bad input (⚠️), not a failure of the quickstart (❌). Returns its exit code."""
    checked = subprocess.run(argv, capture_output=True, text=True, check=False)
    if checked.returncode != 2:
        print(checked.stdout + checked.stderr, end="")
        print(f"❌ expected exit 2 (invalid), got {checked.returncode}")
        return checked.returncode
    for line in checked.stderr.splitlines():
        print(f"⚠️ rejected, as expected: {line.removeprefix('❌ ')}")
    return checked.returncode


def remove_leftovers(config: Config, work: Path) -> list[str]:
    """Delete this quickstart's queues, exchange, Redis keys and task state; what was found left."""
    broker = config.broker
    found: list[str] = []
    names = [broker.execute_queue, broker.dlq, config.status.queue]
    names += [f"{broker.retry_queue_prefix}.{delay}s" for delay in config.limits.retry_delays]
    connection = pika.BlockingConnection(pika.URLParameters(broker.url))
    try:
        for name in names:
            channel = connection.channel()
            try:
                channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                continue  # not there
            found.append(f"queue {name}")
            connection.channel().queue_delete(name)
        connection.channel().exchange_delete(broker.exchange)
    finally:
        connection.close()
    client = redis.Redis.from_url(config.redis.url)
    try:
        keys = list(client.scan_iter(f"{config.redis.key_prefix}:*", count=1000))
        found += [f"Redis key {k.decode()}" for k in keys]
        if keys:
            client.delete(*keys)
    finally:
        client.close()
    tasks = work / "state" / "tasks"
    found += [f"task file {p.name}" for p in sorted(tasks.glob("*"))] if tasks.is_dir() else []
    shutil.rmtree(work / "state", ignore_errors=True)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each job")
    args = parser.parse_args()

    work = ROOT / "var" / "quickstart"
    work.mkdir(parents=True, exist_ok=True)
    examples = {name: json.loads((ROOT / "examples" / f"{name}.json").read_text()) for name in EXAMPLES}
    repository = make_demo_repository(work / "demo-app", [j for j in examples.values() if "repository" in j])
    port = free_port()
    config_path = write_config(work, port)
    config = load_config(config_path, environ={})
    if leftovers := remove_leftovers(config, work):
        print(f"⚠️ removed what an interrupted quickstart left: {', '.join(leftovers)}")
    log_path = work / "orchestrator.log"
    print(f"🔄 starting the orchestrator (log: {log_path.relative_to(ROOT)})")
    environment = os.environ | {"WORKER_SERVE_SECONDS": str(SERVE_SECONDS)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "orchestrator"), "run", "--config", str(config_path)],
            stdout=log,
            stderr=log,
            env=environment,
        )
    results: list[tuple[str, int]] = []
    try:
        wait_healthy(port, process)
        jobs = work / "jobs"
        jobs.mkdir(exist_ok=True)
        for name, job in examples.items():
            if "repository" in job:
                job["repository"] = repository
            # the stop names the deploy it ends
            job["deploymentId"] = f"quickstart-{'deploy' if name == 'stop' else name}"
            path = jobs / f"{name}.json"
            path.write_text(json.dumps(job))
            print(f"\n🔄 {name}: orchestrator submit --wait {path.relative_to(ROOT)}")
            code = subprocess.call(
                [
                    str(BIN / "orchestrator"),
                    "submit",
                    "--wait",
                    "--timeout",
                    str(args.timeout),
                    "--config",
                    str(config_path),
                    str(path),
                ]
            )
            results.append((name, code))
        attack = Path("examples") / "invalid" / "credentials-in-url.json"
        print(f"\n🔄 an attack, rejected before it reaches a worker: orchestrator validate {attack}")
        code = show_expected_rejection([str(BIN / "orchestrator"), "validate", str(ROOT / attack)])
        results.append(("rejected attack (exit 2 expected)", code))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    print(f"\n✅ orchestrator stopped (exit {process.returncode}); its log: {log_path.relative_to(ROOT)}")
    tasks_left = sorted(p.name for p in (work / "state" / "tasks").glob("*.json"))
    logs = work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    if (work / "state" / "logs").is_dir():
        shutil.move(work / "state" / "logs", logs)  # the workers' output, kept to read
    remove_leftovers(config, work)
    print(f"✅ queues, Redis keys and task state removed; the workers' logs: {logs.relative_to(ROOT)}")
    print("\nsummary:")
    for name, code in results:
        print(f"  {'✅' if code in (0, 2) else '❌'} {name}: exit {code}")
    if tasks_left:
        print(f"  ❌ tasks still recorded when the orchestrator stopped: {', '.join(tasks_left)}")
    ok = all(code == 0 for name, code in results[:-1]) and results[-1][1] == 2 and process.returncode == 0
    return 0 if ok and not tasks_left else 1


if __name__ == "__main__":
    sys.exit(main())
