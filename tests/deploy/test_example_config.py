"""deploy/orchestrator.ini: the real ``orchestrator config`` accepts it, and it sets every key the
schema knows (the key list comes from the schema, not a copy), each with a comment.
"""

from __future__ import annotations

import configparser
import json
from urllib.parse import urlsplit

from test_cli import run

from orchestrator import worker
from orchestrator.config.schema import SECTIONS, TYPE_SECTION_PREFIX, TypeConfig

from .aws import EXAMPLE_CONFIG, example_config


def schema_keys() -> dict[str, set[str]]:
    """Every section of the schema with its keys; ``type.<name>`` for the per-type overrides."""
    keys = {name: set(section.__struct_fields__) for name, section in SECTIONS.items()}
    keys[f"{TYPE_SECTION_PREFIX}<name>"] = set(TypeConfig.__struct_fields__)
    return keys


def file_sections() -> dict[str, set[str]]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    parser.read(EXAMPLE_CONFIG, encoding="utf-8")
    return {name: set(parser[name]) for name in parser.sections()}


def test_orchestrator_config_accepts_the_example() -> None:
    result = run("config", "--config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    printed = json.loads(result.stdout)
    assert printed["launcher"]["default"] == "fargate"
    assert printed["broker"]["queue_type"] == "quorum"
    assert printed["type.deploy"]["max_runtime_seconds"] is None


def test_the_example_sets_every_key_of_the_schema() -> None:
    sections = file_sections()
    for section, keys in schema_keys().items():
        if section.startswith(TYPE_SECTION_PREFIX):
            typed = [s for s in sections if s.startswith(TYPE_SECTION_PREFIX)]
            assert typed, "a [type.<name>] section shows the per-type keys"
            assert any(sections[s] == keys for s in typed), f"no [type.<name>] sets all of {sorted(keys)}"
        else:
            assert sections.get(section, set()) == keys, (
                f"[{section}] misses {sorted(keys - sections.get(section, set()))}"
            )


def test_every_key_has_a_comment_line_above_it() -> None:
    lines = EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith(("#", ";", "[")):
            assert lines[number - 1].startswith("#"), f"line {number + 1}: {line!r} has no comment above it"


def test_the_example_holds_no_secret() -> None:
    config = example_config()
    for url in (config.broker.url, config.redis.url):
        assert urlsplit(url).password is None, "passwords come from ORCH_BROKER_URL and ORCH_REDIS_URL"
    assert config.broker.retry_signing_key == "", "set by ORCH_BROKER_RETRY_SIGNING_KEY, never in the file"


def test_the_no_retry_exit_codes_are_the_reference_workers_hopeless_ones() -> None:
    hopeless = {
        worker.EXIT_BAD_ENVIRONMENT,
        worker.EXIT_DOCKERFILE_MISSING,
        worker.EXIT_CONTEXT_MISSING,
        worker.EXIT_COMPOSE_FILE_MISSING,
    }
    assert set(example_config().limits.no_retry_exit_codes) == hopeless
