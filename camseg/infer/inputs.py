"""What `camseg predict` is given and what it writes, without torch: image inputs expanded
from files, folders and patterns (checked before any model is loaded, so a mistyped path is
answered at once), and the names and PNG tag of its outputs."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from camseg.data.files import IMAGE_SUFFIXES, natural_key
from camseg.errors import CamsegError

# The file name's ending for each output format: x.png -> x_mask.png, x_color.png, x_overlay.png
OUTPUT_SUFFIX = {"index": "mask", "color": "color", "overlay": "overlay"}
# PNG text on every file predict writes, so that a later folder expansion can tell them apart.
SOFTWARE = "camseg"
# Beside colour masks and overlays: each class's colour and name.
LEGEND = "legend.png"


@dataclass
class Inputs:
    images: list[Path]
    own_outputs: list[Path]  # camseg's own earlier outputs that a folder or pattern held


def expand_inputs(inputs: list[str]) -> Inputs:
    """Files as given; a folder -> its images; a glob pattern -> its matches (sorted). A folder
    or pattern leaves out what predict wrote there before (see `is_own_output`); a file named
    on its own is always taken. A path that does not exist is an error."""
    found: list[Path] = []
    own: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                key=lambda p: natural_key(p.name),
            )
            if not files:
                raise CamsegError(f"{path}: folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.exists():
            found.append(path)
            continue
        elif not any(c in item for c in "*?["):
            raise CamsegError(f"{item}: no such file or folder")
        else:
            files = [p for p in sorted(map(Path, glob.glob(item, recursive=True))) if p.is_file()]
            if not files:
                raise CamsegError(f"{item}: pattern matches no files")
        mine = {p for p in files if is_own_output(p)}
        own += sorted(mine, key=files.index)
        found += [p for p in files if p not in mine]
    if not found:
        raise CamsegError(
            f"no input images given (left out {len(own)} earlier camseg output(s); name one "
            "to segment it)"
            if own
            else "no input images given"
        )
    return Inputs(found, own)


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
