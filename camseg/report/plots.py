"""Every figure camseg draws: lr finder, lr/momentum schedule, losses, image / ground truth /
prediction grid with a legend of the classes shown, confusion heatmap. Each function writes one
PNG; the results grid also its legend as CSV, for the report.

Figures are matplotlib `Figure` objects drawn straight to PNG, not pyplot's: no backend is chosen
and no figure is kept, so a notebook that imports camseg keeps its own matplotlib setup."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from camseg.core.atomic import atomic_write, atomic_write_text
from camseg.data.files import class_palette, label_palette
from camseg.model.network import IMAGENET_MEAN, IMAGENET_STD


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


# What each of fastai's lr_find suggestions is, for the plot's legend
LR_FIND_MEANINGS = {
    "valley": "valley (longest descent)",
    "slide": "slide (interval slide rule)",
    "minimum": "minimum/10 (a tenth of the lowest loss's lr)",
    "steep": "steep (steepest descent)",
}


def plot_lr_find(
    recorder: Any,
    suggested: dict[str, float | None],
    points: dict[str, tuple[float, float]],
    path: Path,
) -> None:
    """Loss against learning rate (paper Fig. 9/10) with fastai's suggestions marked: a line at
    each suggested lr and a marker where it sits on the curve, each in its own style, so two
    suggestions at the same lr both stay visible."""
    lrs = [float(x) for x in recorder.lrs]
    losses = [float(x) for x in recorder.losses]
    skip = 5 if len(lrs) > 10 else 0  # the last steps diverge and squash the plot
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs[: len(lrs) - skip], losses[: len(losses) - skip], color="C0")
    styles = zip(("C1", "C2", "C3", "C4"), ("--", ":", "-.", (0, (6, 2))), "osD^", strict=True)
    for (name, lr), (colour, dash, marker) in zip(suggested.items(), styles, strict=True):
        label = LR_FIND_MEANINGS.get(name, name)
        if lr is None:
            ax.plot([], [], " ", label=f"{label}: not computed")
            continue
        ax.axvline(lr, color=colour, linestyle=dash, linewidth=1.2, label=f"{label}: {lr:.2e}")
        if name in points:
            x, y = points[name]
            ax.plot(x, y, marker=marker, color=colour, markersize=7, fillstyle="none")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed loss", title="lr finder")
    ax.legend(fontsize="small")
    _save(fig, path)


def _stage_edges(stages: list[int]) -> list[int]:
    return [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]


def plot_schedule(iters: dict[str, list], path: Path) -> None:
    """Learning rate and momentum against iteration, all stages (paper Fig. 7/8)."""
    fig = Figure(figsize=(11, 3.8))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(iters["lr"])
    a1.set(xlabel="iteration", ylabel="learning rate", title="learning rate")
    a2.plot(iters["mom"])
    a2.set(xlabel="iteration", ylabel="momentum", title="momentum")
    for ax in (a1, a2):
        for edge in _stage_edges(iters["stage"]):
            ax.axvline(edge, color="grey", linestyle=":")
    _save(fig, path)


def plot_losses(iters: dict[str, list], valid_points: list[list[float]], path: Path) -> None:
    """Smoothed train loss per iteration and valid loss per epoch (paper Fig. 11/12)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(iters["loss"], label="train")
    if valid_points:
        x, y = zip(*valid_points, strict=True)
        ax.plot(x, y, marker="o", label="valid")
    for edge in _stage_edges(iters["stage"]):
        ax.axvline(edge, color="grey", linestyle=":")
    ax.set(xlabel="iteration", ylabel="loss", title="losses")
    ax.legend()
    _save(fig, path)


