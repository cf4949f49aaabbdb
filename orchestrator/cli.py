"""The ``orchestrator`` command: run, validate, config, submit, logs.

Every failure ends in one clear line on stderr (a config error: one line per problem) and a documented
exit code, never a traceback. A line about a dependency names its endpoint as ``host:port`` (never a
password) and the cause: connection refused, DNS, authentication, virtual host, TLS, timeout, a
missing exchange or queue.

The global options ``--config FILE``, ``--log-format``, ``--log-level`` and ``--log-stream`` go before
or after the command (``orchestrator --config f.ini config`` = ``orchestrator config --config f.ini``).
``run`` writes its log lines to stdout (supervisord's ``.out.log``), the other commands to stderr,
since their stdout is their result; ``--log-stream`` chooses otherwise. A command's own failure line
is on stderr either way.

Exit codes (every command):

===== ==============================================================================================
code  meaning
===== ==============================================================================================
0     success. ``run``: stopped cleanly; ``validate``: every file valid; ``config``: the config is
      valid; ``submit``: published (``--wait``: the job succeeded, was stopped, or a deploy is running);
      ``logs``: the log was printed (``--follow``: to its end)
1     failed. ``submit --wait``: the job failed or was rejected; ``logs``: there is no log for the
      deployment (unknown, not started yet, or expired); ``run``: start-up failed (e.g. the
      HTTP port is taken); an unexpected internal error (one line; ``--log-level DEBUG`` shows its
      traceback)
2     invalid input: a wrong option or option value, an invalid config (every problem, one line
      each, including what ``run`` checks building its launchers), an invalid job, a file that cannot
      be read; ``validate`` with several files: any of them invalid
3     ``submit --wait``: no final event within ``--timeout``; ``logs --follow``: the log did not end
      within ``--timeout``; ``run``: an actor exceeded its restart
      budget (supervisord restarts the process)
4     a dependency cannot be used: RabbitMQ or Redis unreachable (refused, DNS, timeout, TLS),
      authentication failed, virtual host refused, exchange or queue missing, access refused
130   interrupted (Ctrl-C)
===== ==============================================================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn

from orchestrator import __version__
from orchestrator.config import Config, check_launchers, config_as_dict, load_config
from orchestrator.errors import (
    BrokerError,
    ConfigError,
    CoordinationError,
    OrchestratorError,
    SinkError,
)
from orchestrator.logs import (
    DEFAULT_COMMAND_LOG_STREAM,
    DEFAULT_RUN_LOG_STREAM,
    WARNING,
    LogStream,
    emoji,
    setup_logging,
)
from orchestrator.redaction import redact_text, redact_url

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_INVALID: Final = 2
#: ``submit --wait`` timed out (:data:`orchestrator.submit.EXIT_TIMEOUT`); ``run``: restart budget.
EXIT_TIMEOUT: Final = 3
EXIT_UNAVAILABLE: Final = 4
EXIT_INTERRUPTED: Final = 130

LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: Final = ("text", "json")
LOG_STREAMS: Final = ("stdout", "stderr")


class InputError(OrchestratorError):
    """A file named on the command line cannot be read (exit 2)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason
        super().__init__(f"cannot read {name}: {reason}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INVALID, f"❌ {self.prog}: {message} (see {self.prog} --help)\n")


def _global_options(parser: argparse.ArgumentParser, *, on_command: bool) -> None:
    """The options accepted before and after the command. After it, their default is SUPPRESS, so
    a value given before the command is not reset by the command's own parser."""

    def default(value: str | None) -> str | None:
        return argparse.SUPPRESS if on_command else value

    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help="INI config file (ORCH_* variables override it)",
    )
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=default("text"), help="log line format (default text)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default("INFO"),
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)",
    )
    parser.add_argument(
        "--log-stream",
        choices=LOG_STREAMS,
        default=default(None),
        help=f"where log lines go (default {DEFAULT_RUN_LOG_STREAM} for run, "
        f"{DEFAULT_COMMAND_LOG_STREAM} for the other commands, whose stdout is their result)",
    )


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds (got {text!r})") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text})")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 (got {text!r})")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description="Blacktree Build Orchestrator: runs one worker task per job from RabbitMQ.",
        epilog="Exit codes: 0 ok, 1 failed, 2 invalid input or config, 3 timed out (submit --wait, "
        "logs --follow) or "
        "restart budget exceeded (run), 4 RabbitMQ or Redis unavailable, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, on_command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        _global_options(command_parser, on_command=True)
        return command_parser

    command("run", "run the orchestrator until SIGTERM")

    validate = command("validate", "validate job messages; exit 0 if every one is valid, 2 if any is invalid")
    validate.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="job JSON file, or - for standard input; with one file the normalised job is printed, "
        "with several one result line per file",
    )

    command("config", "check the config as run does and print it, secrets redacted")

    submit = command("submit", "publish a job to the execute queue")
    submit.add_argument("file", metavar="FILE", help="job JSON file, or - for standard input")
    submit.add_argument("--wait", action="store_true", help="follow the job's events to its end")
    submit.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="SECONDS",
        help="seconds to wait with --wait (default 600); exit 3 when no final event came",
    )
    submit.add_argument(
        "--logs", action="store_true", help="with --wait, print the job's build log between its events"
    )

    logs = command("logs", "print a job's build log (its backlog; with --follow, then live to its end)")
    logs.add_argument("deployment_id", metavar="DEPLOYMENT_ID", help="the job's deploymentId")
    logs.add_argument(
        "--attempt", type=_positive_int, metavar="N", help="only attempt N (default: every attempt)"
    )
    logs.add_argument(
        "--follow",
        action="store_true",
        help="after the backlog, print lines as they come until the job's last attempt ends",
    )
    logs.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="SECONDS",
        help="seconds to follow (default 600); exit 3 when the log has not ended by then",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_format, _log_stream(args))
        if args.command == "validate":
            return _validate(args)
        if args.command == "config":
            return _print_config(args)
        if args.command == "submit":
            return _submit(args)
        if args.command == "logs":
            return _logs(args)
        return _run(args)
    except ConfigError as e:
        for problem in e.problems:
            _fail(f"config: {problem}")
        return EXIT_INVALID
    except InputError as e:
        _fail(str(e))
        return EXIT_INVALID
    except (BrokerError, CoordinationError, SinkError) as e:
        _fail(str(e))
        return EXIT_UNAVAILABLE
    except OrchestratorError as e:
        _fail(str(e))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``orchestrator validate *.json | head -1``): nothing left to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except Exception as e:  # the promise: one line, never a traceback
        log.debug("unexpected error", exc_info=True)
        _fail(f"unexpected error: {type(e).__name__}: {e} (--log-level DEBUG shows where)")
        return EXIT_FAILURE


