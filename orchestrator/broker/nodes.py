"""The nodes of a RabbitMQ cluster, and which one a connection tries next.

``broker.url`` names one node or several (:attr:`~orchestrator.config.BrokerConfig.urls`). Every
connection of the process (the consumer, each publisher, ``submit``) walks them with a
:class:`NodeCycle` of its own, free of threads and I/O:

- It starts at the first node, and tries the nodes in the order given.
- A node that cannot be reached (refused, DNS, TLS, timeout, the topology refused) is followed by the
  next one at once; only when every node has failed in a row does the caller wait for its backoff
  (:class:`~orchestrator.backoff.Backoff`) before the next round. So one node down costs one failed
  connection attempt, not a backoff delay.
- After a working connection is lost the next attempt starts from the *next* node, not the same one:
  a node that has just dropped its clients is the likeliest to be down, and the other clients of a
  crashed node spread along the list instead of waiting for it to come back.

Each URL keeps its own credentials, virtual host, TLS (``amqps://``) and pika options; only its
``host:port`` (:attr:`BrokerNode.endpoint`) is ever logged or shown in /health.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from orchestrator.connect_errors import endpoint

__all__ = ["BrokerNode", "NodeCycle", "connected_detail"]


class BrokerNode(msgspec.Struct, frozen=True):
    """One node: its URL (secret: never logged) and its ``host:port`` (what logs and /health show)."""

    url: str
    endpoint: str

    @classmethod
    def of(cls, url: str) -> BrokerNode:
        return cls(url=url, endpoint=endpoint(url))


class NodeCycle:
    """Which node of ``urls`` a connection tries now, and whether to back off before the next.

    Args:
        urls: the nodes' URLs, in the order to try them (at least one).

    Raises:
        ValueError: ``urls`` is empty.
    """

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("a broker needs at least one URL")
        self._nodes = tuple(BrokerNode.of(url) for url in urls)
        self._index = 0
        #: Nodes that failed in a row since the last connection or the last full round.
        self._failed_in_row = 0
        self._last_connected: BrokerNode | None = None

    @property
    def nodes(self) -> tuple[BrokerNode, ...]:
        return self._nodes

    @property
    def current(self) -> BrokerNode:
        """The node to try now (or the one connected to)."""
        return self._nodes[self._index]

    def connected(self) -> bool:
        """The current node works: a later failure starts a new round.

        Returns:
            True when this is a failover: the connection was on another node before.
        """
        self._failed_in_row = 0
        moved = self._last_connected is not None and self._last_connected != self.current
        self._last_connected = self.current
        return moved

    def failed(self) -> bool:
        """The current node could not be reached: move on to the next one.

        Returns:
            True when every node has now failed in a row (a full round): wait for the backoff before
            trying again. False: try the next node at once.
        """
        self._index = (self._index + 1) % len(self._nodes)
        self._failed_in_row += 1
        if self._failed_in_row >= len(self._nodes):
            self._failed_in_row = 0
            return True
        return False

    def lost(self) -> None:
        """A working connection to the current node was lost: start again from the next node."""
        self._index = (self._index + 1) % len(self._nodes)
        self._failed_in_row = 0


def connected_detail(node: BrokerNode) -> str:
    """What a connection's ``on_connectivity(True, ...)`` says, and /health shows: the node it is on."""
    return f"connected to {node.endpoint}"
