"""The files a trained network lives in: model.pth and a checkpoint's weights (format, version,
metadata, weights and their checksum), read back into a `ModelFile` that rebuilds the network.
Nothing here reads a run folder or imports fastai at import time."""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from PIL import Image
from torch import nn

from camseg.config.schema import ModelConfig
from camseg.config.values import MAX_SIDE, Precision
from camseg.core import __version__
from camseg.core.atomic import atomic_torch_save
from camseg.data.files import class_palette, resize_rgb
from camseg.errors import CamsegError
from camseg.model.network import ARCHS, IMAGENET_MEAN, IMAGENET_STD, load_torch_file, unet

MODEL_FORMAT = "camseg-model"


CHECKPOINT_FORMAT = "camseg-checkpoint"


FILE_VERSION = 1


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes, in name order: the checksum
    model.pth and checkpoints record of their weights, checked on every load (0.09 s for a
    ResNet34 U-Net's 165 MB on one core)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def verify_weights(path: Path, obj: dict) -> None:
    """A file's weights against the checksum it records (files of camseg < 0.3 record none)."""
    recorded = obj.get("weights_sha256")
    if recorded is not None and weights_sha256(obj["model"]) != recorded:
        raise CamsegError(
            f"{path}: its weights do not match the checksum the file records: the file is "
            "damaged; copy it again, or use another run's model"
        )


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    """What model.pth (or a checkpoint) says about the network it holds."""

    path: Path
    arch: str
    codes: list[str]
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    self_attention: bool
    blur: bool
    last_cross: bool
    state_dict: dict[str, torch.Tensor]
    precision: Precision = "fp32"  # what training validated in (camseg.core.precision)
    ignore_index: int | None = None  # data.ignore_index of training; None: older files
    colors: tuple[tuple[int, int, int], ...] | None = None  # class colours; None: older files
    # an int8 .onnx (camseg export --int8): the share of mask pixels its export measured equal
    # to the fp32 graph's, by runtime (onnxruntime, and openvino when it was installed); None for
    # every other file
    int8_agreement: dict[str, float] | None = None

    def palette(self) -> np.ndarray:
        """(classes, 3) uint8: the colours training recorded (data.palette, or its defaults);
        for a file without them, the default colours of its class names."""
        if self.colors is None:
            return class_palette(self.codes)
        return np.array(self.colors, dtype=np.uint8)

    def build(self) -> nn.Module:
        """Rebuild the U-Net and load the weights (camseg.model.network.unet, no download).

        The layers are made on the meta device (shapes
        only: no memory, no random initialisation to overwrite) and then take the file's
        tensors (ResNet34 U-Net on 2 CPU cores: 0.82 s -> 0.25 s). The strict load_state_dict
        fails if the layout ever differed; a tensor the file does not hold (a non-persistent
        buffer) would be left on meta, so then the network is built the ordinary way.
        """

        def build() -> nn.Module:
            return unet(
                self.arch,
                len(self.codes),
                self_attention=self.self_attention,
                blur=self.blur,
                last_cross=self.last_cross,
            )

        try:
            with torch.device("meta"):
                model = build()
            model.load_state_dict(self.state_dict, assign=True)
            if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
                model = build()
                model.load_state_dict(self.state_dict)
        except RuntimeError as e:  # missing, unexpected or misshapen tensors
            raise CamsegError(
                f"{self.path}: its weights do not fit the {self.arch} U-Net for "
                f"{len(self.codes)} classes that its metadata describes ({_first_problem(e)}); "
                "the file is inconsistent: use another run's model"
            ) from None
        return model


def to_model_input(im: Image.Image, mf: ModelFile) -> torch.Tensor:
    """What fastai's valid pipeline does: squish-resize (bilinear), scale to [0, 1], normalise."""
    im = resize_rgb(im, mf.size)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(mf.mean).view(3, 1, 1)
    std = torch.tensor(mf.std).view(3, 1, 1)
    return (x - mean) / std


def _first_problem(e: RuntimeError) -> str:
    """The first concrete line of load_state_dict's error (which lists every mismatch)."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    return (lines[0] if lines else str(e).splitlines()[0])[:160]


def read_model_file(path: Path) -> ModelFile:
    """Load model.pth or a training checkpoint: its metadata checked, its weights checked
    against their checksum. (A run folder is the run's business: camseg.core.runs.model_file.)"""
    obj = load_torch_file(path, "model file")
    if not isinstance(obj, dict) or obj.get("format") not in (MODEL_FORMAT, CHECKPOINT_FORMAT):
        raise CamsegError(f"{path}: not a camseg model file or checkpoint")
    if obj.get("version") != FILE_VERSION:
        raise CamsegError(
            f"{path}: file format version {obj.get('version')} but this camseg "
            f"({__version__}) reads version {FILE_VERSION}; re-export it with a matching camseg"
        )
    state = obj.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CamsegError(f"{path}: no weights (its 'model' is not a dict of tensors)")
    verify_weights(path, obj)
    return ModelFile(path=path, state_dict=state, **_checked_meta(path, obj.get("meta")))


def _checked_meta(path: Path, meta: Any) -> dict[str, Any]:
    """The ModelFile fields of a file's `meta`, each checked: one line naming the first bad one."""

    def bad(key: str, want: str) -> CamsegError:
        got = meta.get(key, "missing") if isinstance(meta, dict) else meta
        return CamsegError(
            f"{path}: meta.{key} = {str(got)[:80]!r} is not {want}; the file is not a complete "
            "camseg model file"
        )

    if not isinstance(meta, dict):
        raise CamsegError(f"{path}: no 'meta' (arch, classes, size) beside the weights")
    if meta.get("arch") not in ARCHS:
        raise bad("arch", f"one of {', '.join(ARCHS)}")
    codes = meta.get("codes")
    if (
        not isinstance(codes, list | tuple)
        or not codes
        or not all(isinstance(c, str) for c in codes)
    ):
        raise bad("codes", "a list of class names")
    size = meta.get("size")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and 32 <= v <= MAX_SIDE for v in size)
    ):
        raise bad("size", f"[H, W] with sides of 32 to {MAX_SIDE} pixels")
    for key in ("mean", "std"):
        v = meta.get(key)
        if (
            not isinstance(v, list | tuple)
            or len(v) != 3
            or not all(isinstance(x, int | float) and math.isfinite(x) for x in v)
            or (key == "std" and min(v) <= 0)
        ):
            raise bad(key, "three finite numbers" + (" above 0" if key == "std" else ""))
    for key in ("self_attention", "blur"):
        if not isinstance(meta.get(key), bool):
            raise bad(key, "true or false")
    last_cross = meta.get("last_cross", True)  # older files: fastai's default
    if not isinstance(last_cross, bool):
        raise bad("last_cross", "true or false")
    precision = meta.get("precision", "fp32")  # older files: not recorded, read as fp32
    if precision not in get_args(Precision):
        raise bad("precision", f"one of {', '.join(get_args(Precision))}")
    ignore_index = meta.get("ignore_index")  # older files: not recorded (Void's index)
    if ignore_index is not None and (
        not isinstance(ignore_index, int)
        or isinstance(ignore_index, bool)
        or not 0 <= ignore_index <= 255
    ):
        raise bad("ignore_index", "a label value 0-255")
    colors = meta.get("colors")  # older files: not recorded
    if colors is not None and (
        not isinstance(colors, list | tuple)
        or len(colors) != len(codes)
        or not all(
            isinstance(c, list | tuple)
            and len(c) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in colors
        )
    ):
        raise bad("colors", "one [R, G, B] (0-255) per class")
    return {
        "arch": meta["arch"],
        "codes": list(codes),
        "size": tuple(size),
        "mean": tuple(float(x) for x in meta["mean"]),
        "std": tuple(float(x) for x in meta["std"]),
        "self_attention": meta["self_attention"],
        "blur": meta["blur"],
        "last_cross": last_cross,
        "precision": precision,
        "ignore_index": ignore_index,
        "colors": None if colors is None else tuple(tuple(c) for c in colors),
    }


