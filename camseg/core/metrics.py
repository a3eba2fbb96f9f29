"""Void-masked pixel accuracy (the paper's acc_camvid), mIoU and per-class scores, all from one
confusion matrix accumulated over a whole split. Plain torch, no fastai: the fastai `Metric`s
that accumulate the matrix in training are in camseg.train.callbacks.

Not a mean of batch means: a batch with few non-Void pixels weighs what its pixels weigh.
mIoU follows mmsegmentation and torchmetrics: a class predicted but never labelled scores 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n, n) int64 counts; row = true class, column = predicted class.

    `pred` holds class indices (any shape) or logits with classes on dim 1.
    """
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(dim=1)
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (target >= 0) & (target < n_classes)
    flat = target[keep] * n_classes + pred[keep]
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def acc_camvid(cm: torch.Tensor, void_index: int | None) -> float:
    """Correct pixels / pixels whose true class is not Void (None: every class is scored).
    NaN when every pixel is Void. Label values outside the classes (an ignore value of 255)
    never reach the matrix (`confusion_matrix` drops them)."""
    cm = cm.double()
    keep = torch.ones(cm.shape[0], dtype=torch.bool, device=cm.device)
    if void_index is not None:
        keep[void_index] = False
    total = cm[keep].sum()
    if total == 0:
        return float("nan")
    return float(cm.diagonal()[keep].sum() / total)


def pixel_acc(cm: torch.Tensor) -> float:
    """Correct pixels / all pixels, Void counted."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total else float("nan")


@dataclass(frozen=True)
class ClassScores:
    iou: list[float]
    precision: list[float]
    recall: list[float]
    share: list[float]
    present: list[bool]


def class_scores(cm: torch.Tensor, void_index: int | None = None) -> ClassScores:
    """Per-class IoU, precision, recall (NaN where undefined) and pixel share of the labels.

    With void_index, Void-labelled pixels are not scored (as in acc_camvid and miou): a
    prediction on them is neither right nor wrong, and Void's own scores are NaN. Pixel shares
    still count every pixel. This IoU is the one definition: miou averages it, training's
    per_class_iou.csv and evaluate's per_class.csv report it.
    """
    cm = cm.double().cpu()
    share_total = cm.sum()
    share = cm.sum(dim=1) / share_total if share_total else torch.full((cm.shape[0],), float("nan"))
    if void_index is not None:
        cm = cm.clone()
        cm[void_index, :] = 0
    tp = cm.diagonal()
    true = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    union = true + predicted - tp

    def div(a: torch.Tensor, b: torch.Tensor) -> list[float]:
        return torch.where(b > 0, a / b.clamp(min=1), torch.full_like(a, float("nan"))).tolist()

    iou, precision, recall = div(tp, union), div(tp, predicted), div(tp, true)
    if void_index is not None:
        iou[void_index] = precision[void_index] = recall[void_index] = float("nan")
    return ClassScores(
        iou=iou,
        precision=precision,
        recall=recall,
        share=share.tolist(),
        present=(share > 0).tolist() if share_total else [False] * len(tp),
    )


def miou(cm: torch.Tensor, void_index: int | None) -> float:
    """Mean IoU over the non-Void classes labelled or predicted on a non-Void pixel.

    As in mmsegmentation and torchmetrics: a class that is only predicted scores IoU 0, a class
    in neither labels nor predictions is left out. Void-labelled pixels are not scored.
    """
    # A Void prediction on a scored pixel still counts as a miss. IoU is NaN for Void and
    # exactly where the union (after dropping Void-labelled pixels) is empty.
    ious = [iou for iou in class_scores(cm, void_index).iou if not math.isnan(iou)]
    return float(sum(ious) / len(ious)) if ious else float("nan")
