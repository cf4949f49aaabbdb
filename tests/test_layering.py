"""What each layer may import: the vocabulary the actors share carries no broker client with it.

Each check imports modules in a fresh interpreter (this test process has long imported everything)
and asserts which libraries that pulled in.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_after(*modules: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing ``modules``."""
    code = "; ".join(
        [
            "import sys",
            *(f"import {module}" for module in modules),
            "print('\\n'.join(sorted({name.partition('.')[0] for name in sys.modules})))",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "module",
    [
        "orchestrator.delivery",
        "orchestrator.commands",
        "orchestrator.lifecycle",
        "orchestrator.broker.headers",
        "orchestrator.broker.ledger",
        "orchestrator.retry",
    ],
)
def test_the_actors_vocabulary_and_the_lifecycle_import_no_pika(module: str) -> None:
    loaded = imported_after(module)
    assert "orchestrator" in loaded  # the import itself worked
    assert "pika" not in loaded


def test_the_lifecycle_core_imports_no_thread_broker_redis_aws_or_actor_library() -> None:
    loaded = imported_after("orchestrator.lifecycle", "orchestrator.lifecycle.table") - imported_after()
    assert "orchestrator" in loaded
    assert {"pika", "redis", "boto3", "botocore", "pykka", "threading"}.isdisjoint(loaded), loaded


def test_the_broker_package_still_offers_the_delivery_and_its_ledger() -> None:
    from orchestrator.broker.consumer import Delivery as FromConsumer
    from orchestrator.broker.consumer import DeliveryLedger as LedgerFromConsumer
    from orchestrator.broker.ledger import DeliveryLedger
    from orchestrator.delivery import Delivery

    assert FromConsumer is Delivery
    assert DeliveryLedger is LedgerFromConsumer


def test_the_launch_base_loads_no_back_end() -> None:
    # What the worker and the local task wrapper import: the registry, not base, imports the back-ends.
    loaded = imported_after("orchestrator.launch.base", "orchestrator.launch.local_task")
    assert "orchestrator" in loaded
    assert {"boto3", "botocore", "pika"}.isdisjoint(loaded)


def test_every_launcher_name_is_in_the_registry() -> None:
    from typing import get_args

    from orchestrator.launch.base import LauncherName
    from orchestrator.launch.registry import LAUNCHERS

    assert set(LAUNCHERS) == set(get_args(LauncherName))
