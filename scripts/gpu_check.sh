#!/usr/bin/env bash
# The GPU checks of the benchmark issue, in one call (needs CUDA; roughly 8 minutes on one GPU):
# at 360x480 and at 720x960 (camvid_tiny frames upscaled), with camseg's CUDA defaults (fp16,
# channels-last, pinned memory):
#   - train: one epoch of camseg vs plain fastai, 3 alternating runs: images/s, peak GPU memory,
#     and the epoch time scaled to 600 images (CamVid's training set);
#   - predict: batched camseg predict vs a per-image learn.predict loop over 50 frames;
#   - data: DataLoader images/s with and without data.cache.
# Numbers land in bench/gpu.json (or $OUT/gpu.json) and are printed at the end.
# Usage: ./scripts/gpu_check.sh [path/to/camvid_tiny]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
data=${1:-../shared/data/camvid_tiny}
out=${OUT:-bench}/gpu.json
mkdir -p "$(dirname "$out")"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
for size in 360x480 720x960; do
  python scripts/bench.py train --device cuda --size "$size" --data "$data" --out "$out"
  python scripts/bench.py predict --device cuda --size "$size" --n 50 --data "$data" --out "$out"
  python scripts/bench.py data --device cuda --size "$size" --n 100 --data "$data" --out "$out"
done
python - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for key, v in sorted(r.items()):
    if key.startswith("train_"):
        print(f"{key}: camseg {v['camseg_images_per_s']} vs plain fastai "
              f"{v['plain_fastai_images_per_s']} images/s; {v['seconds_per_600_images']} s per 600 "
              f"images; peak GPU {v['camseg_peak_gpu_mb']} vs {v['plain_fastai_peak_gpu_mb']} MB")
    elif key.startswith("predict_"):
        print(f"{key}: camseg {v['camseg_images_per_s']} vs learn.predict "
              f"{v['learn_predict_images_per_s']} images/s ({v['speedup']}x)")
    elif key.startswith("data"):
        print(f"{key}: {v['no_cache_images_per_s']} -> {v['cache_images_per_s']} images/s with "
              f"the cache ({v['speedup']}x), auto workers {v['num_workers_auto']}")
PY
