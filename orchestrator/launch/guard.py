"""The duplicate-launch guard: a job attempt is launched at most once, across redeliveries and processes.

Layers, cheapest first:

1. this process already launched (or adopted) the attempt: return that task;
2. a create-if-absent claim in Redis per (deploymentId, attempt), held by the launching process's
   instance id. When another *live* process holds it, the task is looked up by its tags and adopted,
   or — while that process is still launching it — the job waits and comes back later
   (:class:`LaunchInProgressError`). A claim whose holder died is taken over;
3. ``clientToken`` on RunTask, derived from deploymentId+attempt, so that even a launch whose answer
   was lost, or a takeover from a holder that died mid-RunTask, is not run twice by ECS itself (moto
   ignores it, so layers 1 and 2 are what the tests check).

Redis down: layer 2 falls back to looking the task up by its tags before launching.

Every layer binds the attempt to the job it is for — its type and :func:`job_digest` — so that a
*different* job sent under a deploymentId already used is never given the other job's task: the
claim in Redis holds ``<owner> <type>:<digest>``, layer 1 remembers the identity it launched, and a
task found by its tags (ECS tags, local task record) carries its type and digest. Such a job fails with
:class:`~orchestrator.launch.base.JobConflictError` and is rejected; the same job redelivered (same
digest) is adopted as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Literal, NoReturn

import msgspec

from orchestrator.coordination import DoneMarkers, InstanceRegistry, LaunchClaim, attempt_done_key
from orchestrator.errors import CapacityError, LaunchError, OrchestratorError
from orchestrator.launch.base import (
    JobConflictError,
    Launcher,
    LaunchRequest,
    TaskHandle,
    conflict_reason,
    job_identity,
)
from orchestrator.logs import WARNING, job_fields, task_fields
from orchestrator.messages import SourceJob

log = logging.getLogger(__name__)

#: How long a launch claim lives: longer than any redelivery of the same attempt can come.
LAUNCH_CLAIM_TTL_SECONDS: Final = 7 * 24 * 3600


class LaunchInProgressError(LaunchError):
    """Another live process (or thread) is launching this attempt right now: try again later."""

    counts_as_attempt = False


class AttemptOverError(LaunchError):
    """The attempt was launched before and has ended: a late duplicate, nothing to launch.

    ``outcome`` is the job's last outcome event as recorded (encoded), if any: the duplicate is
    answered with it, so whoever sent it learns the outcome at once.
    """

    retryable = False
    counts_as_attempt = False

    def __init__(self, message: str, outcome: bytes | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


#: How often a job waits for another live process that holds its attempt's claim to show a task.
MAX_IN_PROGRESS_WAITS: Final = 6
#: Attempts whose waits are counted at once (the oldest are forgotten first).
MAX_WAITS_REMEMBERED: Final = 10_000


class ClaimStrandedError(LaunchError):
    """Another live process claimed the attempt long ago and no task of it ever appeared: the attempt
    counts as failed, and the retry policy decides what follows."""

    retryable = True
    counts_as_attempt = True


#: See :meth:`GuardedLauncher.who_follows`.
Follower = Literal["here", "owner", "nobody"]


def _claim_key(key: tuple[str, int]) -> str:
    return f"launch:{key[0]}:{key[1]}"


def _type_of(identity: str) -> str:
    """The job type of a ``<type>:<digest>`` identity."""
    return identity.partition(":")[0]


def _check_same_job(job: SourceJob, handle: TaskHandle) -> None:
    """Raise :class:`JobConflictError` unless ``handle`` can be ``job``'s task."""
    if not handle.runs(job):
        raise JobConflictError(conflict_reason(job, handle.job_type))


