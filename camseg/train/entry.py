"""The training entry points: a new run, resuming one, and lr_find for a stage. Each checks
its inputs before anything is written, makes the run folder (runs.py), and hands the work to a
Trainer (trainer.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastai.torch_core import rank_distrib

from camseg.config.load import absolute_paths, dump_config, load_config
from camseg.config.schema import Config, ModelConfig
from camseg.core.atomic import atomic_write_text, require_folder_path
from camseg.core.machine import describe_device, environment
from camseg.core.runs import (
    Run,
    create_run_dir,
    resolve_init_from,
    resumable_run,
    run_lock,
    run_name,
    start_run,
)
from camseg.errors import CamsegError
from camseg.train.checkpoint import load_checkpoint
from camseg.train.distributed import share_path
from camseg.train.lrfind import OnIter, Suggestions
from camseg.train.plan import make_plan, read_recorded
from camseg.train.trainer import EpochRow, Summary, Trainer, TrainingInterrupted

__all__ = [
    "TrainingInterrupted",
    "describe_command",
    "lr_find",
    "run_name",
    "train_new",
    "train_resume",
]


def _check_output_dir(path: Path) -> None:
    require_folder_path(
        path, "output.dir", "set output.dir to a folder, e.g. --set output.dir=runs"
    )


def _check_same_model(run_dir: Path, saved: ModelConfig, wanted: ModelConfig) -> None:
    """A resumed run's network is its config.yaml's: the checkpoint holds that network."""
    changed = [k for k in ModelConfig.model_fields if getattr(saved, k) != getattr(wanted, k)]
    if not changed:
        return
    was = ", ".join(f"model.{k} {getattr(saved, k)} -> {getattr(wanted, k)}" for k in changed)
    sets = " ".join(f"--set model.{k}={getattr(wanted, k)}" for k in changed)
    raise CamsegError(
        f"--resume {run_dir}: model settings cannot change on resume ({was}); its checkpoint "
        f"holds the weights of the network in its config.yaml. Drop that --set, or start a new "
        f"run: camseg train --config {run_dir / 'config.yaml'} {sets}"
    )


def train_new(
    cfg: Config,
    *,
    config_path: Path | None,
    name: str | None,
    command: str,
    progress: bool = True,
    on_epoch: Callable[[EpochRow], None] | None = None,
    on_start: Callable[[Path, str], None] | None = None,
    on_stage: Callable[[int, str, Any], None] | None = None,
) -> Summary:
    """A new run: check and build everything, then make the run folder and train. on_start gets
    the run folder and the device line (camseg.core.machine.describe_device) before the first
    batch."""
    cfg = _init_file_resolved(absolute_paths(cfg))  # config.yaml names the exact file taken
    _check_output_dir(cfg.output.dir)
    plan = make_plan(cfg)
    trainer = Trainer(plan, progress=progress)
    run_dir = None
    if rank_distrib() == 0:
        folder = run_name(name, cfg.output.name, config_path=config_path)
        env = environment(plan.device)
        run = start_run(cfg.output.dir, folder, dump_config(cfg), command, env)
        atomic_write_text(run.plan, plan.record())
        run_dir = run.dir
    run_dir = share_path(run_dir)
    with _locked(run_dir):
        if on_start is not None and rank_distrib() == 0:
            on_start(run_dir, describe_device(plan.device, plan.precision, cfg.train.device))
        return trainer.run(run_dir, on_epoch=on_epoch, on_stage=on_stage)


def _locked(run_dir: Path) -> contextlib.AbstractContextManager:
    """The run's lock for the process that writes it (rank 0 of a multi-GPU run)."""
    return run_lock(run_dir) if rank_distrib() == 0 else contextlib.nullcontext()


