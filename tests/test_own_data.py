"""A user's own classes: codes.txt without a Void class and labels that mark unlabelled pixels
255 (the Cityscapes / VOC / mmsegmentation convention), through `data.ignore_index`. Ignored
pixels change neither the loss nor the metrics; CamVid keeps Void's index as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fast_args, small_copy
from PIL import Image

from camseg.config.load import load_config
from camseg.config.schema import LossConfig
from camseg.core.metrics import acc_camvid, confusion_matrix, miou
from camseg.data import find_files
from camseg.data.check import check_dataset
from camseg.train.losses import LOSSES, build_loss

CODES = ["Road", "Sky", "Other"]
ROAD = {"Road", "LaneMkgsDriv", "LaneMkgsNonDriv", "RoadShoulder"}


def three_classes(camvid_tiny: Path, dst: Path, n_valid: int = 4, n_train: int = 16) -> Path:
    """camvid_tiny's frames with Road, Sky and Other as the classes and Void pixels as 255."""
    root = small_copy(camvid_tiny, dst, n_valid, n_train)
    camvid = (camvid_tiny / "codes.txt").read_text().split()
    table = np.full(256, 2, np.uint8)  # Other
    for i, name in enumerate(camvid):
        if name in ROAD:
            table[i] = 0
        elif name == "Sky":
            table[i] = 1
        elif name == "Void":
            table[i] = 255
    for label in (root / "labels").iterdir():
        Image.fromarray(table[np.asarray(Image.open(label))]).save(label)
    (root / "codes.txt").write_text("\n".join(CODES) + "\n")
    return root


def test_codes_without_void_ignore_255_by_default(camvid_tiny, tmp_path):
    root = three_classes(camvid_tiny, tmp_path / "own")
    files = find_files(load_config(None, [f"data.root={root}"]).data)
    assert files.codes == CODES and files.ignore_index == 255 and files.void_index is None
    report = check_dataset(files)
    assert report.ok, report.problems
    assert report.class_pixels.sum() > 0 and len(report.class_pixels) == 3
    camvid = find_files(load_config(None, [f"data.root={camvid_tiny}"]).data)
    assert camvid.ignore_index == camvid.void_index == camvid.codes.index("Void")  # as before
    chosen = find_files(load_config(None, [f"data.root={root}", "data.ignore_index=2"]).data)
    assert chosen.ignore_index == chosen.void_index == 2  # a class: Other is not scored


def test_a_value_neither_class_nor_ignore_and_a_missing_label_in_one_check(camvid_tiny, tmp_path):
    root = three_classes(camvid_tiny, tmp_path / "own")
    labels = sorted((root / "labels").iterdir())
    arr = np.asarray(Image.open(labels[0])).copy()
    arr[:2, :3] = 7
    Image.fromarray(arr).save(labels[0])
    labels[1].unlink()
    files = find_files(load_config(None, [f"data.root={root}"]).data)
    problems = check_dataset(files).problems
    assert any(
        "label values 7 (6 px) are neither a class (0-2) nor data.ignore_index (255)" in p
        and "set data.ignore_index to that value" in p
        for p in problems
    ), problems
    assert any(": no label (expected" in p for p in problems), problems


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 6, 8, generator=g)
    target = torch.randint(0, 3, (2, 6, 8), generator=g)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, :, 5:] = True
    ignored[0, 0, 0] = True
    return logits, target.masked_fill(ignored, 255), ignored


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignored_pixels_change_no_loss(name):
    """Whatever the network says at a 255 pixel, every loss is the same."""
    logits, target, ignored = _batch()
    loss = build_loss(LossConfig(name=name), CODES, None, 255)
    other = logits.clone()
    other[ignored.unsqueeze(1).expand_as(other)] = torch.randn(int(ignored.sum()) * 3) * 50
    base = loss(logits.clone().requires_grad_(), target)
    assert torch.isfinite(base)
    assert torch.allclose(loss(other, target), base, atol=1e-6)


