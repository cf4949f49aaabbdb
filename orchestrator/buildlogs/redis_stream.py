"""The Redis Stream sink: one stream per deployment, ``<redis.key_prefix>:logs:<deploymentId>``.

Entries (every field a string):

* a line: ``l`` = the JSON :class:`~orchestrator.buildlogs.model.LogLine`, ``c`` = the source cursor
  after it (what an adopter resumes from);
* the end of an attempt: ``e`` = the attempt's final status (``succeeded``, ``failed``, ``retrying``,
  ``timed_out``, ``stopped``, or ``unknown``), ``a`` = the attempt, ``s`` = its last ``seq``,
  ``d`` = how many of its lines the caps dropped.

Each ``XADD`` trims the stream to about ``logs.max_lines_kept`` entries (``MAXLEN ~``) and every
write refreshes an ``EXPIRE`` of ``logs.ttl_seconds``, so a stream disappears that long after its
last line, whether or not its job was seen to end. There is no pub/sub notification: a reader
follows one deployment with ``XREAD BLOCK`` on its key (see README, "Build logs").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from orchestrator.buildlogs.model import LogLine
from orchestrator.coordination.client import RedisClient

#: The status of an attempt ended without a known outcome (the pump was closed while finishing it).
UNKNOWN_END: Final = "unknown"
#: Entries read back (newest first) to find an attempt's last line when resuming.
RESUME_SCAN: Final = 200

_LINE_DECODER: Final = msgspec.json.Decoder(LogLine)


def stream_key(prefix: str, deployment_id: str) -> str:
    """The Redis key of ``deployment_id``'s log stream."""
    return f"{prefix}:logs:{deployment_id}"


class Resume(msgspec.Struct, frozen=True):
    """Where an attempt's published log stands: its last ``seq`` and cursor, and whether it ended."""

    seq: int = 0
    cursor: str | None = None
    ended: bool = False


class Entry(msgspec.Struct, frozen=True):
    """One entry to append: to ``key``, these ``fields``."""

    key: str
    fields: dict[str, str | bytes]
    #: Whether it ends an attempt (the stream then gets its final expiry).
    end: bool = False


def line_entry(key: str, encoded: bytes, cursor: str) -> Entry:
    """The entry of one published line (``encoded``: its :class:`LogLine` as JSON)."""
    return Entry(key, {"l": encoded, "c": cursor})


def end_entry(key: str, attempt: int, status: str, last_seq: int, dropped: int) -> Entry:
    """The entry that says an attempt's log is complete."""
    return Entry(key, {"e": status, "a": str(attempt), "s": str(last_seq), "d": str(dropped)}, end=True)


class RedisStreamSink:
    """Writes entries in one pipeline per call; reads back where an attempt's log stands."""

    def __init__(self, client: RedisClient, prefix: str, *, max_lines_kept: int, ttl_seconds: int) -> None:
        self._client = client
        self.prefix = prefix
        self._max_len = max_lines_kept
        self._ttl = ttl_seconds

    def key(self, deployment_id: str) -> str:
        """The stream key of ``deployment_id``."""
        return stream_key(self.prefix, deployment_id)

    def write(self, entries: Sequence[Entry]) -> None:
        """Append ``entries`` in order, in one round trip; refresh each touched stream's expiry.

        Raises:
            redis.RedisError: nothing or part of it was written (the caller resumes from the stream).
        """
        if not entries:
            return
        pipe = self._client.pipeline(transaction=True)
        keys: dict[str, None] = {}
        for entry in entries:
            pipe.xadd(entry.key, entry.fields, maxlen=self._max_len, approximate=True)
            keys[entry.key] = None
        for key in keys:
            pipe.expire(key, self._ttl)
        pipe.execute()

    def resume_points(self, attempts: Sequence[tuple[str, int]]) -> list[Resume]:
        """For each (deploymentId, attempt): the last published line's ``seq`` and cursor, and whether
        the attempt's end entry is there (one round trip for all of them).

        Raises:
            redis.RedisError: Redis could not be read.
        """
        if not attempts:
            return []
        pipe = self._client.pipeline(transaction=False)
        for deployment_id, _ in attempts:
            pipe.xrevrange(self.key(deployment_id), count=RESUME_SCAN)
        replies = pipe.execute()
        return [
            _resume_from(entries, attempt) for (_, attempt), entries in zip(attempts, replies, strict=True)
        ]


def _resume_from(entries: list[tuple[bytes, dict[bytes, bytes]]], attempt: int) -> Resume:
    """Newest first: the first entry of ``attempt`` (a line or its end) says where it stands."""
    for _, fields in entries:
        status = fields.get(b"e")
        if status is not None:
            entry_attempt = int(fields.get(b"a", b"0"))
            if entry_attempt == attempt:
                return Resume(seq=int(fields.get(b"s", b"0")), ended=True)
            if entry_attempt < attempt:
                return Resume()  # an earlier attempt ended last: this one has published nothing
            continue
        raw = fields.get(b"l")
        if raw is None:
            continue
        try:
            line = _LINE_DECODER.decode(raw)
        except msgspec.DecodeError:
            continue
        if line.attempt == attempt:
            cursor = fields.get(b"c")
            return Resume(seq=line.seq, cursor=cursor.decode() if cursor else None)
        if line.attempt < attempt:
            return Resume()
    return Resume()
