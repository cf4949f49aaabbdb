"""A rolling upgrade: processes that keep claims under ``adopt:`` only, next to ones that use ``claim:``.

The "old" process here runs the scripts of the version before the rename (copied verbatim below) on
the legacy key, as such a process would; the new one is :class:`InstanceRegistry`. In both orders,
and racing, the two never both win one task, and each sees the other's launch bindings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import pytest

from orchestrator.coordination import DoneMarkers, InstanceRegistry, LaunchClaim, RedisClient, reply_text

from .hammering import run_threads

pytestmark = pytest.mark.services

KEY = "launch:dep-1:1"
DEPLOY = "deploy:0123456789abcdef0123456789abcdef"
BUILD = "build:fedcba9876543210fedcba9876543210"
TTL_MS = 60_000

# --- the scripts of the version before ``claim:`` (verbatim), which know the ``adopt:`` key only ------

OLD_CLAIM_ORPHAN: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if holder == ARGV[1] then return 2 end
return 1
"""

OLD_CLAIM_LAUNCH: Final = """
local value = redis.call('GET', KEYS[1])
local holder, bound = value, ''
if value then
  local space = string.find(value, ' ', 1, true)
  if space then
    holder = string.sub(value, 1, space - 1)
    bound = string.sub(value, space + 1)
  end
  if bound ~= '' and bound ~= ARGV[4] then return {3, bound} end
  if holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then return {0, bound} end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[4], 'PX', ARGV[2])
if value and holder == ARGV[1] then return {2, bound} end
return {1, bound}
"""

