"""What /health answers: the actors' states (from the supervisor) and the dependencies' connectivity.

Everything here is thread-safe and cheap to read: the health endpoint reads this board and never asks
an actor anything, so it answers fast however busy the actors are. Writers take a lock and replace
immutable values; readers take no lock at all, so a writer preempted while holding the lock (the GIL
switches threads every few milliseconds under load) never delays /health.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Literal

import msgspec

from orchestrator import __version__

ActorStateName = Literal["starting", "running", "restarting", "failed", "stopped"]
HealthStatus = Literal["ok", "unavailable", "draining"]

#: Heartbeat ages are reported in seconds with this many decimals.
AGE_DECIMALS: Final = 3


class ActorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One actor as the supervisor sees it.

    Attributes:
        name: the actor's name in the supervisor.
        state: starting, running, restarting, failed or stopped.
        restarts: how many times it was restarted since the process started.
        heartbeat_at: ``time.monotonic()`` of its last answered ping or heartbeat; None before its start.
        last_error: its last crash, one line, secrets redacted; None when it never crashed.
    """

    name: str
    state: ActorStateName
    restarts: int
    heartbeat_at: float | None
    last_error: str | None


class _Dependency(msgspec.Struct, frozen=True):
    ok: bool
    detail: str
    required: bool


class HealthBoard:
    """The process's health, written by the supervisor and the actors, read by /health.

    Args:
        stuck_after_seconds: an actor whose heartbeat is older than this makes the process unhealthy.
        version: the version reported in the body.
    """

    def __init__(self, stuck_after_seconds: float, *, version: str = __version__) -> None:
        self._stuck_after = stuck_after_seconds
        self._version = version
        self._lock = threading.Lock()
        # Replaced (copy on write), never mutated: readers see either the old or the new mapping.
        self._dependencies: Mapping[str, _Dependency] = MappingProxyType({})
        self._draining = False
        self._actors: Callable[[], Sequence[ActorStatus]] = tuple

    def set_dependency(self, name: str, ok: bool, detail: str = "", *, required: bool = True) -> None:
        """Record the connectivity of ``name`` ("broker", "redis", "status.amqp", "status.redis", ...).

        Args:
            name: the dependency, as shown in the body.
            ok: whether it is reachable and usable now.
            detail: one line for an operator (no secrets: it is served over HTTP).
            required: whether the process cannot do its job without it (then down means 503).
        """
        dependency = _Dependency(ok=ok, detail=detail, required=required)
        with self._lock:
            if self._dependencies.get(name) != dependency:
                self._dependencies = MappingProxyType({**self._dependencies, name: dependency})

    def set_draining(self, draining: bool) -> None:
        """Mark the process as draining: /health answers 503 so the load balancer stops sending."""
        with self._lock:
            self._draining = draining

    @property
    def draining(self) -> bool:
        """Whether the process is draining."""
        return self._draining

    def watch_actors(self, snapshot: Callable[[], Sequence[ActorStatus]]) -> None:
        """Read actor states from ``snapshot`` (the supervisor's; must be cheap and never block long)."""
        with self._lock:
            self._actors = snapshot

    def report(self, now: float) -> tuple[bool, dict[str, Any]]:
        """The health as of ``now`` (a ``time.monotonic()`` value).

        Returns:
            ``(healthy, body)``: healthy only when every actor runs with a fresh heartbeat, every
            required dependency is up and the process is not draining. ``body`` is the JSON document
            ``{"status", "actors", "dependencies", "version", "reasons"}``.
        """
        dependencies, draining, snapshot = self._dependencies, self._draining, self._actors
        reasons: list[str] = []
        actors: dict[str, dict[str, Any]] = {}
        for actor in snapshot():
            age = (
                None
                if actor.heartbeat_at is None
                else round(max(0.0, now - actor.heartbeat_at), AGE_DECIMALS)
            )
            actors[actor.name] = {
                "state": actor.state,
                "restarts": actor.restarts,
                "heartbeat_age_seconds": age,
                "last_error": actor.last_error,
            }
            if actor.state != "running":
                reasons.append(f"actor {actor.name} is {actor.state}")
            elif age is not None and age > self._stuck_after:
                reasons.append(f"actor {actor.name} has not answered for {age:.1f} s (stuck?)")
        for name, dependency in dependencies.items():
            if dependency.required and not dependency.ok:
                reasons.append(f"{name} is down" + (f": {dependency.detail}" if dependency.detail else ""))
        status: HealthStatus = "ok"
        if draining:
            status = "draining"
            reasons.insert(0, "the process is draining (shutting down)")
        elif reasons:
            status = "unavailable"
        body: dict[str, Any] = {
            "status": status,
            "actors": actors,
            "dependencies": {
                name: {"ok": d.ok, "detail": d.detail, "required": d.required}
                for name, d in sorted(dependencies.items())
            },
            "version": self._version,
            "reasons": reasons,
        }
        return status == "ok", body
