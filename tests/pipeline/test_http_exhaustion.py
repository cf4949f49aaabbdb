"""A real ``orchestrator run`` process with few file descriptors: half-sent HTTP requests, more of them
than it has descriptors, neither silence /health nor make a launch fail with EMFILE."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_until, with_overrides

from orchestrator.config import Config

from .harness import EventCollector, build_job, publish
from .processes import BIN, OrchestratorProcess

pytestmark = pytest.mark.services

#: The process's soft and hard open-file limit: fewer descriptors than the attacker opens connections.
OPEN_FILES = 256
HOLDERS = 300
MAX_CONNECTIONS = 64
#: Descriptors the process may gain while attacked, beyond MAX_CONNECTIONS (a displaced connection on
#: its way out, a launch's log file and pipe, a reconnect in passing).
SLACK = 16


class FewDescriptorsProcess(OrchestratorProcess):
    """``orchestrator run`` whose RLIMIT_NOFILE is :data:`OPEN_FILES`, soft and hard, so raising the soft
    limit gains nothing and the bound on HTTP connections alone must protect the launch path."""

    def start(self) -> FewDescriptorsProcess:
        # The limit is set by the child itself before it becomes the orchestrator (no preexec_fn: this
        # test process runs threads).
        limit_then_run = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({OPEN_FILES}, {OPEN_FILES})); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", limit_then_run, str(BIN / "orchestrator"), "run"],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def descriptors(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


@pytest.fixture
def orchestrator(pipeline_config: Config, tmp_path: Path) -> Iterator[tuple[Config, FewDescriptorsProcess]]:
    config = with_overrides(
        pipeline_config,
        local__command=f"{sys.executable} -c pass",
        local__state_dir=str(tmp_path / "state"),
        http__max_connections=MAX_CONNECTIONS,
        http__read_timeout_seconds=60.0,  # the half-sent requests stay for the whole test
    )
    process = FewDescriptorsProcess(config, tmp_path / "orchestrator.log").start()
    try:
        process.wait_healthy()
        yield config, process
    finally:
        process.stop()


def closed_by_server(client: socket.socket) -> bool:
    if not select.select([client], [], [], 0)[0]:
        return False
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True


def test_a_job_launches_while_half_sent_requests_hold_the_http_port(
    orchestrator: tuple[Config, FewDescriptorsProcess],
) -> None:
    # Given an orchestrator with 256 descriptors, and 300 connections that each sent half a request
    config, process = orchestrator
    before = process.descriptors
    holders = [socket.create_connection(("127.0.0.1", process.port), timeout=5) for _ in range(HOLDERS)]
    try:
        for holder in holders:
            holder.sendall(b"GET /health HTTP/1.1\r\nHost: attacker\r\n")
        wait_until(
            lambda: sum(closed_by_server(h) for h in holders) == HOLDERS - MAX_CONNECTIONS,
            timeout=10,
            what="the server to keep only the newest connections",
        )
        assert process.descriptors - before <= MAX_CONNECTIONS + SLACK

        # When a job arrives meanwhile
        with EventCollector(config) as events:
            publish(config, build_job("held-port-1"))
            final = events.wait_terminal("held-port-1", timeout=60)

        # Then it is launched and succeeds, and /health answers a fresh client
        assert final.status == "succeeded", process.log()
        assert events.statuses("held-port-1")[0] == "dispatched"
        assert process.healthy()
        assert process.descriptors - before <= MAX_CONNECTIONS + SLACK
        assert "Too many open files" not in process.log()
    finally:
        for holder in holders:
            holder.close()
