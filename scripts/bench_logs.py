#!/usr/bin/env python3
"""Build log benchmark (issue 12): worker print -> Redis Stream, end to end, against raw XADD.

Usage: ``.venv/bin/python scripts/bench_logs.py [--workers 1,50] [--rate 2000] [--seconds 5]
[--flat-out] [--pipeline]``

All against the same Redis, in one run:

(a) baselines: raw ``XADD`` throughput of this interpreter — pipelines of 1,000 ``XADD … MAXLEN ~``
    of entries shaped like the pump's (a 130-byte JSON line and a cursor), one transaction each, the
    usual way to batch with redis-py; and the pump's own sink writing the same entries 10,000 per call
    (one Lua script call each): the most lines/s one Python thread hands to Redis, before any
    reading or shaping.
(b) end to end: ``W`` real worker processes (``tests/buildlogs/printer.py``) each print ``--rate``
    lines/s for ``--seconds`` s into their own log file (as the local launcher sets them up), stamped
    with the time each was written; one :class:`~orchestrator.buildlogs.pump.LogPump` with the local
    source (in this process, its one thread) publishes them; a follower in another process
    ``XREAD BLOCK``s every tenth stream and notes when each line arrives. Figures: lines/s published
    (every line, from the moment the workers start printing together until every stream has its
    end entry), follower
    lag (written by the worker -> the follower has it) p50/p99/max, and CPU per 10,000 lines of this
    process (the pump), of the Redis server, and of the workers themselves.
    ``--flat-out`` adds a run with the workers printing as fast as they can (the caps raised out of
    the way): what the pump sustains when the workers are not the limit.
(c) ``--pipeline``: ``scripts/bench_pipeline.py`` (local launcher, classic queue, amqp+redis/50,
    1,000 jobs, 200 jobs/s for 5 s) run three times: with build logs off, with them on, and with them
    on while (b)'s largest load runs beside it (its pump in this process, the pipeline in its own).

Targets (reported, not asserted): >= 50,000 lines/s aggregate, lag p99 < 500 ms, pipeline within 10%.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _extra in (ROOT / "tests", ROOT):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Final, NamedTuple  # noqa: E402

import msgspec  # noqa: E402
import redis  # noqa: E402
from bench_pipeline import percentile  # noqa: E402

from orchestrator.buildlogs.local_source import LocalLogSource  # noqa: E402
from orchestrator.buildlogs.model import LogLine  # noqa: E402
from orchestrator.buildlogs.pump import LogPump  # noqa: E402
from orchestrator.buildlogs.redis_stream import LineEntry, RedisStreamSink  # noqa: E402
from orchestrator.config import LogsConfig  # noqa: E402
from orchestrator.launch.base import TaskHandle  # noqa: E402

REDIS_URL: Final = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PRINTER: Final = ROOT / "tests" / "buildlogs" / "printer.py"
BASELINE_LINES: Final = 200_000
BASELINE_BATCH: Final = 1000
LAG_TARGET_MS: Final = 500.0
RATE_TARGET: Final = 50_000.0
_LINE: Final = msgspec.json.Decoder(LogLine)
#: The follower reads every this-many-th stream (lag is the same for all; reading all would make the
#: follower, not the pump, what the machine spends its CPU on).
SAMPLE_EVERY: Final = 10
#: Time allowed per worker process to start before they all print together.
START_SECONDS_PER_WORKER: Final = 0.06
_STAMP: Final = re.compile(r" t=(\d+\.\d+)$")


class Figures(NamedTuple):
    workers: int
    offered: float
    lines: int
    rate: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    cpu_ms_per_10k: float
    redis_cpu_ms_per_10k: float
    workers_cpu_ms_per_10k: float


def redis_cpu(client: redis.Redis) -> float:  # type: ignore[type-arg]
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure_baseline(client: redis.Redis, prefix: str) -> float:  # type: ignore[type-arg]
    """(a) lines/s of raw XADD pipelines from this interpreter."""
    line = msgspec.json.encode(
        LogLine(
            deployment_id="bench", attempt=1, seq=1, at="2026-01-01T00:00:00.000Z", stream="", line="x" * 40
        )
    )
    keys = [f"{prefix}:base:{n}" for n in range(50)]
    started = time.perf_counter()
    for batch in range(BASELINE_LINES // BASELINE_BATCH):
        pipe = client.pipeline(transaction=True)
        for n in range(BASELINE_BATCH):
            pipe.xadd(
                keys[n % len(keys)], {"l": line, "c": f"off:{batch * BASELINE_BATCH + n}"}, maxlen=10_000
            )
        pipe.execute()
    elapsed = time.perf_counter() - started
    client.delete(*keys)
    return BASELINE_LINES / elapsed


def measure_sink(client: redis.Redis, prefix: str) -> float:  # type: ignore[type-arg]
    """(a') lines/s of the pump's sink alone, 10,000 entries per write."""
    line = msgspec.json.encode(
        LogLine(
            deployment_id="bench", attempt=1, seq=1, at="2026-01-01T00:00:00.000Z", stream="", line="x" * 40
        )
    )
    sink = RedisStreamSink(client, f"{prefix}:sink", max_lines_kept=10_000, ttl_seconds=600)
    batch = [LineEntry(sink.key(str(n % 50)), line, f"off:{n}") for n in range(10_000)]
    started = time.perf_counter()
    for _ in range(BASELINE_LINES // len(batch)):
        sink.write(batch)
    elapsed = time.perf_counter() - started
    client.delete(*{e.key for e in batch})
    return BASELINE_LINES / elapsed


def follower(url: str, keys: list[str], expected: int, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """(In its own process.) XREAD BLOCK every stream until every end entry came; the lags and the
    time of the last arrival go back through ``results``."""
    client = redis.Redis.from_url(url)
    last = dict.fromkeys(keys, "0-0")
    lags: list[float] = []
    ended = 0
    last_arrival = 0.0
    deadline = time.time() + 600
    while ended < len(keys) and time.time() < deadline:
        replies = client.xread(last, count=10_000, block=1000)
        arrival = time.time()
        for key, entries in replies or ():
            name = key.decode()
            for entry_id, fields in entries:
                last[name] = entry_id.decode()
                raw = fields.get(b"l")
                if raw is None:
                    ended += b"e" in fields
                    continue
                stamp = _STAMP.search(_LINE.decode(raw).line)
                if stamp:
                    lags.append(arrival - float(stamp.group(1)))
                    last_arrival = arrival
    client.close()
    results.put((lags, last_arrival, expected))


def all_ended(client: redis.Redis, keys: list[str]) -> bool:  # type: ignore[type-arg]
    """Whether every stream's last entry is its end entry (the pump has published everything)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xrevrange(key, count=1)
    return all(last and b"e" in last[0][1] for last in pipe.execute())


def measure_end_to_end(
    client: redis.Redis,  # type: ignore[type-arg]
    prefix: str,
    workers: int,
    rate: float,
    seconds: float,
    *,
    flat_out_lines: int = 0,
    ready: threading.Event | None = None,
) -> Figures:
    """(b) ``workers`` printers -> one pump -> Redis -> a follower process."""
    lines_each = flat_out_lines or int(rate * seconds)
    config = LogsConfig()
    if flat_out_lines:  # the caps out of the way: this measures the pump, not the limits
        config = LogsConfig(max_lines_per_second=10**9, max_bytes_per_second=10**12)
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as state_dir:
        run = f"{prefix}:{workers}w{'f' if flat_out_lines else ''}"
        sink = RedisStreamSink(client, run, max_lines_kept=1_000_000, ttl_seconds=600)
        source = LocalLogSource(state_dir, config.max_line_bytes)
        pump = LogPump(config, sink, {"local": source})
        handles = [
            TaskHandle(
                launcher="local",
                task_id=f"w{n}-1",
                deployment_id=f"w{n}",
                attempt=1,
                job_type="build",
                instance_id="bench",
                launched_at=time.time(),
                start_deadline=time.time() + 600,
                deadline=None,
            )
            for n in range(workers)
        ]
        keys = [sink.key(h.deployment_id) for h in handles]
        results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        reader = multiprocessing.Process(
            target=follower,
            args=(REDIS_URL, keys[::SAMPLE_EVERY], lines_each * len(keys[::SAMPLE_EVERY]), results),
        )
        reader.start()
        pump.start()
        cpu_before = os.times()
        redis_before = redis_cpu(client)
        # The workers start printing together once all of them are up (starting 50 interpreters takes
        # the machine a while, and is not what is measured).
        started = time.time() + START_SECONDS_PER_WORKER * workers + 0.5
        children = []
        for handle in handles:
            path = Path(source.location_of(handle))
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as out:
                env = {"PATH": os.environ.get("PATH", ""), "DEPLOYMENT_ID": handle.deployment_id}
                children.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(PRINTER),
                            str(lines_each),
                            "0" if flat_out_lines else str(rate),
                            "0",
                            "stamp",
                            f"{started:.3f}",
                        ],
                        stdout=out,
                        env=env,
                    )
                )
            pump.follow(handle)
        if ready is not None:
            ready.set()
        for child, handle in zip(children, handles, strict=True):
            child.wait(timeout=600)
            pump.finish(handle, "succeeded")
        workers_cpu = os.times()  # the printers are reaped, the follower not yet
        deadline = time.monotonic() + 600
        while not all_ended(client, keys) and time.monotonic() < deadline:
            time.sleep(0.01)
        all_published = time.time()
        cpu_after = os.times()
        redis_after = redis_cpu(client)
        lags, _last_arrival, expected = results.get(timeout=600)
        reader.join(30)
        pump.close()
        published = sum(client.xlen(key) - 1 for key in keys)  # each has its end entry
        client.delete(*keys)
    if published != workers * lines_each or len(lags) != expected:
        print(
            f"⚠️ {workers} workers: {published} lines published of {workers * lines_each}; the follower "
            f"saw {len(lags)} of its {expected}",
            flush=True,
        )
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    printers = (workers_cpu.children_user + workers_cpu.children_system) - (
        cpu_before.children_user + cpu_before.children_system
    )
    per_10k = 10_000 / max(published, 1)
    return Figures(
        workers=workers,
        offered=0.0 if flat_out_lines else workers * rate,
        lines=published,
        rate=published / max(all_published - started, 1e-9),
        lag_p50_ms=percentile(lags, 0.50) * 1000 if lags else float("nan"),
        lag_p99_ms=percentile(lags, 0.99) * 1000 if lags else float("nan"),
        lag_max_ms=max(lags, default=float("nan")) * 1000,
        cpu_ms_per_10k=cpu * 1000 * per_10k,
        redis_cpu_ms_per_10k=(redis_after - redis_before) * 1000 * per_10k,
        workers_cpu_ms_per_10k=printers * 1000 * per_10k,
    )


