#!/usr/bin/env python
"""Benchmarks that write their numbers to bench/results.json (merged by section).

    python scripts/bench.py predict [--device cpu] [--n 50] [--size 360x480] [--repeats 3]
    python scripts/bench.py train [--device cpu] [--size 96x128] [--repeats 3]
    python scripts/bench.py data [--n 100] [--size 360x480]
    python scripts/bench.py bigphoto [--device cpu] [--size 360x480]
    python scripts/bench.py --quick            # every benchmark, tiny sizes (CI runs this)

predict: camseg's batched predict against a plain per-image `learn.predict` loop over the same
images (camvid_tiny frames upscaled), alternating A/B, both writing index masks to disk.
train: one epoch of `camseg train` against one epoch of scripts/plain_fastai.py (the lesson-3
recipe) on camvid_tiny, same size, batch size, seed and device, alternating A/B in subprocesses.
data: DataLoader images/s at the training size from 960x720 sources, with and without data.cache.
bigphoto: peak RSS and seconds of one `camseg predict` process writing all three outputs for one
JPEG photo (a camvid_tiny frame upscaled) of 3000x2000 and of 10000x10000 (100 megapixels), and
for a frame at the model's size (what the process needs before any big image); the model is a
ResNet34 U-Net at --size with random weights.
accuracy: configs/tiny.yaml (the lesson-3 recipe) against configs/tiny-scratch.yaml on the real
camvid_tiny without ImageNet weights, 2 seeds each; acc_camvid and mIoU of the final epoch
(no picking the best epoch on the validation frames), and minutes per run.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "camvid_tiny"


def machine() -> dict:
    import os

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


def save_results(out: Path, section: str, data: dict) -> None:
    """Merge one benchmark's numbers into bench/results.json."""
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[section] = data | {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M")}
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({section: data}, indent=2))


