"""The typed config tree (data, model, train, output) and `load_config(path, overrides)`.

Defaults live here and only here; preset YAML files hold what differs. Reading YAML, applying
`--set` overrides and turning validation failures into one-line `CamsegError`s also live here.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from camseg.errors import CamsegError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugConfig(_Section):
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


class SynthConfig(_Section):
    n: int = Field(200, ge=4, description="number of synthetic scenes (>= 4)")
    size: tuple[int, int] = Field((96, 128), description="scene size [H, W] in pixels")
    seed: int = Field(0, description="random seed; the same seed gives the same bytes")
    valid_fraction: float = Field(
        0.2, gt=0, lt=1, description="fraction of scenes (the last ones) put in valid.txt (0-1)"
    )

    @field_validator("size")
    @classmethod
    def _size_positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32:
            raise ValueError("both sides must be at least 32 pixels")
        return v


class DataConfig(_Section):
    layout: Literal["camvid", "camseq01", "synthetic"] = Field(
        "camvid",
        description="dataset layout: camvid (images/ + labels/*_P.png), camseq01 (colour "
        "labels *_L.png + label_colors.txt) or synthetic (generated into root when missing)",
    )
    root: Path = Field(Path("data/camvid"), description="dataset folder (relative to the config)")
    valid_file: str = Field("valid.txt", description="file in root listing validation image names")
    size: tuple[int, int] | float = Field(
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
        elif not 0 < v <= 1:
            raise ValueError("a scale must be in (0, 1]")
        return v

    @field_validator("num_workers")
    @classmethod
    def _workers_valid(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0 or auto")
        return v


class ModelConfig(_Section):
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
        None, description="run folder or checkpoint whose weights start this run (same codes)"
    )
    self_attention: bool = Field(False, description="fastai self-attention layer in the decoder")
    blur: bool = Field(
        False, description="fastai blur in the decoder's upsampling (less checkerboard)"
    )
    last_cross: bool = Field(
        True,
        description="fastai's last ResBlock at full resolution; false trains ~2x faster on a CPU",
    )


@dataclass(frozen=True)
class LrSlice:
    """fastai's `slice(stop)` or `slice(start, stop)` as a stage's lr.

    fastai spreads it over the parameter groups (encoder blocks, then the decoder):
    `slice(stop)` gives the last group `stop` and every earlier group `stop / 10`;
    `slice(start, stop)` spaces the groups geometrically from `start` to `stop`. A frozen
    encoder still trains its BatchNorm layers at its group's rate, so this is not the same as a
    plain number, which gives every group the same rate.
    """

    stop: float
    start: float | None = None

    def as_fastai(self) -> slice:
        return slice(self.start, self.stop)

    def __str__(self) -> str:
        if self.start is None:
            return f"slice({self.stop:g})"
        return f"slice({self.start:g}, {self.stop:g})"


_SLICE = re.compile(r"^\s*slice\(\s*([^,()]+?)\s*(?:,\s*([^,()]+?)\s*)?\)\s*$")

LearningRate = Annotated[
    float | Annotated[LrSlice, PlainSerializer(str, return_type=str)] | Literal["find"],
    Field(
        description="max lr: a number (every parameter group), slice(x) (fastai: the last group "
        "x, earlier groups x/10), slice(low, high) or [low, high] (groups spaced from low to "
        "high), or find (run lr_find when the stage starts)"
    ),
]


class StageConfig(_Section):
    name: str | None = Field(None, description="label for the table and plots (default stage-N)")
    epochs: int = Field(1, ge=1, description="epochs of fit_one_cycle (>= 1)")
    freeze: bool = Field(True, description="train only the decoder (true) or everything (false)")
    lr: LearningRate = 1e-3
    pct_start: float = Field(0.25, gt=0, lt=1, description="fraction of the cycle spent warming up")
    batch_size: int | None = Field(None, ge=1, description="batch size for this stage only")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_valid(cls, v: Any) -> Any:
        if v == "find" or isinstance(v, LrSlice):
            return v
        if isinstance(v, str) and (m := _SLICE.match(v)):
            low, high = (_as_number(g) for g in m.groups())
            if m.group(2) is None:
                low, high = None, low
            if not isinstance(high, float) or not (low is None or isinstance(low, float)):
                raise ValueError("slice() takes numbers, e.g. slice(1e-3) or slice(1e-6, 1e-4)")
            return _checked_slice(low, high)
        # YAML 1.1 reads 1e-3 (no dot) as a string; accept it as the number it looks like.
        v = [_as_number(x) for x in v] if isinstance(v, list | tuple) else _as_number(v)
        if isinstance(v, list):
            if len(v) != 2 or not all(isinstance(x, float) for x in v):
                raise ValueError("a pair must be two numbers [low, high]")
            return _checked_slice(*v)
        if isinstance(v, float) and 0 < v < math.inf:
            return v
        raise ValueError("expected a finite positive number, slice(x), slice(low, high), or 'find'")


def _checked_slice(low: float | None, high: float) -> LrSlice:
    if not 0 < high < math.inf or (low is not None and not 0 < low <= high):
        raise ValueError("a slice must be 0 < low <= high < inf, e.g. slice(1e-6, 1e-4)")
    return LrSlice(stop=high, start=low)


def _as_number(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


class TrainConfig(_Section):
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
    seed: int = Field(42, description="seed set before the DataLoaders are built")
    lr_find_iters: int = Field(
        100, ge=30, description="iterations of lr_find for a stage whose lr is find (>= 30)"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    fp16: bool | Literal["auto"] = Field("auto", description="mixed precision; auto = on for CUDA")
    bf16: bool = Field(
        False,
        description="bfloat16 mixed precision instead (no loss scaling): CPUs with AVX512-BF16 or"
        " AMX, Ampere or newer GPUs",
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="channels_last memory format; auto = on for CUDA"
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

    @model_validator(mode="after")
    def _has_stages(self) -> TrainConfig:
        if not self.stages:
            raise ValueError("train.stages is empty: give at least one stage")
        if self.bf16 and self.fp16 is True:
            raise ValueError("fp16 and bf16 are both true: choose one mixed precision")
        return self


class OutputConfig(_Section):
    dir: Path = Field(Path("runs"), description="folder that holds run folders")
    name: str | None = Field(None, description="run name (default: the config file's name)")


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig, description="what to train on")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the network")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the recipe")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where runs go")


# Keys holding paths: values written in a config file are relative to that file's folder.
PATH_KEYS = (
    ("data", "root"),
    ("data", "cache"),
    ("model", "weights"),
    ("model", "init_from"),
    ("output", "dir"),
)


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_description(name: str) -> str:
    """A preset's first comment line: what it is for."""
    first = (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
    return first.lstrip("# ").strip()


def find_config(path: Path) -> Path:
    """What --config names: a file at that path, else a preset shipped with camseg (`half`,
    `half.yaml`, ...), so the presets work from any folder and after a plain pip install."""
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and (PRESETS / f"{name}.yaml").is_file():
        return PRESETS / f"{name}.yaml"
    raise CamsegError(
        f"config file not found: {path}; give a YAML file or a preset: {', '.join(preset_names())}"
    )


def is_preset(path: Path) -> bool:
    return path.resolve().parent == PRESETS.resolve()


def load_config(path: Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults), apply `key=value` overrides, validate.

    Relative paths in a config file are relative to that file's folder, except in a preset,
    where they are relative to the current folder (where data/ and runs/ are, not inside the
    installed package). Paths given in overrides are relative to the current folder.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = find_config(path)
        raw = read_yaml(path)
        source = str(path)
        _resolve_paths(raw, Path.cwd() if is_preset(path) else path.parent)
    for item in overrides:
        _apply_override(raw, item)
    _expand_user(raw)
    return validate_config(raw, source)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping with safe_load; every failure becomes a one-line CamsegError."""
    if not path.is_file():
        raise CamsegError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise CamsegError(
            f"{path}:{line}: YAML tag refused ({e.problem}); config files hold plain data only"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else "?"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CamsegError(f"{path}:{line}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise CamsegError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        raise CamsegError(f"{path}: config file is empty; give at least one section, e.g. data:")
    if not isinstance(data, dict):
        raise CamsegError(f"{path}: expected a mapping of sections (data, model, train, output)")
    return data


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for section, key in PATH_KEYS:
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            p = _expanded(sec[key], f"{section}.{key}")
            sec[key] = str(p if p.is_absolute() else (base.absolute() / p))


def _expand_user(raw: dict[str, Any]) -> None:
    """~ in a path given with --set means the home folder, as it does in a config file."""
    for section, key in PATH_KEYS:
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str):
            sec[key] = str(_expanded(sec[key], f"{section}.{key}"))


def _expanded(text: str, key: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~name of no such user, or no home folder at all
        raise CamsegError(f"{key} = {text!r}: cannot expand ~ here; write the full path") from None


def absolute_paths(cfg: Config) -> Config:
    """The same config with every path absolute (what a run folder stores, so that resuming
    from another working folder reads the same files)."""
    updates: dict[str, dict[str, Path]] = {}
    for section, key in PATH_KEYS:
        value = getattr(getattr(cfg, section), key)
        if isinstance(value, Path) and not value.is_absolute():
            updates.setdefault(section, {})[key] = value.absolute()
    return cfg.model_copy(
        update={s: getattr(cfg, s).model_copy(update=u) for s, u in updates.items()}
    )


_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _parse_key(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for dotted in key.split("."):
        pos = 0
        while pos < len(dotted):
            m = _TOKEN.match(dotted, pos)
            if m is None:
                if dotted[pos:].isdigit():
                    parts.append(int(dotted[pos:]))
                    break
                raise CamsegError(f"--set {key}: cannot read the key; write it as a.b=value")
            parts.append(m.group(1) if m.group(1) else int(m.group(2)))
            pos = m.end()
    if not parts:
        raise CamsegError(f"--set {key}: empty key; write it as a.b=value")
    return parts


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise CamsegError(f"--set {item}: expected key=value, e.g. data.batch_size=4")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise CamsegError(f"--set {key}: cannot parse value {text!r} as YAML") from None
    parts = _parse_key(key.strip())
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise CamsegError(f"--set {key}: index [{part}] does not exist")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise CamsegError(f"--set {key}: {_dotted(parts[:i])} is not a section")
        if part not in node or node[part] is None:
            node[part] = _default_at(parts[: i + 1]) if isinstance(nxt, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise CamsegError(f"--set {key}: index [{last}] does not exist")
    elif not isinstance(node, dict):
        raise CamsegError(f"--set {key}: {_dotted(parts[:-1])} is not a section")
    node[last] = value


def _default_at(parts: list[str | int]) -> Any:
    node: Any = Config().model_dump(mode="json")
    for part in parts:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return node


def _dotted(loc: typing.Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _model_at(loc: typing.Sequence[str | int]) -> tuple[type[BaseModel] | None, int]:
    """Walk the schema along loc; return the innermost model and how many loc parts are real."""
    cls: type[BaseModel] = Config
    used = 0
    for part in loc:
        if isinstance(part, int):
            used += 1
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return cls, used
        used += 1
        sub = _submodel(field.annotation)
        if sub is None:
            return None, used
        cls = sub
    return cls, used


def _submodel(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _field_description(loc: typing.Sequence[str | int]) -> str:
    parent, _ = _model_at(loc[:-1])
    name = loc[-1] if loc else None
    if parent is None or not isinstance(name, str) or name not in parent.model_fields:
        return ""
    field = parent.model_fields[name]
    desc = field.description
    if desc is None:
        for meta in typing.get_args(field.annotation)[1:] if field.annotation else ():
            desc = getattr(meta, "description", None) or desc
    return desc or ""


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw mapping; the first problem becomes a one-line CamsegError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise CamsegError(f"{source}: {_describe(e)}") from None


def _describe(e: ValidationError) -> str:
    errors = e.errors()
    err = errors[0]
    loc = list(err["loc"])
    if err["type"] == "extra_forbidden":
        parent, _ = _model_at(loc[:-1])
        valid = sorted(parent.model_fields) if parent is not None else []
        prefix = _dotted(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        if guess:
            hint = f"did you mean {prefix + '.' if prefix else ''}{guess[0]}?"
        else:
            hint = f"valid keys{' of ' + prefix if prefix else ''}: {', '.join(valid)}"
        return f"unknown key {_dotted(loc)}; {hint}"
    _, used = _model_at(loc)
    loc = loc[:used]
    key = _dotted(loc) or "config"
    same = [x for x in errors if list(x["loc"])[:used] == loc]
    msg = err["msg"].removeprefix("Value error, ")
    if len(same) > 1:
        msg = next(
            (x["msg"].removeprefix("Value error, ") for x in same if x["type"] == "value_error"),
            "not one of the allowed kinds",
        )
    value = err.get("input")
    desc = _field_description(loc)
    shown = "missing" if err["type"] == "missing" else repr(value)
    line = f"{key} = {shown} is not valid: {msg}"
    return f"{line}. Allowed: {desc}" if desc and desc not in line else line


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (what `config show` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
