"""Dataset layouts on disk (camvid, camseq01, synthetic) -> a file listing (data.loaders makes
fastai DataLoaders of it).

A layout only says where images, labels, codes and the validation list are; everything after
that (DataBlock, the split, resizing, augmentation, normalisation) is shared. Names and pixels
are read through camseg.data.files, as `data check`, `evaluate` and `predict` read them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camseg.config.schema import DataConfig
from camseg.data.files import (
    IMAGE_SUFFIXES,
    ColorToIndex,
    LabelColors,
    class_palette,
    default_ignore_index,
    natural_key,
    read_codes,
    read_label_colors,
    read_names,
    read_palette,
)
from camseg.data.synth import generate
from camseg.errors import CamsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetFiles:
    """What a layout found: the frames, where each one's label is, the codes and the split."""

    root: Path
    layout: str
    codes: list[str]
    images: list[Path]
    label_for: Callable[[Path], Path]
    valid_file: Path
    codes_file: Path  # codes.txt, or label_colors.txt for camseq01
    colors: LabelColors | None = field(default=None)
    ignore: int | None = None  # data.ignore_index as configured (None: the default)
    palette_file: Path | None = None  # data.palette
    valid_folder: Path | None = None  # data.split folders: the validation images' folder
    label_suffix: str = "_P"  # for finding labels without an image

    def class_colors(self) -> np.ndarray:
        """(classes, 3) uint8: data.palette's colours; else a camseq01 set's label colours;
        else CamVid's colours for CamVid names and distinct ones for the others."""
        if self.palette_file is not None:
            return read_palette(self.palette_file, self.codes)
        if self.colors is not None:
            return self.colors.palette(self.codes)
        return class_palette(self.codes)

    @property
    def ignore_index(self) -> int:
        """The label value neither scored nor, outside the classes, trained on."""
        return self.ignore if self.ignore is not None else default_ignore_index(self.codes)

    @property
    def void_index(self) -> int | None:
        """The class that is not scored (CamVid's Void), when the ignore value is a class."""
        return self.ignore_index if self.ignore_index < len(self.codes) else None


class InValidList:
    """Is this image a validation frame? The split of training (a fastai FuncSplitter),
    `data check` and `evaluate`, from the shared name reader. Picklable."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)

    def __call__(self, image: Path) -> bool:
        return Path(image).name in self.names


class InFolder:
    """Is this image a validation image? data.split folders: it is in the val folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, image: Path) -> bool:
        return Path(image).parent == self.folder


def valid_split(files: DatasetFiles) -> InValidList | InFolder:
    """The validation images: the val folder (data.split folders), else the names of
    `files.valid_file`, read by the shared name reader."""
    if files.valid_folder is not None:
        return InFolder(files.valid_folder)
    return InValidList(read_names(files.valid_file))


class CamvidLabel:
    """get_y for the camvid layout: images/<stem>.png -> labels/<stem>_P.png."""

    def __init__(self, labels_dir: Path) -> None:
        self.labels_dir = labels_dir

    def __call__(self, image: Path) -> Path:
        return self.labels_dir / f"{image.stem}_P.png"


class Camseq01Label:
    """get_y for the camseq01 layout: <stem>_L.png, colour-coded."""

    def __init__(self, labels_dir: Path) -> None:
        self.labels_dir = labels_dir

    def __call__(self, image: Path) -> Path:
        return self.labels_dir / f"{image.stem}_L.png"


class FolderLabel:
    """get_y for the folders layout: images/[split/]<stem>.* ->
    labels/[split/]<stem><suffix>.png."""

    def __init__(self, images_dir: Path, labels_dir: Path, suffix: str) -> None:
        self.images_dir, self.labels_dir, self.suffix = images_dir, labels_dir, suffix

    def __call__(self, image: Path) -> Path:
        folder = self.labels_dir / Path(image).parent.relative_to(self.images_dir)
        return folder / f"{Path(image).stem}{self.suffix}.png"


class ColorMask:
    """get_y that reads a colour label and returns its class-index array (for MaskBlock)."""

    def __init__(self, label_for: Callable[[Path], Path], colors: LabelColors) -> None:
        self.label_for = label_for
        self.convert = ColorToIndex(colors, unknown_as=None)

    def __call__(self, image: Path) -> np.ndarray:
        with Image.open(self.label_for(image)) as im:
            idx, _ = self.convert.convert(np.asarray(im.convert("RGB")))
        return idx


