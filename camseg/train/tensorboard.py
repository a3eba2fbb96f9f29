"""train.tensorboard: each epoch's history row (losses, metrics, lr) and image / ground truth /
prediction strips of the first validation frames as TensorBoard event files in the run folder,
through torch's SummaryWriter (the optional `tensorboard` package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback

from camseg.data.files import class_palette, label_palette
from camseg.model.network import IMAGENET_MEAN, IMAGENET_STD
from camseg.train.checkpoint import RunState

SCALARS = ("train_loss", "valid_loss", "acc_camvid", "miou", "lr")  # history.csv's names


class TensorBoardLog(Callback):
    """Logs every epoch that reaches the history, at its row's index: the steps run on across
    stages and resumes. fastai's TensorBoardCallback logs per batch at the iteration count,
    draws predictions with matplotlib and runs an extra batch to do so; this one keeps the
    predictions validation already made (with train.ema, the average's).

    A resumed run opens its writer with purge_step at the history's length, so TensorBoard
    hides what the interrupted run logged after its last checkpoint.
    """

    order = 61  # after RunRecorder (60) has appended the epoch's history row

    def __init__(
        self,
        folder: Path,
        codes: list[str],
        state: RunState,
        n_images: int = 4,
        colors: np.ndarray | None = None,
    ) -> None:
        self.folder, self.state, self.n_images = folder, state, n_images
        colors = class_palette(codes) if colors is None else colors
        self.palette = torch.from_numpy(label_palette(colors))  # an ignore value shows black
        self.writer: Any = None  # a SummaryWriter while a stage runs
        self._rows = 0  # history rows when the epoch began
        self._frames: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def before_fit(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.folder, purge_step=len(self.state.history))

    def after_batch(self) -> None:
        if self.training or self.iter > 0:
            return
        n = self.n_images  # the first validation batch: the same frames every epoch
        self._frames = (
            self.xb[0][:n].detach().float().cpu(),
            self.yb[0][:n].detach().long().cpu(),
            self.pred[:n].detach().argmax(dim=1).cpu(),
        )

    def before_epoch(self) -> None:
        self._rows = len(self.state.history)

    def after_epoch(self) -> None:
        if self.writer is None or len(self.state.history) == self._rows:
            return  # an epoch that a resume skipped
        step = len(self.state.history) - 1
        row = self.state.history[-1]
        for key in SCALARS:
            self.writer.add_scalar(key, row[key], step)
        if self._frames is not None:
            names = [Path(p).name for p in self.dls.valid_ds.items[: len(self._frames[0])]]
            for name, strip in zip(names, self._strips(*self._frames), strict=True):
                self.writer.add_image(f"valid/{name}", strip, step, dataformats="HWC")
            self._frames = None
        self.writer.flush()  # a killed run keeps every epoch it logged

    def after_fit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _strips(self, x: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor) -> np.ndarray:
        """image | ground truth | prediction side by side, uint8 N x H x 3W x 3."""
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)  # the Normalize of build_dataloaders
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        images = ((x * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1)
        return torch.cat([images, self.palette[truth], self.palette[pred]], dim=2).numpy()
