"""Blacktree Build Orchestrator: turns jobs on RabbitMQ into worker tasks and status events."""

__version__ = "0.1.0"

__all__ = ["__version__"]
