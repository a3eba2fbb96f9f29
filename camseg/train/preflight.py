"""The checks training makes on its inputs before anything is written: folders it will write
into, the classes a resumed run keeps, a batch that BatchNorm can train on. Each raises a
CamsegError naming the key to change; the data set's own checks are data/check.py's.
"""

from __future__ import annotations

import math
from pathlib import Path

from camseg.config.schema import DataConfig
from camseg.core.atomic import require_folder_path
from camseg.data.cache import cache_root
from camseg.data.layouts import find_files
from camseg.errors import CamsegError


def check_data_folders(data: DataConfig) -> None:
    """The folders training writes data into are not blocked by a file (checked before the
    slow work, so nothing is left half-made)."""
    if data.cache is not False:
        root = cache_root(data.cache)
        require_folder_path(
            root, "data.cache", "set data.cache to a folder, or true for ~/.cache/camseg"
        )
    if data.layout == "synthetic":
        require_folder_path(
            data.root, "data.root", "the synthetic layout generates its scenes into a folder"
        )


def check_inputs(data: DataConfig, output_dir: Path) -> None:
    """What a config names on disk, checked in a second before torch and fastai are imported
    (which takes 5-10 s): the data folders, and the dataset's own folders and files for a
    layout that is not generated. The full label check is the Trainer's, after this."""
    check_data_folders(data)
    require_folder_path(
        output_dir, "output.dir", "set output.dir to a folder, e.g. --set output.dir=runs"
    )
    if data.layout != "synthetic":
        find_files(data)


def check_same_classes(root: Path, codes: list[str], ckpt: dict) -> None:
    """A resumed run's classes are its checkpoint's: its last layer has one output per class."""
    trained = ckpt.get("meta", {}).get("codes")
    if trained is None or list(trained) == list(codes):
        return
    if len(trained) != len(codes):
        diff = f"{len(codes)} classes, the checkpoint's {len(trained)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(codes, trained, strict=True)) if a != b)
        diff = f"class {i} is {codes[i]!r}, the checkpoint's {trained[i]!r}"
    raise CamsegError(
        f"--resume: the dataset {root} has other classes than this run was trained on ({diff});"
        f" the classes cannot change on resume: set data.root and data.layout back to the run's "
        f"dataset, or start a new run"
    )


def check_batch_norm(
    size: tuple[int, int],
    batch_sizes: dict[str, int],
    n_train: int,
    size_setting: tuple[int, int] | float,
) -> None:
    """Refuse a size and batch size that leave BatchNorm one value per channel.

    `batch_sizes`: the batch size asked for by each stage still to run, under the key that set
    it (data.batch_size or train.stages[i].batch_size); `size_setting`: data.size as written.
    The ResNet encoder halves the frame five times (ceil each time), so its last block and
    the U-Net's middle block see ceil(H/32) x ceil(W/32) cells; BatchNorm needs more than
    one value per channel to train. At the smallest size, 32x32, that is one cell, so a
    batch of one image fails at the first step, after the run folder exists.
    """
    h, w = size
    cells = math.ceil(h / 32) * math.ceil(w / 32)
    for key, wanted in batch_sizes.items():
        if min(wanted, n_train) * cells > 1:
            continue
        why = f"{key}=1" if wanted == 1 else "a batch of 1 (the only training image)"
        if isinstance(size_setting, tuple):
            shown = f"{h}x{w}"
        else:
            shown = f"{size_setting:g} ({h}x{w} here)"
        raise CamsegError(
            f"data.size {shown} with {why}: the U-Net's ResNet encoder reduces {h}x{w} to 1x1,"
            f" and BatchNorm cannot train on one value per channel; use a batch size of 2 "
            f"or more, or a data.size with a side over 32 pixels (e.g. [32, 64] or [64, 64])"
        )
