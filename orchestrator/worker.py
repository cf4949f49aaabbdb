"""The reference worker: ``python -m orchestrator.worker`` (the default ``local.command``).

It reads its job from the environment (``DEPLOYMENT_ID``, ``JOB_TYPE``, ``REPOSITORY``, ``BRANCH``,
``DOCKERFILE_PATH``, ``CONTEXT_DIR``, ...; see :func:`orchestrator.launch.base.worker_environment`),
clones the branch with ``git clone --depth 1``, checks that the context directory and the Dockerfile
exist inside the checkout (no escape through ``..`` or symlinks), and builds the image with
``docker build`` when a Docker engine answers. Without one it says so and stops after verifying the
Dockerfile. ``deploy`` and ``test`` jobs do the same as ``build`` here.

Exit codes (the orchestrator reports them; ``limits.no_retry_exit_codes`` can name the hopeless ones):
:data:`EXIT_OK` 0, :data:`EXIT_BAD_ENVIRONMENT` 2, :data:`EXIT_CLONE_FAILED` 10,
:data:`EXIT_DOCKERFILE_MISSING` 11, :data:`EXIT_BUILD_FAILED` 12, :data:`EXIT_CONTEXT_MISSING` 13,
:data:`EXIT_COMPOSE_FILE_MISSING` 14, :data:`EXIT_TERMINATED` 143 (SIGTERM).

Test knobs (for tests and benchmarks only, never set in production):
``WORKER_SLEEP_SECONDS`` sleeps that long before exiting (a long-running task);
``WORKER_SERVE_SECONDS`` keeps a job that runs until stopped (a ``deploy``) up that long after a
successful build, as the deployed service would be, until it is stopped (SIGTERM);
``WORKER_EXIT_CODE`` replaces the exit code the worker would have returned.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from orchestrator.launch.base import attempt_from_environment, job_from_environment
from orchestrator.logs import FAILURE, PROGRESS, SUCCESS, WARNING
from orchestrator.messages import SourceJob
from orchestrator.redaction import redact_url

EXIT_OK: Final = 0
EXIT_BAD_ENVIRONMENT: Final = 2
EXIT_CLONE_FAILED: Final = 10
EXIT_DOCKERFILE_MISSING: Final = 11
EXIT_BUILD_FAILED: Final = 12
EXIT_CONTEXT_MISSING: Final = 13
EXIT_COMPOSE_FILE_MISSING: Final = 14
EXIT_TERMINATED: Final = 128 + int(signal.SIGTERM)

#: Test knobs (see the module docstring).
ENV_SLEEP_SECONDS: Final = "WORKER_SLEEP_SECONDS"
ENV_EXIT_CODE: Final = "WORKER_EXIT_CODE"
ENV_SERVE_SECONDS: Final = "WORKER_SERVE_SECONDS"

CLONE_TIMEOUT_SECONDS: Final = 600.0
GIT_ALLOWED_PROTOCOLS: Final = "https:http:ssh:git:file"
DOCKER_INFO_TIMEOUT_SECONDS: Final = 20.0
BUILD_TIMEOUT_SECONDS: Final = 3600.0
NO_ENGINE_MESSAGE: Final = "no Docker engine: verified the Dockerfile only"


class StepError(Exception):
    """Ends the worker with ``code`` after saying why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def say(mark: str, message: str) -> None:
    """One line of the task's log (the launcher sends standard output to the log file)."""
    print(f"{mark} {message}", flush=True)


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:
    # Raising unwinds through the `finally` blocks, so the temporary checkout is removed.
    del frame
    raise StepError(EXIT_TERMINATED, f"terminated by signal {signum}")


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` with symlinks resolved, or None when it leaves ``root``."""
    candidate = (root / relative).resolve()
    return candidate if candidate.is_relative_to(root) else None


def clone(job: SourceJob, checkout: Path, env: Mapping[str, str]) -> None:
    """``git clone --depth 1 --branch BRANCH -- REPOSITORY checkout`` (an argv list, never a shell).

    Raises:
        StepError: the clone failed or took too long.
    """
    argv = ["git", "clone", "--depth", "1", "--branch", job.branch, "--", job.repository, str(checkout)]
    say(PROGRESS, f"cloning {redact_url(job.repository)} branch {job.branch!r}")
    # No credential prompts (nobody is there to answer), and no exotic transports such as ext::.
    git_env = {**env, "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": GIT_ALLOWED_PROTOCOLS}
    try:
        result = subprocess.run(argv, env=git_env, timeout=CLONE_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StepError(EXIT_CLONE_FAILED, f"git clone failed: {e}") from None
    if result.returncode != 0:
        raise StepError(EXIT_CLONE_FAILED, f"git clone failed with exit code {result.returncode}")


def verify(job: SourceJob, checkout: Path) -> tuple[Path, Path]:
    """The build context and the Dockerfile, both checked to exist inside ``checkout``.

    Raises:
        StepError: one is missing or points outside the checkout.
    """
    root = checkout.resolve()
    context = inside(root, job.context_dir)
    if context is None or not context.is_dir():
        raise StepError(
            EXIT_CONTEXT_MISSING, f"context directory {job.context_dir!r} is not in the repository"
        )
    dockerfile = inside(root, job.docker_file_path)
    if dockerfile is None or not dockerfile.is_file():
        raise StepError(
            EXIT_DOCKERFILE_MISSING, f"Dockerfile {job.docker_file_path!r} is not in the repository"
        )
    if job.compose_file_path is not None:
        compose = inside(root, job.compose_file_path)
        if compose is None or not compose.is_file():
            raise StepError(
                EXIT_COMPOSE_FILE_MISSING, f"compose file {job.compose_file_path!r} is not in the repository"
            )
    say(SUCCESS, f"found {job.docker_file_path} and context {job.context_dir}")
    return context, dockerfile


def docker_engine_answers(env: Mapping[str, str]) -> bool:
    """Whether ``docker info`` succeeds (a Docker CLI is installed and its engine answers)."""
    if shutil.which("docker", path=env.get("PATH")) is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "info"],
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=DOCKER_INFO_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def image_tag(job: SourceJob, attempt: int) -> str:
    """A valid Docker tag for the job's image, e.g. ``blacktree/dep-42:attempt-1``."""
    name = re.sub(r"[^a-z0-9._-]", "-", job.deployment_id.lower()).strip("._-")[:100] or "build"
    return f"blacktree/{name}:attempt-{attempt}"


def build(job: SourceJob, attempt: int, context: Path, dockerfile: Path, env: Mapping[str, str]) -> None:
    """``docker build -f DOCKERFILE -t TAG CONTEXT``.

    Raises:
        StepError: the build failed or took too long.
    """
    tag = image_tag(job, attempt)
    say(PROGRESS, f"docker build {tag}")
    argv = ["docker", "build", "-f", str(dockerfile), "-t", tag, "--", str(context)]
    try:
        result = subprocess.run(argv, env=dict(env), timeout=BUILD_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise StepError(EXIT_BUILD_FAILED, f"docker build failed: {e}") from None
    if result.returncode != 0:
        raise StepError(EXIT_BUILD_FAILED, f"docker build failed with exit code {result.returncode}")
    say(SUCCESS, f"built {tag}")


def run(env: Mapping[str, str]) -> int:
    """Do the job described by ``env``; returns the exit code (before the test knobs)."""
    job = job_from_environment(env)
    attempt = attempt_from_environment(env) or 1
    if job is None:
        say(FAILURE, "the environment does not describe a job (DEPLOYMENT_ID, JOB_TYPE, REPOSITORY needed)")
        return EXIT_BAD_ENVIRONMENT
    say(PROGRESS, f"{job.type} {job.deployment_id} attempt {attempt}")
    workdir = Path(tempfile.mkdtemp(prefix="blacktree-worker-"))
    try:
        checkout = workdir / "checkout"
        clone(job, checkout, env)
        context, dockerfile = verify(job, checkout)
        if docker_engine_answers(env):
            build(job, attempt, context, dockerfile, env)
        else:
            say(WARNING, NO_ENGINE_MESSAGE)
    except StepError as e:
        say(FAILURE, str(e))
        return e.code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say(SUCCESS, f"{job.type} {job.deployment_id} done")
    serve = float(env.get(ENV_SERVE_SECONDS) or 0)
    if serve > 0 and job.runs_until_stopped:
        say(PROGRESS, f"{job.type} {job.deployment_id} serving until stopped (at most {serve:g} s)")
        time.sleep(serve)  # SIGTERM ends it (see _terminate)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the job from ``os.environ``, then apply the test knobs."""
    del argv
    signal.signal(signal.SIGTERM, _terminate)
    env = dict(os.environ)
    try:
        code = run(env)
        if code == EXIT_TERMINATED:
            return code
        sleep = float(env.get(ENV_SLEEP_SECONDS) or 0)
        if sleep > 0:
            time.sleep(sleep)
    except StepError as e:
        say(FAILURE, str(e))
        return e.code
    forced = env.get(ENV_EXIT_CODE, "").strip()
    if forced.lstrip("-").isdigit():
        return int(forced)
    return code


if __name__ == "__main__":
    sys.exit(main())
