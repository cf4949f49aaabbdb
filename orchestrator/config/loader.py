"""Loading: one INI file plus ``ORCH_<SECTION>_<KEY>`` environment overrides, into a :class:`Config`.

Every problem is collected and reported at once, each naming its ``section.key``: an unknown section
or key (with a "did you mean"), a ``[type.<name>]`` section for a job type that does not exist, a
value of the wrong type, a value outside the key's bounds (the ``msgspec.Meta`` constraints of
:mod:`orchestrator.config.schema`, enforced by msgspec and worded here), then the rules across keys of
:mod:`orchestrator.config.checks`.

A value set by an ``ORCH_*`` variable is reported with that variable: a misspelled variable is named
as the variable, with the variable meant (``ORCH_BROKER_URLL: unknown key broker.urll, did you mean
ORCH_BROKER_URL``), and a wrong value ends with ``(from ORCH_…)``, so the operator looks where it was set.
"""

from __future__ import annotations

import configparser
import difflib
import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

import msgspec

from orchestrator.config.checks import check_config
from orchestrator.config.schema import SECTIONS, TYPE_SECTION_PREFIX, Config, Section, TypeConfig
from orchestrator.errors import ConfigError
from orchestrator.messages import job_type_names

ENV_PREFIX: Final = "ORCH_"
#: How alike (difflib's ratio) a misspelled variable must be to a real one to be offered as meant.
ENV_MATCH_CUTOFF: Final = 0.75

