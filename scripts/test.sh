#!/usr/bin/env bash
# Set up .venv with the test extras (first run only), then lint, check the import layers and run
# the whole test suite.
# Usage: ./scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test,distributed
# The report test renders report.html in Debian's headless Chromium; install it once if we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will be skipped"
fi
ruff check .
ruff format --check .
lint-imports  # the floors of docs/architecture.md (contract in pyproject.toml)
python -m pytest "$@"
