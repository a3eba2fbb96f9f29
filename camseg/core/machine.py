"""What a run trains on, said before its first batch: the device line the CLI prints and the
versions and machine that env.json records."""

from __future__ import annotations

import os
import platform
from typing import Any

import fastai
import torch
import torchvision
from fastai.torch_core import num_distrib

from camseg.core import __version__
from camseg.core.precision import TrainingPrecision


def environment(device: torch.device) -> dict[str, Any]:
    """env.json: the versions and the machine a run trained with."""
    env: dict[str, Any] = {
        "camseg": __version__,
        "fastai": fastai.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "world_size": max(1, num_distrib()),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_count"] = torch.cuda.device_count()
    return env


def describe_device(device: torch.device, precision: TrainingPrecision, asked: str) -> str:
    """The line a run prints before its first batch: where it trains (`asked`: train.device as
    set) and in what precision, so a GPU machine whose torch sees no CUDA is noticed before
    hours on the CPU, not after."""
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        why = "" if asked == "cpu" else f"; torch {torch.__version__} sees no CUDA GPU"
        where = f"cpu ({torch.get_num_threads()} threads{why})"
    else:
        where = str(device)
    how = {"fp16": "fp16 mixed precision", "bf16": "bf16 autocast", "fp32": "fp32"}[precision.name]
    started = "as this run started" if precision.recorded else ""
    why = "; ".join(w for w in (started, precision.reason) if w)
    how += f" ({why})" if why else ""
    processes = max(1, num_distrib())
    return f"training on {where}, {how}" + (f", {processes} processes" if processes > 1 else "")
