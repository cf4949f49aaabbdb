"""``orchestrator logs DEPLOYMENT_ID [--attempt N] [--follow]``, and the log lines of ``submit --logs``.

The job's log text goes to standard output, one line per published line; what the command says about
it (an attempt starting, how it ended, lines dropped by the caps) goes to standard error with the
product's emojis, so ``orchestrator logs ID > build.log`` keeps the log alone.

Exit codes: 0 the log was printed (with ``--follow``: to its end); 1 there is no log for the
deployment (unknown, not started yet, or expired); 3 ``--follow`` reached ``--timeout`` first; 4 Redis
cannot be used.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Final

import redis

from orchestrator.buildlogs.model import LogLine
from orchestrator.buildlogs.reader import LogEnd, StreamReader, is_final
from orchestrator.buildlogs.redis_stream import stream_key
from orchestrator.config import Config
from orchestrator.connect_errors import connection_cause, endpoint
from orchestrator.coordination.client import RedisClient
from orchestrator.errors import CoordinationError
from orchestrator.redaction import redact_text

EXIT_OK: Final = 0
EXIT_NO_LOG: Final = 1
EXIT_TIMEOUT: Final = 3
#: Longest single XREAD BLOCK, so that the timeout and Ctrl-C are noticed.
BLOCK_MS: Final = 1000

_END_EMOJI: Final = {"succeeded": "✅", "failed": "❌", "stopped": "⚠️", "retrying": "⚠️", "timed_out": "⚠️"}

Out = Callable[[str], None]


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def describe_end(end: LogEnd) -> str:
    """One line about an attempt's end entry."""
    mark = _END_EMOJI.get(end.status, "⚠️")
    text = f"{mark} attempt {end.attempt}: {end.status} · {end.last_seq} lines"
    if end.dropped:
        text += f" · {end.dropped} dropped by the log limits"
    return text


@contextlib.contextmanager
def redis_client(config: Config) -> Iterator[RedisClient]:
    """A client of ``redis.url`` whose failures become :class:`CoordinationError` (host:port and cause)."""
    url = config.redis.url
    timeout = config.redis.socket_timeout_seconds
    try:
        client: RedisClient = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
    except ValueError as e:
        raise CoordinationError(f"redis.url: {redact_text(str(e))}") from None
    try:
        yield client
    except (redis.RedisError, OSError) as e:
        cause = connection_cause(e, what="Redis", key="redis.url", url=url)
        raise CoordinationError(f"cannot read build logs from Redis at {endpoint(url)}: {cause}") from None
    finally:
        with contextlib.suppress(redis.RedisError, OSError):
            client.close()


class LogPrinter:
    """Prints entries: lines to ``out``, notes to ``note`` (an attempt's start and end)."""

    def __init__(self, attempt: int | None, out: Out = print, note: Out = _stderr) -> None:
        self._attempt = attempt
        self._out = out
        self._note = note
        self._current = 0
        #: Set once the entry that ends what is followed was printed.
        self.done = False

    def show(self, entries: list[LogLine | LogEnd] | Iterator[LogLine | LogEnd]) -> None:
        for entry in entries:
            if self._attempt is not None and entry.attempt != self._attempt:
                continue
            if isinstance(entry, LogEnd):
                self._note(describe_end(entry))
                if is_final(entry, self._attempt):
                    self.done = True
                continue
            if entry.attempt != self._current:
                self._current = entry.attempt
                if self._attempt is None:
                    self._note(f"🔄 attempt {entry.attempt}")
            self._out(entry.line)


def show_logs(
    config: Config,
    deployment_id: str,
    *,
    attempt: int | None,
    follow: bool,
    timeout: float,
    out: Out = print,
    note: Out = _stderr,
) -> int:
    """Print the backlog of ``deployment_id``'s log, then with ``follow`` the live lines to the end."""
    key = stream_key(config.redis.key_prefix, deployment_id)
    printer = LogPrinter(attempt, out, note)
    deadline = time.monotonic() + timeout
    with redis_client(config) as client:
        reader = StreamReader(client, key)
        printer.show(reader.backlog())
        if not follow:
            if reader.last_id == "0-0" and not reader.exists():
                note(f"❌ no build log for {deployment_id} (unknown, not started yet, or expired)")
                return EXIT_NO_LOG
            return EXIT_OK
        if reader.last_id == "0-0":
            note(f"🔄 waiting for the build log of {deployment_id}")
        while not printer.done:
            left = deadline - time.monotonic()
            if left <= 0:
                note(f"⚠️ the build log of {deployment_id} did not end within {timeout:.0f} s")
                return EXIT_TIMEOUT
            printer.show(reader.wait(max(1, min(BLOCK_MS, int(left * 1000)))))
    return EXIT_OK