#: ``{section: {key: variable}}``: the ``ORCH_*`` variable each value came from (a file's have none).
_Origins = dict[str, dict[str, str]]


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read the INI file at ``path`` (optional) and apply ``ORCH_*`` overrides from ``environ``.

    Raises:
        ConfigError: with every problem found, each naming its ``section.key``.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, str]] = {}
    origins: _Origins = {}
    problems: list[str] = []
    if path is not None:
        raw = _read_ini(Path(path), problems)
    _apply_env(raw, origins, environ, problems)

    sections: dict[str, Any] = {}
    type_sections: dict[str, TypeConfig] = {}
    job_types = job_type_names()
    for section_name, values in raw.items():
        from_env = origins.get(section_name, {})
        if section_name.startswith(TYPE_SECTION_PREFIX):
            type_name = section_name[len(TYPE_SECTION_PREFIX) :]
            type_config = _build_section(section_name, TypeConfig, values, problems, from_env)
            if type_name in job_types:
                type_sections[type_name] = type_config
            else:
                problems.extend(_unknown_job_type(section_name, type_name, values, from_env))
        elif section_name in SECTIONS:
            section_class = SECTIONS[section_name]
            sections[section_name] = _build_section(section_name, section_class, values, problems, from_env)
        else:
            known = [*SECTIONS, "type.<name>"]
            problems.append(f"[{section_name}]: unknown section{_did_you_mean(section_name, known)}")
    config = Config(**sections, types=type_sections)
    check_config(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _read_ini(path: Path, problems: list[str]) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with path.open(encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        problems.append(f"{path}: cannot read config file ({e.strerror or e})")
        return {}
    except (configparser.Error, UnicodeDecodeError) as e:
        problems.append(f"{path}: not a valid INI file ({str(e).splitlines()[0]})")
        return {}
    return {name: dict(parser.items(name)) for name in parser.sections()}


def _apply_env(
    raw: dict[str, dict[str, str]], origins: _Origins, environ: Mapping[str, str], problems: list[str]
) -> None:
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        target = _env_target(rest)
        if target is None:
            # Compared without the common prefix, which would make any two names look alike.
            known = {name[len(ENV_PREFIX) :].lower(): name for name in env_variable_names()}
            meant = _closest(rest, known, cutoff=ENV_MATCH_CUTOFF)
            hint = f", did you mean {known[meant]}" if meant else " (expected ORCH_<SECTION>_<KEY>)"
            problems.append(f"{var}: does not name a config key{hint}")
            continue
        section, key = target
        raw.setdefault(section, {})[key] = value
        origins.setdefault(section, {})[key] = var


def env_variable(section: str, key: str) -> str:
    """The ``ORCH_*`` variable that sets ``section.key`` (``type.build`` + ``launcher``: a type's key)."""
    return f"{ENV_PREFIX}{section.replace('.', '_')}_{key}".upper()


def env_variable_names() -> list[str]:
    """Every ``ORCH_*`` variable that names a key: each section's, and each job type's."""
    names = [env_variable(section, key) for section, cls in SECTIONS.items() for key in cls.__struct_fields__]
    for job_type in job_type_names():
        names += [env_variable(TYPE_SECTION_PREFIX + job_type, key) for key in TypeConfig.__struct_fields__]
    return names


def _unknown_job_type(
    section_name: str, type_name: str, values: Mapping[str, str], from_env: Mapping[str, str]
) -> list[str]:
    """One problem per variable that names the unknown job type, or one for the file's section."""
    job_types = job_type_names()
    problems = []
    for key in values:
        if (var := from_env.get(key)) is not None:
            meant = _closest(type_name, job_types)
            hint = f", did you mean {env_variable(TYPE_SECTION_PREFIX + meant, key)}" if meant else ""
            problems.append(f"{var}: unknown job type {type_name!r}{hint}")
    if len(problems) < len(values):  # some keys came from the file's section
        meant = _closest(type_name, job_types)
        hint = f" (did you mean [{TYPE_SECTION_PREFIX}{meant}]?)" if meant else ""
        problems.append(
            f"[{section_name}]: unknown job type {type_name!r}{hint}; job types are " + ", ".join(job_types)
        )
    return problems


def _env_target(rest: str) -> tuple[str, str] | None:
    """Map ``broker_execute_queue`` to ``("broker", "execute_queue")``, ``type_build_launcher`` to a type."""
    if rest.startswith("type_"):
        for key in sorted(TypeConfig.__struct_fields__, key=len, reverse=True):
            suffix = "_" + key
            if rest.endswith(suffix) and len(rest) > len("type_") + len(suffix):
                return f"{TYPE_SECTION_PREFIX}{rest[len('type_') : -len(suffix)]}", key
        return None
    for section in sorted(SECTIONS, key=len, reverse=True):
        if rest.startswith(section + "_"):
            return section, rest[len(section) + 1 :]
    return None


def _build_section(
    name: str,
    cls: type[Section],
    values: Mapping[str, str],
    problems: list[str],
    from_env: Mapping[str, str],
) -> Any:
    """The section ``cls`` from its text values; a key that is unknown, mistyped or out of bounds is
    reported (with its variable when ``from_env`` says an ``ORCH_*`` variable set it) and left at its
    default."""
    hints = get_type_hints(cls, include_extras=True)
    fields = cls.__struct_fields__
    kwargs: dict[str, Any] = {}
    for key, text in values.items():
        var = from_env.get(key)
        source = f" (from {var})" if var else ""
        if key not in fields:
            if var:
                meant = _closest(key, fields)
                hint = f", did you mean {env_variable(name, meant)}" if meant else ""
                problems.append(f"{var}: unknown key {name}.{key}{hint}")
            else:
                problems.append(f"{name}.{key}: unknown key{_did_you_mean(key, fields)}")
            continue
        hint = hints[key]
        try:
            value = _parse_value(text, _bare(hint))
        except (msgspec.ValidationError, ValueError) as e:
            problems.append(f"{name}.{key}: {_describe(e, text, _bare(hint))}{source}")
            continue
        try:
            kwargs[key] = msgspec.convert(value, hint)  # enforces the key's msgspec.Meta bounds
        except msgspec.ValidationError as e:
            problems.append(f"{name}.{key}: {_out_of_bounds(value, hint) or e}{source}")
    return cls(**kwargs)


def _parse_value(text: str, hint: Any) -> Any:
    text = text.strip()
    args = get_args(hint)
    if type(None) in args:
        if text == "" or text.lower() in ("off", "none"):
            return None
        hint = next(a for a in args if a is not type(None)) if len(args) == 2 else hint
    if get_origin(hint) is tuple:
        items = [item.strip() for item in text.split(",") if item.strip()]
        return msgspec.convert(items, hint, strict=False)
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected a boolean (true/false, yes/no, on/off, 1/0)")
    return msgspec.convert(text, hint, strict=False)


def _bare(hint: Any) -> Any:
    """``hint`` without its ``Annotated`` bounds, at any depth: what the text must parse as."""
    origin = get_origin(hint)
    if origin is Annotated:
        return _bare(get_args(hint)[0])
    if origin is tuple:
        return tuple[tuple(arg if arg is Ellipsis else _bare(arg) for arg in get_args(hint))]  # type: ignore[misc]
    if origin in (Union, types.UnionType):
        return Union[tuple(_bare(arg) for arg in get_args(hint))]  # noqa: UP007 - built at run time
    return hint


def _describe(error: Exception, text: str, hint: Any) -> str:
    if isinstance(error, ValueError) and not isinstance(error, msgspec.ValidationError):
        return f"{error} (got {text!r})"
    return f"expected {_expected(hint)} (got {text!r})"


def _expected(hint: Any) -> str:
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if get_origin(hint) is tuple:
        plural = {int: "whole numbers", float: "numbers", str: "strings"}
        item = plural.get(args[0]) or _expected(args[0])
        return f"a comma-separated list of {item}"
    if len(args) == 1:
        return _expected(args[0]) + " or off"
    names = {int: "a whole number", float: "a number", str: "a string", bool: "a boolean"}
    return names.get(hint, str(hint))


def _out_of_bounds(value: Any, hint: Any) -> str | None:
    """Which ``msgspec.Meta`` bound of ``hint`` the parsed ``value`` breaks, in words, or None."""
    broken = _broken_bound(value, hint)
    if broken is None:
        return None
    return broken if value == () else f"{broken} (got {value})"


def _broken_bound(value: Any, hint: Any) -> str | None:
    origin = get_origin(hint)
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        for arg in get_args(hint):
            if arg is not type(None):
                return _broken_bound(value, arg)
        return None
    if origin is Annotated:
        base, *metas = get_args(hint)
        for meta in metas:
            if isinstance(meta, msgspec.Meta) and (broken := _broken_meta(value, meta, base)):
                return broken
        return _broken_bound(value, base)
    if origin is tuple and isinstance(value, tuple):
        item_hint = get_args(hint)[0]
        for item in value:
            if broken := _broken_bound(item, item_hint):
                return f"every value {broken}"
    return None


def _broken_meta(value: Any, meta: msgspec.Meta, base: Any) -> str | None:
    if isinstance(value, tuple):
        if meta.min_length is not None and len(value) < meta.min_length:
            item = _bare(get_args(base)[0])
            what = "of " + ", ".join(map(str, get_args(item))) if get_origin(item) is Literal else "value"
            needs = (
                f"needs at least one {what}" if meta.min_length == 1 else f"needs {meta.min_length} values"
            )
            return f"{needs} ({meta.description})" if meta.description else needs
        return None
    if meta.ge is not None and meta.le is not None and not meta.ge <= value <= meta.le:
        return f"must be {meta.ge}-{meta.le}"
    if meta.gt is not None and value <= meta.gt:
        return f"must be greater than {meta.gt}"
    if meta.ge is not None and value < meta.ge:
        return "must not be negative" if meta.ge == 0 else f"must be at least {meta.ge}"
    if meta.le is not None and value > meta.le:
        return f"must be at most {meta.le}"
    if meta.lt is not None and value >= meta.lt:
        return f"must be less than {meta.lt}"
    return None


def _closest(word: str, candidates: Any, cutoff: float = 0.6) -> str | None:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return match[0] if match else None


def _did_you_mean(word: str, candidates: Any) -> str:
    match = _closest(word, candidates)
    return f" (did you mean {match!r}?)" if match else ""
