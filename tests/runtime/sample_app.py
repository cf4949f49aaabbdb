"""A test-only entry point: the real ``orchestrator.app.run`` with extra sample actors.

Run from the repository root: ``python -m tests.runtime.sample_app --config FILE [--crashing]
[--slow-drain SECONDS]``. Production code has no hook for this; the tests register actors here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from orchestrator.app import register_default_actors, run
from orchestrator.config import Config, load_config
from orchestrator.logs import setup_logging
from orchestrator.runtime import HealthBoard, Supervisor

from .sample_actors import Journal, RecorderActor, TickingCrasher

#: The crashing actor crashes this long after each start.
CRASH_AFTER_SECONDS = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sample_app")
    parser.add_argument("--config", required=True)
    parser.add_argument("--crashing", action="store_true", help="add an actor that crashes after every start")
    parser.add_argument("--slow-drain", type=float, help="add an actor that takes this long to drain")
    args = parser.parse_args(argv)
    setup_logging("INFO")

    def actors(supervisor: Supervisor, board: HealthBoard, config: Config) -> None:
        register_default_actors(supervisor, board, config)
        if args.crashing:
            supervisor.add("crasher", lambda reporter: TickingCrasher.start(reporter, CRASH_AFTER_SECONDS))
        if args.slow_drain is not None:
            journal = Journal()
            supervisor.add(
                "slow_drainer", lambda reporter: RecorderActor.start(reporter, journal, args.slow_drain)
            )

    return run(load_config(args.config), actors=actors)


if __name__ == "__main__":
    sys.exit(main())
