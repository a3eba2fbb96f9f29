"""The run folder: which file is where, making one without clobbering another (with its
config.yaml, command.txt and env.json), history.csv, per_class_iou.csv and summary.json, and
finding runs (the newest finished one, the newest of a family like half, half-2, half-3, the run
a model file belongs to). The only module that knows the layout.

    RUN/config.yaml  command.txt  env.json  plan.json  [class_weights.json]  before the first batch
    RUN/history.csv  per_class_iou.csv  checkpoints/{last,best}.pth  after every epoch
    RUN/plots/  model.pth  summary.json  report.html                 at the end, in that order
    RUN/tensorboard/                                                 train.tensorboard, every epoch
    RUN/eval/<data>-<split>[-k]/                                     one per `camseg evaluate`
    RUN/predictions[-k]/                                             `camseg predict` without --out
    RUN/.lock                                                        locked while a process trains
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camseg.config.values import Weights
from camseg.core.atomic import atomic_write_text
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
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def command(self) -> Path:
        return self.dir / "command.txt"

    @property
    def env(self) -> Path:
        return self.dir / "env.json"

    @property
    def plan(self) -> Path:
        """What the run derived from its config on its machine (camseg.train.plan)."""
        return self.dir / "plan.json"

    @property
    def class_weights(self) -> Path:
        """The loss's weight per class name (train.class_weights other than none)."""
        return self.dir / "class_weights.json"

    @property
    def history(self) -> Path:
        return self.dir / "history.csv"

    @property
    def class_iou(self) -> Path:
        return self.dir / "per_class_iou.csv"

    @property
    def report(self) -> Path:
        return self.dir / "report.html"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (train.tensorboard): tensorboard --logdir RUN/tensorboard"""
        return self.dir / "tensorboard"

    @property
    def predictions(self) -> Path:
        """Where `camseg predict` writes without --out (the CLI makes -2, -3, ... beside it)."""
        return self.dir / "predictions"

    @property
    def evals(self) -> Path:
        """Parent of the evaluation folders (one per `camseg evaluate`)."""
        return self.dir / "eval"

    def eval_metrics(self) -> list[Path]:
        """metrics.json of each evaluation, oldest first."""
        return sorted(self.evals.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)

    @property
    def is_run(self) -> bool:
        """A run folder (finished or not): config.yaml and history.csv are there."""
        return self.config.is_file() and self.history.exists()

    @property
    def lock(self) -> Path:
        """flock'ed by the process that trains the run (`run_lock`)."""
        return self.dir / ".lock"

    @property
    def finished(self) -> bool:
        """Training ran to its end: model.pth, then summary.json, are written last; a summary
        that does not read as JSON (a file cut short by a full disk or a copy) is not an end."""
        if not (self.model.is_file() and self.summary.is_file()):
            return False
        try:
            return isinstance(json.loads(self.summary.read_bytes()), dict)
        except (OSError, ValueError):
            return False

    def trained_by(self) -> int | None:
        """The pid of the process training this run now (it holds `lock`), else None."""
        return _lock_holder(self.lock)

    @property
    def finished_at(self) -> float:
        return self.summary.stat().st_mtime


def resumable_run(run_dir: Path) -> Run:
    """The run that `train --resume run_dir` continues: a run folder that did not finish."""
    run = Run(run_dir.absolute())  # summary.json names it as a new run's: absolute
    if not run.config.is_file():
        raise CamsegError(f"--resume {run_dir}: not a run folder (no config.yaml)")
    if run.finished:
        raise CamsegError(
            f"--resume {run_dir}: this run is finished (it has model.pth and summary.json); "
            f"nothing to resume, nothing changed. To train it further, start a new run from "
            f"its weights: camseg train --config {run_dir / 'config.yaml'} "
            f"--set model.init_from={run_dir / 'model.pth'}"
        )
    pid = run.trained_by()
    if pid is not None:  # asked before anything is loaded; run_lock closes the race after
        raise CamsegError(_being_trained(run_dir, pid))
    return run


