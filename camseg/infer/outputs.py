"""What predict writes, for images and videos alike: the formats and their file names, the
PNG tag that marks camseg's own outputs (so a later run does not take them as inputs), output
names that never collide, the legend of the class colours, each record's class shares, and the
checks a call's request gets before any work. Torch-free, as inputs.py is."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
from PIL import Image, PngImagePlugin

from camseg.config.values import Format
from camseg.core.atomic import atomic_write
from camseg.errors import CamsegError

if TYPE_CHECKING:  # no torch at run time: the CLI checks its inputs before torch is imported
    import torch

    from camseg.model.files import ModelFile

FORMATS: tuple[str, ...] = get_args(Format)  # index, color, overlay
# The file name's ending for each output format: x.png -> x_mask.png, x_color.png, x_overlay.png
OUTPUT_SUFFIX = {"index": "mask", "color": "color", "overlay": "overlay"}

# PNG text on every file predict writes, so that a later folder expansion can tell them apart.
SOFTWARE = "camseg"

# Beside colour masks and overlays: each class's colour and name.
LEGEND = "legend.png"


def is_own_output(path: Path) -> bool:
    """A `<name>_mask|_color|_overlay.png` or `legend.png` that predict wrote: it carries
    camseg's PNG text. The name alone is not enough, a user's own `x_color.png` is an input like
    any other."""
    names = tuple(f"_{s}.png" for s in OUTPUT_SUFFIX.values())
    if not (path.name.endswith(names) or path.name == LEGEND):
        return False
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.info.get("Software") == SOFTWARE
    except Exception:  # not readable as an image: an input, and reported as unreadable later
        return False


def refuse_earlier_outputs(targets: list[Path], exist_ok: bool) -> None:
    """predict never replaces earlier outputs without being asked: the first target that
    exists is named, unless exist_ok."""
    if exist_ok:
        return
    for target in targets:
        if target.exists():
            raise CamsegError(
                f"{target} exists (an earlier output); give another --out, or --exist-ok to "
                f"replace the outputs of the same names"
            )


def save_png(path: Path, im: Image.Image) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    atomic_write(path, lambda f: im.save(f, format="PNG", pnginfo=info))


def auto_batch_size(device: torch.device) -> int:
    """On a GPU batches keep it busy; on a CPU one image at a time is fastest (measured: a
    ResNet34 U-Net at 360x480 runs 1.15 images/s at batch 1, 0.75 at batch 8 on 2 cores — the
    activations of a big batch outgrow the caches)."""
    return 16 if device.type == "cuda" else 1


def legend_image(codes: list[str], colors: np.ndarray) -> Image.Image:
    """Each class's colour beside its name, a row each (the colours of colour masks and
    overlays)."""
    from PIL import ImageDraw

    row, width = 20, 40 + 8 * max(len(c) for c in codes)
    im = Image.new("RGB", (width, row * len(codes) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, (name, rgb) in enumerate(zip(codes, colors, strict=True)):
        y = 2 + i * row
        draw.rectangle(
            [4, y + 2, 20, y + 17], fill=tuple(int(v) for v in rgb), outline=(96, 96, 96)
        )
        draw.text((28, y + 4), name, fill=(0, 0, 0))
    return im


def legend_to_write(
    out: Path, mf: ModelFile, formats: tuple[str, ...], exist_ok: bool
) -> Image.Image | None:
    """The legend.png that colour masks and overlays need in `out`, or None when none is
    asked for or the same one is there already; a legend of another model's colours there is
    an error unless exist_ok (checked before any work)."""
    if not {"color", "overlay"} & set(formats):
        return None
    legend = legend_image(mf.codes, mf.palette())
    path = out / LEGEND
    if not path.is_file():
        return legend
    try:
        with Image.open(path) as old:
            same = old.size == legend.size and np.array_equal(
                np.asarray(old.convert("RGB")), np.asarray(legend)
            )
    except Exception:  # unreadable: not the same
        same = False
    if same:
        return None
    if not exist_ok:
        raise CamsegError(
            f"{path} exists with other classes or colours (another model's); give another "
            "--out, or --exist-ok to replace it"
        )
    return legend


def check_request(formats: tuple[str, ...], batch_size: int | None) -> None:
    """The output formats and batch size a predict call asks for, checked before any work."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CamsegError(f"--format {','.join(formats)}: choose from {', '.join(FORMATS)}")
    if batch_size is not None and batch_size < 1:
        raise CamsegError(f"--batch-size must be at least 1, got {batch_size}")


def unique_names(stems: list[str], reserved: set[str] | None = None) -> list[str]:
    """<stem>; one whose stem an earlier one took gets <stem>-2, -3, ..., never a name in
    `reserved` (the stems of the call's other inputs: dupA/x-2.png and a second x.png).
    Compared without case, as macOS and Windows file systems do."""
    reserved = {s.casefold() for s in reserved or ()}
    taken: set[str] = set()
    names = []
    for stem in stems:
        name, k = stem, 1
        while name.casefold() in taken or (k > 1 and name.casefold() in reserved):
            k += 1
            name = f"{stem}-{k}"
        taken.add(name.casefold())
        names.append(name)
    return names


def class_shares(counts: np.ndarray, codes: list[str]) -> dict[str, float]:
    """Each class's share of a mask's pixels (classes with none left out), for the records."""
    total = int(counts.sum())
    return {c: round(int(n) / total, 6) for c, n in zip(codes, counts, strict=True) if n}
