"""Inference with a trained model, shared by evaluate, predict and anything built on them: load
a model file onto a device in one precision (camseg.core.precision), preprocess an image exactly as
training's validation pipeline did (from what model.pth records), optional flip TTA, and class
scores -> class indices at an image's or a label's own size.

Needs only the model file: no training config, no fastai Learner. An exported model.onnx runs
through the same `Network`, its module an ONNX Runtime session or an OpenVINO compiled model
(camseg.infer.onnx_runtime), without fastai.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from camseg.core.device import cuda_kernels, resolve_device
from camseg.core.heap import keep_freed_memory
from camseg.core.precision import InferencePolicy, RunPrecision, inference_precision
from camseg.core.runs import model_file
from camseg.errors import CamsegError
from camseg.infer.fold import fold_for_inference
from camseg.infer.onnx_runtime import onnx_module, onnx_precision, pick_runtime
from camseg.model.files import ModelFile, read_model_file, to_model_input
from camseg.model.onnx_file import is_onnx, read_onnx_file

# Full-resolution class scores take 4 bytes x classes a pixel (128 B with CamVid's 32 classes):
# up to ONE_PIECE_BYTES (4 MP) they are upsampled in one F.interpolate call, a bigger image in
# row bands of BAND_BYTES, so that memory follows the model's size, not the photo's.
ONE_PIECE_BYTES = 512 * 2**20
BAND_BYTES = 32 * 2**20


class FlipTTA(torch.nn.Module):
    """Test-time augmentation for segmentation: average the softmax of the image and of its
    mirror image, flipped back. (fastai's Learner.tta averages randomly warped inputs without
    warping the predictions back, which misaligns masks; a flip is its own inverse.)"""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.model(x).float().softmax(dim=1)
        p_flip = self.model(x.flip(-1)).float().softmax(dim=1).flip(-1)
        return ((p + p_flip) / 2).log()  # log-probabilities: argmax and NLL behave as logits


@dataclass(frozen=True)
class Network:
    """A model file's network on a device, in a precision, ready for batches of model input."""

    model: torch.nn.Module  # takes and returns fp32 tensors
    info: ModelFile  # what the model file says (its weights are in `model`, not here)
    device: torch.device
    precision: RunPrecision
    channels_last: bool
    runtime: str = "pytorch"  # or, for an .onnx, onnxruntime or openvino
    # fastai's U-Net keeps each call's skip features in hooks shared by all calls
    # (UnetBlock.forward reads hook.stored): two threads in one model mix their images. One
    # call at a time per network; the lock is shared by the flip-TTA copy of it.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def scores(self, xb: torch.Tensor) -> torch.Tensor:
        """fp32 class scores (N, classes, H, W) at the model's size for a batch of model input."""
        xb = xb.to(self.device)
        if self.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with self.lock, torch.inference_mode():
            scores = self.model(xb).float()
        if not bool(torch.isfinite(scores).all()):  # 5.5 ms (32 classes, 360x480): not class 0s
            raise CamsegError(
                f"{self.info.path}: the network gave NaN or infinite scores, so its masks would "
                "be meaningless; the model file may be damaged (or try --precision fp32)"
            )
        return scores

    def with_flip_tta(self) -> Network:
        """The same network, scoring each batch as the mean of it and its mirror image."""
        return dataclasses.replace(self, model=FlipTTA(self.model))

    def images(self, images: list[Image.Image]) -> torch.Tensor:
        """Class scores for RGB images of any size (resized to the model's, as in training)."""
        return self.scores(torch.stack([to_model_input(im, self.info) for im in images]))


def read_model(path: Path) -> ModelFile:
    """What a run folder / model.pth / checkpoint, or an exported .onnx, says about its model."""
    return read_onnx_file(path) if is_onnx(path) else read_model_file(model_file(path))


def load_network(
    source: Path | ModelFile,
    *,
    device: str = "auto",
    precision: str = "auto",
    policy: InferencePolicy = "predict",
    tta: bool = False,
    exact: bool = False,
    tune_process: bool = False,
    runtime: str = "auto",
) -> Network:
    """Load a run folder / model.pth / checkpoint / model.onnx (or a ModelFile read already)
    for inference; a model.onnx runs in its graph's precision on `runtime`: auto (OpenVINO when
    installed, else ONNX Runtime; camseg.infer.onnx_runtime.pick_runtime), onnxruntime or
    openvino. A model.pth runs on PyTorch (`runtime` auto).

    `precision`: one of `policy`'s choices: auto (predict: the fastest the device runs well),
    train (evaluate: what training validated in) or fp32 / fp16 / bf16; see camseg.core.precision.
    By default the network runs in NHWC (channels-last: oneDNN and cuDNN both run these
    convolutions faster, 1.5x on a CPU) with its BatchNorms folded into the convolutions
    (camseg.infer.fold), which changes float rounding only. `exact` keeps the layers and layout
    training validated with: evaluate uses it to reproduce the training table's numbers on a
    CPU to the last pixel.
    `tune_process`: apply camseg's process-wide settings for inference first (`tune_process`);
    the CLI's commands do, a library call leaves the process as it is unless asked.
    """
    mf = source if isinstance(source, ModelFile) else read_model(source)
    if runtime_for(mf, runtime) != "pytorch":
        chosen = onnx_precision(precision, mf.precision, policy, mf.int8_agreement is not None)
        module = onnx_module(mf, device, runtime)
        net = Network(module, mf, torch.device("cpu"), chosen, False, runtime=module.runtime)
        return net.with_flip_tta() if tta else net
    dev = resolve_device(device, "--device")
    chosen = inference_precision(precision, mf.precision, dev, policy)
    if tune_process:
        tune_process_for(dev)
    model = mf.build().to(dev).eval()
    if not exact:
        fold_for_inference(model)
        model = model.to(memory_format=torch.channels_last)
    info = dataclasses.replace(mf, state_dict={})  # the model holds the weights now
    net = Network(chosen.apply(model, dev), info, dev, chosen, channels_last=not exact)
    return net.with_flip_tta() if tta else net


