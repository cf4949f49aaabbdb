"""Series whose label values are known in advance exist at 0 from start-up.

Otherwise the first rejection of a class (or the first dropped event, the first StopTask) creates its
series, ``rate()`` and ``increase()`` miss that first step, and an alert on "rejections > 0" never fires.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from orchestrator import metrics
from orchestrator.config import LAUNCHERS

ROOT = Path(__file__).resolve().parents[2]


def _fresh_exposition() -> str:
    """/metrics of a process that has done nothing yet (this one's counters have moved)."""
    code = "from orchestrator import metrics; print(metrics.exposition()[0].decode())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_every_closed_label_set_is_exposed_at_zero_from_start_up() -> None:
    text = _fresh_exposition()
    expected = [
        *(f'orchestrator_jobs_rejected_total{{reason_class="{c}"}} 0.0' for c in metrics.REJECTION_CLASSES),
        *(
            f'orchestrator_status_events_published_total{{outcome="{o}",sink="{s}"}} 0.0'
            for s in metrics.STATUS_SINKS
            for o in metrics.PUBLISH_OUTCOMES
        ),
        *(f'orchestrator_ecs_api_calls_total{{operation="{op}"}} 0.0' for op in metrics.ECS_OPERATIONS),
        *(
            f'orchestrator_cloudwatch_api_calls_total{{operation="{op}"}} 0.0'
            for op in metrics.CLOUDWATCH_OPERATIONS
        ),
        *(f'orchestrator_jobs_finished_total{{outcome="{o}"}} 0.0' for o in metrics.OUTCOMES),
        *(f'orchestrator_timeouts_total{{kind="{k}"}} 0.0' for k in metrics.TIMEOUT_KINDS),
        *(
            f'orchestrator_launch_errors_total{{kind="{k}",launcher="{n}"}} 0.0'
            for n in LAUNCHERS
            for k in metrics.LAUNCH_ERROR_KINDS
        ),
        *(f'orchestrator_jobs_dispatched_total{{launcher="{n}"}} 0.0' for n in LAUNCHERS),
        *(f'orchestrator_log_lines_dropped_total{{reason="{r}"}} 0.0' for r in metrics.LOG_DROP_REASONS),
        *(
            f'orchestrator_cloudwatch_api_calls_total{{operation="{op}"}} 0.0'
            for op in metrics.CLOUDWATCH_OPERATIONS
        ),
        "orchestrator_log_lines_published_total 0.0",
        "orchestrator_log_bytes_published_total 0.0",
    ]
    lines = set(text.splitlines())
    assert [line for line in expected if line not in lines] == []
    assert {"poison", "conflict", "schema", "security"} <= set(metrics.REJECTION_CLASSES)


def test_every_ecs_operation_the_launcher_calls_has_its_series() -> None:
    source = (ROOT / "orchestrator" / "launch" / "ecs.py").read_text()
    called = set(re.findall(r'self\._call\(\s*"(\w+)"', source))
    assert called, "the ECS launcher's calls were not found: this test reads them from its source"
    assert called <= set(metrics.ECS_OPERATIONS)


def test_every_cloudwatch_operation_called_has_its_series() -> None:
    called: set[str] = set()
    for path in (ROOT / "orchestrator" / "buildlogs").glob("*.py"):
        called.update(re.findall(r'logs_call\(\s*"(\w+)"', path.read_text()))
    assert called, "the CloudWatch calls were not found: this test reads them from the source"
    assert called <= set(metrics.CLOUDWATCH_OPERATIONS)


def test_every_status_sink_and_outcome_the_code_counts_has_its_series() -> None:
    counted = set()
    for path in [*(ROOT / "actors").glob("*.py"), *(ROOT / "orchestrator").rglob("*.py")]:
        for sink, outcome in re.findall(
            r'STATUS_EVENTS_PUBLISHED\.labels\(sink="(\w+)", outcome=("?\w+"?)', path.read_text()
        ):
            counted.add(sink)
            if outcome.startswith('"'):
                assert outcome.strip('"') in metrics.PUBLISH_OUTCOMES, f"{path}: {outcome}"
    assert counted == set(metrics.STATUS_SINKS)
