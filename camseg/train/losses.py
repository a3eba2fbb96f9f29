"""The training loss: `train.loss` and `train.class_weights` -> the fastai loss function that
unet_learner trains with (model.build_learner). Counting classes for median-frequency weights is
camseg.data.frequencies'; the metrics, which always ignore Void, are camseg.core.metrics'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.losses import BaseLoss, CrossEntropyLossFlat, DiceLoss, FocalLoss, FocalLossFlat

from camseg.config.load import did_you_mean
from camseg.config.schema import ClassWeights, LossConfig, LovaszClasses
from camseg.data.frequencies import count_classes, median_frequency_weights
from camseg.data.layouts import DatasetFiles
from camseg.errors import CamsegError

NO_IGNORE = -100  # nn.CrossEntropyLoss's default ignore_index: no label has it


def _nothing_scored(inp: torch.Tensor) -> torch.Tensor:
    """The loss of a batch with every pixel ignored (a frame or a batch all Void with
    ignore_void): 0, with inp's graph so that the backward runs. torch's mean over no pixels
    would be NaN, which stops the stage as a diverged run."""
    return inp.as_subclass(torch.Tensor).float().sum() * 0


class VoidCrossEntropyLossFlat(CrossEntropyLossFlat):
    """fastai's CrossEntropyLossFlat, except that a batch with every pixel ignored adds 0."""

    def __call__(self, inp: torch.Tensor, targ: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        ignore = self.func.ignore_index
        if ignore != NO_IGNORE and not bool((targ != ignore).any()):
            return _nothing_scored(inp)
        return super().__call__(inp, targ, **kwargs)


class VoidFocalLoss(FocalLoss):
    """fastai's FocalLoss plus two things it lacks: an ignored class (its pixels are dropped, the
    mean is over the others, as cross-entropy's ignore_index does) and the class weights as a
    buffer, so that fastai's `loss_func.to(device)` moves them to the GPU with the model."""

    def __init__(self, gamma: float, weight: torch.Tensor | None, ignore_index: int) -> None:
        self.register_buffer("weight", weight)  # before FocalLoss stores it as a plain attribute
        super().__init__(gamma=gamma, weight=weight)
        self.ignore_index = ignore_index

    def forward(self, inp: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        if self.ignore_index != NO_IGNORE:
            keep = targ != self.ignore_index
            if not bool(keep.any()):
                return _nothing_scored(inp)
            inp, targ = inp[keep], targ[keep]
        return super().forward(inp, targ)


class VoidFocalLossFlat(FocalLossFlat):
    """fastai's FocalLossFlat (softmax activation, argmax decodes over the class axis) on
    VoidFocalLoss; FocalLossFlat's own __init__ can only build fastai's FocalLoss."""

    def __init__(self, gamma: float, weight: torch.Tensor | None, ignore_index: int) -> None:
        BaseLoss.__init__(
            self, VoidFocalLoss, gamma=gamma, weight=weight, ignore_index=ignore_index, axis=1
        )


class VoidDiceLoss(DiceLoss):
    """fastai's DiceLoss, averaged over images and classes (fastai sums them, which would grow
    with the batch size and outweigh cross-entropy in ce_dice). With an ignored class, its pixels
    are left out of both the predicted and the true areas; fastai's __call__ has no mask, hence
    the few lines of its formula here.

    No class weights: Dice is already a per-class score, each class counting the same whatever
    its pixel share."""

    def __init__(self, smooth: float, ignore_index: int) -> None:
        super().__init__(axis=1, smooth=smooth, reduction="mean")
        self.ignore_index = ignore_index

    def __call__(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        if self.ignore_index == NO_IGNORE:
            return super().__call__(pred, targ)
        pred, targ = pred.as_subclass(torch.Tensor), targ.as_subclass(torch.Tensor)
        kept = targ != self.ignore_index
        keep = kept.unsqueeze(self.axis)
        probs = self.activation(pred) * keep
        # an ignore value outside the classes (255) has no one-hot column: any class will do,
        # the mask zeroes it
        true = self._one_hot(targ.masked_fill(~kept, 0), pred.shape[self.axis], self.axis) * keep
        dims = list(range(2, pred.ndim))
        inter = (probs * true).sum(dims)
        union = ((probs**2 if self.square_in_union else probs) + true).sum(dims)
        loss = 1 - (2 * inter + self.smooth) / (union + self.smooth)
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


class CrossEntropyDiceLoss(VoidCrossEntropyLossFlat):
    """Cross-entropy + dice_weight x Dice. A CrossEntropyLossFlat, so fastai finds the same
    activation (softmax) and decodes (argmax) over the class axis for get_preds and predict, and
    moves the class weights to the device (it moves a BaseLoss or an nn.Module, nothing else)."""

    def __init__(
        self, dice: VoidDiceLoss, dice_weight: float, weight: torch.Tensor | None, ignore_index: int
    ) -> None:
        super().__init__(axis=1, weight=weight, ignore_index=ignore_index)
        self.dice, self.dice_weight = dice, dice_weight

    def __call__(self, inp: torch.Tensor, targ: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super().__call__(inp, targ, **kwargs) + self.dice_weight * self.dice(inp, targ)


class LovaszSoftmaxLoss(VoidCrossEntropyLossFlat):
    """Cross-entropy + lovasz_weight x the Lovász-softmax loss (Berman, Triki and Blaschko 2018,
    "The Lovász-Softmax loss: a tractable surrogate for the optimization of the
    intersection-over-union measure"): the convex extension of 1 - IoU per class, over the
    batch's pixels, averaged over the classes labelled in the batch (or over all classes, see
    lovasz_softmax). With lovasz_weight alone (name lovasz) the cross-entropy term is dropped.
    fastai has no Lovász loss; the formula is the paper's. A CrossEntropyLossFlat for the same
    reasons as CrossEntropyDiceLoss."""

    def __init__(
        self,
        ce: bool,
        lovasz_weight: float,
        weight: torch.Tensor | None,
        ignore_index: int,
        classes: LovaszClasses = "present",
        absent_weight: float = 1.0,
    ) -> None:
        super().__init__(axis=1, weight=weight, ignore_index=ignore_index)
        self.ce, self.lovasz_weight, self.ignore = ce, lovasz_weight, ignore_index
        self.classes, self.absent_weight = classes, absent_weight

    def __call__(self, inp: torch.Tensor, targ: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        lovasz = lovasz_softmax(
            inp.as_subclass(torch.Tensor).float().softmax(1),
            targ.as_subclass(torch.Tensor),
            self.ignore,
            self.classes,
            self.absent_weight,
        )
        if not self.ce:
            return lovasz
        return super().__call__(inp, targ, **kwargs) + self.lovasz_weight * lovasz


def lovasz_softmax(
    probs: torch.Tensor,
    targ: torch.Tensor,
    ignore_index: int,
    classes: LovaszClasses = "present",
    absent_weight: float = 1.0,
) -> torch.Tensor:
    """probs (N, C, H, W) class probabilities, targ (N, H, W) class indices. With one-hot probs
    it is 1 - the mean IoU over the classes labelled in the batch (classes "present"), or over
    every class but ignore_index ("all": an absent class counts IoU 1 if predicted nowhere, else
    0; with soft probs its term is its largest probability). With "all", each absent class
    weighs absent_weight in the mean against 1 for a labelled one (0: "present"'s mean)."""
    targ = targ.reshape(-1)
    keep = targ != ignore_index if ignore_index != NO_IGNORE else None
    if keep is not None:
        targ = targ[keep]
    if not len(targ):
        return _nothing_scored(probs)
    present = torch.unique(targ)
    rows = _pixels(probs, present, keep)  # (classes, pixels)
    fg = targ == present[:, None]
    errors = (fg.to(rows.dtype) - rows).abs()
    with torch.no_grad():  # the Lovász weights are constant between reorderings: no gradient
        weights = _lovasz_weights(errors, fg)
    terms = (errors * weights).sum(1)
    if classes == "all" and absent_weight:  # at weight 0 the absent classes drop out
        labelled = set(present.tolist())
        absent = [c for c in range(probs.shape[1]) if c != ignore_index and c not in labelled]
        if absent:  # no labelled pixel: Lovász weight 1 for the largest error, 0 elsewhere; no sort
            absent_rows = _pixels(probs, torch.tensor(absent, device=probs.device), keep)
            absent_sum = absent_rows.max(1).values.sum()
            return (terms.sum() + absent_weight * absent_sum) / (
                len(terms) + absent_weight * len(absent)
            )
    return terms.mean()


def _pixels(probs: torch.Tensor, classes: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """probs (N, C, H, W) -> (len(classes), kept pixels)."""
    rows = probs[:, classes].movedim(1, 0).reshape(len(classes), -1)
    return rows if keep is None else rows[:, keep]


def _lovasz_weights(errors: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """The gradient of the Lovász extension of 1 - IoU at errors (classes, pixels), fg the true
    masks: sorted by error, the step in the Jaccard loss that each pixel adds, put back in pixel
    order. The loss is then (errors * weights).sum(1), as in the paper's sorted form."""
    order = _descending(errors)
    fg = fg.gather(1, order).to(errors.dtype)
    labelled = fg.sum(1, keepdim=True)
    inside = fg.cumsum(1)  # labelled pixels among the first k
    seen = torch.arange(1, fg.shape[1] + 1, dtype=errors.dtype, device=errors.device)
    jaccard = 1 - (labelled - inside) / (labelled + seen - inside)
    steps = jaccard.diff(dim=1, prepend=jaccard.new_zeros(len(jaccard), 1))
    return torch.empty_like(steps).scatter_(1, order, steps)


def _descending(x: torch.Tensor) -> torch.Tensor:
    """Per row, the indices that order x (errors, in [0, 1]) from largest to smallest. On a CPU
    the errors are keyed to 16 bits and put in order by numpy's radix sort, ~3x its float argsort
    and ~10x torch.sort on one core for a batch of 96x128 frames; errors closer than 1/65535 may
    swap, which moves the loss by less than their difference. Elsewhere torch's sort."""
    if x.device.type != "cpu":
        return x.argsort(1, descending=True)
    keys = torch.mul(x, -65535).add_(65535.5).to(torch.uint16).numpy()  # round(65535 (1 - x))
    return torch.from_numpy(np.argsort(keys, axis=1, kind="stable"))


def _ce(cfg: LossConfig, weight: torch.Tensor | None, ignore: int) -> Any:
    # what unet_learner picks for a MaskBlock by itself, plus the weights and ignore_index
    return VoidCrossEntropyLossFlat(axis=1, weight=weight, ignore_index=ignore)


def _focal(cfg: LossConfig, weight: torch.Tensor | None, ignore: int) -> Any:
    return VoidFocalLossFlat(gamma=cfg.gamma, weight=weight, ignore_index=ignore)


def _dice(cfg: LossConfig, weight: torch.Tensor | None, ignore: int) -> Any:
    return VoidDiceLoss(smooth=cfg.smooth, ignore_index=ignore)


def _ce_dice(cfg: LossConfig, weight: torch.Tensor | None, ignore: int) -> Any:
    dice = VoidDiceLoss(smooth=cfg.smooth, ignore_index=ignore)
    return CrossEntropyDiceLoss(dice, cfg.dice_weight, weight=weight, ignore_index=ignore)


def _lovasz(cfg: LossConfig, weight: torch.Tensor | None, ignore: int) -> Any:
    return LovaszSoftmaxLoss(
        False, 1.0, weight, ignore, cfg.lovasz_classes, cfg.lovasz_absent_weight
    )


def _ce_lovasz(cfg: LossConfig, weight: torch.Tensor | None, ignore: int) -> Any:
    return LovaszSoftmaxLoss(
        True, cfg.lovasz_weight, weight, ignore, cfg.lovasz_classes, cfg.lovasz_absent_weight
    )


# train.loss.name -> (config, class weights or None, ignored class index) -> fastai loss
LOSSES: dict[str, Callable[[LossConfig, torch.Tensor | None, int], Any]] = {
    "ce": _ce,
    "focal": _focal,
    "dice": _dice,
    "ce_dice": _ce_dice,
    "lovasz": _lovasz,
    "ce_lovasz": _ce_lovasz,
}


def build_loss(
    cfg: LossConfig, codes: list[str], weights: list[float] | None, ignore_index: int
) -> Any:
    """The loss of `train.loss`; `weights` are one per class in codes order (None: all 1).
    `ignore_index` (data.ignore_index): a value outside the classes (255) is never trained on;
    a class (CamVid's Void) is trained on as fastai does, unless train.loss.ignore_void."""
    weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)
    if ignore_index >= len(codes):
        ignore = ignore_index
    else:
        ignore = ignore_index if cfg.ignore_void else NO_IGNORE
    return LOSSES[cfg.name](cfg, weight, ignore)


def class_weights(
    spec: ClassWeights, files: DatasetFiles, size: tuple[int, int], cache_root: Path
) -> list[float] | None:
    """`train.class_weights` as one weight per class in codes order, or None for none.

    median_frequency counts the training labels at the training size (cached in cache_root);
    a table names classes of the dataset's codes, the others weigh 1."""
    if spec == "median_frequency":
        return median_frequency_weights(count_classes(files, size, cache_root), files.void_index)
    if not isinstance(spec, dict):  # none
        return None
    unknown = [name for name in spec if name not in files.codes]
    if unknown:
        name = unknown[0]
        raise CamsegError(
            f"train.class_weights.{name}: no class {name!r} in {files.codes_file}; "
            f"{did_you_mean(name, files.codes, 'train.class_weights')}"
        )
    return [spec.get(code, 1.0) for code in files.codes]
