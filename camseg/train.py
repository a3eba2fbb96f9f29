"""The paper's staged recipe: run folders, fit_one_cycle stage by stage, atomic checkpoints,
history, plots, model.pth, and resume after a crash, Ctrl-C or kill -9.

The data and the network come from data/ and model.py; the console table belongs to the CLI,
which passes `on_epoch` to see each finished epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import platform
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.progress import ProgressCallback
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.torch_core import num_distrib, rank_distrib, set_seed

from camseg import __version__
from camseg.atomic import atomic_link, atomic_torch_save, atomic_write_text, require_folder_path
from camseg.config import (
    Config,
    LrSlice,
    ModelConfig,
    StageConfig,
    TrainConfig,
    absolute_paths,
    dump_config,
    load_config,
)
from camseg.data import build_dataloaders, check_dataset, find_files
from camseg.data.layouts import resolve_size
from camseg.distributed import init_distributed, rank0_first, share_path
from camseg.errors import CamsegError
from camseg.metrics import AccCamvid, MeanIoU
from camseg.model import (
    CHECKPOINT_FORMAT,
    FILE_VERSION,
    build_learner,
    cpu_has_bf16,
    model_meta,
    resolve_device,
    write_model_file,
)
from camseg.precision import training_precision, validation_precision
from camseg.runs import Run, create_run_dir, resolve_init_from

log = logging.getLogger(__name__)

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


@dataclass
class RunState:
    """Everything about a run that must survive a restart; saved inside every checkpoint."""

    stage: int = 0  # stage in progress
    epochs_done: int = 0  # completed epochs of that stage
    history: list[dict] = field(default_factory=list)
    iters: dict[str, list] = field(
        default_factory=lambda: {"stage": [], "lr": [], "mom": [], "loss": []}
    )
    valid_points: list[list[float]] = field(default_factory=list)  # [iteration, valid_loss]
    lrs: dict[str, Any] = field(default_factory=dict)  # stage index -> lr actually used
    best: float = math.nan  # no epoch scored yet
    best_at: list[int] = field(default_factory=list)  # [stage, epoch]
    train_seconds: float = 0.0
    images_seen: int = 0


class TrainingInterrupted(Exception):
    """Ctrl-C: the last finished epoch is saved; `resume` says how to continue."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"training interrupted; resume with: camseg train --resume {run_dir}")
        self.run_dir = run_dir


# ---- run folder ---------------------------------------------------------------------------


def run_name(cfg: Config, config_path: Path | None, name: str | None) -> str:
    name = name or cfg.output.name or (config_path.stem if config_path else "run")
    if not name or "/" in name or name in (".", ".."):
        raise CamsegError(f"run name {name!r} is not a plain folder name")
    return name


