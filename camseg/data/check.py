"""`data check`: every problem a dataset has, found before any model sees it.

Pairs, sizes, label values, codes, the validation list and unreadable files. Training runs the
same check, so a bad mask never reaches the GPU as a device-side assert.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.data.files import ColorToIndex, read_names
from camseg.data.layouts import DatasetFiles
from camseg.errors import CamsegError


@dataclass
class CheckReport:
    """Counts, split sizes, per-class pixels and the list of problems (empty when clean)."""

    root: Path
    codes: list[str]
    n_images: int = 0
    n_train: int = 0
    n_valid: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def pixel_shares(self) -> dict[str, float]:
        total = max(int(self.class_pixels.sum()), 1)
        return {c: float(n) / total for c, n in zip(self.codes, self.class_pixels, strict=True)}

    def raise_if_bad(self) -> None:
        """For training: one line that names the first problem and how many there are."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise CamsegError(
                f"dataset {self.root} failed its check: {self.problems[0]}{more}; "
                f"run 'camseg data check' for the full list"
            )


def _read_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    try:
        with Image.open(path) as im:
            im.load()
            return im.size, None
    except Exception as e:  # PIL raises many types for broken files
        return None, f"{path}: unreadable image ({type(e).__name__}: {e})"


def _read_label(
    path: Path, n_codes: int, convert: ColorToIndex | None
) -> tuple[tuple[int, int] | None, np.ndarray | None, list[str]]:
    """Size, per-class pixel counts, problems."""
    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            if convert is not None:
                idx, unknown = convert.convert(np.asarray(im.convert("RGB")))
                if unknown:
                    worst = sorted(unknown.items(), key=lambda kv: -kv[1])[:3]
                    listed = ", ".join(f"RGB{c} ({n} px)" for c, n in worst)
                    return size, None, [f"{path}: colours not in label_colors.txt: {listed}"]
                return size, np.bincount(idx.ravel(), minlength=n_codes), []
            if mode not in ("L", "P"):
                return size, None, [f"{path}: label must be 8-bit class indices, got mode {mode}"]
            if mode == "P":
                # fastai opens masks as 'L', which maps a palette through luminance: wrong classes.
                return size, None, [f"{path}: palette-mode label; save it as 8-bit grey (mode L)"]
            arr = np.asarray(im)
    except Exception as e:
        return None, None, [f"{path}: unreadable label ({type(e).__name__}: {e})"]
    counts = np.bincount(arr.ravel(), minlength=n_codes)
    if len(counts) > n_codes:
        bad = int(np.nonzero(counts[n_codes:])[0].max()) + n_codes
        return size, None, [f"{path}: label value {bad} >= number of codes ({n_codes})"]
    return size, counts, []


def check_dataset(files: DatasetFiles, workers: int = 4) -> CheckReport:
    """Read every image and label once and report all problems found."""
    n = len(files.codes)
    report = CheckReport(root=files.root, codes=files.codes, class_pixels=np.zeros(n, np.int64))
    problems = report.problems
    images = files.images
    report.n_images = len(images)
    if not images:
        problems.append(f"{files.root}: no images found")
        return report
    convert = ColorToIndex(files.colors) if files.colors is not None else None
    labels = [files.label_for(p) for p in images]
    pairs = [(img, lbl) for img, lbl in zip(images, labels, strict=True) if lbl.is_file()]
    for img, lbl in zip(images, labels, strict=True):
        if not lbl.is_file():
            problems.append(f"{img}: no label (expected {lbl})")
    problems.extend(_orphan_labels(files, set(labels)))

    def one(pair: tuple[Path, Path]) -> tuple[list[str], np.ndarray | None]:
        img, lbl = pair
        isize, ierr = _read_image(img)
        lsize, counts, lerrs = _read_label(lbl, n, convert)
        errs = ([ierr] if ierr else []) + lerrs
        if isize and lsize and isize != lsize:
            errs.append(
                f"{lbl}: size {lsize[0]}x{lsize[1]} differs from image {isize[0]}x{isize[1]}"
            )
        return errs, counts

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for errs, counts in pool.map(one, pairs):
            problems.extend(errs)
            if counts is not None:
                report.class_pixels += counts
    _check_split(files, report)
    return report


def _orphan_labels(files: DatasetFiles, expected: set[Path]) -> list[str]:
    folders = {p.parent for p in expected}
    out = []
    suffix = "_L" if files.colors is not None else "_P"
    for folder in sorted(folders):
        for p in sorted(folder.glob(f"*{suffix}.png")):
            if p not in expected:
                out.append(f"{p}: label without an image")
    return out


def _check_split(files: DatasetFiles, report: CheckReport) -> None:
    if not files.valid_file.is_file():
        report.problems.append(
            f"{files.valid_file}: validation list missing; list the validation frames one per "
            f"line (never a random split: the frames are a video)"
        )
        return
    names = read_names(files.valid_file)
    if not names:
        report.problems.append(f"{files.valid_file}: validation list is empty")
        return
    present = {p.name for p in files.images}
    missing = [n for n in names if n not in present]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        )
        report.problems.append(f"{files.valid_file}: names not among the images: {shown}")
    valid = set(names)
    report.n_valid = sum(1 for p in files.images if p.name in valid)
    report.n_train = report.n_images - report.n_valid
    if report.n_valid and report.n_train == 0:
        report.problems.append(f"{files.valid_file}: covers every image, leaving no training set")