def plot_grid(
    images: np.ndarray,
    truths: np.ndarray | None,
    preds: np.ndarray,
    codes: list[str],
    path: Path,
    titles: list[str] | None = None,
    colors: np.ndarray | None = None,
) -> list[int]:
    """Rows of image / ground truth / prediction (paper Fig. 14); uint8 HxWx3 and HxW arrays.
    Below them a legend of the classes shown, whose indices it returns. `colors`: the class
    colours (default `class_palette`)."""
    pal = label_palette(_colors(codes, colors))  # a ground truth's ignore value shows black
    cols = 3 if truths is not None else 2
    n = len(images)
    fig = Figure(figsize=(4 * cols, 3 * n))
    axes = fig.subplots(n, cols, squeeze=False)
    for r in range(n):
        panels = [images[r]] + ([pal[truths[r]]] if truths is not None else []) + [pal[preds[r]]]
        names = ["image"] + (["ground truth"] if truths is not None else []) + ["prediction"]
        for c, (panel, name) in enumerate(zip(panels, names, strict=True)):
            axes[r, c].imshow(panel)
            axes[r, c].set_axis_off()
            title = name if r == 0 else ""
            if c == 0 and titles:
                title = f"{title}\n{titles[r]}" if title else titles[r]
            axes[r, c].set_title(title, fontsize=9)
    shown = [i for i in present_classes(truths, preds) if i < len(codes)]  # not 255
    handles = [Patch(facecolor=pal[i] / 255, edgecolor="0.4", label=codes[i]) for i in shown]
    # centred under the last row, outside the axes: the saved figure grows to fit it
    # (bbox_inches="tight"); x in figure, y in the drawn last row's coordinates
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.04),
        bbox_transform=blended_transform_factory(fig.transFigure, axes[-1, 0].transAxes),
        ncol=2 * cols,
        fontsize=9,
        frameon=False,
        title="classes shown",
        title_fontsize=9,
    )
    _save(fig, path)
    return shown


def present_classes(*masks: np.ndarray | None) -> list[int]:
    """The class indices that appear in any of the masks (None skipped), in class order."""
    found = [np.unique(m) for m in masks if m is not None]
    return [int(i) for i in np.unique(np.concatenate(found))] if found else []


def legend_file(png: Path) -> Path:
    """The CSV (class, colour) that plot_results writes beside its figure: results_legend.csv."""
    return png.with_name(f"{png.stem}_legend.csv")


def _colors(codes: list[str], colors: np.ndarray | None) -> np.ndarray:
    return class_palette(codes) if colors is None else np.asarray(colors, dtype=np.uint8)


def _write_legend(
    path: Path, codes: list[str], classes: list[int], colors: np.ndarray | None = None
) -> None:
    pal = _colors(codes, colors)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "colour"])
    for i in classes:
        writer.writerow([codes[i], "#{:02x}{:02x}{:02x}".format(*pal[i])])
    atomic_write_text(path, buf.getvalue())


def plot_results(
    learn: Any, codes: list[str], path: Path, n: int = 4, colors: np.ndarray | None = None
) -> None:
    """Image / ground truth / prediction for the first validation images of a learner."""
    dl = learn.dls.valid.new(bs=min(n, len(learn.dls.valid_ds)), shuffle=False)
    xb, yb = dl.one_batch()
    model = learn.model
    model.eval()
    with torch.no_grad():
        preds = model(xb).argmax(dim=1).cpu().numpy().astype(np.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)  # the Normalize of build_dataloaders
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = ((xb.float().cpu() * std + mean).clamp(0, 1) * 255).byte().permute(0, 2, 3, 1)
    names = [Path(p).name for p in learn.dls.valid_ds.items[: len(preds)]]
    truths = yb.cpu().numpy().astype(np.uint8)
    shown = plot_grid(images.numpy(), truths, preds, codes, path, names, colors)
    _write_legend(legend_file(path), codes, shown, colors)


def plot_confusion(cm: np.ndarray, codes: list[str], path: Path) -> None:
    """Row-normalised confusion heatmap (rows: true class, columns: predicted)."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    k = len(codes)
    fig = Figure(figsize=(0.32 * k + 3, 0.32 * k + 2))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), codes, rotation=90, fontsize=7)
    ax.set_yticks(range(k), codes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    _save(fig, path)


def plot_run(
    learn: Any,
    iters: dict,
    valid_points: list,
    folder: Path,
    codes: list[str],
    colors: np.ndarray | None = None,
) -> None:
    """The plots of a finished run: lr/momentum schedule, losses, validation predictions."""
    plot_schedule(iters, folder / "schedule.png")
    plot_losses(iters, valid_points, folder / "loss.png")
    plot_results(learn, codes, folder / "results.png", colors=colors)
