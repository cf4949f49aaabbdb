"""The test helpers' own promises that scenarios lean on."""

from __future__ import annotations

import socket

from support import _ephemeral_port_range, free_port


def test_free_port_is_outside_the_ephemeral_range_so_a_restarted_service_gets_it_back() -> None:
    low, high = _ephemeral_port_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    for port in ports:
        assert not low <= port <= high, f"{port} is in the ephemeral range {low}-{high}"
        with socket.socket() as listener:  # nothing holds it: a service can listen on it
            listener.bind(("127.0.0.1", port))
            listener.listen()
