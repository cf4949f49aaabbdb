"""Keep secrets out of logs, events, metrics and printed config."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"

_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_TOKEN_PARAM = re.compile(
    r"(?i)\b(?P<key>token|access_token|password|passwd|secret|api_key|apikey|x-amz-security-token)="
    r"(?P<value>[^&\s]+)"
)


def redact_url(url: str) -> str:
    """Return ``url`` with any password (and token-like query values) replaced by ``***``.

    The user name is kept because it helps an operator; the password never is.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}" if ":" in userinfo else f"{REDACTED}@{hostport}"
    query = _TOKEN_PARAM.sub(lambda m: f"{m.group('key')}={REDACTED}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Remove credentials embedded in URLs, and token-like ``key=value`` pairs, from free text."""
    text = _USERINFO_IN_TEXT.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    return _TOKEN_PARAM.sub(lambda m: f"{m.group('key')}={REDACTED}", text)
