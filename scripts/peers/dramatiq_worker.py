"""What ``dramatiq peers.dramatiq_worker:broker -p 2 -t 4`` imports: the broker and actor, from the env."""

from __future__ import annotations

import os

import dramatiq

from peers import common
from peers.dramatiq_actors import ReadyMarker, make_broker

broker, run_job = make_broker(
    os.environ.get(common.ENV_URL, common.DEFAULT_URL),
    os.environ.get(common.ENV_JOB_QUEUE, "bench_peers_dramatiq"),
    os.environ.get(common.ENV_QUEUE_TYPE, "classic"),
)
broker.add_middleware(ReadyMarker())
dramatiq.set_broker(broker)
