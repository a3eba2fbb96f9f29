#!/usr/bin/env bash
# First run on a fresh machine: set up .venv, generate the synthetic street scenes and run the
# main job on them. Re-running re-uses .venv and the generated data.
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
camseg data check --config configs/demo.yaml
