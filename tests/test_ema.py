"""train.ema: the average of the weights is what validation scores, what checkpoints and
model.pth hold, and what resume continues after a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
from types import SimpleNamespace

import pytest
import torch
from helpers import TINY, fast_args, history, resume_and_check, small_copy, train_cmd, wait_rows
from torch import nn

from camseg.config.load import load_config
from camseg.train.checkpoint import load_checkpoint
from camseg.train.ema import ModelEMA
from camseg.train.plan import make_plan
from camseg.train.trainer import Trainer


def _attached(model: nn.Module, decay: float) -> ModelEMA:
    """A ModelEMA as a fit sees it, without a learner around the model."""
    ema = ModelEMA(model, decay)
    ema.learn = SimpleNamespace(model=model)
    ema.before_fit()
    return ema


def _average(values: list[float], decay: float) -> float:
    weight = nn.Parameter(torch.tensor([values[0]]))
    model = nn.Module()
    model.weight = weight
    ema = _attached(model, decay)
    for v in values[1:]:
        weight.data.fill_(v)  # what an optimizer step does
        ema.after_step()
    return ema.averaged["weight"].item()


def test_average_warms_up_then_decays_at_train_ema_decay():
    values = [float(t) for t in range(201)]
    for decay in (0.9, 0.99):
        expected = values[0]
        for n, v in enumerate(values[1:]):
            d = min(decay, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * v
        assert _average(values, decay) == pytest.approx(expected, rel=1e-5)
    assert _average(values, 0.9) > _average(values, 0.99) + 5  # a lower decay follows closer


def test_batchnorm_statistics_are_averaged_and_its_count_copied():
    bn = nn.BatchNorm1d(1)
    ema = _attached(bn, decay=0.5)
    bn.running_mean.fill_(10.0)
    bn.num_batches_tracked.fill_(7)
    ema.after_step()  # the first update moves 1 - min(0.5, 1/10) = 0.9 of the way
    assert ema.averaged["running_mean"].item() == pytest.approx(9.0)
    assert ema.averaged["num_batches_tracked"].item() == 7


def test_validation_runs_on_the_average_and_training_on_its_own_weights():
    lin = nn.Linear(1, 1, bias=False)
    lin.weight.data.fill_(0.0)
    ema = _attached(lin, decay=0.5)
    lin.weight.data.fill_(10.0)
    ema.after_step()
    ema.before_validate()
    assert lin.weight.item() == pytest.approx(9.0)
    ema.after_validate()
    assert lin.weight.item() == 10.0


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


EMA_SETS = ("data.batch_size=4", "train.ema=true", "train.ema_decay=0.3")  # 2 steps an epoch


@pytest.mark.slow
def test_average_is_validated_checkpointed_and_saved(camvid_tiny, tmp_path):
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=4, n_train=8)
    args = fast_args(root, tmp_path, *EMA_SETS, "train.keep_checkpoints=true")
    trainer = Trainer(make_plan(load_config(TINY, args[3::2])), progress=False)  # the --set values
    assert trainer.ema is not None and trainer.ema.decay == 0.3
    run = tmp_path / "run"
    run.mkdir()
    trainer.run(run)

    saved = torch.load(run / "model.pth", weights_only=True)["model"]
    assert _equal(saved, trainer.ema.averaged)  # every weight and buffer, both stages
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert _equal(ckpt["model"], saved)  # what evaluate and init_from read from a checkpoint
    raw = ckpt["ema"]["train_model"]
    assert not _equal(raw, saved)  # the optimizer's own weights, for resume
    assert ckpt["ema"]["updates"] == trainer.ema.updates == 4

    # the last epoch's valid_loss is the average's (the model holds it now), not the raw one's
    recorded = float(history(run)[-1]["valid_loss"])
    assert trainer.learn.validate()[0] == pytest.approx(recorded, rel=1e-5)
    trainer.learn.model.load_state_dict(raw)
    assert trainer.learn.validate()[0] != pytest.approx(recorded, rel=1e-3)


def _train(args: list[str]) -> None:
    done = subprocess.run(train_cmd(args), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_resume_after_kill_9_continues_the_average(camvid_tiny, tmp_path):
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=4, n_train=8)
    runs = tmp_path / "runs"
    _train([*fast_args(root, runs, *EMA_SETS), "--name", "straight"])

    proc = subprocess.Popen(
        train_cmd([*fast_args(root, runs, *EMA_SETS), "--name", "k"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run = runs / "k"
    wait_rows(run, proc, 1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert ckpt["ema"]["updates"] == 2 * len(ckpt["state"]["history"])
    trainer = Trainer(
        make_plan(load_config(run / "config.yaml"), ckpt=ckpt), ckpt=ckpt, progress=False
    )
    assert trainer.ema is not None and trainer.ema.updates == ckpt["ema"]["updates"]
    assert _equal(trainer.ema.averaged, ckpt["model"])
    assert _equal(trainer.learn.model.state_dict(), ckpt["ema"]["train_model"])

    resume_and_check(run, [("0", "0"), ("1", "0")])  # each epoch once
    ours = torch.load(run / "model.pth", weights_only=True)["model"]
    theirs = torch.load(runs / "straight" / "model.pth", weights_only=True)["model"]
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)