def _being_trained(run_dir: Path, pid: object) -> str:
    return (
        f"{run_dir} is being trained by another process (pid {pid}); wait for it to end, or "
        "stop it, then resume"
    )


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold RUN/.lock (an advisory flock) while training in run_dir: a second `train --resume`
    of the run is refused while the first runs. The kernel releases the lock when the process
    ends, however it ends (kill -9 too), so a stale lock never blocks a resume. Where flock does
    not exist (Windows) runs are not locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Run(run_dir).lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise CamsegError(_being_trained(run_dir, pid)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(path: Path) -> int | None:
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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
    run of its family: init_from runs/half takes runs/half-2 when that finished later; its last
    epoch's weights (model.pth), or with runs/half:best its best epoch's. A run
    that never finished is refused rather than silently replaced by its best checkpoint; name
    the checkpoint file to start from it.
    """
    weights: Weights | None = None
    for choice in ("best", "last"):
        if str(path).endswith(f":{choice}") and not path.exists():
            path, weights = Path(str(path)[: -len(choice) - 1]), choice  # type: ignore[assignment]
    if path.is_file():
        if weights is not None:
            raise CamsegError(
                f"model.init_from {path}:{weights}: :{weights} picks the weights of a run "
                f"folder; {path} is a file already"
            )
        return path
    family = finished_runs(path.parent, path.name)
    if family:
        chosen = family[-1]
        if len(family) > 1 or chosen.dir != path:
            names = ", ".join(r.dir.name for r in family)
            log.info(
                "model.init_from %s: took %s, the newest finished of %s", path, chosen.dir, names
            )
        return model_file(chosen.dir, weights or "last")
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


def run_name(*names: str | None, config_path: Path | None) -> str:
    """The first name given (--name, then output.name), else the config file's stem."""
    name = next((n for n in names if n), None) or (config_path.stem if config_path else "run")
    if "/" in name or name in (".", ".."):
        raise CamsegError(f"run name {name!r} is not a plain folder name")
    return name


def start_run(parent: Path, name: str, config: str, command: str, env: dict[str, Any]) -> Run:
    """Make the run folder `parent/name` (or name-2, ...) and write config.yaml (`config`: the
    resolved config's text), command.txt, env.json (`env`: the versions and machine,
    camseg.core.machine.environment) before any batch."""
    run = Run(create_run_dir(parent, name))
    atomic_write_text(run.config, config)
    atomic_write_text(run.command, command + "\n")
    atomic_write_text(run.env, json.dumps(env, indent=2) + "\n")
    return run


def write_summary(run: Run, data: dict[str, Any]) -> None:
    atomic_write_text(run.summary, json.dumps(data, indent=2) + "\n")


def run_of(source: Path) -> Run | None:
    """The run a model belongs to: the folder itself, or model.pth / a checkpoint in it."""
    for candidate in (source, source.parent, source.parent.parent):
        if Run(candidate).is_run:
            return Run(candidate)
    return None


def predictions_dir(source: Path) -> Path:
    """Where predict writes for a model: its run's predictions/, or beside a lone model file."""
    run = run_of(source)
    if run is None:
        run = Run(source if source.is_dir() else source.parent)
    return run.predictions


def model_file(path: Path, weights: Weights | None = None) -> Path:
    """A run folder -> the file of its `weights`, a file as it is.

    last (the paper's and the notebook's choice): model.pth, or checkpoints/last.pth while the
    run has not finished. best (the epoch with the best acc_camvid): checkpoints/best.pth, or
    model.pth of a finished run whose best epoch is the last (finish_checkpoints drops the
    copy). None: model.pth, else the best checkpoint of a run that did not finish."""
    if not path.is_dir():
        if weights is not None:
            raise CamsegError(
                f"--weights {weights} picks a file in a run folder; {path} is a file already "
                f"(give --run RUN_DIR, or leave --weights out)"
            )
        return path
    run = Run(path)
    order = {
        None: (run.model, run.best),
        "last": (run.model, run.last),
        "best": (run.best, run.model) if run.finished else (run.best,),
    }[weights]
    for candidate in order:
        if candidate.is_file():
            return candidate
    names = " or ".join(str(p.relative_to(run.dir)) for p in order)
    raise CamsegError(f"{path}: no {names} in this run folder")


def weights_of(path: Path) -> str | None:
    """Which epoch's weights a file of a run holds, as outputs record it: best (best.pth), last
    (model.pth, last.pth), or best=last (model.pth of a finished run whose best epoch is the
    last, so it has no best.pth); None for a file outside a run's names (an export, a copy)."""
    run = run_of(path)
    if path.name == "model.pth" and run is not None and run.finished and not run.best.exists():
        return "best=last"
    return {"best.pth": "best", "model.pth": "last", "last.pth": "last"}.get(path.name)
