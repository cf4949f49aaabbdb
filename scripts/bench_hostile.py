#!/usr/bin/env python3
"""Hostile-input benchmark (issue 8's figures): rejections per second, /health under the flood, RSS growth.

Usage: ``.venv/bin/python scripts/bench_hostile.py [--n 10000] [--seed 20261202] [--queue-type quorum]``

All on the same broker and Redis, in one run, each on queues, an exchange and a Redis prefix of its own:

(a) baseline: a plain pika loop doing the broker work of one rejection the simple way: consume the
    hostile message, try ``json.loads``, publish it to the dead-letter queue with a blocking confirm,
    ack. Rejections/s from the first consume to the last ack.
(b) the orchestrator: a real ``orchestrator run`` process (local launcher, both status sinks, the
    production defaults but for names) takes the same ``--n`` hostile messages (``tests/hostile.py``:
    random bytes, mutated jobs, every JSON escape form, deep nesting, maximum-size and oversize bodies,
    credentials, hostile headers...) published as fast as one connection can. Rejections/s from the
    first publish to the moment the dead-letter queue holds all ``--n``. Ratio b/a.
(c) /health: a client thread asks /health back to back (a new connection each, like a load balancer)
    while the process is idle (baseline) and during (b): p50 and p99, and every non-200 answer.
(d) memory: the process's RSS when idle, at its peak during (b), and after; growth = after - idle.

Targets (reported, not asserted): >= 2,000 rejections/s, /health p99 < 50 ms, RSS growth < 20 MB.
The exit status is non-zero only when something is wrong (a message not dead-lettered in time, a
launch, a non-200 /health, the process gone).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _extra in (ROOT / "scripts", ROOT / "tests", ROOT):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import pika  # noqa: E402
from bench_pipeline import percentile  # noqa: E402
from hostile import Hostile, corpus, publish_hostile  # noqa: E402
from pipeline.processes import OrchestratorProcess  # noqa: E402
from support import delete_broker_objects, isolated_config, with_overrides  # noqa: E402

from orchestrator.broker.topology import declare_topology  # noqa: E402
from orchestrator.config import Config  # noqa: E402

DEFAULT_N = 10_000
DEFAULT_SEED = 20261202
DEADLINE_SECONDS = 300.0
IDLE_HEALTH_REQUESTS = 300
#: Pause between two /health requests of the probe (a load balancer asks every 10 s; this is 50/s).
PROBE_INTERVAL_SECONDS = 0.02


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU-seconds every core of the machine spent busy so far (all processes; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def broker_pids() -> list[int]:
    """The RabbitMQ (Erlang VM) processes of this machine, to tell how much of the flood is theirs."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "beam.smp":
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    return pids


def broker_cpu(pids: Sequence[int] | None = None) -> float:
    """CPU-seconds the broker processes ``pids`` (default: every ``beam.smp`` now) have used so far;
    a process gone meanwhile counts for nothing."""
    total = 0.0
    for pid in broker_pids() if pids is None else pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


