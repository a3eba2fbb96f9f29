"""The one precision policy of train, evaluate and predict: the names, each verb's default, and
what a name runs as on a device. It decides; training records what it validated in (model.pth),
inference (camseg.infer.network) runs the network through `RunPrecision.apply`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from camseg.config.values import EvaluatePrecision, Precision, PredictPrecision
from camseg.core.device import cpu_has_bf16
from camseg.errors import CamsegError

PRECISIONS: tuple[str, ...] = get_args(Precision)
InferencePolicy = Literal["predict", "evaluate"]
PREDICT_DEFAULT: PredictPrecision = "auto"
EVALUATE_DEFAULT: EvaluatePrecision = "train"


def training_precision(
    fp16: bool | Literal["auto"], bf16: bool | Literal["auto"], device: torch.device
) -> Precision:
    """What train.fp16 / train.bf16 run as: fp16 is fastai's to_fp16 (fp16 autocast, loss
    scaling; auto = on for CUDA unless bf16 is true), bf16 is camseg's BF16Autocast, else fp32.
    bf16 auto is bf16 where the hardware runs it natively (`native_bf16`) and fp16 is not
    chosen: on a CPU without AVX512-BF16 or AMX, emulated bf16 trains 3-5x slower than fp32."""
    use_fp16 = (device.type == "cuda" and bf16 is not True) if fp16 == "auto" else fp16
    if use_fp16:
        if device.type != "cuda":
            raise CamsegError("train.fp16=true needs a CUDA device; set train.fp16=auto or false")
        return "fp16"
    if bf16 == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return "bf16" if bf16 else "fp32"


def native_bf16(device: torch.device) -> bool:
    """bfloat16 arithmetic in hardware: a CUDA GPU that supports it (Ampere or newer), a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def emulated_bf16(precision: Precision, device: torch.device) -> bool:
    """bf16 on a CPU without native bf16: emulated, several times slower than fp32."""
    return precision == "bf16" and device.type == "cpu" and not native_bf16(device)


@dataclass(frozen=True)
class TrainingPrecision:
    """What a run trains in on its device, decided once (camseg.train.plan), and why."""

    name: Precision  # what training batches run in
    reason: str = ""  # why, for the device line; empty when the config asked for it by name
    recorded: bool = False  # taken back from the run's plan.json on resume, not derived here

    @property
    def validation(self) -> Literal["fp16", "fp32"]:
        """What the training table's validation ran in, for model.pth to record: fastai's
        MixedPrecision autocasts validation batches too, BF16Autocast only training batches."""
        return "fp16" if self.name == "fp16" else "fp32"


def resolve_training_precision(
    fp16: bool | Literal["auto"], bf16: bool | Literal["auto"], device: torch.device
) -> TrainingPrecision:
    """train.fp16 / train.bf16 on `device`: what they run as and why. A GPU without bfloat16
    asked for it is an error; a CPU without native bf16 asked for it by name runs it emulated."""
    name = training_precision(fp16, bf16, device)
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CamsegError("train.bf16=true: this GPU has no bfloat16; use train.fp16 instead")
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if name == "fp16" and fp16 == "auto":
        reason = "train.fp16 auto: on for CUDA"
    elif bf16 != "auto" or name == "fp16":
        emulated = emulated_bf16(name, device)
        reason = (
            "train.bf16 true, but this CPU has no native bf16: emulated, slower than fp32"
            if emulated
            else ""
        )
    elif name == "bf16":
        reason = f"train.bf16 auto: {where} has native bf16"
    else:
        reason = f"train.bf16 auto: {where} has no native bf16"
    return TrainingPrecision(name, reason)


def _impossible(precision: str, device: torch.device) -> str | None:
    """Why `precision` cannot run on `device`, or None when it can."""
    if precision == "fp16" and device.type != "cuda":
        return f"fp16 (autocast) needs a CUDA device, not {device}"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{device} has no bfloat16"
    return None


def _explicit(choice: str, device: torch.device, choices: tuple[str, ...]) -> RunPrecision:
    if choice not in PRECISIONS:
        raise CamsegError(f"--precision {choice!r}: choose {', '.join(choices)}")
    reason = _impossible(choice, device)
    if reason is not None:
        others = ", ".join(c for c in choices if c != choice)
        raise CamsegError(f"--precision {choice}: {reason}; choose {others}")
    return RunPrecision(choice)  # type: ignore[arg-type]


def inference_precision(
    choice: str, recorded: Precision, device: torch.device, policy: InferencePolicy = "predict"
) -> RunPrecision:
    """What an inference precision choice runs as. `policy` names the verb whose choices apply:
    predict offers auto (the fastest the device runs well), evaluate offers train (what the
    model file says training validated in); both offer fp32, fp16 and bf16.

    auto: fp16 on CUDA; bf16 on a CPU with native bf16 (measured 2.4x faster than fp32 on a
    2-core AVX512-BF16 machine, with the same class on >= 99% of pixels); else fp32.
    train: the recorded precision, so the scores reproduce the training table; fp32 (with a
    note saying why) where that cannot run on this device."""
    choices = get_args(PredictPrecision if policy == "predict" else EvaluatePrecision)
    if choice == "auto" and policy == "predict":
        if device.type == "cuda":
            return RunPrecision("fp16")
        return RunPrecision("bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32")
    if choice == "train" and policy == "evaluate":
        reason = _impossible(recorded, device)
        if reason is None:
            return RunPrecision(recorded)
        return RunPrecision(
            "fp32", f"training validated in {recorded}, but {reason}: scored in fp32 instead"
        )
    return _explicit(choice, device, choices)


def predict_precision(choice: str, device: torch.device) -> RunPrecision:
    """`inference_precision` with predict's choices."""
    return inference_precision(choice, "fp32", device, "predict")


def evaluate_precision(choice: str, recorded: Precision, device: torch.device) -> RunPrecision:
    """`inference_precision` with evaluate's choices."""
    return inference_precision(choice, recorded, device, "evaluate")


@dataclass(frozen=True)
class RunPrecision:
    """A precision chosen for a device, and why it differs from the one asked for (if it does)."""

    name: Precision | Literal["int8"]  # int8: an int8 .onnx file (camseg export --int8)
    note: str | None = None

    def apply(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model running in this precision, taking and returning fp32 tensors."""
        if self.name == "int8":
            raise ValueError("int8 is a quantized .onnx file's, not a PyTorch precision")
        return _InPrecision(model, self.name, device.type)


class _InPrecision(nn.Module):
    # fp16 has a narrow range, so it runs under autocast (BatchNorm and softmax stay fp32), as
    # fastai's to_fp16 does. bf16 has fp32's range, so the whole network holds bf16 weights:
    # 1.3x faster on a CPU than bf16 autocast, which re-casts every weight for every batch.
    def __init__(self, model: nn.Module, precision: Precision, device_type: str) -> None:
        super().__init__()
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = model.to(self.dtype)
        self.fp16 = precision == "fp16"
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = (
            torch.autocast(self.device_type, dtype=torch.float16)
            if self.fp16
            else contextlib.nullcontext()
        )
        with autocast:
            return self.model(x.to(self.dtype)).float()
