"""Wires the pipeline's actors into the runtime: who talks to whom, and in which order they start.

Start order is consumption last: Publisher, TimeoutMonitor, Dispatchers, RateLimiter, Validator,
then the QueueListener, so no delivery arrives before the actors that handle it are running. State
that must survive an actor's restart (concurrency slots, the table of tracked tasks, the launch
guards) is created here, outside the actors, and handed to each new instance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

from orchestrator import metrics
from orchestrator.buildlogs.cloudwatch import CloudWatchSource
from orchestrator.buildlogs.local_source import LocalLogSource
from orchestrator.buildlogs.model import LogSource
from orchestrator.buildlogs.pump import LogPump
from orchestrator.buildlogs.redis_stream import RedisStreamSink
from orchestrator.commands import TasksEnded
from orchestrator.completions import Completions
from orchestrator.config import LAUNCHERS, Config
from orchestrator.coordination import (
    DoneMarkers,
    InstanceRegistry,
    PendingRetries,
    RedisClient,
    StopMarkers,
    connect_redis,
    instance_id,
)
from orchestrator.delivery import Settler
from orchestrator.launch import make_launcher
from orchestrator.launch.base import Launcher, NotifiesEnds
from orchestrator.launch.ecs import EcsLauncher
from orchestrator.launch.guard import GuardedLauncher
from orchestrator.launch.local import LocalLauncher
from orchestrator.poison import RedeliveryCounter
from orchestrator.reconcile import Reconciler
from orchestrator.runtime.health import HealthBoard
from orchestrator.runtime.supervisor import Supervisor
from orchestrator.shared import Coordination
from orchestrator.slots import make_slot_pool
from orchestrator.tracking import TaskTable

log = logging.getLogger(__name__)

INSTANCE: Final = "instance_lease"
PUBLISHER: Final = "publisher"
MONITOR: Final = "timeout_monitor"
RATE_LIMITER: Final = "rate_limiter"
VALIDATOR: Final = "validator"
LISTENER: Final = "queue_listener"


def dispatcher_name(launcher: str) -> str:
    """The actor name of ``launcher``'s Dispatcher, e.g. ``dispatcher.fargate``."""
    return f"dispatcher.{launcher}"


def launchers_in_use(config: Config) -> list[str]:
    """The launch types some job type is configured to use (the default one always)."""
    used = {config.launcher.default} | {t.launcher for t in config.types.values() if t.launcher}
    return [name for name in LAUNCHERS if name in used]


def build_log_pump(config: Config, client: RedisClient, launchers: Mapping[str, Launcher]) -> LogPump | None:
    """The build log pump when ``logs.sinks`` names a sink, with a log source for each launcher in use
    that has one (local: the task's log file; ECS: its CloudWatch Logs stream, one source shared by
    both ECS launch types); None when build logs are off."""
    if "redis" not in config.logs.sinks:
        return None
    sources: dict[str, LogSource] = {}
    if "local" in launchers:
        sources["local"] = LocalLogSource(config.local.state_dir, config.logs.max_line_bytes)
    ecs = [name for name, launcher in launchers.items() if isinstance(launcher, EcsLauncher)]
    if ecs:
        cloudwatch = CloudWatchSource(config)
        for name in ecs:
            sources[name] = cloudwatch
    sink = RedisStreamSink(
        client,
        config.redis.key_prefix,
        max_lines_kept=config.logs.max_lines_kept,
        ttl_seconds=config.logs.ttl_seconds,
    )
    return LogPump(config.logs, sink, sources)


