"""Datasets: layouts on disk, their checks, CamSeq01 conversion, downloads and synthetic scenes.
Model code never looks inside; it gets fastai DataLoaders from `build_dataloaders`."""

from camseg.data.check import CheckReport, check_dataset
from camseg.data.layouts import DatasetFiles, build_dataloaders, find_files

__all__ = ["CheckReport", "DatasetFiles", "build_dataloaders", "check_dataset", "find_files"]
