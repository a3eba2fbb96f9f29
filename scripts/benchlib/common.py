"""What every benchmark shares: the results file (one section per benchmark), the machine, camseg
subprocesses that report their peak memory, and the inputs (upscaled frames, untrained models,
fastai's per-image `learn.predict` baseline); also `env`, the benchmark of what runs."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from camseg.model.files import ModelFile

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid_tiny"
Size = tuple[int, int]

# A camseg run that prints its peak RSS (and peak GPU memory) as its last stdout line
CAMSEG_WITH_RSS = """
import json, resource, sys
from camseg.cli import main
sys.argv = ["camseg", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
import torch
if torch.cuda.is_available() and torch.cuda.is_initialized():
    out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
print(json.dumps(out))
sys.exit(code)
"""


class BenchError(Exception):
    """A benchmark could not run; main prints the message and exits 1."""


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
# Set to run a faster CPU's kernels as a slower kind's (e.g. AVX2 on an AVX512 machine)
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_kind() -> dict:
    """The CPU's model name and the vector flags that decide which kernels run, and any
    environment variable that limits the kernels torch and oneDNN use."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    kind = {"cpu": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}
    limits = {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}
    return kind | ({"isa_limits": limits} if limits else {})


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        **cpu_kind(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


@dataclass(frozen=True)
class Results:
    """Where the numbers go: one section of a JSON file per benchmark, with the command line."""

    path: Path
    command: str
    quick: bool = False

    def section(self, name: str, size: Size, default: Size) -> str:
        """The size is part of the key unless it is the benchmark's default (or the run is
        --quick, whose toy sizes go to their own file)."""
        if self.quick or tuple(size) == default:
            return name
        return f"{name}_{size[0]}x{size[1]}"

    def save(self, section: str, data: dict) -> None:
        """Merge one benchmark's numbers into the file and print them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        results = json.loads(self.path.read_text()) if self.path.is_file() else {}
        results[section] = {"command": self.command, **data} | {
            "machine": machine(),
            "when": time.strftime("%Y-%m-%d %H:%M"),
        }
        self.path.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps({section: data}, indent=2), flush=True)


def parse_size(text: str) -> Size:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def camseg_command(verb: str, *args: str, sets: Sequence[str] = (), rss: bool = False) -> list[str]:
    """`python -m camseg VERB ARGS --set S ...`; rss: the process also prints its peak memory as
    a last JSON line (CAMSEG_WITH_RSS)."""
    head = [sys.executable, "-c", CAMSEG_WITH_RSS] if rss else [sys.executable, "-m", "camseg"]
    return [*head, verb, *args, *(a for s in sets for a in ("--set", s))]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a benchmark subprocess; on failure pass its stderr on and stop."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise BenchError(f"exit code {proc.returncode}: {shlex.join(cmd)}")
    return proc


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def upscaled_frames(frames: list[Path], dst: Path, n: int, size: Size) -> list[Path]:
    """n frames resized (bilinear) to size (H, W) as PNGs, cycling through `frames`."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        src = frames[i % len(frames)]
        p = dst / f"f{i:04d}_{src.name}"
        Image.open(src).convert("RGB").resize(size[::-1], Image.BILINEAR).save(p)
        out.append(p)
    return out


def camvid_subset(data: Path, dst: Path, n_valid: int, n_train: int) -> Path:
    """The first n_valid validation and n_train training frames of a camvid-layout folder, with
    their labels, as a folder of their own (for --quick runs, which only check that it runs)."""
    valid = [n for n in (data / "valid.txt").read_text().split() if n][:n_valid]
    train = sorted(p.name for p in (data / "images").iterdir() if p.name not in set(valid))
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    (dst / "codes.txt").write_text((data / "codes.txt").read_text())
    (dst / "valid.txt").write_text("".join(f"{n}\n" for n in valid))
    for name in valid + train[:n_train]:
        shutil.copy(data / "images" / name, dst / "images" / name)
        label = f"{Path(name).stem}_P.png"
        shutil.copy(data / "labels" / label, dst / "labels" / label)
    return dst


def untrained_model_file(path: Path, arch: str, size: Size, codes: list[str]) -> Path:
    """A model.pth with random weights: speed does not depend on what the weights are."""
    from fastai.vision.learner import create_unet_model

    from camseg.config.load import load_config
    from camseg.model.files import model_meta, write_model_file
    from camseg.model.network import arch_fn

    cfg = load_config(None, [f"model.arch={arch}", "model.pretrained=false"]).model
    model = create_unet_model(arch_fn(arch), len(codes), size, pretrained=False)
    write_model_file(path, model, model_meta(cfg, codes, size))
    return path


def learn_predict(
    info: ModelFile, data: Path, size: Size, device: torch.device | str
) -> Callable[[Path], np.ndarray]:
    """The baseline, fastai's own way: a Learner around the same network, one learn.predict per
    image -> its mask."""
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from camseg.config.load import load_config
    from camseg.data import build_dataloaders, find_files

    sets = [f"data.root={data}", f"data.size=[{size[0]},{size[1]}]", "data.num_workers=0"]
    cfg = load_config(None, [*sets, "data.augment.enabled=false"])
    dls = build_dataloaders(cfg.data, find_files(cfg.data), device=device)
    model = info.build().eval().to(device)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(axis=1))
    learn.remove_cb(ProgressCallback)  # no bars in the timing
    return lambda p: np.asarray(learn.predict(p)[0], dtype=np.uint8)


def bench_env(results: Results, device: str) -> None:
    """Versions and import paths of what runs; fails when the device cannot multiply."""
    from importlib.metadata import PackageNotFoundError, version

    import fastai
    import torchvision

    import camseg

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    x = torch.ones(64, 64, device=device)
    product = float((x @ x).sum())  # runs a kernel: a broken driver fails here, not later
    try:
        camseg_dist = version("camseg")
    except PackageNotFoundError:
        camseg_dist = None
    info = {
        "device": device,
        "python": sys.executable,
        "python_version": platform.python_version(),
        "torch": torch.__version__,
        "torch_path": str(Path(torch.__file__).parent),
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fastai": fastai.__version__,
        "fastai_path": str(Path(fastai.__file__).parent),
        "camseg": camseg.__version__,
        "camseg_path": str(Path(camseg.__file__).parent),
        "camseg_installed": camseg_dist,
        "matmul_ok": product == 64.0**3,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info |= {
            "gpu": props.name,
            "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    results.save("environment", info)