def test_ce_with_255_is_ce_over_the_other_pixels():
    logits, target, ignored = _batch()
    loss = build_loss(LossConfig(name="ce"), CODES, None, 255)
    kept = ~ignored
    by_hand = torch.nn.functional.cross_entropy(logits.movedim(1, -1)[kept], target[kept])
    assert torch.allclose(loss(logits, target), by_hand)


def test_ignored_pixels_change_no_metric():
    logits, target, ignored = _batch()
    pred = logits.argmax(1)
    cm = confusion_matrix(pred, target, 3)
    by_hand = confusion_matrix(pred[~ignored], target[~ignored], 3)
    assert torch.equal(cm, by_hand) and int(cm.sum()) == int((~ignored).sum())
    correct = (pred == target)[~ignored].double().mean().item()
    assert acc_camvid(cm, None) == pytest.approx(correct)
    assert 0 <= miou(cm, None) <= 1


@pytest.mark.slow
def test_own_classes_train_evaluate_and_predict(camvid_tiny, tmp_path, cli):
    root = three_classes(camvid_tiny, tmp_path / "own")
    runs = tmp_path / "runs"
    args = fast_args(root, runs, "model.pretrained=false")
    done = cli("train", *args, "--name", "own")
    assert done.exit_code == 0, done.output
    run = runs / "own"
    meta = torch.load(run / "model.pth", weights_only=True)["meta"]
    assert meta["codes"] == CODES and meta["ignore_index"] == 255
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header and two epochs
    assert (run / "plots" / "results.png").is_file()

    scored = cli("evaluate", "--run", run, "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)
    assert [c["class"] for c in metrics["per_class"]] == CODES
    assert all(c["scored"] for c in metrics["per_class"])
    assert 0 <= metrics["acc_camvid"] <= 1

    # a model file alone, on a copy of the data: the ignore value comes from the model
    shutil.copytree(root, tmp_path / "copy")
    alone = cli("evaluate", "--model", run / "model.pth", "--data", tmp_path / "copy", "--json")
    assert alone.exit_code == 0, alone.output
    assert json.loads(alone.stdout)["acc_camvid"] == metrics["acc_camvid"]

    frame = next((root / "images").iterdir())
    out = tmp_path / "pred"
    assert cli("predict", frame, "--run", run, "--out", out).exit_code == 0
    mask = np.asarray(Image.open(out / f"{frame.stem}_mask.png"))
    assert mask.max() < 3


def test_default_colours_are_camvids_for_its_names_and_distinct_for_others():
    from camseg.data.files import camvid_palette, class_palette

    colors = class_palette(["Road", "Sky", "Other", "Crack", "Weed", "Void"]).astype(int)
    assert colors[:2].tolist() == camvid_palette(["Road", "Sky"]).tolist()
    assert colors[5].tolist() == [0, 0, 0]  # CamVid's Void: black
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=2)
    np.fill_diagonal(distances, 999)
    # the made colours (Other, Crack, Weed) are far from every other colour and from black
    # (Sky and Other were both grey); CamVid's own Road and Sky are 64 apart, as CamVid has them
    assert distances[2:5].min() >= 100
    assert np.linalg.norm(colors[2:5], axis=1).min() >= 100
    assert np.array_equal(class_palette(["Road", "Other"]), class_palette(["Road", "Other"]))


def _palette_file(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.faults
@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["255 0 0 Road", "0 0 255 Sky"], "no colour for class Other"),
        (["255 0 0", "0 0 255"], "2 colours for 3 classes"),
        (["255 0 0 Road", "0 0 blue Sky"], "palette.txt:2: expected 'R G B Name' or 'R G B'"),
        (["255 0 0 Road", "0 0 300 Sky", "1 2 3 Other"], "colour values must be 0-255"),
        (["255 0 0 Road", "0 0 255", "1 2 3 Other"], "give every line a class name, or none"),
    ],
    ids=["a class without colour", "too few colours", "not a number", "over 255", "mixed"],
)
def test_a_bad_palette_is_one_line(lines, needle, camvid_tiny, tmp_path, cli):
    from helpers import one_line_error

    root = three_classes(camvid_tiny, tmp_path / "own", 2, 2)
    palette = _palette_file(tmp_path / "palette.txt", lines)
    runs = tmp_path / "runs"
    one_line_error(cli("train", *fast_args(root, runs, f"data.palette={palette}")), needle)
    assert not runs.exists()


