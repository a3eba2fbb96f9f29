"""The fastai callbacks of a camseg run: NaN stop, bf16 autocast, progress bars without
fastai's table, and the recorder that writes each epoch's history row, per-class IoU row and
checkpoint; the validation metrics (acc_camvid, mIoU) as fastai `Metric`s; plus the speed
settings (precision, channels_last, torch.compile) they are switched on with.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from fastai.callback.channelslast import ChannelsLast
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastai.learner import Metric
from fastai.torch_core import rank_distrib

from camseg.config.values import Precision
from camseg.core.atomic import atomic_link, atomic_torch_save, atomic_write_text
from camseg.core.metrics import acc_camvid, class_scores, confusion_matrix, miou
from camseg.core.runs import Run
from camseg.model.files import weights_sha256
from camseg.train.checkpoint import CheckpointWriter, RunState, checkpoint_dict, load_opt_state

log = logging.getLogger(__name__)


@dataclass
class EpochRow:
    stage: int
    stage_name: str
    epoch: int
    train_loss: float
    valid_loss: float
    acc_camvid: float
    miou: float
    lr: float
    seconds: float


HISTORY_COLUMNS = (
    "stage",
    "stage_name",
    "epoch",
    "train_loss",
    "valid_loss",
    "acc_camvid",
    "miou",
    "lr",
    "seconds",
)


def write_history(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_class_iou(path: Path, codes: list[str], rows: list[dict]) -> None:
    """per_class_iou.csv: stage, epoch, then each class's IoU; empty where the class is not
    scored (Void, or in neither the labels nor the predictions), as mIoU leaves it out."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["stage", "epoch", *codes])
    for row in rows:
        ious = ["" if math.isnan(v) else f"{v:.6g}" for v in row["iou"]]
        writer.writerow([row["stage"], row["epoch"], *ious])
    atomic_write_text(path, buf.getvalue())


class StopOnNaN(Callback):
    """fastai's TerminateOnNaNCallback, remembering where the loss went bad."""

    order = -9

    def __init__(self) -> None:
        self.where: tuple[int, int] | None = None

    def after_batch(self) -> None:
        if self.training and not torch.isfinite(self.loss):
            self.where = (self.epoch, self.iter)
            raise CancelFitException


class RunRecorder(Callback):
    """After each epoch: history row, per-class IoU row, last.pth and (if acc_camvid improved)
    best.pth, written by a CheckpointWriter while the next epoch runs.

    fastai's SaveModelCallback and CSVLogger do each half of this, but neither writes
    atomically nor keeps the stage, the schedule position and the history with the weights,
    which resume needs. Runs after fastai's Recorder (order 50), which computes the metrics.
    """

    order = 60

    def __init__(
        self,
        run: Run,
        state: RunState,
        stage: int,
        stage_name: str,
        meta: dict,
        config: dict,
        on_epoch: Callable[[EpochRow], None] | None,
        writer: CheckpointWriter,
        resumed: dict | None = None,
    ) -> None:
        self.run, self.state, self.stage, self.stage_name = run, state, stage, stage_name
        self.meta, self.config, self.on_epoch, self.writer = meta, config, on_epoch, writer
        self.resumed = resumed  # the checkpoint of a stage resumed part-way
        self._losses: list[torch.Tensor] = []

    def before_fit(self) -> None:
        """A stage resumed part-way continues where the checkpoint left it: the optimizer's
        moments and the running train_loss (fastai's smoothed loss spans the whole stage)."""
        if self.resumed is None:
            return
        load_opt_state(self.learn, self.resumed["opt"])
        smooth = self.resumed.get("smooth_loss")
        if smooth is not None:
            self.recorder.smooth_loss.count = smooth["count"]
            self.recorder.smooth_loss.val = smooth["val"].to(self.recorder.smooth_loss.val)
        self.resumed = None

    def before_epoch(self) -> None:
        self._ran = False
        self._start = time.perf_counter()

    def after_batch(self) -> None:
        if not self.training:
            return
        hypers = self.opt.hypers[-1]
        it = self.state.iters
        it["stage"].append(self.stage)
        it["lr"].append(float(hypers["lr"]))
        it["mom"].append(float(hypers.get("mom", float("nan"))))
        self._losses.append(self.recorder.smooth_loss.value.detach())

    def after_validate(self) -> None:
        self._ran = True

    def after_epoch(self) -> None:
        if not self._ran:  # an epoch skipped by resume (start_epoch)
            return
        seconds = time.perf_counter() - self._start
        if self._losses:
            self.state.iters["loss"] += torch.stack(self._losses).float().cpu().tolist()
            self._losses = []
        train_loss, valid_loss, acc, miou = (float(v) for v in self.learn.final_record[:4])
        row = EpochRow(
            stage=self.stage,
            stage_name=self.stage_name,
            epoch=self.epoch,
            train_loss=train_loss,
            valid_loss=valid_loss,
            acc_camvid=acc,
            miou=miou,
            lr=float(self.opt.hypers[-1]["lr"]),
            seconds=seconds,
        )
        st = self.state
        st.history.append(asdict(row))
        mean_iou = next(m for m in self.learn.metrics if isinstance(m, MeanIoU))
        st.class_iou.append({"stage": self.stage, "epoch": self.epoch, "iou": mean_iou.class_iou})
        st.valid_points.append([len(st.iters["loss"]), valid_loss])
        st.epochs_done = self.epoch + 1
        st.train_seconds += seconds
        st.images_seen += len(self.dls.train.dataset)
        improved = not math.isnan(acc) and (math.isnan(st.best) or acc > st.best)
        if improved:
            st.best, st.best_at = acc, [self.stage, self.epoch]
        if rank_distrib() == 0:
            ckpt = checkpoint_dict(self.learn, st, self.meta, self.config)
            history = [dict(r) for r in st.history]
            class_iou = [dict(r) for r in st.class_iou]
            codes = self.meta["codes"]
            run = self.run

            def write() -> None:
                ckpt["weights_sha256"] = weights_sha256(ckpt["model"])  # here: off the epoch
                atomic_torch_save(run.last, ckpt)
                if improved:  # last.pth is the best one now: link, don't write it twice
                    atomic_link(run.last, run.best)
                # rewritten whole from the checkpoint's state, like history.csv: a resumed run
                # drops the rows of the epochs its killed run did not checkpoint
                write_history(run.history, history)
                write_class_iou(run.class_iou, codes, class_iou)

            self.writer.submit(write)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def after_fit(self) -> None:
        self.writer.wait()  # the stage's last epoch is on disk before the next stage starts


