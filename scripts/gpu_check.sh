#!/usr/bin/env bash
# One prepared GPU check (run on a machine with CUDA): train camvid_tiny upscaled to 360x480 for
# one epoch per stage with fp16 + channels_last, then the predict benchmark on CUDA. Prints
# images/s and peak GPU memory; numbers also land in bench/results.json and runs/gpu-*/.
# Usage: ./scripts/gpu_check.sh [path/to/camvid_tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
data=${1:-../shared/data/camvid_tiny}
python - "$data" <<'PY'
import json, sys, time, torch
from pathlib import Path
from typer.testing import CliRunner
from camseg.cli import app
assert torch.cuda.is_available(), "no CUDA device"
data = sys.argv[1]
torch.cuda.reset_peak_memory_stats()
t = time.time()
r = CliRunner().invoke(app, ["train", "--config", "configs/tiny.yaml", "--name", "gpu-360x480",
    "--set", f"data.root={data}", "--set", "data.size=[360,480]", "--set", "train.device=cuda",
    "--set", "train.stages[0].epochs=1", "--set", "train.stages[1].epochs=1", "--no-progress"])
print(r.output)
run = sorted(Path("runs").glob("gpu-360x480*"), key=lambda p: p.stat().st_mtime)[-1]
s = json.loads((run / "summary.json").read_text())
print(f"GPU {torch.cuda.get_device_name(0)}: train 360x480 fp16 {s['images_per_second']:.1f} images/s, "
      f"{s['seconds_per_epoch']:.1f} s/epoch (85 images), peak GPU memory "
      f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, wall {time.time() - t:.0f} s")
PY
python scripts/bench.py predict --device cuda --n 50 --size 360x480
python scripts/bench.py predict --device cuda --n 50 --size 720x960
