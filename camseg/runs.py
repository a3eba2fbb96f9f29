"""The run folder: which file is where, making one without clobbering another, and finding runs
(the newest finished one, or the newest of a family like half, half-2, half-3).

What goes into the files is written by train.py, evaluate.py and report.py; this module only
knows the layout.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from camseg.errors import CamsegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """A run folder and the paths inside it."""

    dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pth"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pth"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @property
    def model(self) -> Path:
        return self.dir / "model.pth"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def finished(self) -> bool:
        """Training ran to its end: model.pth, then summary.json, are written last."""
        return self.model.is_file() and self.summary.is_file()

    @property
    def finished_at(self) -> float:
        return self.summary.stat().st_mtime


def create_run_dir(parent: Path, name: str) -> Path:
    """parent/<name>, or <name>-2, -3 ... : an existing run is never overwritten.

    os.mkdir is atomic, so two processes starting at once get two different folders.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = parent / (name if k == 1 else f"{name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise CamsegError(f"{parent}: too many runs named {name}; pick another --name")


def finished_runs(parent: Path, family: str | None = None) -> list[Run]:
    """Finished runs directly under parent, oldest finish first; with family, only the folders
    that create_run_dir makes for that name (half, half-2, half-3, ...)."""
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(family)}(-\d+)?$") if family else None
    runs = [
        Run(p)
        for p in parent.iterdir()
        if p.is_dir() and (pattern is None or pattern.match(p.name)) and Run(p).finished
    ]
    return sorted(runs, key=lambda r: r.finished_at)


def latest_run(parent: Path) -> Run:
    """The most recently finished run under parent (by finish time, not by name)."""
    runs = finished_runs(parent)
    if not runs:
        raise CamsegError(
            f"no finished run under {parent}/ (a run is finished once it has model.pth and "
            f"summary.json); train one with camseg train --config half.yaml, or give --run/--model"
        )
    return runs[-1]


def resolve_init_from(path: Path) -> Path:
    """The model file that model.init_from names.

    A file is taken as it is (model.pth or a checkpoint). A run folder means the newest finished
    run of its family: init_from runs/half takes runs/half-2 when that finished later. A run
    that never finished is refused rather than silently replaced by its best checkpoint; name
    the checkpoint file to start from it.
    """
    if path.is_file():
        return path
    family = finished_runs(path.parent, path.name)
    if family:
        chosen = family[-1]
        if len(family) > 1 or chosen.dir != path:
            names = ", ".join(r.dir.name for r in family)
            log.info(
                "model.init_from %s: took %s, the newest finished of %s", path, chosen.dir, names
            )
        return chosen.model
    if path.is_dir():
        best = Run(path).best
        hint = f"; or start from its best epoch: model.init_from={best}" if best.is_file() else ""
        raise CamsegError(
            f"model.init_from {path}: this run did not finish (no model.pth); finish it with "
            f"camseg train --resume {path}{hint}"
        )
    raise CamsegError(
        f"model.init_from {path}: no such run or file; train the first phase first "
        f"(camseg train --config half.yaml) or point init_from at its run folder"
    )
