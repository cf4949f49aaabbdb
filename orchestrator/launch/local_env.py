"""The environment of a local worker: an allow-list, never the orchestrator's own environment.

The orchestrator's environment holds its own credentials (e.g. ``AWS_SECRET_ACCESS_KEY`` or
``ORCH_BROKER_URL``), so the worker gets only the job's variables, the few :data:`BASE_ENV_NAMES`
every program expects, and the variables ``local.pass_env`` names (checked by :func:`check_pass_env`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Final

from orchestrator.config import ENV_PREFIX
from orchestrator.launch.base import worker_environment
from orchestrator.messages import SourceJob

__all__ = ["BASE_ENV_NAMES", "ENV_NAME", "check_pass_env", "worker_process_environment"]

#: What every worker gets from the orchestrator's environment: where programs are, the home directory
#: (git and docker read their configuration there), locale, time zone and the temporary directory.
#: Nothing that carries a secret; anything else must be named in ``local.pass_env``.
BASE_ENV_NAMES: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
#: A name ``local.pass_env`` may list: a plain environment variable name.
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def worker_process_environment(
    job: SourceJob, attempt: int, pass_env: Sequence[str], environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The whole environment of a local worker: an allow-list, never the orchestrator's environment.

    :data:`BASE_ENV_NAMES` and ``pass_env`` are copied from ``environ`` when set there; the job's
    variables (:func:`~orchestrator.launch.base.worker_environment`) come last, so no passed variable
    can stand in for a job field.
    """
    env = {name: environ[name] for name in (*BASE_ENV_NAMES, *pass_env) if name in environ}
    env.update(worker_environment(job, attempt))
    return env


def check_pass_env(names: Sequence[str]) -> list[str]:
    """The problems of a ``local.pass_env`` list (empty when it is usable)."""
    problems = []
    for name in names:
        if not ENV_NAME.fullmatch(name):
            problems.append(f"local.pass_env: {name!r} is not an environment variable name")
        elif name.startswith(ENV_PREFIX):
            problems.append(
                f"local.pass_env: {name} is an orchestrator setting ({ENV_PREFIX}*), which may hold secrets; "
                "it is never passed to workers"
            )
    return problems
