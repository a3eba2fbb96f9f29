"""The plan (camseg.train.plan): a config and the machine resolved once, recorded in plan.json,
and taken back by a resume instead of being derived again."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import TINY, fast_args, small_copy

import camseg.core.precision
from camseg.config.load import load_config
from camseg.core.precision import TrainingPrecision
from camseg.errors import CamsegError
from camseg.train.entry import TrainingInterrupted, train_new, train_resume
from camseg.train.plan import Recorded, make_plan, read_recorded


def _config(root, out, *sets):
    return load_config(TINY, fast_args(root, out, "train.device=cpu", *sets)[3::2])


def test_the_plan_resolves_batch_sizes_precision_and_size_once(camvid_tiny, tmp_path, monkeypatch):
    data = small_copy(camvid_tiny, tmp_path / "d", n_valid=2, n_train=6)
    monkeypatch.setattr(camseg.core.precision, "cpu_has_bf16", lambda: False)
    cfg = _config(data, tmp_path, "data.batch_size=4", "train.stages[1].batch_size=16")
    plan = make_plan(cfg)
    assert plan.batch_sizes == (4, 6)  # the second stage's 16 is more than the 6 images
    assert plan.precision == TrainingPrecision(
        "fp32", "train.bf16 auto: this CPU has no native bf16"
    )
    assert plan.size == (64, 96) and plan.n_train == 6 and plan.channels_last is False
    recorded = json.loads(plan.record())
    assert recorded["batch_sizes"] == [4, 6] and recorded["size"] == [64, 96]
    assert recorded["precision"] == "fp32" and recorded["device"] == "cpu"
    # lr-find of the second stage checks that stage's batch, not the first's
    one = _config(data, tmp_path, "data.size=[32,32]", "train.stages[1].batch_size=1")
    with pytest.raises(CamsegError, match=r"train.stages\[1\].batch_size=1"):
        make_plan(one)
    make_plan(
        _config(
            data, tmp_path, "data.size=[32,32]", "data.batch_size=1", "train.stages[1].batch_size=2"
        ),
        first_stage=1,
    )


def test_a_recorded_value_is_kept_unless_its_setting_changed(camvid_tiny, tmp_path):
    data = small_copy(camvid_tiny, tmp_path / "d", n_valid=2, n_train=6)
    saved = _config(data, tmp_path)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(
        json.dumps({"device": "cpu", "precision": "bf16", "size": [96, 128], "batch_sizes": [3, 5]})
    )
    kept = read_recorded(plan_file, tmp_path / "none.json", saved, saved)
    assert kept.precision == TrainingPrecision("bf16") and kept.size == (96, 128)
    assert kept.batch_sizes == (3, 5)
    plan = make_plan(saved, recorded=kept)
    assert (plan.precision.name, plan.size, plan.batch_sizes) == ("bf16", (96, 128), (3, 5))
    changed = _config(data, tmp_path, "train.bf16=false", "data.size=[64,64]", "data.batch_size=2")
    fresh = read_recorded(plan_file, tmp_path / "none.json", saved, changed)
    assert fresh == Recorded()
    plan = make_plan(changed, recorded=fresh)
    assert (plan.precision.name, plan.size, plan.batch_sizes) == ("fp32", (64, 64), (2, 2))
    # the recorded precision is for the kind of device it was recorded on
    assert (
        Recorded(device_type="cuda", precision=TrainingPrecision("fp16")).precision_on(
            torch.device("cpu")
        )
        is None
    )
    plan_file.write_text("{not json")
    with pytest.raises(CamsegError, match=r"plan\.json: not the plan this run recorded"):
        read_recorded(plan_file, tmp_path / "none.json", saved, saved)


@pytest.mark.slow
def test_a_resumed_run_trains_in_the_precision_its_plan_recorded(
    camvid_tiny, tmp_path, monkeypatch, caplog
):
    """bf16 auto, derived on a CPU with native bf16, stays bf16 when the run resumes on a CPU
    that would derive fp32: one run does not change precision half-way."""
    data = small_copy(camvid_tiny, tmp_path / "d", n_valid=2, n_train=4)
    monkeypatch.setattr(camseg.core.precision, "cpu_has_bf16", lambda: True)
    cfg = _config(data, tmp_path / "runs", "train.stages[0].epochs=2")
    lines: list[str] = []

    def stop_after_first(row):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_new(
            cfg,
            config_path=None,
            name="p",
            command="test",
            progress=False,
            on_epoch=stop_after_first,
            on_start=lambda run, line: lines.append(line),
        )
    run = tmp_path / "runs" / "p"
    assert json.loads((run / "plan.json").read_text())["precision"] == "bf16"
    assert "bf16 autocast (train.bf16 auto: this CPU has native bf16)" in lines[-1]
    monkeypatch.setattr(camseg.core.precision, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="camseg.train.plan"):
        summary = train_resume(run, progress=False, on_start=lambda run, line: lines.append(line))
    assert "this run started in bf16 (plan.json) on a CPU without native bfloat16" in caplog.text
    assert summary.epochs == 3
    assert lines[-1].endswith(
        "bf16 autocast (as this run started; train.bf16 auto: this CPU has native bf16)"
    )
    assert json.loads((run / "plan.json").read_text())["precision"] == "bf16"