def upscaled_frames(src: Path, dst: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """n camvid_tiny frames resized to size (H, W), cycling through the set."""
    frames = sorted((src / "images").glob("*.png"))
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = dst / f"f{i:04d}_{frames[i % len(frames)].name}"
        Image.open(frames[i % len(frames)]).resize(size[::-1], Image.BILINEAR).save(p)
        out.append(p)
    return out


def untrained_model_file(path: Path, arch: str, size: tuple[int, int], codes: list[str]) -> Path:
    """A model.pth with random weights: speed does not depend on what the weights are."""
    from fastai.vision.learner import create_unet_model

    from camseg.config import ModelConfig
    from camseg.model import arch_fn, model_meta, write_model_file

    cfg = ModelConfig(arch=arch, pretrained=False)  # type: ignore[arg-type]
    model = create_unet_model(arch_fn(arch), len(codes), size, pretrained=False)
    write_model_file(path, model, model_meta(cfg, codes, size))
    return path


def bench_predict(args: argparse.Namespace) -> None:
    from camseg.config import load_config
    from camseg.data import build_dataloaders, find_files
    from camseg.data.files import read_codes
    from camseg.model import read_model_file, resolve_device
    from camseg.predict import predict

    size = tuple(int(v) for v in args.size.split("x"))
    device = resolve_device(args.device)
    codes = read_codes(args.data / "codes.txt")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = upscaled_frames(args.data, tmp / "in", args.n, size)  # type: ignore[arg-type]
        model_path = untrained_model_file(tmp / "model.pth", args.arch, size, codes)  # type: ignore[arg-type]

        # B: the plain fastai way, one learn.predict per image
        from fastai.callback.progress import ProgressCallback
        from fastai.learner import Learner
        from fastai.losses import CrossEntropyLossFlat

        cfg = load_config(
            None,
            [
                f"data.root={args.data}",
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
                batch_size=args.batch_size,
                device=str(device),
                precision=args.precision,
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
        for _ in range(args.repeats):  # alternate so drift hits both equally
            a.append(run_camseg())
            b.append(run_loop())
    a_ips, b_ips = args.n / statistics.median(a), args.n / statistics.median(b)
    save_results(
        args.out,
        _section(args, f"predict_{device.type}", size, (360, 480)),  # type: ignore[arg-type]
        {
            "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
            "images": args.n,
            "size": list(size),
            "arch": args.arch,
            "batch_size": args.batch_size or "auto",
            "precision": args.precision,
            "device": str(device),
            "camseg_images_per_s": round(a_ips, 2),
            "learn_predict_images_per_s": round(b_ips, 2),
            "speedup": round(a_ips / b_ips, 2),
            "camseg_seconds": [round(x, 2) for x in a],
            "learn_predict_seconds": [round(x, 2) for x in b],
        },
    )


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


def _section(
    args: argparse.Namespace, name: str, size: tuple[int, int], default: tuple[int, int]
) -> str:
    """results.json key: the size is part of it unless it is the benchmark's default (or the
    run is --quick, whose toy sizes go to their own file)."""
    if args.quick or tuple(size) == default:
        return name
    return f"{name}_{size[0]}x{size[1]}"


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def bench_train(args: argparse.Namespace) -> None:
    import subprocess

    h, w = (int(v) for v in args.size.split("x"))
    a_epoch, b_epoch, a_wall, b_wall, a_rss, b_rss = [], [], [], [], [], []
    a_gpu: list[float] = []
    b_gpu: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            t = time.perf_counter()
            stage = "{epochs: 1, freeze: false, lr: 3.0e-3, pct_start: 0.9}"
            a = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CAMSEG_WITH_RSS,
                    "train",
                    "--config",
                    str(REPO / "configs" / "tiny.yaml"),
                    "--no-progress",
                    "--name",
                    f"a{k}",
                    "--set",
                    f"data.root={args.data}",
                    "--set",
                    f"data.size=[{h},{w}]",
                    "--set",
                    f"output.dir={tmp}",
                    "--set",
                    f"train.device={args.device}",
                    "--set",
                    f"train.stages=[{stage}]",
                    "--set",
                    f"model.arch={args.arch}",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            a_wall.append(time.perf_counter() - t)
            a_rss.append(_last_json(a.stdout)["peak_rss_mb"])
            a_gpu.append(_last_json(a.stdout).get("peak_gpu_mb", 0.0))
            a_epoch.append(
                json.loads((Path(tmp) / f"a{k}" / "summary.json").read_text())["seconds_per_epoch"]
            )
            t = time.perf_counter()
            b = subprocess.run(
                [
                    sys.executable,
                    str(REPO / "scripts" / "plain_fastai.py"),
                    str(args.data),
                    "--size",
                    f"{h}x{w}",
                    "--bs",
                    "8",
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            b_wall.append(time.perf_counter() - t)
            out = _last_json(b.stdout)
            b_rss.append(out["peak_rss_mb"])
            b_gpu.append(out.get("peak_gpu_mb", 0.0))
            b_epoch.append(out["seconds_per_epoch"])
    n_train = 85
    med = statistics.median
    save_results(
        args.out,
        _section(args, f"train_{args.device}", (h, w), (96, 128)),
        {
            "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
            "size": [h, w],
            "batch_size": 8,
            "arch": args.arch,
            "device": args.device,
            "camseg_images_per_s": round(n_train / med(a_epoch), 2),
            "plain_fastai_images_per_s": round(n_train / med(b_epoch), 2),
            "ratio": round(med(b_epoch) / med(a_epoch), 3),
            "camseg_epoch_seconds": [round(x, 2) for x in a_epoch],
            "plain_fastai_epoch_seconds": [round(x, 2) for x in b_epoch],
            "camseg_process_seconds": [round(x, 1) for x in a_wall],
            "plain_fastai_process_seconds": [round(x, 1) for x in b_wall],
            "camseg_peak_rss_mb": round(max(a_rss)),
            "plain_fastai_peak_rss_mb": round(max(b_rss)),
            **(
                {
                    "camseg_peak_gpu_mb": round(max(a_gpu)),
                    "plain_fastai_peak_gpu_mb": round(max(b_gpu)),
                    "seconds_per_600_images": round(600 * med(a_epoch) / n_train, 1),
                }
                if args.device.startswith("cuda")
                else {}
            ),
        },
    )


def bench_data(args: argparse.Namespace) -> None:
    from camseg.config import load_config
    from camseg.data import build_dataloaders, find_files
    from camseg.data.layouts import auto_workers
    from camseg.model import resolve_device

    device = resolve_device(args.device)
    h, w = (int(v) for v in args.size.split("x"))
    src_size = (720, 960) if not args.quick else (144, 192)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "big"
        frames = sorted((args.data / "images").glob("*.png"))[: args.n]
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        for p in frames:  # camvid_tiny upscaled to the CamVid frame size, labels nearest
            Image.open(p).resize(src_size[::-1], Image.BILINEAR).save(root / "images" / p.name)
            lbl = args.data / "labels" / f"{p.stem}_P.png"
            Image.open(lbl).resize(src_size[::-1], Image.NEAREST).save(root / "labels" / lbl.name)
        shutil.copy(args.data / "codes.txt", root)
        names = [p.name for p in frames]
        (root / "valid.txt").write_text("\n".join(names[-max(1, len(names) // 7) :]))

        def rate(cache: str, workers: str) -> tuple[float, float]:
            cfg = load_config(
                None,
                [
                    f"data.root={root}",
                    f"data.size=[{h},{w}]",
                    f"data.cache={cache}",
                    f"data.num_workers={workers}",
                    "data.batch_size=8",
                ],
            )
            files = find_files(cfg.data)
            t = time.perf_counter()
            dls = build_dataloaders(cfg.data, files, device=device)  # makes the cache, if any
            setup = time.perf_counter() - t
            n = 0
            t = time.perf_counter()
            for xb, _ in dls.train:
                n += len(xb)
            return n / (time.perf_counter() - t), setup

        cache_dir = Path(tmp) / "cache"
        plain, _ = rate("false", "auto")
        _, build = rate(str(cache_dir), "auto")  # first run: makes the cache
        cached, _ = rate(str(cache_dir), "auto")
        plain2, _ = rate("false", "2")
        cached2, _ = rate(str(cache_dir), "2")
    save_results(
        args.out,
        _section(
            args, "data" if device.type == "cpu" else f"data_{device.type}", (h, w), (360, 480)
        ),
        {
            "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
            "frames": len(frames),
            "source_size": list(src_size),
            "size": [h, w],
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


def bench_bigphoto(args: argparse.Namespace) -> None:
    import subprocess

    from camseg.data.files import read_codes

    size = tuple(int(v) for v in args.size.split("x"))
    photos = [(1000, 1500)] if args.quick else [(2000, 3000), (10000, 10000)]
    frame = sorted((args.data / "images").glob("*.png"))[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        codes = read_codes(args.data / "codes.txt")
        model_path = untrained_model_file(tmp / "model.pth", args.arch, size, codes)  # type: ignore[arg-type]
        for h, w in [size, *photos]:
            photo = tmp / f"photo_{h}x{w}.jpg"
            Image.open(frame).convert("RGB").resize((w, h), Image.BILINEAR).save(photo, quality=90)
            t = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CAMSEG_WITH_RSS,
                    "predict",
                    str(photo),
                    "--model",
                    str(model_path),
                    "--out",
                    str(tmp / "out"),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.perf_counter() - t
            measured = _last_json(proc.stdout)
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
    save_results(
        args.out,
        _section(args, f"bigphoto_{args.device.split(':')[0]}", size, (360, 480)),  # type: ignore[arg-type]
        {
            "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
            "model_size": list(size),
            "arch": args.arch,
            "device": args.device,
            "formats": "index,color,overlay",
            "photos": rows,
        },
    )


def bench_accuracy(args: argparse.Namespace) -> None:
    import subprocess

    recipes = {"notebook": "tiny.yaml", "scratch": "tiny-scratch.yaml"}
    seeds = [42] if args.quick else [42, 43]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, config in recipes.items():  # alternate the recipes within a seed
                extra = []
                if args.quick:
                    extra = [
                        "--set",
                        "data.size=[64,96]",
                        "--set",
                        "model.arch=resnet18",
                        "--set",
                        "train.stages[0].epochs=1",
                    ]
                    extra += ["--set", "train.stages[1].epochs=1"] if name == "notebook" else []
                t = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "camseg",
                        "train",
                        "--config",
                        str(REPO / "configs" / config),
                        "--no-progress",
                        "--name",
                        f"{name}-{seed}",
                        "--set",
                        f"data.root={args.data}",
                        "--set",
                        f"output.dir={tmp}",
                        "--set",
                        f"train.seed={seed}",
                        "--set",
                        f"train.device={args.device}",
                        *extra,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                minutes = (time.perf_counter() - t) / 60
                summary = json.loads((Path(tmp) / f"{name}-{seed}" / "summary.json").read_text())
                final = summary["final"]
                rows.append(
                    {
                        "recipe": name,
                        "seed": seed,
                        "acc_camvid": final["acc_camvid"],
                        "miou": final["miou"],
                        "minutes": round(minutes, 2),
                        "epochs": summary["epochs"],
                        "train_images_per_s": round(summary["images_per_second"], 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

    def mean(recipe: str, key: str) -> float:
        return statistics.mean(r[key] for r in rows if r["recipe"] == recipe)

    save_results(
        args.out,
        "accuracy",
        {
            "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
            "data": str(args.data),
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "predict", "train", "data", "bigphoto", "accuracy"],
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--n", type=int, default=None, help="images (predict 50, data 100)")
    parser.add_argument("--size", default=None, help="default: 360x480 (train: 96x128)")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--batch-size", type=int, default=None, help="default: camseg's auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.n
    if args.quick:
        n, args.size, args.repeats, args.arch = 6, "64x96", 1, "resnet18"
        if args.out == REPO / "bench" / "results.json":
            args.out = REPO / "bench" / "quick.json"
    size = args.size
    if args.what in ("all", "predict"):
        args.size, args.n = size or "360x480", n or 50
        bench_predict(args)
    if args.what in ("all", "data"):
        args.size, args.n = size or "360x480", (12 if args.quick else n or 100)
        bench_data(args)
    if args.what in ("all", "train"):
        args.size = size or "96x128"
        bench_train(args)
    if args.what in ("all", "bigphoto"):
        args.size = size or "360x480"
        bench_bigphoto(args)
    if args.what in ("all", "accuracy"):
        bench_accuracy(args)


if __name__ == "__main__":
    main()
