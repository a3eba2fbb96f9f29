"""acc_camvid, mIoU and per-class scores on hand-made tensors with known answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from camseg.core.metrics import acc_camvid, class_scores, confusion_matrix, miou, pixel_acc
from camseg.train.callbacks import AccCamvid, MeanIoU

VOID = 3  # classes 0, 1, 2 are scored, 3 is Void


def test_confusion_rows_true_cols_pred_and_logits():
    target = torch.tensor([[0, 0, 1, 2]])
    pred = torch.tensor([[0, 1, 1, 1]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 2, 1).float()  # (1, 4, 4)
    assert torch.equal(confusion_matrix(logits, target, 4), cm)


def test_acc_camvid_ignores_void_pixels():
    target = torch.tensor([0, 1, 2, VOID, VOID])
    pred = torch.tensor([0, 1, 0, 0, VOID])  # 2 of 3 scored pixels right; Void ones ignored
    cm = confusion_matrix(pred, target, 4)
    assert acc_camvid(cm, VOID) == pytest.approx(2 / 3)
    assert pixel_acc(cm) == pytest.approx(3 / 5)


def test_predicting_void_on_a_scored_pixel_is_wrong():
    cm = confusion_matrix(torch.tensor([VOID, 1]), torch.tensor([0, 1]), 4)
    assert acc_camvid(cm, VOID) == pytest.approx(0.5)
    # class 0: tp 0, union 1 -> IoU 0; class 1: IoU 1; class 2 is in neither -> left out
    assert miou(cm, VOID) == pytest.approx(0.5)


def test_all_void_batch_is_nan_not_a_crash():
    cm = confusion_matrix(torch.tensor([0, 1]), torch.tensor([VOID, VOID]), 4)
    assert math.isnan(acc_camvid(cm, VOID))
    assert math.isnan(miou(cm, VOID))


def test_miou_scores_a_predicted_but_unlabelled_class_as_zero():
    # class 2 is predicted once but never labelled; the Void-labelled pixel is predicted as 0
    target = torch.tensor([0, 0, 0, 1, 1, VOID])
    pred = torch.tensor([0, 0, 2, 1, 1, 0])
    cm = confusion_matrix(pred, target, 4)
    # class 0: tp 2, fn 1, no fp (the Void pixel is not scored) -> 2/3; class 1: 2/2 -> 1;
    # class 2: tp 0, fp 1 -> 0. The old "classes present in the labels" mean gave (2/3 + 1) / 2.
    assert miou(cm, VOID) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert miou(cm, VOID) != pytest.approx(5 / 6)


def test_class_scores_with_a_class_absent_from_the_labels():
    # class 2 never appears in the labels; predicting it costs class 0 a miss and scores 0 itself
    target = torch.tensor([0, 0, 0, 1, 1, VOID])
    pred = torch.tensor([0, 0, 2, 1, 0, 2])
    cm = confusion_matrix(pred, target, 4)
    # class 0: tp 2, fn 1, fp 1 (the class-1 pixel) -> 2/4 ; class 1: tp 1, fn 1 -> 1/2; class 2: 0
    assert miou(cm, VOID) == pytest.approx((0.5 + 0.5 + 0) / 3)
    scores = class_scores(cm)
    assert scores.present == [True, True, False, True]
    assert scores.precision[0] == pytest.approx(2 / 3)
    assert scores.recall[0] == pytest.approx(2 / 3)
    assert scores.share[1] == pytest.approx(2 / 6)
    assert math.isnan(scores.recall[2])


def _learn(pred: torch.Tensor, target: torch.Tensor) -> SimpleNamespace:
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    return SimpleNamespace(pred=logits, yb=(target,), to_detach=lambda x, **_: x)


def test_metric_accumulates_pixels_not_batch_means():
    acc, iou = AccCamvid(4, VOID), MeanIoU(4, VOID)
    for m in (acc, iou):
        m.reset()
    # batch 1: 1 scored pixel, right. batch 2: 3 scored pixels, all wrong.
    b1 = (torch.tensor([[[0, VOID, VOID, VOID]]]), torch.tensor([[[0, VOID, VOID, VOID]]]))
    b2 = (torch.tensor([[[1, 1, 1, 0]]]), torch.tensor([[[0, 0, 0, VOID]]]))
    for pred, target in (b1, b2):
        for m in (acc, iou):
            m.accumulate(_learn(pred, target))
    assert acc.value == pytest.approx(1 / 4)  # a mean of batch means would say 0.5
    assert acc.name == "acc_camvid" and iou.name == "miou"
    # class 0: tp 1, fn 3 -> 1/4; class 1 is only predicted (3 false positives) -> 0
    assert iou.value == pytest.approx((0.25 + 0) / 2)
