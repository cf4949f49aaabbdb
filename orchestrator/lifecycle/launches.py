"""What follows a successful launch call: who follows the task, and whether ``dispatched`` is said.

The launch guard answers who follows the task it returned (a redelivered job may find its attempt's
task already launched): this process (``here``), the live process that launched it (``owner``), or
nobody, because the attempt is over (``nobody``). A process that lagged behind its lease while
launching may also find that another process adopted the task meanwhile.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from orchestrator.lifecycle.model import Drop, ReleaseSlot

#: Who follows a launched task (see :meth:`~orchestrator.launch.guard.GuardedLauncher.who_follows`).
Follower = Literal["here", "owner", "nobody"]


class Follow(msgspec.Struct, frozen=True):
    """Track the task here (the TimeoutMonitor follows it to its end; the slot stays held)."""


class Dispatched(msgspec.Struct, frozen=True):
    """Publish the attempt's ``dispatched`` event, then ack the delivery."""


LaunchDecision = Follow | Dispatched | Drop | ReleaseSlot


def after_launch(follower: Follower, *, adopted_meanwhile: bool = False) -> tuple[LaunchDecision, ...]:
    """The decisions after a launch call returned a task.

    Args:
        follower: who follows the task.
        adopted_meanwhile: (``here`` only) another process adopted the task while this one lagged
            behind its lease: it may have published the outcome already, so a late ``dispatched``
            must not follow those events.
    """
    if follower == "here" and adopted_meanwhile:
        return (Drop(reason="adopted by another process while this one lagged"), ReleaseSlot())
    if follower == "here":
        return (Follow(), Dispatched())
    if follower == "owner":
        # The live process that launched it follows it (and holds its slot); ours is not needed.
        return (Dispatched(), ReleaseSlot())
    return (Drop(reason="the attempt already ended"), ReleaseSlot())
