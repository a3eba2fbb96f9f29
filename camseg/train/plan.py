"""A config and the machine resolved once, before anything is written: the device, the training
precision, channels-last and compile, the dataset's files, the image size, each stage's batch
size and the loss's class weights, as one frozen `Plan`. Everything below takes the values it
uses from it; only this module and train/entry.py see the whole config.

A run records its plan (plan.json, with class_weights.json) before its first batch; a resume
takes the recorded values back instead of deriving them again on a machine that may differ, as
long as the settings they came from are unchanged (a `--set` of one derives that value anew).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastai.torch_core import num_distrib, rank_distrib

from camseg.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from camseg.core.device import resolve_device
from camseg.core.precision import TrainingPrecision, emulated_bf16, resolve_training_precision
from camseg.data import check_dataset, find_files, resolve_size
from camseg.data.cache import cache_root
from camseg.data.layouts import DatasetFiles
from camseg.errors import CamsegError, require_extra
from camseg.train.distributed import init_distributed, rank0_first
from camseg.train.losses import class_weights as class_weights_of
from camseg.train.preflight import check_batch_norm, check_data_folders, check_same_classes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a run (or lr-find) does on this machine, decided once."""

    data: DataConfig
    model: ModelConfig  # a resume's: no download and no init_from (the checkpoint has weights)
    train: TrainConfig
    config: dict[str, Any]  # the whole config as data, which each checkpoint records
    device: torch.device
    precision: TrainingPrecision
    channels_last: bool
    compile: bool
    files: DatasetFiles
    colors: Any  # the classes' colours: model.pth, plots and TensorBoard show these
    n_train: int
    size: tuple[int, int]
    batch_sizes: tuple[int, ...]  # one a stage, at most the training set
    class_weights: list[float] | None
    first_stage: int = 0

    def record(self) -> str:
        """plan.json: the derived values a resume takes back."""
        derived = {
            "device": str(self.device),
            "precision": self.precision.name,
            "precision_reason": self.precision.reason,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "size": list(self.size),
            "batch_sizes": list(self.batch_sizes),
        }
        return json.dumps(derived, indent=2) + "\n"


def make_plan(
    cfg: Config,
    *,
    ckpt: dict | None = None,
    recorded: Recorded | None = None,
    first_stage: int | None = None,
) -> Plan:
    """Resolve `cfg` on this machine. `ckpt`: a resumed run's checkpoint (its stage, classes
    and weights); `recorded`: what the run recorded when it started; `first_stage`: the stage
    lr-find runs (default: the checkpoint's, else 0). Every check a bad input can fail runs
    here, before a run folder exists."""
    recorded = recorded or Recorded()
    device = resolve_device(cfg.train.device)
    if cfg.train.compile and device.type != "cuda":
        # measured with torch 2.14.1 on a CPU: fastai's U-Net fails in dynamo (its TensorBase
        # subclass; with plain tensors, in inductor's BatchNorm) in the first epoch
        raise CamsegError(
            f"train.compile=true: torch.compile of fastai's U-Net fails on {device.type} "
            f"(torch {torch.__version__}), in the first epoch; set train.compile=false"
        )
    if cfg.train.tensorboard:
        require_extra(
            "tensorboard",
            extra="tensorboard",
            what="train.tensorboard=true",
            otherwise="set train.tensorboard=false",
        )
    check_data_folders(cfg.data)
    if num_distrib() > 1:  # torchrun / accelerate: join the process group before rank0_first
        init_distributed(device)
    precision = recorded.precision_on(device) or resolve_training_precision(
        cfg.train.fp16, cfg.train.bf16, device
    )
    if emulated_bf16(precision.name, device):
        why, instead = "train.bf16=true", "train.bf16=auto picks fp32 here"
        if precision.recorded:
            why, instead = (
                "this run started in bf16 (plan.json)",
                "--set train.bf16=false goes on in fp32",
            )
        log.warning(
            "%s on a CPU without native bfloat16: it is emulated, several times slower than "
            "fp32; %s",
            why,
            instead,
        )
    channels_last = cfg.train.channels_last
    if channels_last == "auto":
        channels_last = device.type == "cuda"
    with rank0_first():  # rank 0 generates a synthetic set while the others wait
        files = find_files(cfg.data)
    if ckpt:
        check_same_classes(files.root, files.codes, ckpt)
    report = check_dataset(files)
    report.raise_if_bad()
    n_train = report.n_train
    size = recorded.size or resolve_size(cfg.data.size, files.images[0])
    stages = cfg.train.stages
    if first_stage is None:
        first_stage = ckpt["state"].get("stage", 0) if ckpt else 0
    # each stage's batch size as asked, under the key that asked for it
    asked = [
        (f"train.stages[{i}].batch_size", s.batch_size)
        if s.batch_size
        else ("data.batch_size", cfg.data.batch_size)
        for i, s in enumerate(stages)
    ]
    check_batch_norm(size, dict(asked[first_stage:]), n_train, cfg.data.size)
    if recorded.class_weights is not None and set(recorded.class_weights) == set(files.codes):
        weights: list[float] | None = [float(recorded.class_weights[c]) for c in files.codes]
    else:
        # counts for median_frequency are kept beside data.cache (its default folder when
        # off); rank 0 counts while the others wait, then they read its cache
        with rank0_first():
            weights = class_weights_of(
                cfg.train.class_weights, files, size, cache_root(cfg.data.cache)
            )
    batch_sizes = recorded.batch_sizes or tuple(_capped(bs, n_train) for _, bs in asked)
    model = cfg.model
    if ckpt:  # a resumed run takes its weights from the checkpoint: no download, no init_from
        model = model.model_copy(update={"pretrained": False, "weights": None, "init_from": None})
    return Plan(
        data=cfg.data,
        model=model,
        train=cfg.train,
        config=cfg.model_dump(mode="json"),
        device=device,
        precision=precision,
        channels_last=channels_last,
        compile=cfg.train.compile,
        files=files,
        colors=files.class_colors(),
        n_train=n_train,
        size=size,
        batch_sizes=batch_sizes,
        class_weights=weights,
        first_stage=first_stage,
    )


