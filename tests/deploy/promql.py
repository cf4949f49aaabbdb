"""What the deploy tests read from PromQL and from a /metrics exposition: metric names, label matchers.

Deliberately small: the expressions of deploy/ are ours, so a regular expression per construct is
enough (promtool checks their syntax). ``job`` and ``instance`` are added by the scrape, never by the
orchestrator, and Grafana's ``$variables`` are filled in by Grafana: neither is checked here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
ALERTS: Final = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST: Final = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD: Final = DEPLOY / "grafana" / "orchestrator-dashboard.json"

#: Labels Prometheus adds when it scrapes a target.
SCRAPE_LABELS: Final = frozenset({"job", "instance"})

_METRIC = re.compile(r"\b(orchestrator_[a-z_]+)\b")
_SELECTOR = re.compile(r"\b(orchestrator_[a-z_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_ALTERNATION = re.compile(r"[A-Za-z0-9_.+-]+(\|[A-Za-z0-9_.+-]+)*")


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector: ``metric{label op "value"}``."""

    metric: str
    label: str
    op: str
    value: str

    def literal_values(self) -> list[str] | None:
        """The label values this matcher names (``a|b`` for a regex), or None when it names none
        literally (a Grafana variable, a real regular expression)."""
        if "$" in self.value:
            return None
        if self.op in ("=", "!="):
            return [self.value]
        if _ALTERNATION.fullmatch(self.value):
            return self.value.split("|")
        return None


def metric_names(text: str) -> set[str]:
    """Every ``orchestrator_*`` name in ``text`` (PromQL or prose)."""
    return set(_METRIC.findall(text))


def matchers(expr: str) -> list[Matcher]:
    """The label matchers of every ``orchestrator_*{...}`` selector in ``expr``."""
    found = []
    for metric, body in _SELECTOR.findall(expr):
        found += [Matcher(metric, label, op, value) for label, op, value in _MATCHER.findall(body)]
    return found


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules of deploy/prometheus/alerts.yml, every group's."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every query target of the dashboard's panels (rows' nested panels too)."""
    targets: list[dict[str, Any]] = []
    for panel in _panels(dashboard["panels"]):
        targets += panel.get("targets", [])
    return targets


def _panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows included, nested ones too."""
    return list(_panels(dashboard["panels"]))


@dataclass
class Exposition:
    """A /metrics text, read: each sample name with the values of each of its labels."""

    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    #: Base names of histograms (``x`` of ``x_bucket``): what prose may name.
    histograms: set[str] = field(default_factory=set)

    @classmethod
    def parse(cls, text: str) -> Exposition:
        exposition = cls()
        for family in text_string_to_metric_families(text):
            if family.type == "histogram":
                exposition.histograms.add(family.name)
            for sample in family.samples:
                values = exposition.labels.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    values.setdefault(label, set()).add(value)
        return exposition

    def has_series(self, name: str) -> bool:
        """Whether ``name`` is a sample name of the exposition (``x_bucket``, ``y_total``, ``z``)."""
        return name in self.labels

    def names(self, name: str) -> bool:
        """Whether prose naming ``name`` names a metric: a sample name, or a histogram's base name."""
        return name in self.labels or name in self.histograms

    def problems(self, expr: str) -> list[str]:
        """What in ``expr`` the exposition does not have: unknown series, unknown label values."""
        problems = [
            f"{name}: no such series" for name in sorted(metric_names(expr)) if not self.has_series(name)
        ]
        for matcher in matchers(expr):
            if matcher.label in SCRAPE_LABELS or not self.has_series(matcher.metric):
                continue
            known = self.labels[matcher.metric].get(matcher.label)
            if known is None:
                problems.append(f"{matcher.metric}: no label {matcher.label!r}")
                continue
            for value in matcher.literal_values() or ():
                if value not in known:
                    problems.append(
                        f"{matcher.metric}{{{matcher.label}{matcher.op}{matcher.value!r}}}: "
                        f"{value!r} is not one of {sorted(known)}"
                    )
        return problems
