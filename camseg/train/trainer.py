"""The paper's staged recipe on a learner: fit_one_cycle stage by stage (frozen, then unfrozen),
lr_find where a stage asks for it, a checkpoint and a history row after every epoch, then
model.pth, the plots, summary.json and the report.

The data and the network come from data/ and model.py, the run folder's layout from runs.py, the
checkpoint format from checkpoint.py; the console table belongs to the CLI, which passes
`on_epoch` to see each finished epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import get_model, num_distrib, rank_distrib, set_seed

from camseg.config.schema import StageConfig, TrainConfig
from camseg.config.values import LrSlice
from camseg.core.atomic import atomic_write_text
from camseg.core.device import cuda_kernels
from camseg.core.runs import Run, write_summary
from camseg.data import build_dataloaders
from camseg.errors import CamsegError, stop_signal, stops_held
from camseg.model.files import load_init_weights, model_meta, write_model_file
from camseg.model.network import build_learner
from camseg.report.page import write_report
from camseg.report.plots import plot_lr_find, plot_run
from camseg.train.callbacks import (
    AccCamvid,
    BarsOnly,
    BF16Autocast,
    EpochRow,
    MeanIoU,
    RunRecorder,
    StopOnNaN,
    apply_speed_settings,
)
from camseg.train.checkpoint import (
    CheckpointWriter,
    RunState,
    ema_state,
    finish_checkpoints,
    restore_rng,
    training_weights,
)
from camseg.train.ema import ModelEMA
from camseg.train.losses import build_loss
from camseg.train.lrfind import LrFindProgress, OnIter, Suggestions, suggest
from camseg.train.plan import Plan
from camseg.train.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the last finished epoch is saved; `resume` says how to continue.
    exit_code is the shell's for the signal: 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, run_dir: Path, stop: KeyboardInterrupt, finished: bool = False) -> None:
        what, self.exit_code = stop_signal(stop)
        if finished:  # the stop came while the final files were written: they were, whole
            message = f"training {what} at its end; its final files were completed first: {run_dir}"
        else:
            message = f"training {what}; resume with: camseg train --resume {run_dir}"
        super().__init__(message)
        self.run_dir = run_dir


def stage_name(stage: StageConfig, i: int) -> str:
    return stage.name or f"stage-{i + 1}"


def fit_stage(
    learn: Any,
    stage: StageConfig,
    lr: float | LrSlice,
    train_cfg: TrainConfig,
    cbs: list[Callback] | None = None,
    start_epoch: int = 0,
) -> None:
    """One stage of the recipe: freeze or unfreeze, then fastai's fit_one_cycle, with
    `slice(...)` learning rates handed to fastai as the slice it spreads over the groups."""
    if stage.freeze:
        learn.freeze()
    else:
        learn.unfreeze()
    try:
        learn.fit_one_cycle(
            stage.epochs,
            lr_max=lr.as_fastai() if isinstance(lr, LrSlice) else lr,
            pct_start=stage.pct_start,
            moms=train_cfg.moms,
            wd=train_cfg.wd,
            cbs=cbs,
            start_epoch=start_epoch,
        )
    finally:  # an error mid-batch must not leave bf16 autocast on in this thread
        for cb in learn.cbs:
            if isinstance(cb, BF16Autocast):
                cb.close()


@dataclass(frozen=True)
class Summary:
    run_dir: Path
    best_acc_camvid: float
    best_stage: str
    best_epoch: int
    final: dict
    epochs: int
    seconds: float
    seconds_per_epoch: float
    images_per_second: float
    is_main: bool = True  # False on the other ranks of a distributed run


class Trainer:
    """A learner ready to run a plan's stages (camseg.train.plan, where everything that can
    fail on bad input happened, before a run folder exists): data loaded, weights loaded."""

    def __init__(self, plan: Plan, ckpt: dict | None = None, progress: bool = True) -> None:
        self.plan, self.ckpt = plan, ckpt
        self.device, self.files, self.colors = plan.device, plan.files, plan.colors
        self.size, self.n_train, self.class_weights = plan.size, plan.n_train, plan.class_weights
        self.state = RunState(**ckpt["state"]) if ckpt else RunState()
        set_seed(plan.train.seed, reproducible=plan.train.deterministic)
        cuda_kernels(plan.train.deterministic)
        self.bs = plan.batch_sizes[min(plan.first_stage, len(plan.batch_sizes) - 1)]
        dls = build_dataloaders(plan.data, self.files, batch_size=self.bs, device=self.device)
        n, void = len(self.files.codes), self.files.void_index
        learn = build_learner(
            dls,
            plan.model,
            codes=self.files.codes,
            metrics=[AccCamvid(n, void), MeanIoU(n, void)],
            path=Path("."),
            wd=plan.train.wd,
            moms=plan.train.moms,
            loss_func=build_loss(
                plan.train.loss, self.files.codes, self.class_weights, self.files.ignore_index
            ),
        )
        if plan.model.init_from is not None:  # progressive resizing: the half-size run's weights
            load_init_weights(get_model(learn.model), plan.model.init_from, self.files.codes)
        learn.logger = lambda *_: None  # the CLI prints the table
        learn.remove_cb(ProgressCallback)
        if progress and rank_distrib() == 0:
            learn.add_cb(BarsOnly())
        apply_speed_settings(
            learn, plan.precision.name, self.device, plan.channels_last, plan.compile
        )
        if ckpt:
            learn.model.load_state_dict(training_weights(ckpt))
        self.nan_guard = StopOnNaN()
        self.writer = CheckpointWriter()
        learn.add_cb(self.nan_guard)
        self.ema = None
        if plan.train.ema:  # from the loaded weights, or on resume the checkpoint's average
            self.ema = ModelEMA(learn.model, plan.train.ema_decay, **ema_state(ckpt))
        # callbacks that every stage's fit_one_cycle gets besides its RunRecorder (not lr_find's)
        self.stage_cbs: list[Callback] = [self.ema] if self.ema is not None else []
        self.learn = learn

    def _distributed(self) -> Any:
        """fastai distrib_ctx (DistributedDataParallel) under torchrun/accelerate, else nothing."""
        if num_distrib() <= 1:
            return contextlib.nullcontext()
        # SyncBatchNorm only runs on CUDA; on CPU (gloo) each rank keeps its own BN statistics.
        return self.learn.distrib_ctx(
            sync_bn=self.device.type == "cuda", in_notebook=False, cpu=self.device.type == "cpu"
        )

    def run(
        self,
        run_dir: Path,
        on_epoch: Callable[[EpochRow], None] | None = None,
        on_stage: Callable[[int, str, Any], None] | None = None,
    ) -> Summary:
        """Run the remaining stages, writing checkpoints, history, plots and model.pth."""
        run = Run(run_dir)
        self.learn.path = run.dir
        if rank_distrib() != 0:  # only rank 0 talks to the user
            on_epoch = on_stage = None
        else:
            run.plots.mkdir(parents=True, exist_ok=True)
            if self.class_weights is not None:
                table = dict(zip(self.files.codes, self.class_weights, strict=True))
                atomic_write_text(run.class_weights, json.dumps(table, indent=2) + "\n")
        if self.plan.train.tensorboard and rank_distrib() == 0:
            self.stage_cbs.append(
                TensorBoardLog(run.tensorboard, self.files.codes, self.state, colors=self.colors)
            )
        meta = model_meta(
            self.plan.model,
            self.files.codes,
            self.size,
            ignore_index=self.files.ignore_index,
            colors=self.colors,
            precision=self.plan.precision.validation,
        )
        try:
            try:
                with self._distributed():
                    for i, stage in enumerate(self.plan.train.stages):
                        if i > self.state.stage or (
                            i == self.state.stage and self.state.epochs_done < stage.epochs
                        ):
                            self._run_stage(i, stage, run, meta, on_epoch, on_stage)
            finally:  # Ctrl-C or an error: the last finished epoch still reaches the disk
                self.writer.wait()
        except KeyboardInterrupt as e:
            raise TrainingInterrupted(run.dir, e) from None
        except OSError as e:  # disk full, permissions: the previous checkpoint is still whole
            raise CamsegError(
                f"cannot write {e.filename or 'a run file'}: {e.strerror or e}; free space or fix "
                f"it, then continue: camseg train --resume {run.dir}"
            ) from None
        except torch.cuda.OutOfMemoryError:
            h, w = self.size
            raise CamsegError(
                f"CUDA out of memory at batch size {self.bs}, size {h}x{w}; try "
                f"--set data.batch_size={max(1, self.bs // 2)} (or a smaller data.size). "
                f"Checkpoints so far are intact: camseg train --resume {run.dir}"
            ) from None
        try:
            with stops_held() as held:  # a stop now would leave model.pth without summary.json
                summary = self._finish(run, meta)
        except OSError as e:
            raise CamsegError(
                f"cannot write {e.filename or 'a run file'}: {e.strerror or e}; free space or fix "
                f"it, then finish the run: camseg train --resume {run.dir}"
            ) from None
        if held.stop is not None:
            raise TrainingInterrupted(run.dir, held.stop, finished=True)
        return summary

    def _finish(self, run: Run, meta: dict) -> Summary:
        """model.pth, the plots, summary.json, the checkpoints' end and report.html."""
        if self.ema is not None:  # model.pth, the plots and the report: the weights validated
            self.ema.copy_to(self.learn.model)
        if rank_distrib() == 0:
            write_model_file(run.model, get_model(self.learn.model), meta)
            plot_run(
                self.learn,
                self.state.iters,
                self.state.valid_points,
                run.plots,
                self.files.codes,
                self.colors,
            )
        summary = _summary(run, self.state, self.plan.train.stages)
        if rank_distrib() == 0 and not self.plan.train.keep_checkpoints and self.state.history:
            last_at = [self.state.history[-1]["stage"], self.state.history[-1]["epoch"]]
            finish_checkpoints(run.last, run.best, best_is_last=self.state.best_at == last_at)
        if rank_distrib() == 0:
            write_report(run.dir)
        return summary

    def _run_stage(
        self,
        i: int,
        stage: StageConfig,
        run: Run,
        meta: dict,
        on_epoch: Callable[[EpochRow], None] | None,
        on_stage: Callable[[int, str, Any], None] | None,
    ) -> None:
        learn, state, name = self.learn, self.state, stage_name(stage, i)
        if self.ckpt is not None and "rng" in self.ckpt:
            # the first stage after a resume draws the random numbers the uninterrupted run
            # would have drawn at this point (the checkpoint was written right after its epoch)
            restore_rng(self.ckpt["rng"], learn.dls)
        stage_bs = self.plan.batch_sizes[i]
        if stage_bs != self.bs:
            learn.dls = build_dataloaders(
                self.plan.data, self.files, batch_size=stage_bs, device=self.device
            )
            self.bs = stage_bs
        start_epoch = state.epochs_done if i == state.stage else 0
        # fastai's freeze()/unfreeze() clear the optimizer state, so an uninterrupted run starts
        # every stage with fresh moments; only a stage resumed part-way takes them back.
        resumed = self.ckpt if start_epoch > 0 else None
        self.ckpt = None
        state.stage, state.epochs_done = i, start_epoch
        if stage.lr != "find":  # as configured (a --set on resume takes effect here)
            lr: float | LrSlice = stage.lr
        else:  # found once: a resumed stage keeps the lr it started with
            lr = state.lrs.get(str(i)) or self._found_lr(run, i, name)
        state.lrs[str(i)] = str(lr) if isinstance(lr, LrSlice) else lr
        if on_stage is not None:
            on_stage(i, name, lr)
        recorder = RunRecorder(
            run,
            state,
            i,
            name,
            meta,
            self.plan.config,
            on_epoch,
            self.writer,
            resumed=resumed,
        )
        cbs = [recorder, *self.stage_cbs]
        fit_stage(learn, stage, lr, self.plan.train, cbs=cbs, start_epoch=start_epoch)
        if self.nan_guard.where is not None:
            epoch, step = self.nan_guard.where
            last = run.last if run.last.exists() else "none yet"
            raise CamsegError(
                f"stage {name} (train.stages[{i}]): loss became NaN/inf at epoch {epoch} "
                f"step {step}; stopped. Last good checkpoint: {last}. Lower the lr and "
                f"continue: camseg train --resume {run.dir} --set 'train.stages[{i}].lr=...'"
            )
        state.stage, state.epochs_done = i + 1, 0

    def _found_lr(self, run: Run, i: int, name: str) -> float:
        """The valley suggestion of lr_find for a stage whose lr is find."""
        found = self.find_lr(run.plots / f"lr_find_{name}.png")
        lr = found.lrs["valley"]
        if lr is None:
            raise CamsegError(
                f"stage {name} (train.stages[{i}]): lr_find could not suggest a learning rate "
                f"({found.missing['valley']}); see {run.plots / f'lr_find_{name}.png'} and set "
                f"train.stages[{i}].lr to a number"
            )
        return lr

    def find_lr(self, plot: Path, on_iter: OnIter | None = None) -> Suggestions:
        """fastai lr_find: its four suggestions (valley, slide, minimum, steep; one the curve
        cannot give is None, with why), plotted, and the curve itself (lr, smoothed loss per
        iteration) as CSV beside the plot. on_iter hears of the progress (LrFindProgress)."""
        num_it = self.plan.train.lr_find_iters
        cbs = [LrFindProgress(num_it, on_iter)] if on_iter is not None else []
        with self.learn.added_cbs(cbs):
            self.learn.lr_find(num_it=num_it, show_plot=False, suggest_funcs=None)
        rec = self.learn.recorder
        found = suggest(rec.lrs, rec.losses, num_it)
        if rank_distrib() == 0:
            plot_lr_find(rec, found.lrs, found.points, plot)
            rows = "".join(
                f"{float(lr):.6g},{float(loss):.6g}\n"
                for lr, loss in zip(rec.lrs, rec.losses, strict=True)
            )
            atomic_write_text(plot.with_suffix(".csv"), "lr,loss\n" + rows)
        return found


def _summary(run: Run, state: RunState, stages: list[StageConfig]) -> Summary:
    hist = state.history
    best_stage, best_epoch = state.best_at or [0, 0]
    summary = Summary(
        run_dir=run.dir,
        best_acc_camvid=state.best,
        best_stage=stage_name(stages[best_stage], best_stage),
        best_epoch=best_epoch,
        final=hist[-1] if hist else {},
        epochs=len(hist),
        seconds=state.train_seconds,
        seconds_per_epoch=state.train_seconds / max(1, len(hist)),
        images_per_second=state.images_seen / state.train_seconds if state.train_seconds else 0.0,
        is_main=rank_distrib() == 0,
    )
    if rank_distrib() == 0:
        data = asdict(summary) | {"run_dir": str(run.dir), "lrs": state.lrs}
        if math.isnan(state.best):  # strict JSON has no NaN: null, as in metrics.json
            data["best_acc_camvid"] = None
        data.pop("is_main")
        write_summary(run, data)
    return summary
