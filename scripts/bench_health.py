#!/usr/bin/env python3
"""/health latency, idle and under load: median and p99 over N requests, and the loaded/idle ratio.

The server (supervisor, actors, health server) runs in a child process, as in production; this process
is the client, like a load balancer: one new connection per request, one request at a time.

Load (in the server process): WORKERS actors flooded with messages that each burn a little CPU (the
feeders keep a bounded backlog in every inbox), one pure-Python CPU-busy thread, and SCRAPERS threads
fetching /metrics in a loop. All of it competes with the health server for the GIL, which is the
realistic worst case for a Python process.

A third scenario runs the real pipeline (every actor, real RabbitMQ and Redis, a launcher that
returns at once) while a publisher offers PIPELINE_RATE jobs/s: the load the process has in production.

Usage: .venv/bin/python scripts/bench_health.py [--requests 1000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

WORKERS = 4
FEEDERS_BATCH = 200  # tells per batch; each feeder then asks, so inboxes stay bounded
WORK_PER_MESSAGE = 2_000  # sum(range(n)) per message: tens of microseconds of pure Python
SCRAPERS = 2
WARM_UP = 50
PIPELINE_RATE = 200  # jobs/s offered in the pipeline scenario


# --- server side ------------------------------------------------------------------------------------


def serve(load: bool) -> None:
    import msgspec
    import pykka

    from orchestrator.config import HttpConfig, SupervisionConfig
    from orchestrator.http import HttpServer
    from orchestrator.runtime import ActorReporter, HealthBoard, SupervisedActor, Supervisor

    class Work(msgspec.Struct, frozen=True):
        n: int

    class Done(msgspec.Struct, frozen=True):
        pass

    class Worker(SupervisedActor):
        def __init__(self, reporter: ActorReporter) -> None:
            super().__init__(reporter)
            self.handled = 0

        def receive(self, message: object) -> Any:
            if isinstance(message, Work):
                sum(range(message.n))
                self.handled += 1
                return None
            if isinstance(message, Done):
                return self.handled
            return super().receive(message)

    board = HealthBoard(stuck_after_seconds=30)
    supervisor = Supervisor(SupervisionConfig(), board, on_give_up=lambda name, exc: None)
    handles = [supervisor.add(f"worker{i}", Worker.start) for i in range(WORKERS)]
    supervisor.start_all()
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), board)
    server.start()
    stop = threading.Event()
    counts = {"messages": 0, "scrapes": 0, "busy_loops": 0}

    def feed(index: int) -> None:
        handle = handles[index]
        while not stop.is_set():
            for _ in range(FEEDERS_BATCH):
                handle.tell(Work(WORK_PER_MESSAGE))
            handle.ask(Done(), timeout=60)
            counts["messages"] += FEEDERS_BATCH

    def burn() -> None:
        while not stop.is_set():
            sum(range(10_000))
            counts["busy_loops"] += 1

    def scrape() -> None:
        while not stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            conn.close()
            counts["scrapes"] += 1

    threads: list[threading.Thread] = []
    if load:
        threads += [threading.Thread(target=feed, args=(i,), daemon=True) for i in range(WORKERS)]
        threads.append(threading.Thread(target=burn, daemon=True))
        threads += [threading.Thread(target=scrape, daemon=True) for _ in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    print(json.dumps({"port": server.port}), flush=True)
    started = time.monotonic()
    sys.stdin.readline()  # the client closes our stdin when it is done
    elapsed = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    server.stop()
    supervisor.stop_all()
    pykka.ActorRegistry.stop_all(timeout=5)
    rates = {key: round(value / elapsed, 1) for key, value in counts.items()}
    print(json.dumps({"per_second": rates}), flush=True)


def serve_pipeline() -> None:
    from pathlib import Path

    import pika

    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root), str(root / "tests")]
    from pipeline.fakes import InstantLauncher
    from support import AMQP_URL, delete_broker_objects, isolated_config

    from orchestrator.http import HttpServer
    from orchestrator.messages import BuildJob, encode
    from orchestrator.pipeline import register_pipeline
    from orchestrator.runtime import HealthBoard, Supervisor

    config = isolated_config("health", limits__max_concurrent=100_000, limits__poll_seconds=0.5)
    board = HealthBoard(config.http.stuck_after_seconds)
    supervisor = Supervisor(config.supervision, board, on_give_up=lambda name, exc: None)
    launcher = InstantLauncher(run_seconds=2.0)
    register_pipeline(supervisor, board, config, launcher_factory=lambda name, cfg: launcher)
    supervisor.start_all(timeout=30)
    server = HttpServer(config.http, board)
    server.start()
    while not board.report(time.monotonic())[0]:
        time.sleep(0.05)
    stop = threading.Event()
    published = 0

    def offer() -> None:
        nonlocal published
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        started = time.monotonic()
        while not stop.is_set():
            job = encode(BuildJob(deployment_id=f"h-{published}", repository="https://github.com/a/b"))
            channel.basic_publish(config.broker.exchange, config.broker.execute_queue, job)
            published += 1
            time.sleep(max(0.0, started + published / PIPELINE_RATE - time.monotonic()))
        connection.close()

    publisher = threading.Thread(target=offer, daemon=True)
    publisher.start()
    time.sleep(1.0)
    print(json.dumps({"port": server.port}), flush=True)
    started, published_before = time.monotonic(), published
    sys.stdin.readline()
    elapsed, offered = time.monotonic() - started, published - published_before
    stop.set()
    publisher.join(timeout=10)
    server.stop()
    supervisor.stop_all(timeout=30)
    delete_broker_objects(config)
    print(json.dumps({"per_second": {"jobs": round(offered / max(elapsed, 1e-9), 1)}}), flush=True)


# --- client side ------------------------------------------------------------------------------------


def measure(port: int, requests: int) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    for i in range(WARM_UP + requests):
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        conn.close()
        took = time.perf_counter() - started
        if i >= WARM_UP:
            latencies.append(took)
            statuses[response.status] = statuses.get(response.status, 0) + 1
    return latencies, statuses


def run_scenario(mode: str, requests: int) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", f"--{mode}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        port = json.loads(child.stdout.readline())["port"]
        if mode == "load":
            time.sleep(1.0)  # let the load reach its steady state before measuring
        latencies, statuses = measure(port, requests)
        child.stdin.close()
        rates = json.loads(child.stdout.readline())["per_second"]
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "max_ms": max(latencies) * 1000,
        "statuses": statuses,
        "load_per_second": rates,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--idle", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        if args.pipeline:
            serve_pipeline()
        else:
            serve(load=args.load)
        return 0

    idle = run_scenario("idle", requests=args.requests)
    pipeline = run_scenario("pipeline", requests=args.requests)
    loaded = run_scenario("load", requests=args.requests)
    print(f"/health latency over {args.requests} requests (new connection per request, one at a time)")
    print(f"{'scenario':<9} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}  statuses")
    for name, result in (("idle", idle), ("pipeline", pipeline), ("cpu-load", loaded)):
        print(
            f"{name:<9} {result['median_ms']:>10.2f} {result['p99_ms']:>8.2f} {result['max_ms']:>8.2f}  "
            f"{result['statuses']}"
        )
    for name, result in (("pipeline", pipeline), ("cpu-load", loaded)):
        print(
            f"ratio {name}/idle: median {result['median_ms'] / idle['median_ms']:.1f}x, "
            f"p99 {result['p99_ms'] / idle['p99_ms']:.1f}x"
        )
    print(f"pipeline: {pipeline['load_per_second']['jobs']:.0f} jobs/s offered through every actor")
    rates = loaded["load_per_second"]
    print(
        f"load: {WORKERS} actors handling {rates['messages']:.0f} messages/s, 1 CPU-busy thread, "
        f"{SCRAPERS} /metrics scrapers ({rates['scrapes']:.0f} scrapes/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
