"""`evaluate`: score a trained model on a dataset split from one confusion matrix over the whole
split (the same code and, by default, the same precision as the training metric), and write
metrics.json, per_class.csv and a confusion heatmap into RUN_DIR/eval/<data>-<split>/, never over
an earlier evaluation.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from camseg.atomic import atomic_write_text
from camseg.config import DataConfig, load_config
from camseg.data import build_dataloaders, check_dataset, find_files
from camseg.data.layouts import DatasetFiles, label_reader, valid_split
from camseg.errors import CamsegError
from camseg.metrics import acc_camvid, class_scores, confusion_matrix, miou, pixel_acc
from camseg.model import ModelFile, read_model_file, resolve_device
from camseg.precision import EVALUATE_DEFAULT, EvaluatePrecision, evaluate_precision
from camseg.predict import FlipTTA
from camseg.runs import create_run_dir

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

Split = Literal["valid", "train", "all"]


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


def _run_dir_of(source: Path) -> Path | None:
    """The run folder a model belongs to (the folder itself, or model.pth / a checkpoint in it)."""
    for candidate in (source, source.parent, source.parent.parent):
        if (candidate / "config.yaml").is_file() and (candidate / "history.csv").exists():
            return candidate
    return None


def _data_config(run_dir: Path | None, data: Path | None, layout: str | None) -> DataConfig:
    overrides = []
    if data is not None:
        overrides += [f"data.root={data}", f"data.layout={layout or 'camvid'}"]
    elif layout is not None:
        overrides.append(f"data.layout={layout}")
    if run_dir is not None:
        cfg = load_config(run_dir / "config.yaml", overrides)
    elif data is not None:
        cfg = load_config(None, overrides)
    else:
        raise CamsegError("--model without a run folder needs --data DIR (a camvid-layout folder)")
    # Evaluation never augments; synthetic data is read, not re-generated.
    update: dict[str, Any] = {"augment": cfg.data.augment.model_copy(update={"enabled": False})}
    if cfg.data.layout == "synthetic":
        update["layout"] = "camvid"
    return cfg.data.model_copy(update=update)


def split_items(files: DatasetFiles, split: Split) -> list[Path]:
    in_valid = valid_split(files)  # training's own split
    if split == "valid":
        items = [p for p in files.images if in_valid(p)]
    elif split == "train":
        items = [p for p in files.images if not in_valid(p)]
    else:
        items = list(files.images)
    if not items:
        raise CamsegError(f"split {split!r} of {files.root} has no images")
    return items


def _scores(cm: torch.Tensor, void: int) -> Scores:
    return Scores(acc_camvid(cm, void), pixel_acc(cm), miou(cm, void), cm.cpu().numpy())


def confusion_over(
    model: torch.nn.Module,
    dl: Any,
    n: int,
    device: torch.device,
    native_labels: list[np.ndarray] | None = None,
) -> torch.Tensor:
    """Accumulate the confusion matrix over a fastai DataLoader; `model` runs in the precision
    it was given (camseg.precision), so this adds none of its own.

    With native_labels, predictions made at the model's size are upsampled (bilinear, on the
    class scores) to each label's own resolution before the argmax.
    """
    cm = torch.zeros(n, n, dtype=torch.long, device=device)
    seen = 0
    with torch.no_grad():
        for batch in dl:
            logits = model(batch[0]).float()
            if native_labels is None:
                cm += confusion_matrix(logits, batch[1], n)
                continue
            for lg in logits:
                label = torch.from_numpy(native_labels[seen]).to(device)
                seen += 1
                up = F.interpolate(lg[None], size=label.shape, mode="bilinear", align_corners=False)
                cm += confusion_matrix(up, label[None], n)
    return cm


def evaluate(
    source: Path,
    *,
    data: Path | None = None,
    layout: str | None = None,
    split: Split = "valid",
    size: str = "model",
    tta: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    precision: EvaluatePrecision = EVALUATE_DEFAULT,
) -> Evaluation:
    """Score the model at `source` (run folder, model.pth or checkpoint) on a split, by
    default in the precision training validated in (the model file records it)."""
    mf = read_model_file(source)
    run_dir = _run_dir_of(source)
    data_cfg = _data_config(run_dir, data, layout)
    files = find_files(data_cfg)
    if files.codes != mf.codes:
        raise CamsegError(
            f"the model's classes differ from {files.root}'s: "
            f"model {mf.codes} vs data {files.codes}"
        )
    check_dataset(files).raise_if_bad()
    items = split_items(files, split)
    eval_size, native = _eval_size(size, mf)
    dev = resolve_device(device, "--device")
    run_precision = evaluate_precision(precision, mf.precision, dev)
    data_cfg = data_cfg.model_copy(update={"size": eval_size, "batch_size": batch_size})
    dls = build_dataloaders(data_cfg, files, device=dev)
    dl = dls.test_dl(items, with_labels=not native, bs=batch_size)
    labels = [label_reader(files)(p) for p in items] if native else None
    model = run_precision.apply(mf.build().to(dev).eval(), dev)
    n, void = len(files.codes), files.void_index

    base = _scores(confusion_over(model, dl, n, dev, labels), void)
    scores, without = base, None
    if tta:
        scores, without = _scores(confusion_over(FlipTTA(model), dl, n, dev, labels), void), base

    out_parent = (run_dir or mf.path.parent) / "eval"
    out_dir = _new_dir(out_parent, f"{files.root.name}-{split}")
    evaluated = {
        "model": str(mf.path),
        "data": str(files.root),
        "split": split,
        "n_images": len(items),
        "size": "native" if native else list(eval_size),
        "scoring": "class scores upsampled bilinearly to label resolution, then argmax"
        if native
        else "labels resized to the model input size (nearest), as in training",
        "tta": "horizontal flip" if tta else None,
        "device": str(dev),
        "precision": run_precision.name,
        "precision_note": run_precision.note,  # why it is not the one asked for, if it is not
    }
    per_class = _write_outputs(out_dir, scores, without, files.codes, void, evaluated)
    if run_dir is not None:
        from camseg.report import write_report

        write_report(run_dir)
    return Evaluation(scores, without, per_class, out_dir, evaluated)


def _eval_size(size: str, mf: ModelFile) -> tuple[tuple[int, int], bool]:
    if size in ("model", "native"):
        return mf.size, size == "native"
    parts = size.lower().replace(",", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise CamsegError(f"--size {size!r}: expected HxW (e.g. 360x480), model or native")
    h, w = (int(p) for p in parts)
    if min(h, w) < 32:
        raise CamsegError(f"--size {size}: both sides must be at least 32")
    return (h, w), False


def _new_dir(parent: Path, name: str) -> Path:
    return create_run_dir(parent, name)


def _write_outputs(
    out_dir: Path,
    scores: Scores,
    without: Scores | None,
    codes: list[str],
    void: int,
    evaluated: dict,
) -> list[dict]:
    from camseg.plots import plot_confusion

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
