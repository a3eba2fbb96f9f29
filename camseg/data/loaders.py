"""A dataset's file listing -> fastai DataLoaders: one DataBlock for every layout (the split,
resizing, augmentation, normalisation), the data.cache, and the loader settings (workers,
pinned memory) for the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from camseg.config.schema import DataConfig
from camseg.data.cache import build_cache, cache_root
from camseg.data.files import image_size, load_rgb
from camseg.data.layouts import ColorMask, DatasetFiles, IndexLabel, valid_split


def resolve_size(size: tuple[int, int] | float, first_image: Path) -> tuple[int, int]:
    """[H, W] as given, or a scale of the source image's size, rounded to whole pixels."""
    if isinstance(size, tuple):
        return size
    w, h = image_size(first_image)
    return max(32, round(h * size)), max(32, round(w * size))


def auto_workers(on_cuda: bool) -> int:
    """Worker processes for `num_workers: auto`.

    On a GPU the model waits for data, so use the cores (up to 8). On a CPU the model itself
    needs the cores, and decoding competes with it, so stay in-process on small machines.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    if on_cuda:
        return min(8, cpus)
    return 0 if cpus <= 4 else min(4, cpus // 4)


def build_dataloaders(
    cfg: DataConfig,
    files: DatasetFiles,
    *,
    batch_size: int | None = None,
    device: object | None = None,
):
    """fastai DataLoaders: DataBlock(ImageBlock, MaskBlock(codes)) split by valid.txt, images
    read by `load_rgb` (predict's reader: EXIF orientation, 16-bit grey scaled)."""
    import torch
    from fastai.data.block import DataBlock
    from fastai.data.transforms import FuncSplitter, Normalize
    from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
    from fastai.vision.core import imagenet_stats
    from fastai.vision.data import ImageBlock, MaskBlock

    size = resolve_size(cfg.size, files.images[0])
    get_x: Callable[[Path], np.ndarray] = load_rgb
    get_y = files.label_for if files.colors is None else ColorMask(files.label_for, files.colors)
    if files.layout == "folders" and files.colors is None:
        get_y = IndexLabel(files.label_for)  # a palette PNG's indices, not its luminance
    if cfg.cache is not False:
        root = cache_root(cfg.cache)
        get_x, get_y = build_cache(files, size, root)
    aug = cfg.augment
    batch_tfms = []
    if aug.enabled:
        batch_tfms += aug_transforms(
            do_flip=aug.flip,
            max_rotate=aug.max_rotate,
            max_zoom=aug.max_zoom,
            max_lighting=aug.max_lighting,
            max_warp=aug.max_warp,
            p_affine=aug.p_affine,
            p_lighting=aug.p_lighting,
        )
    batch_tfms.append(Normalize.from_stats(*imagenet_stats))
    block = DataBlock(
        blocks=(ImageBlock, MaskBlock(files.codes)),
        get_x=get_x,
        get_y=get_y,
        splitter=FuncSplitter(valid_split(files)),
        # Squish, not crop: the whole frame is scored, and CamVid frames keep their aspect.
        item_tfms=Resize(size, method=ResizeMethod.Squish),
        batch_tfms=batch_tfms,
    )
    dev = torch.device(device) if device is not None else torch.device("cpu")
    on_cuda = dev.type == "cuda"
    workers = auto_workers(on_cuda) if cfg.num_workers == "auto" else cfg.num_workers
    pin = on_cuda if cfg.pin_memory == "auto" else cfg.pin_memory
    return block.dataloaders(
        files.images,
        bs=batch_size or cfg.batch_size,
        num_workers=workers,
        pin_memory=pin,
        device=dev,
    )
