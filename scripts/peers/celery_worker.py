"""What ``python -m celery -A peers.celery_worker worker ...`` imports: the app, configured from the env.

The ``worker_ready`` signal, sent right after the worker's ``basic_consume`` (``celery.worker.loops``:
``consumer.consume()`` then ``on_ready()``), writes the ready file that starts the benchmark's clock.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_ready

from peers import common
from peers.celery_app import DEFAULT_PREFETCH_MULTIPLIER, make_app

app = make_app(
    os.environ.get(common.ENV_URL, common.DEFAULT_URL),
    os.environ.get(common.ENV_JOB_QUEUE, "bench_peers_celery"),
    int(os.environ.get(common.ENV_PREFETCH_MULTIPLIER, DEFAULT_PREFETCH_MULTIPLIER)),
    os.environ.get(common.ENV_QUEUE_TYPE, "classic"),
)


@worker_ready.connect(weak=False)
def _on_worker_ready(**_: Any) -> None:
    common.mark_ready()
