"""The bad config files and broken datasets of the fault suite, one table each. The library tests
(test_config.py, test_data.py) and the CLI tests (test_faults.py) run every case, so a message the
library gives is the line a user sees."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# ---- config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigFault:
    """A config file (`text`; None: no file at all) and `--set` items that `load_config` and
    `camseg train --config FILE` refuse with one line containing every needle."""

    name: str
    text: str | None
    needles: tuple[str, ...]
    overrides: tuple[str, ...] = ()

    def write(self, folder: Path) -> Path:
        path = folder / "bad.yaml"
        if self.text is not None:
            path.write_text(self.text)
        return path


def _lr_set(lr: str) -> ConfigFault:
    return ConfigFault(
        f"--set lr={lr}",
        "data: {}\n",
        (f"train.stages[0].lr = '{lr}' is not valid",),
        (f"train.stages[0].lr={lr}",),
    )


# Eight levels of nine aliases each: 43 million items if anything expanded it.
ALIAS_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    for prev, name in zip("abcdefg", "bcdefgh", strict=True)
)

CONFIG_FAULTS = [
    ConfigFault(
        "unknown key",
        "data:\n  batchsize: 3\n",
        ("unknown key data.batchsize; did you mean data.batch_size?",),
    ),
    ConfigFault("unknown section", "trian:\n  wd: 1\n", ("did you mean train?",)),
    ConfigFault(
        "a bad --set is named as the source",
        "data:\n  batch_size: 4\n",
        ("--set data.batch_size: data.batch_size = 0 is not valid",),
        ("train.wd=0.1", "data.batch_size=0"),
    ),
    ConfigFault(
        "a rule across a section's keys, without the section's dump",
        "train:\n  fp16: true\n  bf16: true\n",
        (": train: fp16 and bf16 are both true: choose one mixed precision",),
    ),
    ConfigFault("a size smaller than 32 written HxW", "data:\n  size: 16x128\n", ("at least 32",)),
    ConfigFault("wrong type", "data:\n  batch_size: many\n", ("data.batch_size = 'many'",)),
    ConfigFault("negative batch size", "data:\n  batch_size: -1\n", ("data.batch_size = -1",)),
    ConfigFault(
        "zero epochs", "train:\n  stages:\n  - epochs: 0\n", ("train.stages[0].epochs = 0",)
    ),
    ConfigFault(
        "negative epochs", "train:\n  stages:\n  - epochs: -1\n", ("train.stages[0].epochs = -1",)
    ),
    ConfigFault(
        "lr pair in the wrong order",
        "train:\n  stages:\n  - lr: [1.0e-3, 1.0e-6]\n",
        ("0 < low <= high",),
    ),
    ConfigFault(
        "slice in the wrong order",
        "train:\n  stages:\n  - lr: slice(1.0e-3, 1.0e-6)\n",
        ("0 < low <= high",),
    ),
    ConfigFault(
        "slice of a word", "train:\n  stages:\n  - lr: slice(fast)\n", ("slice() takes numbers",)
    ),
    ConfigFault(
        "lr a word", "train:\n  stages:\n  - lr: fast\n", ("slice(x), slice(low, high), or 'find'",)
    ),
    _lr_set("slice(0)"),
    _lr_set("slice(1e-3, 1e-5)"),
    _lr_set("slice(x)"),
    _lr_set("slice()"),
    ConfigFault(
        "lr of infinity",
        "data: {}\n",
        ("train.stages[0].lr = inf", "finite positive number"),
        ("train.stages[0].lr=.inf",),
    ),
    ConfigFault(
        "slice up to infinity",
        "train:\n  stages:\n  - {}\n  - {}\n",
        ("train.stages[1].lr", "0 < low <= high < inf"),
        ("train.stages[1].lr=slice(1e-6, inf)",),
    ),
    ConfigFault("no stages", "train:\n  stages: []\n", ("at least one stage",)),
    ConfigFault(
        "momentum out of range",
        "data: {}\n",
        ("train.moms = [2, -1, 5]", "each momentum must be in [0, 1)"),
        ("train.moms=[2,-1,5]",),
    ),
    ConfigFault(
        "weight decay of infinity", "data: {}\n", ("train.wd = inf", "finite"), ("train.wd=.inf",)
    ),
    ConfigFault("unknown device", "train:\n  device: gpu\n", ("train.device = 'gpu'",)),
    ConfigFault(
        "bf16 neither a switch nor auto", "train:\n  bf16: often\n", ("train.bf16 = 'often'",)
    ),
    ConfigFault(
        "keep_checkpoints not a switch",
        "train:\n  keep_checkpoints: maybe\n",
        ("train.keep_checkpoints = 'maybe'",),
    ),
    ConfigFault(
        "unknown layout",
        "data:\n  layout: voc\n",
        ("'camvid', 'camseq01', 'synthetic' or 'folders'",),
    ),
    ConfigFault(
        "unknown arch", "model:\n  arch: resnet9\n", ("'resnet18', 'resnet34' or 'resnet50'",)
    ),
    ConfigFault("size too small", "data:\n  size: [10, 20]\n", ("at least 32 pixels",)),
    ConfigFault(
        "unknown loss",
        "train:\n  loss:\n    name: bce\n",
        ("train.loss.name = 'bce'", "'ce', 'focal', 'dice', 'ce_dice', 'lovasz' or 'ce_lovasz'"),
    ),
    ConfigFault(
        "negative focal gamma",
        "data: {}\n",
        ("train.loss.gamma = -1", "greater than or equal to 0"),
        ("train.loss.gamma=-1",),
    ),
    ConfigFault(
        "Dice smoothing of zero",
        "train:\n  loss:\n    smooth: 0\n",
        ("train.loss.smooth = 0", "greater than 0"),
    ),
    ConfigFault(
        "negative Lovász weight",
        "train:\n  loss:\n    name: ce_lovasz\n    lovasz_weight: -1\n",
        ("train.loss.lovasz_weight = -1", "greater than 0"),
    ),
    ConfigFault(
        "unknown Lovász class set",
        "train:\n  loss:\n    name: ce_lovasz\n    lovasz_classes: some\n",
        ("train.loss.lovasz_classes = 'some'", "'present' or 'all'"),
    ),
    ConfigFault(
        "absent-class Lovász weight above 1",
        "train:\n  loss:\n    name: ce_lovasz\n    lovasz_absent_weight: 2\n",
        ("train.loss.lovasz_absent_weight = 2", "less than or equal to 1"),
    ),
    ConfigFault(
        "unknown class weighting",
        "data: {}\n",
        ("train.class_weights = 'inverse'", "none, median_frequency or a table"),
        ("train.class_weights=inverse",),
    ),
    ConfigFault(
        "class weight of zero",
        "train:\n  class_weights:\n    Car: 0\n",
        ("train.class_weights", "the weight of Car must be a number > 0"),
    ),
    ConfigFault(
        "EMA decay of 1 (the average would never move)",
        "train:\n  ema: true\n  ema_decay: 1.0\n",
        ("train.ema_decay = 1.0", "less than 1"),
    ),
    ConfigFault(
        "tensorboard not a boolean",
        "train:\n  tensorboard: often\n",
        ("train.tensorboard = 'often'",),
    ),
    ConfigFault(
        "--set of a misspelt key",
        "data: {}\n",
        ("did you mean train.stages[0].lr?",),
        ("train.stages[0].lrr=1",),
    ),
    ConfigFault(
        "--set of a stage that does not exist",
        "data: {}\n",
        ("index [5] does not exist",),
        ("train.stages[5].lr=1",),
    ),
    ConfigFault("--set without =", "data: {}\n", ("expected key=value",), ("nokey",)),
    ConfigFault(
        "--set two levels into a number",
        "data:\n  batch_size: 4\n",
        ("--set data.batch_size.x.y", "data.batch_size is not a section"),
        ("data.batch_size.x.y=1",),
    ),
    ConfigFault(
        "~ of a user that does not exist",
        "data: {}\n",
        ("data.root = '~no-such-user-camseg/camvid': cannot expand ~", "full path"),
        ("data.root=~no-such-user-camseg/camvid",),
    ),
    ConfigFault(
        "YAML syntax error",
        "data:\n  size: [96, 128\n  batch_size: 4\n",
        ("bad.yaml:3: YAML syntax error",),
    ),
    ConfigFault("empty file", "", ("config file is empty",)),
    ConfigFault("a list, not a mapping", "- 1\n- 2\n", ("expected a mapping",)),
    ConfigFault(
        "python object tag",
        "data: !!python/object/apply:os.system ['touch PWNED']\n",
        ("YAML tag refused",),
    ),
    ConfigFault("file not found", None, ("config file not found: ",)),
    ConfigFault(
        "data.ignore_index outside 0-255",
        "data:\n  ignore_index: 256\n",
        ("data.ignore_index = 256", "less than or equal to 255"),
    ),
    ConfigFault(
        "a seed beyond 32 bits",
        "train:\n  seed: 100000000000000000000000000\n",
        ("train.seed = 100000000000000000000000000", "less than or equal to 4294967295"),
    ),
    ConfigFault(
        "a class weight of 1e308",
        "train:\n  class_weights: {Car: 1.0e+308}\n",
        ("the weight of Car must be a number > 0 and at most 1e+06",),
    ),
    ConfigFault(
        "a size beyond 8192", "data:\n  size: [100000, 100000]\n", ("at most 8192 pixels",)
    ),
    ConfigFault(
        "a YAML alias bomb (9^8 items) is never expanded in the message",
        ALIAS_BOMB + "data:\n  size: [*h, *h]\n",
        ("data.size = [[[[...], [...]", "is not valid"),
    ),
]


# ---- datasets ----------------------------------------------------------------------------

STEM = "0001TP_006750"  # a training frame of camvid_tiny


def _image(root: Path) -> Path:
    return root / "images" / f"{STEM}.png"


def _label(root: Path) -> Path:
    return root / "labels" / f"{STEM}_P.png"


def _remove_root(root: Path) -> None:
    shutil.rmtree(root)


def _remove_images(root: Path) -> None:
    for p in (root / "images").iterdir():
        p.unlink()


def _remove_label(root: Path) -> None:
    _label(root).unlink()


def _remove_image(root: Path) -> None:
    _image(root).unlink()


def _shrink_label(root: Path) -> None:
    Image.open(_label(root)).resize((64, 48), Image.NEAREST).save(_label(root))


def _label_value_40(root: Path) -> None:
    arr = np.array(Image.open(_label(root)))
    arr[0, 0] = 40
    Image.fromarray(arr).save(_label(root))


def _duplicate_road(root: Path) -> None:
    codes = root / "codes.txt"
    codes.write_text(codes.read_text().replace("Wall", "Road"))


def _empty_valid(root: Path) -> None:
    (root / "valid.txt").write_text("")


def _valid_names_a_ghost(root: Path) -> None:
    valid = root / "valid.txt"
    valid.write_text(valid.read_text() + "ghost.png\n")


def _valid_is_every_image(root: Path) -> None:
    (root / "valid.txt").write_text("\n".join(p.name for p in (root / "images").iterdir()))


def _truncate_image(root: Path) -> None:
    _image(root).write_bytes(_image(root).read_bytes()[:300])


def _label_16bit(root: Path) -> None:
    Image.fromarray(np.array(Image.open(_label(root))).astype(np.uint16)).save(_label(root))


def _label_palette(root: Path) -> None:
    Image.open(_label(root)).convert("P").save(_label(root))


def _camseq01_unknown_colour(root: Path) -> None:
    (root / "valid.txt").write_text("0016E5_07997.png\n")
    label = root / "CamSeq01_Labeled" / "0016E5_07995_L.png"
    arr = np.array(Image.open(label))
    arr[5:9, 5:9] = (7, 7, 7)
    Image.fromarray(arr).save(label)


@dataclass(frozen=True)
class DataFault:
    """A fault `inject`ed into a writable copy of `source` (a fixture name: camvid_tiny or
    camseq01_sample). `find_files` refuses the folder (`refused`) or `check_dataset` lists the
    problem; `camseg train` stops with one line. Both name `needle`."""

    name: str
    inject: Callable[[Path], None]
    needle: str
    refused: bool = False
    source: str = "camvid_tiny"

    @property
    def layout(self) -> str:
        return "camseq01" if self.source == "camseq01_sample" else "camvid"


DATA_FAULTS = [
    DataFault("root missing", _remove_root, "dataset folder not found", refused=True),
    DataFault("no images", _remove_images, "no images found"),
    DataFault("image without label", _remove_label, f"{STEM}.png: no label"),
    DataFault("label without image", _remove_image, f"{STEM}_P.png: label without an image"),
    DataFault("label size differs", _shrink_label, f"{STEM}_P.png: size 64x48 differs"),
    DataFault(
        "label value neither a class nor the ignore value",
        _label_value_40,
        "label values 40 (1 px) are neither a class (0-31) nor data.ignore_index (30)",
    ),
    DataFault("duplicate codes", _duplicate_road, "duplicate class names Road", refused=True),
    DataFault("valid.txt empty", _empty_valid, "validation list is empty"),
    DataFault(
        "valid.txt names missing files",
        _valid_names_a_ghost,
        "names not among the images: ghost.png",
    ),
    DataFault("valid.txt covers every image", _valid_is_every_image, "leaving no training set"),
    DataFault("truncated PNG", _truncate_image, f"{STEM}.png: unreadable image"),
    DataFault("16-bit label", _label_16bit, f"{STEM}_P.png: label must be 8-bit"),
    DataFault("palette label", _label_palette, f"{STEM}_P.png: palette-mode label"),
    DataFault(
        "unknown colour in a CamSeq01 label",
        _camseq01_unknown_colour,
        "0016E5_07995_L.png: colours not in label_colors.txt: RGB(7, 7, 7) (16 px)",
        source="camseq01_sample",
    ),
]


def broken_copy(case: DataFault, source: Path, dst: Path) -> Path:
    """A copy of `source` at `dst` with the case's fault in it."""
    shutil.copytree(source, dst)
    case.inject(dst)
    return dst


def paint_unknown_colour(camseq01: Path) -> str:
    """Paint a colour that label_colors.txt lacks into 100 pixels of a CamSeq01 colour label:
    what `data prepare` refuses unless told `--unknown-as`. Returns what the refusal names."""
    label = camseq01 / "CamSeq01_Labeled" / "0016E5_07979_L.png"
    arr = np.array(Image.open(label))
    arr[:10, :10] = (1, 2, 3)
    Image.fromarray(arr).save(label)
    return "0016E5_07979_L.png: colour RGB(1, 2, 3) (100 px)"
