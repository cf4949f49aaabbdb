"""The figures of the cluster scenario, computed from made-up samples and event times (no services)."""

from __future__ import annotations

from .figures import Kill, back_on_live_nodes, throughput_recovery, unavailable_seconds, unhealthy_outside
from .health_watch import HealthSample

KILL = Kill(
    node="n1",
    endpoint="h:1",
    at=100.0,
    wall=1000.0,
    connections={"a": ("broker",)},
    execute_leader_was_here=True,
)


def sample(at: float, code: int, broker: str | None, reasons: tuple[str, ...] = ()) -> HealthSample:
    return HealthSample(at, "a", code, {"broker": broker, "status.amqp": "h:2"}, reasons)


def test_back_on_live_nodes_is_the_first_200_with_nothing_on_the_killed_node() -> None:
    samples = [
        sample(99.9, 200, "h:1"),
        sample(100.1, 200, "h:1"),  # not noticed yet
        sample(100.2, 503, None, ("broker is down: h:1: refused",)),
        sample(100.3, 503, None),
        sample(100.4, 200, "h:2"),
    ]
    assert back_on_live_nodes(samples, KILL) == sample(100.4, 200, "h:2").at - KILL.at
    assert abs(unavailable_seconds(samples, KILL, 10) - 0.2) < 1e-9
    assert back_on_live_nodes(samples[:4], KILL) is None


def test_a_503_outside_every_kills_window_is_reported_draining_aside() -> None:
    samples = [
        sample(50.0, 503, None, ("broker is down",)),
        sample(105.0, 503, None),
        sample(200.0, 503, None, ("the process is draining (shutting down)",)),
    ]
    assert unhealthy_outside(samples, [KILL], window=10) == ["process a at 50.0: broker is down"]


def test_throughput_recovery_is_the_end_of_the_first_good_window_after_the_dip() -> None:
    # 10 jobs/s, none from 1 s to 4 s after the kill, then 10/s again until 1020
    ends = [990 + n / 10 for n in range(100)] + [1000 + n / 10 for n in range(10)]
    ends += [1004 + n / 10 for n in range(160)]
    rate = throughput_recovery(ends, 1000.0, until=1020.0, horizon=30)
    assert rate.before == 10
    assert rate.lowest == 0
    assert rate.lowest_at == 1.0
    assert rate.recovered_after is not None
    assert 4.0 <= rate.recovered_after <= 7.0
    steady = throughput_recovery([990 + n / 10 for n in range(300)], 1000.0, until=1020.0, horizon=30)
    assert steady.recovered_after == 0.0
