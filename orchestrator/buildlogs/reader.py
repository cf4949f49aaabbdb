"""Reading a job's log stream: the backlog (``XRANGE``), then live (``XREAD BLOCK``), to its end.

What ``orchestrator logs`` and ``submit --wait --logs`` use, and what the README's example consumer
does in ten lines. A reader never misses or repeats an entry: it always continues after the id of the
last entry it read, whether from the backlog or live.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import msgspec

from orchestrator.buildlogs.model import LogLine
from orchestrator.coordination.client import RedisClient

#: Entries read per XRANGE / XREAD call.
READ_COUNT: Final = 1000
#: The end status of an attempt that is followed by another one.
RETRYING: Final = "retrying"

_LINE: Final = msgspec.json.Decoder(LogLine)


class LogEnd(msgspec.Struct, frozen=True):
    """An attempt's end entry: its final status, its last ``seq``, how many lines the caps dropped."""

    attempt: int
    status: str
    last_seq: int
    dropped: int


def decode_entry(fields: dict[bytes, bytes]) -> LogLine | LogEnd | None:
    """The line or end of one stream entry (None for an entry this version does not know)."""
    raw = fields.get(b"l")
    if raw is not None:
        try:
            return _LINE.decode(raw)
        except msgspec.DecodeError:
            return None
    status = fields.get(b"e")
    if status is None:
        return None
    try:
        return LogEnd(
            attempt=int(fields.get(b"a", b"0")),
            status=status.decode(),
            last_seq=int(fields.get(b"s", b"0")),
            dropped=int(fields.get(b"d", b"0")),
        )
    except ValueError:
        return None


class StreamReader:
    """Reads one stream from ``last_id`` on (``"0-0"``: from its first entry)."""

    def __init__(self, client: RedisClient, key: str, last_id: str = "0-0") -> None:
        self._client = client
        self.key = key
        self.last_id = last_id

    def backlog(self) -> Iterator[LogLine | LogEnd]:
        """Every entry there now, oldest first, in chunks of :data:`READ_COUNT`."""
        while True:
            start = "-" if self.last_id == "0-0" else f"({self.last_id}"
            chunk = self._client.xrange(self.key, min=start, count=READ_COUNT)
            for entry_id, fields in chunk:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                decoded = decode_entry(fields)
                if decoded is not None:
                    yield decoded
            if len(chunk) < READ_COUNT:
                return

    def wait(self, block_ms: int) -> list[LogLine | LogEnd]:
        """Entries after the last one read, waiting up to ``block_ms`` for one to come (0: no wait)."""
        if block_ms > 0:
            replies = self._client.xread({self.key: self.last_id}, count=READ_COUNT, block=block_ms)
        else:
            replies = self._client.xread({self.key: self.last_id}, count=READ_COUNT)
        out: list[LogLine | LogEnd] = []
        for _key, entries in replies or ():
            for entry_id, fields in entries:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                decoded = decode_entry(fields)
                if decoded is not None:
                    out.append(decoded)
        return out

    def exists(self) -> bool:
        """Whether the stream is there (it is created by the first line, and expires after the job)."""
        return bool(self._client.exists(self.key))


def is_final(end: LogEnd, attempt: int | None) -> bool:
    """Whether a reader following ``attempt`` (None: the job, every attempt) stops at ``end``."""
    if attempt is not None:
        return end.attempt == attempt
    return end.status != RETRYING
