"""The ECS launchers' boto3 client: botocore's standard retries, bounded timeouts, enough connections.

One client per launcher, from a session of its own (boto3's default session is not safe to share
between threads), with an HTTP connection for every launch thread, every DescribeTasks thread and a
few more (:data:`SPARE_CONNECTIONS`), so that no call waits for a connection.
"""

from __future__ import annotations

from typing import Any, Final

import boto3
from botocore.config import Config as BotoConfig

from orchestrator.config import EcsConfig

CONNECT_TIMEOUT_SECONDS: Final = 5.0
READ_TIMEOUT_SECONDS: Final = 30.0
#: Spare HTTP connections beyond the launch threads (the poller, stops, reconciliation).
SPARE_CONNECTIONS: Final = 4


def make_ecs_client(ecs: EcsConfig, describe_threads: int) -> Any:
    """An ECS client for ``ecs.region`` and ``ecs.endpoint_url``.

    Args:
        ecs: the ``ecs`` section (region, endpoint, ``max_inflight_launches``).
        describe_threads: how many DescribeTasks calls the launcher sends at once.
    """
    boto_config = BotoConfig(
        retries={"mode": "standard"},
        max_pool_connections=ecs.max_inflight_launches + describe_threads + SPARE_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
    )
    session = boto3.session.Session()
    return session.client(
        "ecs", region_name=ecs.region, endpoint_url=ecs.endpoint_url or None, config=boto_config
    )