def label_reader(files: DatasetFiles) -> Callable[[Path], np.ndarray]:
    """image path -> its label as an (H, W) array of class indices, at the label's own size."""
    if files.colors is not None:
        return ColorMask(files.label_for, files.colors)
    return IndexLabel(files.label_for)


class IndexLabel:
    """Reads a camvid-layout index label as an array."""

    def __init__(self, label_for: Callable[[Path], Path]) -> None:
        self.label_for = label_for

    def __call__(self, image: Path) -> np.ndarray:
        with Image.open(self.label_for(image)) as im:
            return np.asarray(im).copy()


def _image_files(folder: Path, skip_suffix: str | None = None) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not (skip_suffix and p.stem.endswith(skip_suffix))
    ]
    return sorted(files, key=lambda p: natural_key(p.name))


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise CamsegError(f"{what} not found: {path}")


@dataclass(frozen=True)
class DataOptions:
    """How the command at hand names the data folder and its layout, for the hints of errors."""

    root: str = "data.root (--set data.root=PATH)"
    layout: str = "--set data.layout={}"


CONFIG_OPTIONS = DataOptions()
CHECK_OPTIONS = DataOptions("--root", "--layout {}")
EVALUATE_OPTIONS = DataOptions("--data", "--layout {}")

# what `camseg data download NAME --out DIR` makes: DIR/<folder>, always in the camvid layout
_DOWNLOADS = {"camvid": "camvid", "camvid_tiny": "camvid-tiny", "camseq01": "camseq01"}


def download_hint(root: Path) -> str:
    """The `camseg data download` line that makes `root`, or the general form."""
    name = _DOWNLOADS.get(root.name)
    if name is None:
        return "camseg data download camvid|camvid-tiny|camseq01 --out DIR (it makes DIR/<name>)"
    layout = " (it writes the camvid layout)" if name == "camseq01" else ""
    return f"camseg data download {name} --out {root.parent}{layout}"


def require_root(root: Path, opts: DataOptions) -> None:
    """A missing data folder says where to point the command, or how to download the set."""
    if root.is_dir():
        return
    what = "is a file, not a folder" if root.exists() else "not found"
    raise CamsegError(
        f"dataset folder {what}: {root}; point {opts.root} at your copy or, online,"
        f" {download_hint(root)}"
    )


def _other_layout(root: Path, layout: str, opts: DataOptions) -> None:
    """A folder in the other layout says which layout it looks like, not only what it lacks."""
    seen = [n for n in ("label_colors.txt", "CamSeq01_Raw") if (root / n).exists()]
    camvid = (root / "images").is_dir() and (root / "labels").is_dir()
    if layout == "camvid" and seen and not (root / "images").is_dir():
        raise CamsegError(
            f"{root}: no images/ folder; it looks like a CamSeq01 folder ({', '.join(seen)}):"
            f" read it as layout camseq01 ({opts.layout.format('camseq01')}), or convert it"
            f" once with camseg data prepare {root} --out DIR"
        )
    if layout == "camseq01" and camvid and not (root / "label_colors.txt").is_file():
        raise CamsegError(
            f"{root}: no label_colors.txt; it looks like a camvid-layout folder (images/,"
            f" labels/): read it as layout camvid ({opts.layout.format('camvid')})"
        )


def folders_files(cfg: DataConfig, opts: DataOptions = CONFIG_OPTIONS) -> DatasetFiles:
    """Images and labels in folders of the user's naming (data.images, data.labels), labels
    named <stem><data.label_suffix>.png, split by data.valid_file or by train/ and val/
    subfolders (data.split folders). Labels hold class indices (8-bit grey, or a palette PNG
    read as its indices) or colours (RGB, converted through data.palette)."""
    root = cfg.root
    require_root(root, opts)
    images, labels = root / cfg.images, root / cfg.labels
    _require_dir(images, f"data.images folder (layout folders: {cfg.images}/ under data.root)")
    _require_dir(labels, f"data.labels folder (layout folders: {cfg.labels}/ under data.root)")
    valid_folder = None
    if cfg.split == "folders":
        for folder in (images, labels):
            for sub in ("train", "val"):
                _require_dir(
                    folder / sub,
                    f"{sub} folder of {folder.name}/ (data.split folders: train/ and val/ under "
                    f"{cfg.images}/ and {cfg.labels}/)",
                )
        found = _image_files(images / "train") + _image_files(images / "val")
        valid_folder = images / "val"
    else:
        found = _image_files(images)
    codes = read_codes(root / "codes.txt")
    label_for = FolderLabel(images, labels, cfg.label_suffix)
    colors = _label_colors(found, label_for, codes, cfg.palette)
    return DatasetFiles(
        root=root,
        layout="folders",
        codes=codes,
        images=found,
        label_for=label_for,
        valid_file=root / cfg.valid_file,
        codes_file=root / "codes.txt",
        colors=colors,
        valid_folder=valid_folder,
        label_suffix=cfg.label_suffix,
    )


