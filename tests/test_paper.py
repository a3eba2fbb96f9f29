"""The paper's two phases end to end, as the README tells a user, on real 960x720 CamSeq01 frames:
prepare the data, train half.yaml, train full.yaml from it, evaluate at the labels' own size,
predict full-size masks. The presets are used as shipped; overrides only shrink size and epochs,
point at the data and (offline) skip the ImageNet download of the first phase."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import history, written_dir
from PIL import Image


@pytest.mark.slow
def test_the_papers_two_phases_on_real_camseq01_frames(camseq01_sample, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a user's folder: data/ and runs/ land here
    assert cli("data", "prepare", camseq01_sample, "--out", "data/camseq01").exit_code == 0
    shrink = ["--set", "data.root=data/camseq01"]
    for i in (0, 1):
        shrink += ["--set", f"train.stages[{i}].epochs=1"]

    half = cli(
        "train", "--config", "half.yaml", *shrink, "--set", "data.size=0.1",
        "--set", "model.pretrained=false", "--no-progress",
    )  # fmt: skip
    assert half.exit_code == 0, half.output
    runs = tmp_path / "runs"
    [half_run] = runs.iterdir()
    # the second phase needs no download: its weights all come from the first
    full = cli("train", "--config", "full.yaml", *shrink, "--set", "data.size=0.2", "--no-progress")
    assert full.exit_code == 0, full.output
    [full_run] = set(runs.iterdir()) - {half_run}

    half_cfg = json.loads((half_run / "summary.json").read_text())
    assert half_cfg["lrs"] == {"0": "slice(0.001)", "1": 0.0001}  # the paper's learning rates
    full_cfg = (full_run / "config.yaml").read_text()
    assert str(half_run / "model.pth") in full_cfg  # started from the first phase
    assert [r["stage_name"] for r in history(full_run)] == ["frozen", "unfrozen"]
    from camseg.model.files import read_model_file

    assert read_model_file(full_run / "model.pth").size == (144, 192)  # 0.2 of 720x960

    scored = cli("evaluate", "--size", "native")  # the newest finished run: full
    assert scored.exit_code == 0, scored.output
    assert f"runs/{full_run.name}" in scored.stderr
    out = tmp_path / written_dir(scored.stdout)  # printed relative to the current folder
    assert out.parent == full_run / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"]["size"] == "native" and 0 <= metrics["acc_camvid"] <= 1

    frame = next((tmp_path / "data" / "camseq01" / "images").iterdir())
    predicted = cli("predict", str(frame))
    assert predicted.exit_code == 0, predicted.output
    mask = Image.open(full_run / "predictions" / f"{frame.stem}_mask.png")
    assert mask.size == (960, 720)
    assert np.asarray(mask).max() < 32
