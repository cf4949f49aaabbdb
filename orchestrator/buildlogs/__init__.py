"""Build logs: every worker's output, shaped and published per job next to its status events.

* :mod:`orchestrator.buildlogs.model` — :class:`RawLine`, :class:`FollowedTask`, :class:`LogSource`,
  :class:`LogLine`: the interface between sources and the pump;
* :mod:`orchestrator.buildlogs.shaping` — bytes to safe text (UTF-8, escaped, split, redacted);
* :mod:`orchestrator.buildlogs.local_source` — one follower for every local task's log file;
* :mod:`orchestrator.buildlogs.cloudwatch` — ECS tasks' ``awslogs`` streams (the fetch thread in
  :mod:`~orchestrator.buildlogs.cloudwatch_fetch`, each stream's position in
  :mod:`~orchestrator.buildlogs.cloudwatch_stream`);
* :mod:`orchestrator.buildlogs.redis_stream` — the Redis Stream sink;
* :mod:`orchestrator.buildlogs.pump` — the one thread that polls sources and publishes;
  :mod:`~orchestrator.buildlogs.pump_task` (its state of one attempt),
  :mod:`~orchestrator.buildlogs.pump_lines` (caps, shaping, numbering).
"""

from orchestrator.buildlogs.model import FollowedTask, LogLine, LogSource, RawLine

__all__ = ["FollowedTask", "LogLine", "LogSource", "RawLine"]
