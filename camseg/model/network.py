"""The network: fastai's U-Net on a torchvision ResNet encoder, its ImageNet or local weights,
and the `model.pth` file that evaluate and predict rebuild it from (no pickled code).

Training schedules live in train.py; this module only builds and loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from torch import nn
from torchvision import models

from camseg import __version__
from camseg.atomic import atomic_torch_save
from camseg.errors import CamsegError
from camseg.runs import model_file
from camseg.schema import DEVICE_PATTERN, MAX_SIDE, ModelConfig, Precision

log = logging.getLogger(__name__)

# name -> (torchvision constructor, its ImageNet weights)
ARCHS: dict[str, tuple[Callable[..., nn.Module], models.WeightsEnum]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
}

MODEL_FORMAT = "camseg-model"
CHECKPOINT_FORMAT = "camseg-checkpoint"
FILE_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextlib.contextmanager
def quiet_fastai_import() -> Iterator[None]:
    """Importing fastai warns of torch's and pandas' deprecations (torch.jit.script, pandas'
    chained_assignment option) that nothing in camseg or its user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        warnings.filterwarnings("ignore", message="The 'mode.chained_assignment' option")
        yield


def arch_fn(name: str) -> Callable[..., nn.Module]:
    try:
        return ARCHS[name][0]
    except KeyError:
        raise CamsegError(f"unknown model.arch {name!r}; valid: {', '.join(ARCHS)}") from None


def resolve_device(spec: str, key: str = "train.device") -> torch.device:
    """auto -> CUDA when present (this rank's GPU under torchrun), else CPU. `key` names the
    setting in messages (train.device, or --device for evaluate and predict)."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not DEVICE_PATTERN.match(spec):
        raise CamsegError(f"{key} {spec!r}: expected auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CamsegError(
                f"{key}={spec} but CUDA is not available here (torch {torch.__version__}); "
                f"use {key}=cpu or auto"
            )
        index = int(spec.split(":")[1]) if ":" in spec else local
        if index >= torch.cuda.device_count():
            raise CamsegError(
                f"{key}={spec} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    if spec == "mps" and not torch.backends.mps.is_available():
        raise CamsegError(f"{key}=mps but MPS is not available; use cpu or auto")
    return torch.device(spec)


def cuda_kernels(deterministic: bool = False) -> None:
    """cuDNN's kernel choice: by default it times the candidate kernels for each new input shape
    and keeps the fastest (cudnn.benchmark); deterministic=True asks for reproducible kernels
    instead. Set for CPU runs too (then without effect), so a process's state is what was asked."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def _cache_file(weights: models.WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def encoder_state(cfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The encoder weights the config asks for (torchvision keys), or None for random init."""
    fn, weights = ARCHS[cfg.arch]
    if cfg.weights is not None:
        state = _load_file(cfg.weights, "model.weights")
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise CamsegError(
                f"{cfg.weights}: not a torchvision {cfg.arch} state dict (model.weights)"
            )
        missing, unexpected = fn(weights=None).load_state_dict(state, strict=False)
        if missing or [k for k in unexpected if not k.startswith("fc.")]:
            raise CamsegError(
                f"{cfg.weights}: does not fit a torchvision {cfg.arch} "
                f"(missing {missing[:2]}, unexpected {unexpected[:2]}); check model.arch"
            )
        return state
    if not cfg.pretrained:
        return None
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # URLError, socket errors, HTTP errors: all mean "no weights here"
        raise CamsegError(
            f"ImageNet weights for {cfg.arch} are not in torch's cache ({_cache_file(weights)}) "
            f"and could not be downloaded ({type(e).__name__}); either set model.weights=PATH to "
            f"a local torchvision {cfg.arch} state dict, or set model.pretrained=false"
        ) from None


def build_learner(
    dls: Any,
    cfg: ModelConfig,
    *,
    codes: list[str],
    metrics: list,
    path: Path,
    wd: float | None,
    moms: tuple[float, float, float],
    loss_func: Any = None,
) -> Any:
    """fastai unet_learner with the encoder initialised as the config says; `loss_func` from
    camseg.losses, or None for fastai's default for masks (CrossEntropyLossFlat(axis=1))."""
    with quiet_fastai_import():
        from fastai.vision.learner import unet_learner

    learn = unet_learner(
        dls,
        arch_fn(cfg.arch),
        pretrained=False,  # weights are loaded below, so an offline machine never tries a download
        n_out=len(codes),
        loss_func=loss_func,
        metrics=metrics,
        path=path,
        model_dir="checkpoints",
        wd=wd,
        moms=moms,
        self_attention=cfg.self_attention,
        blur=cfg.blur,
        last_cross=cfg.last_cross,
    )
    # init_from replaces every weight, so ImageNet weights would only be fetched to be dropped
    # (and an offline machine would fail for nothing).
    state = encoder_state(cfg) if cfg.init_from is None else None
    if state is not None:
        tv = ARCHS[cfg.arch][0](weights=None)
        tv.load_state_dict(state, strict=False)
        body = nn.Sequential(*list(tv.children())[:-2])  # fastai's resnet cut: drop pool and fc
        learn.model[0].load_state_dict(body.state_dict())
    if cfg.init_from is not None:
        load_init_weights(learn.model, cfg.init_from, codes)
    return learn