@pytest.mark.slow
def test_a_palette_reaches_every_coloured_output(camvid_tiny, tmp_path, cli):
    from camseg import Segmenter
    from camseg.infer.outputs import is_own_output

    root = three_classes(camvid_tiny, tmp_path / "own")
    palette = _palette_file(
        tmp_path / "palette.txt", ["0 0 255 Sky", "250 10 10 Road", "9 200 9 Other"]
    )
    runs = tmp_path / "runs"
    args = fast_args(root, runs, "model.pretrained=false", f"data.palette={palette}")
    assert cli("train", *args, "--name", "own").exit_code == 0
    run = runs / "own"
    wanted = [[250, 10, 10], [0, 0, 255], [9, 200, 9]]  # in class order: Road, Sky, Other
    assert torch.load(run / "model.pth", weights_only=True)["meta"]["colors"] == wanted
    seg = Segmenter(run)
    assert seg.colors.tolist() == wanted
    frame = next((root / "images").iterdir())
    out = tmp_path / "pred"
    assert cli("predict", frame, "--run", run, "--out", out).exit_code == 0
    mask = np.asarray(Image.open(out / f"{frame.stem}_mask.png"))
    color = np.asarray(Image.open(out / f"{frame.stem}_color.png"))
    assert np.array_equal(color, np.array(wanted, np.uint8)[mask])
    legend = out / "legend.png"
    assert legend.is_file() and is_own_output(legend)
    pixels = {tuple(p) for p in np.asarray(Image.open(legend).convert("RGB")).reshape(-1, 3)}
    assert {tuple(c) for c in wanted} <= pixels
    rows = (run / "plots" / "results_legend.csv").read_text().splitlines()[1:]
    hexes = {"Road": "#fa0a0a", "Sky": "#0000ff", "Other": "#09c809"}
    assert rows and all(hexes[row.split(",")[0]] == row.split(",")[1] for row in rows), rows
    # a second call into the same folder with the same model: the legend is the same, kept
    again = cli("predict", frame, "--run", run, "--out", out, "--exist-ok")
    assert again.exit_code == 0, again.output
    pytest.importorskip("onnx")
    exported = cli("export", "--run", run, "--out", tmp_path / "own.onnx")
    assert exported.exit_code == 0, exported.output
    assert Segmenter(tmp_path / "own.onnx").colors.tolist() == wanted


def as_folders(root: Path) -> Path:
    """The set in the folders layout: images/{train,val}/<stem>.png and labels/{train,val}/
    <stem>.png (no _P), split by folder (no valid.txt)."""
    valid = set((root / "valid.txt").read_text().split())
    for image in sorted((root / "images").glob("*.png")):
        split = "val" if image.name in valid else "train"
        for kind, src in (("images", image), ("labels", root / "labels" / f"{image.stem}_P.png")):
            (root / kind / split).mkdir(exist_ok=True)
            src.rename(root / kind / split / f"{image.stem}.png")
    (root / "valid.txt").unlink()
    return root


