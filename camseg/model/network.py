"""The network: fastai's U-Net on a torchvision ResNet encoder and its ImageNet or local encoder
weights. The files a trained one is kept in are camseg.model.files'; training schedules are
camseg.train's: this module only builds."""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from camseg.config.schema import ModelConfig
from camseg.errors import CamsegError

# name -> (torchvision constructor, its ImageNet weights)
ARCHS: dict[str, tuple[Callable[..., nn.Module], models.WeightsEnum]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
}

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


def _cache_file(weights: models.WeightsEnum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def encoder_state(cfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The encoder weights the config asks for (torchvision keys), or None for random init."""
    fn, weights = ARCHS[cfg.arch]
    if cfg.weights is not None:
        state = load_torch_file(cfg.weights, "model.weights")
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
    camseg.train.losses, or None for fastai's default for masks (CrossEntropyLossFlat(axis=1))."""
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
    return learn


def unet(
    arch: str, n_classes: int, *, self_attention: bool, blur: bool, last_cross: bool
) -> nn.Module:
    """The bare U-Net (fastai's create_unet_model), no weights loaded. fastai lays out the
    decoder by running a dummy image through it; the layers depend only on the channels and on
    which layers halve the size, the same for any size >= 32, so a 64x64 stand-in builds the
    same network as the trained size."""
    # fastai is imported here, on the first network built, so that `import camseg` and running
    # an ONNX model never load it
    with quiet_fastai_import():
        from fastai.vision.learner import create_unet_model

    return create_unet_model(
        arch_fn(arch),
        n_classes,
        (64, 64),
        pretrained=False,
        self_attention=self_attention,
        blur=blur,
        last_cross=last_cross,
    )


def load_torch_file(path: Path, what: str) -> Any:
    """A torch file of tensors only (weights_only), each way it can fail one line naming it."""
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
