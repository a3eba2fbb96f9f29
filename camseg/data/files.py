"""The one reader of the small text files every layout has (codes, valid lists, label colours),
the one image loader (EXIF orientation, bit depth, mode), and the colour <-> index conversion of
CamSeq01 labels. `data check`, training, `evaluate` and `predict` all read through these, so
they cannot disagree about a name or a pixel. No fastai here: cheap to import."""

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
from PIL import Image, ImageOps

from camseg.errors import CamsegError

VOID = "Void"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def resource_path(name: str) -> Path:
    """A file shipped inside the package (codes.txt, label_colors.txt, paper_fig13.csv)."""
    return Path(str(resources.files("camseg.data") / "resources" / name))


def _decode(path: Path, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CamsegError(f"{path}: UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CamsegError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            f"save it as UTF-8"
        ) from None


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, with or without a byte-order mark, any line ends."""
    return _decode(path, path.read_bytes()).splitlines()


@dataclass(frozen=True)
class NameList:
    """A list file (codes.txt, valid.txt) as every reader sees it, and what reading changed."""

    names: list[str]
    changes: list[str]


def read_list(path: Path) -> NameList:
    """One name per line: byte-order mark, CRLF, surrounding spaces or tabs and blank lines
    dropped. Every reader of a list file goes through here (fastai's FileSplitter does not
    strip, so a padded name would silently move a frame to the training set)."""
    data = path.read_bytes()
    lines = _decode(path, data).splitlines()
    changes = []
    if data.startswith(b"\xef\xbb\xbf"):
        changes.append("starts with a UTF-8 byte-order mark (ignored)")
    padded = [n for n, line in enumerate(lines, 1) if line.strip() and line != line.strip()]
    if padded:
        changes.append(
            f"{len(padded)} line(s) with spaces or tabs around the name (removed), "
            f"first line {padded[0]}: {lines[padded[0] - 1]!r}"
        )
    names = [line.strip() for line in lines if line.strip()]
    return NameList(names, changes)


def read_codes(path: Path) -> list[str]:
    """Class names, one per line; line number = class index."""
    if not path.is_file():
        raise CamsegError(f"codes file not found: {path}; it lists one class name per line")
    codes = read_list(path).names
    if not codes:
        raise CamsegError(f"{path}: codes file is empty; it lists one class name per line")
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise CamsegError(f"{path}: duplicate class names {', '.join(dupes)}; each must be unique")
    if len(codes) > 255:
        raise CamsegError(f"{path}: {len(codes)} classes; labels are 8-bit, so at most 255")
    return codes


def default_ignore_index(codes: list[str]) -> int:
    """data.ignore_index when the config leaves it out: Void's index where the codes have one
    (CamVid: its pixels are a class that is not scored), else 255 (the Cityscapes / VOC / mmseg
    value of unlabelled pixels, outside the classes)."""
    return codes.index(VOID) if VOID in codes else 255


def read_names(path: Path) -> list[str]:
    """A list of file names, one per line (valid.txt)."""
    if not path.is_file():
        raise CamsegError(f"file list not found: {path}")
    return read_list(path).names


_ORIENTATION = 0x0112  # EXIF tag: how to turn the stored pixels to display them


@dataclass(frozen=True)
class LoadedImage:
    """An image as camseg reads it everywhere, and what reading it changed."""

    rgb: np.ndarray  # (H, W, 3) uint8, upright
    stored_size: tuple[int, int]  # (W, H) of the pixels in the file, before EXIF orientation
    changes: tuple[str, ...]


def read_image(path: Path) -> LoadedImage:
    """Any image PIL reads -> HxWx3 uint8: EXIF orientation applied (as viewers show it), alpha
    dropped, grey and 16-bit scaled to 8-bit RGB (PIL's own convert clips 16-bit to 255)."""
    with Image.open(path) as im:
        stored = im.size
        rgb, changes = upright_rgb(im)
        return LoadedImage(np.asarray(rgb), stored, changes)


def upright_rgb(im: Image.Image) -> tuple[Image.Image, tuple[str, ...]]:
    """The one conversion of an opened image (a file's, or one the Python API was given) to
    upright 8-bit RGB, and what it changed. The image given is not modified."""
    changes = []
    orientation = im.getexif().get(_ORIENTATION, 1)
    if orientation in range(2, 9):
        im = ImageOps.exif_transpose(im)
        changes.append(f"EXIF orientation {orientation} applied (read upright, as viewers show it)")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        changes.append("16-bit grey scaled to 8-bit")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-12) if arr.size else 1.0
        low = float(arr.min()) if arr.size else 0.0
        im = Image.fromarray(((arr - low) / span * 255).astype(np.uint8), "L")
        changes.append("32-bit float grey stretched to 0-255")
    return (im if im.mode == "RGB" else im.convert("RGB")), tuple(changes)


def load_rgb(path: Path) -> np.ndarray:
    """The pixels of `read_image`: the get_x of training and evaluation, and predict's reader."""
    return read_image(path).rgb


def open_rgb(path: Path, max_pixels: int) -> Image.Image:
    """The upright RGB image as a PIL image, refused above max_pixels (checked from the header,
    before decoding). A plain 8-bit RGB file (a JPEG photo) is decoded straight into the one
    image returned, 4 bytes a pixel; any other mode goes through `read_image`, whose copies of a
    100-megapixel photo would take another 1.5 GB. Pillow's own limit (Image.MAX_IMAGE_PIXELS,
    which `camseg predict` turns off) applies too: over it, one CamsegError."""
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as e:
        detail = str(e).split(", could")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        raise CamsegError(
            f"{path}: {detail} (Pillow's guard against decompression bombs, "
            "PIL.Image.MAX_IMAGE_PIXELS); raise that limit to read it"
        ) from None
    with opened as im:
        w, h = im.size
        if w * h > max_pixels:
            raise CamsegError(
                f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over predict's limit of "
                f"{max_pixels // 10**6} (a guard against decompression bombs)"
            )
        if im.mode == "RGB":
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return im
    return Image.fromarray(load_rgb(path))


def resize_rgb(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An RGB image at (H, W) = size, squished and bilinear as fastai's Resize does in the
    training pipeline: the one resize of data.cache and of inference."""
    h, w = size
    return im if im.size == (w, h) else im.resize((w, h), Image.BILINEAR)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A class-index label at (H, W) = size, nearest neighbour as fastai's Resize does for masks:
    the one label resize of the cache and of evaluate."""
    h, w = size
    if label.shape[:2] == (h, w):
        return label
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image as `load_rgb` returns it, without decoding the pixels."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


@dataclass(frozen=True)
class LabelColors:
    """The CamVid colour table: colours[i] is the RGB of class names[i]."""

    colors: tuple[tuple[int, int, int], ...]
    names: tuple[str, ...]

    def palette(self, codes: list[str]) -> np.ndarray:
        """A (len(codes), 3) uint8 array: the colour of each class index of `codes` (grey for
        a name not in the table)."""
        by_name = dict(zip(self.names, self.colors, strict=True))
        return np.array([by_name.get(c, (128, 128, 128)) for c in codes], dtype=np.uint8)


def camvid_palette(codes: list[str]) -> np.ndarray:
    """CamVid's colours for these class names: the palette of colour masks, overlays and plots."""
    return read_label_colors(resource_path("label_colors.txt")).palette(codes)


def class_palette(codes: list[str]) -> np.ndarray:
    """The colours of classes without a palette file: CamVid's colour for each CamVid class
    name, and for every other name the colour of a fixed grid that lies farthest from the
    colours already taken (black, kept for ignored pixels, included): distinct colours for a
    user's own classes, the same for the same names every time."""
    table = read_label_colors(resource_path("label_colors.txt"))
    by_name = dict(zip(table.names, table.colors, strict=True))
    out = np.zeros((len(codes), 3), dtype=np.int64)
    taken = [np.zeros(3)]
    unknown = []
    for i, name in enumerate(codes):
        if name in by_name:
            out[i] = by_name[name]
            taken.append(out[i])
        else:
            unknown.append(i)
    if unknown:
        steps = np.array([0, 64, 128, 192, 255])
        grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
        used = np.array(taken, dtype=np.float64)
        nearest = np.linalg.norm(grid[:, None, :] - used[None], axis=2).min(axis=1)
        for i in unknown:
            pick = int(nearest.argmax())  # the first of the farthest: deterministic
            out[i] = grid[pick]
            nearest = np.minimum(nearest, np.linalg.norm(grid - grid[pick], axis=1))
    return out.astype(np.uint8)


def read_palette(path: Path, codes: list[str]) -> np.ndarray:
    """data.palette: one `R G B Name` line per class (CamSeq01's label_colors.txt), matched by
    name, or `R G B` lines in class order. -> (classes, 3) uint8."""
    if not path.is_file():
        raise CamsegError(f"data.palette {path}: no such file")
    rows = _color_lines(path, "'R G B Name' or 'R G B'", names_required=False)
    named = [name for _, name in rows if name]
    if named and len(named) != len(rows):
        raise CamsegError(f"{path}: give every line a class name, or none (colours in class order)")
    if not named:
        if len(rows) != len(codes):
            raise CamsegError(
                f"{path}: {len(rows)} colours for {len(codes)} classes; give one 'R G B' line "
                "per class in class order, or 'R G B Name' lines"
            )
        return np.array([rgb for rgb, _ in rows], dtype=np.uint8)
    by_name = {name: rgb for rgb, name in rows}
    missing = [c for c in codes if c not in by_name]
    if missing:
        raise CamsegError(
            f"{path}: no colour for class {', '.join(missing[:3])}"
            f"{' and more' if len(missing) > 3 else ''}; add an 'R G B Name' line for each class"
        )
    return np.array([by_name[c] for c in codes], dtype=np.uint8)


def label_palette(colors: np.ndarray) -> np.ndarray:
    """(256, 3) uint8: the class colours for the class values, black for the values above them
    (an ignore value such as 255 in a ground-truth label)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colors)] = colors
    return table


def read_label_colors(path: Path) -> LabelColors:
    """Parse `R G B<TAB>Name` lines (CamSeq01's label_colors.txt; tabs vary)."""
    if not path.is_file():
        raise CamsegError(f"label colour table not found: {path}")
    rows = _color_lines(path, "'R G B<TAB>Name'", names_required=True)
    if not rows:
        raise CamsegError(f"{path}: label colour table is empty")
    return LabelColors(tuple(rgb for rgb, _ in rows), tuple(name for _, name in rows))


def _color_lines(
    path: Path, expected: str, names_required: bool
) -> list[tuple[tuple[int, int, int], str]]:
    """The (R, G, B), name of each `R G B [Name]` line (blank lines skipped; name "" where a
    line has none): the one parser of label_colors.txt and data.palette files."""
    rows = []
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < (4 if names_required else 3) or not all(
            re.fullmatch(r"\d{1,3}", p) for p in parts[:3]
        ):
            raise CamsegError(f"{path}:{n}: expected {expected}, got {line.strip()!r}")
        rgb = (int(parts[0]), int(parts[1]), int(parts[2]))
        if max(rgb) > 255:
            raise CamsegError(f"{path}:{n}: colour values must be 0-255, got {rgb}")
        rows.append((rgb, " ".join(parts[3:])))
    return rows


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
