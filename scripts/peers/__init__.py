"""Peer systems for ``scripts/bench_peers.py``: the same job work done by Celery and by Dramatiq.

``common`` holds the work of one job (no Celery or Dramatiq import); ``celery_app``/``celery_worker``
and ``dramatiq_actors``/``dramatiq_worker`` wrap it for each peer. The ``*_worker`` modules are what the
peers' own command lines import; they read their settings from ``BENCH_PEERS_*`` environment variables.
"""