class BarsOnly(ProgressCallback):
    """fastai's progress bars without its metrics table (the CLI prints the paper's table)."""

    def _write_stats(self, log: Any) -> None:
        pass


class BF16Autocast(Callback):
    """bfloat16 mixed precision on any device: forward pass and loss under autocast, weights,
    gradients and optimizer in fp32. bf16 has fp32's range, so no loss scaling is needed.
    Training batches only: validation stays fp32, so the table's metric is the one `camseg
    evaluate` reproduces. (fastai's MixedPrecision(amp_mode='bf16') autocasts on CUDA only.)"""

    order = 10

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.autocast: Any = None

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        self.autocast = torch.autocast(self.device_type, dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self) -> None:
        if self.autocast is not None:
            self.learn.pred = self.pred.float()  # the loss and the metrics see fp32 scores

    def after_loss(self) -> None:
        self._exit()

    def after_batch(self) -> None:
        self._exit()  # a batch cancelled before its loss still leaves autocast

    def after_fit(self) -> None:
        # a fit cancelled inside a batch (CancelFitException: lr_find, a callback) skips
        # after_batch; autocast is thread state and would stay on for every later model call
        self._exit()

    def close(self) -> None:
        """Leave autocast if a batch left it on (a fit ended by an exception)."""
        self._exit()

    def _exit(self) -> None:
        if self.autocast is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None


def apply_speed_settings(
    learn: Any, precision: Precision, device: torch.device, channels_last: bool, compile: bool
) -> None:
    """A plan's training precision (camseg.core.precision), channels-last and torch.compile on a
    learner."""
    if channels_last:
        learn.add_cb(ChannelsLast())
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.add_cb(BF16Autocast(device.type))
    if compile:
        # in place: the state_dict keys stay the plain module's, so checkpoints, model.pth and
        # resume are the same with and without it
        learn.model.compile()


class ConfusionMetric(Metric):
    """Accumulates the validation confusion matrix; subclasses turn it into one number."""

    def __init__(self, n_classes: int, void_index: int | None) -> None:
        self.n_classes, self.void_index = n_classes, void_index
        self.cm: torch.Tensor | None = None

    def reset(self) -> None:
        self.cm = None

    def accumulate(self, learn) -> None:
        # Under DistributedDataParallel to_detach gathers every rank's pixels (and drops the
        # samples the distributed loader repeated to even out the ranks); otherwise a no-op.
        pred, target = learn.to_detach((learn.pred.argmax(dim=1), learn.yb[0]), cpu=False)
        cm = confusion_matrix(pred, target, self.n_classes)
        self.cm = cm if self.cm is None else self.cm + cm


class AccCamvid(ConfusionMetric):
    """Pixel accuracy ignoring Void, over the whole validation set (the paper's number)."""

    @property
    def name(self) -> str:
        return "acc_camvid"

    @property
    def value(self) -> float | None:
        return None if self.cm is None else acc_camvid(self.cm, self.void_index)


class MeanIoU(ConfusionMetric):
    """Mean IoU over the whole validation set; a class predicted but never labelled scores 0."""

    @property
    def class_iou(self) -> list[float] | None:
        """Each class's IoU, NaN where it is not scored: exactly the numbers `value` averages."""
        return None if self.cm is None else class_scores(self.cm, self.void_index).iou

    @property
    def name(self) -> str:
        return "miou"

    @property
    def value(self) -> float | None:
        return None if self.cm is None else miou(self.cm, self.void_index)
