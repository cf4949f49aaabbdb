"""A launched task is followed to its end: outcomes, timeouts, retries through delay queues, stops."""

from __future__ import annotations

import time

import msgspec
import pytest
from support import with_overrides

from orchestrator.config import Config, TypeConfig
from orchestrator.launch.base import client_token
from orchestrator.messages import JOB_DECODER, encode

from .fakes import InstantLauncher
from .harness import (
    EventCollector,
    build_job,
    drain_queue,
    publish,
    queue_depth,
    running_pipeline,
    stop_job,
    wait_until,
)

pytestmark = pytest.mark.services


def assert_seq_increases(events: list[msgspec.Struct]) -> None:
    seqs = [e.seq for e in events]  # type: ignore[attr-defined]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


@pytest.mark.parametrize(
    "launcher, outcome, reason_part",
    [
        (InstantLauncher(exit_codes={"end-1": 0}), ("succeeded", 0), None),
        (InstantLauncher(exit_codes={"end-1": 2}), ("failed", 2), "exited with code 2"),
        (
            InstantLauncher(
                stop_reasons={"end-1": "TaskFailedToStart: CannotPullContainerError: pull access denied"}
            ),
            ("failed", None),
            "TaskFailedToStart",
        ),
        (InstantLauncher(vanish={"end-1"}), ("failed", None), "MISSING"),
    ],
    ids=["success", "non-zero-exit", "task-failed-to-start", "missing"],
)
def test_outcomes_give_the_right_events_in_order(
    pipeline_config: Config,
    launcher: InstantLauncher,
    outcome: tuple[str, int | None],
    reason_part: str | None,
) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=1)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("end-1"))
        final = events.wait_terminal("end-1")
        assert (final.status, final.exit_code) == outcome
        if reason_part is not None:
            assert final.reason is not None and reason_part in final.reason
        assert events.statuses("end-1")[0] == "dispatched"
        assert_seq_increases(events.events("end-1"))


def test_start_timeout_stops_the_task_retries_and_finally_dead_letters(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=2, limits__start_timeout_seconds=1)
    launcher = InstantLauncher(pending_seconds=3600)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("slow-start"))
        final = events.wait_terminal("slow-start", timeout=30)
        statuses = events.statuses("slow-start")
        assert_seq_increases(events.events("slow-start"))
    assert statuses == ["dispatched", "timed_out", "retrying", "dispatched", "timed_out", "failed"]
    assert final.attempt == 2 and final.reason == "not RUNNING within the start timeout"
    assert set(launcher.stopped.values()) == {"not RUNNING within the start timeout"}
    assert len(launcher.stopped) == 2, "StopTask was called for each timed-out attempt"
    [(body, headers)] = drain_queue(config, config.broker.dlq)
    assert JOB_DECODER.decode(body).deployment_id == "slow-start"
    assert headers["x-reason"] == "not RUNNING within the start timeout"


def test_max_runtime_stops_a_running_task(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=1)
    config = msgspec.structs.replace(config, types={"build": TypeConfig(max_runtime_seconds=1)})
    launcher = InstantLauncher(run_seconds=3600)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("too-long"))
        final = events.wait_terminal("too-long", timeout=30)
    assert events.statuses("too-long") == ["dispatched", "running", "timed_out", "failed"]
    assert final.reason == "ran longer than the maximum runtime"
    assert list(launcher.stopped.values()) == ["ran longer than the maximum runtime"]


def test_deploy_keeps_running_without_a_max_runtime(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_runtime_seconds=1)
    launcher = InstantLauncher(run_seconds=3600)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(
            config,
            encode({"type": "deploy", "deploymentId": "svc-1", "repository": "https://github.com/a/b"}),
        )
        wait_until(lambda: "running" in events.statuses("svc-1"), what="deploy running")
        time.sleep(2.5)  # longer than the global max runtime, which deploy must ignore
        assert events.statuses("svc-1") == ["dispatched", "running"]
    assert launcher.stopped == {}


def test_a_retry_comes_back_after_its_delay_with_the_next_attempt(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=2, limits__retry_delays=(2,))
    launcher = InstantLauncher(exit_codes={"again-1": 1})
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("again-1"))
        events.wait_terminal("again-1", timeout=30)
        retrying = next(e for e in events.events("again-1") if e.status == "retrying")
    first, second = launcher.requests
    assert second.attempt == first.attempt + 1 == 2
    waited = launcher.intervals_by_request(second)[0] - launcher.intervals_by_request(first)[0]
    assert waited >= 2.0, f"the retry came back after {waited:.2f} s, before its 2 s tier"
    assert retrying.reason is not None and "attempt 2 in 2 s" in retrying.reason
    assert client_token("again-1", 1) != client_token("again-1", 2)


def test_stop_of_a_running_task(pipeline_config: Config) -> None:
    launcher = InstantLauncher(run_seconds=3600)
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, build_job("run-1"))
        wait_until(lambda: "running" in events.statuses("run-1"), what="running")
        publish(pipeline_config, stop_job("run-1"))
        final = events.wait_terminal("run-1")
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="acks"
        )
    assert (final.status, final.type) == ("stopped", "build")
    assert list(launcher.stopped.values()) == ["stopped on request"]
    assert launcher.launches == 1, "a stopped task is not retried"


def test_stop_of_a_job_waiting_in_a_delay_queue(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=3, limits__retry_delays=(3,))
    launcher = InstantLauncher(exit_codes={"wait-1": 1})
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("wait-1"))
        wait_until(lambda: "retrying" in events.statuses("wait-1"), what="retrying")
        publish(config, stop_job("wait-1"))
        final = events.wait_terminal("wait-1")
        assert (final.status, final.attempt) == ("stopped", 1)
        time.sleep(4)  # past the delay tier: the retry comes back and must not launch
        wait_until(
            lambda: queue_depth(config, config.broker.execute_queue) == 0, what="the cancelled retry acked"
        )
        assert events.statuses("wait-1") == [
            "dispatched",
            "running",
            "retrying",
            "stopped",
        ] or events.statuses("wait-1") == ["dispatched", "retrying", "stopped"]
    assert launcher.launches == 1


def test_stop_of_an_unknown_deployment_answers_once(pipeline_config: Config) -> None:
    launcher = InstantLauncher()
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, stop_job("nobody-1"))
        answer = events.wait_terminal("nobody-1")
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
        time.sleep(0.5)
        assert len(events.events("nobody-1")) == 1
    assert (answer.type, answer.status) == ("stop", "rejected")
    assert answer.reason is not None and answer.reason.startswith("nothing to stop")
    assert queue_depth(pipeline_config, pipeline_config.broker.dlq) == 0
