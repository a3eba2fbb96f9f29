"""The shared precision policy (camseg/core/precision.py), checked without a GPU: a CUDA device is
only a `torch.device("cuda")` here, which the policy reads but never runs on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import camseg.core.precision as precision
from camseg.config.schema import ModelConfig
from camseg.core.precision import (
    TrainingPrecision,
    evaluate_precision,
    predict_precision,
    training_precision,
)
from camseg.errors import CamsegError
from camseg.model.files import model_meta, read_model_file, write_model_file

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("fp16", "bf16", "device", "expected"),
    [
        ("auto", False, CUDA, "fp16"),  # fastai to_fp16 autocasts the validation batches too
        ("auto", True, CUDA, "fp32"),  # BF16Autocast: training batches only
        ("auto", False, CPU, "fp32"),
        (True, False, CUDA, "fp16"),
        (False, False, CUDA, "fp32"),
        (False, True, CPU, "fp32"),
    ],
)
def test_validation_precision_is_what_training_validates_in(fp16, bf16, device, expected):
    assert TrainingPrecision(training_precision(fp16, bf16, device)).validation == expected


def test_training_precision_names_the_mixed_precision_used():
    assert training_precision("auto", False, CUDA) == "fp16"
    assert training_precision("auto", True, CUDA) == "bf16"
    assert training_precision(False, True, CPU) == "bf16"
    assert training_precision("auto", False, CPU) == "fp32"
    with pytest.raises(CamsegError, match=r"train\.fp16=true needs a CUDA device"):
        training_precision(True, False, CPU)


def test_bf16_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert training_precision("auto", "auto", CPU) == "fp32"  # emulated bf16: 3-5x slower
    assert training_precision("auto", True, CPU) == "bf16"  # asked for by name: still honoured
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert training_precision("auto", "auto", CPU) == "bf16"
    assert training_precision("auto", "auto", CUDA) == "fp16"  # the notebook's to_fp16 on CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert training_precision(False, "auto", CUDA) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert training_precision(False, "auto", CUDA) == "bf16"


def test_evaluate_follows_the_recorded_training_precision():
    # A model validated in fp32 (bf16 or fp32 training) is scored in fp32 on CUDA too; before
    # the shared policy, evaluate autocast every CUDA evaluation to fp16.
    assert evaluate_precision("train", "fp32", CUDA).name == "fp32"
    assert evaluate_precision("train", "fp16", CUDA) == precision.RunPrecision("fp16")
    fallback = evaluate_precision("train", "fp16", CPU)
    assert fallback.name == "fp32"
    assert fallback.note is not None and "fp16" in fallback.note and "CUDA" in fallback.note


def test_evaluate_explicit_precisions():
    assert evaluate_precision("fp32", "fp16", CUDA).name == "fp32"
    assert evaluate_precision("bf16", "fp32", CPU) == precision.RunPrecision("bf16")
    with pytest.raises(CamsegError, match=r"--precision fp16: .*CUDA.*choose train, fp32, bf16"):
        evaluate_precision("fp16", "fp32", CPU)
    with pytest.raises(CamsegError, match=r"--precision 'auto': choose train, fp32, fp16, bf16"):
        evaluate_precision("auto", "fp32", CPU)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_predict_auto_is_the_fastest_the_device_has(monkeypatch, native_bf16):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native_bf16)
    assert predict_precision("auto", CUDA).name == "fp16"
    assert predict_precision("auto", CPU).name == ("bf16" if native_bf16 else "fp32")
    assert predict_precision("bf16", CPU).name == "bf16"  # asked for: bf16 even where emulated
    assert predict_precision("fp32", CUDA).name == "fp32"


def test_predict_refuses_what_the_device_cannot_run():
    with pytest.raises(CamsegError, match=r"--precision fp16: .*CUDA.*choose auto, fp32, bf16"):
        predict_precision("fp16", CPU)
    with pytest.raises(CamsegError, match="choose auto, fp32, fp16, bf16"):
        predict_precision("half", CPU)


@pytest.mark.parametrize(
    ("name", "conv_dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_apply_runs_the_network_in_the_precision_and_returns_fp32(name, conv_dtype):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    seen = []
    net[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    y = precision.RunPrecision(name).apply(net, CPU)(torch.randn(2, 3, 8, 8))
    assert seen == [conv_dtype] and y.dtype == torch.float32


def test_model_file_records_the_validation_precision(tmp_path, camvid_tiny):
    codes = (camvid_tiny / "codes.txt").read_text().split()
    cfg = ModelConfig(arch="resnet18", pretrained=False)
    net = nn.Conv2d(3, 3, 1)
    write_model_file(tmp_path / "fp16.pth", net, model_meta(cfg, codes, (64, 96), precision="fp16"))
    assert read_model_file(tmp_path / "fp16.pth").precision == "fp16"

    old = model_meta(cfg, codes, (64, 96))
    assert old["precision"] == "fp32"  # the default until train.py passes one
    del old["precision"]  # a file written before camseg recorded it
    write_model_file(tmp_path / "old.pth", net, old)
    assert read_model_file(tmp_path / "old.pth").precision == "fp32"

    write_model_file(tmp_path / "bad.pth", net, {**old, "precision": "fp8"})
    with pytest.raises(
        CamsegError, match=r"meta\.precision = 'fp8' is not one of fp32, fp16, bf16"
    ):
        read_model_file(tmp_path / "bad.pth")