OLD_RELEASE_CLAIM: Final = """
local value = redis.call('GET', KEYS[1])
if value and (value == ARGV[1] or string.sub(value, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class OldProcess:
    """The claims of a process of the version before the rename: ``{prefix}:adopt:<task_key>`` only.

    Its liveness lease is an :class:`InstanceRegistry`'s (leases did not change).
    """

    def __init__(self, client: RedisClient, prefix: str, name: str) -> None:
        self.name = name
        self.lease = InstanceRegistry(client, prefix, name, 30)
        self._prefix = prefix
        self._lease_prefix = f"{prefix}:instance:"
        self._claim: Any = client.register_script(OLD_CLAIM_ORPHAN)
        self._claim_launch: Any = client.register_script(OLD_CLAIM_LAUNCH)
        self._release: Any = client.register_script(OLD_RELEASE_CLAIM)

    def claim_orphan(self, task_key: str) -> bool:
        answer = self._claim(keys=[self._key(task_key)], args=[self.name, TTL_MS, self._lease_prefix])
        return int(answer) != 0

    def claim_launch(self, task_key: str, identity: str) -> LaunchClaim:
        answer, bound = self._claim_launch(
            keys=[self._key(task_key)], args=[self.name, TTL_MS, self._lease_prefix, identity]
        )
        states: tuple[Any, ...] = ("other", "new", "mine", "conflict")
        return LaunchClaim(states[int(answer)], reply_text(bound))

    def release_claim(self, task_key: str) -> None:
        self._release(keys=[self._key(task_key)], args=[self.name])

    def _key(self, task_key: str) -> str:
        return f"{self._prefix}:adopt:{task_key}"


@pytest.fixture
def old(client: RedisClient, prefix: str) -> Iterator[OldProcess]:
    """A live process of the version before the rename."""
    process = OldProcess(client, prefix, "old")
    process.lease.start()
    yield process
    process.lease.stop()


@pytest.fixture
def new(client: RedisClient, prefix: str) -> Iterator[InstanceRegistry]:
    """A live process of this version."""
    registry = InstanceRegistry(client, prefix, "new", 30)
    registry.start()
    yield registry
    registry.stop()


# --- adoption claims -------------------------------------------------------------------------------


def test_an_old_processs_claim_keeps_a_new_one_out(old: OldProcess, new: InstanceRegistry) -> None:
    assert old.claim_orphan("task-1")

    assert not new.claim_orphan("task-1", "new")
    assert new.claims.owners(["task-1"]) == ["old"]


def test_a_new_processs_claim_keeps_an_old_one_out(
    old: OldProcess, new: InstanceRegistry, client: RedisClient, prefix: str
) -> None:
    assert new.claim_orphan("task-1", "new")

    assert not old.claim_orphan("task-1")
    assert client.get(f"{prefix}:claim:task-1") == client.get(f"{prefix}:adopt:task-1") == b"new"


def test_a_dead_old_holders_claim_is_taken_over_under_both_keys(
    client: RedisClient, prefix: str, new: InstanceRegistry
) -> None:
    # Given a claim an old process made, and that process dead (it never held a lease)
    dead = OldProcess(client, prefix, "dead")
    assert dead.claim_orphan("task-1")

    # Then a new process takes it over, and an old one still sees who holds it
    assert new.claim("task-1", "new") == "new"
    assert not OldProcess(client, prefix, "other-old").claim_orphan("task-1")
    assert client.get(f"{prefix}:claim:task-1") == client.get(f"{prefix}:adopt:task-1") == b"new"


def test_a_takeover_by_an_old_process_is_seen_by_the_new_one(
    client: RedisClient, prefix: str, old: OldProcess
) -> None:
    # Given a new process's claim whose holder died, taken over by an old process (legacy key only)
    gone = InstanceRegistry(client, prefix, "gone", 30)
    assert gone.claim_orphan("task-1", "gone")
    assert old.claim_orphan("task-1")
    assert client.get(f"{prefix}:claim:task-1") == b"gone"

    # Then a new process reads the live holder from the legacy key, and does not take it
    new = InstanceRegistry(client, prefix, "new", 30)
    assert new.claim("task-1", "new") == "other"
    assert new.claims.owners(["task-1"]) == ["gone"], "the claim key's value is preferred"
    assert new.handled_elsewhere(["task-1"], DoneMarkers(client, prefix), ["d:1"]) == {"task-1"}


def test_the_owners_fall_back_to_the_legacy_key(old: OldProcess, new: InstanceRegistry) -> None:
    assert old.claim_orphan("by-old")
    assert new.claim_orphan("by-new", "new")

    assert new.claims.owners(["by-old", "by-new", "nobody's"]) == ["old", "new", None]
    assert new.claims.owners([]) == []


def test_a_task_adopted_by_an_old_process_is_fenced_off(
    client: RedisClient, prefix: str, old: OldProcess, new: InstanceRegistry
) -> None:
    assert old.claim_orphan("t-adopted")
    assert new.claim_orphan("t-mine", "new")

    taken = new.handled_elsewhere(["t-adopted", "t-mine"], DoneMarkers(client, prefix), ["d:1", "d:2"])

    assert taken == {"t-adopted"}


# --- launch claims ---------------------------------------------------------------------------------


def test_an_old_launch_claim_binds_the_new_process(old: OldProcess, new: InstanceRegistry) -> None:
    assert old.claim_launch(KEY, DEPLOY) == LaunchClaim("new")

    assert new.claim_launch(KEY, "new", BUILD) == LaunchClaim("conflict", DEPLOY)
    assert new.claim_launch(KEY, "new", DEPLOY) == LaunchClaim("other", DEPLOY)
    assert new.claims.owners([KEY]) == [f"old {DEPLOY}"]


def test_a_new_launch_claim_binds_the_old_process(
    old: OldProcess, new: InstanceRegistry, client: RedisClient, prefix: str
) -> None:
    assert new.claim_launch(KEY, "new", DEPLOY) == LaunchClaim("new")

    assert old.claim_launch(KEY, BUILD) == LaunchClaim("conflict", DEPLOY)
    assert old.claim_launch(KEY, DEPLOY) == LaunchClaim("other", DEPLOY)
    assert client.pttl(f"{prefix}:adopt:{KEY}") > 0


def test_a_new_release_frees_both_keys(old: OldProcess, new: InstanceRegistry) -> None:
    new.claim_launch(KEY, "new", DEPLOY)

    old.release_claim(KEY)  # not the old process's: nothing happens
    assert old.claim_launch(KEY, DEPLOY).state == "other"
    new.release_claim(KEY, "new")

    # The launch failed and was released: the key is free for any job, in either version
    assert old.claim_launch(KEY, BUILD) == LaunchClaim("new")


def test_an_old_release_frees_the_claim_for_a_new_process(old: OldProcess, new: InstanceRegistry) -> None:
    old.claim_launch(KEY, DEPLOY)

    new.release_claim(KEY, "new")  # not the new process's: nothing happens
    assert new.claim_launch(KEY, "new", DEPLOY).state == "other"
    old.release_claim(KEY)

    assert new.claim_launch(KEY, "new", BUILD) == LaunchClaim("new")


# --- racing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("launch", [False, True], ids=["adoption", "launch"])
def test_old_and_new_processes_racing_never_both_win(client: RedisClient, prefix: str, launch: bool) -> None:
    # Given four old and four new live processes, and 50 tasks nobody holds
    olds = [OldProcess(client, prefix, f"old-{n}") for n in range(4)]
    news = [InstanceRegistry(client, prefix, f"new-{n}", 30) for n in range(4)]
    for registry in [*news, *(o.lease for o in olds)]:
        registry.start()
    tasks = [f"launch:dep-{n}:1" for n in range(50)]
    wins: dict[str, list[str]] = {task: [] for task in tasks}
    lock = threading.Lock()
    start = threading.Barrier(len(olds) + len(news), timeout=10)

    def claim_old(process: OldProcess) -> None:
        start.wait()
        for task in tasks:
            won = process.claim_launch(task, DEPLOY).state == "new" if launch else process.claim_orphan(task)
            if won:
                with lock:
                    wins[task].append(process.name)

    def claim_new(registry: InstanceRegistry) -> None:
        start.wait()
        me = registry.instance_id
        for task in tasks:
            if launch:
                won = registry.claim_launch(task, me, DEPLOY).state == "new"
            else:
                won = registry.claim_orphan(task, me)
            if won:
                with lock:
                    wins[task].append(me)

    # When all of them claim every task at once
    try:
        targets: list[Callable[[], None]] = [partial(claim_old, o) for o in olds]
        run_threads(targets + [partial(claim_new, r) for r in news])
    finally:
        for registry in [*news, *(o.lease for o in olds)]:
            registry.stop()

    # Then each task has exactly one winner, whichever version it runs
    assert all(len(winners) == 1 for winners in wins.values()), wins
