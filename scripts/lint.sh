#!/usr/bin/env bash
# Static checks, in the venv made by scripts/setup.sh. One command a line; any failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
lint-imports --no-cache    # the layers of docs/architecture.md and "training never sees the gold judge"
ruff check src tests       # pyflakes, pycodestyle, isort, bugbear, pyupgrade (pyproject's [tool.ruff])
mypy src/tiller            # types ([tool.mypy])