def _label_colors(
    images: list[Path], label_for: Callable[[Path], Path], codes: list[str], palette: Path | None
) -> LabelColors | None:
    """The colour table that colour (RGB) labels are converted through, from data.palette;
    None for index labels. Decided by the first label there is."""
    first = next((label_for(p) for p in images if label_for(p).is_file()), None)
    if first is None:
        return None
    with Image.open(first) as im:
        if im.mode not in ("RGB", "RGBA"):
            return None
    if palette is None:
        raise CamsegError(
            f"{first}: a colour label; set data.palette to the colour of each class "
            "('R G B Name' lines) so that colours can be read as classes"
        )
    colors = read_palette(palette, codes)
    return LabelColors(tuple(tuple(int(v) for v in c) for c in colors), tuple(codes))  # type: ignore[arg-type]


def camvid_files(root: Path, valid_file: str, opts: DataOptions = CONFIG_OPTIONS) -> DatasetFiles:
    require_root(root, opts)
    _other_layout(root, "camvid", opts)
    _require_dir(root / "images", "images folder (camvid layout: images/, labels/, codes.txt)")
    _require_dir(root / "labels", "labels folder (camvid layout: labels/<stem>_P.png)")
    return DatasetFiles(
        root=root,
        layout="camvid",
        codes=read_codes(root / "codes.txt"),
        images=_image_files(root / "images"),
        label_for=CamvidLabel(root / "labels"),
        valid_file=root / valid_file,
        codes_file=root / "codes.txt",
    )


def camseq01_folders(root: Path) -> tuple[Path, Path]:
    """(raw frames folder, labelled frames folder): split download or flat original zip."""
    raw, labelled = root / "CamSeq01_Raw", root / "CamSeq01_Labeled"
    if raw.is_dir() and labelled.is_dir():
        return raw, labelled
    return root, root


def camseq01_files(root: Path, valid_file: str, opts: DataOptions = CONFIG_OPTIONS) -> DatasetFiles:
    require_root(root, opts)
    _other_layout(root, "camseq01", opts)
    raw, labelled = camseq01_folders(root)
    colors = read_label_colors(root / "label_colors.txt")
    codes = list(colors.names)
    return DatasetFiles(
        root=root,
        layout="camseq01",
        codes=codes,
        images=_image_files(raw, skip_suffix="_L"),
        label_for=Camseq01Label(labelled),
        valid_file=root / valid_file,
        codes_file=root / "label_colors.txt",
        colors=colors,
        label_suffix="_L",
    )


def synthetic_files(cfg: DataConfig, opts: DataOptions = CONFIG_OPTIONS) -> DatasetFiles:
    """The synthetic set is generated into `root` the first time it is asked for."""
    if not (cfg.root / "images").is_dir():
        s = cfg.synthetic
        log.info("generating %d synthetic scenes into %s", s.n, cfg.root)
        generate(cfg.root, n=s.n, size=s.size, seed=s.seed, valid_fraction=s.valid_fraction)
    return camvid_files(cfg.root, cfg.valid_file, opts)


LAYOUTS: dict[str, Callable[[DataConfig, DataOptions], DatasetFiles]] = {
    "camvid": lambda cfg, opts: camvid_files(cfg.root, cfg.valid_file, opts),
    "camseq01": lambda cfg, opts: camseq01_files(cfg.root, cfg.valid_file, opts),
    "synthetic": synthetic_files,
    "folders": folders_files,
}


def find_files(cfg: DataConfig, opts: DataOptions = CONFIG_OPTIONS) -> DatasetFiles:
    """List a dataset's files with the layout the config names; `opts` says how the command
    sets the folder and layout, for the hints of its errors."""
    try:
        make = LAYOUTS[cfg.layout]
    except KeyError:
        raise CamsegError(
            f"unknown data.layout {cfg.layout!r}; valid layouts: {', '.join(LAYOUTS)}"
        ) from None
    files = dataclasses.replace(make(cfg, opts), ignore=cfg.ignore_index, palette_file=cfg.palette)
    if files.palette_file is not None:
        files.class_colors()  # a bad palette file is refused with the rest of the data
    return files
