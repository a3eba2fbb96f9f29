"""Fault suite, bad inputs that used to end in a traceback or be taken silently: each gives one
`camseg: error:` line naming the key or file and what to do, exit code 2, and leaves nothing
behind (no run folder, no empty --out, no rewritten run). Bad config values are in the table
of tests/fault_cases.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import fast_args, one_line_error, small_copy

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def small(camvid_tiny: Path, tmp_path_factory) -> Path:
    """Six frames of camvid_tiny (4 train, 2 valid): the data of every case here."""
    return small_copy(camvid_tiny, tmp_path_factory.mktemp("data") / "small", 2, 4)


def _cases(camseq01_sample: Path, small: Path, tmp: Path) -> dict[str, tuple[list, list]]:
    def train(*sets: str) -> list[str]:
        return ["train", *fast_args(small, Path("runs"), *sets)]

    return {
        "size 32x32 with batch size 1": (
            train("data.size=[32,32]", "data.batch_size=1"),
            ["data.size 32x32 with data.batch_size=1", "batch size of 2 or more", "[32, 64]"],
        ),
        "train output.dir is a file": (
            train("output.dir=FILE"),
            ["output.dir", "FILE is a file", "set output.dir to a folder"],
        ),
        "lr-find output.dir under a file": (
            ["lr-find", *fast_args(small, Path("FILE/sub"))],
            ["output.dir FILE/sub cannot be made: FILE is a file", "set output.dir to a folder"],
        ),
        "data.cache is a file": (
            train("data.cache=FILE"),
            ["data.cache", "FILE is a file", "set data.cache to a folder"],
        ),
        "synthetic data.root is a file": (
            train("data.layout=synthetic", "data.root=FILE"),
            ["data.root", "FILE is a file", "generates its scenes into a folder"],
        ),
        "prepare --out is a file": (
            ["data", "prepare", str(camseq01_sample), "--out", "FILE"],
            ["--out FILE is a file", "new folder"],
        ),
        "synth --out is a file": (
            ["data", "synth", "--out", "FILE", "--n", "4"],
            ["--out FILE is a file", "new folder"],
        ),
        "synth --out under a file": (
            ["data", "synth", "--out", "FILE/sub", "--n", "4"],
            ["--out FILE/sub cannot be made: FILE is a file", "new folder"],
        ),
        **{
            f"synth --valid-fraction {v}": (
                [
                    "data",
                    "synth",
                    "--out",
                    "s",
                    "--n",
                    "4",
                    "--size",
                    "32x32",
                    "--valid-fraction",
                    v,
                ],
                [f"--valid-fraction must be between 0 and 1, got {float(v)}"],
            )
            for v in ("1", "5", "0", "-2")
        },
        "check of a synthetic root that does not exist": (
            ["data", "check", "--root", "typo", "--layout", "synthetic"],
            ["data.root typo: no synthetic scenes", "camseg data synth --out typo"],
        ),
        "a missing camseq01 root names its download": (
            train("data.layout=camseq01", "data.root=nowhere/camseq01"),
            [
                f"dataset folder not found: {tmp / 'nowhere' / 'camseq01'}; point data.root",
                f"camseg data download camseq01 --out {tmp / 'nowhere'} (it writes the camvid",
            ],
        ),
        "data check of a missing --root names --root": (
            ["data", "check", "--root", "nowhere/camvid_tiny"],
            ["point --root at your copy", "camseg data download camvid-tiny --out nowhere"],
        ),
        "prepare of a missing folder": (
            ["data", "prepare", "nowhere", "--out", "x"],
            ["CamSeq01 folder not found: nowhere", "camseg data download camseq01 --out DIR"],
        ),
        "prepare of a camvid-layout folder": (
            ["data", "prepare", str(small), "--out", "x"],
            ["is already in the camvid layout", "nothing to convert"],
        ),
        "camvid layout given a CamSeq01 folder": (
            ["data", "check", "--root", str(camseq01_sample)],
            ["no images/ folder", "looks like a CamSeq01 folder", "--layout camseq01"],
        ),
        "camseq01 layout given a camvid folder": (
            train("data.layout=camseq01"),
            ["no label_colors.txt", "looks like a camvid-layout folder", "data.layout=camvid"],
        ),
        "~ in a --set path is the home folder": (
            train("data.root=~/camvid"),
            [
                f"dataset folder not found: {tmp / 'home' / 'camvid'}; point data.root",
                f"camseg data download camvid --out {tmp / 'home'}",
            ],
        ),
    }


CASES = [
    "size 32x32 with batch size 1",
    "train output.dir is a file",
    "lr-find output.dir under a file",
    "data.cache is a file",
    "synthetic data.root is a file",
    "prepare --out is a file",
    "synth --out is a file",
    "synth --out under a file",
    "synth --valid-fraction 1",
    "synth --valid-fraction 5",
    "synth --valid-fraction 0",
    "synth --valid-fraction -2",
    "check of a synthetic root that does not exist",
    "a missing camseq01 root names its download",
    "data check of a missing --root names --root",
    "prepare of a missing folder",
    "prepare of a camvid-layout folder",
    "camvid layout given a CamSeq01 folder",
    "camseq01 layout given a camvid folder",
    "~ in a --set path is the home folder",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, camseq01_sample, small, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "FILE").write_bytes(b"")
    args, needles = _cases(camseq01_sample, small, tmp_path)[case]
    one_line_error(cli(*args), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # nothing made


# ---- resume ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(small, tmp_path_factory) -> Path:
    """A one-epoch run on 32x64 frames: the checkpoint and the model that resume meets."""
    from typer.testing import CliRunner

    from camseg.cli import app

    out = tmp_path_factory.mktemp("runs")
    args = fast_args(
        small,
        out,
        "data.size=[32,64]",
        "data.batch_size=2",
        "model.last_cross=false",
        "train.stages=[{epochs: 1}]",
        "train.keep_checkpoints=true",  # _interrupted turns it into a run resume continues
    )
    result = CliRunner().invoke(app, ["train", *args, "--name", "r", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out / "r"


def _copy(run: Path, dst: Path) -> Path:
    """A copy of the module's run for one test: a file written in place changes this copy only."""
    return shutil.copytree(run, dst)


