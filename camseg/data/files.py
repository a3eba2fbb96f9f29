"""Reading the small text files every layout has (codes, valid lists, label colours) and the
colour <-> index conversion of CamSeq01 labels. No fastai here: cheap to import."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from camseg.errors import CamsegError

VOID = "Void"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def resource_path(name: str) -> Path:
    """A file shipped inside the package (codes.txt, label_colors.txt, paper_fig13.csv)."""
    return Path(str(resources.files("camseg") / "resources" / name))


def read_codes(path: Path) -> list[str]:
    """Class names, one per line; line number = class index."""
    if not path.is_file():
        raise CamsegError(f"codes file not found: {path}; it lists one class name per line")
    codes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    codes = [c for c in codes if c]
    if not codes:
        raise CamsegError(f"{path}: codes file is empty; it lists one class name per line")
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise CamsegError(f"{path}: duplicate class names {', '.join(dupes)}; each must be unique")
    if VOID not in codes:
        raise CamsegError(
            f"{path}: no '{VOID}' class; acc_camvid ignores Void pixels, add a line '{VOID}'"
        )
    return codes


def read_names(path: Path) -> list[str]:
    """A list of file names, one per line (valid.txt)."""
    if not path.is_file():
        raise CamsegError(f"file list not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class LabelColors:
    """The CamVid colour table: colours[i] is the RGB of class names[i]."""

    colors: tuple[tuple[int, int, int], ...]
    names: tuple[str, ...]

    def palette(self, codes: list[str]) -> np.ndarray:
        """A (len(codes), 3) uint8 array: the colour of each class index of `codes`."""
        by_name = dict(zip(self.names, self.colors, strict=True))
        return np.array([by_name.get(c, (0, 0, 0)) for c in codes], dtype=np.uint8)


def read_label_colors(path: Path) -> LabelColors:
    """Parse `R G B<TAB>Name` lines (CamSeq01's label_colors.txt; tabs vary)."""
    if not path.is_file():
        raise CamsegError(f"label colour table not found: {path}")
    colors, names = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 4 or not all(re.fullmatch(r"\d{1,3}", p) for p in parts[:3]):
            raise CamsegError(f"{path}:{n}: expected 'R G B<TAB>Name', got {line.strip()!r}")
        rgb = tuple(int(p) for p in parts[:3])
        if max(rgb) > 255:
            raise CamsegError(f"{path}:{n}: colour values must be 0-255, got {rgb}")
        colors.append(rgb)
        names.append(" ".join(parts[3:]))
    if not names:
        raise CamsegError(f"{path}: label colour table is empty")
    return LabelColors(tuple(colors), tuple(names))  # type: ignore[arg-type]


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int32 with one value per colour."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class ColorToIndex:
    """Converts a colour-coded label (H, W, 3) into class indices (H, W) with a lookup table.

    A callable object rather than a closure so fastai can pickle it into worker processes.
    """

    UNKNOWN = 255

    def __init__(self, table: LabelColors, unknown_as: int | None = None) -> None:
        self.table = table
        self.unknown_as = unknown_as
        self._lut: np.ndarray | None = None

    def lut(self) -> np.ndarray:
        if self._lut is None:
            lut = np.full(1 << 24, self.UNKNOWN, dtype=np.uint8)
            lut[pack_rgb(np.array(self.table.colors, dtype=np.uint8))] = np.arange(
                len(self.table.colors), dtype=np.uint8
            )
            self._lut = lut
        return self._lut

    def __getstate__(self) -> dict:
        return {"table": self.table, "unknown_as": self.unknown_as, "_lut": None}

    def convert(self, rgb: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int, int], int]]:
        """Index mask and the colours not in the table, with their pixel counts."""
        packed = pack_rgb(rgb[..., :3])
        idx = self.lut()[packed]
        unknown: dict[tuple[int, int, int], int] = {}
        bad = idx == self.UNKNOWN
        if bad.any():
            values, counts = np.unique(packed[bad], return_counts=True)
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                unknown[((v >> 16) & 255, (v >> 8) & 255, v & 255)] = c
            if self.unknown_as is not None:
                idx = np.where(bad, np.uint8(self.unknown_as), idx)
        return idx, unknown


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders frame numbers numerically (f2 before f10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@contextlib.contextmanager
def new_dataset_folder(out: Path) -> Iterator[Path]:
    """A temporary camvid-layout folder (images/, labels/) beside `out`, renamed to `out` when
    the block succeeds and removed when it fails: an interrupted run never leaves half a set."""
    if out.exists() and any(out.iterdir()):
        raise CamsegError(f"output folder {out} exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_codes_and_split(folder: Path, codes: list[str], valid_names: list[str]) -> None:
    """codes.txt (line = class index) and valid.txt of a camvid-layout folder."""
    (folder / "codes.txt").write_text("\n".join(codes) + "\n", encoding="utf-8")
    (folder / "valid.txt").write_text("\n".join(valid_names) + "\n", encoding="utf-8")
