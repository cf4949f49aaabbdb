"""A worker for tests: records when it ran in ``$INTERVAL_DIR/<deploymentId>``, after a short sleep.

The intervals of every worker, from every orchestrator process, show how many ran at once.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    started = time.time()
    time.sleep(float(os.environ.get("INTERVAL_SECONDS", "1")))
    record = Path(os.environ["INTERVAL_DIR"]) / os.environ["DEPLOYMENT_ID"]
    record.write_text(f"{started} {time.time()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
