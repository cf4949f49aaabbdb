"""A private three-node RabbitMQ cluster on free ports, for tests that kill nodes.

Never the shared broker (5672): every node has its own name (``bt-<id>-n<i>@localhost``), AMQP and
distribution ports, data, log and config files under the test's temporary directory, an empty plugin
list (no management listener) and one ``HOME`` shared by the three nodes, where the cluster's own
Erlang cookie is written before they start (so ``rabbitmqctl``, run with that ``HOME``, presents it).
The nodes register with the host's ``epmd``, which other nodes share: it is never stopped.

Each node runs in the foreground as a child of the test (``rabbitmq-server`` from RabbitMQ's own
scripts directory, see :func:`faults.services.rabbit_scripts`), in a session of its own. Killing a
node is a SIGKILL of its Erlang VM (``beam.smp``, found through the node's pid file), as a crashed
host would do: no goodbye to its peers or clients. :meth:`PrivateCluster.close` kills every node.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import pika
from faults.services import ServiceUnavailableError, rabbit_scripts
from support import WaitTimeoutError, free_port, wait_until

#: Longest the three nodes may take to start and form the cluster before the test is skipped.
CLUSTER_START_SECONDS: Final = 90.0
#: Longest a killed node may take to start again and rejoin.
NODE_RESTART_SECONDS: Final = 60.0
CTL_SECONDS: Final = 60.0
#: RabbitMQ's at-least-once dead-letter worker resends a message whose confirm it did not get after
#: this long (its default is 180 s): a retry whose expiry overlaps a leader election waits that long.
#: The private cluster shortens it, so that such a retry costs the test seconds, not minutes.
DEAD_LETTER_CONFIRM_TIMEOUT_MS: Final = 5000


class ClusterNode:
    """One node of a :class:`PrivateCluster`.

    Args:
        base: the node's own directory.
        home: the ``HOME`` every node of the cluster shares (its Erlang cookie).
        name: the Erlang node name, ``<short>@localhost``.
        scripts: RabbitMQ's scripts directory.
    """

    def __init__(self, base: Path, home: Path, name: str, scripts: Path) -> None:
        self.base = base
        self.name = name
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self._scripts = scripts
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        setting = f"{{dead_letter_worker_publisher_confirm_timeout, {DEAD_LETTER_CONFIRM_TIMEOUT_MS}}}"
        (base / "advanced.config").write_text(f"[{{rabbit, [{setting}]}}].\n")
        self.pid_file = base / "node.pid"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.log_path = base / "server.out"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``, as the orchestrator names the node in /health and its logs."""
        return f"127.0.0.1:{self.port}"

    def ctl(self, *args: str, timeout: float = CTL_SECONDS) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n <this node> args...`` with the cluster's cookie."""
        return subprocess.run(
            [str(self._scripts / "rabbitmqctl"), "-q", "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        """Start the node's VM in the foreground (as our child, in a session of its own)."""
        self.pid_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self._scripts / "rabbitmq-server")],
                env=self.env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def await_startup(self, timeout: float) -> None:
        """Wait until the node runs RabbitMQ (``rabbitmqctl await_startup``).

        Raises:
            ServiceUnavailableError: it did not within ``timeout``, or its VM exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if not self.running():
                raise ServiceUnavailableError(f"RabbitMQ node {self.name} exited:\n{self.tail()}")
            if left <= 0:
                raise ServiceUnavailableError(
                    f"RabbitMQ node {self.name} did not start within {timeout:.0f} s:\n{self.tail()}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                waited = self.ctl("await_startup", "--timeout", str(max(1, int(left))), timeout=left + 5)
                if waited.returncode == 0:
                    return

    def accepts(self) -> bool:
        """Whether an AMQP client can connect to this node now."""
        try:
            params = pika.URLParameters(self.url)
            params.connection_attempts = 1
            params.socket_timeout = 2
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def vm_pid(self) -> int | None:
        """The pid of the node's Erlang VM (``beam.smp``), from its pid file or the process tree."""
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        if self.process is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            for child in children:
                if "beam" in Path(f"/proc/{child}/comm").read_text():
                    return int(child)
        return None

    def kill(self) -> None:
        """SIGKILL the node's VM (as a crashed host would end it), then reap what we started."""
        process = self.process
        if process is None:
            return
        pid = self.vm_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The foreground script and the VM's helpers go with it; our session holds only them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class PrivateCluster:
    """Three RabbitMQ nodes clustered together, on free ports, under ``base``.

    Args:
        base: an empty directory for the nodes' data, logs, config and the shared ``HOME``.
        size: how many nodes.

    Raises:
        ServiceUnavailableError: RabbitMQ's scripts are not installed.
    """

    def __init__(self, base: Path, size: int = 3) -> None:
        scripts = rabbit_scripts()
        if scripts is None:
            raise ServiceUnavailableError(
                "RabbitMQ's rabbitmq-server and rabbitmqctl scripts are not installed"
            )
        home = base / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        prefix = f"bt-{uuid.uuid4().hex[:8]}"
        self.nodes = [
            ClusterNode(base / f"n{i}", home, f"{prefix}-n{i}@localhost", scripts) for i in range(1, size + 1)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node_at(self, endpoint: str) -> ClusterNode:
        """The node listening at ``endpoint`` (``127.0.0.1:<port>``)."""
        for node in self.nodes:
            if node.endpoint == endpoint:
                return node
        raise KeyError(f"no node of the cluster listens at {endpoint}")

    def start(self, timeout: float = CLUSTER_START_SECONDS) -> float:
        """Start every node and join the others to the first; returns the seconds it took.

        Raises:
            ServiceUnavailableError: the cluster was not formed within ``timeout`` (every node is
                killed again).
        """
        began = time.monotonic()
        deadline = began + timeout
        try:
            for node in self.nodes:
                node.start()
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                for future in [pool.submit(n.await_startup, timeout) for n in self.nodes]:
                    future.result()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                for step in (("stop_app",), ("join_cluster", first.name), ("start_app",)):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ServiceUnavailableError(f"the cluster was not formed within {timeout:.0f} s")
                    result = node.ctl(*step, timeout=left)
                    if result.returncode != 0:
                        raise ServiceUnavailableError(
                            f"rabbitmqctl -n {node.name} {' '.join(step)} failed: "
                            f"{(result.stderr or result.stdout).strip()[-800:]}"
                        )
            self.wait_accepting(self.nodes, max(1.0, deadline - time.monotonic()))
        except (ServiceUnavailableError, subprocess.TimeoutExpired, WaitTimeoutError) as e:
            self.close()
            raise ServiceUnavailableError(f"no private RabbitMQ cluster: {e}") from None
        return time.monotonic() - began

    def wait_accepting(self, nodes: Sequence[ClusterNode], timeout: float) -> None:
        wait_until(
            lambda: all(n.accepts() for n in nodes),
            timeout,
            f"nodes {', '.join(n.name for n in nodes)} to accept AMQP clients",
            interval=0.2,
        )

    def restart(self, node: ClusterNode, timeout: float = NODE_RESTART_SECONDS) -> float:
        """Start a killed node again (it rejoins the cluster from its own data); returns the seconds."""
        began = time.monotonic()
        node.start()
        node.await_startup(timeout)
        self.wait_accepting([node], max(1.0, timeout - (time.monotonic() - began)))
        return time.monotonic() - began

    def quorum_members_online(self, queue: str, node: ClusterNode) -> int:
        """How many members of quorum queue ``queue`` are online, as ``node`` sees it (0: unknown)."""
        result = node.ctl("list_queues", "name", "online", "--no-table-headers", timeout=30)
        for line in result.stdout.splitlines():
            name, _, online = line.partition("\t")
            if name == queue:
                return online.count("@")
        return 0

    def leader(self, queue: str, node: ClusterNode) -> str | None:
        """The node name of quorum queue ``queue``'s leader, as ``node`` sees it."""
        result = node.ctl("list_queues", "name", "leader", "--no-table-headers", timeout=30)
        for line in result.stdout.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return leader.strip() or None
        return None

    def close(self) -> None:
        """Kill every node (the shared epmd stays)."""
        for node in self.nodes:
            node.kill()
