#!/usr/bin/env bash
# First run on a fresh machine: set up .venv, generate the synthetic street scenes (data/synth),
# train a U-Net on them on the CPU, score it, and segment some validation scenes.
# Re-running re-uses .venv and the scenes; each run gets a new folder runs/demo, demo-2, ...
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
camseg train --config demo.yaml --name demo   # generates data/synth on first use
camseg data check --config demo.yaml
camseg evaluate                 # the newest finished run: the one just trained
camseg predict 'data/synth/images/synth_0019*.png'
echo "report: $(ls -td runs/demo runs/demo-[0-9]* 2>/dev/null | head -n 1)/report.html"
