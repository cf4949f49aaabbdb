"""What the actors share is stopped once, after every actor has stopped."""

from __future__ import annotations

import logging
import threading

import pykka
import pytest
from support import isolated_config, wait_until, with_overrides

from orchestrator.config import SupervisionConfig
from orchestrator.runtime import HealthBoard, Supervisor

from .sample_actors import Journal, RecorderActor


def test_shutdown_callbacks_run_once_after_every_actor_stopped_even_if_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(
        SupervisionConfig(), HealthBoard(stuck_after_seconds=5), on_give_up=lambda *_: None
    )
    journal = Journal()
    supervisor.add("recorder", lambda reporter: RecorderActor.start(reporter, journal))
    supervisor.start_all()
    seen: list[tuple[str, int]] = []

    def failing() -> None:
        raise RuntimeError("cannot close")

    supervisor.on_stopped(lambda: seen.append(("first", len(pykka.ActorRegistry.get_all()))))
    supervisor.on_stopped(failing)
    supervisor.on_stopped(lambda: seen.append(("last", len(pykka.ActorRegistry.get_all()))))
    caplog.set_level(logging.ERROR, logger="orchestrator.runtime.supervisor")

    supervisor.stop_all(timeout=5)
    supervisor.stop_all(timeout=5)

    assert seen == [("first", 0), ("last", 0)], "once each, in order, with no actor left running"
    assert "a shutdown callback failed" in caplog.text


@pytest.mark.services
def test_a_stopped_pipeline_stops_renewing_its_global_slot_leases() -> None:
    from pipeline.fakes import InstantLauncher
    from pipeline.harness import running_pipeline

    config = with_overrides(isolated_config("shutdown"), limits__global_max_concurrent=4)

    def renewers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("slot-leases-")]

    before = set(renewers())
    with running_pipeline(config, InstantLauncher()):
        wait_until(lambda: len(set(renewers()) - before) == 1, what="the pipeline's slot lease renewer")
    wait_until(lambda: not (set(renewers()) - before), what="the renewer stopped with the pipeline")
