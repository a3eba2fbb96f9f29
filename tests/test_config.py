"""Config loading, --set overrides, presets and every kind of config error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fault_cases import CONFIG_FAULTS

from camseg.config.load import dump_config, load_config, validate_config
from camseg.config.schema import Config
from camseg.config.values import LrSlice
from camseg.errors import CamsegError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_file_and_overrides(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 4\n  root: some/data\ntrain:\n  wd: 1.0e-2\n")
    cfg = load_config(path, ["train.stages[0].lr=[1e-6, 1e-4]", "data.size=[96, 128]"])
    assert cfg.data.batch_size == 4
    assert cfg.train.wd == pytest.approx(0.01)
    assert cfg.train.stages[0].lr == LrSlice(start=1e-6, stop=1e-4)
    assert cfg.data.size == (96, 128)
    # paths written in a config file are relative to that file's folder
    assert cfg.data.root == tmp_path / "some" / "data"
    assert cfg.model.arch == "resnet34"  # untouched default


def test_override_dotted_index_form_and_yaml_values(tmp_path):
    cfg = load_config(None, ["train.stages.0.lr=find", "train.fp16=false", "model.weights=w.pth"])
    assert cfg.train.stages[0].lr == "find"
    assert cfg.train.fp16 is False
    assert cfg.model.weights == Path("w.pth")


def test_a_size_can_be_written_hxw_as_on_the_command_line(tmp_path):
    path = write(tmp_path, "data:\n  size: 96x128\n")
    assert load_config(path).data.size == (96, 128)
    assert load_config(None, ["data.size=360x480"]).data.size == (360, 480)
    assert load_config(None, ["data.synthetic.size=64,96"]).data.synthetic.size == (64, 96)
    assert load_config(None, ["data.size=0.5"]).data.size == 0.5  # a scale stays a scale


def test_a_bad_value_in_the_file_names_the_file_whatever_else_is_set(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: 0\n")
    with pytest.raises(CamsegError) as exc:
        load_config(path, ["train.wd=0.1", "data.size=[64, 96]"])
    assert str(exc.value).startswith(f"{path}: data.batch_size = 0 is not valid")
    with pytest.raises(CamsegError) as exc:
        load_config(path, ["data={batch_size: 0}"])  # a --set that replaces the whole section
    assert str(exc.value).startswith("--set data: data.batch_size = 0")
    both = write(tmp_path, "train:\n  fp16: true\n  bf16: true\n")
    for unrelated in ("train.wd=0.1", "train.stages.0.epochs=2"):  # the rule is the file's
        with pytest.raises(CamsegError) as exc:
            load_config(both, [unrelated])
        assert str(exc.value).startswith(f"{both}: train: fp16 and bf16 are both true")
    with pytest.raises(CamsegError) as exc:
        load_config(None, ["train.fp16=true", "train.bf16=true"])
    assert str(exc.value) == (
        "--set train.bf16: train: fp16 and bf16 are both true: choose one mixed precision"
    )


@pytest.mark.parametrize("case", CONFIG_FAULTS, ids=lambda case: case.name)
def test_config_faults_are_one_line_naming_the_file_or_key(case, tmp_path):
    path = case.write(tmp_path)
    with pytest.raises(CamsegError) as exc:
        load_config(path, list(case.overrides))
    message = str(exc.value)
    assert "\n" not in message
    for needle in case.needles:
        assert needle in message
    if not case.overrides:  # the fault is in the file: the message says which file
        assert str(path) in message


@pytest.mark.parametrize("preset", ["half", "full", "tiny", "tiny-scratch", "tiny-rare", "demo"])
def test_presets_load_and_differ_from_defaults(preset):
    path = REPO / "configs" / f"{preset}.yaml"
    cfg = load_config(path)
    assert cfg != Config()
    # every value in a preset carries a why-comment
    for line in path.read_text().splitlines():
        stripped = line.strip()
        is_label = stripped.startswith("- name:")
        if (
            stripped
            and not stripped.startswith("#")
            and not stripped.endswith(":")
            and not is_label
        ):
            assert "#" in line, f"{preset}.yaml: value without a why-comment: {line!r}"


def test_half_and_full_presets_match_the_paper():
    """The values the paper states (README, "The paper's recipe"); the rest from the notebook."""
    half = load_config(REPO / "configs" / "half.yaml")
    assert half.model.arch == "resnet34" and half.model.pretrained  # paper: ImageNet ResNet34
    assert half.data.size == 0.5  # "sub-sized by 2"
    assert half.data.batch_size == 8 and half.train.wd == 1e-2  # notebook
    s1, s2 = half.train.stages
    assert (s1.epochs, s1.freeze, s1.lr) == (10, True, LrSlice(stop=1e-3))  # slice(1e-3)
    assert (s2.epochs, s2.freeze, s2.lr) == (10, False, 1e-4)  # "maximum learning rate 1e-4"
    assert (s1.pct_start, s2.pct_start) == (0.9, 0.8)  # notebook
    full = load_config(REPO / "configs" / "full.yaml")
    assert full.data.size == 1.0 and full.data.batch_size == 3
    assert full.model.init_from == Path.cwd() / "runs" / "half"  # a preset: the current folder
    f1, f2 = full.train.stages
    assert (f1.epochs, f1.freeze, f1.lr, f1.pct_start) == (10, True, LrSlice(stop=1e-3), 0.8)
    assert (f2.epochs, f2.freeze, f2.lr) == (10, False, LrSlice(start=1e-6, stop=1e-4))
    assert f2.pct_start == 0.3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("slice(1e-3)", LrSlice(stop=1e-3)),
        ("slice( 1e-6 , 1e-4 )", LrSlice(start=1e-6, stop=1e-4)),
        ("[1e-6, 1e-4]", LrSlice(start=1e-6, stop=1e-4)),
        ("3e-3", 3e-3),
        ("find", "find"),
    ],
)
def test_stage_lr_forms_round_trip_through_the_saved_config(text, expected):
    cfg = load_config(None, [f"train.stages[0].lr={text}"])
    assert cfg.train.stages[0].lr == expected
    # a run folder's config.yaml is read back on resume: the same lr must come out
    assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg
