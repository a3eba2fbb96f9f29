"""Atomic file writes: write a temporary file beside the target, fsync, then `os.replace`.

A crash or kill at any moment leaves either the old file or the new one, never a torn one.
Also the check, before any work, that a folder can be made where one is asked for.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from camseg.errors import CamsegError


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(fileobj) on a temp file in path's folder (.NAME.PID.XXXX.tmp), then move it
    over path. Temporary files of `path` that a killed process left are removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _written_temporary(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_new(path: Path, write: Callable[[IO[bytes]], Any], *, number: bool) -> Path | None:
    """As atomic_write, but never over an existing file: with `number`, to the first free name
    of path, <stem>-2, -3, ...; without, None when path exists. The file is written whole under
    a temporary name, then hard-linked to its name, which fails if the name is taken, even by
    another process between a check and the write."""
    tmp = _written_temporary(path, write)
    try:
        for k in range(1, 10_000 if number else 2):
            target = path if k == 1 else path.with_name(f"{path.stem}-{k}{path.suffix}")
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
        if number:
            raise CamsegError(f"{path.parent}: too many {path.stem}-N{path.suffix} files")
        return None
    finally:
        tmp.unlink(missing_ok=True)


def _written_temporary(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """write(fileobj) into a new temporary file beside path, flushed to disk, with the
    permissions a new file of this process gets."""
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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


def require_writable(path: Path, what: str, fix: str = "choose a writable folder") -> None:
    """Refuse, before the expensive part, a folder that cannot take a file (read-only, not
    permitted); a folder still to be made is judged by the nearest one that exists. `what`
    names the option or key in the message, `fix` says what to do."""
    folder = next((p for p in (path, *path.parents) if p.exists()), path)
    probe = folder / f".camseg-write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CamsegError(f"{what} {folder}: cannot write there ({e.strerror}); {fix}") from None


def _umask() -> int:
    """The process's umask, read where Linux shows it; elsewhere set and put back at once (the
    only portable way, which another thread making a file in between would see)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    def save(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's zip writer reports a failed write (disk full) so
            raise write_failed(path, e) from None

    atomic_write(path, save)


def write_failed(path: Path, e: BaseException) -> OSError:
    """An OSError for a write that a library reported as another error: ENOSPC when the disk
    has (almost) no space left, else EIO with the library's first line."""
    try:
        full = shutil.disk_usage(path.parent).free < 2**20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({first})", str(path))


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files of `path` (.NAME.PID[.XXXX].tmp, by atomic_write or the video
    writer) whose process is gone: a kill -9 or a power cut part-way through a write. A live
    process's file (another camseg writing the same name) is left alone."""
    removed = []
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would send the process a signal
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True
