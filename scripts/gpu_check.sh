#!/usr/bin/env bash
# The GPU checks of the benchmark issue in one call, with the Python that already has PyTorch:
# no venv, no network. Each step is a scripts/bench.py benchmark with a time limit; a failed step
# is logged and the next one still runs. About 8 minutes at most on one GPU (--budget).
#
#   scripts/gpu_check.sh [--wheels DIR] [--data DIR] [--out DIR] [--device cuda|cpu] [--quick]
#
# --wheels DIR  install every wheel under DIR, subfolders too (scripts/wheelhouse.sh), into
#               OUT/site with pip --no-index --no-deps and put that on PYTHONPATH, so the
#               preinstalled torch is the one used; compiled to bytecode there once, or each
#               step's processes would compile fastai, pandas, scipy, ... again (3.8 s a process
#               here, measured: 8.8 s against 5.0 s to import camseg's training code)
# --data DIR    camvid_tiny (default ../shared/data/camvid_tiny, else gpu_data/camvid_tiny)
# --out DIR     everything is written here (default bench/gpu): summary.json, steps.tsv,
#               results/STEP.json (each step's numbers), logs/STEP.{out,err}, failures.log
# --device      cuda (default) or cpu; on a CPU the GPU-only steps are skipped
# --quick       each step at a toy size on 16 frames: a dry run of this script (with --device cpu)
# --budget S    seconds for the whole check (default 470); a step gets at most what is left
# PYTHON (default python3) is the interpreter with PyTorch. camseg is this checkout's (it comes
# first on PYTHONPATH), so the check measures the code as it stands.
#
# Steps, in order of what matters most:
#   env        GPU, torch / CUDA / cuDNN versions, where torch, fastai and camseg come from
#   train360   camseg vs plain fastai (scripts/plain_fastai.py), one epoch each, alternating:
#   train720   images/s, seconds per 600 images, peak GPU memory; bs 8 at 360x480, bs 3 at 720x960
#   predict    720x960 PNGs -> index masks on disk: camseg predict vs a learn.predict loop
#   data       DataLoader images/s at 720x960, with and without data.cache, auto and 2 workers
#   precision  training images/s, fp16 (fastai's, loss scaling) vs bf16 autocast    (GPU only)
#   cudnn      train.deterministic false (cudnn.benchmark on) vs true               (GPU only)
#   compile    train.compile false vs true                                          (GPU only)
# Exit status 1 when any step failed, 2 for a bad command line.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v "${PYTHON:-python3}") || { echo "gpu_check.sh: no ${PYTHON:-python3}" >&2; exit 2; }
[ "${py#/}" = "$py" ] && py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # steps run in OUT
start=$SECONDS

usage() { sed -n '6p' "$0" | sed 's/^# *//' >&2; exit 2; }
wheels="" data="" out=$repo/bench/gpu device=cuda quick=0 budget=470
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) wheels=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --budget) budget=$2; shift 2 ;;
    *) usage ;;
  esac
done
case $device in cuda | cuda:* | cpu) ;; *) usage ;; esac
if [ -z "$data" ]; then
  for d in "$repo/../shared/data/camvid_tiny" "$repo/gpu_data/camvid_tiny"; do
    [ -d "$d" ] && data=$d && break
  done
fi
if [ -z "$data" ] || [ ! -f "$data/codes.txt" ]; then
  echo "gpu_check.sh: no camvid_tiny at '${data:-../shared/data/camvid_tiny}'; give --data" >&2
  exit 2
fi
if [ -n "$wheels" ] && [ ! -d "$wheels" ]; then
  echo "gpu_check.sh: --wheels $wheels is not a folder" >&2
  exit 2
fi
data=$(cd "$data" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/logs" "$out/results" "$out/steps.tsv" "$out/failures.log" "$out/summary.json"
mkdir -p "$out/logs" "$out/results"
: >"$out/steps.tsv"
deadline=$((start + budget))

record() {  # record STEP STATUS EXIT_CODE SECONDS NOTE
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$out/steps.tsv"
  printf '%-10s %-8s %7s s  %s\n' "$1" "$2" "$4" "$5"
}

step() {  # step NAME LIMIT_SECONDS COMMAND...: run in OUT, logs in OUT/logs
  local name=$1 limit=$2
  shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 15 ]; then
    record "$name" failed - 0 "not run: the --budget of ${budget}s is spent"
    echo "== $name: not run, the budget is spent" >>"$out/failures.log"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc seconds note=""
  t0=$(date +%s.%N)
  (cd "$out" && timeout --kill-after=10 "$limit" "$@") >"$out/logs/$name.out" 2>"$out/logs/$name.err"
  rc=$?
  seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then
    record "$name" ok 0 "$seconds" ""
    return
  fi
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && note="timed out after ${limit}s; "
  note+="$(grep -v '^\s*$' "$out/logs/$name.err" | tail -n 1 | cut -c1-120)"
  record "$name" failed "$rc" "$seconds" "$note"
  {
    echo "== $name: exit code $rc after ${seconds}s: $*"
    tail -n 25 "$out/logs/$name.err"
  } >>"$out/failures.log"
}

