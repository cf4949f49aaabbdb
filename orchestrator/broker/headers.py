"""The execute queue's headers: untrusted input, read once at arrival and bounded there.

Anyone who can publish to ``execute.queue`` chooses the headers, so they are read like the body: only
the headers the orchestrator uses are kept, each one as a scalar of a bounded size, and an ``x-attempt``
that is not an attempt number in ``1..max_attempts`` makes the message poison (dead-lettered once with
the reason) rather than something a later publish fails to encode.

An attempt number above 1 is also a claim that the orchestrator itself scheduled the retry. It is
believed only with a valid :data:`ATTEMPT_SIGNATURE_HEADER`: an HMAC over (deploymentId, type,
attempt, scheduled-at) that only processes holding the signing key can make (:class:`AttemptSigner`).
Otherwise anyone could publish attempts 1, 2, 3, 4 of one deployment and have four workers launched,
since the launch guard and the slots tell attempts apart by number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any, Final

#: Header carrying the attempt number of a (re)published job.
ATTEMPT_HEADER: Final = "x-attempt"
#: Header carrying the orchestrator's signature of a retry's attempt number.
ATTEMPT_SIGNATURE_HEADER: Final = "x-attempt-signature"
#: Header carrying when (epoch milliseconds; AMQP headers have no floats) a retry was scheduled:
#: a stop asked for later cancels it.
SCHEDULED_AT_HEADER: Final = "x-scheduled-at"
#: Set by RabbitMQ on a quorum queue's redeliveries: how often the message was delivered before.
DELIVERY_COUNT_HEADER: Final = "x-delivery-count"

#: The headers a delivery keeps; every other header is dropped at arrival, unread.
KEPT_HEADERS: Final = frozenset(
    {ATTEMPT_HEADER, ATTEMPT_SIGNATURE_HEADER, SCHEDULED_AT_HEADER, DELIVERY_COUNT_HEADER}
)
#: Longest text kept from a header value (a signature is 64 hex characters).
MAX_HEADER_TEXT: Final = 128
#: Integers are kept only inside the range every consumer can represent (JavaScript's safe integers).
MAX_SAFE_INTEGER: Final = 2**53 - 1
#: Length of a signature in hex characters (a truncated HMAC-SHA256: 128 bits).
SIGNATURE_HEX_CHARS: Final = 32

_DIGITS: Final = re.compile(r"[0-9]{1,16}")
_SHOWN_CHARS: Final = 40
_PLAIN_TEXT: Final = re.compile(r"[0-9A-Za-z .+-]{0,40}")


def _scalar(value: Any) -> int | str | bool | None:
    """A header value as a bounded scalar; ``None`` for anything else (tables, arrays, floats...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else None
    if isinstance(value, bytes):
        if len(value) > MAX_HEADER_TEXT:
            return None
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        return value if len(value) <= MAX_HEADER_TEXT else None
    return None


def kept_headers(raw: Mapping[Any, Any] | None) -> dict[str, int | str | bool]:
    """The headers a delivery keeps: :data:`KEPT_HEADERS` whose values are bounded scalars.

    Never recurses into a nested table, whatever its depth, and costs O(number of headers).
    """
    if not raw:
        return {}
    kept: dict[str, int | str | bool] = {}
    for name in KEPT_HEADERS:
        if name in raw:
            value = _scalar(raw[name])
            if value is not None:
                kept[name] = value
    return kept


def _show(value: Any) -> str:
    """A header value as a reason may echo it: short plain text and numbers as they are, anything else
    described (a URL with a password, or a token, is never repeated)."""
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    if isinstance(value, str):
        if _PLAIN_TEXT.fullmatch(value):
            return repr(value)
        return f"a {len(value)}-character string"
    if isinstance(value, bool | int | float) or value is None:
        text = repr(value)
        return text if len(text) <= _SHOWN_CHARS else f"a {len(text)}-digit number"
    return f"a {type(value).__name__}"


def read_attempt(raw: Mapping[Any, Any] | None, max_attempts: int) -> tuple[int, str | None]:
    """The attempt number a delivery claims, and the problem that makes it poison (or ``None``).

    No header means attempt 1. A present header must be an integer (or a string of digits) in
    ``1..max_attempts``; anything else is a problem naming the header and the rule.
    """
    if not raw or ATTEMPT_HEADER not in raw:
        return 1, None
    value = raw[ATTEMPT_HEADER]
    number: int | None = None
    if isinstance(value, bytes) and len(value) <= MAX_HEADER_TEXT:
        value = value.decode("utf-8", "replace")
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    if number is not None and 1 <= number <= max_attempts:
        return number, None
    return 1, f"{ATTEMPT_HEADER} header: {_show(value)} is not an attempt number in 1..{max_attempts}"


class AttemptSigner:
    """Signs and checks the attempt number of the orchestrator's own retries.

    Args:
        key: the secret every orchestrator process shares (``broker.retry_signing_key``, or one
            derived from the service URLs when that is not set; see :func:`signing_key`).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _digest(self, deployment_id: str, job_type: str, attempt: int, scheduled_ms: int) -> str:
        message = f"{deployment_id}\n{job_type}\n{attempt}\n{scheduled_ms}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:SIGNATURE_HEX_CHARS]

    def sign(self, deployment_id: str, job_type: str, attempt: int, scheduled_ms: int) -> str:
        """The signature header value of a retry scheduled at ``scheduled_ms``."""
        return self._digest(deployment_id, job_type, attempt, scheduled_ms)

    def trusted_attempt(self, deployment_id: str, job_type: str, headers: Mapping[str, Any]) -> int:
        """The attempt the orchestrator scheduled, or 1 when the headers do not prove one above 1."""
        attempt = headers.get(ATTEMPT_HEADER, 1)
        if isinstance(attempt, str):
            attempt = int(attempt.strip()) if _DIGITS.fullmatch(attempt.strip()) else 1
        if not isinstance(attempt, int) or attempt <= 1:
            return 1
        signature = headers.get(ATTEMPT_SIGNATURE_HEADER)
        scheduled_ms = headers.get(SCHEDULED_AT_HEADER)
        if not isinstance(signature, str) or type(scheduled_ms) is not int:
            return 1
        expected = self._digest(deployment_id, job_type, attempt, scheduled_ms)
        return attempt if hmac.compare_digest(expected, signature) else 1


def signing_key(configured: str, *derive_from: str) -> bytes:
    """The signing key: the configured secret, or one derived from ``derive_from`` when it is empty.

    The fallback lets every process that shares the broker and Redis agree on a key without
    configuration; it is as secret as those URLs' credentials. Production sets its own.
    """
    if configured:
        return configured.encode()
    return hashlib.sha256("\n".join(("blacktree-attempt-signing", *derive_from)).encode()).digest()