def register_pipeline(
    supervisor: Supervisor,
    board: HealthBoard,
    config: Config,
    *,
    launcher_factory: Callable[[str, Config], Launcher] = make_launcher,
) -> None:
    """Add every pipeline actor to ``supervisor`` in start order.

    Args:
        supervisor: the runtime's supervisor.
        board: the health board the actors report their dependencies to.
        config: the effective configuration.
        launcher_factory: builds the launcher of each launch type (tests swap in instant ones).
    """
    # Imported here: the actors import this package's modules, not the other way round.
    from actors.dispatcher import DispatcherActor
    from actors.instance_lease import InstanceLeaseActor
    from actors.publisher import PublisherActor
    from actors.queue_listener import QueueListenerActor
    from actors.rate_limiter import RateLimiterActor
    from actors.timeout_monitor import TimeoutMonitorActor
    from actors.validator import ValidatorActor

    me = instance_id()
    log.info("instance id %s", me)
    client = connect_redis(config.redis)
    prefix = config.redis.key_prefix

    # Without the broker nothing flows: /health is 503 until the consumer has connected. Redis is
    # required only for a global concurrency limit; without it the process works on, degraded
    # (no cross-process duplicate guard or stop markers), and /health says so in its body.
    redis_required = config.limits.global_max_concurrent is not None
    board.set_dependency("broker", False, "not connected yet")
    if "amqp" in config.status.sinks:
        board.set_dependency("status.amqp", False, "not connected yet")

    def redis_connectivity(ok: bool, detail: str) -> None:
        board.set_dependency("redis", ok, detail, required=redis_required)
        metrics.REDIS_CONNECTED.set(1 if ok else 0)

    launchers = {name: launcher_factory(name, config) for name in launchers_in_use(config)}
    registry = InstanceRegistry(
        client, prefix, me, config.limits.lease_seconds, on_connectivity=redis_connectivity
    )
    done_markers = DoneMarkers(client, prefix)
    coordination = Coordination(
        instance_id=me,
        slots=make_slot_pool(config, me, client, redis_connectivity),
        stop_markers=StopMarkers(client, prefix),
        pending_retries=PendingRetries(client, prefix),
        done_markers=done_markers,
        registry=registry,
        reconciler=Reconciler(launchers, registry, done_markers, me),
        redeliveries=RedeliveryCounter(client, prefix),
    )
    slots = coordination.slots
    # The slot pool outlives actor restarts; its lease renewal stops with the pipeline (the leases
    # themselves are left to expire: the tasks they count may still run, to be adopted).
    supervisor.on_stopped(slots.close)
    guards = {
        name: GuardedLauncher(launcher, me, registry, done_markers, slot_held=slots.holds_surely)
        for name, launcher in launchers.items()
    }
    table = TaskTable()
    # Confirmed outcomes go from the publisher's I/O thread straight to their own thread, which outlives
    # the actors' restarts and finishes its work before the process stops.
    completions = Completions(done_markers, launchers)
    completions.start()
    supervisor.on_stopped(completions.close)  # (before the launchers close: it has them forget tasks)
    logs = build_log_pump(config, client, launchers)
    if logs is not None:
        logs.start()
        supervisor.on_stopped(logs.close)

    def followed() -> frozenset[str]:
        """The deployments this process tracks or is launching (what may hold a slot here)."""
        return table.deployment_ids().union(*(g.active_deployments() for g in guards.values()))

    # Factories run at start_all, once every actor is added, so each can look up the handles of
    # actors added after it (the pipeline has cycles: dispatch -> monitor -> rate limiter -> dispatch).
    handle = supervisor.handle
    #: Acks and requeues go from any actor straight to the consumer the QueueListener attaches.
    settler = Settler()

    # Launchers that can tell of a task's end as it happens (local: a pidfd per task) tell the
    # monitor at once; the poll stays the fallback and follows everything else. The local launcher
    # also deletes old worker logs (local.log_retention_seconds) until it is closed.
    for launcher in launchers.values():
        if isinstance(launcher, LocalLauncher):
            launcher.sweep_logs()
        if isinstance(launcher, NotifiesEnds):
            launcher.notify_ends(lambda states: handle(MONITOR).tell(TasksEnded(states=tuple(states))))
            supervisor.on_stopped(launcher.close)

    supervisor.add(INSTANCE, lambda r: InstanceLeaseActor.start(r, registry))
    supervisor.add(
        PUBLISHER, lambda r: PublisherActor.start(r, config, board, settler), depends_on=[INSTANCE]
    )
    supervisor.add(
        MONITOR,
        lambda r: TimeoutMonitorActor.start(
            r,
            config,
            launchers,
            guards,
            table,
            coordination,
            {name: handle(name) for name in (PUBLISHER, RATE_LIMITER)},
            settler,
            completions.done,
            logs,
        ),
        depends_on=[PUBLISHER],
    )
    for name in launchers:
        supervisor.add(
            dispatcher_name(name),
            lambda r, name=name: DispatcherActor.start(  # type: ignore[misc]
                r,
                config,
                guards[name],
                me,
                handle(PUBLISHER),
                handle(MONITOR),
                handle(RATE_LIMITER),
                coordination,
            ),
            depends_on=[PUBLISHER, MONITOR],
        )
    supervisor.add(
        RATE_LIMITER,
        lambda r: RateLimiterActor.start(
            r,
            config,
            slots,
            {name: handle(dispatcher_name(name)) for name in launchers},
            handle(PUBLISHER),
            handle(LISTENER),
            settler,
            followed,
            board,
        ),
        depends_on=[dispatcher_name(name) for name in launchers],
    )
    supervisor.add(
        VALIDATOR,
        lambda r: ValidatorActor.start(
            r,
            config,
            handle(PUBLISHER),
            handle(RATE_LIMITER),
            handle(MONITOR),
            settler,
            coordination,
        ),
        depends_on=[RATE_LIMITER, MONITOR, PUBLISHER],
    )
    supervisor.add(
        LISTENER,
        lambda r: QueueListenerActor.start(
            r, config, board, handle(VALIDATOR), handle(RATE_LIMITER), settler
        ),
        depends_on=[VALIDATOR],
    )
