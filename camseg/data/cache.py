"""`data.cache`: every frame and mask stored once, already resized to the training size, as
.npy files keyed by the size and by the source file's modification time and byte size (a
changed file is made again). Later epochs and runs read those instead of decoding and resizing
full-size PNGs, which on a GPU otherwise starves the model. Frames are decoded by the shared
loader (`load_rgb`), as they are without the cache."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.core.atomic import atomic_write
from camseg.data.files import load_rgb, resize_label, resize_rgb
from camseg.data.layouts import DatasetFiles, label_reader
from camseg.errors import CamsegError

# Part of every entry's folder: entries made by an older decoder (before 16-bit frames were
# scaled and EXIF orientation applied) are never read back.
DECODER_VERSION = 2


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "camseg"


def cache_root(cache: bool | Path) -> Path:
    """The folder of `data.cache`: the one it names, else ~/.cache/camseg (also where class
    counts go when the frame cache is off)."""
    return cache if isinstance(cache, Path) else default_root()


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.stem}-{st.st_mtime_ns}-{st.st_size}.npy"


def _save(path: Path, arr: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, arr))


class CachedArray:
    """get_x / get_y that reads the cached array of an item (picklable for worker processes)."""

    def __init__(self, mapping: dict[Path, Path]) -> None:
        self.mapping = mapping

    def __call__(self, item: Path) -> np.ndarray:
        return np.load(self.mapping[item])


def build_cache(
    files: DatasetFiles, size: tuple[int, int], root: Path, workers: int = 4
) -> tuple[CachedArray, CachedArray]:
    """Make the missing cache entries; return (get_x, get_y) that read them."""
    h, w = size
    tag = hashlib.sha1(str(files.root.resolve()).encode()).hexdigest()[:12]
    folder = root / f"{files.root.name}-{tag}" / f"{h}x{w}-v{DECODER_VERSION}"
    read_label = label_reader(files)

    def one(image: Path) -> tuple[Path, Path]:
        label = files.label_for(image)
        x_path = folder / "images" / _key(image)
        y_path = folder / "labels" / _key(label)
        if not x_path.is_file():
            rgb = resize_rgb(Image.fromarray(load_rgb(image)), size)
            _save(x_path, np.asarray(rgb))
        if not y_path.is_file():
            _save(y_path, resize_label(read_label(image), size))
        return x_path, y_path

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = list(pool.map(one, files.images))
    except OSError as e:  # read-only, full: nothing half-written (each entry is atomic)
        where = e.filename or folder
        raise CamsegError(
            f"data.cache {root}: cannot write {where} ({e.strerror or e}); set data.cache to a "
            "writable folder, or data.cache=false"
        ) from None
    xs = {img: x for img, (x, _) in zip(files.images, made, strict=True)}
    ys = {img: y for img, (_, y) in zip(files.images, made, strict=True)}
    return CachedArray(xs), CachedArray(ys)
