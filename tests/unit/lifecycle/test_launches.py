"""After a launch call returned a task: who follows it, and whether `dispatched` is said."""

from __future__ import annotations

import pytest

from orchestrator.lifecycle import Drop, ReleaseSlot
from orchestrator.lifecycle.launches import Dispatched, Follow, Follower, after_launch


def test_a_task_followed_here_is_tracked_and_announced_and_keeps_its_slot() -> None:
    assert after_launch("here") == (Follow(), Dispatched())


def test_a_task_its_live_owner_follows_is_announced_and_our_slot_given_back() -> None:
    assert after_launch("owner") == (Dispatched(), ReleaseSlot())


@pytest.mark.parametrize(("follower", "adopted"), [("nobody", False), ("here", True)])
def test_an_ended_attempt_or_one_adopted_meanwhile_is_dropped_silently(
    follower: Follower, adopted: bool
) -> None:
    decisions = after_launch(follower, adopted_meanwhile=adopted)
    assert [type(d) for d in decisions] == [Drop, ReleaseSlot]
    assert not any(isinstance(d, Dispatched) for d in decisions), "no late dispatched after another's outcome"


@pytest.mark.parametrize("follower", ["here", "owner", "nobody"])
def test_every_launch_releases_the_slot_or_follows_the_task_never_both_nor_neither(
    follower: Follower,
) -> None:
    for adopted in (False, True):
        decisions = after_launch(follower, adopted_meanwhile=adopted)
        follows = any(isinstance(d, Follow) for d in decisions)
        releases = sum(isinstance(d, ReleaseSlot) for d in decisions)
        assert follows != (releases == 1) and releases <= 1
