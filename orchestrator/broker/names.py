"""Names on the broker derived from the config (no pika: the lifecycle's shell uses them)."""

from __future__ import annotations

from orchestrator.config import BrokerConfig


def retry_queue_name(config: BrokerConfig, delay_seconds: int) -> str:
    """The delay queue of one retry tier, e.g. ``execute.retry.60s``."""
    return f"{config.retry_queue_prefix}.{delay_seconds}s"