def _capped(bs: int, n_train: int) -> int:
    """A stage's batch size, at most the training set: fastai drops the last incomplete training
    batch, so a batch larger than the set would train on nothing at all."""
    if bs > n_train and rank_distrib() == 0:
        log.warning(
            "batch size %d is larger than the %d training images; using %d", bs, n_train, n_train
        )
    return min(bs, n_train)


@dataclass(frozen=True)
class Recorded:
    """The values a run recorded at its start that a resume takes back; None where the run
    recorded none (runs of camseg < 0.3) or the setting it came from was changed by --set."""

    device_type: str | None = None
    precision: TrainingPrecision | None = None
    size: tuple[int, int] | None = None
    batch_sizes: tuple[int, ...] | None = None
    class_weights: dict[str, float] | None = None

    def precision_on(self, device: torch.device) -> TrainingPrecision | None:
        """The recorded precision, when the run resumes on the same kind of device."""
        if self.precision is None or device.type != self.device_type:
            return None
        return dataclasses.replace(self.precision, recorded=True)


def read_recorded(plan_file: Path, weights_file: Path, saved: Config, cfg: Config) -> Recorded:
    """What a run recorded (`plan_file`, `weights_file`), kept where `cfg` (the resume's config)
    leaves the settings of `saved` (the run's) that it came from unchanged."""
    weights = None
    if weights_file.is_file() and cfg.train.class_weights == saved.train.class_weights:
        weights = json.loads(weights_file.read_text(encoding="utf-8"))
    if not plan_file.is_file():
        return Recorded(class_weights=weights)
    try:
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        precision = TrainingPrecision(plan["precision"], plan.get("precision_reason", ""))
        device_type = str(plan["device"]).split(":")[0]
        size = (int(plan["size"][0]), int(plan["size"][1]))
        batch_sizes = tuple(int(b) for b in plan["batch_sizes"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        raise CamsegError(
            f"{plan_file}: not the plan this run recorded (damaged?); restore it, or delete it "
            "to derive the plan again from config.yaml"
        ) from None
    same_precision = (cfg.train.fp16, cfg.train.bf16) == (saved.train.fp16, saved.train.bf16)
    same_size = cfg.data.size == saved.data.size
    same_batches = cfg.data.batch_size == saved.data.batch_size and [
        s.batch_size for s in cfg.train.stages
    ] == [s.batch_size for s in saved.train.stages]
    return Recorded(
        device_type=device_type if same_precision else None,
        precision=precision if same_precision else None,
        size=size if same_size else None,
        batch_sizes=batch_sizes if same_batches else None,
        class_weights=weights,
    )
