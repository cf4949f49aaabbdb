"""A launched task is followed to its end: outcomes, timeouts, retries through delay queues, stops."""

from __future__ import annotations

import time
from collections.abc import Sequence

import msgspec
import pytest
import redis
from prometheus_client import REGISTRY
from support import holds_throughout, wait_until, with_overrides

from orchestrator.broker.headers import ATTEMPT_HEADER, ATTEMPT_SIGNATURE_HEADER, SCHEDULED_AT_HEADER
from orchestrator.broker.names import retry_queue_name
from orchestrator.config import Config, TypeConfig
from orchestrator.coordination import PendingRetries, StopMarkers
from orchestrator.errors import CapacityError
from orchestrator.launch.base import LaunchRequest, TaskHandle, client_token
from orchestrator.messages import JOB_DECODER, StatusEvent, encode
from orchestrator.retry import CANCELLED_REASON, attempt_signer

from .fakes import InstantLauncher
from .harness import (
    EventCollector,
    build_job,
    drain_queue,
    publish,
    queue_depth,
    running_pipeline,
    stop_job,
)

pytestmark = pytest.mark.services


def assert_seq_increases(events: Sequence[StatusEvent]) -> None:
    seqs = [e.seq for e in events]
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


def finished_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("orchestrator_jobs_finished_total", {"outcome": outcome}) or 0.0


def test_start_timeout_stops_the_task_retries_and_finally_dead_letters(pipeline_config: Config) -> None:
    config = with_overrides(pipeline_config, limits__max_attempts=2, limits__start_timeout_seconds=1)
    launcher = InstantLauncher(pending_seconds=3600)
    timed_out_before = finished_count("timed_out")
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("slow-start"))
        final = events.wait_terminal("slow-start", timeout=30)
        statuses = events.statuses("slow-start")
        assert_seq_increases(events.events("slow-start"))
        wait_until(
            lambda: finished_count("timed_out") == timed_out_before + 1,
            what="jobs_finished_total{outcome=timed_out} counted once the failed event is confirmed",
        )
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
        # longer than the global max runtime, which deploy must ignore
        assert holds_throughout(lambda: events.statuses("svc-1") == ["dispatched", "running"], 2.5)
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
        # the retry comes back past its delay tier and must not launch
        wait_until(
            lambda: (
                queue_depth(config, retry_queue_name(config.broker, 3)) == 0
                and queue_depth(config, config.broker.execute_queue) == 0
            ),
            what="the cancelled retry back and acked",
        )
        assert events.statuses("wait-1") == [
            "dispatched",
            "running",
            "retrying",
            "stopped",
        ] or events.statuses("wait-1") == ["dispatched", "retrying", "stopped"]
    assert launcher.launches == 1


def test_stop_answers_for_the_waiting_retry_before_the_failed_task_is_forgotten(
    pipeline_config: Config,
) -> None:
    # Given a job whose attempt 1 failed and whose retry waits 8 s, caught in the moment after the
    # retry was published and before the failed task's done markers were written (its task is still
    # listed by the launcher: InstantLauncher never forgets one)
    config = with_overrides(pipeline_config, limits__max_attempts=3, limits__retry_delays=(8,))
    launcher = InstantLauncher(exit_codes={"window-1": 1})
    client = redis.Redis.from_url(config.redis.url)
    done_keys = f"{config.redis.key_prefix}:done:*"
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("window-1"))
        wait_until(lambda: "retrying" in events.statuses("window-1"), what="retrying")
        # (the task's and the attempt's done markers, and the deployment's last outcome)
        wait_until(lambda: len(list(client.scan_iter(done_keys))) == 3, what="the done markers")
        client.delete(*client.scan_iter(done_keys))

        # When a stop comes
        publish(config, stop_job("window-1"))

        # Then it answers for the waiting retry at once, not when the retry comes back 8 s later
        final = events.wait_terminal("window-1", timeout=4)
        assert (final.status, final.attempt, final.reason) == ("stopped", 1, CANCELLED_REASON)
        # and the retry, once back, is dropped without a second answer or a launch
        wait_until(
            lambda: (
                queue_depth(config, config.broker.execute_queue) == 0
                and queue_depth(config, retry_queue_name(config.broker, 8)) == 0
            ),
            timeout=15,
            what="the cancelled retry acked",
        )
        # (and no second answer comes after it)
        assert holds_throughout(
            lambda: [e.status for e in events.events("window-1") if e.terminal] == ["stopped"], 0.3
        )
        assert [e.type for e in events.events("window-1") if e.type == "stop"] == []
    client.close()
    assert launcher.launches == 1