class HealthProbe:
    """Back-to-back GET /health, a new connection each, from a thread; latencies in ms."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.failures: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def one(self) -> None:
        start = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                self.failures[f"status {response.status}"] += 1
        except OSError as e:
            self.failures[type(e).__name__] += 1
        finally:
            connection.close()
        self.latencies.append((time.perf_counter() - start) * 1000)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.one()
            self._stop.wait(PROBE_INTERVAL_SECONDS)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def queue_depth(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def raw_reject_loop(config: Config, messages: list[Hostile]) -> float:
    """(a): rejections/s of a plain pika loop: consume, json.loads, dead-letter with a confirm, ack."""
    connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
    try:
        setup = connection.channel()
        declare_topology(setup, config.broker, config.status, config.limits.retry_delays)
        publish_hostile(config, messages, confirm=False)
        consume = connection.channel()
        consume.basic_qos(prefetch_count=config.broker.prefetch)
        dead_letter = connection.channel()
        dead_letter.confirm_delivery()
        start = time.perf_counter()
        stream = consume.consume(config.broker.execute_queue, auto_ack=False, inactivity_timeout=30)
        for done in range(len(messages)):
            method, _properties, body = next(stream)
            if method is None:
                raise RuntimeError(f"baseline: nothing for 30 s after {done} messages")
            try:
                json.loads(body)
                reason = "invalid"
            except (ValueError, RecursionError) as e:
                reason = str(e)[:200]
            dead_letter.basic_publish(
                "",
                config.broker.dlq,
                body,
                pika.BasicProperties(delivery_mode=2, headers={"x-reason": reason}),
            )
            consume.basic_ack(method.delivery_tag)
        elapsed = time.perf_counter() - start
        consume.cancel()
        return len(messages) / elapsed
    finally:
        connection.close()


def run_orchestrator(config: Config, messages: list[Hostile], workdir: Path) -> dict[str, object]:
    """(b), (c), (d) on a real orchestrator process."""
    launched = workdir / "launched"
    config = with_overrides(config, local__command=f"sh -c 'echo launched >> {launched}'")
    process = OrchestratorProcess(config, workdir / "orchestrator.log").start()
    try:
        process.wait_healthy()
        assert process.process is not None
        pid = process.process.pid
        idle_probe = HealthProbe(process.port)
        for _ in range(IDLE_HEALTH_REQUESTS):
            idle_probe.one()
        rss_idle = rss_kib(pid)
        rss_peak = rss_idle
        connection = pika.BlockingConnection(pika.URLParameters(config.broker.url))
        channel = connection.channel()
        try:
            with HealthProbe(process.port) as busy_probe:
                cpu_before = cpu_seconds(pid)
                brokers = broker_pids()
                broker_before = broker_cpu(brokers)
                machine_before = machine_busy_seconds()
                start = time.perf_counter()
                published: list[float] = []

                def publish_all() -> None:
                    publish_hostile(config, messages, confirm=False)
                    published.append(time.perf_counter() - start)

                publisher = threading.Thread(target=publish_all, daemon=True)
                publisher.start()
                deadline = time.monotonic() + DEADLINE_SECONDS
                while (dead := queue_depth(channel, config.broker.dlq)) < len(messages):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {dead} of {len(messages)} dead-lettered in time")
                    if process.process.poll() is not None:
                        raise RuntimeError(f"the orchestrator exited:\n{process.log()}")
                    rss_peak = max(rss_peak, rss_kib(pid))
                    time.sleep(0.02)
                elapsed = time.perf_counter() - start
                cpu = cpu_seconds(pid) - cpu_before
                broker_seconds = broker_cpu(brokers) - broker_before
                machine_cpu = machine_busy_seconds() - machine_before
                publisher.join(timeout=60)
            time.sleep(1.0)
            rss_after = rss_kib(pid)
        finally:
            connection.close()
        return {
            "rate": len(messages) / elapsed,
            "elapsed": elapsed,
            "cpu": cpu,
            "broker_cpu": broker_seconds,
            "machine_cpu": machine_cpu,
            "published": published[0] if published else float("nan"),
            "idle": idle_probe,
            "busy": busy_probe,
            "rss": (rss_idle, rss_peak, rss_after),
            "launched": launched.exists(),
        }
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="hostile messages")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    parser.add_argument("--prefetch", type=int, default=None, help="broker.prefetch (default: the default)")
    args = parser.parse_args()

    keys = {"broker__queue_type": args.queue_type}
    if args.prefetch is not None:
        keys["broker__prefetch"] = args.prefetch
    base = isolated_config("bench-hostile", **keys)
    messages = list(corpus(args.seed, args.n, base.validation))
    kinds = collections.Counter(m.kind.split("-")[0] for m in messages)
    size = sum(len(m.body) for m in messages)
    print(f"corpus: {len(messages)} messages, {size / 1e6:.1f} MB, seed {args.seed}: {dict(kinds)}")

    baseline = isolated_config("bench-hostile-raw", **keys)
    try:
        raw_rate = raw_reject_loop(baseline, messages)
    finally:
        delete_broker_objects(baseline)
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        config = with_overrides(base, local__state_dir=str(Path(tmp) / "state"))
        try:
            result = run_orchestrator(config, messages, Path(tmp))
        finally:
            delete_broker_objects(config)

    rate = float(result["rate"])  # type: ignore[arg-type]
    idle: HealthProbe = result["idle"]  # type: ignore[assignment]
    busy: HealthProbe = result["busy"]  # type: ignore[assignment]
    rss_idle, rss_peak, rss_after = result["rss"]  # type: ignore[misc]
    print(f"(a) raw pika reject loop ({args.queue_type}): {raw_rate:,.0f} rejections/s")
    print(
        f"(b) orchestrator: {rate:,.0f} rejections/s ({args.n} in {result['elapsed']:.2f} s, "
        f"the publisher done after {result['published']:.2f} s; the process used "
        f"{result['cpu']:.2f} CPU-s, {1000 * float(result['cpu']) / args.n:.2f} ms/message); "
        f"b/a {rate / raw_rate:.2f}; target >= 2,000/s: {'met' if rate >= 2000 else 'NOT met'}"
    )
    elapsed = float(result["elapsed"])  # type: ignore[arg-type]
    print(
        f"(b) where the CPU went: the orchestrator {result['cpu']:.2f} s, RabbitMQ "
        f"{result['broker_cpu']:.2f} s, the whole machine {result['machine_cpu']:.2f} s of "
        f"{os.cpu_count()} x {elapsed:.2f} = {(os.cpu_count() or 1) * elapsed:.2f} s "
        f"({100 * float(result['machine_cpu']) / ((os.cpu_count() or 1) * elapsed):.0f}% busy)"  # type: ignore[arg-type]
    )
    for name, probe in (("idle", idle), ("under the flood", busy)):
        print(
            f"(c) /health {name}: {len(probe.latencies)} requests, "
            f"p50 {statistics.median(probe.latencies):.2f} ms, "
            f"p99 {percentile(probe.latencies, 0.99):.2f} ms, max {max(probe.latencies):.2f} ms, "
            f"non-200: {dict(probe.failures) or 'none'}"
        )
    busy_p99 = percentile(busy.latencies, 0.99)
    print(
        f"(c) /health p99 ratio flood/idle {busy_p99 / percentile(idle.latencies, 0.99):.1f}x; "
        f"target p99 < 50 ms: {'met' if busy_p99 < 50 else 'NOT met'}"
    )
    growth_mb = (rss_after - rss_idle) / 1024
    print(
        f"(d) RSS idle {rss_idle / 1024:.1f} MB, peak {rss_peak / 1024:.1f} MB, "
        f"after {rss_after / 1024:.1f} MB: "
        f"growth {growth_mb:.1f} MB (peak +{(rss_peak - rss_idle) / 1024:.1f} MB); "
        f"target < 20 MB: {'met' if growth_mb < 20 else 'NOT met'}"
    )
    broken = bool(result["launched"]) or bool(busy.failures) or bool(idle.failures)
    if result["launched"]:
        print("❌ a hostile message was launched")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
