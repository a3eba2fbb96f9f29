"""The device a verb runs on and what that machine offers: CUDA or CPU (this rank's GPU under
torchrun), cuDNN's kernel choice, and whether the CPU does bfloat16 natively. torch only, no fastai,
so running an ONNX model never loads it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from camseg.config.values import DEVICE_PATTERN
from camseg.errors import CamsegError


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; none where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """AMX tiles for bf16 matrix products (Intel Xeon since Sapphire Rapids): the one CPU kind
    measured where PyTorch's bf16 runs the U-Net faster than an int8 export
    (docs/benchmarks.md)."""
    return "amx_bf16" in cpu_flags()
