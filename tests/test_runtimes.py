"""Which runtime runs an exported .onnx (camseg.infer.onnx_runtime.pick_runtime): the one asked
for, else the first installed of OpenVINO and ONNX Runtime; for an int8 file the first whose
agreement with fp32, measured at export, reaches INT8_AGREEMENT."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import camseg.infer.onnx_runtime as runtimes
from camseg import CamsegError
from camseg.model.files import ModelFile


def _info(int8: dict[str, float] | None = None) -> ModelFile:
    return ModelFile(
        path=Path("model.onnx"),
        arch="resnet18",
        codes=["Void", "Road"],
        size=(64, 96),
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        self_attention=False,
        blur=False,
        last_cross=True,
        state_dict={},
        int8_agreement=int8,
    )


@pytest.mark.parametrize(
    ("have", "int8", "picked"),
    [
        ({"openvino", "onnxruntime"}, None, "openvino"),
        ({"onnxruntime"}, None, "onnxruntime"),
        ({"openvino"}, None, "openvino"),
        ({"openvino", "onnxruntime"}, {"onnxruntime": 0.995, "openvino": 0.993}, "openvino"),
        ({"openvino", "onnxruntime"}, {"onnxruntime": 0.995, "openvino": 0.95}, "onnxruntime"),
        # exported without OpenVINO installed: its agreement there was never measured
        ({"openvino", "onnxruntime"}, {"onnxruntime": 0.995}, "onnxruntime"),
        # none agrees: the one with a measurement (predict then keeps to the model.pth)
        ({"openvino", "onnxruntime"}, {"onnxruntime": 0.95}, "onnxruntime"),
        ({"openvino"}, {"onnxruntime": 0.995}, "openvino"),
    ],
)
def test_auto_picks_the_fastest_installed_runtime_that_agrees(monkeypatch, have, int8, picked):
    monkeypatch.setattr(runtimes, "installed", lambda name: name in have)
    assert runtimes.pick_runtime(_info(int8)) == picked
    for asked in have:  # asked for by name: that one, agreement or not
        assert runtimes.pick_runtime(_info(int8), asked) == asked


def test_a_runtime_that_is_not_installed_is_named_with_its_extra(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda name: False)
    for name in ("openvino", "onnxruntime"):  # an import of either fails, as if not installed
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(
        CamsegError, match=r"--runtime openvino needs openvino.*'camseg\[openvino\]'"
    ):
        runtimes.pick_runtime(_info(), "openvino")
    with pytest.raises(CamsegError, match=r"camseg\[onnx\]'.*camseg\[openvino\]'"):
        runtimes.pick_runtime(_info())
    with pytest.raises(CamsegError, match="--runtime 'tflite': choose auto, openvino"):
        runtimes.pick_runtime(_info(), "tflite")