def model_meta(
    cfg: ModelConfig,
    codes: list[str],
    size: tuple[int, int],
    *,
    precision: Precision = "fp32",
    ignore_index: int | None = None,
    colors: Any = None,
) -> dict[str, Any]:
    """What model.pth records beside the weights; `precision` is what training validated in
    (camseg.core.precision.validation_precision), which `evaluate` reproduces by default."""
    return {
        "arch": cfg.arch,
        "codes": list(codes),
        "size": list(size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "self_attention": cfg.self_attention,
        "blur": cfg.blur,
        "last_cross": cfg.last_cross,
        "precision": precision,
        "ignore_index": ignore_index,  # the label value training did not score
        "colors": None if colors is None else [[int(v) for v in c] for c in colors],
        "camseg_version": __version__,
    }


def write_model_file(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """model.pth: weights + what is needed to rebuild and use them; loads with weights_only.
    `model` is the network itself (fastai's get_model unwraps a DistributedDataParallel)."""
    state = {k: v.detach().cpu().as_subclass(torch.Tensor) for k, v in model.state_dict().items()}
    atomic_torch_save(
        path,
        {
            "format": MODEL_FORMAT,
            "version": FILE_VERSION,
            "meta": meta,
            "model": state,
            "weights_sha256": weights_sha256(state),
        },
    )


def load_init_weights(model: nn.Module, source: Path, codes: list[str]) -> None:
    """Start `model` (the network itself, not a wrapper) from an earlier run's weights
    (progressive resizing). Codes must match."""
    found = read_model_file(source)
    if found.codes != codes:
        raise CamsegError(
            f"model.init_from {found.path} was trained on other classes: "
            f"{found.codes} vs this data's {codes}"
        )
    try:
        model.load_state_dict(found.state_dict)
    except RuntimeError as e:
        raise CamsegError(
            f"model.init_from {found.path}: weights do not fit this model "
            f"({str(e).splitlines()[0][:160]}); check model.arch ({found.arch} there)"
        ) from None
    log.info("initialised from %s", found.path)
