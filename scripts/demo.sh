#!/usr/bin/env bash
# First run on a fresh machine: set up .venv, generate the synthetic street scenes (data/synth),
# train a U-Net on them on the CPU, score it, and segment some validation scenes.
# Re-running re-uses .venv and the scenes; each run gets a new folder runs/demo, demo-2, ...
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
camseg data check --config configs/demo.yaml
camseg train --config configs/demo.yaml --name demo
run=$(ls -td runs/demo runs/demo-[0-9]* 2>/dev/null | head -n 1 || true)
camseg evaluate --run "$run"
camseg predict 'data/synth/images/synth_0019*.png' --run "$run"
echo "report: $run/report.html"
