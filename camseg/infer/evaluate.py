"""`evaluate`: score a trained model on a dataset split from one confusion matrix over the whole
split (the same code and, by default, the same precision as the training metric), and write
metrics.json, per_class.csv and a confusion heatmap into RUN_DIR/eval/<data>-<split>/, never over
an earlier evaluation. Images and labels are read without fastai (as training's validation
pipeline reads them, to the bit), so an exported model.onnx is scored without fastai installed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from camseg.config.schema import Layout
from camseg.config.values import EvaluatePrecision, Split
from camseg.core.atomic import atomic_write_text, require_folder_path, require_writable
from camseg.core.metrics import acc_camvid, class_scores, confusion_matrix, miou, pixel_acc
from camseg.core.precision import EVALUATE_DEFAULT
from camseg.core.runs import create_run_dir, run_of, weights_of
from camseg.data import check_dataset, find_files
from camseg.data.files import load_rgb, resize_label
from camseg.data.layouts import EVALUATE_OPTIONS, label_reader
from camseg.data.splits import reading_data_config, split_items
from camseg.errors import CamsegError
from camseg.infer.network import Network, class_mask, load_network, read_model, to_model_input
from camseg.model.files import ModelFile
from camseg.report.page import write_report
from camseg.report.plots import plot_confusion

EvalSize = tuple[int, int] | Literal["model", "native"]

# Published numbers, for comparison only: they come from the full CamVid set (600 training
# frames) and an ImageNet-pretrained encoder, which a small or from-scratch run does not have.
REFERENCES = [
    {
        "source": "Gupta, 'Image Segmentation Using Deep Learning', Fig. 13 (best epoch)",
        "acc_camvid": 0.9307,
        "setting": "full CamVid, ImageNet-pretrained ResNet34 U-Net",
    },
    {
        "source": "fastai lesson-3 CamVid notebook (low end)",
        "acc_camvid": 0.9333,
        "setting": "full CamVid, ImageNet-pretrained ResNet34 U-Net",
    },
    {
        "source": "fastai lesson-3 CamVid notebook (high end)",
        "acc_camvid": 0.9367,
        "setting": "full CamVid, ImageNet-pretrained ResNet34 U-Net",
    },
]


@dataclass(frozen=True)
class Scores:
    acc_camvid: float
    pixel_acc: float
    miou: float
    cm: np.ndarray


@dataclass(frozen=True)
class Evaluation:
    scores: Scores
    without_tta: Scores | None
    per_class: list[dict]
    out_dir: Path
    evaluated: dict[str, Any]


def _scores(cm: torch.Tensor, void: int | None) -> Scores:
    return Scores(acc_camvid(cm, void), pixel_acc(cm), miou(cm, void), cm.cpu().numpy())


Batch = tuple[torch.Tensor, list[np.ndarray]]  # model input (N, 3, H, W), N label arrays


def labelled_batches(
    items: list[Path],
    read_label: Callable[[Path], np.ndarray],
    info: ModelFile,
    size: tuple[int, int],
    native: bool,
    batch_size: int,
) -> Iterator[Batch]:
    """Model input and labels, batch_size images at a time, as training's validation pipeline
    makes them (fastai's Resize(Squish) + Normalize give the same tensors to the bit): each
    image squished to `size` (bilinear) and normalised (`to_model_input`), each label resized
    to `size` (nearest), or with native kept at its own resolution."""
    at_size = dataclasses.replace(info, size=size)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        xb = torch.stack([to_model_input(Image.fromarray(load_rgb(p)), at_size) for p in chunk])
        labels = [read_label(p) for p in chunk]
        if not native:
            labels = [resize_label(y, size) for y in labels]
        yield xb, labels


def confusion_over(net: Network, batches: Iterable[Batch], n: int) -> torch.Tensor:
    """Accumulate the confusion matrix; `net` runs in the precision it was loaded in, so this
    adds none of its own. A label of another size than the scores (--size native) is scored
    as predict makes masks: class scores upsampled (bilinear) to it, then the argmax."""
    cm = torch.zeros(n, n, dtype=torch.long, device=net.device)
    for xb, labels in batches:
        for lg, y in zip(net.scores(xb), labels, strict=True):
            label = torch.tensor(y, device=net.device)  # a copy: decoded labels are read-only
            cm += confusion_matrix(class_mask(lg, *label.shape), label, n)
    return cm


def evaluate(
    source: Path,
    *,
    data: Path | None = None,
    layout: Layout | None = None,
    split: Split = "valid",
    size: EvalSize = "model",
    tta: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    precision: EvaluatePrecision = EVALUATE_DEFAULT,
    out: Path | None = None,
    tune_process: bool = False,
    runtime: str = "auto",
) -> Evaluation:
    """Score the model at `source` (run folder, model.pth, checkpoint or exported model.onnx) on
    a split, by default in the precision training validated in (the model file records it); an
    .onnx on `runtime` (load_network's).
    Writes a new folder under `out` (default: the run's eval/, or eval/ beside a model file)."""
    mf = read_model(source)
    run = run_of(source)
    out_parent = out or (run.evals if run else mf.path.parent / "eval")
    _require_writable_parent(out_parent, out is not None)
    data_cfg = reading_data_config(run, data, layout)
    if data_cfg.ignore_index is None and mf.ignore_index is not None:  # as the model trained
        data_cfg = data_cfg.model_copy(update={"ignore_index": mf.ignore_index})
    files = find_files(data_cfg, EVALUATE_OPTIONS)
    if files.codes != mf.codes:
        raise CamsegError(
            f"the model's classes differ from {files.root}'s: "
            f"model {mf.codes} vs data {files.codes}"
        )
    check_dataset(files, needs_split=split != "all").raise_if_bad()
    items = split_items(files, split)
    eval_size, native = _eval_size(size, mf)
    # the layers and NCHW layout of training's validation: the table's numbers to the last pixel
    net = load_network(
        mf,
        device=device,
        precision=precision,
        policy="evaluate",
        exact=True,
        tune_process=tune_process,
        runtime=runtime,
    )
    dev = net.device
    read_label = label_reader(files)
    n, void = len(files.codes), files.void_index

    def batches() -> Iterator[Batch]:
        return labelled_batches(items, read_label, mf, eval_size, native, batch_size)

    base = _scores(confusion_over(net, batches(), n), void)
    scores, without = base, None
    if tta:
        scores, without = _scores(confusion_over(net.with_flip_tta(), batches(), n), void), base

    out_dir = _new_dir(out_parent, f"{files.root.name}-{split}")
    evaluated = {
        "model": str(mf.path),
        "weights": weights_of(mf.path),
        "data": str(files.root),
        "split": split,
        "ignore_index": files.ignore_index,  # the label value not scored
        "n_images": len(items),
        "size": "native" if native else list(eval_size),
        "scoring": "class scores upsampled bilinearly to label resolution, then argmax"
        if native
        else "labels resized to the model input size (nearest), as in training",
        "tta": "horizontal flip" if tta else None,
        "device": str(dev),
        "runtime": net.runtime,
        "precision": net.precision.name,
        "precision_note": net.precision.note,  # why it is not the one asked for, if it is not
    }
    per_class = _write_outputs(out_dir, scores, without, files.codes, void, evaluated)
    if run is not None:
        write_report(run.dir)
    return Evaluation(scores, without, per_class, out_dir, evaluated)


def _eval_size(size: EvalSize, mf: ModelFile) -> tuple[tuple[int, int], bool]:
    if size == "model" or size == "native":
        return mf.size, size == "native"
    h, w = size
    if min(h, w) < 32:
        raise CamsegError(f"--size {h}x{w}: both sides must be at least 32")
    return (h, w), False


def _require_writable_parent(parent: Path, given: bool) -> None:
    """The evaluation's folder can be made under `parent`: checked before the scoring."""
    what = "--out" if given else "evaluate writes its results to"
    fix = "choose a writable folder" if given else "give --out FOLDER"
    require_folder_path(parent, what, fix)
    require_writable(parent, what, fix)


def _new_dir(parent: Path, name: str) -> Path:
    return create_run_dir(parent, name)


def _write_outputs(
    out_dir: Path,
    scores: Scores,
    without: Scores | None,
    codes: list[str],
    void: int | None,
    evaluated: dict,
) -> list[dict]:
    cs = class_scores(torch.from_numpy(scores.cm), void)
    per_class = [
        {
            "index": i,
            "class": c,
            "iou": cs.iou[i],
            "precision": cs.precision[i],
            "recall": cs.recall[i],
            "pixel_share": cs.share[i],
            "present": cs.present[i],
            "scored": i != void,
        }
        for i, c in enumerate(codes)
    ]
    metrics: dict[str, Any] = {
        "acc_camvid": scores.acc_camvid,
        "pixel_acc": scores.pixel_acc,
        "miou": scores.miou,
        "per_class": per_class,
        "evaluated": evaluated,
        "references": REFERENCES,
    }
    if without is not None:
        metrics["without_tta"] = {
            "acc_camvid": without.acc_camvid,
            "pixel_acc": without.pixel_acc,
            "miou": without.miou,
        }
        metrics["tta_change"] = {
            k: metrics[k] - metrics["without_tta"][k] for k in ("acc_camvid", "pixel_acc", "miou")
        }
    atomic_write_text(out_dir / "metrics.json", json.dumps(_json_safe(metrics), indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "class", "iou", "precision", "recall", "pixel_share"])
    for row in per_class:
        writer.writerow(
            [row["index"], row["class"]]
            + [
                "" if np.isnan(row[k]) else f"{row[k]:.6f}"
                for k in ("iou", "precision", "recall", "pixel_share")
            ]
        )
    atomic_write_text(out_dir / "per_class.csv", buf.getvalue())
    plot_confusion(scores.cm, codes, out_dir / "confusion.png")
    return per_class


def _json_safe(obj: Any) -> Any:
    """NaN (an absent class) becomes null: strict JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj
