"""The RabbitMQ edge: topology, the consumer of the execute queue, the confirming publisher.

Each of :class:`Consumer` and :class:`ConfirmingPublisher` owns one connection on its own I/O thread;
the QueueListener and Publisher actors are thin shells around them. pika exceptions stay in here:
callers see :class:`~orchestrator.errors.BrokerError`, :class:`~orchestrator.errors.SinkError` and
``on_connectivity`` reports.
"""

from orchestrator.broker.connection import Backoff
from orchestrator.broker.consumer import ATTEMPT_HEADER, Consumer, Delivery, DeliveryLedger
from orchestrator.broker.publisher import ConfirmingPublisher, ConfirmLedger
from orchestrator.broker.topology import (
    Topology,
    declare_topology,
    plan_topology,
    retry_queue_name,
    status_topology,
)

__all__ = [
    "ATTEMPT_HEADER",
    "Backoff",
    "ConfirmLedger",
    "ConfirmingPublisher",
    "Consumer",
    "Delivery",
    "DeliveryLedger",
    "Topology",
    "declare_topology",
    "plan_topology",
    "retry_queue_name",
    "status_topology",
]
