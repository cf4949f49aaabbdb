"""/health and /metrics: the HealthBoard's rules (plain logic), then the live server over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pykka
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import wait_until

from orchestrator import __version__
from orchestrator.config import HttpConfig, SupervisionConfig
from orchestrator.errors import OrchestratorError
from orchestrator.http import HttpServer
from orchestrator.runtime import ActorStatus, HealthBoard, Supervisor

from .helpers import get_health, http_get
from .sample_actors import Block, Crash, Journal, Record, RecorderActor

STUCK_AFTER = 0.5
FAST = SupervisionConfig(restart_backoff_seconds=0.05, ping_interval_seconds=0.05)


def running(name: str, heartbeat_at: float = 100.0, restarts: int = 0) -> ActorStatus:
    return ActorStatus(
        name=name, state="running", restarts=restarts, heartbeat_at=heartbeat_at, last_error=None
    )


def board_with(*actors: ActorStatus) -> HealthBoard:
    board = HealthBoard(stuck_after_seconds=30)
    board.watch_actors(lambda: actors)
    return board


# --- the board's rules ---------------------------------------------------------------------------------


def test_healthy_when_every_actor_runs_with_a_fresh_heartbeat() -> None:
    board = board_with(running("listener", heartbeat_at=99.5), running("publisher", restarts=2))
    board.set_dependency("broker", True, "connected")

    healthy, body = board.report(now=100.25)

    assert healthy
    assert body == {
        "status": "ok",
        "actors": {
            "listener": {
                "state": "running",
                "restarts": 0,
                "heartbeat_age_seconds": 0.75,
                "last_error": None,
            },
            "publisher": {
                "state": "running",
                "restarts": 2,
                "heartbeat_age_seconds": 0.25,
                "last_error": None,
            },
        },
        "dependencies": {"broker": {"ok": True, "detail": "connected", "required": True}},
        "version": __version__,
        "reasons": [],
    }


@pytest.mark.parametrize("state", ["starting", "restarting", "failed", "stopped"])
def test_an_actor_that_is_not_running_makes_it_unavailable(state: Any) -> None:
    board = board_with(
        running("a"), ActorStatus(name="b", state=state, restarts=1, heartbeat_at=None, last_error="x")
    )
    healthy, body = board.report(now=100.0)
    assert not healthy
    assert body["status"] == "unavailable"
    assert body["reasons"] == [f"actor b is {state}"]
    assert body["actors"]["b"]["heartbeat_age_seconds"] is None


def test_a_stale_heartbeat_means_stuck() -> None:
    board = board_with(running("a", heartbeat_at=100.0))
    assert board.report(now=130.0)[0]  # exactly the threshold is still fine
    healthy, body = board.report(now=130.5)
    assert not healthy
    assert body["reasons"] == ["actor a has not answered for 30.5 s (stuck?)"]


def test_a_required_dependency_down_makes_it_unavailable_an_optional_one_does_not() -> None:
    board = board_with(running("a"))
    board.set_dependency("status.redis", False, "connection refused", required=False)
    assert board.report(now=100.0)[0]
    board.set_dependency("broker", False, "connection refused")
    healthy, body = board.report(now=100.0)
    assert not healthy
    assert body["reasons"] == ["broker is down: connection refused"]
    board.set_dependency("broker", True)
    assert board.report(now=100.0)[0]


def test_draining_answers_unavailable_with_status_draining() -> None:
    board = board_with(running("a"))
    board.set_draining(True)
    healthy, body = board.report(now=100.0)
    assert not healthy
    assert body["status"] == "draining"
    assert body["reasons"][0].startswith("the process is draining")


# --- the live server ---------------------------------------------------------------------------------


class Live:
    """A supervisor with two actors and the HTTP server on an ephemeral port."""

    def __init__(self) -> None:
        self.board = HealthBoard(stuck_after_seconds=STUCK_AFTER)
        self.supervisor = Supervisor(FAST, self.board, on_give_up=lambda name, exc: None)
        self.journals = {"recorder": Journal(), "bystander": Journal()}
        self.handles = {
            name: self.supervisor.add(name, partial(RecorderActor.start, journal=journal))
            for name, journal in self.journals.items()
        }
        self.server = HttpServer(HttpConfig(host="127.0.0.1", port=0), self.board)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def health(self) -> tuple[int, dict[str, Any]]:
        return get_health(self.server.port)

    def restarts_metric(self, actor: str) -> float:
        status, body, headers = http_get(self.url("/metrics"))
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "orchestrator_actor_restarts_total" and sample.labels == {"actor": actor}:
                    return sample.value
        raise AssertionError(f"no orchestrator_actor_restarts_total for {actor}")


@pytest.fixture
def live() -> Iterator[Live]:
    live = Live()
    try:
        live.supervisor.start_all(timeout=5)
        live.server.start()
        yield live
    finally:
        live.server.stop()
        live.supervisor.stop_all(timeout=5)
        pykka.ActorRegistry.stop_all(timeout=5)


def test_health_answers_200_with_json_and_head_without_a_body(live: Live) -> None:
    wait_until(lambda: live.health()[0] == 200, what="a healthy /health")
    status, body, headers = http_get(live.url("/health"))
    assert headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["status"] == "ok"
    assert set(document["actors"]) == {"recorder", "bystander"}
    assert document["actors"]["recorder"]["heartbeat_age_seconds"] < STUCK_AFTER

    status, body, headers = http_get(live.url("/health"), method="HEAD")
    assert (status, body) == (200, b"")
    assert http_get(live.url("/nowhere"))[0] == 404


def test_a_restart_shows_in_health_and_metrics_while_the_other_actor_keeps_working(live: Live) -> None:
    # Given
    before = live.restarts_metric("recorder")
    gate = threading.Event()

    # When the recorder crashes (held at the gate first, so there is a "meanwhile")
    live.handles["recorder"].tell(Crash(gate))
    for value in range(20):
        live.handles["bystander"].tell(Record(value))
    gate.set()
    for value in range(20, 40):
        live.handles["bystander"].tell(Record(value))

    # Then
    def restarted() -> dict[str, Any] | None:
        status, body = live.health()
        recorder = body["actors"]["recorder"]
        return (
            body if status == 200 and recorder["restarts"] == 1 and recorder["state"] == "running" else None
        )

    body = wait_until(restarted, what="/health to show one restart and be healthy again")
    assert body["actors"]["recorder"]["last_error"] == "RuntimeError: instance 1 crashed on purpose"
    assert body["actors"]["bystander"]["restarts"] == 0
    assert live.restarts_metric("recorder") == before + 1
    wait_until(
        lambda: live.journals["bystander"].values() == list(range(40)), what="the bystander's 40 values"
    )
    assert {instance for instance, _ in live.journals["bystander"].entries} == {1}


def test_a_stuck_actor_turns_health_503_and_health_still_answers_fast(live: Live) -> None:
    release = threading.Event()
    try:
        live.handles["recorder"].tell(Block(release))

        def unhealthy() -> dict[str, Any] | None:
            status, body = live.health()
            return body if status == 503 else None

        body = wait_until(unhealthy, what="/health 503")
        assert body["status"] == "unavailable"
        assert any(r.startswith("actor recorder has not answered for") for r in body["reasons"])
        assert body["actors"]["recorder"]["state"] == "running"

        started = time.perf_counter()
        for _ in range(20):
            assert live.health()[0] == 503
        assert (time.perf_counter() - started) / 20 < 0.1  # the stuck actor is never asked
    finally:
        release.set()
    wait_until(lambda: live.health()[0] == 200, what="/health 200 once the actor is free again")


def test_a_dependency_down_or_draining_turns_health_503(live: Live) -> None:
    wait_until(lambda: live.health()[0] == 200, what="a healthy /health")
    live.board.set_dependency("broker", False, "connection refused")
    status, body = live.health()
    assert (status, body["dependencies"]["broker"]["ok"]) == (503, False)
    live.board.set_dependency("broker", True, "connected")
    live.board.set_draining(True)
    status, body = live.health()
    assert (status, body["status"]) == (503, "draining")


def test_the_port_in_use_is_reported_as_an_orchestrator_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(HttpConfig(host="127.0.0.1", port=port), HealthBoard(stuck_after_seconds=30))
        with pytest.raises(OrchestratorError, match=f"cannot serve /health on 127.0.0.1:{port}"):
            server.start()
        server.stop()


def test_stop_ends_the_server_thread_and_frees_the_port() -> None:
    server = HttpServer(HttpConfig(host="127.0.0.1", port=0), HealthBoard(stuck_after_seconds=30))
    server.start()
    port = server.port
    assert http_get(f"http://127.0.0.1:{port}/health")[0] == 200
    server.stop()
    assert not [t for t in threading.enumerate() if t.name == "http"]
    with socket.socket() as again:
        # SO_REUSEADDR tolerates the closed connection's TIME_WAIT, never a socket still listening.
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()
