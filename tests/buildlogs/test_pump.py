"""The log pump with the local source against the real Redis: order, seq, backlog + live, resuming,
hostile output, caps, Redis going away, and the bounded wait for a task's last lines."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import pytest
from support import REDIS_URL, wait_until
from tcp_proxy import TcpProxy

from orchestrator import metrics
from orchestrator.buildlogs.local_source import LocalLogSource
from orchestrator.buildlogs.model import FollowedTask, LogLine, RawLine
from orchestrator.buildlogs.pump import LogPump
from orchestrator.buildlogs.reader import LogEnd, StreamReader
from orchestrator.buildlogs.redis_stream import RedisStreamSink, Resume
from orchestrator.config import LogsConfig, RedisConfig
from orchestrator.coordination import RedisClient, connect_redis
from orchestrator.launch.base import TaskHandle

pytestmark = pytest.mark.services

FAST = LogsConfig(poll_seconds=0.01, final_wait_seconds=5.0)


def handle(deployment_id: str = "dep", attempt: int = 1) -> TaskHandle:
    return TaskHandle(
        launcher="local",
        task_id=f"{deployment_id}-{attempt}",
        deployment_id=deployment_id,
        attempt=attempt,
        job_type="build",
        instance_id="test",
        launched_at=time.time(),
        start_deadline=time.time() + 60,
        deadline=None,
    )


class Pumped:
    """A running pump over ``state_dir``'s local logs, writing under ``prefix``."""

    def __init__(self, client: RedisClient, prefix: str, state_dir: Path, config: LogsConfig = FAST) -> None:
        self.sink = RedisStreamSink(client, prefix, max_lines_kept=100_000, ttl_seconds=600)
        self.source = LocalLogSource(state_dir, config.max_line_bytes)
        self.pump = LogPump(config, self.sink, {"local": self.source})
        self.pump.start()

    def log_path(self, task: TaskHandle) -> Path:
        path = Path(self.source.location_of(task))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return path

    def finish(self, task: TaskHandle, status: str = "succeeded") -> bool:
        flushed: list[bool] = []
        self.pump.finish(task, status, flushed.append)
        wait_until(lambda: flushed, 30, "the log to be flushed")
        return flushed[0]


@pytest.fixture
def pumps(client: RedisClient, prefix: str, tmp_path: Path) -> Iterator[list[Pumped]]:
    made: list[Pumped] = []
    yield made
    for pumped in made:
        pumped.pump.close()


def entries(client: RedisClient, key: str) -> list[LogLine | LogEnd]:
    return list(StreamReader(client, key).backlog())


