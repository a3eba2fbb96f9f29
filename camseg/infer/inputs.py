"""What `camseg predict` is given, without torch: image inputs expanded from files, folders and
patterns (checked before any model is loaded, so a mistyped path is answered at once), leaving
out camseg's own earlier outputs (camseg.infer.outputs)."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from camseg.data.files import IMAGE_SUFFIXES, natural_key
from camseg.errors import CamsegError
from camseg.infer.outputs import is_own_output


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
