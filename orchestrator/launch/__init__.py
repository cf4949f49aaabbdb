"""Launch back-ends: ECS Fargate, ECS on EC2 and local processes, behind one :class:`Launcher` protocol.

Blocking plain classes (the Dispatcher and TimeoutMonitor actors wrap them):

* :mod:`orchestrator.launch.base` — :class:`LaunchRequest`, :class:`TaskHandle`, :class:`TaskState`,
  the :class:`Launcher` protocol, the worker environment, :func:`make_launcher`;
* :mod:`orchestrator.launch.ecs` — ``EcsLauncher`` (``fargate`` and ``ec2``);
* :mod:`orchestrator.launch.local` — ``LocalLauncher`` (``local``) and its wrapper
  :mod:`orchestrator.launch.local_task`;
* :mod:`orchestrator.launch.pool` — :class:`LaunchPool` and :class:`TokenBucket` (launch concurrency);
* :mod:`orchestrator.launch.errors` — classification of AWS failures into ``LaunchError`` subclasses.

The back-end modules are imported on demand (:func:`make_launcher`), so the worker and the local task
wrapper, which import :mod:`orchestrator.launch.base`, do not pay for boto3.
"""

from orchestrator.launch.base import (
    Launcher,
    LaunchRequest,
    TaskHandle,
    TaskState,
    client_token,
    job_from_environment,
    make_launcher,
    worker_environment,
)

__all__ = [
    "LaunchRequest",
    "Launcher",
    "TaskHandle",
    "TaskState",
    "client_token",
    "job_from_environment",
    "make_launcher",
    "worker_environment",
]
