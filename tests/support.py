"""What every test module may import: service addresses and names unique to this test run.

``tests/`` is on ``sys.path`` when pytest runs (it holds the root conftest.py and is not a package),
so ``from support import unique`` works from any test folder.
"""

from __future__ import annotations

import itertools
import os
import uuid

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

RUN_ID = uuid.uuid4().hex[:8]
_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test, and no other run, uses: ``t.<run>.<n>.<prefix>``."""
    return f"t.{RUN_ID}.{next(_counter)}.{prefix}"
