"""The slot self-check: a slot held for a job this process no longer follows is given back.

Every slot is released on its job's terminal state; a slot whose release was lost (a path that
forgot it, an actor that crashed between the two) would be held for ever, the global lease renewed
with it, and the process would launch less and less while /health said 200. So the RateLimiter
audits its slots every :data:`AUDIT_SECONDS`: a holder that is neither followed (tracked, or being
launched) nor a job waiting here for :data:`AUDIT_ROUNDS` audits in a row has leaked, and its slot is
released with a warning. Several rounds, because a job takes a slot a moment before its launch
starts (the launch may wait in the launch pool's queue).
"""

from __future__ import annotations

from typing import Final

#: How often the RateLimiter audits its slots.
AUDIT_SECONDS: Final = 30.0
#: Audits in a row a holder must be unaccounted for before its slot counts as leaked.
AUDIT_ROUNDS: Final = 3


class SlotAudit:
    """Which slot holders have been unaccounted for in ``rounds`` audits in a row. Pure logic."""

    def __init__(self, rounds: int = AUDIT_ROUNDS) -> None:
        self._rounds = rounds
        self._unaccounted: dict[str, int] = {}

    def audit(self, holders: frozenset[str], accounted: frozenset[str]) -> frozenset[str]:
        """One audit: the holders to release now (unaccounted for ``rounds`` audits in a row)."""
        strays = holders - accounted
        self._unaccounted = {h: self._unaccounted.get(h, 0) + 1 for h in strays}
        leaked = frozenset(h for h, n in self._unaccounted.items() if n >= self._rounds)
        for holder in leaked:
            del self._unaccounted[holder]
        return leaked
