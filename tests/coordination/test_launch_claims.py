"""Launch claims bound to a job's identity: the same job claims as before, a different one conflicts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.coordination import InstanceRegistry, LaunchClaim, RedisClient

KEY = "launch:dep-1:1"
DEPLOY = "deploy:0123456789abcdef0123456789abcdef"
BUILD = "build:fedcba9876543210fedcba9876543210"


@pytest.fixture
def registries(client: RedisClient, prefix: str) -> Iterator[dict[str, InstanceRegistry]]:
    """Two live instances, ``a`` and ``b``, and one, ``dead``, whose lease is gone."""
    made = {name: InstanceRegistry(client, prefix, name, 30) for name in ("a", "b", "dead")}
    made["a"].start()
    made["b"].start()
    yield made
    for registry in made.values():
        registry.stop()


def test_the_same_job_claims_as_before(registries: dict[str, InstanceRegistry]) -> None:
    a, b = registries["a"], registries["b"]

    assert a.claim_launch(KEY, "a", DEPLOY) == LaunchClaim("new")
    assert a.claim_launch(KEY, "a", DEPLOY) == LaunchClaim("mine", DEPLOY)
    assert b.claim_launch(KEY, "b", DEPLOY) == LaunchClaim("other", DEPLOY)


def test_a_different_job_under_a_claimed_key_conflicts_whoever_holds_it(
    registries: dict[str, InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    a, b = registries["a"], registries["b"]
    a.claim_launch(KEY, "a", DEPLOY)

    # Another process, and the holder itself, asking for another job: a conflict naming the bound job
    assert b.claim_launch(KEY, "b", BUILD) == LaunchClaim("conflict", DEPLOY)
    assert a.claim_launch(KEY, "a", BUILD) == LaunchClaim("conflict", DEPLOY)
    # and the claim is untouched
    assert client.get(f"{prefix}:claim:{KEY}") == f"a {DEPLOY}".encode()
    assert client.get(f"{prefix}:adopt:{KEY}") == f"a {DEPLOY}".encode(), "the legacy key too"


def test_a_dead_holders_claim_is_taken_over_by_the_same_job_only(
    registries: dict[str, InstanceRegistry],
) -> None:
    # Given a claim whose holder never held a live lease (it died)
    b = registries["b"]
    assert registries["dead"].claim_launch(KEY, "dead", DEPLOY).state == "new"

    # A different job still conflicts: the dead holder's job may have run
    assert b.claim_launch(KEY, "b", BUILD) == LaunchClaim("conflict", DEPLOY)
    # The same job takes the claim over
    assert b.claim_launch(KEY, "b", DEPLOY) == LaunchClaim("new", DEPLOY)
    assert b.claim_launch(KEY, "b", DEPLOY).state == "mine"


def test_a_claim_written_without_an_identity_binds_nothing(
    registries: dict[str, InstanceRegistry], client: RedisClient, prefix: str
) -> None:
    # Given a claim in the form written before claims had an identity: the owner alone
    a, b = registries["a"], registries["b"]
    assert a.claim(KEY, "a") == "new"

    # Then another job is not a conflict at this layer (the guard then looks the task up by its tags)
    assert b.claim_launch(KEY, "b", BUILD) == LaunchClaim("other")
    # and the holder claiming again binds it
    assert a.claim_launch(KEY, "a", DEPLOY) == LaunchClaim("mine")
    assert b.claim_launch(KEY, "b", BUILD) == LaunchClaim("conflict", DEPLOY)
    assert client.get(f"{prefix}:claim:{KEY}") == f"a {DEPLOY}".encode()
    assert client.get(f"{prefix}:adopt:{KEY}") == f"a {DEPLOY}".encode(), "the legacy key too"


def test_release_gives_up_a_bound_claim_only_for_its_owner(registries: dict[str, InstanceRegistry]) -> None:
    a, b = registries["a"], registries["b"]
    a.claim_launch(KEY, "a", DEPLOY)

    b.release_claim(KEY, "b")  # not b's: nothing happens
    assert b.claim_launch(KEY, "b", BUILD).state == "conflict"
    a.release_claim(KEY, "a")

    # The launch failed and was released: the key is free for any job
    assert b.claim_launch(KEY, "b", BUILD) == LaunchClaim("new")


def test_an_owner_that_is_a_prefix_of_the_holder_cannot_release_it(
    registries: dict[str, InstanceRegistry],
) -> None:
    a = registries["a"]
    a.claim_launch(KEY, "a-longer-name", DEPLOY)

    a.release_claim(KEY, "a")

    assert a.claim_launch(KEY, "a-longer-name", DEPLOY).state == "mine"


def test_spaces_cannot_forge_a_binding(registries: dict[str, InstanceRegistry]) -> None:
    with pytest.raises(ValueError, match="spaces"):
        registries["a"].claim_launch(KEY, "a", f"{BUILD} x")
    with pytest.raises(ValueError, match="spaces"):
        registries["a"].claim_launch(KEY, "a b", BUILD)
