"""Class frequencies of a dataset's training frames and SegNet's median-frequency class weights
from them. The counts are cached beside `data.cache` (one small JSON file per dataset, training
split, size and label files' state); what a loss does with the weights is camseg.train.losses'.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from camseg.core.atomic import atomic_write_text
from camseg.data.files import resize_label
from camseg.data.layouts import DatasetFiles, label_reader, valid_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassCounts:
    """Per class: its pixels in the training labels, and the pixels of the training labels in
    which it appears at all (SegNet's denominator)."""

    pixels: list[int]
    image_pixels: list[int]


def training_images(files: DatasetFiles) -> list[Path]:
    """The frames training learns from: every frame not in the validation list."""
    in_valid = valid_split(files)
    return [p for p in files.images if not in_valid(p)]


def _key(files: DatasetFiles, images: list[Path], size: tuple[int, int]) -> str:
    """Changes when any input of the counts changes: the dataset, its class list, the size, which
    frames are training frames, or any of their label files (modification time, byte size)."""
    parts = [str(files.root.resolve()), f"{size[0]}x{size[1]}", _stamp(files.codes_file)]
    parts += [_stamp(files.label_for(p)) for p in images]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.name} {st.st_mtime_ns} {st.st_size}"


def count_classes(
    files: DatasetFiles, size: tuple[int, int], cache_root: Path, workers: int = 4
) -> ClassCounts:
    """Count the training labels, resized to the training size as the loss sees them; read
    from the cache when nothing they depend on changed."""
    images = training_images(files)
    path = cache_root / "class-counts" / f"{files.root.name}-{_key(files, images, size)}.json"
    try:
        return ClassCounts(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # not made yet, or cut short: count again
        pass
    n = len(files.codes)
    read = label_reader(files)

    def one(image: Path) -> np.ndarray:
        label = resize_label(read(image), size)
        return np.bincount(label.ravel(), minlength=n)[:n]

    pixels = np.zeros(n, np.int64)
    image_pixels = np.zeros(n, np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for counts in pool.map(one, images):
            pixels += counts
            image_pixels += (counts > 0) * (size[0] * size[1])
    found = ClassCounts(pixels=pixels.tolist(), image_pixels=image_pixels.tolist())
    try:
        atomic_write_text(path, json.dumps(asdict(found)) + "\n")
    except OSError as e:  # the cache only saves time: a read-only home still trains
        log.warning("cannot cache class counts in %s (%s); counting again next time", path, e)
    return found


def median_frequency_weights(counts: ClassCounts, void: int | None) -> list[float]:
    """SegNet's median-frequency balancing (Badrinarayanan et al. 2017, after Eigen & Fergus):
    freq(c) = pixels of c / pixels of the training images in which c appears, and
    weight(c) = median of freq over the classes present / freq(c).

    Void is left out of the median and keeps weight 1 (the median class's weight): it is no
    class to get right (acc_camvid and mIoU ignore it), so it is neither boosted nor silenced;
    with train.loss.ignore_void its weight never counts. A class absent from the training labels
    has no frequency and gets 1: a class weight only scales the loss of pixels labelled with
    that class, so it would have no effect anyway.
    """
    pixels = np.asarray(counts.pixels, np.float64)
    totals = np.asarray(counts.image_pixels, np.float64)
    present = pixels > 0
    if void is not None:
        present[void] = False
    weights = np.ones(len(pixels))
    if present.any():
        freq = pixels[present] / totals[present]
        weights[present] = np.median(freq) / freq
    return weights.tolist()
