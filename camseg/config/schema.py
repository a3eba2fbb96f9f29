"""The typed config tree (data, model, train, output): every key, its type, default, check and
description. Defaults live here and only here; preset YAML files hold what differs. The kinds of
value keys take (choices, sizes, bounds, learning rates) are camseg.config.values'; reading a
file and `--set` overrides are camseg.config.load's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from camseg.config.values import (
    DEVICE_PATTERN,
    MAX_CLASS_WEIGHT,
    MAX_SEED,
    MAX_SIDE,
    LearningRate,
    Section,
    Size,
    SizeOrScale,
    as_number,
    learning_rate,
)


class AugConfig(Section):
    enabled: bool = Field(True, description="apply fastai aug_transforms to the training set")
    flip: bool = Field(True, description="random horizontal flips (true/false)")
    max_rotate: float = Field(10.0, ge=0, le=180, description="max rotation in degrees (0-180)")
    max_zoom: float = Field(1.1, ge=1.0, le=4.0, description="max zoom factor (1.0-4.0)")
    max_lighting: float = Field(0.2, ge=0, le=1, description="max brightness/contrast change (0-1)")
    max_warp: float = Field(0.2, ge=0, le=1, description="max perspective warp (0-1)")
    p_affine: float = Field(
        0.75, ge=0, le=1, description="probability of an affine transform (0-1)"
    )
    p_lighting: float = Field(
        0.75, ge=0, le=1, description="probability of a lighting change (0-1)"
    )


class SynthConfig(Section):
    n: int = Field(200, ge=4, description="number of synthetic scenes (>= 4)")
    size: Size = Field((96, 128), description="scene size [H, W] in pixels")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="random seed; the same seed gives the same bytes"
    )
    valid_fraction: float = Field(
        0.2, gt=0, lt=1, description="fraction of scenes (the last ones) put in valid.txt (0-1)"
    )

    @field_validator("size")
    @classmethod
    def _size_positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32:
            raise ValueError("both sides must be at least 32 pixels")
        return v


Layout = Literal["camvid", "camseq01", "synthetic", "folders"]
SplitBy = Literal["valid_file", "folders"]


class DataConfig(Section):
    layout: Layout = Field(
        "camvid",
        description="dataset layout: camvid (images/ + labels/*_P.png), camseq01 (colour "
        "labels *_L.png + label_colors.txt), synthetic (generated into root when missing) or "
        "folders (data.images, data.labels, data.label_suffix, data.split)",
    )
    root: Path = Field(Path("data/camvid"), description="dataset folder (relative to the config)")
    valid_file: str = Field("valid.txt", description="file in root listing validation image names")
    images: str = Field("images", description="layout folders: the images' folder under root")
    labels: str = Field("labels", description="layout folders: the labels' folder under root")
    label_suffix: str = Field(
        "",
        description="layout folders: what follows an image's stem in its label's name, before "
        ".png (_P for CamVid, _gtFine_labelIds for Cityscapes; empty when the names match)",
    )
    split: SplitBy = Field(
        "valid_file",
        description="layout folders: valid_file (data.valid_file lists the validation images) "
        "or folders (train/ and val/ under data.images and data.labels)",
    )
    palette: Path | None = Field(
        None,
        description="colour file, one 'R G B Name' line per class (or 'R G B' lines in class "
        "order); default: CamVid's colours for CamVid's class names, distinct ones for others",
    )
    ignore_index: int | None = Field(
        None,
        ge=0,
        le=255,
        description="the label value that is neither scored nor (outside the classes) trained "
        "on; default: the index of Void when the codes have one, else 255",
    )
    size: SizeOrScale = Field(
        1.0, description="training size: [H, W] in pixels, or a scale of the source size (0-1]"
    )
    batch_size: int = Field(64, ge=1, description="batch size (>= 1); a stage may override it")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes (>= 0) or auto (one per core, max 8)"
    )
    pin_memory: bool | Literal["auto"] = Field(
        "auto", description="pin host memory for faster GPU copies; auto = on for CUDA"
    )
    cache: bool | Path = Field(
        False,
        description="store frames and masks resized to data.size once (.npy) and read those on "
        "later epochs and runs; true = ~/.cache/camseg, or a folder",
    )
    augment: AugConfig = Field(default_factory=AugConfig, description="training augmentation")
    synthetic: SynthConfig = Field(
        default_factory=SynthConfig, description="how the synthetic layout generates its scenes"
    )

    @field_validator("size")
    @classmethod
    def _size_valid(cls, v: tuple[int, int] | float) -> tuple[int, int] | float:
        if isinstance(v, tuple):
            if min(v) < 32:
                raise ValueError("both sides of [H, W] must be at least 32 pixels")
            if max(v) > MAX_SIDE:
                raise ValueError(f"both sides of [H, W] must be at most {MAX_SIDE} pixels")
        elif not 0 < v <= 1:
            raise ValueError("a scale must be in (0, 1]")
        return v

    @field_validator("num_workers")
    @classmethod
    def _workers_valid(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0 or auto")
        return v


class ModelConfig(Section):
    arch: Literal["resnet18", "resnet34", "resnet50"] = Field(
        "resnet34", description="encoder (a torchvision ResNet)"
    )
    pretrained: bool = Field(
        True, description="start the encoder from torchvision ImageNet weights"
    )
    weights: Path | None = Field(
        None, description="local torchvision resnet state-dict file for the encoder (offline use)"
    )
    init_from: Path | None = Field(
        None,
        description="run folder or model file whose weights start this run (same codes); a run "
        "folder gives its last epoch's weights, RUN:best its best epoch's",
    )
    self_attention: bool = Field(False, description="fastai self-attention layer in the decoder")
    blur: bool = Field(
        False, description="fastai blur in the decoder's upsampling (less checkerboard)"
    )
    last_cross: bool = Field(
        True,
        description="fastai's last ResBlock at full resolution; false trains 1.3-2x faster on CPU",
    )


class StageConfig(Section):
    name: str | None = Field(None, description="label for the table and plots (default stage-N)")
    epochs: int = Field(1, ge=1, description="epochs of fit_one_cycle (>= 1)")
    freeze: bool = Field(True, description="train only the decoder (true) or everything (false)")
    lr: LearningRate = 1e-3
    pct_start: float = Field(0.25, gt=0, lt=1, description="fraction of the cycle spent warming up")
    batch_size: int | None = Field(None, ge=1, description="batch size for this stage only")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_valid(cls, v: Any) -> Any:
        return learning_rate(v)


LossName = Literal["ce", "focal", "dice", "ce_dice", "lovasz", "ce_lovasz"]
ClassWeights = Literal["none", "median_frequency"] | dict[str, float]
LovaszClasses = Literal["present", "all"]


class LossConfig(Section):
    name: LossName = Field(
        "ce",
        description="ce (cross-entropy, fastai's default for masks), focal (fastai FocalLossFlat), "
        "dice (fastai DiceLoss), ce_dice (cross-entropy + dice_weight x Dice), lovasz "
        "(Lovász-softmax, a surrogate of 1 - IoU) or ce_lovasz (cross-entropy + lovasz_weight x "
        "Lovász-softmax)",
    )
    gamma: float = Field(
        2.0, ge=0, allow_inf_nan=False, description="focal: focusing parameter (>= 0; 0 is ce)"
    )
    smooth: float = Field(
        1e-6, gt=0, allow_inf_nan=False, description="dice, ce_dice: Dice smoothing term (> 0)"
    )
    dice_weight: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="ce_dice: weight of the Dice term (> 0)"
    )
    lovasz_weight: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="ce_lovasz: weight of the Lovász term (> 0)"
    )
    lovasz_classes: LovaszClasses = Field(
        "present",
        description="lovasz, ce_lovasz: average over the classes labelled in the batch (present) "
        "or over every class but the ignored one (all: an absent class adds its largest "
        "predicted probability)",
    )
    lovasz_absent_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="lovasz_classes all: the weight in the mean of each class absent from the "
        "batch, against 1 for a labelled class (0-1; 0 is present's mean)",
    )
    ignore_void: bool = Field(
        False,
        description="pixels of the ignored class (data.ignore_index when it is a class: CamVid's "
        "Void) add nothing to the loss (false: it is a class to learn, as in fastai); an ignore "
        "value outside the classes (255) is never trained on",
    )


class TrainConfig(Section):
    stages: list[StageConfig] = Field(
        default_factory=lambda: [StageConfig()], description="stages run in order"
    )
    wd: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="weight decay (finite, >= 0); null keeps fastai's optimizer default (0.01 "
        "for Adam)",
    )
    moms: tuple[float, float, float] = Field(
        (0.95, 0.85, 0.95), description="one-cycle momentum (start, middle, end), each in [0, 1)"
    )
    seed: int = Field(
        42, ge=0, le=MAX_SEED, description="seed set before the DataLoaders are built (0 to 2^32-1)"
    )
    lr_find_iters: int = Field(
        100, ge=30, description="iterations of lr_find for a stage whose lr is find (>= 30)"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    fp16: bool | Literal["auto"] = Field(
        "auto", description="fp16 mixed precision; auto = on for CUDA unless bf16 is true"
    )
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bfloat16 mixed precision (no loss scaling); auto = on where the hardware has "
        "it natively (CPUs with AVX512-BF16 or AMX; Ampere or newer GPUs when fp16 is off), fp32 "
        "elsewhere; true forces it (emulated and slower on other CPUs)",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels_last memory format; auto = on for CUDA"
    )
    deterministic: bool = Field(
        False,
        description="bit-reproducible CUDA runs: cuDNN deterministic kernels, cudnn.benchmark off"
        " (slower); false lets cuDNN pick the fastest kernels",
    )
    compile: bool = Field(
        False,
        description="torch.compile the network on a CUDA GPU (compile time is paid on the first "
        "batches); refused on a CPU, where it fails",
    )
    ema: bool = Field(
        False,
        description="keep an exponential moving average of the weights (updated every optimizer "
        "step); validation, checkpoints and model.pth use it instead of the last weights",
    )
    ema_decay: float = Field(
        0.999,
        gt=0,
        lt=1,
        description="EMA decay per step (0-1); step n uses min(decay, (1+n)/(10+n)), so a short "
        "run still averages its recent weights",
    )
    keep_checkpoints: bool = Field(
        False,
        description="keep checkpoints/last.pth and best.pth with the optimizer state when the "
        "run finishes (false: a finished run keeps model.pth, and the best epoch's weights in "
        "checkpoints/best.pth where it is not the last)",
    )
    tensorboard: bool = Field(
        False,
        description="write TensorBoard event files into RUN/tensorboard: losses, metrics and lr "
        "per epoch, validation predictions (pip install 'camseg[tensorboard]')",
    )
    loss: LossConfig = Field(default_factory=LossConfig, description="the training loss")
    class_weights: ClassWeights = Field(
        "none",
        description="per-class loss weights: none, median_frequency (SegNet's, from the training "
        "labels) or a table {ClassName: weight} (other classes 1)",
    )

    @field_validator("moms")
    @classmethod
    def _moms_valid(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        # Adam's beta1: at 1 its running average never leaves zero and the step is 0/0 (NaN)
        if not all(0 <= m < 1 for m in v):
            raise ValueError("each momentum must be in [0, 1), e.g. [0.95, 0.85, 0.95]")
        return v

    @field_validator("device")
    @classmethod
    def _device_valid(cls, v: str) -> str:
        if not DEVICE_PATTERN.match(v):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return v

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_weights_valid(cls, v: Any) -> Any:
        # checked here so that one message says what is allowed (the union's own errors are two)
        if isinstance(v, dict):
            for name, w in v.items():
                w = as_number(w)
                if not isinstance(w, float) or not 0 < w <= MAX_CLASS_WEIGHT:
                    raise ValueError(
                        f"the weight of {name} must be a number > 0 and at most "
                        f"{MAX_CLASS_WEIGHT:g} (weights are relative to the other classes' 1)"
                    )
            return {str(k): as_number(w) for k, w in v.items()}
        if v not in ("none", "median_frequency"):
            raise ValueError("expected none, median_frequency or a table {ClassName: weight}")
        return v

    @model_validator(mode="after")
    def _has_stages(self) -> TrainConfig:
        if not self.stages:
            raise ValueError("train.stages is empty: give at least one stage")
        if self.bf16 is True and self.fp16 is True:
            raise ValueError("fp16 and bf16 are both true: choose one mixed precision")
        return self


class OutputConfig(Section):
    dir: Path = Field(Path("runs"), description="folder that holds run folders")
    name: str | None = Field(None, description="run name (default: the config file's name)")


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig, description="what to train on")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the recipe")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where runs go")