def _contents(run: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(run.rglob("*"))
    }


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(finished_run, tmp_path, cli):
    run = _copy(finished_run, tmp_path / "r")
    before = _contents(run)
    result = cli("train", "--resume", run)
    one_line_error(
        result,
        f"--resume {run}: this run is finished",
        "nothing changed",
        f"model.init_from={run / 'model.pth'}",
    )
    assert "resuming" not in result.stdout  # it said so, then refused
    assert _contents(run) == before


def _interrupted(finished_run: Path, dst: Path) -> Path:
    """The run as a crash after its last checkpoint leaves it: no model.pth, no summary."""
    run = _copy(finished_run, dst)
    (run / "model.pth").unlink()
    (run / "summary.json").unlink()
    return run


@pytest.mark.slow
@pytest.mark.parametrize(
    "override", ["model.arch=resnet34", "model.last_cross=true", "model.self_attention=true"]
)
def test_resume_cannot_change_the_model(override, finished_run, tmp_path, cli):
    run = _interrupted(finished_run, tmp_path / "r")
    before = _contents(run)
    key = override.partition("=")[0]
    one_line_error(
        cli("train", "--resume", run, "--set", override),
        "model settings cannot change on resume",
        key,
        f"camseg train --config {run / 'config.yaml'} --set {key}=",
    )
    assert _contents(run) == before


@pytest.mark.slow
def test_resume_cannot_change_the_classes(finished_run, camvid_tiny, tmp_path, cli):
    run = _interrupted(finished_run, tmp_path / "r")
    other = small_copy(camvid_tiny, tmp_path / "more_classes", 2, 4)
    with (other / "codes.txt").open("a") as f:
        f.write("Extra\n")
    before = _contents(run)
    one_line_error(
        cli("train", "--resume", run, "--set", f"data.root={other}"),
        str(other),
        "33 classes, the checkpoint's 32",
        "set data.root and data.layout back",
    )
    assert _contents(run) == before