def environment(device: torch.device) -> dict[str, Any]:
    import fastai
    import torchvision

    env: dict[str, Any] = {
        "camseg": __version__,
        "fastai": fastai.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "world_size": max(1, num_distrib()),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
    return env


def start_run(cfg: Config, config_path: Path | None, name: str | None, command: str) -> Path:
    """Make the run folder and write config.yaml, command.txt, env.json before any batch."""
    device = resolve_device(cfg.train.device)
    run_dir = create_run_dir(cfg.output.dir, run_name(cfg, config_path, name))
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic_write_text(run_dir / "command.txt", command + "\n")
    atomic_write_text(run_dir / "env.json", json.dumps(environment(device), indent=2) + "\n")
    return run_dir


# ---- callbacks ----------------------------------------------------------------------------


class StopOnNaN(Callback):
    """fastai's TerminateOnNaNCallback, remembering where the loss went bad."""

    order = -9

    def __init__(self) -> None:
        self.where: tuple[int, int] | None = None

    def after_batch(self) -> None:
        if self.training and not torch.isfinite(self.loss):
            self.where = (self.epoch, self.iter)
            raise CancelFitException


class CheckpointWriter:
    """Writes each epoch's checkpoint in a background thread while the next epoch trains.

    The caller hands over a snapshot (copied tensors), so training may go on changing the
    weights; the write itself (serialise, fsync, rename) overlaps the next epoch. One write at
    a time: submitting waits for the previous one, and a failed write (disk full) raises in the
    training thread at the next submit or wait. Measured on 2 CPU cores: a 370 MB ResNet18
    U-Net checkpoint costs ~0.35 s, a tenth of a 96x128 epoch of camvid_tiny.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name="camseg-checkpoint")
        self._thread.start()  # not a daemon: an exiting interpreter still finishes the write

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # handed to the training thread
            self._error = e

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class RunRecorder(Callback):
    """After each epoch: history row, last.pth and (if acc_camvid improved) best.pth, written
    by a CheckpointWriter while the next epoch runs.

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
        _load_opt_state(self.learn, self.resumed["opt"])
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
            run = self.run

            def write() -> None:
                atomic_torch_save(run.last, ckpt)
                if improved:  # last.pth is the best one now: link, don't write it twice
                    atomic_link(run.last, run.best)
                write_history(run.dir / "history.csv", history)

            self.writer.submit(write)
        if self.on_epoch is not None:
            self.on_epoch(row)

    def after_fit(self) -> None:
        self.writer.wait()  # the stage's last epoch is on disk before the next stage starts


class BarsOnly(ProgressCallback):
    """fastai's progress bars without its metrics table (the CLI prints the paper's table)."""

    def _write_stats(self, log: Any) -> None:
        pass


def checkpoint_dict(learn: Any, state: RunState, meta: dict, config: dict) -> dict:
    """Everything resume needs, with tensors copied (on a CPU `.cpu()` would be the live
    tensor itself), so the dict can be written while training goes on."""
    model = learn.model.module if hasattr(learn.model, "module") else learn.model
    return {
        "format": CHECKPOINT_FORMAT,
        "version": FILE_VERSION,
        "meta": meta,
        "config": config,
        "model": {k: _snapshot(v) for k, v in model.state_dict().items()},
        "opt": _plain(learn.opt.state_dict()),
        "smooth_loss": {
            "count": learn.recorder.smooth_loss.count,
            "val": _snapshot(learn.recorder.smooth_loss.val),
        },
        "rng": rng_state(learn.dls),
        "state": asdict(state),
    }


def rng_state(dls: Any) -> dict[str, Any]:
    """Every random state that the next epoch draws from: Python's, NumPy's and torch's (the
    augmentations, the DataLoader workers' seeds) and each fastai DataLoader's own generator
    (the shuffle order). Resume restores them instead of reseeding."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "loaders": [_base_loader(dl).rng.getstate() for dl in getattr(dls, "loaders", [])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], dls: Any) -> None:
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for dl, dl_state in zip(dls.loaders, state["loaders"], strict=True):
        _base_loader(dl).rng.setstate(_as_tuples(dl_state))


def _base_loader(dl: Any) -> Any:
    """The fastai DataLoader itself: under distrib_ctx each is wrapped in a DistributedDL."""
    return getattr(dl, "dl", dl)


def _as_tuples(obj: Any) -> Any:
    """random.setstate wants the nested tuples random.getstate gave (a reload may give lists)."""
    return tuple(_as_tuples(x) for x in obj) if isinstance(obj, list | tuple) else obj


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    # a plain Tensor: fastai's TensorBase subclass would not load with weights_only
    return t.detach().to("cpu", copy=True).as_subclass(torch.Tensor)


def _plain(obj: Any) -> Any:
    """fastai's optimizer state as dicts, lists and tensors, so it loads with weights_only."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple) or type(obj).__name__ == "L":
        return [_plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _snapshot(obj)
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars
        return obj.item()
    return obj


def _load_opt_state(learn: Any, state: dict) -> None:
    from fastcore.foundation import L

    learn.opt.load_state_dict({"state": state["state"], "hypers": L(state["hypers"])})


def write_history(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


# ---- the recipe ---------------------------------------------------------------------------


def _stage_name(stage: StageConfig, i: int) -> str:
    return stage.name or f"stage-{i + 1}"


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

    def _exit(self) -> None:
        if self.autocast is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None


def _enable_precision(learn: Any, cfg: Config, device: torch.device) -> None:
    precision = training_precision(cfg.train.fp16, cfg.train.bf16, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("train.bf16 on a CPU without native bfloat16: it is emulated and slower")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CamsegError("train.bf16=true: this GPU has no bfloat16; use train.fp16 instead")
    channels_last = (
        device.type == "cuda" if cfg.train.channels_last == "auto" else cfg.train.channels_last
    )
    if channels_last:
        from fastai.callback.channelslast import ChannelsLast

        learn.add_cb(ChannelsLast())
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.add_cb(BF16Autocast(device.type))


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
    learn.fit_one_cycle(
        stage.epochs,
        lr_max=lr.as_fastai() if isinstance(lr, LrSlice) else lr,
        pct_start=stage.pct_start,
        moms=train_cfg.moms,
        wd=train_cfg.wd,
        cbs=cbs,
        start_epoch=start_epoch,
    )


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
    """A learner ready to run a config's stages: device chosen, data checked, weights loaded.

    Everything that can fail on bad input happens here, before a run folder exists.
    """

    def __init__(self, cfg: Config, ckpt: dict | None = None, progress: bool = True) -> None:
        self.cfg, self.ckpt = cfg, ckpt
        self.device = resolve_device(cfg.train.device)
        _check_data_folders(cfg)
        state = RunState(**ckpt["state"]) if ckpt else RunState()
        self.state = state
        set_seed(cfg.train.seed, reproducible=True)
        if num_distrib() > 1:
            init_distributed(self.device)
        with rank0_first():  # rank 0 generates a synthetic set while the others wait
            self.files = find_files(cfg.data)
        if ckpt:
            _check_same_classes(self.files.root, self.files.codes, ckpt)
        report = check_dataset(self.files)
        report.raise_if_bad()
        self.n_train = report.n_train
        self.size = resolve_size(cfg.data.size, self.files.images[0])
        self._check_batch_norm(state.stage)
        stages = cfg.train.stages
        first = stages[state.stage] if state.stage < len(stages) else stages[-1]
        self.bs = self._batch_size(first)
        dls = build_dataloaders(cfg.data, self.files, batch_size=self.bs, device=self.device)
        n, void = len(self.files.codes), self.files.void_index
        # A resumed run takes its weights from the checkpoint: no download, no init_from.
        model_cfg = cfg.model
        if ckpt:
            model_cfg = model_cfg.model_copy(
                update={"pretrained": False, "weights": None, "init_from": None}
            )
        learn = build_learner(
            dls,
            model_cfg,
            codes=self.files.codes,
            metrics=[AccCamvid(n, void), MeanIoU(n, void)],
            path=Path("."),
            wd=cfg.train.wd,
            moms=cfg.train.moms,
        )
        learn.logger = lambda *_: None  # the CLI prints the table
        learn.remove_cb(ProgressCallback)
        if progress and rank_distrib() == 0:
            learn.add_cb(BarsOnly())
        _enable_precision(learn, cfg, self.device)
        if ckpt:
            learn.model.load_state_dict(ckpt["model"])
        self.nan_guard = StopOnNaN()
        self.writer = CheckpointWriter()
        learn.add_cb(self.nan_guard)
        self.learn = learn

    def _batch_size(self, stage: StageConfig) -> int:
        """The stage's batch size, at most the training set: fastai drops the last incomplete
        training batch, so a batch larger than the set would train on nothing at all."""
        bs = stage.batch_size or self.cfg.data.batch_size
        if bs > self.n_train:
            log.warning(
                "batch size %d is larger than the %d training images; using %d",
                bs,
                self.n_train,
                self.n_train,
            )
            return self.n_train
        return bs

    def _check_batch_norm(self, first_stage: int) -> None:
        """Refuse a size and batch size that leave BatchNorm one value per channel.

        The ResNet encoder halves the frame five times (ceil each time), so its last block and
        the U-Net's middle block see ceil(H/32) x ceil(W/32) cells; BatchNorm needs more than
        one value per channel to train. At the smallest size, 32x32, that is one cell, so a
        batch of one image fails at the first step, after the run folder exists.
        """
        h, w = self.size
        cells = math.ceil(h / 32) * math.ceil(w / 32)
        for i, stage in enumerate(self.cfg.train.stages):
            if i < first_stage:
                continue
            wanted = stage.batch_size or self.cfg.data.batch_size
            if min(wanted, self.n_train) * cells > 1:
                continue
            key = f"train.stages[{i}].batch_size" if stage.batch_size else "data.batch_size"
            why = f"{key}=1" if wanted == 1 else "a batch of 1 (the only training image)"
            size = self.cfg.data.size
            shown = f"{h}x{w}" if isinstance(size, tuple) else f"{size:g} ({h}x{w} here)"
            raise CamsegError(
                f"data.size {shown} with {why}: the U-Net's ResNet encoder reduces {h}x{w} to 1x1,"
                f" and BatchNorm cannot train on one value per channel; use a batch size of 2 "
                f"or more, or a data.size with a side over 32 pixels (e.g. [32, 64] or [64, 64])"
            )

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
        meta = model_meta(
            self.cfg.model,
            self.files.codes,
            self.size,
            precision=validation_precision(self.cfg.train.fp16, self.cfg.train.bf16, self.device),
        )
        try:
            try:
                with self._distributed():
                    for i, stage in enumerate(self.cfg.train.stages):
                        if i > self.state.stage or (
                            i == self.state.stage and self.state.epochs_done < stage.epochs
                        ):
                            self._run_stage(i, stage, run, meta, on_epoch, on_stage)
            finally:  # Ctrl-C or an error: the last finished epoch still reaches the disk
                self.writer.wait()
        except KeyboardInterrupt:
            raise TrainingInterrupted(run.dir) from None
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
        if rank_distrib() == 0:
            write_model_file(run.model, self.learn.model, meta)
            _finish_plots(self.learn, self.state, run, self.files.codes)
        summary = _summary(run, self.state, self.cfg)
        if rank_distrib() == 0:
            from camseg.report import write_report

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
        learn, state, name = self.learn, self.state, _stage_name(stage, i)
        if self.ckpt is not None and "rng" in self.ckpt:
            # the first stage after a resume draws the random numbers the uninterrupted run
            # would have drawn at this point (the checkpoint was written right after its epoch)
            restore_rng(self.ckpt["rng"], learn.dls)
        stage_bs = self._batch_size(stage)
        if stage_bs != self.bs:
            learn.dls = build_dataloaders(
                self.cfg.data, self.files, batch_size=stage_bs, device=self.device
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
            lr = state.lrs.get(str(i)) or self.find_lr(run.plots / f"lr_find_{name}.png")["valley"]
        state.lrs[str(i)] = str(lr) if isinstance(lr, LrSlice) else lr
        if on_stage is not None:
            on_stage(i, name, lr)
        recorder = RunRecorder(
            run,
            state,
            i,
            name,
            meta,
            self.cfg.model_dump(mode="json"),
            on_epoch,
            self.writer,
            resumed=resumed,
        )
        fit_stage(learn, stage, lr, self.cfg.train, cbs=[recorder], start_epoch=start_epoch)
        if self.nan_guard.where is not None:
            epoch, step = self.nan_guard.where
            last = run.last if run.last.exists() else "none yet"
            raise CamsegError(
                f"stage {name} (train.stages[{i}]): loss became NaN/inf at epoch {epoch} "
                f"step {step}; stopped. Last good checkpoint: {last}. Lower the lr and "
                f"continue: camseg train --resume {run.dir} --set 'train.stages[{i}].lr=...'"
            )
        state.stage, state.epochs_done = i + 1, 0

    def find_lr(self, plot: Path) -> dict[str, float]:
        """fastai lr_find: its four suggestions (valley, slide, minimum, steep), plotted, and
        the curve itself (lr, smoothed loss per iteration) as CSV beside the plot."""
        from camseg.plots import plot_lr_find

        found = self.learn.lr_find(
            num_it=self.cfg.train.lr_find_iters,
            show_plot=False,
            suggest_funcs=(valley, slide, minimum, steep),
        )
        suggestions = {k: float(v) for k, v in found._asdict().items()}
        if rank_distrib() == 0:
            plot_lr_find(self.learn.recorder, suggestions, plot)
            rec = self.learn.recorder
            rows = "".join(
                f"{float(lr):.6g},{float(loss):.6g}\n"
                for lr, loss in zip(rec.lrs, rec.losses, strict=True)
            )
            atomic_write_text(plot.with_suffix(".csv"), "lr,loss\n" + rows)
        return suggestions


def _check_data_folders(cfg: Config) -> None:
    """The folders training writes data into are not blocked by a file (checked before the
    slow work, so nothing is left half-made)."""
    if cfg.data.cache is not False:
        from camseg.data.cache import default_root

        root = default_root() if cfg.data.cache is True else cfg.data.cache
        require_folder_path(
            root, "data.cache", "set data.cache to a folder, or true for ~/.cache/camseg"
        )
    if cfg.data.layout == "synthetic":
        require_folder_path(
            cfg.data.root, "data.root", "the synthetic layout generates its scenes into a folder"
        )


def _check_output_dir(path: Path) -> None:
    require_folder_path(
        path, "output.dir", "set output.dir to a folder, e.g. --set output.dir=runs"
    )


def _check_same_classes(root: Path, codes: list[str], ckpt: dict) -> None:
    """A resumed run's classes are its checkpoint's: its last layer has one output per class."""
    trained = ckpt.get("meta", {}).get("codes")
    if trained is None or list(trained) == list(codes):
        return
    if len(trained) != len(codes):
        diff = f"{len(codes)} classes, the checkpoint's {len(trained)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(codes, trained, strict=True)) if a != b)
        diff = f"class {i} is {codes[i]!r}, the checkpoint's {trained[i]!r}"
    raise CamsegError(
        f"--resume: the dataset {root} has other classes than this run was trained on ({diff});"
        f" the classes cannot change on resume: set data.root and data.layout back to the run's "
        f"dataset, or start a new run"
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
    on_start: Callable[[Path], None] | None = None,
    on_stage: Callable[[int, str, Any], None] | None = None,
) -> Summary:
    """A new run: check and build everything, then make the run folder and train."""
    cfg = _init_file_resolved(absolute_paths(cfg))  # config.yaml names the exact file taken
    _check_output_dir(cfg.output.dir)
    trainer = Trainer(cfg, progress=progress)
    run_dir = start_run(cfg, config_path, name, command) if rank_distrib() == 0 else None
    run_dir = share_path(run_dir)
    if on_start is not None and rank_distrib() == 0:
        on_start(run_dir)
    return trainer.run(run_dir, on_epoch=on_epoch, on_stage=on_stage)


def train_resume(
    run_dir: Path,
    *,
    overrides: list[str] | None = None,
    progress: bool = True,
    on_epoch: Callable[[EpochRow], None] | None = None,
    on_stage: Callable[[int, str, Any], None] | None = None,
) -> Summary:
    """Continue a run from its last checkpoint (or from the start if none was written).

    A finished run is left as it is, and the model settings cannot change: the checkpoint
    holds that network's weights."""
    run = Run(run_dir.absolute())  # summary.json names it as a new run's: absolute
    if not (run.dir / "config.yaml").is_file():
        raise CamsegError(f"--resume {run_dir}: not a run folder (no config.yaml)")
    if run.finished:
        raise CamsegError(
            f"--resume {run_dir}: this run is finished (it has model.pth and summary.json); "
            f"nothing to resume, nothing changed. To train it further, start a new run from "
            f"its weights: camseg train --config {run_dir / 'config.yaml'} "
            f"--set model.init_from={run_dir / 'model.pth'}"
        )
    saved = load_config(run.dir / "config.yaml")
    cfg = load_config(run.dir / "config.yaml", overrides or [])
    _check_same_model(run_dir, absolute_paths(saved).model, absolute_paths(cfg).model)
    for stray in run.checkpoints.glob(".*.tmp"):  # a write the crash cut short
        stray.unlink()
    ckpt = _load_checkpoint(run.last) if run.last.is_file() else None
    trainer = Trainer(cfg, ckpt=ckpt, progress=progress)
    if overrides and rank_distrib() == 0:
        atomic_write_text(run.dir / "config.yaml", dump_config(absolute_paths(cfg)))
    return trainer.run(run.dir, on_epoch=on_epoch, on_stage=on_stage)


def _load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CamsegError(
            f"{path}: cannot read checkpoint ({type(e).__name__}); it may be damaged"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CamsegError(f"{path}: not a camseg checkpoint")
    return ckpt


def _finish_plots(learn: Any, state: RunState, run: Run, codes: list[str]) -> None:
    from camseg.plots import plot_losses, plot_results, plot_schedule

    plot_schedule(state.iters, run.plots / "schedule.png")
    plot_losses(state.iters, state.valid_points, run.plots / "loss.png")
    plot_results(learn, codes, run.plots / "results.png")


def _summary(run: Run, state: RunState, cfg: Config) -> Summary:
    hist = state.history
    stages = cfg.train.stages
    best_stage, best_epoch = state.best_at or [0, 0]
    summary = Summary(
        run_dir=run.dir,
        best_acc_camvid=state.best,
        best_stage=_stage_name(stages[best_stage], best_stage),
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
        atomic_write_text(run.dir / "summary.json", json.dumps(data, indent=2) + "\n")
    return summary


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
) -> tuple[Path, dict[str, float]]:
    """fastai's lr_find for one stage, from the weights that stage starts from: the config's
    (ImageNet or init_from) for stage 0; for a later stage, `start_from` (a run or checkpoint
    that finished the stages before it), because a fresh decoder is not what that stage sees.

    Writes lr_find.png and lr_find.json to a new folder out_parent/<name>-lr_find[-k].
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
    bs = stage.batch_size or cfg.data.batch_size
    trainer = Trainer(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": bs})}),
        progress=progress,
    )
    learn = trainer.learn
    if stage.freeze:
        learn.freeze()
    else:
        learn.unfreeze()
    out_dir = create_run_dir(out_parent, f"{name}-lr_find")
    learn.path = out_dir
    suggestions = trainer.find_lr(out_dir / "lr_find.png")
    (out_dir / "checkpoints").rmdir()  # lr_find's temporary weights went there
    atomic_write_text(out_dir / "lr_find.json", json.dumps(suggestions, indent=2) + "\n")
    return out_dir, suggestions


def describe_command(argv: list[str]) -> str:
    """command.txt: the command line (shell-quoted) and the folder it ran in."""
    import shlex

    return f"{shlex.join(argv)}\n# cwd: {Path.cwd()}"
