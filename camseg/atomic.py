"""Atomic file writes: write a temporary file beside the target, fsync, then `os.replace`.

A crash or kill at any moment leaves either the old file or the new one, never a torn one.
Also the check, before any work, that a folder can be made where one is asked for.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from camseg.errors import CamsegError


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(fileobj) on a temp file in path's folder, then move it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_link(src: Path, dst: Path) -> None:
    """Make dst an atomic copy of src: a hard link (no extra disk or time), else a real copy."""
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write(dst, lambda f: f.write(src.read_bytes()))
        return
    os.replace(tmp, dst)


def require_folder_path(path: Path, what: str, fix: str) -> None:
    """Refuse, with `what` (the key or option) and `fix`, a folder path that a file blocks:
    the path itself or a folder above it is a file, so making it would fail half-way."""
    for p in (path, *path.parents):
        if p.exists():  # the nearest existing path decides; a missing one is made later
            if p.is_dir():
                return
            at = "is a file" if p == path else f"cannot be made: {p} is a file"
            raise CamsegError(f"{what} {path} {at}, not a folder; {fix}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
