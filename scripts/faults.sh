#!/usr/bin/env bash
# Run the fault-injection suite alone (tests marked `faults`) and print "N cases, N passed".
# Usage: ./scripts/faults.sh [pytest args]
set -uo pipefail
source "$(dirname "$0")/_venv.sh" test,distributed
log=$(mktemp)
python -m pytest -m faults -q -p no:randomly "$@" | tee "$log"
status=${PIPESTATUS[0]}
summary=$(tail -n 1 "$log")
passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
failed=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
errors=$(grep -oE '[0-9]+ error' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
skipped=$(grep -oE '[0-9]+ skipped' <<<"$summary" | grep -oE '[0-9]+' || echo 0)
echo "$((passed + failed + errors + skipped)) cases, $passed passed"
rm -f "$log"
exit "$status"
