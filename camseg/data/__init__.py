"""Datasets: layouts on disk, their checks, CamSeq01 conversion, downloads and synthetic scenes.
Model code never looks inside; it gets fastai DataLoaders from `build_dataloaders`."""

from camseg.data.check import CheckReport, check_dataset
from camseg.data.layouts import DatasetFiles, find_files
from camseg.data.loaders import auto_workers, build_dataloaders, resolve_size

__all__ = [
    "CheckReport",
    "DatasetFiles",
    "auto_workers",
    "build_dataloaders",
    "check_dataset",
    "find_files",
    "resolve_size",
]
