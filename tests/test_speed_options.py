"""The speed settings of train: cuDNN's kernel choice (train.deterministic) and torch.compile
(train.compile) reach the process and the learner; inference asks for cuDNN's fastest kernels;
the device line a run prints says where and in what precision it trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from helpers import TINY, fast_args, small_copy

from camseg.config.load import load_config
from camseg.core.device import cuda_kernels
from camseg.core.machine import describe_device
from camseg.train.plan import make_plan
from camseg.train.trainer import Trainer


@pytest.fixture
def cudnn_flags():
    """The process-wide cuDNN flags, restored after the test."""
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def _trainer(root: Path, *sets: str) -> Trainer:
    cfg = load_config(
        TINY,
        [
            f"data.root={root}",
            "data.size=[32,64]",
            "data.batch_size=2",
            "model.arch=resnet18",
            "data.num_workers=0",
            "train.stages=[{epochs: 1}]",
            *sets,
        ],
    )
    return Trainer(make_plan(cfg), progress=False)


def test_cuda_kernels_policy(cudnn_flags):
    cuda_kernels(deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    cuda_kernels(deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [False, True])
def test_train_deterministic_sets_the_kernel_choice(
    camvid_tiny, tmp_path, cudnn_flags, deterministic
):
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=4)
    torch.backends.cudnn.benchmark = deterministic  # the opposite of what the config asks
    torch.backends.cudnn.deterministic = not deterministic
    _trainer(root, f"train.deterministic={str(deterministic).lower()}")
    assert torch.backends.cudnn.benchmark is (not deterministic)
    assert torch.backends.cudnn.deterministic is deterministic


@pytest.mark.slow
def test_train_compile_compiles_the_model_in_place(camvid_tiny, tmp_path):
    """The speed settings of a CUDA run compile the model (no batch runs here, so a CPU learner
    stands in for the GPU's)."""
    from camseg.train.callbacks import apply_speed_settings

    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=4)
    plain = _trainer(root).learn.model
    learn = _trainer(root).learn
    apply_speed_settings(learn, "fp32", torch.device("cuda"), channels_last=False, compile=True)
    compiled = learn.model
    assert getattr(plain, "_compiled_call_impl", None) is None
    assert getattr(compiled, "_compiled_call_impl", None) is not None
    # in place: the weights keep the names checkpoints, model.pth and resume use
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_train_compile_on_a_cpu_is_refused_at_once(camvid_tiny, tmp_path, cli):
    """torch.compile of fastai's U-Net fails in the first epoch on a CPU (a 2,503-line
    RecursionError after 6 minutes, or inductor's BatchNorm error with plain tensors): refused
    before any data is read, in one line."""
    from helpers import one_line_error

    args = fast_args(camvid_tiny, tmp_path / "runs", "train.compile=true", "train.device=cpu")
    one_line_error(cli("train", *args), "train.compile=true: torch.compile of fastai's U-Net")
    assert not (tmp_path / "runs").exists()


def device_line(device: torch.device, cfg) -> str:
    """The device line a run of `cfg` prints on `device`, its precision decided as the plan does."""
    from camseg.core.precision import resolve_training_precision

    precision = resolve_training_precision(cfg.train.fp16, cfg.train.bf16, device)
    return describe_device(device, precision, cfg.train.device)


def test_device_line_says_where_and_in_what_precision(monkeypatch):
    import camseg.core.precision

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(camseg.core.precision, "cpu_has_bf16", lambda: False)
    auto = load_config(TINY, [])
    line = device_line(torch.device("cpu"), auto)
    assert line.startswith(f"training on cpu ({torch.get_num_threads()} threads; torch ")
    assert line.endswith("sees no CUDA GPU), fp32 (train.bf16 auto: this CPU has no native bf16)")
    asked = load_config(TINY, ["train.device=cpu", "train.bf16=true"])
    line = device_line(torch.device("cpu"), asked)
    assert line == (
        f"training on cpu ({torch.get_num_threads()} threads), bf16 autocast (train.bf16 true, "
        "but this CPU has no native bf16: emulated, slower than fp32)"
    )
    monkeypatch.setattr(camseg.core.precision, "cpu_has_bf16", lambda: True)
    line = device_line(torch.device("cpu"), asked)  # asked for and native: no excuse given
    assert line == f"training on cpu ({torch.get_num_threads()} threads), bf16 autocast"
    line = device_line(torch.device("cpu"), load_config(TINY, ["train.device=cpu"]))
    assert line.endswith("bf16 autocast (train.bf16 auto: this CPU has native bf16)")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H200")
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = device_line(torch.device("cuda", 1), auto)  # train.fp16 auto: fp16 on CUDA
    assert line == (
        "training on cuda:1 (NVIDIA H200), fp16 mixed precision (train.fp16 auto: on for CUDA), "
        "2 processes"
    )


@pytest.mark.parametrize("native", [False, True])
def test_tiny_scratch_trains_in_bf16_only_where_the_cpu_has_it(
    camvid_tiny, tmp_path, monkeypatch, native
):
    import camseg.core.precision
    from camseg.train.callbacks import BF16Autocast

    monkeypatch.setattr(camseg.core.precision, "cpu_has_bf16", lambda: native)
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=4)
    cfg = load_config(
        Path("tiny-scratch.yaml"), [f"data.root={root}", "data.num_workers=0", "train.device=cpu"]
    )
    assert cfg.train.bf16 == "auto"  # the preset no longer forces it
    learn = Trainer(make_plan(cfg), progress=False).learn
    assert any(isinstance(cb, BF16Autocast) for cb in learn.cbs) == native


class _CancelAtFirstBatch(Callback):
    order = 70  # after BF16Autocast (10) entered autocast for the batch

    def before_batch(self) -> None:
        raise CancelFitException


def test_a_fit_cancelled_mid_batch_leaves_no_autocast_on(camvid_tiny, tmp_path):
    from camseg.config.schema import StageConfig
    from camseg.train.trainer import fit_stage

    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=4)
    trainer = _trainer(root, "train.bf16=true", "train.device=cpu")
    stage = StageConfig(epochs=1, freeze=True, lr=1e-3)
    fit_stage(trainer.learn, stage, 1e-3, trainer.plan.train, cbs=[_CancelAtFirstBatch()])
    # autocast is thread state: left on, it turned every later fit in the process to bf16
    assert not torch.is_autocast_enabled("cpu")
