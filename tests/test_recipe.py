"""The paper's recipe as fastai runs it: slice learning rates per parameter group, init_from
without downloads, resume that trains exactly as an uninterrupted run, lr-find for later stages."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from helpers import TINY, fast_args, history, small_copy

from camseg.config.load import load_config
from camseg.config.schema import StageConfig
from camseg.config.values import LrSlice
from camseg.train.entry import train_new, train_resume
from camseg.train.plan import make_plan
from camseg.train.trainer import Trainer, fit_stage


class GroupLrs(Callback):
    """Records every parameter group's lr at the first training batch, then stops the fit."""

    order = 70  # after fastai's ParamScheduler (60) has set this batch's values

    def before_batch(self) -> None:
        self.lrs = [h["lr"] for h in self.opt.hypers]
        raise CancelFitException


def _trainer(root: Path) -> Trainer:
    cfg = load_config(
        TINY,
        [f"data.root={root}", "data.size=[64,96]", "model.arch=resnet18", "data.num_workers=0"],
    )
    return Trainer(make_plan(cfg), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lr", "fastai_lr"),
    [(LrSlice(stop=1e-3), slice(1e-3)), (LrSlice(start=1e-6, stop=1e-4), slice(1e-6, 1e-4))],
)
def test_slice_lr_sets_the_groups_fastai_sets(camvid_tiny, lr, fastai_lr):
    stage = StageConfig(epochs=10, freeze=True, lr=lr, pct_start=0.9)
    ours, theirs = GroupLrs(), GroupLrs()
    trainer = _trainer(camvid_tiny)
    fit_stage(trainer.learn, stage, lr, trainer.plan.train, cbs=[ours])
    learn = _trainer(camvid_tiny).learn
    learn.freeze()
    learn.fit_one_cycle(10, fastai_lr, pct_start=0.9, cbs=[theirs])
    assert ours.lrs == pytest.approx(theirs.lrs, rel=1e-12)
    assert len(set(ours.lrs)) > 1  # the encoder groups (BatchNorm trains) get less than the head


@pytest.mark.slow
def test_plain_number_gives_every_group_the_same_lr(camvid_tiny):
    stage = StageConfig(epochs=10, freeze=True, lr=1e-3, pct_start=0.9)
    cb = GroupLrs()
    trainer = _trainer(camvid_tiny)
    fit_stage(trainer.learn, stage, 1e-3, trainer.plan.train, cbs=[cb])
    assert len(set(cb.lrs)) == 1


def _finished_copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("checkpoints", "eval", "predictions"))
    return dst


@pytest.mark.slow
def test_init_from_takes_the_newest_finished_run_of_its_family_and_says_so(
    trained_run, camvid_tiny, tmp_path, cli, caplog, monkeypatch
):
    import torchvision.models._api as api

    from camseg.core.runs import resolve_init_from

    def offline(*args, **kwargs):
        raise AssertionError("init_from must not download ImageNet weights")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    runs = tmp_path / "runs"
    _finished_copy(trained_run, runs / "half")
    newer = _finished_copy(trained_run, runs / "half-2")
    (newer / "summary.json").touch()  # finished later
    _finished_copy(trained_run, runs / "halfway")  # another family
    (runs / "halfway" / "summary.json").touch()
    with caplog.at_level(logging.INFO, logger="camseg"):
        assert resolve_init_from(runs / "half") == newer / "model.pth"
    assert str(newer) in caplog.text and "half, half-2" in caplog.text

    # model.pretrained=true, offline: init_from replaces every weight, so nothing is fetched
    args = fast_args(
        camvid_tiny, tmp_path / "out", f"model.init_from={runs / 'half'}", "model.pretrained=true"
    )
    result = cli("train", *args, "--set", "train.stages=[{epochs: 1, lr: 1.0e-9}]", "--name", "f")
    assert result.exit_code == 0, result.output
    saved = load_config(tmp_path / "out" / "f" / "config.yaml")
    assert saved.model.init_from == newer / "model.pth"  # the run records the exact file


@pytest.mark.slow
def test_init_from_an_unfinished_run_is_refused_with_the_checkpoint_named(
    trained_run, camvid_tiny, tmp_path, cli
):
    half = tmp_path / "runs" / "half"
    shutil.copytree(trained_run, half)
    (half / "model.pth").unlink()  # interrupted: only checkpoints
    (half / "checkpoints").mkdir(exist_ok=True)
    torch.save({"format": "camseg-checkpoint"}, half / "checkpoints" / "best.pth")
    result = cli("train", *fast_args(camvid_tiny, tmp_path / "out", f"model.init_from={half}"))
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "did not finish" in line and str(half / "checkpoints" / "best.pth") in line
    assert not (tmp_path / "out").exists()


