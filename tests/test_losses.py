"""train.loss and train.class_weights: each loss is fastai's with the configured parameters and
reaches the learner, ignore_void drops exactly the Void pixels, median-frequency weights match a
hand count of the training labels and are cached, and a run records and resumes with them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from fastai.losses import CrossEntropyLossFlat, DiceLoss, FocalLossFlat
from helpers import TINY, fast_args, small_copy
from PIL import Image

import camseg.data.frequencies
import camseg.train.plan
import camseg.train.trainer
from camseg.config.load import load_config
from camseg.config.schema import LossConfig, LossName
from camseg.data import build_dataloaders, find_files
from camseg.data.frequencies import count_classes, median_frequency_weights, training_images
from camseg.train.losses import LOSSES, build_loss, class_weights, lovasz_softmax

CODES = ["Car", "Void", "Road", "Sky"]
VOID = 1


def batch(void: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a target; with void, Void fills the last 3 of 8 columns (and nowhere else)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, len(CODES), 6, 8, generator=g)
    target = torch.tensor([0, 2, 3])[torch.randint(0, 3, (2, 6, 8), generator=g)]
    if void:
        target[..., 5:] = VOID
    return logits, target


def loss_of(name: str, weights: list[float] | None = None, **kw) -> object:
    return build_loss(LossConfig(name=name, **kw), CODES, weights, VOID)


def test_the_table_has_every_choice_of_the_schema():
    assert set(LOSSES) == set(get_args(LossName))


def test_ce_is_fastais_default_for_masks(camvid_tiny, tmp_path):
    cfg = load_config(None, [f"data.root={small_copy(camvid_tiny, tmp_path / 'd', 2, 2)}"])
    files = find_files(cfg.data)
    default = build_dataloaders(cfg.data, files, batch_size=2).train_ds.loss_func  # Learner's
    ours = build_loss(cfg.train.loss, files.codes, None, files.ignore_index)
    assert type(default) is CrossEntropyLossFlat and isinstance(ours, CrossEntropyLossFlat)
    assert (ours.axis, ours.func.ignore_index, ours.func.weight) == (default.axis, -100, None)
    x, y = batch(void=True)
    assert torch.equal(ours(x, y), default(x, y))


def test_each_choice_is_the_fastai_loss_with_its_parameters():
    x, y = batch(void=True)
    focal = loss_of("focal", gamma=3.5)
    assert isinstance(focal, FocalLossFlat) and focal.func.gamma == 3.5
    assert torch.allclose(focal(x, y), FocalLossFlat(axis=1, gamma=3.5)(x, y))
    assert not torch.allclose(focal(x, y), loss_of("focal", gamma=2.0)(x, y))
    dice = loss_of("dice", smooth=0.5)
    assert isinstance(dice, DiceLoss) and dice.smooth == 0.5
    assert torch.allclose(dice(x, y), DiceLoss(axis=1, smooth=0.5, reduction="mean")(x, y))
    assert not torch.allclose(dice(x, y), loss_of("dice", smooth=1e-6)(x, y))
    ce_dice = loss_of("ce_dice", smooth=0.5, dice_weight=0.25)
    ce, plain_dice = CrossEntropyLossFlat(axis=1)(x, y), DiceLoss(1, 0.5, reduction="mean")(x, y)
    assert torch.allclose(ce_dice(x, y), ce + 0.25 * plain_dice)


ALL = ["ce", "focal", "dice", "ce_dice", "lovasz", "ce_lovasz"]


def test_lovasz_of_hard_predictions_is_one_minus_the_iou_of_the_labelled_classes():
    """The Lovász extension equals the set function on vertices: with one-hot probabilities it is
    1 - the mean IoU over the classes labelled in the batch (Berman et al. 2018)."""
    x, y = batch(void=False, seed=3)
    pred = x.argmax(dim=1)
    hard = torch.nn.functional.one_hot(pred, len(CODES)).movedim(-1, 1).float()
    ious = [
        ((pred == c) & (y == c)).sum() / ((pred == c) | (y == c)).sum()
        for c in range(len(CODES))
        if (y == c).any()
    ]
    assert float(lovasz_softmax(hard, y, -100)) == pytest.approx(
        1 - float(torch.stack(ious).mean())
    )
    ce_lovasz = loss_of("ce_lovasz", lovasz_weight=0.25)
    lovasz = lovasz_softmax(x.softmax(dim=1), y, -100)
    assert torch.allclose(ce_lovasz(x, y), CrossEntropyLossFlat(axis=1)(x, y) + 0.25 * lovasz)
    assert torch.allclose(loss_of("lovasz")(x, y), lovasz)
    assert not torch.allclose(ce_lovasz(x, y), loss_of("ce_lovasz")(x, y))


@pytest.mark.parametrize("void", [False, True])
def test_lovasz_over_all_classes_counts_absent_classes_by_whether_they_are_predicted(void):
    """classes "all" (the paper's code's option): a class absent from the batch scores IoU 1 if
    predicted nowhere, 0 if predicted anywhere; the ignored class (Void, 1) is never averaged."""
    g = torch.Generator().manual_seed(4)
    y = torch.tensor([0, 2, 3])[torch.randint(0, 3, (2, 6, 8), generator=g)]
    y[0, 0, :2] = VOID  # labelled Void, or ignored with ignore_void
    pred = y.clone()
    pred[1, 2:4, 2:5] = 4  # class 4: absent, predicted; class 5: absent, not predicted
    pred[0, 5, 5:] = 0  # and some mistakes on the labelled classes
    hard = torch.nn.functional.one_hot(pred, 6).movedim(-1, 1).float()
    ignore = VOID if void else -100
    keep = y != ignore
    ious = []
    for c in range(6):
        if c == ignore:
            continue
        p, t = (pred == c) & keep, (y == c) & keep
        ious.append(float((p & t).sum() / (p | t).sum()) if (p | t).any() else 1.0)
    assert len(ious) == 6 - void and ious[-2:] == [0.0, 1.0]
    expected = 1 - sum(ious) / len(ious)
    assert lovasz_softmax(hard, y, ignore, "all").item() == pytest.approx(expected, abs=1e-5)
    assert lovasz_softmax(hard, y, ignore).item() != pytest.approx(expected, abs=1e-3)
    # lovasz_absent_weight: each absent class (4 and 5) weighs 0.3 against 1 for a labelled one
    present, absent = ious[:-2], ious[-2:]
    weighted = 1 - (sum(present) + 0.3 * sum(absent)) / (len(present) + 0.3 * len(absent))
    assert lovasz_softmax(hard, y, ignore, "all", 0.3).item() == pytest.approx(weighted, abs=1e-5)
    assert lovasz_softmax(hard, y, ignore, "all", 0.0).item() == pytest.approx(
        lovasz_softmax(hard, y, ignore).item(), abs=1e-6
    )
    # the config key reaches the loss: class 3 (Sky) absent from this batch
    x, y = batch(void=void, seed=4)
    y[y == 3] = 2
    chosen = loss_of("ce_lovasz", lovasz_classes="all", ignore_void=void)
    ce = CrossEntropyLossFlat(axis=1, ignore_index=ignore)(x, y)
    assert chosen(x, y).item() == pytest.approx(
        (ce + lovasz_softmax(x.softmax(dim=1), y, ignore, "all")).item()
    )
    assert chosen(x, y).item() != pytest.approx(loss_of("ce_lovasz", ignore_void=void)(x, y).item())
    for name in ("lovasz", "ce_lovasz"):
        kw = dict(lovasz_classes="all", ignore_void=void)
        light = loss_of(name, lovasz_absent_weight=0.3, **kw)
        lovasz = lovasz_softmax(x.softmax(dim=1), y, ignore, "all", 0.3)
        assert light(x, y).item() == pytest.approx((lovasz + ce * (name == "ce_lovasz")).item())
        assert light(x, y).item() != pytest.approx(loss_of(name, **kw)(x, y).item())


def sorted_lovasz(probs: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
    """The paper's form, as its reference code writes it: per class present, the errors sorted
    from largest, dotted with the steps of the Jaccard loss; gradients through the sort by
    autograd. lovasz_softmax computes the same weights without grad and in pixel order."""
    probs, targ = probs.movedim(1, 0).reshape(probs.shape[1], -1), targ.reshape(-1)
    losses = []
    for c in torch.unique(targ):
        fg = (targ == c).float()
        errors, order = (fg - probs[c]).abs().sort(descending=True)
        fg = fg[order]
        jaccard = 1 - (fg.sum() - fg.cumsum(0)) / (fg.sum() + (1 - fg).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
        losses.append(errors @ jaccard)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", [0, 1])
def test_lovasz_matches_the_papers_sorted_form_in_value_and_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 5, 24, 32, generator=g) * 3
    targ = torch.randint(0, 4, (2, 24, 32), generator=g)  # class 4 absent: not averaged
    ours, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    value = lovasz_softmax(ours.softmax(1), targ, -100)
    expected = sorted_lovasz(ref.softmax(1), targ)
    value.backward(), expected.backward()
    # errors closer than 1/65535 may be taken in the other order (16-bit sort keys on a CPU)
    assert value.item() == pytest.approx(expected.item(), abs=1e-4)
    assert torch.allclose(ours.grad, ref.grad, atol=1e-4)
    assert ours.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_predictions_decode_as_fastai_expects(name):
    x, _ = batch(void=False)
    loss = loss_of(name)
    assert torch.allclose(loss.activation(x), torch.softmax(x, dim=1))
    assert torch.equal(loss.decodes(x), x.argmax(dim=1))


@pytest.mark.parametrize("name", ALL)
def test_ignore_void_leaves_out_exactly_the_void_pixels(name):
    x, y = batch(void=True)
    ignoring, counting = loss_of(name, ignore_void=True), loss_of(name)
    # the same as the loss of the frames cut to their non-Void columns
    assert torch.allclose(ignoring(x, y), counting(x[..., :5], y[..., :5]))
    assert not torch.allclose(ignoring(x, y), counting(x, y))
    x, y = batch(void=False)
    assert torch.allclose(ignoring(x, y), counting(x, y))


@pytest.mark.parametrize("name", ALL)
def test_a_batch_all_void_adds_nothing_when_void_is_ignored(name):
    # torch's cross-entropy mean over no pixels is NaN, which the run would take for divergence
    x, _ = batch(void=False)
    x.requires_grad_(True)
    loss = loss_of(
        name, [3.0, 1.0, 0.5, 2.0] if name in ("ce", "focal") else None, ignore_void=True
    )
    value = loss(x, torch.full((2, 6, 8), VOID))
    value.backward()
    assert value.item() == 0 and torch.equal(x.grad, torch.zeros_like(x))
    one_pixel = torch.full((2, 6, 8), VOID)
    one_pixel[1, 2, 3] = 2  # one Road pixel: scored as usual
    assert loss(x, one_pixel).item() > 0


@pytest.mark.parametrize("name", ["ce", "focal", "ce_dice", "ce_lovasz"])
def test_class_weights_reach_the_cross_entropy(name):
    weights = [3.0, 1.0, 0.5, 2.0]
    loss = loss_of(name, weights)
    assert loss.func.weight.tolist() == weights
    x, y = batch(void=False)
    assert not torch.allclose(loss(x, y), loss_of(name)(x, y))
    loss.to(torch.device("meta"))  # fastai's loss_func.to(device) takes them to the GPU
    assert loss.func.weight.device.type == "meta"


@pytest.mark.parametrize("name", ["dice", "lovasz"])
def test_per_class_scores_take_no_class_weights(name):
    x, y = batch(void=False)
    assert torch.equal(loss_of(name, [3.0, 1.0, 0.5, 2.0])(x, y), loss_of(name)(x, y))


# ---- class weights from the data ----------------------------------------------------------


def _labels(files, images) -> list[np.ndarray]:
    return [np.asarray(Image.open(files.label_for(p))) for p in images]


def _hand_median_frequency(labels: list[np.ndarray], n: int, void: int) -> list[float]:
    freq = {}
    for c in range(n):
        pixels = sum(int((lbl == c).sum()) for lbl in labels)
        total = sum(lbl.size for lbl in labels if (lbl == c).any())
        if pixels and c != void:
            freq[c] = pixels / total
    median = float(np.median(list(freq.values())))
    return [median / freq[c] if c in freq else 1.0 for c in range(n)]


@pytest.fixture
def few(camvid_tiny, tmp_path):
    """3 training and 2 validation frames of camvid_tiny, at their own size (96x128)."""
    cfg = load_config(None, [f"data.root={small_copy(camvid_tiny, tmp_path / 'd', 2, 3)}"])
    return find_files(cfg.data)


def test_median_frequency_matches_a_hand_count_of_the_training_labels(few, tmp_path):
    train = training_images(few)
    assert len(train) == 3
    n, void = len(few.codes), few.void_index
    expected = _hand_median_frequency(_labels(few, train), n, void)
    got = median_frequency_weights(count_classes(few, (96, 128), tmp_path / "c"), void)
    assert got == pytest.approx(expected)
    assert got[void] == 1.0 and len(set(np.round(got, 6))) > 5
    # the validation frames would change them: they are not counted
    assert _hand_median_frequency(_labels(few, few.images), n, void) != pytest.approx(expected)


def test_class_counts_are_cached_and_recounted_when_a_label_changes(few, tmp_path, monkeypatch):
    real = camseg.data.frequencies.label_reader
    reads: list[Path] = []

    def spy(files):
        read = real(files)
        return lambda image: reads.append(image) or read(image)

    monkeypatch.setattr(camseg.data.frequencies, "label_reader", spy)
    first = count_classes(few, (96, 128), tmp_path / "c")
    assert len(reads) == 3
    assert count_classes(few, (96, 128), tmp_path / "c") == first
    assert len(reads) == 3  # read from the cache
    label = few.label_for(training_images(few)[0])
    arr = np.asarray(Image.open(label)).copy()
    arr[:10] = few.codes.index("Sky")
    Image.fromarray(arr).save(label)
    os.utime(label, ns=(1, 1))  # a different mtime whatever the clock's resolution
    again = count_classes(few, (96, 128), tmp_path / "c")
    assert len(reads) == 6 and again != first


def test_a_weight_table_names_classes_and_the_rest_weigh_one(few, tmp_path):
    weights = class_weights({"Pedestrian": 3.0, "Void": 0.5}, few, (96, 128), tmp_path)
    assert weights[few.codes.index("Pedestrian")] == 3.0
    assert weights[few.void_index] == 0.5
    assert sum(w == 1.0 for w in weights) == len(few.codes) - 2
    assert class_weights("none", few, (96, 128), tmp_path) is None


def test_an_unknown_class_in_the_table_is_one_line_and_no_run(camvid_tiny, tmp_path, cli):
    data = small_copy(camvid_tiny, tmp_path / "d", 2, 2)
    result = cli("train", *fast_args(data, tmp_path / "runs", "train.class_weights.Pedestrain=3"))
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in result.output
    assert "train.class_weights.Pedestrain" in line
    assert "did you mean train.class_weights.Pedestrian?" in line
    assert str(data / "codes.txt") in line
    assert not (tmp_path / "runs").exists()


def test_the_learner_trains_with_the_configured_loss_and_weights(camvid_tiny, tmp_path):
    data = small_copy(camvid_tiny, tmp_path / "d", 2, 2)
    loss_sets = ["train.loss.name=focal", "train.loss.gamma=3", "train.loss.ignore_void=true"]
    sets = fast_args(data, tmp_path, *loss_sets, "train.class_weights={Pedestrian: 4}")[3::2]
    plan = camseg.train.plan.make_plan(load_config(TINY, sets))
    trainer = camseg.train.trainer.Trainer(plan, progress=False)
    loss, codes = trainer.learn.loss_func, trainer.files.codes
    assert isinstance(loss, FocalLossFlat) and loss.func.gamma == 3.0
    assert loss.func.ignore_index == codes.index("Void")
    assert loss.func.weight[codes.index("Pedestrian")] == 4.0 and loss.func.weight.sum() == 35.0
    preds, _, decoded = trainer.learn.get_preds(with_decoded=True)
    assert torch.allclose(preds.sum(dim=1), torch.ones(1)) and torch.equal(
        decoded, preds.argmax(dim=1)
    )


@pytest.mark.slow
def test_a_ce_dice_median_frequency_run_records_its_weights_and_resumes_with_them(
    camvid_tiny, tmp_path, cli, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # not the user's cache
    data = small_copy(camvid_tiny, tmp_path / "d", 2, 6)
    sets = ["train.loss.name=ce_dice", "train.class_weights=median_frequency"]
    built: list[object] = []
    real = camseg.train.trainer.build_learner

    def build(*args, **kwargs):
        built.append(kwargs["loss_func"])
        return real(*args, **kwargs)

    monkeypatch.setattr(camseg.train.trainer, "build_learner", build)
    result = cli("train", *fast_args(data, tmp_path / "runs", *sets), "--name", "w")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "w"
    table = json.loads((run / "class_weights.json").read_text())
    assert list(table) == (data / "codes.txt").read_text().split()
    assert table["Void"] == 1.0 and len(set(table.values())) > 5
    assert list(tmp_path.glob("cache/camseg/class-counts/*.json"))
    # resume rebuilds the loss from the run's config.yaml with the weights the run recorded,
    # even after a label changed (counting again would give others): unfinish it and resume
    (run / "model.pth").unlink()
    (run / "summary.json").unlink()
    for label in (data / "labels").glob("*.png"):
        pixels = np.array(Image.open(label))
        pixels[:40, :40] = list(table).index("Pedestrian")
        Image.fromarray(pixels).save(label)
    files = find_files(load_config(run / "config.yaml").data)
    recounted = median_frequency_weights(
        count_classes(files, (64, 96), tmp_path / "c"), files.void_index
    )
    assert recounted != pytest.approx(list(table.values()))
    result = cli("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert len(built) == 2
    for loss in built:
        assert type(loss).__name__ == "CrossEntropyDiceLoss"
        assert loss.func.weight.tolist() == pytest.approx(list(table.values()))
