#!/usr/bin/env python
"""The plain fastai lesson-3 CamVid recipe, as a baseline for scripts/bench.py train: DataBlock +
FileSplitter + unet_learner + fit_one_cycle, nothing else. Prints one JSON line with the epoch
time and peak memory.

    python scripts/plain_fastai.py DATA_ROOT --size 96x128 --bs 8 --epochs 1 [--device cpu]
        [--arch resnet34] [--workers 0]
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (adds Learner.fit_one_cycle)
from fastai.data.block import DataBlock
from fastai.data.transforms import FileSplitter, Normalize, get_image_files
from fastai.torch_core import set_seed
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.vision.core import imagenet_stats
from fastai.vision.data import ImageBlock, MaskBlock
from fastai.vision.learner import unet_learner
from torchvision.models import resnet18, resnet34, resnet50

ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def label_func(fn: Path) -> Path:
    return fn.parent.parent / "labels" / f"{fn.stem}_P.png"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--size", default="96x128")
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--arch", choices=sorted(ARCHS), default="resnet34")
    a = p.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    # cuDNN left at torch's defaults, as in the notebook: reproducible=True would switch it to
    # deterministic kernels and slow only this side of a GPU comparison
    set_seed(42)
    codes = (a.root / "codes.txt").read_text().split()
    void = codes.index("Void")

    def acc_camvid(inp, targ):
        targ = targ.squeeze(1)
        mask = targ != void
        return (inp.argmax(dim=1)[mask] == targ[mask]).float().mean()

    dls = DataBlock(
        blocks=(ImageBlock, MaskBlock(codes)),
        get_items=get_image_files,
        get_y=label_func,
        splitter=FileSplitter(a.root / "valid.txt"),
        item_tfms=Resize(size, method=ResizeMethod.Squish),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)],
    ).dataloaders(a.root / "images", bs=a.bs, num_workers=a.workers, device=torch.device(a.device))
    learn = unet_learner(dls, ARCHS[a.arch], pretrained=False, metrics=acc_camvid, wd=1e-2)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *_: None
    if a.device.startswith("cuda"):
        learn.to_fp16()
    start = time.perf_counter()
    learn.fit_one_cycle(a.epochs, a.lr, pct_start=0.9)
    seconds = time.perf_counter() - start
    out = {
        "seconds_per_epoch": seconds / a.epochs,
        "train_images": len(dls.train_ds),
        "valid_loss": float(learn.recorder.values[-1][1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if torch.cuda.is_available() and a.device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