def runtime_for(mf: ModelFile, runtime: str = "auto") -> str:
    """What runs the model `mf` describes at --runtime `runtime`: pytorch for a model.pth or
    checkpoint (at auto only), else the .onnx's runtime (pick_runtime); an error before any
    work when that cannot be."""
    if is_onnx(mf.path):
        return pick_runtime(mf, runtime)
    if runtime != "auto":
        raise CamsegError(
            f"--runtime {runtime}: runs an exported .onnx model, and {mf.path} is a PyTorch "
            "model file; export one (camseg export, or --int8), give --model FILE.onnx, or "
            "leave --runtime at auto"
        )
    return "pytorch"


def tune_process_for(device: torch.device) -> None:
    """The process-wide settings camseg's commands run inference with. On CUDA, cuDNN times its
    kernels for each new input shape and keeps the fastest (inference sizes are fixed). On a
    CPU, glibc keeps freed memory for the next pass instead of faulting each pass's activations
    in again (camseg.core.heap). They change the whole process, so the library applies them only
    when asked: `Segmenter(..., tune_process=True)`, `load_network(..., tune_process=True)`."""
    if device.type == "cuda":
        cuda_kernels(deterministic=False)
    else:
        keep_freed_memory()


def class_mask(scores: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Class scores (classes, H, W) at the model's size -> uint8 class indices at h x w: the
    scores are upsampled (bilinear), then the argmax is taken at full resolution; in one piece
    up to ONE_PIECE_BYTES of scores, else in row bands (`mask_in_bands`)."""
    # max's indices follow argmax's rule (the first maximum) and its kernel is faster: 8.6 ms
    # against 12.9 ms for 32 classes at 360x480 on one core
    if (h, w) == tuple(scores.shape[-2:]):
        return scores.max(dim=0).indices.byte()
    n_classes = scores.shape[0]
    if 4 * n_classes * h * w <= ONE_PIECE_BYTES:
        up = F.interpolate(scores[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return up.max(dim=0).indices.byte()
    return mask_in_bands(scores, h, w, rows=max(1, BAND_BYTES // (4 * n_classes * w)))


def mask_in_bands(scores: torch.Tensor, h: int, w: int, rows: int) -> torch.Tensor:
    """`class_mask`, `rows` output rows at a time. Bilinear upsampling is separable:
    F.interpolate widens just the source rows a band needs (each row on its own, so a slice
    gives the same numbers), then each output row blends its two source rows with the weights
    F.interpolate uses for the full height. Every pixel's arithmetic is the same whatever the
    band, so the mask does not depend on `rows`; against one F.interpolate call over the whole
    image the scores differ by float rounding only (that kernel sums in another order, and
    differently again for channels-last input), which can move the argmax only where two
    classes score within about 1e-6 of each other."""
    n_classes, src_h, src_w = scores.shape
    src = scores.float().contiguous()
    top, bottom, w_top, w_bottom = (
        torch.from_numpy(a).to(scores.device) for a in _source_rows(src_h, h)
    )
    mask = torch.empty((h, w), dtype=torch.uint8, device=scores.device)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        s0, s1 = int(top[r0]), int(bottom[r1 - 1]) + 1
        wide = F.interpolate(
            src[:, s0:s1].reshape(1, -1, src_w), size=w, mode="linear", align_corners=False
        ).view(n_classes, s1 - s0, w)
        band = wide.index_select(1, top[r0:r1] - s0).mul_(w_top[r0:r1, None])
        band += wide.index_select(1, bottom[r0:r1] - s0).mul_(w_bottom[r0:r1, None])
        # argmax's rule (the first maximum), but max's kernel: 5x faster over the first dim
        mask[r0:r1] = band.max(dim=0).indices.byte()
    return mask


def _source_rows(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """For each output row of a bilinear resize from n_in to n_out rows (align_corners=False):
    its two source rows and their weights, as ATen computes them: source = scale * (i + 0.5) -
    0.5 in float32 with one rounding (ATen's FMA), clamped to the first and last row."""
    scale = np.float32(n_in) / np.float32(n_out)
    source = np.maximum(scale * (np.arange(n_out) + 0.5) - 0.5, 0).astype(np.float32)
    top = np.minimum(source.astype(np.int64), n_in - 1)
    w_bottom = np.clip(source - top, 0, 1).astype(np.float32)
    bottom = np.minimum(top + 1, n_in - 1)
    return top, bottom, (1 - w_bottom).astype(np.float32), w_bottom
