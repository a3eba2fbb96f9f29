#!/usr/bin/env python
"""Benchmarks that write their numbers to bench/results.json (merged by section).

    python scripts/bench.py predict [--device cpu] [--n 50] [--size 360x480] [--repeats 3]
    python scripts/bench.py train [--device cpu] [--size 96x128] [--batch-size 8] [--repeats 3]
    python scripts/bench.py data [--n 100] [--size 360x480]
    python scripts/bench.py bigphoto [--device cpu] [--size 360x480]
    python scripts/bench.py precision|cudnn|compile [--device cuda] [--size 360x480] [--repeats 1]
    python scripts/bench.py env [--device cuda]
    python scripts/bench.py --quick            # every benchmark, tiny sizes (CI runs this)

predict: camseg's batched predict against a plain per-image `learn.predict` loop over the same
images (camvid_tiny frames upscaled), alternating A/B, both writing index masks to disk.
train: one epoch of `camseg train` against one epoch of scripts/plain_fastai.py (the lesson-3
recipe) on camvid_tiny, same size, batch size, seed, workers and device, alternating A/B in
subprocesses.
data: DataLoader images/s at the training size from 960x720 sources, with and without data.cache.
bigphoto: peak RSS and seconds of one `camseg predict` process writing all three outputs for one
JPEG photo (a camvid_tiny frame upscaled) of 3000x2000 and of 10000x10000 (100 megapixels), and
for a frame at the model's size (what the process needs before any big image); the model is a
ResNet34 U-Net at --size with random weights.
accuracy: configs/tiny.yaml (the lesson-3 recipe) against configs/tiny-scratch.yaml on the real
camvid_tiny without ImageNet weights, 2 seeds each; acc_camvid and mIoU of the final epoch
(no picking the best epoch on the validation frames), and minutes per run.
precision, cudnn, compile: `camseg train` against itself with one setting changed, alternating:
fp16 (fastai's mixed precision, loss scaling) vs bf16 autocast (fp32 vs bf16 on a CPU);
train.deterministic false (cudnn.benchmark on) vs true; train.compile false vs true. Two epochs
a run: images/s of the second, after compiling and cuDNN's kernel search, and the first's seconds.
env: what runs (Python, torch, CUDA, cuDNN, GPU, fastai, camseg and where each is imported from),
after one matrix product on the device.
`all` (the default) runs predict, data, train, bigphoto and accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid_tiny"
Size = tuple[int, int]

# One unfrozen one-cycle stage: what both sides of an A/B training run
STAGE = "{{epochs: {epochs}, freeze: false, lr: 3.0e-3, pct_start: 0.9}}"

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

# Settings compared by `precision`, `cudnn` and `compile`: name -> --set overrides, A then B
SETTINGS: dict[str, dict[str, list[str]]] = {
    "precision": {
        "fp16": ["train.fp16=true", "train.bf16=false"],
        "bf16": ["train.fp16=false", "train.bf16=true"],
    },
    "cudnn": {
        "benchmark": ["train.deterministic=false"],
        "deterministic": ["train.deterministic=true"],
    },
    "compile": {"eager": ["train.compile=false"], "compiled": ["train.compile=true"]},
}
CPU_PRECISION = {  # fp16 training needs CUDA
    "fp32": ["train.fp16=false", "train.bf16=false"],
    "bf16": ["train.fp16=false", "train.bf16=true"],
}


class BenchError(Exception):
    """A benchmark could not run; main prints the message and exits 1."""


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
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


def train_frames(data: Path) -> int:
    """Frames in the training split: images/ less the names in valid.txt."""
    valid = set((data / "valid.txt").read_text().split())
    return sum(1 for p in (data / "images").iterdir() if p.name not in valid)


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


@dataclass(frozen=True)
class TrainRun:
    summary: dict
    epoch_seconds: list[float]  # from history.csv, training and validation
    process_seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float


def camseg_train(config: Path, name: str, out: Path, sets: Sequence[str]) -> TrainRun:
    """One `camseg train` process; its run folder is out/name."""
    t = time.perf_counter()
    proc = run(
        camseg_command(
            "train",
            "--config",
            str(config),
            "--no-progress",
            "--name",
            name,
            sets=[f"output.dir={out}", *sets],
            rss=True,
        )
    )
    seconds = time.perf_counter() - t
    measured = last_json(proc.stdout)
    with (out / name / "history.csv").open() as f:
        epochs = [float(row["seconds"]) for row in csv.DictReader(f)]
    return TrainRun(
        summary=json.loads((out / name / "summary.json").read_text()),
        epoch_seconds=epochs,
        process_seconds=seconds,
        peak_rss_mb=measured["peak_rss_mb"],
        peak_gpu_mb=measured.get("peak_gpu_mb", 0.0),
    )


def speed_sets(
    data: Path, size: Size, device: str, arch: str, batch_size: int, epochs: int
) -> list[str]:
    """Overrides of configs/tiny.yaml for a speed run: one unfrozen stage of `epochs`."""
    return [
        f"data.root={data}",
        f"data.size=[{size[0]},{size[1]}]",
        f"data.batch_size={batch_size}",
        f"train.device={device}",
        f"train.stages=[{STAGE.format(epochs=epochs)}]",
        f"model.arch={arch}",
    ]


def upscaled_frames(src: Path, dst: Path, n: int, size: Size) -> list[Path]:
    """n camvid_tiny frames resized to size (H, W), cycling through the set."""
    frames = sorted((src / "images").glob("*.png"))
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = dst / f"f{i:04d}_{frames[i % len(frames)].name}"
        Image.open(frames[i % len(frames)]).resize(size[::-1], Image.BILINEAR).save(p)
        out.append(p)
    return out


def untrained_model_file(path: Path, arch: str, size: Size, codes: list[str]) -> Path:
    """A model.pth with random weights: speed does not depend on what the weights are."""
    from fastai.vision.learner import create_unet_model

    from camseg.config import load_config
    from camseg.model import arch_fn, model_meta, write_model_file

    cfg = load_config(None, [f"model.arch={arch}", "model.pretrained=false"]).model
    model = create_unet_model(arch_fn(arch), len(codes), size, pretrained=False)
    write_model_file(path, model, model_meta(cfg, codes, size))
    return path


def bench_predict(
    results: Results,
    data: Path,
    size: Size,
    n: int,
    device_name: str,
    arch: str,
    batch_size: int | None,
    precision: str,
    repeats: int,
) -> None:
    from fastai.callback.progress import ProgressCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat

    from camseg.config import load_config
    from camseg.data import build_dataloaders, find_files
    from camseg.data.files import read_codes
    from camseg.model import read_model_file, resolve_device
    from camseg.predict import predict

    device = resolve_device(device_name)
    codes = read_codes(data / "codes.txt")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = upscaled_frames(data, tmp / "in", n, size)
        model_path = untrained_model_file(tmp / "model.pth", arch, size, codes)

        # B: the plain fastai way, one learn.predict per image
        cfg = load_config(
            None,
            [
                f"data.root={data}",
                f"data.size=[{size[0]},{size[1]}]",
                "data.num_workers=0",
                "data.augment.enabled=false",
            ],
        )
        dls = build_dataloaders(cfg.data, find_files(cfg.data), device=device)
        model = read_model_file(model_path).build().to(device)
        learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(axis=1))
        learn.remove_cb(ProgressCallback)  # no bars in the timing

        def run_camseg() -> float:
            out = tmp / "a"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            predict(
                [str(p) for p in images],
                model_path,
                out,
                batch_size=batch_size,
                device=str(device),
                precision=precision,  # type: ignore[arg-type]
                formats=("index",),
            )
            return time.perf_counter() - t

        def run_loop() -> float:
            out = tmp / "b"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            t = time.perf_counter()
            for p in images:
                mask = learn.predict(p)[0]
                Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(out / f"{p.stem}_mask.png")
            return time.perf_counter() - t

        run_camseg()  # warm-up: first-call allocations, thread pools
        a, b = [], []
        for _ in range(repeats):  # alternate so drift hits both equally
            a.append(run_camseg())
            b.append(run_loop())
    a_ips, b_ips = n / statistics.median(a), n / statistics.median(b)
    results.save(
        results.section(f"predict_{device.type}", size, (360, 480)),
        {
            "images": n,
            "size": list(size),
            "arch": arch,
            "batch_size": batch_size or "auto",
            "precision": precision,
            "device": str(device),
            "camseg_images_per_s": round(a_ips, 2),
            "learn_predict_images_per_s": round(b_ips, 2),
            "speedup": round(a_ips / b_ips, 2),
            "camseg_seconds": [round(x, 2) for x in a],
            "learn_predict_seconds": [round(x, 2) for x in b],
        },
    )


def bench_train(
    results: Results,
    data: Path,
    size: Size,
    device: str,
    arch: str,
    batch_size: int,
    repeats: int,
) -> None:
    from camseg.data import auto_workers

    n_train = train_frames(data)
    workers = auto_workers(device.startswith("cuda"))  # camseg's num_workers: auto
    a_runs: list[TrainRun] = []
    b_out: list[dict] = []
    b_wall: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats):
            a_runs.append(
                camseg_train(
                    REPO / "configs" / "tiny.yaml",
                    f"a{k}",
                    Path(tmp),
                    speed_sets(data, size, device, arch, batch_size, epochs=1),
                )
            )
            t = time.perf_counter()
            b = run(
                [
                    sys.executable,
                    str(REPO / "scripts" / "plain_fastai.py"),
                    str(data),
                    "--size",
                    f"{size[0]}x{size[1]}",
                    "--bs",
                    str(batch_size),
                    "--arch",
                    arch,
                    "--device",
                    device,
                    "--workers",
                    str(workers),
                ]
            )
            b_wall.append(time.perf_counter() - t)
            b_out.append(last_json(b.stdout))
    a_epoch = [r.summary["seconds_per_epoch"] for r in a_runs]
    b_epoch = [o["seconds_per_epoch"] for o in b_out]
    med = statistics.median
    cuda = device.startswith("cuda")
    results.save(
        results.section(f"train_{device}", size, (96, 128)),
        {
            "size": list(size),
            "batch_size": batch_size,
            "train_images": n_train,
            "num_workers": workers,
            "arch": arch,
            "device": device,
            "camseg_images_per_s": round(n_train / med(a_epoch), 2),
            "plain_fastai_images_per_s": round(n_train / med(b_epoch), 2),
            "ratio": round(med(b_epoch) / med(a_epoch), 3),
            "camseg_epoch_seconds": [round(x, 2) for x in a_epoch],
            "plain_fastai_epoch_seconds": [round(x, 2) for x in b_epoch],
            "camseg_process_seconds": [round(r.process_seconds, 1) for r in a_runs],
            "plain_fastai_process_seconds": [round(x, 1) for x in b_wall],
            "camseg_peak_rss_mb": round(max(r.peak_rss_mb for r in a_runs)),
            "plain_fastai_peak_rss_mb": round(max(o["peak_rss_mb"] for o in b_out)),
            **(
                {
                    "camseg_peak_gpu_mb": round(max(r.peak_gpu_mb for r in a_runs)),
                    "plain_fastai_peak_gpu_mb": round(max(o.get("peak_gpu_mb", 0) for o in b_out)),
                    "seconds_per_600_images": round(600 * med(a_epoch) / n_train, 1),
                }
                if cuda
                else {}
            ),
        },
    )


def bench_setting(
    results: Results,
    what: str,
    data: Path,
    size: Size,
    device: str,
    arch: str,
    batch_size: int,
    repeats: int,
) -> None:
    """camseg train against itself with one setting changed (SETTINGS[what]), alternating."""
    cuda = device.startswith("cuda")
    variants = CPU_PRECISION if what == "precision" and not cuda else SETTINGS[what]
    n_train = train_frames(data)
    runs: dict[str, list[TrainRun]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats):
            for name, sets in variants.items():
                base = speed_sets(data, size, device, arch, batch_size, epochs=2)
                runs[name].append(
                    camseg_train(
                        REPO / "configs" / "tiny.yaml", f"{name}{k}", Path(tmp), base + sets
                    )
                )
    ips = {
        name: n_train / statistics.median(r.epoch_seconds[-1] for r in rs)
        for name, rs in runs.items()
    }
    first, second = variants
    results.save(
        results.section(f"{what}_{device}", size, (360, 480)),
        {
            "size": list(size),
            "batch_size": batch_size,
            "train_images": n_train,
            "arch": arch,
            "device": device,
            **{f"{name}_images_per_s": round(v, 2) for name, v in ips.items()},
            "ratio": round(ips[second] / ips[first], 3),
            "variants": {
                name: {
                    "set": variants[name],
                    "first_epoch_seconds": [round(r.epoch_seconds[0], 2) for r in rs],
                    "second_epoch_seconds": [round(r.epoch_seconds[-1], 2) for r in rs],
                    "peak_rss_mb": round(max(r.peak_rss_mb for r in rs)),
                    **({"peak_gpu_mb": round(max(r.peak_gpu_mb for r in rs))} if cuda else {}),
                }
                for name, rs in runs.items()
            },
        },
    )


def bench_data(
    results: Results, data: Path, size: Size, n: int, device_name: str, source_size: Size
) -> None:
    from camseg.config import load_config
    from camseg.data import auto_workers, build_dataloaders, find_files
    from camseg.model import resolve_device

    device = resolve_device(device_name)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "big"
        frames = sorted((data / "images").glob("*.png"))[:n]
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        for p in frames:  # camvid_tiny upscaled to the CamVid frame size, labels nearest
            Image.open(p).resize(source_size[::-1], Image.BILINEAR).save(root / "images" / p.name)
            lbl = data / "labels" / f"{p.stem}_P.png"
            Image.open(lbl).resize(source_size[::-1], Image.NEAREST).save(
                root / "labels" / lbl.name
            )
        shutil.copy(data / "codes.txt", root)
        names = [p.name for p in frames]
        (root / "valid.txt").write_text("\n".join(names[-max(1, len(names) // 7) :]))

        def rate(cache: str, workers: str) -> tuple[float, float]:
            cfg = load_config(
                None,
                [
                    f"data.root={root}",
                    f"data.size=[{size[0]},{size[1]}]",
                    f"data.cache={cache}",
                    f"data.num_workers={workers}",
                    "data.batch_size=8",
                ],
            )
            files = find_files(cfg.data)
            t = time.perf_counter()
            dls = build_dataloaders(cfg.data, files, device=device)  # makes the cache, if any
            setup = time.perf_counter() - t
            seen = 0
            t = time.perf_counter()
            for xb, _ in dls.train:
                seen += len(xb)
            return seen / (time.perf_counter() - t), setup

        cache_dir = Path(tmp) / "cache"
        plain, _ = rate("false", "auto")
        _, build = rate(str(cache_dir), "auto")  # first run: makes the cache
        cached, _ = rate(str(cache_dir), "auto")
        plain2, _ = rate("false", "2")
        cached2, _ = rate(str(cache_dir), "2")
    name = "data" if device.type == "cpu" else f"data_{device.type}"
    results.save(
        results.section(name, size, (360, 480)),
        {
            "frames": len(frames),
            "source_size": list(source_size),
            "size": list(size),
            "device": str(device),
            "num_workers_auto": auto_workers(device.type == "cuda"),
            "no_cache_images_per_s": round(plain, 1),
            "cache_images_per_s": round(cached, 1),
            "speedup": round(cached / plain, 2),
            "cache_build_seconds": round(build, 1),
            "no_cache_images_per_s_2_workers": round(plain2, 1),
            "cache_images_per_s_2_workers": round(cached2, 1),
        },
    )


def bench_bigphoto(
    results: Results, data: Path, size: Size, photos: list[Size], device: str, arch: str
) -> None:
    from camseg.data.files import read_codes

    frame = sorted((data / "images").glob("*.png"))[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        codes = read_codes(data / "codes.txt")
        model_path = untrained_model_file(tmp / "model.pth", arch, size, codes)
        for h, w in [size, *photos]:
            photo = tmp / f"photo_{h}x{w}.jpg"
            Image.open(frame).convert("RGB").resize((w, h), Image.BILINEAR).save(photo, quality=90)
            t = time.perf_counter()
            proc = run(
                camseg_command(
                    "predict",
                    str(photo),
                    "--model",
                    str(model_path),
                    "--out",
                    str(tmp / "out"),
                    "--device",
                    device,
                    rss=True,
                )
            )
            seconds = time.perf_counter() - t
            measured = last_json(proc.stdout)
            rows.append(
                {
                    "size": [h, w],
                    "megapixels": round(h * w / 1e6, 2),
                    "jpeg_mb": round(photo.stat().st_size / 2**20, 1),
                    "peak_rss_mb": round(measured["peak_rss_mb"]),
                    "process_seconds": round(seconds, 1),
                    **(
                        {"peak_gpu_mb": round(measured["peak_gpu_mb"])}
                        if "peak_gpu_mb" in measured
                        else {}
                    ),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    results.save(
        results.section(f"bigphoto_{device.split(':')[0]}", size, (360, 480)),
        {
            "model_size": list(size),
            "arch": arch,
            "device": device,
            "formats": "index,color,overlay",
            "photos": rows,
        },
    )


def bench_accuracy(results: Results, data: Path, device: str, quick: bool) -> None:
    recipes = {"notebook": "tiny.yaml", "scratch": "tiny-scratch.yaml"}
    seeds = [42] if quick else [42, 43]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, config in recipes.items():  # alternate the recipes within a seed
                sets = [f"data.root={data}", f"train.seed={seed}", f"train.device={device}"]
                if quick:
                    sets += ["data.size=[64,96]", "model.arch=resnet18", "train.stages[0].epochs=1"]
                    sets += ["train.stages[1].epochs=1"] if name == "notebook" else []
                trained = camseg_train(REPO / "configs" / config, f"{name}-{seed}", Path(tmp), sets)
                summary = trained.summary
                rows.append(
                    {
                        "recipe": name,
                        "seed": seed,
                        "acc_camvid": summary["final"]["acc_camvid"],
                        "miou": summary["final"]["miou"],
                        "minutes": round(trained.process_seconds / 60, 2),
                        "epochs": summary["epochs"],
                        "train_images_per_s": round(summary["images_per_second"], 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

    def mean(recipe: str, key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["recipe"] == recipe)

    results.save(
        "accuracy",
        {
            "data": str(data),
            "runs": rows,
            **{
                f"{r}_{k}": round(mean(r, k), 4)
                for r in recipes
                for k in ("acc_camvid", "miou", "minutes")
            },
            "acc_camvid_gain": round(
                mean("scratch", "acc_camvid") - mean("notebook", "acc_camvid"), 4
            ),
            "miou_gain": round(mean("scratch", "miou") - mean("notebook", "miou"), 4),
        },
    )


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "predict", "train", "data", "bigphoto", "accuracy", *SETTINGS, "env"],
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--n", type=int, default=None, help="images (predict 50, data 100)")
    parser.add_argument("--size", default=None, help="default: 360x480 (train: 96x128)")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="predict: default camseg's auto; train, precision, cudnn, compile: default 8",
    )
    parser.add_argument("--precision", default="auto", help="predict's --precision")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (settings: 1)")
    args = parser.parse_args(argv)
    what, data, device, arch, n = args.what, args.data, args.device, args.arch, args.n
    size, repeats, out = args.size, args.repeats, args.out
    if args.quick:
        n, size, repeats, arch = 6, "64x96", 1, "resnet18"
        if out == REPO / "bench" / "results.json":
            out = REPO / "bench" / "quick.json"
    results = Results(out, shlex.join(["python", "scripts/bench.py", *sys.argv[1:]]), args.quick)
    big = parse_size(size or "360x480")  # every benchmark's default size but train's
    bs = args.batch_size
    try:
        if what == "env":
            bench_env(results, device)
        if what in SETTINGS:
            bench_setting(results, what, data, big, device, arch, bs or 8, repeats or 1)
        if what in ("all", "predict"):
            bench_predict(
                results, data, big, n or 50, device, arch, bs, args.precision, repeats or 3
            )
        if what in ("all", "data"):
            source = (144, 192) if args.quick else (720, 960)
            bench_data(results, data, big, 12 if args.quick else n or 100, device, source)
        if what in ("all", "train"):
            small = parse_size(size or "96x128")
            bench_train(results, data, small, device, arch, bs or 8, repeats or 3)
        if what in ("all", "bigphoto"):
            photos = [(1000, 1500)] if args.quick else [(2000, 3000), (10000, 10000)]
            bench_bigphoto(results, data, big, photos, device, arch)
        if what in ("all", "accuracy"):
            bench_accuracy(results, data, device, args.quick)
    except BenchError as e:
        sys.exit(f"bench.py {what}: {e}")


if __name__ == "__main__":
    main()
