"""The ``orchestrator`` command: run, validate, config, submit.

Every user mistake ends in one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from orchestrator import __version__
from orchestrator.config import Config, config_as_dict, load_config
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.logs import setup_logging

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_INVALID: Final = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Blacktree Build Orchestrator: runs one worker task per job from RabbitMQ.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the orchestrator until SIGTERM")
    run.add_argument("--config", metavar="FILE", help="INI config file (ORCH_* variables override it)")

    validate = sub.add_parser("validate", help="validate a job message; exit 0 valid, 2 invalid")
    validate.add_argument("file", metavar="FILE", help="job JSON file, or - for standard input")
    validate.add_argument("--config", metavar="FILE", help="config file (for the validation rules)")

    config = sub.add_parser("config", help="print the effective config, secrets redacted")
    config.add_argument("--config", metavar="FILE", help="INI config file")

    submit = sub.add_parser("submit", help="publish a job to the execute queue")
    submit.add_argument("file", metavar="FILE", help="job JSON file, or - for standard input")
    submit.add_argument("--config", metavar="FILE", help="INI config file")
    submit.add_argument("--wait", action="store_true", help="follow the job's events to its end")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "config":
            return _print_config(args)
        if args.command == "submit":
            return _submit(args)
        return _run(args)
    except ConfigError as e:
        for problem in e.problems:
            print(f"❌ config: {problem}", file=sys.stderr)
        return EXIT_INVALID
    except OrchestratorError as e:
        print(f"❌ {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise OrchestratorError(f"cannot read {name}: {e.strerror or e}") from None


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.messages import encode
    from orchestrator.validation import JobValidator, Rejection

    config = _load(args)
    outcome = JobValidator(config.validation).validate(_read_input(args.file))
    if isinstance(outcome, Rejection):
        for reason in outcome.reasons:
            print(f"❌ {reason}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(json.loads(encode(outcome)), indent=2))
    return EXIT_OK


def _print_config(args: argparse.Namespace) -> int:
    print(json.dumps(config_as_dict(_load(args)), indent=2))
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.submit import submit

    config = _load(args)
    return submit(config, _read_input(args.file), wait=args.wait, timeout=args.timeout)


def _run(args: argparse.Namespace) -> int:
    from orchestrator.app import run

    return run(_load(args))


if __name__ == "__main__":
    sys.exit(main())
