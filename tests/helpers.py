"""Helpers the tests share (paths, short training arguments, data copies, reading a run's
files, checking a one-line error, driving a training process). Fixtures live in conftest.py;
no test module imports another."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SHARED_DATA = REPO.parent / "shared" / "data"


def copy_or_link(src: str, dst: str) -> None:
    """shutil.copytree's copy_function for a run: weights are only ever replaced whole (atomic
    rename), never written in place, so a copy may share them with the original: a run is
    ~0.5 GB of them and dozens of tests copy one."""
    if src.endswith((".pth", ".onnx")):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def fast_args(root: Path, out: Path, *extra: str) -> list[str]:
    """tiny.yaml shrunk to seconds per epoch: 64x96 frames, resnet18, one epoch per stage."""
    sets = [
        f"data.root={root}",
        "data.size=[64,96]",
        "model.arch=resnet18",
        "train.stages[0].epochs=1",
        "train.stages[1].epochs=1",
        f"output.dir={out}",
        *extra,
    ]
    return ["--config", str(TINY), *[a for s in sets for a in ("--set", s)]]


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def small_copy(camvid_tiny: Path, dst: Path, n_valid: int = 4, n_train: int = 16) -> Path:
    """A few of camvid_tiny's validation and training frames: seconds per epoch, not minutes."""
    valid = (camvid_tiny / "valid.txt").read_text().split()
    images = sorted((camvid_tiny / "images").iterdir())
    keep = [p for p in images if p.name in valid][:n_valid]
    keep += [p for p in images if p.name not in valid][:n_train]
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    for p in keep:
        shutil.copy(p, dst / "images" / p.name)
        shutil.copy(camvid_tiny / "labels" / f"{p.stem}_P.png", dst / "labels")
    shutil.copy(camvid_tiny / "codes.txt", dst)
    (dst / "valid.txt").write_text("\n".join(p.name for p in keep[:n_valid]) + "\n")
    return dst


def written_dir(stdout: str) -> Path:
    """The folder a command reported with its last `wrote FOLDER` line (evaluate's output)."""
    return Path(stdout.rsplit("wrote ", 1)[-1].strip())


def one_line_error(result, *needles: str) -> str:
    """Exit code 2, exactly one stderr line, no traceback, containing every needle."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("camseg: error: ")
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def train_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "camseg", "train", *args, "--no-progress"]


def wait_rows(run: Path, proc: subprocess.Popen, rows: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.csv").is_file() and len(history(run)) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {rows} epoch(s) in time: {proc.poll()}")


def resume_in_process(run: Path):
    """`camseg train --resume RUN --no-progress` in this process (CliRunner): the run was
    stopped in a process of its own; resuming needs no second one, which would import torch and
    fastai again (about 6 s)."""
    from typer.testing import CliRunner

    from camseg.cli import app

    return CliRunner().invoke(app, ["train", "--resume", str(run), "--no-progress"])


def resume_and_check(run: Path, expected: list[tuple[str, str]]) -> None:
    done = resume_in_process(run)
    assert done.exit_code == 0, done.output[-2000:]
    assert [(r["stage"], r["epoch"]) for r in history(run)] == expected
    with (run / "per_class_iou.csv").open() as f:  # rewritten like history.csv: no epoch twice
        assert [(r["stage"], r["epoch"]) for r in csv.DictReader(f)] == expected
    # finished: the optimizer state is dropped, the best epoch's weights kept where not the last
    assert not (run / "checkpoints" / "last.pth").exists()
    best = run / "checkpoints" / "best.pth"
    if best.exists():
        assert torch.load(best, weights_only=True)["format"] == "camseg-model"  # whole, not torn
    assert (run / "model.pth").is_file()
