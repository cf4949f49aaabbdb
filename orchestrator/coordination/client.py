"""Talking to Redis: the client, redis-py errors as :class:`CoordinationError`, replies, reachability.

Every coordination class takes a client from :func:`connect_redis` and wraps its calls in
:func:`redis_errors`, so callers never see a redis-py exception; :class:`ConnectivityReporter` tells the
log (and a callback) when Redis becomes reachable or unreachable, once per change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, TypeAlias

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator.config import RedisConfig
from orchestrator.errors import CoordinationError
from orchestrator.logs import SUCCESS, WARNING, emoji
from orchestrator.redaction import redact_text

log = logging.getLogger(__name__)

#: A redis-py client, with or without ``decode_responses``.
RedisClient: TypeAlias = "redis.Redis[Any]"
#: ``on_connectivity(ok, detail)``: called when Redis becomes reachable or unreachable.
ConnectivityCallback: TypeAlias = Callable[[bool, str], None]

#: One immediate retry covers a pooled connection that a Redis restart closed; more would only hold
#: the calling actor up while Redis is really down.
REDIS_RETRIES: Final = 1


def connect_redis(config: RedisConfig) -> RedisClient:
    """A redis-py client for ``config.url`` whose every call is bounded by ``socket_timeout_seconds``.

    Nothing is sent until the first command, so this never fails because Redis is down.

    Raises:
        CoordinationError: the URL cannot be used by redis-py.
    """
    timeout = config.socket_timeout_seconds
    try:
        return redis.Redis.from_url(
            config.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), REDIS_RETRIES),
        )
    except ValueError as e:
        raise CoordinationError(f"redis.url cannot be used: {redact_text(str(e))}") from None


@contextmanager
def redis_errors(action: str) -> Iterator[None]:
    """Translate redis-py errors raised inside the block into :class:`CoordinationError`.

    Args:
        action: what was being done, for the message (e.g. ``"acquiring a slot"``).
    """
    try:
        yield
    except redis.RedisError as e:
        raise CoordinationError(
            f"Redis failed while {action}: {redact_text(str(e)) or type(e).__name__}"
        ) from e


def reply_text(value: bytes | str) -> str:
    """A Redis reply as ``str``, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


class ConnectivityReporter:
    """Reports Redis reachability to a callback and the log, once per change (not once per call).

    Thread-safe. A failing callback is logged and otherwise ignored: reporting never breaks the caller.
    """

    def __init__(self, what: str, callback: ConnectivityCallback | None = None) -> None:
        self._what = what
        self._callback = callback
        self._lock = threading.Lock()
        self._ok: bool | None = None

    @property
    def ok(self) -> bool | None:
        """The last state seen: True reachable, False not, None nothing tried yet."""
        return self._ok

    def report(self, ok: bool, detail: str = "") -> None:
        """Record the outcome of one Redis call; the callback hears only about changes."""
        with self._lock:
            changed = ok != self._ok
            self._ok = ok
        if not changed:
            return
        if ok:
            log.info("%s: Redis reachable", self._what, extra=emoji(SUCCESS))
        else:
            log.warning("%s: Redis unreachable: %s", self._what, detail, extra=emoji(WARNING))
        if self._callback is not None:
            try:
                self._callback(ok, detail)
            except Exception:
                log.exception("%s: connectivity callback failed", self._what)
