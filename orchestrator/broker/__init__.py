"""The RabbitMQ edge: topology, the consumer of the execute queue, the confirming publisher.

Each of :class:`~orchestrator.broker.consumer.Consumer` and
:class:`~orchestrator.broker.publisher.ConfirmingPublisher` owns one connection on its own I/O
thread; the QueueListener and Publisher actors are thin shells around them. pika exceptions stay in
here: callers see :class:`~orchestrator.errors.BrokerError`, :class:`~orchestrator.errors.SinkError`
and ``on_connectivity`` reports.

Import from the submodules. This package imports nothing itself, so that its pure parts
(:mod:`~orchestrator.broker.headers`, :mod:`~orchestrator.broker.ledger`,
:mod:`~orchestrator.broker.topology`'s plan) load without pika for the lifecycle core's shell and
the actors' vocabulary.
"""
