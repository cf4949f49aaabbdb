"""The ECS launchers' textual settings, parsed into RunTask parameters.

Each setting is a comma-separated list in the INI file, so an entry contains no comma:

``ecs.capacity_provider``
    ``NAME[:WEIGHT[:BASE]]`` entries, e.g. ``FARGATE:1:1,FARGATE_SPOT:3``. The Fargate launcher uses
    the ``FARGATE``/``FARGATE_SPOT`` entries, the EC2 launcher every other entry (Auto Scaling group
    providers); a launcher with no entry of its own uses ``launchType`` instead. RunTask never gets both.
``ecs.placement_constraints`` (EC2 only)
    ``distinctInstance`` or ``memberOf:EXPRESSION`` in ECS's cluster query language, e.g.
    ``memberOf:attribute:ecs.instance-type =~ c5.*``. Several entries must all hold; an expression that
    needs a list is written with ``=~`` instead of ``in [a, b]``.
``ecs.placement_strategy`` (EC2 only)
    ``random``, ``spread:FIELD`` or ``binpack:cpu|memory``, e.g.
    ``spread:attribute:ecs.availability-zone,binpack:memory``, applied in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

#: The capacity providers of Fargate; every other provider is an EC2 Auto Scaling group's.
FARGATE_PROVIDERS: Final = frozenset({"FARGATE", "FARGATE_SPOT"})

PLACEMENT_STRATEGY_TYPES: Final = ("random", "spread", "binpack")
MAX_PLACEMENT_CONSTRAINTS: Final = 10
MAX_PLACEMENT_STRATEGIES: Final = 5


def parse_capacity_providers(entries: Iterable[str], problems: list[str]) -> list[dict[str, Any]]:
    """``NAME[:WEIGHT[:BASE]]`` entries -> RunTask ``capacityProviderStrategy`` items."""
    strategy: list[dict[str, Any]] = []
    for entry in entries:
        name, *numbers = (part.strip() for part in entry.split(":"))
        if not name or len(numbers) > 2 or not all(n.isdigit() for n in numbers):
            problems.append(
                f"ecs.capacity_provider: {entry!r} is not NAME[:WEIGHT[:BASE]] (e.g. FARGATE_SPOT:3)"
            )
            continue
        item: dict[str, Any] = {"capacityProvider": name, "weight": int(numbers[0]) if numbers else 1}
        if len(numbers) == 2:
            item["base"] = int(numbers[1])
        strategy.append(item)
    return strategy


def parse_placement_constraints(entries: Iterable[str], problems: list[str]) -> list[dict[str, str]]:
    """``distinctInstance`` / ``memberOf:EXPRESSION`` entries -> RunTask ``placementConstraints``."""
    constraints: list[dict[str, str]] = []
    for entry in entries:
        kind, _, expression = entry.partition(":")
        kind, expression = kind.strip(), expression.strip()
        if kind == "distinctInstance" and not expression:
            constraints.append({"type": "distinctInstance"})
        elif kind == "memberOf" and expression:
            constraints.append({"type": "memberOf", "expression": expression})
        else:
            problems.append(
                f"ecs.placement_constraints: {entry!r} is not distinctInstance or memberOf:EXPRESSION"
            )
    if len(constraints) > MAX_PLACEMENT_CONSTRAINTS:
        problems.append(
            f"ecs.placement_constraints: at most {MAX_PLACEMENT_CONSTRAINTS} (got {len(constraints)})"
        )
    return constraints


def parse_placement_strategy(entries: Iterable[str], problems: list[str]) -> list[dict[str, str]]:
    """``random`` / ``spread:FIELD`` / ``binpack:FIELD`` entries -> RunTask ``placementStrategy``."""
    strategy: list[dict[str, str]] = []
    for entry in entries:
        kind, _, field = entry.partition(":")
        kind, field = kind.strip(), field.strip()
        if kind == "random" and not field:
            strategy.append({"type": "random"})
        elif kind in ("spread", "binpack") and field:
            strategy.append({"type": kind, "field": field})
        else:
            problems.append(f"ecs.placement_strategy: {entry!r} is not random, spread:FIELD or binpack:FIELD")
    if len(strategy) > MAX_PLACEMENT_STRATEGIES:
        problems.append(f"ecs.placement_strategy: at most {MAX_PLACEMENT_STRATEGIES} (got {len(strategy)})")
    return strategy