skip() {  # skip NAME REASON
  record "$1" skipped - 0 "$2"
}

site=""
if [ -n "$wheels" ]; then
  site="$out/site"
  rm -rf "$site"
  mapfile -t whl < <(find "$(cd "$wheels" && pwd)" -name '*.whl' | sort)
  if "$py" -m pip --version >/dev/null 2>&1; then
    # --no-deps: every wheel is named, and pip must not go looking for torch
    step install 240 "$py" -m pip install --quiet --no-index --no-deps --target "$site" "${whl[@]}"
  else  # a Python without pip: a wheel is a zip of what goes into site-packages
    step install 240 "$py" -c 'import compileall, sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])
compileall.compile_dir(sys.argv[1], quiet=1, workers=0)' "$site" "${whl[@]}"
  fi
fi
export PYTHONPATH="$repo${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"

if [ "$quick" = 1 ]; then
  # 4 validation and 12 training frames: seconds per run on a CPU
  small="$out/data"
  rm -rf "$small"
  mkdir -p "$small/images" "$small/labels"
  cp "$data/codes.txt" "$small/"
  grep -v '^\s*$' "$data/valid.txt" | head -n 4 >"$small/valid.txt"
  {
    cat "$small/valid.txt"
    ls "$data/images" | grep -vxFf "$data/valid.txt" | head -n 12
  } | while read -r name; do
    cp "$data/images/$name" "$small/images/"
    cp "$data/labels/${name%.*}_P.png" "$small/labels/"
  done
  data=$small
fi

bench() {  # bench STEP LIMIT SUBCOMMAND ARGS...: one scripts/bench.py run, numbers in results/
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$py" "$repo/scripts/bench.py" "$@" --device "$device" --data "$data" \
    --out "$out/results/$name.json"
}

if [ "$quick" = 1 ]; then
  toy=(--arch resnet18 --repeats 1)
  bench env 60 env
  bench train360 300 train --size 64x96 --batch-size 8 "${toy[@]}"
  bench train720 300 train --size 64x96 --batch-size 3 "${toy[@]}"
  bench predict 300 predict --size 64x96 --n 6 "${toy[@]}"
  bench data 300 data --size 64x96 --n 12
else
  bench env 60 env
  bench train360 150 train --size 360x480 --batch-size 8 --repeats 2
  bench train720 150 train --size 720x960 --batch-size 3 --repeats 2
  bench predict 90 predict --size 720x960 --n 100 --repeats 2
  bench data 90 data --size 720x960 --n 100
fi
for what in precision cudnn compile; do
  if [ "$device" = cpu ]; then
    skip "$what" "GPU only"
  elif [ "$quick" = 1 ]; then
    bench "$what" 300 "$what" --size 64x96 --batch-size 8 "${toy[@]}"
  else
    limit=90
    [ "$what" = compile ] && limit=150  # compiling the U-Net is most of this step
    bench "$what" "$limit" "$what" --size 360x480 --batch-size 8
  fi
done

"$py" - "$out" "$device" "$quick" "$((SECONDS - start))" <<'PY'
import json
import sys
from pathlib import Path

out, device, quick, total = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, rc, seconds, note = line.split("\t")
    steps.append({"step": name, "status": status, "exit_code": rc, "seconds": float(seconds),
                  "note": note})
numbers = {}
for path in sorted((out / "results").glob("*.json")):
    for section, data in json.loads(path.read_text()).items():
        numbers[path.stem] = {"section": section} | {
            k: v for k, v in data.items()
            if isinstance(v, (int, float, str)) and k not in ("command", "when")
        }
ok = all(s["status"] != "failed" for s in steps)
summary = {"ok": ok, "device": device, "quick": quick, "seconds": int(total), "steps": steps,
           "numbers": numbers}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

print(f"\n{'step':<10} {'status':<8} {'seconds':>8}  note")
for s in steps:
    print(f"{s['step']:<10} {s['status']:<8} {s['seconds']:>8.1f}  {s['note']}")
print(f"{'total':<10} {'':<8} {float(total):>8.1f}")
print()
for step, values in numbers.items():
    shown = ", ".join(f"{k} {v}" for k, v in values.items()
                      if k != "section" and not isinstance(v, str))
    print(f"{step} ({values['section']}): {shown}")
if "environment" in {v["section"] for v in numbers.values()}:
    env = next(v for v in numbers.values() if v["section"] == "environment")
    print(f"on {env.get('gpu', 'cpu')}: torch {env['torch']} (CUDA {env['cuda']}), "
          f"camseg from {env['camseg_path']}, fastai from {env['fastai_path']}")
print(f"\n{'all steps ok' if ok else 'FAILED: see ' + str(out / 'failures.log')}; "
      f"summary in {out / 'summary.json'}")
sys.exit(0 if ok else 1)
PY
