"""A depth bound on pika's decoding of AMQP field tables, so no header can take the connection down.

pika decodes a message's headers recursively, one Python call per level of nesting. A publisher can
nest tables or arrays some twenty thousand levels deep within RabbitMQ's frame size; decoding that
raises ``RecursionError`` inside pika's frame reader, the consumer's connection is lost, the broker
requeues the message, and the next connection meets it again: a loop no handler of ours ever sees.

:func:`install` wraps ``pika.data.decode_value`` (through which every nested value is decoded, both
in tables and in arrays) so that a table or array nested deeper than :data:`MAX_FIELD_DEPTH` is
skipped by its length prefix and stands as :data:`TOO_DEEP`. The message then arrives like any
other; its headers are read (and refused) by :mod:`orchestrator.broker.headers`. Cost: one counter
per nested value, O(size of the headers).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any, Final

import pika.data

#: Deepest nesting of tables and arrays decoded; deeper ones are skipped whole.
MAX_FIELD_DEPTH: Final = 32
#: What a skipped table or array decodes to.
TOO_DEEP: Final = "<nested too deeply>"

_NESTED_KINDS: Final = (b"F", b"A")
_depth = threading.local()
_installed = False
_install_lock = threading.Lock()


Decoder = Callable[[bytes, int], tuple[Any, int]]


def _bounded(decode_value: Decoder) -> Decoder:
    def decode_value_bounded(encoded: bytes, offset: int) -> tuple[Any, int]:
        depth = getattr(_depth, "value", 0)
        if depth >= MAX_FIELD_DEPTH and encoded[offset : offset + 1] in _NESTED_KINDS:
            (length,) = struct.unpack_from(">I", encoded, offset + 1)
            return TOO_DEEP, offset + 5 + length
        _depth.value = depth + 1
        try:
            return decode_value(encoded, offset)
        finally:
            _depth.value = depth

    decode_value_bounded.__wrapped__ = decode_value  # type: ignore[attr-defined]
    return decode_value_bounded


def install() -> None:
    """Bound pika's field decoding (idempotent; affects every pika connection of this process)."""
    global _installed  # noqa: PLW0603 - one process-wide patch, applied once
    with _install_lock:
        if not _installed:
            pika.data.decode_value = _bounded(pika.data.decode_value)
            _installed = True