@pytest.mark.slow
def test_a_folders_set_trains_evaluates_and_predicts_from_a_short_config(
    camvid_tiny, tmp_path, cli, monkeypatch
):
    """The issue's case: Road, Sky, Other and 255, labels <stem>.png under labels/, split by
    images/train + images/val; my.yaml sets only the layout, the root, the split and a small
    model (and here a small size and one epoch, for time)."""
    root = as_folders(three_classes(camvid_tiny, tmp_path / "own"))
    my = tmp_path / "my.yaml"
    my.write_text(
        "data:\n  layout: folders\n  root: own\n  split: folders\n  size: [64, 96]\n"
        "  batch_size: 4\nmodel:\n  arch: resnet18\n  pretrained: false\n"
        "train:\n  stages:\n  - {epochs: 1, freeze: false, lr: 1.0e-3}\n"
    )
    monkeypatch.chdir(tmp_path)
    checked = cli("data", "check", "--config", my)
    assert checked.exit_code == 0, checked.output
    done = cli("train", "--config", my)
    assert done.exit_code == 0, done.output
    [run] = (tmp_path / "runs").iterdir()
    assert torch.load(run / "model.pth", weights_only=True)["meta"]["ignore_index"] == 255
    scored = cli("evaluate", "--json")
    assert scored.exit_code == 0, scored.output
    metrics = json.loads(scored.stdout)
    assert metrics["evaluated"]["n_images"] == 4 and metrics["evaluated"]["ignore_index"] == 255
    frame = next((root / "images" / "val").iterdir())
    predicted = cli("predict", frame)
    assert predicted.exit_code == 0, predicted.output
    [out] = run.glob("predictions*")
    color = np.asarray(Image.open(out / f"{frame.stem}_color.png")).reshape(-1, 3)
    assert len({tuple(c) for c in color}) <= 3 and (out / "legend.png").is_file()
    seg_colors = {
        tuple(c) for c in torch.load(run / "model.pth", weights_only=True)["meta"]["colors"]
    }
    assert len(seg_colors) == 3  # three distinct colours


def test_folders_layout_reads_palette_pngs_as_indices(camvid_tiny, tmp_path):
    root = as_folders(three_classes(camvid_tiny, tmp_path / "own", 2, 2))
    label = next((root / "labels" / "train").iterdir())
    arr = np.asarray(Image.open(label))
    pal = Image.fromarray(arr, "L").convert("P")
    pal.putpalette([200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (256 * 3 - 9))
    pal.save(label)
    assert Image.open(label).mode == "P"
    cfg = load_config(None, [f"data.root={root}", "data.layout=folders", "data.split=folders"])
    files = find_files(cfg.data)
    assert check_dataset(files).ok
    from camseg.data.layouts import label_reader

    image = next(p for p in files.images if files.label_for(p) == label)
    assert np.array_equal(label_reader(files)(image), arr)


@pytest.mark.faults
def test_folders_faults_are_one_line(camvid_tiny, tmp_path, cli):
    from helpers import one_line_error

    root = as_folders(three_classes(camvid_tiny, tmp_path / "own", 2, 2))
    base = fast_args(root, tmp_path / "runs", "data.layout=folders", "data.split=folders")
    one_line_error(
        cli("train", *base, "--set", "data.label_suffix=_gtFine_labelIds"),
        "no image has a label",
        "_gtFine_labelIds.png; check data.labels and data.label_suffix ('_gtFine_labelIds')",
    )
    shutil.rmtree(root / "labels" / "val")
    one_line_error(
        cli("train", *base),
        "val folder of labels/ (data.split folders: train/ and val/ under images/ and labels/)",
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.faults
def test_folders_of_other_names(camvid_tiny, tmp_path, cli):
    """data.images and data.labels name the folders; a folder that is not there is one line."""
    from helpers import one_line_error

    root = as_folders(three_classes(camvid_tiny, tmp_path / "own", 2, 2))
    (root / "images").rename(root / "photos")
    (root / "labels").rename(root / "masks")
    sets = [f"data.root={root}", "data.layout=folders", "data.split=folders"]
    named = [*sets, "data.images=photos", "data.labels=masks"]
    files = find_files(load_config(None, named).data)
    assert files.images and all(p.is_relative_to(root / "photos") for p in files.images)
    assert check_dataset(files).ok
    runs = tmp_path / "runs"
    one_line_error(
        cli("train", *fast_args(root, runs, "data.layout=folders", "data.split=folders")),
        "data.images folder (layout folders: images/ under data.root) not found",
    )
    one_line_error(
        cli("train", *fast_args(root, runs, *named[1:3], "data.images=photos")),
        "data.labels folder (layout folders: labels/ under data.root) not found",
    )
    assert not runs.exists()
