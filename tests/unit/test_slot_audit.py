"""The slot self-check: a holder unaccounted for in several audits in a row has leaked its slot."""

from __future__ import annotations

from orchestrator.slot_audit import SlotAudit


def test_a_holder_nobody_follows_is_released_after_the_rounds_and_not_before() -> None:
    audit = SlotAudit(rounds=3)
    held = frozenset({"leaked", "running", "launching"})
    assert audit.audit(held, frozenset({"running"})) == frozenset()
    assert audit.audit(held, frozenset({"running", "launching"})) == frozenset(), "launching is accounted"
    assert audit.audit(held, frozenset({"running"})) == frozenset({"leaked"})


def test_a_holder_accounted_for_again_starts_its_count_anew() -> None:
    audit = SlotAudit(rounds=2)
    assert audit.audit(frozenset({"d"}), frozenset()) == frozenset()
    assert audit.audit(frozenset({"d"}), frozenset({"d"})) == frozenset()
    assert audit.audit(frozenset({"d"}), frozenset()) == frozenset()
    assert audit.audit(frozenset({"d"}), frozenset()) == frozenset({"d"})
    assert audit.audit(frozenset({"d"}), frozenset()) == frozenset(), "counted anew once released"