def _load_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CamsegError(f"{what}: file not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a legacy pickle
        raise CamsegError(f"{path}: not a torch file ({what}); is it the right file?")
    try:
        # weights_only: a model file is data; a pickle that carries code is refused, not run.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CamsegError(
                f"{path}: holds Python objects or code, not only tensors; camseg loads no such "
                f"file ({what}: a camseg model file or a torch state dict of tensors)"
            ) from None
        raise CamsegError(f"{path}: not a torch file ({what}); is it the right file?") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CamsegError(
            f"{path}: cannot load ({what}): {first[:200]}; is it a complete camseg/torch file?"
        ) from None


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


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
    precision: Precision = "fp32"  # what training validated in (camseg.precision)
    ignore_index: int | None = None  # data.ignore_index of training; None: older files
    colors: tuple[tuple[int, int, int], ...] | None = None  # class colours; None: older files

    def palette(self) -> np.ndarray:
        """(classes, 3) uint8: the colours training recorded (data.palette, or its defaults);
        for a file without them, the default colours of its class names."""
        from camseg.data.files import class_palette

        if self.colors is None:
            return class_palette(self.codes)
        return np.array(self.colors, dtype=np.uint8)

    def build(self) -> nn.Module:
        """Rebuild the U-Net and load the weights (fastai's create_unet_model, no download).

        fastai lays out the decoder by running a dummy image through it; the layers depend only
        on the channels and on which layers halve the size, the same for any size >= 32, so a
        64x64 stand-in builds the same network. The layers are made on the meta device (shapes
        only: no memory, no random initialisation to overwrite) and then take the file's
        tensors (ResNet34 U-Net on 2 CPU cores: 0.82 s -> 0.25 s). The strict load_state_dict
        fails if the layout ever differed; a tensor the file does not hold (a non-persistent
        buffer) would be left on meta, so then the network is built the ordinary way.
        """
        with quiet_fastai_import():
            from fastai.vision.learner import create_unet_model

        def unet() -> nn.Module:
            return create_unet_model(
                arch_fn(self.arch),
                len(self.codes),
                (64, 64),
                pretrained=False,
                self_attention=self.self_attention,
                blur=self.blur,
                last_cross=self.last_cross,
            )

        try:
            with torch.device("meta"):
                model = unet()
            model.load_state_dict(self.state_dict, assign=True)
            if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
                model = unet()
                model.load_state_dict(self.state_dict)
        except RuntimeError as e:  # missing, unexpected or misshapen tensors
            raise CamsegError(
                f"{self.path}: its weights do not fit the {self.arch} U-Net for "
                f"{len(self.codes)} classes that its metadata describes ({_first_problem(e)}); "
                "the file is inconsistent: use another run's model"
            ) from None
        return model


def _first_problem(e: RuntimeError) -> str:
    """The first concrete line of load_state_dict's error (which lists every mismatch)."""
    lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
    return (lines[0] if lines else str(e).splitlines()[0])[:160]


def read_model_file(path: Path) -> ModelFile:
    """Load model.pth or a training checkpoint (a run folder is resolved to its model): its
    metadata checked, its weights checked against their checksum."""
    path = model_file(path)
    obj = _load_file(path, "model file")
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
    (camseg.precision.validation_precision), which `evaluate` reproduces by default."""
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
    """model.pth: weights + what is needed to rebuild and use them; loads with weights_only."""
    state = {
        k: v.detach().cpu().as_subclass(torch.Tensor)
        for k, v in _unwrap(model).state_dict().items()
    }
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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def load_init_weights(model: nn.Module, source: Path, codes: list[str]) -> None:
    """Start from an earlier run's weights (progressive resizing). Codes must match."""
    found = read_model_file(source)
    if found.codes != codes:
        raise CamsegError(
            f"model.init_from {found.path} was trained on other classes: "
            f"{found.codes} vs this data's {codes}"
        )
    try:
        _unwrap(model).load_state_dict(found.state_dict)
    except RuntimeError as e:
        raise CamsegError(
            f"model.init_from {found.path}: weights do not fit this model "
            f"({str(e).splitlines()[0][:160]}); check model.arch ({found.arch} there)"
        ) from None
    log.info("initialised from %s", found.path)
