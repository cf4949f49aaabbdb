#!/usr/bin/env python3
"""Validations per second of the seed's sample message, against json.loads of the same bytes.

Usage: .venv/bin/python scripts/bench_validation.py [--repeats N] [--seconds S] [FILE]

Each measurement is a timed loop of a calibrated number of calls; the loops of the two alternate and
the best of several repeats is reported (the least disturbed by the rest of the machine). The ratio
says how many json.loads one validation costs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.config import ValidationConfig
from orchestrator.validation import JobValidator, Rejection

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "build.json"
DEFAULT_REPEATS = 7
DEFAULT_SECONDS = 0.3


def calibrate(work: Callable[[], object], seconds: float) -> int:
    """How many calls of ``work`` take about ``seconds``."""
    iterations = 1
    while True:
        start = time.perf_counter()
        for _ in range(iterations):
            work()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 5:
            return max(1, int(iterations * seconds / elapsed))
        iterations *= 2


def best_rates(works: dict[str, Callable[[], object]], repeats: int, seconds: float) -> dict[str, float]:
    """Calls per second of each of ``works``: the best of ``repeats`` timed loops of about ``seconds``.

    The loops of the different works alternate, so that both see the same machine (load, clock).
    """
    iterations = {name: calibrate(work, seconds) for name, work in works.items()}
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            for _ in range(iterations[name]):
                work()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: iterations[name] / best[name] for name in works}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "file", nargs="?", type=Path, default=SAMPLE, help="job message (default: the seed's)"
    )
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="length of one timed loop")
    args = parser.parse_args()

    raw = args.file.read_bytes()
    validator = JobValidator(ValidationConfig())
    outcome = validator.validate(raw)
    if isinstance(outcome, Rejection):
        raise SystemExit(f"{args.file} is not valid: {outcome.reason}")

    rates = best_rates(
        {"validate": lambda: validator.validate(raw), "json.loads": lambda: json.loads(raw)},
        args.repeats,
        args.seconds,
    )
    validate_rate, loads_rate = rates["validate"], rates["json.loads"]
    print(f"message: {args.file.name}, {len(raw)} bytes")
    print(f"JobValidator.validate: {validate_rate:12,.0f} /s  ({1e6 / validate_rate:6.2f} µs each)")
    print(f"json.loads:            {loads_rate:12,.0f} /s  ({1e6 / loads_rate:6.2f} µs each)")
    print(f"ratio (validate cost / json.loads cost): {loads_rate / validate_rate:.2f}")


if __name__ == "__main__":
    main()
