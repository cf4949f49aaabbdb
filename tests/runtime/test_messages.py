"""Every actor names its messages: one outside its union is a bug that fails loudly."""

from __future__ import annotations

import logging
import os
from typing import Never, get_args

import pytest

from actors.dispatcher import DispatcherActor, DispatcherMessage
from actors.instance_lease import InstanceLeaseActor
from actors.publisher import PublisherActor
from actors.queue_listener import ListenerMessage, QueueListenerActor
from actors.rate_limiter import RateLimiterActor, RateLimiterMessage
from actors.timeout_monitor import MonitorMessage, TimeoutMonitorActor
from actors.validator import ValidatorActor
from orchestrator.commands import Incoming, Publish
from orchestrator.runtime.actor import (
    STRICT_MESSAGES_ENV,
    Drain,
    StandaloneReporter,
    SupervisedActor,
    UnknownMessageError,
)


class Known:
    pass


class Stranger:
    pass


class OneMessageActor(SupervisedActor[Known]):
    accepts = (Known,)

    def receive(self, message: Known) -> str:
        return "handled"


def test_each_actor_accepts_exactly_the_members_of_its_union() -> None:
    assert set(DispatcherActor.accepts) == set(get_args(DispatcherMessage))
    assert set(QueueListenerActor.accepts) == set(get_args(ListenerMessage))
    assert set(RateLimiterActor.accepts) == set(get_args(RateLimiterMessage))
    assert set(TimeoutMonitorActor.accepts) == set(get_args(MonitorMessage))
    assert PublisherActor.accepts == (Publish,)
    assert ValidatorActor.accepts == (Incoming,)
    assert InstanceLeaseActor.accepts == ()
    assert Never not in get_args(MonitorMessage)


def test_a_message_outside_the_union_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_MESSAGES_ENV, "1")
    ref = OneMessageActor.start(StandaloneReporter())
    try:
        assert ref.ask(Known()) == "handled"
        with pytest.raises(
            UnknownMessageError, match="OneMessageActor got a message outside its union: Stranger"
        ):
            ref.ask(Stranger())
        assert ref.ask(Drain(deadline=0.0)) is None, "a Drain the actor has nothing to do for is accepted"
    finally:
        ref.stop()


def test_a_message_outside_the_union_is_an_error_in_production(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(STRICT_MESSAGES_ENV, "0")
    caplog.set_level(logging.ERROR, logger="orchestrator.runtime.actor")
    ref = OneMessageActor.start(StandaloneReporter())
    try:
        assert ref.ask(Stranger()) is None
        assert ref.ask(Known()) == "handled", "the actor keeps working"
    finally:
        ref.stop()
    assert "got a message outside its union: Stranger" in caplog.text


def test_the_test_suite_runs_strict() -> None:
    # (set by tests/conftest.py, inherited by every orchestrator process the tests start)
    assert os.environ.get(STRICT_MESSAGES_ENV) == "1"
