"""An exported model.onnx run on ONNX Runtime's CPU provider, as the module of
camseg.infer.network's `Network` (the facade builds the Network; this backend never does). The
file's contract and metadata are camseg.model.onnx_file's. No fastai."""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
import torch

from camseg.config.values import EvaluatePrecision, Precision, PredictPrecision
from camseg.core.precision import InferencePolicy, RunPrecision
from camseg.errors import CamsegError, first_line, require_extra
from camseg.model.files import ModelFile
from camseg.model.onnx_file import INPUT


class OnnxModule(torch.nn.Module):
    """An ONNX Runtime session as a module: model input in, fp32 class scores out, on the input's
    device, as `Network` expects of its module."""

    def __init__(self, session: Any, size: tuple[int, int]) -> None:
        super().__init__()
        self.session = session
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            h, w = self.size
            raise CamsegError(
                f"an ONNX model runs at the size it was exported at, {h}x{w}, not "
                f"{x.shape[-2]}x{x.shape[-1]}; use the model.pth for other sizes"
            )
        xb = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {INPUT: xb})[0]).to(x.device)


def onnx_module(info: ModelFile, device: str = "auto") -> OnnxModule:
    """An ONNX Runtime session on the CPU for an exported file, its inputs and outputs checked
    against the metadata. `device` auto or cpu."""
    if device not in ("auto", "cpu"):
        raise CamsegError(
            f"--device {device}: an ONNX model runs on the CPU here (ONNX Runtime's CPU "
            "provider); use --device cpu or auto, or the model.pth for a GPU"
        )
    ort = require_extra("onnxruntime", extra="onnx", what="running an ONNX model")

    try:
        session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CamsegError(f"{info.path}: ONNX Runtime cannot load it: {first_line(e)}") from None
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT] or list(inputs[0].shape[1:]) != [3, *info.size]:
        found = [(i.name, i.shape) for i in inputs]
        raise CamsegError(
            f"{info.path}: the graph takes {found}, not '{INPUT}' (N, 3, {info.size[0]}, "
            f"{info.size[1]}) as its metadata says; re-export it with camseg export"
        )
    channels = session.get_outputs()[0].shape[1:2]
    if channels != [len(info.codes)]:
        raise CamsegError(
            f"{info.path}: the graph gives {channels[0] if channels else '?'} class scores a "
            f"pixel but its metadata lists {len(info.codes)} classes; re-export it with camseg "
            "export"
        )
    return OnnxModule(session, info.size)


def onnx_precision(
    choice: str, recorded: Precision, policy: InferencePolicy, int8: bool = False
) -> RunPrecision:
    """An ONNX model runs in the graph's own precision, fp32 (or int8 for a quantized export):
    that for every choice that allows it (auto, train, fp32); a note when training validated in
    another precision; an error for fp16 and bf16."""
    choices = get_args(PredictPrecision if policy == "predict" else EvaluatePrecision)
    if choice not in choices:
        raise CamsegError(f"--precision {choice!r}: choose {', '.join(choices)}")
    if choice in ("fp16", "bf16"):
        allowed = "auto or fp32" if policy == "predict" else "train or fp32"
        raise CamsegError(
            f"--precision {choice}: an ONNX model runs in fp32; choose {allowed}, or use the "
            f"model.pth for {choice}"
        )
    if int8:
        note = "--precision fp32: this file is quantized to int8; its model.pth runs in fp32"
        return RunPrecision("int8", note if choice == "fp32" else None)
    if choice == "train" and recorded != "fp32":
        return RunPrecision(
            "fp32", f"training validated in {recorded}, but an ONNX model runs in fp32"
        )
    return RunPrecision("fp32")
