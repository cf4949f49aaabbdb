"""Several broker nodes: ``broker.url`` split into addresses, and the order a connection tries them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.broker.nodes import BrokerNode, NodeCycle, connected_detail
from orchestrator.config import config_as_dict, load_config
from orchestrator.errors import ConfigError
from orchestrator.retry import attempt_signer

N1 = "amqp://builder:pw1@rabbit-1.internal:5672/%2F"
N2 = "amqps://builder:pw2@rabbit-2.internal:5671/%2F?heartbeat=10"
N3 = "amqp://other:pw3@10.0.0.3/%2F"


def urls(value: str) -> tuple[str, ...]:
    return load_config(environ={"ORCH_BROKER_URL": value}).broker.urls


def test_one_url_is_one_node() -> None:
    assert urls(N1) == (N1,)
    assert load_config(environ={}).broker.urls == ("amqp://guest:guest@localhost:5672/%2F",)


def test_commas_separate_the_nodes_in_order_with_spaces_allowed() -> None:
    assert urls(f"{N1},{N2}, {N3}") == (N1, N2, N3)
    assert urls(f" {N3} ,\n {N1}") == (N3, N1)


def test_a_comma_inside_a_password_or_a_query_stays_in_its_url() -> None:
    with_comma = "amqp://builder:p,w@rabbit-1:5672/%2F?client_properties={'a':1,'b':2}"
    assert urls(f"{with_comma},{N2}") == (with_comma, N2)


def test_each_node_is_checked_and_named_by_its_position() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"ORCH_BROKER_URL": f"{N1},,redis://:pw9@cache:6379/0"})
    assert info.value.problems == [
        "broker.url (address 2 of 3): is empty (separate the nodes' URLs with single commas)",
        "broker.url (address 3 of 3): must be a amqp:// or amqps:// URL (got 'redis://:***@cache:6379/0')",
    ]


def test_every_nodes_password_is_redacted_when_the_config_is_printed() -> None:
    config = load_config(environ={"ORCH_BROKER_URL": f"{N1},{N2}"})
    printed = json.dumps(config_as_dict(config))
    assert "pw1" not in printed
    assert "pw2" not in printed
    assert config_as_dict(config)["broker"]["url"] == (
        "amqp://builder:***@rabbit-1.internal:5672/%2F,amqps://builder:***@rabbit-2.internal:5671/%2F?heartbeat=10"
    )


def test_processes_listing_the_nodes_in_another_order_sign_retries_alike() -> None:
    # Given two processes of one cluster, each listing the nodes in its own order, and one with one URL
    one = load_config(environ={"ORCH_BROKER_URL": f"{N1},{N2},{N3}"})
    other = load_config(environ={"ORCH_BROKER_URL": f"{N2},{N3},{N1}"})
    single = load_config(environ={"ORCH_BROKER_URL": N1})
    # When one signs a retry, Then the other believes it; the key of a single URL is what it always was
    signature = attempt_signer(one).sign("dep-1", "build", 2, 1_700_000_000_000)
    assert attempt_signer(other).sign("dep-1", "build", 2, 1_700_000_000_000) == signature
    assert attempt_signer(single).sign("dep-1", "build", 2, 1_700_000_000_000) != signature


def test_a_node_is_shown_by_host_and_port_only() -> None:
    node = BrokerNode.of(N2)
    assert node.endpoint == "rabbit-2.internal:5671"
    assert connected_detail(node) == "connected to rabbit-2.internal:5671"
    assert BrokerNode.of(N3).endpoint == "10.0.0.3:5672"


def test_a_node_that_cannot_be_reached_is_followed_by_the_next_at_once_until_a_full_round() -> None:
    cycle = NodeCycle([N1, N2, N3])
    assert cycle.current.url == N1
    assert cycle.failed() is False
    assert cycle.current.url == N2
    assert cycle.failed() is False
    assert cycle.current.url == N3
    assert cycle.failed() is True  # every node failed in a row: back off before the next round
    assert cycle.current.url == N1
    assert cycle.failed() is False  # a new round


def test_a_lost_connection_starts_again_from_the_next_node() -> None:
    cycle = NodeCycle([N1, N2, N3])
    cycle.connected()
    cycle.lost()
    assert cycle.current.url == N2
    # and the node that was lost is tried last in that round
    assert cycle.failed() is False
    assert cycle.current.url == N3
    assert cycle.failed() is False
    assert cycle.current.url == N1
    assert cycle.failed() is True


def test_a_connection_in_the_middle_of_a_round_starts_the_count_again() -> None:
    cycle = NodeCycle([N1, N2, N3])
    cycle.failed()
    cycle.failed()
    cycle.connected()  # N3 worked
    assert cycle.failed() is False
    assert cycle.failed() is False
    assert cycle.failed() is True


def test_a_single_node_backs_off_after_every_failure_as_before() -> None:
    cycle = NodeCycle([N1])
    assert cycle.failed() is True
    assert cycle.failed() is True
    cycle.lost()
    assert cycle.current.url == N1


def test_no_node_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one URL"):
        NodeCycle([])


@given(st.lists(st.booleans(), max_size=60), st.integers(min_value=1, max_value=5))
def test_every_node_is_tried_once_between_two_backoffs(outcomes: list[bool], size: int) -> None:
    # ``True``: the connection worked and was lost later; ``False``: the node could not be reached
    cycle = NodeCycle([f"amqp://h{i}:5672/%2F" for i in range(size)])
    tried_since_backoff: list[str] = []
    for worked in outcomes:
        tried_since_backoff.append(cycle.current.url)
        if worked:
            cycle.connected()
            cycle.lost()
            tried_since_backoff = []
        elif cycle.failed():
            assert sorted(tried_since_backoff) == sorted(n.url for n in cycle.nodes)
            tried_since_backoff = []
        assert len(tried_since_backoff) < size


def test_connecting_again_on_another_node_is_a_failover_and_on_the_same_one_is_not() -> None:
    cycle = NodeCycle([N1, N2])
    assert cycle.connected() is False  # the first connection
    cycle.lost()
    assert cycle.connected() is True  # now on N2
    cycle.lost()
    cycle.failed()  # N1 down: back to N2
    assert cycle.connected() is False