def test_a_retry_that_comes_back_to_a_stop_nobody_answered_for_ends_stopped(
    pipeline_config: Config,
) -> None:
    # Given a retry the orchestrator scheduled, recorded as waiting, and a stop marker set after it
    # was scheduled but no stop sweep that took the record (the stop met the task as it ended, and
    # its owner had already decided the retry)
    launcher = InstantLauncher()
    shared_client = redis.Redis.from_url(pipeline_config.redis.url)
    prefix = pipeline_config.redis.key_prefix
    PendingRetries(shared_client, prefix).waiting("late-1", "build", 1, 60)
    scheduled_ms = int(time.time() * 1000) - 1_000
    StopMarkers(shared_client, prefix).mark("late-1", 60)
    signature = attempt_signer(pipeline_config).sign("late-1", "build", 2, scheduled_ms)
    headers = {ATTEMPT_HEADER: 2, SCHEDULED_AT_HEADER: scheduled_ms, ATTEMPT_SIGNATURE_HEADER: signature}
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        # When the retry comes back
        publish(pipeline_config, build_job("late-1"), headers=headers)

        # Then the job ends stopped (its one terminal event), and the retry is neither run nor kept
        final = events.wait_terminal("late-1")
        assert (final.status, final.type, final.attempt, final.reason) == (
            "stopped",
            "build",
            1,
            CANCELLED_REASON,
        )
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
        assert holds_throughout(lambda: events.statuses("late-1") == ["stopped"], 0.3), "one answer only"
    assert PendingRetries(shared_client, prefix).take("late-1") is None, "the record is taken"
    shared_client.close()
    assert launcher.launches == 0


class NoCapacityLauncher(InstantLauncher):
    """Every launch fails for lack of capacity (a retryable launch error that counts as an attempt)."""

    def launch(self, request: LaunchRequest) -> TaskHandle:
        with self._lock:
            self.requests.append(request)
        raise CapacityError("RESOURCE:MEMORY (no capacity)")


def test_stop_of_a_job_whose_retry_waits_after_a_launch_error(pipeline_config: Config) -> None:
    # Given a job whose launch failed for lack of capacity, its retry waiting 8 s
    config = with_overrides(pipeline_config, limits__max_attempts=3, limits__retry_delays=(8,))
    launcher = NoCapacityLauncher()
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("nocap-1"))
        wait_until(lambda: "retrying" in events.statuses("nocap-1"), what="retrying")

        # When a stop comes
        publish(config, stop_job("nocap-1"))

        # Then the job ends stopped at once (not "nothing to stop"), and its retry never launches
        final = events.wait_terminal("nocap-1", timeout=4)
        assert (final.type, final.status, final.attempt) == ("build", "stopped", 1)
        wait_until(
            lambda: (
                queue_depth(config, config.broker.execute_queue) == 0
                and queue_depth(config, retry_queue_name(config.broker, 8)) == 0
            ),
            timeout=15,
            what="the cancelled retry acked",
        )
        assert holds_throughout(
            lambda: [e.status for e in events.events("nocap-1") if e.terminal] == ["stopped"], 0.3
        ), "one answer only"
    assert len(launcher.requests) == 1


def test_stop_of_an_unknown_deployment_answers_once(pipeline_config: Config) -> None:
    launcher = InstantLauncher()
    with running_pipeline(pipeline_config, launcher), EventCollector(pipeline_config) as events:
        publish(pipeline_config, stop_job("nobody-1"))
        answer = events.wait_terminal("nobody-1")
        wait_until(
            lambda: queue_depth(pipeline_config, pipeline_config.broker.execute_queue) == 0, what="ack"
        )
        assert holds_throughout(lambda: len(events.events("nobody-1")) == 1, 0.5), "answered once"
    assert (answer.type, answer.status) == ("stop", "rejected")
    assert answer.reason is not None and answer.reason.startswith("nothing to stop")
    assert queue_depth(pipeline_config, pipeline_config.broker.dlq) == 0


def test_a_stop_overtakes_jobs_that_fill_the_prefetch_window_waiting_for_slots(
    pipeline_config: Config,
) -> None:
    # Given one slot, taken by a long task, and twice the prefetch window of jobs waiting behind it
    config = with_overrides(pipeline_config, limits__max_concurrent=1, broker__prefetch=10)
    launcher = InstantLauncher(run_seconds=3600)
    with running_pipeline(config, launcher), EventCollector(config) as events:
        publish(config, build_job("busy-1"))
        wait_until(lambda: "running" in events.statuses("busy-1"), what="busy-1 running")
        for n in range(20):
            publish(config, build_job(f"behind-{n}"))
        wait_until(lambda: "queued" in events.statuses("behind-19"), what="the last job waiting")

        # When a stop for the running task comes after them
        publish(config, stop_job("busy-1"))

        # Then it is delivered and carried out although every job before it waits for the slot
        assert events.wait_terminal("busy-1", timeout=20).status == "stopped"
    assert launcher.stopped.get(next(iter(launcher.stopped))) == "stopped on request"
