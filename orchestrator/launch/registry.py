"""Which launcher a name stands for: the one module that imports every launch back-end.

:mod:`orchestrator.launch.base` is what every back-end imports (the request, the handle, the protocol);
it imports none of them. This registry sits above both, so the dependency runs one way only, and adding
a back-end is one entry in :data:`LAUNCHERS`. Importing it loads boto3 (the ECS back-end): the worker
and the local task wrapper, which need only :mod:`orchestrator.launch.base`, never import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from orchestrator.config import Config
from orchestrator.errors import ConfigError
from orchestrator.launch.base import Launcher
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.launch.local import LocalLauncher

#: ``factory(config, job_type)``: builds one launcher (``job_type``: see :func:`make_launcher`).
LauncherFactory = Callable[[Config, str | None], Launcher]


def _local(config: Config, _job_type: str | None) -> Launcher:
    return LocalLauncher(config)


def _fargate(config: Config, job_type: str | None) -> Launcher:
    return EcsLauncher(config, launch_type="FARGATE", job_type=job_type)


def _ec2(config: Config, job_type: str | None) -> Launcher:
    return EcsLauncher(config, launch_type="EC2", job_type=job_type)


#: Every launcher by the name the configuration uses for it.
LAUNCHERS: Final[Mapping[str, LauncherFactory]] = {
    "local": _local,
    "fargate": _fargate,
    "ec2": _ec2,
}


def make_launcher(name: str, config: Config, job_type: str | None = None) -> Launcher:
    """Build the launcher called ``name`` (``fargate``, ``ec2`` or ``local``).

    Args:
        name: The launcher's name.
        config: The effective configuration.
        job_type: When given, this type's ``[type.<name>]`` task definition and container name are
            the launcher's defaults (a request's own type's overrides still come first).

    Raises:
        ConfigError: ``name`` is not a launcher, or its settings are unusable.
    """
    factory = LAUNCHERS.get(name)
    if factory is None:
        raise ConfigError([f"launcher {name!r}: unknown (expected local, fargate or ec2)"])
    return factory(config, job_type)
