"""An exported model.onnx run on the CPU by ONNX Runtime (its CPU provider) or OpenVINO, as the
module of camseg.infer.network's `Network` (the facade builds the Network; this backend never
does). The file's contract and metadata are camseg.model.onnx_file's. No fastai.

Which runtime (`pick_runtime`): the one asked for, or at auto the first installed of
onnx_file.RUNTIMES, OpenVINO before ONNX Runtime: on a Zen 4 it ran camseg's int8 file 1.5x as
fast and the fp32 file 1.1x (docs/benchmarks.md). For an int8 file, auto takes the first whose
agreement with fp32 the export measured at INT8_AGREEMENT or more."""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import numpy as np
import torch

from camseg.config.values import EvaluatePrecision, Precision, PredictPrecision
from camseg.core.precision import InferencePolicy, RunPrecision
from camseg.errors import CamsegError, first_line, require_extra
from camseg.model.files import ModelFile
from camseg.model.onnx_file import (
    INPUT,
    INT8_AGREEMENT,
    RUNTIMES,
    installed,
    load_graph,
    require_runtime,
)

NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


def pick_runtime(info: ModelFile, runtime: str = "auto") -> str:
    """The runtime that runs the .onnx `info` describes: `runtime` itself (an error naming its
    extra when it is not installed), or at auto the first installed of RUNTIMES; for an int8
    file the first whose recorded agreement reaches INT8_AGREEMENT, else the first that has one
    recorded."""
    if runtime != "auto":
        if runtime not in RUNTIMES:
            raise CamsegError(f"--runtime {runtime!r}: choose auto, {', '.join(RUNTIMES)}")
        require_extra(runtime, extra=EXTRAS[runtime], what=f"--runtime {runtime}")
        return runtime
    require_runtime()
    have = [name for name in RUNTIMES if installed(name)]
    measured = info.int8_agreement
    if measured is not None:
        agreeing = [name for name in have if measured.get(name, 0.0) >= INT8_AGREEMENT]
        return (agreeing or [name for name in have if name in measured] or have)[0]
    return have[0]


class OnnxModule(torch.nn.Module):
    """An ONNX Runtime session or an OpenVINO compiled model as a module: model input in, fp32
    class scores out, on the input's device, as `Network` expects of its module."""

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], size: tuple[int, int], runtime: str
    ) -> None:
        super().__init__()
        self.run = run  # (N, 3, H, W) float32 -> (N, classes, H, W) scores
        self.size = size
        self.runtime = runtime

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            h, w = self.size
            raise CamsegError(
                f"an ONNX model runs at the size it was exported at, {h}x{w}, not "
                f"{x.shape[-2]}x{x.shape[-1]}; use the model.pth for other sizes"
            )
        xb = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(np.asarray(self.run(xb), dtype=np.float32)).to(x.device)


def onnx_module(info: ModelFile, device: str = "auto", runtime: str = "auto") -> OnnxModule:
    """An exported file loaded on the CPU by `pick_runtime(info, runtime)`, its inputs and
    outputs checked against the metadata. `device` auto or cpu."""
    if device not in ("auto", "cpu"):
        raise CamsegError(
            f"--device {device}: an ONNX model runs on the CPU here (ONNX Runtime's or "
            "OpenVINO's CPU runtime); use --device cpu or auto, or the model.pth for a GPU"
        )
    name = pick_runtime(info, runtime)
    try:
        run, inputs, channels = load_graph(info.path, name)
    except Exception as e:
        raise CamsegError(f"{info.path}: {NAMES[name]} cannot load it: {first_line(e)}") from None
    if [n for n, _ in inputs] != [INPUT] or list(inputs[0][1][1:]) != [3, *info.size]:
        raise CamsegError(
            f"{info.path}: the graph takes {inputs}, not '{INPUT}' (N, 3, {info.size[0]}, "
            f"{info.size[1]}) as its metadata says; re-export it with camseg export"
        )
    if channels != len(info.codes):
        raise CamsegError(
            f"{info.path}: the graph gives {channels or '?'} class scores a pixel but its "
            f"metadata lists {len(info.codes)} classes; re-export it with camseg export"
        )
    return OnnxModule(run, info.size, name)


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