def _cfg(root: Path, out: Path):
    return load_config(
        TINY,
        [
            f"data.root={root}",
            "data.size=[64,96]",
            "data.batch_size=4",
            "model.arch=resnet18",
            "train.stages=[{epochs: 2, freeze: true, lr: slice(2e-3)},"
            " {epochs: 2, freeze: false, lr: 'slice(1e-5, 1e-4)', pct_start: 0.5}]",
            f"output.dir={out}",
        ],
    )


def _interrupt_after(n: int):
    seen = []

    def on_epoch(row) -> None:
        seen.append(row)
        if len(seen) == n:
            raise KeyboardInterrupt  # what Ctrl-C does right after an epoch's checkpoint

    return on_epoch


def _train(cfg, name: str, on_epoch=None) -> Path:
    from camseg.train.trainer import TrainingInterrupted

    try:
        train_new(
            cfg, config_path=None, name=name, command="test", progress=False, on_epoch=on_epoch
        )
    except TrainingInterrupted as e:
        return e.run_dir
    return cfg.output.dir / name


@pytest.mark.slow
def test_resume_trains_exactly_as_an_uninterrupted_run(camvid_tiny, tmp_path):
    """Killed after an epoch inside a stage, and after a stage's last epoch: the epochs after
    the resume match the uninterrupted run's. Optimizer moments, fastai's smoothed train_loss
    and every random state come back from the checkpoint; a stage that starts after the resume
    starts with fresh moments, as fastai's freeze()/unfreeze() give the uninterrupted run."""
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=5, n_train=12)
    cfg = _cfg(root, tmp_path / "runs")
    straight = history(_train(cfg, "straight"))
    assert len(straight) == 4
    for killed_after in (1, 2):  # mid-stage 0; at the boundary between stages 0 and 1
        run = _train(cfg, f"killed-{killed_after}", _interrupt_after(killed_after))
        assert len(history(run)) == killed_after
        train_resume(run, progress=False)
        resumed = history(run)
        assert [(r["stage"], r["epoch"]) for r in resumed] == [
            (r["stage"], r["epoch"]) for r in straight
        ]
        for ours, theirs in zip(resumed, straight, strict=True):
            for key in ("train_loss", "valid_loss", "acc_camvid"):
                assert float(ours[key]) == pytest.approx(float(theirs[key]), rel=1e-5, abs=1e-6), (
                    killed_after,
                    ours,
                    theirs,
                )


def test_lr_find_for_a_later_stage_needs_its_starting_weights(camvid_tiny, tmp_path, cli):
    args = fast_args(camvid_tiny, tmp_path)
    result = cli("lr-find", *args, "--stage", "1")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "--from" in line and "train.stages[1].lr=find" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_lr_find_for_a_later_stage_starts_from_the_given_run(
    trained_run, camvid_tiny, tmp_path, cli
):
    args = fast_args(camvid_tiny, tmp_path, "train.lr_find_iters=30")
    result = cli("lr-find", *args, "--stage", "1", "--from", trained_run, "--no-progress")
    assert result.exit_code == 0, result.output
    [out] = tmp_path.iterdir()
    assert set(json.loads((out / "lr_find.json").read_text())) == {
        "valley",
        "slide",
        "minimum",
        "steep",
    }
    with (out / "lr_find.csv").open() as f:
        first_loss = float(next(csv.DictReader(f))["loss"])
    # at lr 1e-7 the curve starts at the trained run's loss, not a fresh decoder's ln(32)
    trained = float(history(trained_run)[-1]["train_loss"])
    assert abs(first_loss - trained) < abs(3.4657 - trained) / 2


def test_init_from_a_run_takes_its_last_or_its_best_weights(tmp_path):
    from camseg.core.runs import resolve_init_from
    from camseg.errors import CamsegError

    run = tmp_path / "runs" / "half"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "history.csv", "summary.json", "model.pth", "checkpoints/best.pth"):
        (run / name).write_text("{}\n" if name == "summary.json" else "")  # a finished run
    assert resolve_init_from(run) == run / "model.pth"  # the paper's: the last epoch
    assert resolve_init_from(Path(f"{run}:last")) == run / "model.pth"
    assert resolve_init_from(Path(f"{run}:best")) == run / "checkpoints" / "best.pth"
    (run / "checkpoints" / "best.pth").unlink()  # the best epoch was the last
    assert resolve_init_from(Path(f"{run}:best")) == run / "model.pth"
    with pytest.raises(CamsegError, match="picks the weights of a run folder"):
        resolve_init_from(Path(f"{run / 'model.pth'}:best"))