def train_resume(
    run_dir: Path,
    *,
    overrides: list[str] | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochRow], None] | None = None,
    on_start: Callable[[Path, str], None] | None = None,
    on_stage: Callable[[int, str, Any], None] | None = None,
) -> Summary:
    """Continue a run from its last checkpoint (or from the start if none was written).

    A finished run is left as it is, and the model settings cannot change: the checkpoint
    holds that network's weights."""
    run = resumable_run(run_dir)  # refused at once if another process trains it
    saved = load_config(run.config)
    cfg = load_config(run.config, overrides or [])
    _check_same_model(run_dir, absolute_paths(saved).model, absolute_paths(cfg).model)
    ckpt = load_checkpoint(run.last) if run.last.is_file() else None
    # what the run derived at its start (size, batch sizes, precision, the loss's weights) is
    # taken back, not derived again on a machine or from labels that may have changed since
    recorded = read_recorded(run.plan, run.class_weights, saved, cfg)
    plan = make_plan(cfg, ckpt=ckpt, recorded=recorded)
    trainer = Trainer(plan, ckpt=ckpt, progress=progress)
    # every check passed and nothing written: from here on this process owns the run (a resume
    # refused above leaves the folder as it was)
    with _locked(run.dir):
        for stray in run.checkpoints.glob(".*.tmp"):  # a write the crash cut short
            stray.unlink()
        if overrides and rank_distrib() == 0:
            atomic_write_text(run.config, dump_config(absolute_paths(cfg)))
        if rank_distrib() == 0:
            atomic_write_text(run.plan, plan.record())
        if on_start is not None and rank_distrib() == 0:
            on_start(run.dir, describe_device(plan.device, plan.precision, cfg.train.device))
        return trainer.run(run.dir, on_epoch=on_epoch, on_stage=on_stage)


def _init_file_resolved(cfg: Config) -> Config:
    if cfg.model.init_from is None:
        return cfg
    init = resolve_init_from(cfg.model.init_from)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": init})})


def lr_find(
    cfg: Config,
    stage_index: int,
    out_parent: Path,
    name: str,
    progress: bool = True,
    start_from: Path | None = None,
    on_iter: OnIter | None = None,
) -> tuple[Path, Suggestions]:
    """fastai's lr_find for one stage, from the weights that stage starts from: the config's
    (ImageNet or init_from) for stage 0; for a later stage, `start_from` (a run or checkpoint
    that finished the stages before it), because a fresh decoder is not what that stage sees.

    Writes lr_find.png, lr_find.csv and lr_find.json to a new folder
    out_parent/<name>-lr_find[-k]; a failure or an interruption leaves no folder behind.
    """
    if not 0 <= stage_index < len(cfg.train.stages):
        raise CamsegError(
            f"--stage {stage_index}: the config has stages 0..{len(cfg.train.stages) - 1}"
        )
    _check_output_dir(out_parent)
    if start_from is not None:
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"init_from": start_from})}
        )
    elif stage_index > 0:
        earlier = "stage 0" if stage_index == 1 else f"stages 0..{stage_index - 1}"
        raise CamsegError(
            f"--stage {stage_index} starts from the weights that {earlier} "
            f"trains, not from a fresh decoder: give --from RUN_OR_CHECKPOINT (a run that finished "
            f"it), or set train.stages[{stage_index}].lr=find so that camseg train runs lr_find "
            f"when the stage starts"
        )
    cfg = _init_file_resolved(cfg)
    stage = cfg.train.stages[stage_index]
    trainer = Trainer(make_plan(cfg, first_stage=stage_index), progress=progress)
    learn = trainer.learn
    if stage.freeze:
        learn.freeze()
    else:
        learn.unfreeze()
    out_dir = create_run_dir(out_parent, f"{name}-lr_find")
    try:
        learn.path = out_dir
        found = trainer.find_lr(out_dir / "lr_find.png", on_iter)
        Run(out_dir).checkpoints.rmdir()  # lr_find's temporary weights went there
        atomic_write_text(out_dir / "lr_find.json", json.dumps(found.lrs, indent=2) + "\n")
    except BaseException:  # an error or Ctrl-C: no half-made folder is left
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return out_dir, found


def describe_command(argv: list[str]) -> str:
    """command.txt: the command line (shell-quoted) and the folder it ran in."""
    import shlex

    return f"{shlex.join(argv)}\n# cwd: {Path.cwd()}"