def _log_stream(args: argparse.Namespace) -> LogStream:
    chosen: LogStream | None = args.log_stream
    if chosen is not None:
        return chosen
    return DEFAULT_RUN_LOG_STREAM if args.command == "run" else DEFAULT_COMMAND_LOG_STREAM


def _fail(line: str) -> None:
    print(f"❌ {redact_text(line)}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _load_as_run(args: argparse.Namespace) -> Config:
    """The config with every check ``run`` makes (those of its launchers too), without starting."""
    config = _load(args)
    problems: list[str] = []
    check_launchers(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as e:
        raise InputError(name, e.strerror or str(e)) from None


def _validate(args: argparse.Namespace) -> int:
    from orchestrator.messages import encode
    from orchestrator.validation import JobValidator, Rejection

    validator = JobValidator(_load(args).validation)
    if len(args.files) == 1:
        outcome = validator.validate(_read_input(args.files[0]))
        if isinstance(outcome, Rejection):
            for reason in outcome.reasons:
                print(f"❌ {reason}", file=sys.stderr)
            return EXIT_INVALID
        print(json.dumps(json.loads(encode(outcome)), indent=2))
        return EXIT_OK
    # Several files: one result line each, on stdout (the report), in the order given.
    invalid = 0
    for name in args.files:
        label = "(standard input)" if name == "-" else name
        try:
            outcome = validator.validate(_read_input(name))
        except InputError as e:
            print(f"❌ {label}: cannot read ({e.reason})")
            invalid += 1
            continue
        if isinstance(outcome, Rejection):
            print(f"❌ {label}: " + "; ".join(outcome.reasons))
            invalid += 1
        else:
            print(f"✅ {label}: valid {outcome.type} job {outcome.deployment_id}")
    return EXIT_INVALID if invalid else EXIT_OK


def _print_config(args: argparse.Namespace) -> int:
    print(json.dumps(config_as_dict(_load_as_run(args)), indent=2))
    return EXIT_OK


def _submit(args: argparse.Namespace) -> int:
    from orchestrator.submit import submit

    config = _load(args)
    if args.logs and not args.wait:
        _fail("submit: --logs needs --wait")
        return EXIT_INVALID
    return submit(config, _read_input(args.file), wait=args.wait, timeout=args.timeout, logs=args.logs)


def _logs(args: argparse.Namespace) -> int:
    from orchestrator.buildlogs.command import show_logs

    return show_logs(
        _load(args), args.deployment_id, attempt=args.attempt, follow=args.follow, timeout=args.timeout
    )


def _run(args: argparse.Namespace) -> int:
    from orchestrator.app import run

    config = _load_as_run(args)
    if args.config is None:
        log.warning(
            "no --config: built-in defaults in use (with any ORCH_* variables): broker %s, execute queue "
            "%s, local state dir %s, HTTP port %s:%d",
            ",".join(redact_url(url) for url in config.broker.urls),
            config.broker.execute_queue,
            config.local.state_dir,
            config.http.host,
            config.http.port,
            extra=emoji(WARNING),
        )
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
