#!/usr/bin/env bash
# Create .venv and install the project with its test extras (again only when the packaging files
# change), then make sure RabbitMQ and Redis are listening and promtool is installed (for the
# deploy/prometheus tests; never fatal). Sourced by scripts/test and scripts/quickstart; safe to run
# on its own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    echo "🔄 creating .venv" >&2
    "$python" -m venv .venv
fi
stamp=.venv/.installed-$(cat setup.cfg setup.py pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
    echo "🔄 installing the project with its test extras" >&2
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e '.[test]'; } \
        >.venv/install.log 2>&1; then
        tail -n 30 .venv/install.log >&2
        echo "❌ installing the project failed; the whole log is .venv/install.log" >&2
        exit 1
    fi
    rm -f .venv/.installed-* && touch "$stamp"
fi
scripts/services.sh
scripts/promtool.sh
