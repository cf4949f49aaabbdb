"""The Publisher finishes each batch exactly once, whichever thread sees its last confirm first.

Its confirms arrive on the publisher's I/O thread, possibly before the actor's own ``_publish`` has
returned: a batch whose confirms all came back that early was once finished twice (its delivery acked
twice, its ``after`` called twice, ``jobs_finished_total`` counted twice). A stand-in sink confirms
each part synchronously, inside ``publish``, which is the earliest a confirm can ever come.
"""

from __future__ import annotations

from typing import Any

from actors.publisher import PublisherActor
from orchestrator.commands import Outgoing, Publish
from orchestrator.config import load_config
from orchestrator.delivery import Delivery
from orchestrator.events import make_event
from orchestrator.runtime.actor import StandaloneReporter
from orchestrator.runtime.health import HealthBoard


class ConfirmsAtOnce:
    """A confirming publisher whose broker confirms every message before ``publish`` returns."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.sent: list[str] = []

    def publish(self, exchange: str, routing_key: str, body: bytes, *, on_confirm: Any, **_: Any) -> None:
        self.sent.append(routing_key)
        on_confirm(self.ok, "" if self.ok else "nacked by the broker")


class CountingSettler:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, delivery: Delivery) -> None:
        self.acked.append(delivery.delivery_tag)


def _publisher(settler: CountingSettler, sink: ConfirmsAtOnce, sinks: str = "amqp") -> PublisherActor:
    config = load_config(environ={"ORCH_STATUS_SINKS": sinks})
    actor = PublisherActor(StandaloneReporter(), config, HealthBoard(30.0), settler)  # type: ignore[arg-type]
    actor._amqp = sink  # type: ignore[assignment]
    return actor


def _delivery(tag: int) -> Delivery:
    return Delivery(
        generation=1, delivery_tag=tag, redelivered=False, body=b"{}", headers={}, attempt=1, received_at=0.0
    )


def test_a_batch_confirmed_before_publish_returns_is_acked_once_and_its_after_runs_once() -> None:
    settler, sink = CountingSettler(), ConfirmsAtOnce()
    actor = _publisher(settler, sink)
    afters: list[str] = []
    event = make_event("dep-1", "build", "dispatched", 1, launcher="local")
    retry = Outgoing(exchange="x", routing_key="retry.5s", body=b"{}")

    actor.receive(Publish(events=(event,), ack=_delivery(7), after=lambda: afters.append("after")))
    actor.receive(Publish(messages=(retry,), events=(event,), ack=_delivery(8), finished="succeeded"))

    assert sink.sent == ["status.queue", "retry.5s", "status.queue"]
    assert settler.acked == [7, 8]
    assert afters == ["after"]


def test_a_batch_with_nothing_to_confirm_is_finished_by_the_actor_once() -> None:
    settler, sink = CountingSettler(), ConfirmsAtOnce()
    actor = _publisher(settler, sink)
    actor.receive(Publish(ack=_delivery(9)))
    assert sink.sent == []
    assert settler.acked == [9]


def test_a_nacked_part_leaves_the_delivery_unacked() -> None:
    settler, sink = CountingSettler(), ConfirmsAtOnce(ok=False)
    actor = _publisher(settler, sink)
    actor.receive(Publish(events=(make_event("dep-2", "build", "dispatched", 1),), ack=_delivery(10)))
    assert settler.acked == []
