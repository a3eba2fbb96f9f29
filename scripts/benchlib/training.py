"""Training benchmarks, each `camseg train` in its own process: camseg against plain fastai
(`train`), camseg against itself with one setting changed (`precision`, `cudnn`, `compile`), the
two recipes' accuracy (`accuracy`); and the training input pipeline's images/s (`data`)."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from benchlib.common import REPO, Results, Size, camseg_command, camvid_subset, last_json, run

# One unfrozen one-cycle stage: what both sides of an A/B training run
STAGE = "{{epochs: {epochs}, freeze: false, lr: 3.0e-3, pct_start: 0.9}}"

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


def train_frames(data: Path) -> int:
    """Frames in the training split: images/ less the names in valid.txt."""
    valid = set((data / "valid.txt").read_text().split())
    return sum(1 for p in (data / "images").iterdir() if p.name not in valid)


@dataclass(frozen=True)
class TrainRun:
    summary: dict
    epoch_seconds: list[float]  # from history.csv, training and validation
    process_seconds: float
    peak_rss_mb: float
    peak_gpu_mb: float
    device_line: str  # "training on cpu (...), fp32 (train.bf16 auto: ...)"


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
        device_line=next(
            (line for line in proc.stdout.splitlines() if line.startswith("training on ")), ""
        ),
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


def bench_train(
    results: Results,
    data: Path,
    size: Size,
    device: str,
    arch: str,
    batch_size: int,
    repeats: int,
    quick: bool = False,
) -> None:
    from camseg.data import auto_workers

    workers = auto_workers(device.startswith("cuda"))  # camseg's num_workers: auto
    a_runs: list[TrainRun] = []
    b_out: list[dict] = []
    b_wall: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        if quick:  # checks that it runs: 4 validation and 16 training frames
            data = camvid_subset(data, Path(tmp) / "data", 4, 16)
        n_train = train_frames(data)
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


BF16_VARIANTS = {"auto": [], "true": ["train.bf16=true"], "false": ["train.bf16=false"]}


def bench_bf16(results: Results, data: Path, repeats: int, epochs: int = 2) -> None:
    """configs/tiny-scratch.yaml as shipped (train.bf16 auto) against train.bf16 true and false:
    seconds of the last of `epochs` epochs (median of `repeats`, the variants alternating), and
    the precision each ran in, as its device line says."""
    stage = f"train.stages=[{{epochs: {epochs}, freeze: false, lr: 3.0e-3, pct_start: 0.3}}]"
    base = [f"data.root={data}", "train.device=cpu", stage]
    runs: dict[str, list[TrainRun]] = {name: [] for name in BF16_VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats):
            for name, sets in BF16_VARIANTS.items():
                config = REPO / "configs" / "tiny-scratch.yaml"
                runs[name].append(camseg_train(config, f"{name}{k}", Path(tmp), base + sets))
    results.save(
        "bf16_tiny_scratch",
        {
            "config": "configs/tiny-scratch.yaml",
            "epochs": epochs,
            "train_images": train_frames(data),
            **{
                f"bf16_{name}": {
                    "set": BF16_VARIANTS[name],
                    "epoch_seconds": round(statistics.median(r.epoch_seconds[-1] for r in rs), 2),
                    "device_line": rs[0].device_line,
                }
                for name, rs in runs.items()
            },
        },
    )


def bench_data(
    results: Results, data: Path, size: Size, n: int, device_name: str, source_size: Size
) -> None:
    from camseg.config.load import load_config
    from camseg.core.device import resolve_device
    from camseg.data import auto_workers, build_dataloaders, find_files

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


# bench.py accuracy --recipes: name -> (preset, number of stages, shrunk by --quick)
RECIPES = {
    "notebook": ("tiny.yaml", 2),
    "scratch": ("tiny-scratch.yaml", 1),
    "rare": ("tiny-rare.yaml", 1),
}


def bench_accuracy(
    results: Results, data: Path, device: str, quick: bool, recipes: Sequence[str]
) -> None:
    seeds = [42] if quick else [42, 43]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if quick:  # checks that it runs: 4 validation and 16 training frames
            data = camvid_subset(data, Path(tmp) / "data", 4, 16)
        for seed in seeds:
            for name in recipes:  # alternate the recipes within a seed
                config, n_stages = RECIPES[name]
                sets = [f"data.root={data}", f"train.seed={seed}", f"train.device={device}"]
                if quick:
                    sets += ["data.size=[64,96]", "model.arch=resnet18"]
                    sets += [f"train.stages[{i}].epochs=1" for i in range(n_stages)]
                trained = camseg_train(REPO / "configs" / config, f"{name}-{seed}", Path(tmp), sets)
                summary = trained.summary
                rows.append(
                    {
                        "recipe": name,
                        "config": config,
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

    first = recipes[0]
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
            # each later recipe against the first (the default: scratch against the notebook)
            **{
                f"{r}_minus_{first}_{k}": round(mean(r, k) - mean(first, k), 4)
                for r in recipes[1:]
                for k in ("acc_camvid", "miou")
            },
        },
    )