def pipeline_figures(build_logs: bool) -> str:
    """(c) One run of bench_pipeline.py; its summary line."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_pipeline.py"),
            "--launcher",
            "local",
            "--queue-types",
            "classic",
            "--variants",
            "amqp+redis/50",
            "--n",
            "1000",
            "--rate",
            "200",
            "--seconds",
            "5",
            "--no-raw",
            "--build-logs",
            "on" if build_logs else "off",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if "(b)" in x and "jobs/s dispatched" in x), None)
    return line or f"(no figure; exit {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]})"


def print_figures(title: str, figures: Figures, baseline: float) -> None:
    offered = f"{figures.offered:,.0f}/s offered" if figures.offered else "flat out"
    print(
        f"{title}: {figures.workers} worker(s), {offered}: {figures.lines:,} lines at "
        f"{figures.rate:,.0f} lines/s ({figures.rate / baseline:.2f}x raw XADD); lag p50 "
        f"{figures.lag_p50_ms:.0f} ms, p99 {figures.lag_p99_ms:.0f} ms, max {figures.lag_max_ms:.0f} ms; "
        f"CPU per 10,000 lines: {figures.cpu_ms_per_10k:.0f} ms pump process, "
        f"{figures.redis_cpu_ms_per_10k:.0f} ms Redis, {figures.workers_cpu_ms_per_10k:.0f} ms the workers",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,50", help="comma-separated worker counts (default 1,50)")
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="lines/s each worker prints (default 2000)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each worker prints (default 5)")
    parser.add_argument("--flat-out", action="store_true", help="also measure workers printing flat out")
    parser.add_argument("--pipeline", action="store_true", help="also run (c), the pipeline benchmark")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"bench-logs-{uuid.uuid4().hex[:8]}"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"🔄 {os.cpu_count()} CPUs; load average {load}; Redis {client.info('server')['redis_version']}")
    baseline = measure_baseline(client, prefix)
    print(f"(a) raw XADD pipelines, one thread: {baseline:,.0f} lines/s", flush=True)
    print(f"(a) the pump's sink alone (Lua, 10,000 per call): {measure_sink(client, prefix):,.0f} lines/s")
    results: list[Figures] = []
    for workers in counts:
        figures = measure_end_to_end(client, prefix, workers, args.rate, args.seconds)
        results.append(figures)
        print_figures("(b)", figures, baseline)
        if args.flat_out:
            flat = measure_end_to_end(client, prefix, workers, args.rate, args.seconds, flat_out_lines=20_000)
            print_figures("(b) flat out", flat, baseline)
    if args.pipeline:
        print("(c) pipeline, build logs off:", pipeline_figures(False), flush=True)
        print("(c) pipeline, build logs on: ", pipeline_figures(True), flush=True)
        ready = threading.Event()
        load_thread = threading.Thread(
            target=measure_end_to_end,
            args=(client, f"{prefix}-load", max(counts), args.rate, args.seconds * 8),
            kwargs={"ready": ready},
            daemon=True,
        )
        load_thread.start()
        ready.wait(120)
        print("(c) pipeline, build logs on, beside the log load:", pipeline_figures(True), flush=True)
        load_thread.join(900)
    best = max((f.rate for f in results), default=0.0)
    worst_p99 = max((f.lag_p99_ms for f in results), default=float("nan"))
    print(
        f"targets: >= {RATE_TARGET:,.0f} lines/s aggregate: {'met' if best >= RATE_TARGET else 'NOT met'} "
        f"({best:,.0f}); lag p99 < {LAG_TARGET_MS:.0f} ms: "
        f"{'met' if worst_p99 < LAG_TARGET_MS else 'NOT met'} ({worst_p99:.0f} ms)"
    )
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
