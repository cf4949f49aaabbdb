"""Each Dispatcher's launch pool: ECS launches bounded and paced by the ``ecs`` keys, local launches
bounded by ``local.max_inflight_launches`` and not paced."""

from __future__ import annotations

import pytest

from actors.dispatcher import UNPACED_BURST, UNPACED_RATE, pool_settings
from orchestrator.config import (
    DEFAULT_LOCAL_MAX_INFLIGHT_LAUNCHES,
    DEFAULT_MAX_INFLIGHT_LAUNCHES,
    load_config,
)
from orchestrator.errors import ConfigError


def test_local_launches_have_their_own_bound_and_no_pacing() -> None:
    config = load_config(
        environ={
            "ORCH_LOCAL_MAX_INFLIGHT_LAUNCHES": "7",
            "ORCH_ECS_MAX_INFLIGHT_LAUNCHES": "3",
            "ORCH_ECS_LAUNCH_RATE": "2.5",
            "ORCH_ECS_LAUNCH_BURST": "4",
        }
    )
    local = pool_settings(config, "local")
    assert (local.max_inflight, local.rate, local.burst) == (7, UNPACED_RATE, UNPACED_BURST)
    for launcher in ("fargate", "ec2"):
        ecs = pool_settings(config, launcher)
        assert (ecs.max_inflight, ecs.rate, ecs.burst) == (3, 2.5, 4)


def test_the_defaults_differ_by_launcher() -> None:
    config = load_config(environ={})
    assert pool_settings(config, "local").max_inflight == DEFAULT_LOCAL_MAX_INFLIGHT_LAUNCHES == 32
    assert pool_settings(config, "fargate").max_inflight == DEFAULT_MAX_INFLIGHT_LAUNCHES == 10


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bound_that_is_not_a_positive_integer_is_refused_by_name(value: str) -> None:
    with pytest.raises(ConfigError, match=r"local\.max_inflight_launches"):
        load_config(environ={"ORCH_LOCAL_MAX_INFLIGHT_LAUNCHES": value})
