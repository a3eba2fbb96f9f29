"""The kinds of value config keys and command options take: the choices (precisions, formats,
splits, weights), sizes written as text, learning rates (a number, fastai's slices, find), the
bounds every size and seed is held to, and the section base every config section shares. No
torch, so the CLI offers the choices fast."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from camseg.errors import CamsegError

# Choices of the inference commands, here so the CLI can offer them without importing torch.
Precision = Literal["fp32", "fp16", "bf16"]


PredictPrecision = Literal["auto", "fp32", "fp16", "bf16"]  # auto: the fastest the device has


EvaluatePrecision = Literal["train", "fp32", "fp16", "bf16"]  # train: what training validated in


# What runs an exported .onnx model: auto picks OpenVINO when installed (faster on the CPUs
# measured, docs/benchmarks.md), else ONNX Runtime.
Runtime = Literal["auto", "onnxruntime", "openvino"]


Split = Literal["valid", "train", "all"]


Format = Literal["index", "color", "overlay"]


Weights = Literal["last", "best"]  # a run's last epoch (model.pth) or its best by acc_camvid


DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


_SIZE = re.compile(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*")


def _size_from_text(v: Any) -> Any:
    """ "HxW" (or "H,W") -> (H, W), else `v` as it is: the one parser of sizes written as text,
    on the command line (parse_size) and in a config (a Size field)."""
    if isinstance(v, str) and (m := _SIZE.fullmatch(v)):
        return int(m.group(1)), int(m.group(2))
    return v


# NumPy's seeds are 32-bit; a bigger one fails deep in seeding.
MAX_SEED = 2**32 - 1


# A class weight scales that class's pixels in the loss; beyond this one class swamps the others
# and the loss overflows in fp16 (SegNet's median-frequency weights reach ~50 on CamVid).
MAX_CLASS_WEIGHT = 1e6


# The largest side a network runs at (data.size, and the size a model file records): a bound
# checked before anything is resized, so a damaged or hostile file cannot ask for 100000x100000.
MAX_SIDE = 8192


Size = Annotated[tuple[int, int], BeforeValidator(_size_from_text)]


SizeOrScale = Annotated[tuple[int, int] | float, BeforeValidator(_size_from_text)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_size(text: str, key: str = "--size") -> tuple[int, int]:
    """ "HxW" (or "H,W") -> (H, W): a size option typed on a command line."""
    size = _size_from_text(text)
    if not isinstance(size, tuple) or min(size) < 1:
        raise CamsegError(f"{key} {text!r}: expected HxW, e.g. 96x128")
    return size


@dataclass(frozen=True)
class LrSlice:
    """fastai's `slice(stop)` or `slice(start, stop)` as a stage's lr.

    fastai spreads it over the parameter groups (encoder blocks, then the decoder):
    `slice(stop)` gives the last group `stop` and every earlier group `stop / 10`;
    `slice(start, stop)` spaces the groups geometrically from `start` to `stop`. A frozen
    encoder still trains its BatchNorm layers at its group's rate, so this is not the same as a
    plain number, which gives every group the same rate.
    """

    stop: float
    start: float | None = None

    def as_fastai(self) -> slice:
        return slice(self.start, self.stop)

    def __str__(self) -> str:
        if self.start is None:
            return f"slice({self.stop:g})"
        return f"slice({self.start:g}, {self.stop:g})"


_SLICE = re.compile(r"^\s*slice\(\s*([^,()]+?)\s*(?:,\s*([^,()]+?)\s*)?\)\s*$")


LearningRate = Annotated[
    float | Annotated[LrSlice, PlainSerializer(str, return_type=str)] | Literal["find"],
    Field(
        description="max lr: a number (every parameter group), slice(x) (fastai: the last group "
        "x, earlier groups x/10), slice(low, high) or [low, high] (groups spaced from low to "
        "high), or find (run lr_find when the stage starts)"
    ),
]


def _checked_slice(low: float | None, high: float) -> LrSlice:
    if not 0 < high < math.inf or (low is not None and not 0 < low <= high):
        raise ValueError("a slice must be 0 < low <= high < inf, e.g. slice(1e-6, 1e-4)")
    return LrSlice(stop=high, start=low)


def as_number(v: Any) -> Any:
    """A number written as YAML 1.1 text (1e-3 without a dot is a string there) as a float."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def learning_rate(v: Any) -> Any:
    """A stage's lr as written (a number, a pair, slice(...) text or find), checked."""
    if v == "find" or isinstance(v, LrSlice):
        return v
    if isinstance(v, str) and (m := _SLICE.match(v)):
        low, high = (as_number(g) for g in m.groups())
        if m.group(2) is None:
            low, high = None, low
        if not isinstance(high, float) or not (low is None or isinstance(low, float)):
            raise ValueError("slice() takes numbers, e.g. slice(1e-3) or slice(1e-6, 1e-4)")
        return _checked_slice(low, high)
    # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as the number it looks like.
    v = [as_number(x) for x in v] if isinstance(v, list | tuple) else as_number(v)
    if isinstance(v, list):
        if len(v) != 2 or not all(isinstance(x, float) for x in v):
            raise ValueError("a pair must be two numbers [low, high]")
        return _checked_slice(*v)
    if isinstance(v, float) and 0 < v < math.inf:
        return v
    raise ValueError("expected a finite positive number, slice(x), slice(low, high), or 'find'")
