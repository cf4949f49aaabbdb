"""The ``repository`` rule: an ``https://`` URL of ``/owner/name`` on an allow-listed host.

The URL is taken apart by hand, after the characters that make parsers disagree (whitespace,
control and non-ASCII characters, backslashes, percent-encoding) have been refused, so what is
checked here is exactly what a worker will clone: the rule returns the URL rebuilt from its checked
parts (scheme and host lower-cased), never the sender's text.

A credential in the URL is refused and never echoed: when the URL holds an ``@`` anywhere, no part of
it appears in any reason, because where user-info ends depends on the parser reading it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from orchestrator.validation.rules import SECURITY, Issue, expected, show

#: Longest repository URL accepted (browsers and git hosts use a similar bound).
MAX_URL_CHARS: Final = 2048

CREDENTIALS_REASON: Final = "must not contain credentials (user-info in the URL)"

# Whitespace, control characters, DEL and anything outside ASCII: parsers strip or map these
# differently (urlsplit drops tabs and newlines), and no allow-listed URL needs them.
_UNSAFE_CHARS: Final = re.compile(r"[^\x21-\x7e]")
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}")
_AUTHORITY_END: Final = re.compile(r"[/?#]")
_HOST_NAME: Final = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
# A last label of digits, or of 0x and hex digits, makes a name an IPv4 address to the resolver
# (127.1, 2130706433, 0x7f.0.0.1); no real top-level domain looks like that.
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_REPO_PATH: Final = re.compile(r"/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)")
# A path made only of these is safe to echo; anything else might hold what it should not.
_SHOWABLE_PATH: Final = re.compile(r"[A-Za-z0-9._/-]{0,200}")
_GIT_SUFFIX: Final = ".git"
# The common case, https://host/owner/name with nothing else, accepted by one match when the host
# is allow-listed; anything else takes the detailed checks (which accept a superset of this).
_PLAIN_HTTPS: Final = re.compile(r"(?i:https)://([A-Za-z0-9.-]+)/([A-Za-z0-9._-]+)/([A-Za-z0-9._-]+)")


class RepositoryRule:
    """Checks and normalises ``repository`` against the configured allow-list.

    Args:
        allowed_hosts: host names (any case), or ``host:port`` to allow that port on that host.
        allow_file_repos: accept ``file:///absolute/path`` (local development and tests).
    """

    def __init__(self, allowed_hosts: Iterable[str], allow_file_repos: bool) -> None:
        self._allowed = frozenset(entry.strip().lower() for entry in allowed_hosts if entry.strip())
        self._allowed_names = frozenset(entry.partition(":")[0] for entry in self._allowed)
        self._allowed_text = ", ".join(sorted(self._allowed)) or "none"
        self._allow_file_repos = allow_file_repos
        # The entries the detailed checks would accept as a plain host (no port, no IP, ...).
        self._plain_hosts = frozenset(
            host
            for host in self._allowed
            if _HOST_NAME.fullmatch(host) and not _is_ip_literal(host) and not _is_localhost(host)
        )

    def __call__(self, field: str, value: Any, issues: list[Issue]) -> Any:
        """Append the problems of ``value`` to ``issues``; return the normalised URL."""
        if not isinstance(value, str):
            issues.append(expected(field, "a string", value))
            return value
        if not value:
            issues.append(Issue(f"{field}: must not be empty"))
            return value
        if len(value) > MAX_URL_CHARS:
            issues.append(Issue(f"{field}: is {len(value)} characters long, at most {MAX_URL_CHARS} allowed"))
            return value
        plain = _PLAIN_HTTPS.fullmatch(value)
        if plain is not None:
            host, owner, name = plain.groups()
            host = host.lower()
            if host in self._plain_hosts and _is_owner_and_name(owner, name):
                return f"https://{host}/{owner}/{name}"
        if self._has_unsafe_characters(field, value, issues):
            # Past this point parsers disagree about the parts; say what is wrong and stop.
            if "@" in value:
                issues.append(Issue(f"{field}: {CREDENTIALS_REASON}", SECURITY))
            return value
        scheme, separator, rest = value.partition("://")
        scheme = scheme.lower()
        if not separator or _SCHEME.fullmatch(scheme) is None:
            issues.append(Issue(f"{field}: must be an https:// URL", SECURITY))
            return value
        end = _AUTHORITY_END.search(rest)
        authority, tail = (rest, "") if end is None else (rest[: end.start()], rest[end.start() :])
        # For https, an "@" anywhere counts: where user-info ends depends on the parser reading it.
        if "@" in (rest if scheme == "https" else authority):
            issues.append(Issue(f"{field}: {CREDENTIALS_REASON}", SECURITY))
        before = len(issues)
        if scheme == "https":
            normalised = self._check_https(field, authority, tail, "@" not in rest, issues)
        elif scheme == "file":
            normalised = self._check_file(field, rest, issues)
        elif scheme == "http":
            issues.append(Issue(f"{field}: must use https://, not http://", SECURITY))
            normalised = None
        else:
            issues.append(Issue(f"{field}: must be an https:// URL (got {scheme}://)", SECURITY))
            normalised = None
        if len(issues) > before or normalised is None:
            return value
        return normalised

    @staticmethod
    def _has_unsafe_characters(field: str, value: str, issues: list[Issue]) -> bool:
        """Whether ``value`` holds characters that make URL parsers disagree (an issue for each kind)."""
        before = len(issues)
        if _UNSAFE_CHARS.search(value):
            issues.append(
                Issue(f"{field}: must not contain whitespace, control or non-ASCII characters", SECURITY)
            )
        if "\\" in value:
            issues.append(Issue(f"{field}: must not contain backslashes", SECURITY))
        if "%" in value:
            issues.append(Issue(f"{field}: must not contain percent-encoded characters ('%')", SECURITY))
        return len(issues) > before

    def _check_https(
        self, field: str, authority: str, tail: str, may_echo: bool, issues: list[Issue]
    ) -> str | None:
        """Check the parts of an https URL; return the rebuilt URL (meaningful only without issues)."""
        path, query_mark, _ = tail.partition("?")
        path, fragment_mark, _ = path.partition("#")
        netloc = self._check_host(field, authority.rpartition("@")[2], may_echo, issues)
        if query_mark or fragment_mark:
            issues.append(Issue(f"{field}: must not have a query or fragment ('?' or '#')", SECURITY))
        self._check_repo_path(field, path, may_echo, issues)
        return None if netloc is None else f"https://{netloc}{path}"

    def _check_host(self, field: str, host_port: str, may_echo: bool, issues: list[Issue]) -> str | None:
        """Check ``host[:port]``; return it normalised, or ``None`` after adding an issue."""
        if not host_port:
            issues.append(Issue(f"{field}: has no host", SECURITY))
            return None
        if host_port.startswith("[") or host_port.count(":") > 1:
            issues.append(Issue(f"{field}: must not use an IP address as host", SECURITY))
            return None
        host, colon, port_text = host_port.partition(":")
        host = host.lower()
        if host.endswith("."):
            issues.append(Issue(f"{field}: host must not end with '.'", SECURITY))
            return None
        if _is_ip_literal(host):
            issues.append(Issue(f"{field}: must not use an IP address as host", SECURITY))
            return None
        if _is_localhost(host):
            issues.append(Issue(f"{field}: must not point at localhost", SECURITY))
            return None
        if _HOST_NAME.fullmatch(host) is None:
            issues.append(Issue(f"{field}: host is not a valid host name", SECURITY))
            return None
        shown = f" {show(host)}" if may_echo else ""
        if host not in self._allowed_names:
            issues.append(
                Issue(f"{field}: host{shown} is not allowed (allowed: {self._allowed_text})", SECURITY)
            )
            return None
        if not colon:
            if host not in self._allowed:
                issues.append(
                    Issue(f"{field}: host{shown} is allowed only with the port its entry names", SECURITY)
                )
                return None
            return host
        port = int(port_text) if _PORT.fullmatch(port_text) else 0
        if not 1 <= port <= 65535:
            issues.append(Issue(f"{field}: has an invalid port", SECURITY))
            return None
        host_port = f"{host}:{port}"
        if host_port not in self._allowed:
            port_shown = f" {port}" if may_echo else ""
            issues.append(
                Issue(
                    f"{field}: port{port_shown} is not allowed on host{shown} "
                    "(allow it with an entry host:port in validation.allowed_hosts)",
                    SECURITY,
                )
            )
            return None
        return host_port

    def _check_repo_path(self, field: str, path: str, may_echo: bool, issues: list[Issue]) -> None:
        match = _REPO_PATH.fullmatch(path)
        if match is not None and _is_owner_and_name(*match.groups()):
            return
        shown = f" {show(path)}" if path and may_echo and _SHOWABLE_PATH.fullmatch(path) else ""
        kind = SECURITY if ".." in path else "schema"
        issues.append(
            Issue(
                f"{field}: path{shown} must be /owner/name or /owner/name.git "
                "(letters, digits, '.', '_' and '-'; not '.' or '..')",
                kind,
            )
        )

    def _check_file(self, field: str, rest: str, issues: list[Issue]) -> str | None:
        """Check what follows ``file://`` (only when file repositories are allowed)."""
        if not self._allow_file_repos:
            issues.append(
                Issue(
                    f"{field}: file:// repositories are not allowed (validation.allow_file_repos is off)",
                    SECURITY,
                )
            )
            return None
        if not rest.startswith("/"):
            issues.append(Issue(f"{field}: must be file:///absolute/path (no host)", SECURITY))
            return None
        if "?" in rest or "#" in rest:
            issues.append(Issue(f"{field}: must not have a query or fragment ('?' or '#')", SECURITY))
            return None
        if ".." in rest.split("/"):
            issues.append(Issue(f"{field}: must not contain a '..' segment", SECURITY))
            return None
        return f"file://{rest}"


def _is_ip_literal(host: str) -> bool:
    """Whether ``host`` (no brackets, no port) is an IPv4 address in any form a resolver accepts.

    IPv6 literals need ``[...]`` or several ``:``, which are refused before this is asked.
    """
    return _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]) is not None


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _is_owner_and_name(owner: str, name: str) -> bool:
    """Whether the two path segments (already of the allowed characters) name a repository."""
    base = name[: -len(_GIT_SUFFIX)] if name.endswith(_GIT_SUFFIX) else name
    return owner not in (".", "..") and base not in ("", ".", "..")
