"""The Redis Stream sink: one stream per deployment, ``<redis.key_prefix>:logs:<deploymentId>``.

Entries (every field a string):

* a line: ``l`` = the JSON :class:`~orchestrator.buildlogs.model.LogLine`, ``c`` = the source cursor
  after it (what an adopter resumes from);
* the end of an attempt: ``e`` = the status of the attempt's last event (``succeeded``, ``failed``,
  ``stopped``, or ``retrying`` when another attempt follows), ``a`` = the attempt, ``s`` = its last
  ``seq``, ``d`` = how many of its lines the caps dropped.

Each ``XADD`` trims the stream to about ``logs.max_lines_kept`` entries (``MAXLEN ~``) and every
write refreshes an ``EXPIRE`` of ``logs.ttl_seconds``, so a stream disappears that long after its
last line, whether or not its job was seen to end. A round's entries, for every job, go in one Lua
script call (atomic: all of them or none). There is no pub/sub notification: a reader follows one
deployment with ``XREAD BLOCK`` on its key (see README, "Build logs").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from orchestrator.buildlogs.model import LogLine
from orchestrator.coordination.client import RedisClient

#: Entries read back (newest first) to find an attempt's last line when resuming.
RESUME_SCAN: Final = 200

#: Appends a round's entries and refreshes their streams' expiry, atomically, in one command.
#: ``KEYS``: the streams; ``ARGV``: MAXLEN, TTL, the number of lines, then one argument per line —
#: ``<index of its key>\n<cursor>\n<JSON>`` — then five per end: index, status, attempt, last seq,
#: dropped. One argument per line keeps redis-py's share small: packing arguments is most of what
#: sending costs it (one command like this: about 2.5 times the lines per CPU second of a pipeline
#: of one XADD per line).
_APPEND_SCRIPT: Final = """
local maxlen = ARGV[1]
local last_line = 3 + tonumber(ARGV[3])
for i = 4, last_line do
  local a = ARGV[i]
  local p1 = string.find(a, '\\n', 1, true)
  local p2 = string.find(a, '\\n', p1 + 1, true)
  redis.call('XADD', KEYS[tonumber(string.sub(a, 1, p1 - 1))], 'MAXLEN', '~', maxlen, '*',
    'l', string.sub(a, p2 + 1), 'c', string.sub(a, p1 + 1, p2 - 1))
end
for i = last_line + 1, #ARGV, 5 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', maxlen, '*',
    'e', ARGV[i + 1], 'a', ARGV[i + 2], 's', ARGV[i + 3], 'd', ARGV[i + 4])
end
for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
return 0
"""

_LINE_DECODER: Final = msgspec.json.Decoder(LogLine)


def stream_key(prefix: str, deployment_id: str) -> str:
    """The Redis key of ``deployment_id``'s log stream."""
    return f"{prefix}:logs:{deployment_id}"


class Resume(msgspec.Struct, frozen=True):
    """Where an attempt's published log stands: its last ``seq`` and cursor, and whether it ended."""

    seq: int = 0
    cursor: str | None = None
    ended: bool = False


class LineEntry(msgspec.Struct, frozen=True):
    """A line to append to ``key``: its :class:`LogLine` as JSON, and the source cursor after it
    (which holds no newline)."""

    key: str
    line: bytes
    cursor: str


class EndEntry(msgspec.Struct, frozen=True):
    """The entry that says an attempt's log is complete (the stream then gets its final expiry)."""

    key: str
    attempt: int
    status: str
    last_seq: int
    dropped: int


Entry = LineEntry | EndEntry


class RedisStreamSink:
    """Writes entries in one pipeline per call; reads back where an attempt's log stands."""

    def __init__(self, client: RedisClient, prefix: str, *, max_lines_kept: int, ttl_seconds: int) -> None:
        self._client = client
        self.prefix = prefix
        self._max_len = max_lines_kept
        self._ttl = ttl_seconds
        self._append = client.register_script(_APPEND_SCRIPT)

    def key(self, deployment_id: str) -> str:
        """The stream key of ``deployment_id``."""
        return stream_key(self.prefix, deployment_id)

    def write(self, entries: Sequence[Entry]) -> None:
        """Append ``entries`` in order and refresh each touched stream's expiry: in one round trip,
        all or nothing (a Lua script runs atomically).

        Raises:
            redis.RedisError: nothing was written (the caller resumes from what the stream holds).
        """
        if not entries:
            return
        keys: dict[str, int] = {}
        lines: list[bytes] = []
        ends: list[str | int] = []
        for entry in entries:
            index = keys.get(entry.key)
            if index is None:
                index = keys[entry.key] = len(keys) + 1
            if isinstance(entry, LineEntry):
                lines.append(f"{index}\n{entry.cursor}\n".encode() + entry.line)
            else:
                ends += (index, entry.status, entry.attempt, entry.last_seq, entry.dropped)
        self._append(keys=list(keys), args=[self._max_len, self._ttl, len(lines), *lines, *ends])

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
