"""A worker for tests and benchmarks: prints numbered lines at a steady rate, then exits.

``printer.py LINES RATE [EXIT_CODE [stamp [START_AT]]]``: ``LINES`` lines ``<deploymentId> line <n>``
(n from 0), about ``RATE`` per second (0: as fast as it can), flushed in small batches; then exits
with ``EXIT_CODE``. With ``stamp`` each line ends with `` t=<epoch seconds it was written>`` (for
lag); with ``START_AT`` (epoch seconds) it starts printing then, so that many workers started one
after another print together.
"""

from __future__ import annotations

import os
import sys
import time

BATCH_SECONDS = 0.01


def main(argv: list[str]) -> int:
    lines, rate = int(argv[1]), float(argv[2])
    code = int(argv[3]) if len(argv) > 3 else 0
    stamp = len(argv) > 4 and argv[4] == "stamp"
    if len(argv) > 5:
        time.sleep(max(0.0, float(argv[5]) - time.time()))
    name = os.environ.get("DEPLOYMENT_ID", "job")
    out = sys.stdout
    started = time.monotonic()
    per_batch = max(1, int(rate * BATCH_SECONDS)) if rate else 1000
    n = 0
    while n < lines:
        end = min(lines, n + per_batch)
        suffix = f" t={time.time():.6f}\n" if stamp else "\n"
        out.write("".join(f"{name} line {i}{suffix}" for i in range(n, end)))
        out.flush()
        n = end
        if rate:
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
