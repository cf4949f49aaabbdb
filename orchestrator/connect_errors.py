"""Why a connection failed, in words an operator can act on: the endpoint and the cause.

Shared by ``orchestrator submit`` (one line, then exit 4) and the long-running consumer and publisher
(their log lines and /health details). pika wraps the real cause several layers deep (its connection
workflow's ``exception``/``exceptions``, the first argument, ``__cause__``); :func:`connection_cause`
walks them all and names one of: authentication failed, virtual host refused, DNS lookup failed,
connection refused, TLS handshake failed, timed out, closed by the server. Never a password.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote, urlsplit

import pika.exceptions
import redis
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

from orchestrator.broker.connection import describe_broker_error
from orchestrator.redaction import redact_text

__all__ = ["broker_connect_failure", "connection_cause", "endpoint", "error_chain", "reply_text"]

#: A broker's reply as pika writes it inside its messages: ``(530) 'NOT_ALLOWED - vhost x not found'``.
_REPLY: Final = re.compile(r"\((\d{3})\) '([^']*)'")
_DEFAULT_PORTS: Final = {"amqp": 5672, "amqps": 5671, "redis": 6379, "rediss": 6379}


def endpoint(url: str) -> str:
    """``host:port`` of a broker or Redis URL (a socket's path for ``unix://``); never its password."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "?"
        host = parts.hostname or "localhost"
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        return redact_text(url)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _user(url: str) -> str:
    try:
        return unquote(urlsplit(url).username or "")
    except ValueError:
        return ""


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it wraps: pika's first argument, ``exception`` and ``exceptions``
    (its connection workflow's), ``__cause__``, ``__context__``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [
            *current.args[:1],
            getattr(current, "exception", None),
            *(getattr(current, "exceptions", None) or ()),
            current.__cause__,
            current.__context__,
        ]
        todo += [e for e in wrapped if isinstance(e, BaseException)]


def connection_cause(error: BaseException, *, what: str, key: str, url: str) -> str:
    """Why a connection to ``what`` (RabbitMQ, Redis) at ``url`` (config key ``key``) failed, in words,
    secret-free.

    Names one of: authentication failed, virtual host refused, DNS lookup failed, connection refused,
    TLS handshake failed, timed out, closed by the server; else the error as described.
    """
    chain = list(error_chain(error))
    text = " ".join(str(e) for e in chain)
    host = endpoint(url).rpartition(":")[0].strip("[]")
    for e in chain:
        if isinstance(e, pika.exceptions.ProbableAuthenticationError | redis.AuthenticationError) or (
            isinstance(e, redis.ResponseError) and ("WRONGPASS" in str(e) or "NOAUTH" in str(e))
        ):
            user = _user(url)
            who = f" for user {user!r}" if user else ""
            return f"authentication failed{who} (check the user name and password in {key})"
        if isinstance(e, pika.exceptions.ProbableAccessDeniedError):
            vhost = unquote(urlsplit(url).path[1:]) or "/"
            return f"access to virtual host {vhost!r} refused ({reply_text(e)})"
        if isinstance(e, socket.gaierror):
            return f"DNS lookup of {host!r} failed ({e.strerror or e}); check {key}"
        if isinstance(e, ConnectionRefusedError):
            return f"connection refused (is {what} running and listening there? check {key})"
        if isinstance(e, ssl.SSLError):
            detail = getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)
            return f"TLS handshake failed ({detail})"
    for e in chain:
        if (
            isinstance(e, TimeoutError | redis.TimeoutError | AMQPConnectorStackTimeout)
            or "timed out" in str(e).lower()
            or "timeout" in type(e).__name__.lower()
        ):
            if "ssl=True" in text or "_ssl" in text:
                during = " during the TLS handshake"
            elif "AMQP handshake" in text:
                during = " during the AMQP handshake"
            else:
                during = ""
            return f"timed out{during} (no answer; check {key} and the firewalls on the way)"
    for e in chain:
        if isinstance(
            e,
            ConnectionResetError
            | pika.exceptions.StreamLostError
            | pika.exceptions.IncompatibleProtocolError
            | redis.ConnectionError,
        ) and ("reset" in text or "EOF" in text or "closed" in text.lower()):
            return f"the server closed the connection (is it {what}, and does it expect TLS?)"
    if what == "RabbitMQ":
        return describe_broker_error(error)
    return redact_text(f"{type(error).__name__}: {error}")


def reply_text(error: BaseException) -> str:
    """The broker's reply (``530 NOT_ALLOWED - vhost x not found``), also from inside pika's text."""
    for e in error_chain(error):
        if isinstance(e, pika.exceptions.ConnectionClosed | pika.exceptions.ChannelClosed):
            return redact_text(f"{e.reply_code} {e.reply_text}")
    found = _REPLY.search(str(error))
    return redact_text(f"{found[1]} {found[2]}") if found else describe_broker_error(error)


def broker_connect_failure(error: BaseException, url: str) -> str:
    """``host:port: cause`` of a failed connection to RabbitMQ at ``url`` (for logs and /health)."""
    return f"{endpoint(url)}: {connection_cause(error, what='RabbitMQ', key='broker.url', url=url)}"
