"""The Python API: a trained camseg model as an object that segments images.

    from camseg import Segmenter

    seg = Segmenter("runs/half")              # a run folder, model.pth or a checkpoint
    mask = seg.predict("frame.png")           # (H, W) uint8 class indices, the image's own size
    names = seg.classes                       # mask value i is class seg.classes[i]
    color = seg.predict(frame, output="color")   # (H, W, 3) uint8 in CamVid's colours
    seg                                       # Segmenter(model_path=..., arch=..., ...)

`camseg predict` segments its images through the same object, so both give the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Union, get_args

import numpy as np
import torch
from PIL import Image

from camseg.core.runs import latest_run
from camseg.data.files import open_rgb, upright_rgb
from camseg.errors import CamsegError
from camseg.infer.network import Network, class_mask, load_network
from camseg.model.files import ModelFile

Output = Literal["index", "color", "overlay", "scores"]
ImageLike = Union[str, Path, Image.Image, np.ndarray]  # noqa: UP007  (documented type alias)
# Pillow warns above 89 and refuses above 179 megapixels (its decompression-bomb guard); camseg
# takes photos up to this size instead, checked from the header before decoding (predict skips a
# bigger file with that reason). At the limit a photo needs 1 GB in `camseg predict`.
MAX_PIXELS = 200_000_000


class Segmenter:
    """Segments images with a trained model.

    `model`: a run folder (its model.pth), a model.pth or checkpoint file, a model.onnx from
    `camseg export` (run on the CPU in its graph's precision, fp32 or int8, without fastai), or
    None for the newest finished run under ./runs. `device`: auto, cpu, cuda or cuda:N.
    `precision`: auto (fp16 on CUDA, bf16 on CPUs with native bf16, else fp32), fp32, fp16 or
    bf16. `runtime`, for a model.onnx: auto (OpenVINO when installed, else ONNX Runtime),
    onnxruntime or openvino. `tta`: average
    each image with its mirror image (twice the time). `tune_process`: let camseg set the
    process-wide settings its own commands run with (cuDNN's kernel search on CUDA, glibc keeping
    freed memory on a CPU: camseg.infer.network.tune_process_for); off, the process is left as
    it is.

    One Segmenter may be shared between threads (a web server's workers): images are read and
    resized in parallel, the network runs one call at a time (fastai's U-Net keeps each call's
    skip features in hooks that all calls share, so two calls at once would mix their images).
    """

    def __init__(
        self,
        model: str | Path | ModelFile | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        tta: bool = False,
        tune_process: bool = False,
        runtime: str = "auto",
    ) -> None:
        if model is None:
            model = latest_run(Path("runs")).dir
        source = model if isinstance(model, ModelFile) else Path(model)
        self._net: Network = load_network(
            source,
            device=device,
            precision=precision,
            tta=tta,
            tune_process=tune_process,
            runtime=runtime,
        )
        self._palette = self._net.info.palette()  # what training recorded

    @property
    def classes(self) -> list[str]:
        """Class names; a mask value i means classes[i]."""
        return list(self._net.info.codes)

    @property
    def colors(self) -> np.ndarray:
        """(classes, 3) uint8: the colour of each class in colour masks and overlays (the
        model file's: data.palette, or CamVid's colours and distinct ones for other names)."""
        return self._palette.copy()

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the network runs at; every image is resized to it, as in training."""
        return self._net.info.size

    @property
    def model_path(self) -> Path:
        """The model file loaded: model.pth, a checkpoint or a model.onnx."""
        return self._net.info.path

    @property
    def arch(self) -> str:
        return self._net.info.arch

    @property
    def device(self) -> torch.device:
        return self._net.device

    @property
    def precision(self) -> str:
        return self._net.precision.name

    @property
    def runtime(self) -> str:
        """pytorch, or for a model.onnx onnxruntime or openvino."""
        return self._net.runtime

    def __repr__(self) -> str:
        h, w = self.size
        return (
            f"Segmenter(model_path={str(self.model_path)!r}, arch={self.arch!r}, "
            f"classes={len(self.classes)}, size={h}x{w}, device={str(self.device)!r}, "
            f"precision={self.precision!r}, runtime={self.runtime!r})"
        )

    def predict(self, image: ImageLike, output: Output = "index") -> np.ndarray:
        """One image (a path, a PIL image or an (H, W, 3) uint8 array) -> at its own size:
        index: (H, W) uint8 class indices; color: (H, W, 3) uint8; overlay: (H, W, 3) uint8,
        the image and its colour mask half and half (as `camseg predict` writes it); scores:
        (classes, H, W) float32 class probabilities (4 bytes x classes a pixel: 128 MB for a
        1-MP image)."""
        return self.predict_batch([image], output)[0]

    def predict_batch(
        self, images: Sequence[ImageLike], output: Output = "index"
    ) -> list[np.ndarray]:
        """`predict` for several images in one network batch (faster on a GPU)."""
        if output not in get_args(Output):
            raise CamsegError(f"output {output!r}: choose {', '.join(get_args(Output))}")
        if isinstance(images, str | Path | Image.Image | np.ndarray):
            raise CamsegError(
                "predict_batch takes a list of images; for one image use predict(image)"
            )
        pil = [as_rgb(im) for im in images]
        if not pil:
            return []
        if output == "scores":
            scores = self._net.images(pil)
            return [
                _probabilities(lg, im.height, im.width) for lg, im in zip(scores, pil, strict=True)
            ]
        masks = self.masks(pil)
        if output == "index":
            return masks
        if output == "color":
            return [self._palette[m] for m in masks]
        return [overlay(np.asarray(im), self._palette[m]) for im, m in zip(pil, masks, strict=True)]

    def masks(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Index masks of RGB PIL images (the images are not copied or converted)."""
        scores = self._net.images(list(images))
        return [
            class_mask(lg, im.height, im.width).cpu().numpy()
            for lg, im in zip(scores, images, strict=True)
        ]


def overlay(rgb: np.ndarray, color: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image and its colour mask, half and half."""
    return ((rgb.astype(np.uint16) + color) // 2).astype(np.uint8)


def as_rgb(image: ImageLike) -> Image.Image:
    """A path, PIL image or array as an upright 8-bit RGB PIL image, read as `camseg predict`
    reads files (camseg.data.files.upright_rgb: EXIF orientation, 16-bit and float grey scaled,
    alpha dropped). Arrays: (H, W) grey or (H, W, 3/4) RGB(A), uint8 or uint16 (grey)."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise CamsegError(f"{path}: no such image file")
        return open_rgb(path, MAX_PIXELS)
    if isinstance(image, np.ndarray):
        image = _array_image(image)
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise CamsegError(
                f"an image of {image.width}x{image.height} pixels has nothing to segment"
            )
        return upright_rgb(image)[0]
    raise CamsegError(
        f"cannot segment a {type(image).__name__}: give a path, a PIL image or an (H, W, 3) "
        "uint8 array"
    )


def _array_image(a: np.ndarray) -> Image.Image:
    shape = f"{a.shape} {a.dtype}"
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise CamsegError(
            f"an image array must be (H, W) grey or (H, W, 3) RGB / (H, W, 4) RGBA, got {shape}"
        )
    if 0 in a.shape[:2]:
        raise CamsegError(f"an image array of shape {a.shape} has nothing to segment")
    a = np.ascontiguousarray(a)
    if a.dtype == np.uint8 or (a.dtype == np.uint16 and a.ndim == 2):
        return Image.fromarray(a)  # L, RGB, RGBA; uint16 grey: I;16, scaled as a 16-bit PNG
    raise CamsegError(
        f"an image array must be uint8 (or uint16 grey), got {shape}; convert it with "
        "np.clip(a, 0, 255).astype(np.uint8)"
    )


def _probabilities(scores: torch.Tensor, h: int, w: int) -> np.ndarray:
    if (h, w) != tuple(scores.shape[-2:]):
        scores = torch.nn.functional.interpolate(
            scores[None], size=(h, w), mode="bilinear", align_corners=False
        )[0]
    return scores.float().softmax(dim=0).cpu().numpy()
