#!/usr/bin/env bash
# Collect into DIR the wheels camseg needs on an offline machine that already has PyTorch and
# torchvision (a CUDA image, say): fastai and everything it and camseg pull in, and camseg's own
# wheel built from this checkout. Never torch, torchvision, nvidia-* or triton.
#
#   scripts/wheelhouse.sh DIR [--python-version 3.12] [--platform TAG ...]
#                             [--torch 2.11.0] [--torchvision 0.26.0]
#
# pip resolves the set exactly as it would on a machine with those torch and torchvision
# versions: it is offered stand-in wheels of them (no files, no requirements), pinned by a
# constraint, and the stand-ins are dropped afterwards. On the target machine:
#   pip install --no-index --no-deps --target SITE DIR/*.whl   (scripts/gpu_check.sh --wheels DIR)
# --no-deps because pip would otherwise look for torch in DIR; the set is complete without it.
#
# spacy gets a stand-in too: fastai requires spacy<4 but only fastai.text imports it, which
# camseg never does, and spacy with its tree (blis, thinc, srsly, ...) is 56 of 165 MB. So an
# install from DIR runs camseg but not fastai.text, and `pip check` names spacy as missing.
#
# --platform (repeatable) defaults to manylinux 2.17 .. 2.28 on x86_64, the glibc range that
# CUDA torch wheels run on: pip does not widen a manylinux tag to older ones by itself.
# PYTHON (default python3) is the interpreter whose pip downloads; it needs the package index.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}

usage() { sed -n '6,7p' "$0" | sed 's/^# *//' >&2; exit 2; }
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
dir=$1
shift
pyver=3.12
torch_version=2.11.0
vision_version=0.26.0
platforms=()
while [ $# -gt 0 ]; do
  case $1 in
    --python-version) pyver=$2; shift 2 ;;
    --platform) platforms+=("$2"); shift 2 ;;
    --torch) torch_version=$2; shift 2 ;;
    --torchvision) vision_version=$2; shift 2 ;;
    *) usage ;;
  esac
done
if [ ${#platforms[@]} -eq 0 ]; then
  for minor in $(seq 28 -1 17); do platforms+=("manylinux_2_${minor}_x86_64"); done
  platforms+=(manylinux2014_x86_64)
fi
if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
  echo "wheelhouse.sh: $dir is not empty; give a new folder (old wheels would mix with new)" >&2
  exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# camseg's wheel, built from a copy so the checkout gets no build/ or egg-info folders
mkdir -p "$work/src"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/camseg" "$work/src/"
"$py" -m pip wheel --quiet --no-deps --wheel-dir "$work/camseg" "$work/src"

# Stand-ins for the preinstalled torch and torchvision, and for spacy. The local label keeps pip
# from taking a real wheel of the same version from the index (it ranks a binary wheel higher).
"$py" - "$work/stubs" "torch==$torch_version" "torchvision==$vision_version" spacy==3.8.0 \
  >"$work/constraints.txt" <<'PY'
import base64, hashlib, sys, zipfile
from pathlib import Path

out = Path(sys.argv[1])
out.mkdir()
for spec in sys.argv[2:]:
    name, version = spec.split("==")
    version = version.split("+")[0] + "+standin"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record += f"{path},sha256={digest.decode()},{len(text)}\n"
    files[f"{info}/RECORD"] = record + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(out / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    print(f"{name}=={version}")
PY

abi=cp${pyver/./}
"$py" -m pip download --quiet --only-binary=:all: --python-version "$pyver" --implementation cp \
  --abi "$abi" "${platforms[@]/#/--platform=}" --find-links "$work/stubs" \
  --constraint "$work/constraints.txt" --dest "$work/download" "$work"/camseg/camseg-*.whl
for whl in "$work"/download/*.whl; do
  case $(basename "$whl") in
    *+standin-*) ;;
    *) mv "$whl" "$dir/" ;;
  esac
done
if ls "$dir" | grep -iE '^(torch|torchvision|triton|nvidia_[a-z0-9_]*|spacy)-'; then
  echo "wheelhouse.sh: the wheels above should not be here (PyTorch's own, or spacy)" >&2
  exit 1
fi
mib=$(du -sb "$dir" | awk '{ printf "%.1f", $1 / 1048576 }')
echo "$(ls "$dir" | wc -l) wheels, $mib MiB in $dir (Python $pyver, ${platforms[0]})"
