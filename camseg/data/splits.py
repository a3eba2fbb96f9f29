"""Which frames a trained model is scored or calibrated on: the data section of its run as
evaluate reads it, and a split's frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from camseg.config.load import load_config
from camseg.config.schema import DataConfig, Layout
from camseg.config.values import Split
from camseg.core.runs import Run
from camseg.data.layouts import DatasetFiles, valid_split
from camseg.errors import CamsegError


def split_items(files: DatasetFiles, split: Split) -> list[Path]:
    if split == "all":  # every frame: no validation list needed
        items = list(files.images)
    else:
        in_valid = valid_split(files)  # training's own split
        items = [p for p in files.images if in_valid(p) == (split == "valid")]
    if not items:
        raise CamsegError(f"split {split!r} of {files.root} has no images")
    return items


def reading_data_config(run: Run | None, data: Path | None, layout: Layout | None) -> DataConfig:
    """The data section a run's model is scored or calibrated on: the run's (or the defaults),
    with --data / --layout put in as they are; never augmented, and a synthetic set read as
    it is, not generated again."""
    if run is None and data is None:
        raise CamsegError("--model without a run folder needs --data DIR (a camvid-layout folder)")
    section = load_config(run.config if run is not None else None).data
    update: dict[str, Any] = {}
    if data is not None:
        update |= {"root": data, "layout": layout or "camvid"}
    elif layout is not None:
        update["layout"] = layout
    # Evaluation never augments; synthetic data is read, not re-generated.
    update["augment"] = section.augment.model_copy(update={"enabled": False})
    if update.get("layout", section.layout) == "synthetic":
        update["layout"] = "camvid"
    return section.model_copy(update=update)
