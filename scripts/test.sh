#!/usr/bin/env bash
# Set up .venv with the test extra (first run only), then lint and run the whole test suite.
# Usage: ./scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test,distributed
ruff check .
ruff format --check .
python -m pytest "$@"