def lines_of(client: RedisClient, key: str) -> list[LogLine]:
    return [e for e in entries(client, key) if isinstance(e, LogLine)]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_lines_arrive_in_order_with_gap_free_seq_and_then_the_end(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    pumped = Pumped(client, prefix, tmp_path)
    pumps.append(pumped)
    task = handle()
    path = pumped.log_path(task)
    pumped.pump.follow(task)
    # When a worker writes 3,000 lines in bursts while the pump runs
    for burst in range(30):
        append(path, b"".join(b"line %d\n" % (burst * 100 + n) for n in range(100)))
    assert pumped.finish(task, "failed") is True
    # Then the stream holds them all, in order, seq 1..3000, then the attempt's end
    got = entries(client, pumped.sink.key("dep"))
    lines = [e for e in got if isinstance(e, LogLine)]
    assert [line.line for line in lines] == [f"line {n}" for n in range(3000)]
    assert [line.seq for line in lines] == list(range(1, 3001))
    assert {(line.deployment_id, line.attempt, line.stream) for line in lines} == {("dep", 1, "")}
    assert got[-1] == LogEnd(attempt=1, status="failed", last_seq=3000, dropped=0)
    assert 0 < client.ttl(pumped.sink.key("dep")) <= 600


def test_a_reader_that_joins_mid_build_gets_the_backlog_then_live_lines(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    pumped = Pumped(client, prefix, tmp_path)
    pumps.append(pumped)
    task = handle()
    path = pumped.log_path(task)
    pumped.pump.follow(task)
    key = pumped.sink.key("dep")
    append(path, b"".join(b"early %d\n" % n for n in range(200)))
    wait_until(lambda: len(lines_of(client, key)) == 200, what="the first 200 lines")
    # Given a reader that joins now: it reads the backlog, then blocks for live entries
    seen: list[LogLine | LogEnd] = []
    reader = StreamReader(connect_redis(RedisConfig(url=REDIS_URL)), key)
    seen += reader.backlog()
    done = threading.Event()

    def follow() -> None:
        while not any(isinstance(e, LogEnd) for e in seen):
            seen.extend(reader.wait(1000))
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    # When the build goes on and ends
    append(path, b"".join(b"late %d\n" % n for n in range(300)))
    pumped.finish(task)
    assert done.wait(30)
    # Then it saw every line once, in order
    texts = [e.line for e in seen if isinstance(e, LogLine)]
    assert texts == [f"early {n}" for n in range(200)] + [f"late {n}" for n in range(300)]
    assert [e.seq for e in seen if isinstance(e, LogLine)] == list(range(1, 501))


def test_a_new_pump_resumes_after_the_last_published_line(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    # Given a pump that published part of a task's log, then stopped without ending it (its process died)
    first = Pumped(client, prefix, tmp_path)
    task = handle()
    path = first.log_path(task)
    first.pump.follow(task)
    append(path, b"".join(b"before %d\n" % n for n in range(500)))
    key = first.sink.key("dep")
    wait_until(lambda: len(lines_of(client, key)) == 500, what="the first 500 lines")
    first.pump.close()
    # When more is written while nobody follows, and another pump follows the task (adoption)
    append(path, b"".join(b"after %d\n" % n for n in range(500)))
    second = Pumped(client, prefix, tmp_path)
    pumps.append(second)
    second.pump.follow(task)
    assert second.finish(task)
    # Then the stream goes on with no line twice and none missing
    lines = lines_of(client, key)
    assert [line.line for line in lines] == [f"before {n}" for n in range(500)] + [
        f"after {n}" for n in range(500)
    ]
    assert [line.seq for line in lines] == list(range(1, 1001))


def test_a_pump_that_follows_an_attempt_whose_log_ended_adds_nothing(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    first = Pumped(client, prefix, tmp_path)
    pumps.append(first)
    task = handle()
    first.pump.follow(task)
    append(first.log_path(task), b"only\n")
    assert first.finish(task)
    second = Pumped(client, prefix, tmp_path)
    pumps.append(second)
    assert second.finish(task, "failed")  # e.g. an adopter that publishes the outcome again
    got = entries(client, first.sink.key("dep"))
    assert len(got) == 2 and got[-1] == LogEnd(attempt=1, status="succeeded", last_seq=1, dropped=0)


def test_each_attempt_has_its_own_seq_in_the_deployment_stream(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    pumped = Pumped(client, prefix, tmp_path)
    pumps.append(pumped)
    for attempt, status in ((1, "retrying"), (2, "succeeded")):
        task = handle(attempt=attempt)
        pumped.pump.follow(task)
        append(pumped.log_path(task), b"a\nb\n")
        assert pumped.finish(task, status)
    got = entries(client, pumped.sink.key("dep"))
    assert [(e.attempt, e.seq) for e in got if isinstance(e, LogLine)] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [e.status for e in got if isinstance(e, LogEnd)] == ["retrying", "succeeded"]


def test_hostile_output_is_bounded_valid_utf8_and_redacted(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    config = LogsConfig(poll_seconds=0.01, max_line_bytes=8192, max_bytes_per_second=100 * 1024 * 1024)
    pumped = Pumped(client, prefix, tmp_path, config)
    pumps.append(pumped)
    task = handle()
    path = pumped.log_path(task)
    pumped.pump.follow(task)
    # When a worker prints binary garbage, a 10 MB line and credentials
    append(path, bytes(range(256)) * 64 + b"\n")
    append(path, b"A" * 10_000_000 + b"\n")
    append(path, b"git clone https://bob:ghp_TOPSECRET123@github.com/acme/app.git\n")
    append(path, b"\x1b]0;title\x07AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG\n")
    assert pumped.finish(task)
    raw = [fields for _, fields in client.xrange(pumped.sink.key("dep"))]
    lines = [msgspec.json.decode(f[b"l"], type=LogLine) for f in raw if b"l" in f]
    # Then every line is valid UTF-8 within the bound, without control characters or secrets
    for line in lines:
        assert len(line.line.encode("utf-8")) <= 8192
        assert all(c == "\t" or c.isprintable() for c in line.line)
    text = "\n".join(line.line for line in lines)
    assert "ghp_TOPSECRET123" not in text and "wJalrXUtnFEMI" not in text
    assert "https://***@github.com/acme/app.git" in text
    assert "\\x1b]0;title\\x07" in text
    # and the 10 MB line came as pieces of the bound (1,221 of 8 KiB, the last shorter)
    assert sum(1 for line in lines if set(line.line) == {"A"}) == -(-10_000_000 // 8192)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))


def test_over_a_rate_cap_lines_are_dropped_counted_and_one_marker_says_so(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    config = LogsConfig(poll_seconds=0.01, max_lines_per_second=100)
    pumped = Pumped(client, prefix, tmp_path, config)
    pumps.append(pumped)
    task = handle()
    dropped_before = metrics.LOG_LINES_DROPPED.labels(reason="rate")._value.get()
    # When a worker prints 5,000 lines at once, far over 100 lines/s (with its 10 s burst: 1,000)
    path = pumped.log_path(task)
    append(path, b"".join(b"spam %d\n" % n for n in range(5000)))
    pumped.pump.follow(task)
    assert pumped.finish(task)
    got = entries(client, pumped.sink.key("dep"))
    lines = [e for e in got if isinstance(e, LogLine)]
    markers = [line for line in lines if line.stream == "orchestrator"]
    # Then one marker says lines are dropped, and the dropped ones are counted (end entry, metric)
    assert len(markers) == 1 and "100 lines" in markers[0].line
    end = got[-1]
    assert isinstance(end, LogEnd)
    kept = len(lines) - 1
    assert end.dropped == 5000 - kept and end.dropped > 0
    assert metrics.LOG_LINES_DROPPED.labels(reason="rate")._value.get() - dropped_before == end.dropped
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))


def test_past_a_total_cap_the_rest_is_dropped_with_one_marker(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    config = LogsConfig(poll_seconds=0.01, max_lines_total=1000)
    pumped = Pumped(client, prefix, tmp_path, config)
    pumps.append(pumped)
    task = handle()
    path = pumped.log_path(task)
    pumped.pump.follow(task)
    for _ in range(4):
        append(path, b"".join(b"x %d\n" % n for n in range(500)))
    assert pumped.finish(task)
    got = entries(client, pumped.sink.key("dep"))
    lines = [e for e in got if isinstance(e, LogLine)]
    assert [line.line for line in lines[:1000]] == [f"x {n % 500}" for n in range(1000)]
    assert len(lines) == 1001 and lines[-1].stream == "orchestrator" and "1000 lines" in lines[-1].line
    assert got[-1] == LogEnd(attempt=1, status="succeeded", last_seq=1001, dropped=1000)


class EndlessSource:
    """A source whose task never catches up (as a log that keeps arriving late)."""

    name = "endless"

    def __init__(self) -> None:
        self.followed: set[str] = set()

    def follow(self, task: FollowedTask, resume_cursor: str | None) -> None:
        self.followed.add(task.task_id)

    def unfollow(self, task_id: str) -> None:
        self.followed.discard(task_id)

    def poll(self, max_lines: int) -> list[tuple[str, list[RawLine]]]:
        return [(t, [RawLine("stdout", b"more", time.time(), "x")]) for t in self.followed]

    def location_of(self, handle: TaskHandle) -> str:
        return ""

    def caught_up(self, task_id: str) -> bool:
        return False


def test_a_log_that_does_not_end_in_time_is_called_back_then_ended_later(
    client: RedisClient, prefix: str, pumps: list[Pumped]
) -> None:
    sink = RedisStreamSink(client, prefix, max_lines_kept=100_000, ttl_seconds=600)
    source = EndlessSource()
    config = LogsConfig(poll_seconds=0.01, final_wait_seconds=0.2)
    pump = LogPump(config, sink, {"local": source}, late_seconds=0.5)
    pump.start()
    try:
        task = handle()
        flushed: list[bool] = []
        pump.finish(task, "succeeded", flushed.append)
        # The finish is called back once the wait is over, saying the log is not complete
        wait_until(lambda: flushed, 30, "the finish to be called back")
        assert flushed == [False]
        # and the log is still read, then ended where it is once the last chance passed
        key = sink.key("dep")
        wait_until(lambda: not source.followed, 30, "the pump to give up on the log")
        got = entries(client, key)
        assert isinstance(got[-1], LogEnd) and got[-1].last_seq == len(got) - 1
        assert flushed == [False]
    finally:
        pump.close()


def test_lines_read_while_redis_is_down_are_published_when_it_is_back(
    client: RedisClient, prefix: str, tmp_path: Path
) -> None:
    # Given a pump that reaches Redis through a proxy
    proxy = TcpProxy("127.0.0.1", 6379)
    proxy.start()
    proxied = connect_redis(RedisConfig(url=proxy.url(REDIS_URL), socket_timeout_seconds=0.5))
    sink = RedisStreamSink(proxied, prefix, max_lines_kept=100_000, ttl_seconds=600)
    source = LocalLogSource(tmp_path, 8192)
    pump = LogPump(FAST, sink, {"local": source})
    pump.start()
    try:
        task = handle()
        path = Path(source.location_of(task))
        path.parent.mkdir(parents=True)
        append(path, b"".join(b"up %d\n" % n for n in range(100)))
        pump.follow(task)
        key = sink.key("dep")
        wait_until(lambda: len(lines_of(client, key)) == 100, what="the first 100 lines")
        # When Redis goes away while the worker prints, and comes back
        proxy.stop()
        for n in range(10):
            append(path, b"".join(b"down %d\n" % (n * 100 + m) for m in range(100)))
        wait_until(lambda: pump._down, 30, "the pump to notice Redis is down")
        proxy.start()
        flushed: list[bool] = []
        pump.finish(task, "succeeded", flushed.append)
        wait_until(lambda: flushed, 30, "the log to be flushed")
        # Then every line is there once, in order
        lines = lines_of(client, key)
        assert [line.line for line in lines] == [f"up {n}" for n in range(100)] + [
            f"down {n}" for n in range(1000)
        ]
        assert [line.seq for line in lines] == list(range(1, 1101))
    finally:
        pump.close()
        proxy.stop()
        proxied.close()


def test_a_round_a_request_woke_reads_the_ended_tasks_and_leaves_the_running_ones_to_the_full_round(
    client: RedisClient, prefix: str, tmp_path: Path
) -> None:
    # Given a pump (its rounds run here, not on its thread) following a running and an ending task
    sink = RedisStreamSink(client, prefix, max_lines_kept=100_000, ttl_seconds=600)
    source = LocalLogSource(tmp_path, 8192)
    pump = LogPump(FAST, sink, {"local": source})
    running, ending = handle("run"), handle("end")
    for task in (running, ending):
        path = Path(source.location_of(task))
        path.parent.mkdir(parents=True, exist_ok=True)
        append(path, b"hello from %s\n" % task.deployment_id.encode())
        pump.follow(task)
    pump.run_round()
    assert [line.line for line in lines_of(client, sink.key("run"))] == ["hello from run"]
    append(Path(source.location_of(running)), b"more\n")
    append(Path(source.location_of(ending)), b"bye")
    flushed: list[bool] = []
    # When the ending task's finish wakes a round between two full ones
    pump.finish(ending, "succeeded", flushed.append)
    pump.run_round(full=False)
    # Then the ended task's log is read to its end and ended, and its finish called back
    assert flushed == [True]
    assert [line.line for line in lines_of(client, sink.key("end"))] == ["hello from end", "bye"]
    ended = LogEnd(attempt=1, status="succeeded", last_seq=2, dropped=0)
    assert entries(client, sink.key("end"))[-1] == ended
    # while the running task's new line waits for the next full round
    assert len(lines_of(client, sink.key("run"))) == 1
    pump.run_round()
    assert [line.line for line in lines_of(client, sink.key("run"))] == ["hello from run", "more"]
    pump.close()


def test_a_storm_of_requests_does_not_keep_the_running_tasks_from_being_read(
    client: RedisClient, prefix: str, tmp_path: Path, pumps: list[Pumped]
) -> None:
    # Given a pump following a running task, woken without pause by requests (each a partial round)
    pumped = Pumped(client, prefix, tmp_path, LogsConfig(poll_seconds=0.05, final_wait_seconds=5.0))
    pumps.append(pumped)
    task = handle()
    path = pumped.log_path(task)
    pumped.pump.follow(task)
    stop = threading.Event()

    def published_is(count: int) -> bool:
        return len(lines_of(client, pumped.sink.key("dep"))) == count

    def storm() -> None:
        while not stop.is_set():
            pumped.pump.unfollow("nobody")

    stormer = threading.Thread(target=storm, daemon=True)
    stormer.start()
    try:
        # When the task writes lines during the storm
        for n in range(1, 6):
            append(path, b"during the storm %d\n" % n)
            # Then each is published: full rounds still come every poll_seconds
            wait_until(functools.partial(published_is, n), 10, f"line {n} to be published in the storm")
    finally:
        stop.set()
        stormer.join(5)


class LookupsCounted(RedisStreamSink):
    """The sink, recording each lookup of where attempts' streams stand."""

    def __init__(self, client: RedisClient, prefix: str) -> None:
        super().__init__(client, prefix, max_lines_kept=100_000, ttl_seconds=600)
        self.lookups: list[list[tuple[str, int]]] = []

    def resume_points(self, attempts: Sequence[tuple[str, int]]) -> list[Resume]:
        self.lookups.append(list(attempts))
        return super().resume_points(attempts)


def test_a_launch_does_not_wake_the_pump_and_the_end_round_takes_its_follow_first(
    client: RedisClient, prefix: str, tmp_path: Path
) -> None:
    # Given a running pump whose next full round is a minute away
    sink = LookupsCounted(client, prefix)
    source = LocalLogSource(tmp_path, 8192)
    pump = LogPump(LogsConfig(poll_seconds=60.0, final_wait_seconds=5.0), sink, {"local": source})
    pump.start()
    try:
        task = handle("fresh")
        path = Path(source.location_of(task))
        path.parent.mkdir(parents=True, exist_ok=True)
        append(path, b"first\n")
        # When a task is followed (its launch)
        pump.follow(task)
        time.sleep(0.3)
        # Then no round runs for it: its stream is not looked up
        assert sink.lookups == []
        # And when it ends, the round its finish wakes looks it up once and reads its log to the end
        append(path, b"last")
        flushed: list[bool] = []
        pump.finish(task, "succeeded", flushed.append)
        wait_until(lambda: flushed, 10, "the ended task's log to be flushed")
        assert flushed == [True]
        assert sink.lookups == [[("fresh", 1)]]
        assert [line.line for line in lines_of(client, sink.key("fresh"))] == ["first", "last"]
        assert entries(client, sink.key("fresh"))[-1] == LogEnd(
            attempt=1, status="succeeded", last_seq=2, dropped=0
        )
    finally:
        pump.close()