class GuardedLauncher:
    """Wraps a :class:`Launcher` so that ``launch`` adopts an attempt's existing task instead.

    Thread-safe: the launch pool calls :meth:`launch` from several threads.

    Args:
        launcher: the launch back-end.
        owner: this process's instance id.
        registry: the liveness registry; None runs without cross-process claims (layer 2).
        done: markers of tasks whose outcome was handled; a late duplicate of one is not followed.
    """

    def __init__(
        self,
        launcher: Launcher,
        owner: str,
        registry: InstanceRegistry | None,
        done: DoneMarkers | None = None,
        *,
        slot_held: Callable[[str], bool] | None = None,
    ) -> None:
        self.name = launcher.name
        self._launcher = launcher
        #: Whether a deployment's slot is surely still this process's (False after a stall past the
        #: leases: the launch would run beyond the global limit, so it is tried again later instead).
        self._slot_held = slot_held
        self._owner = owner
        self._registry = registry
        self._done = done
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int], TaskHandle] = {}
        #: Attempts being launched by this process now, and the identity of the job each is for.
        self._launching: dict[tuple[str, int], str] = {}
        self._suspect: set[tuple[str, int]] = set()
        self._adopted: set[str] = set()
        #: How often each attempt claimed by another live process was found without a task.
        self._waits: dict[tuple[str, int], int] = {}

    def expect_duplicate(self, deployment_id: str, attempt: int) -> None:
        """Mark an attempt as possibly launched already (its delivery was redelivered)."""
        with self._lock:
            self._suspect.add((deployment_id, attempt))

    def forget(self, deployment_id: str, attempt: int) -> None:
        """The attempt is over; drop it from the in-process layer."""
        with self._lock:
            handle = self._known.pop((deployment_id, attempt), None)
            self._suspect.discard((deployment_id, attempt))
            if handle is not None:
                self._adopted.discard(handle.task_id)

    def active_here(self, deployment_id: str) -> bool:
        """Whether this process is launching, or has launched and still follows, an attempt of the
        deployment."""
        with self._lock:
            return any(key[0] == deployment_id for key in (*self._launching, *self._known))

    def taken_elsewhere(self, handle: TaskHandle) -> bool:
        """Whether another process adopted ``handle``'s task, or published its (attempt's) outcome.

        For a launch that took so long that this process's lease may have lapsed meanwhile (a stall):
        its ``dispatched`` event must not follow the adopter's events. Redis down: False.
        """
        if self._registry is None or self._done is None:
            return False
        key = attempt_done_key(handle.deployment_id, handle.attempt)
        try:
            return bool(self._registry.handled_elsewhere([handle.task_id], self._done, [key]))
        except OrchestratorError:
            return False

    def active_deployments(self) -> frozenset[str]:
        """The deployments this process is launching, or has launched and still follows."""
        with self._lock:
            return frozenset(key[0] for key in (*self._launching, *self._known))

    def who_follows(self, handle: TaskHandle) -> Follower:
        """Who tracks ``handle`` from here on.

        ``"here"`` when this process launched it or claimed it from a dead owner; ``"owner"`` when its
        owner lives (it follows the task; no second tracker); ``"nobody"`` when its outcome was already
        handled (a late duplicate of a job that has ended must not publish or retry it again).
        """
        with self._lock:
            adopted = handle.task_id in self._adopted
        if not adopted or self._registry is None:
            return "here"  # launched just now, by this process: no Redis call on the hot path
        try:
            if self._done is not None and self._done.done([handle.task_id]):
                return "nobody"
            if handle.instance_id == self._owner:
                return "here"
            if self._registry.is_alive(handle.instance_id):
                return "owner"
            return "here" if self._registry.claim_orphan(handle.task_id, self._owner) else "owner"
        except OrchestratorError:
            return "here"

    def launch(self, request: LaunchRequest) -> TaskHandle:
        """Return the attempt's task: an existing one if any layer finds it, else a new launch.

        Raises:
            LaunchInProgressError: another live process, or another thread here, is launching it.
            AttemptOverError: this process launched the attempt before, and it has ended.
            JobConflictError: the attempt is taken by a different job under the same deploymentId.
            LaunchError: from the launcher.
        """
        job = request.job
        key = (job.deployment_id, request.attempt)
        identity = job_identity(job)
        with self._lock:
            known = self._known.get(key)
            launching = self._launching.get(key)
            if known is None and launching is not None:
                if launching != identity:
                    raise JobConflictError(conflict_reason(job, _type_of(launching)))
                raise LaunchInProgressError(f"attempt {key[1]} of {key[0]} is being launched by this process")
            suspect = key in self._suspect
            if known is None:
                self._launching[key] = identity
        if known is not None:
            _check_same_job(job, known)
            return self._adopt(key, known, "already launched by this process")
        try:
            claimed_at = time.monotonic()
            claim = self._claim(key, identity)
            if claim is not None and claim.state == "conflict":
                raise JobConflictError(conflict_reason(job, _type_of(claim.bound)))
            state = None if claim is None else claim.state
            if suspect or state != "new":
                found = self._launcher.find(*key)
                if found is not None:
                    if not found.runs(job):
                        if state == "new":
                            self._release(key)  # claimed just now, and nothing is launched for it
                        raise JobConflictError(conflict_reason(job, found.job_type))
                    return self._adopt(key, found, "found by its tags")
                if self._attempt_over(key):
                    # Its task ran and its outcome was published (by an adopter, say), and its files
                    # are gone: a late copy of the attempt, never to be launched again.
                    if state == "new":
                        self._release(key)
                    raise AttemptOverError(
                        f"attempt {key[1]} of {key[0]} has ended (its outcome was published)",
                        self.last_outcome(key[0]),
                    )
                if state == "other":
                    self._wait_for_other(key)
                if state == "mine":
                    raise AttemptOverError(
                        f"attempt {key[1]} of {key[0]} was launched here and has ended",
                        self.last_outcome(key[0]),
                    )
            try:
                lease_fenced = self._registry is not None and claim is not None
                handle = self._launcher.launch(self._fenced(request, claimed_at if lease_fenced else None))
            except LaunchError:
                self._release(key)
                raise
            with self._lock:
                self._known[key] = handle
                self._suspect.discard(key)
            return handle
        finally:
            with self._lock:
                self._launching.pop(key, None)

    def _fenced(self, request: LaunchRequest, claimed_at: float | None) -> LaunchRequest:
        """``request``, to be started only while nobody else may have taken it over: checked now, and
        again by the launcher right before the task starts (:attr:`LaunchRequest.may_start`).

        A stall (SIGSTOP, a frozen VM) longer than the leases in the middle of a launch lets other
        processes take this one's slots (and start tasks in them) and adopt its half-launched task
        (and retry it): starting it after the stall would run beyond the global limit, and twice.

        Args:
            claimed_at: when (``time.monotonic()``) the attempt's claim was taken in Redis; the instance
                lease must have been held without a break since (None: no claim in Redis to lose).

        Raises:
            CapacityError: the slot's lease, or the instance lease, may have lapsed meanwhile.
        """
        slot_held, registry = self._slot_held, self._registry
        deployment_id = request.job.deployment_id

        def may_start() -> bool:
            if slot_held is not None and not slot_held(deployment_id):
                return False
            if claimed_at is None or registry is None:
                return True
            since = registry.held_since()
            return since is not None and since <= claimed_at

        if slot_held is None and claimed_at is None:
            return request
        if not may_start():
            raise CapacityError(
                f"not launching {deployment_id} attempt {request.attempt} now: its slot or claim may have "
                "lapsed (this process stalled longer than its leases); trying again later"
            )
        return msgspec.structs.replace(request, may_start=may_start)

    def _wait_for_other(self, key: tuple[str, int]) -> NoReturn:
        """Another live process holds the attempt's claim and no task of it is found: decide.

        (A late duplicate, whose attempt's done marker is set, was dropped before this.) The other
        process is still launching it, so the job waits and comes back, but
        only :data:`MAX_IN_PROGRESS_WAITS` times: a claim that never shows a task was stranded, and
        the attempt is counted as failed so that the retry policy decides (never an endless loop).
        """
        with self._lock:
            waits = self._waits.pop(key, 0) + 1
            self._waits[key] = waits
            while len(self._waits) > MAX_WAITS_REMEMBERED:
                del self._waits[next(iter(self._waits))]
        if waits > MAX_IN_PROGRESS_WAITS:
            with self._lock:
                self._waits.pop(key, None)
            raise ClaimStrandedError(
                f"attempt {key[1]} of {key[0]} is claimed by another live process, but no task of it "
                f"appeared in {MAX_IN_PROGRESS_WAITS} checks"
            )
        raise LaunchInProgressError(
            f"attempt {key[1]} of {key[0]} is claimed by another live process, launching it now"
        )

    def last_outcome(self, deployment_id: str) -> bytes | None:
        """The deployment's last recorded outcome event (encoded); None if none, or Redis is down."""
        try:
            return None if self._done is None else self._done.last_outcome(deployment_id)
        except OrchestratorError:
            return None

    def _attempt_over(self, key: tuple[str, int]) -> bool:
        """Whether the attempt's done marker is set (its outcome was published); False if Redis is down."""
        try:
            return self._done is not None and bool(self._done.done([attempt_done_key(*key)]))
        except OrchestratorError:
            return False

    def _claim(self, key: tuple[str, int], identity: str) -> LaunchClaim | None:
        """Claim the attempt for this process and bind it to the job's ``identity``; None when Redis
        cannot tell (the caller then looks for the task by its tags)."""
        if self._registry is None:
            return LaunchClaim("new")
        try:
            return self._registry.claim_launch(
                _claim_key(key), self._owner, identity, LAUNCH_CLAIM_TTL_SECONDS
            )
        except OrchestratorError as e:
            log.warning(
                "launch claim unavailable (%s); checking for the task by its tags",
                e,
                extra=job_fields(key[0], key[1], mark=WARNING),
            )
            return None

    def _release(self, key: tuple[str, int]) -> None:
        """A launch failed: give the claim up, so that the next try of the attempt may launch."""
        if self._registry is None:
            return
        try:
            self._registry.release_claim(_claim_key(key), self._owner)
        except OrchestratorError as e:
            log.warning(
                "could not release the launch claim (%s)", e, extra=job_fields(key[0], key[1], mark=WARNING)
            )

    def _adopt(self, key: tuple[str, int], handle: TaskHandle, how: str) -> TaskHandle:
        log.warning(
            "%s attempt %d: adopting task %s (%s) instead of launching it again",
            key[0],
            key[1],
            handle.task_id,
            how,
            extra=task_fields(handle, WARNING),
        )
        with self._lock:
            self._known[key] = handle
            self._suspect.discard(key)
            self._adopted.add(handle.task_id)
        return handle
