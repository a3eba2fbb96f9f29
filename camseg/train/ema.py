"""train.ema: an exponential moving average of the network's weights, updated after every
optimizer step (the idea of timm's ModelEmaV3 and Ultralytics' ModelEMA). Validation scores the
average; where checkpoints keep it is checkpoint.py's business, model.pth's is the trainer's.
"""

from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.torch_core import get_model
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class ModelEMA(Callback):
    """The average of the weights, kept beside the model for the whole run (every stage).

    It covers the whole state dict, so a frozen encoder's weights are in it from the start and
    average in once a later stage unfreezes them. BatchNorm's running mean and variance are
    averaged too (torch's AveragedModel with use_buffers=True, as timm and Ultralytics do): the
    raw model's latest statistics describe the raw weights' activations, and averaging them
    needs no extra pass over the training set per validation (torch's update_bn). Integer
    buffers (num_batches_tracked) are copied, not averaged.

    Each update moves the average by 1 - min(decay, (1 + n) / (10 + n)) towards the weights
    after n earlier updates (TensorFlow's ExponentialMovingAverage num_updates): without that
    warm-up a short run's average would still be mostly the random decoder it started from.
    """

    order = 5  # after fastai moves the model (TrainEvalCallback) and ChannelsLast converts it

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        averaged: dict[str, torch.Tensor] | None = None,
        updates: int = 0,
    ) -> None:
        """`averaged` and `updates` come from a checkpoint on resume; otherwise the average
        starts as a copy of the model's weights."""
        source = averaged if averaged is not None else get_model(model).state_dict()
        self.averaged = {k: v.detach().clone() for k, v in source.items()}
        self.decay, self.updates = decay, updates
        self._live: list[torch.Tensor] = []  # the model's own tensors, in averaged's order
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])  # (avg, live)
        self._counts: list[tuple[torch.Tensor, torch.Tensor]] = []  # num_batches_tracked
        self._raw: list[torch.Tensor] | None = None

    def before_fit(self) -> None:
        # Looked up once per stage: moving and converting the model replaces its tensors.
        live = get_model(self.learn.model).state_dict()
        self.averaged = {k: v.to(live[k].device) for k, v in self.averaged.items()}
        self._live = [live[k] for k in self.averaged]
        pairs = list(zip(self.averaged.values(), self._live, strict=True))
        self._floats = (
            [a for a, _ in pairs if a.is_floating_point()],
            [m for a, m in pairs if a.is_floating_point()],
        )
        self._counts = [(a, m) for a, m in pairs if not a.is_floating_point()]

    def after_step(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        get_ema_multi_avg_fn(decay)(*self._floats, None)
        with torch.no_grad():
            for a, m in self._counts:
                a.copy_(m)
        self.updates += 1

    def before_validate(self) -> None:
        """Validation (and so the metrics, best.pth's choice) scores the average."""
        with torch.no_grad():
            self._raw = [m.clone() for m in self._live]
            for m, a in zip(self._live, self.averaged.values(), strict=True):
                m.copy_(a)

    def after_validate(self) -> None:
        """Training goes on from its own weights."""
        if self._raw is None:
            return
        with torch.no_grad():
            for m, r in zip(self._live, self._raw, strict=True):
                m.copy_(r)
        self._raw = None

    def copy_to(self, model: nn.Module) -> None:
        """Put the average into `model` for good (the end of training: model.pth, plots)."""
        get_model(model).load_state_dict(self.averaged)
