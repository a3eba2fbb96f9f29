"""`data check`: every problem a dataset has, found before any model sees it.

Pairs, sizes, label values, codes, the validation list and unreadable files. Training runs the
same check, so a bad mask never reaches the GPU as a device-side assert. Names and pixels are
read with the same readers training, `evaluate` and `predict` use; what those readers change on
the way in (a byte-order mark, padded names, EXIF orientation, 16-bit frames) is reported as a
note, what they refuse as a problem.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.data.files import ColorToIndex, LoadedImage, read_image, read_list
from camseg.data.layouts import DatasetFiles, InFolder, InValidList
from camseg.errors import CamsegError

log = logging.getLogger(__name__)


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
    notes: list[str] = field(default_factory=list)  # what the readers changed; not problems

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


def _read_image(path: Path) -> tuple[LoadedImage | None, str | None]:
    try:
        return read_image(path), None
    except Exception as e:  # PIL raises many types for broken files
        return None, f"{path}: unreadable image ({type(e).__name__}: {e})"


def _size_problems(img: Path, lbl: Path, loaded: LoadedImage, lsize: tuple[int, int]) -> list[str]:
    h, w = loaded.rgb.shape[:2]
    if (w, h) == lsize:
        return []
    lw, lh = lsize
    if loaded.stored_size == lsize:
        return [
            f"{lbl}: size {lw}x{lh} matches the stored pixels of {img}, but its EXIF orientation "
            f"turns it to {w}x{h}, and camseg reads it upright everywhere (train, evaluate, "
            f"predict); rotate the label to the upright image, or save the image upright"
        ]
    return [f"{lbl}: size {lw}x{lh} differs from image {w}x{h}"]


def _read_label(
    path: Path, n_codes: int, convert: ColorToIndex | None, ignore: int, palette_png: bool = False
) -> tuple[tuple[int, int] | None, np.ndarray | None, list[str]]:
    """Size, per-class pixel counts (an ignore value outside the classes not counted),
    problems."""
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
            if mode == "P" and not palette_png:
                # fastai opens masks as 'L', which maps a palette through luminance: wrong classes.
                return size, None, [f"{path}: palette-mode label; save it as 8-bit grey (mode L)"]
            arr = np.asarray(im)
    except Exception as e:
        return None, None, [f"{path}: unreadable label ({type(e).__name__}: {e})"]
    counts = np.bincount(arr.ravel(), minlength=n_codes)
    extra = counts[n_codes:].copy()
    if ignore >= n_codes and ignore - n_codes < len(extra):
        extra[ignore - n_codes] = 0  # the ignore value: allowed, not a class
    if extra.any():
        values = np.nonzero(extra)[0]
        listed = ", ".join(f"{v + n_codes} ({extra[v]} px)" for v in values[:4])
        more = f" and {len(values) - 4} more" if len(values) > 4 else ""
        return (
            size,
            None,
            [
                f"{path}: label values {listed}{more} are neither a class (0-{n_codes - 1}) "
                f"nor data.ignore_index ({ignore}); if they mark unlabelled pixels, set "
                f"data.ignore_index to that value"
            ],
        )
    return size, counts[:n_codes], []


def check_dataset(files: DatasetFiles, workers: int = 4, needs_split: bool = True) -> CheckReport:
    """Read every image and label once and report all problems found. With needs_split False
    (scoring every frame), a missing validation list is not a problem."""
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
    if not pairs and files.layout == "folders":  # one line, not one per image
        problems.append(
            f"no image has a label: {images[0].name} would have {labels[0]}; check "
            f"data.labels and data.label_suffix ({files.label_suffix!r})"
        )
    else:
        for img, lbl in zip(images, labels, strict=True):
            if not lbl.is_file():
                problems.append(f"{img}: no label (expected {lbl})")
    problems.extend(_shared_labels(images, labels))
    problems.extend(_orphan_labels(files, set(labels)))
    in_valid, split_problems = _check_split(files, report)

    def one(pair: tuple[Path, Path]) -> tuple[list[str], np.ndarray | None, tuple[str, ...]]:
        img, lbl = pair
        loaded, ierr = _read_image(img)
        lsize, counts, lerrs = _read_label(
            lbl, n, convert, files.ignore_index, palette_png=files.layout == "folders"
        )
        errs = ([ierr] if ierr else []) + lerrs
        if loaded and lsize:
            errs += _size_problems(img, lbl, loaded, lsize)
        return errs, counts, loaded.changes if loaded else ()

    changed: dict[str, list[Path]] = {}
    valid_read = valid_scored = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (img, _), (errs, counts, changes) in zip(pairs, pool.map(one, pairs), strict=True):
            problems.extend(errs)
            for change in changes:
                changed.setdefault(change, []).append(img)
            if counts is None:
                continue
            report.class_pixels += counts
            if in_valid is not None and in_valid(img):
                valid_read += 1
                void = files.void_index
                valid_scored += int(counts.sum() - (counts[void] if void is not None else 0))
    if needs_split or files.valid_file.is_file():
        problems.extend(split_problems)
    if report.n_valid and valid_read == report.n_valid and valid_scored == 0:
        void = files.void_index
        ignored = (
            f"{files.codes[void]} (data.ignore_index {void})"
            if void is not None
            else f"{files.ignore_index} (data.ignore_index)"
        )
        problems.append(
            f"{files.valid_file}: every pixel of the {report.n_valid} validation labels is "
            f"{ignored}, which acc_camvid does not score, so there is nothing to validate on; "
            f"list frames whose labels have other classes"
        )
    report.notes += [
        f"{paths[0].parent}: {change}: {_shown(paths)}" for change, paths in changed.items()
    ]
    if report.ok:  # a failing check says one thing: its problems
        for note in report.notes:
            log.warning("%s", note)
    return report


def _shown(paths: list[Path]) -> str:
    more = f" (+{len(paths) - 3} more)" if len(paths) > 3 else ""
    return ", ".join(p.name for p in paths[:3]) + more


def _shared_labels(images: list[Path], labels: list[Path]) -> list[str]:
    """Two images with one stem (x.png, x.jpg) would both be paired with labels/x_P.png."""
    by_label: dict[Path, list[Path]] = {}
    for img, lbl in zip(images, labels, strict=True):
        by_label.setdefault(lbl, []).append(img)
    return [
        f"{lbl}: one label for {len(imgs)} images, "
        f"{', '.join(p.name for p in imgs[:-1])} and {imgs[-1].name} in {imgs[0].parent}; "
        f"keep one image per label: rename or remove the others"
        for lbl, imgs in by_label.items()
        if len(imgs) > 1
    ]


def _orphan_labels(files: DatasetFiles, expected: set[Path]) -> list[str]:
    folders = {p.parent for p in expected}
    out = []
    suffix = files.label_suffix
    for folder in sorted(folders):
        for p in sorted(folder.glob(f"*{suffix}.png")):
            if p not in expected:
                out.append(f"{p}: label without an image")
    return out


def _check_split(
    files: DatasetFiles, report: CheckReport
) -> tuple[InValidList | InFolder | None, list[str]]:
    """The split training will use (its own splitter) and the problems of the list files;
    sets n_train / n_valid and notes what the name reader changed in codes.txt and valid.txt."""
    if files.colors is None:  # camseq01's label_colors.txt is parsed on whitespace anyway
        report.notes += [f"{files.codes_file}: {c}" for c in read_list(files.codes_file).changes]
    if files.valid_folder is not None:  # data.split folders
        in_folder = InFolder(files.valid_folder)
        report.n_valid = sum(1 for p in files.images if in_folder(p))
        report.n_train = report.n_images - report.n_valid
        problems = []
        if not report.n_valid:
            problems.append(f"{files.valid_folder}: no validation images")
        if not report.n_train:
            problems.append(f"{files.valid_folder.parent / 'train'}: no training images")
        return in_folder, problems
    if not files.valid_file.is_file():
        return None, [
            f"{files.valid_file}: validation list missing; list the validation frames one per "
            f"line (never a random split: the frames are a video)"
        ]
    try:
        listed = read_list(files.valid_file)
    except CamsegError as e:
        return None, [str(e)]
    report.notes += [f"{files.valid_file}: {c}" for c in listed.changes]
    if not listed.names:
        return None, [f"{files.valid_file}: validation list is empty"]
    problems = []
    present = {p.name for p in files.images}
    missing = [n for n in listed.names if n not in present]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        )
        problems.append(f"{files.valid_file}: names not among the images: {shown}")
    in_valid = InValidList(listed.names)
    report.n_valid = sum(1 for p in files.images if in_valid(p))
    report.n_train = report.n_images - report.n_valid
    if report.n_valid and report.n_train == 0:
        problems.append(f"{files.valid_file}: covers every image, leaving no training set")
    return in_valid, problems
