"""Printing the effective configuration (``orchestrator config``) with its secrets redacted."""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.config.schema import SECRET_KEYS, SECTIONS, TYPE_SECTION_PREFIX, Config
from orchestrator.redaction import REDACTED, redact_url


def config_as_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The effective config as ``{section: {key: value}}``, secrets redacted, ready to print."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = msgspec.to_builtins(getattr(config, name))
        for key, value in section.items():
            if key == "url" and isinstance(value, str):
                # broker.url may hold several nodes' URLs: each is redacted on its own.
                urls = config.broker.urls if name == "broker" else (value,)
                section[key] = ",".join(redact_url(url) for url in urls)
            elif key in SECRET_KEYS and value:
                section[key] = REDACTED
        out[name] = section
    for type_name, type_config in sorted(config.types.items()):
        out[f"{TYPE_SECTION_PREFIX}{type_name}"] = msgspec.to_builtins(type_config)
    return out
