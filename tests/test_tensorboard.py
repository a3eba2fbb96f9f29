"""train.tensorboard: event files in the run folder with every epoch's scalars and validation
predictions; without the package, one line before anything is made."""

from __future__ import annotations

import sys

import pytest
from helpers import fast_args, history, small_copy


@pytest.mark.slow
def test_event_files_hold_every_epoch(camvid_tiny, tmp_path, cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=4, n_train=8)
    args = fast_args(root, tmp_path / "runs", "train.tensorboard=true", "data.batch_size=4")
    result = cli("train", *args, "--name", "tb", "--no-progress")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tb"
    rows = history(run)
    assert len(rows) == 2  # one epoch per stage

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("train_loss", "valid_loss", "acc_camvid", "miou", "lr"):
        points = events.Scalars(key)
        assert [p.step for p in points] == [0, 1], key
        for point, row in zip(points, rows, strict=True):
            assert point.value == pytest.approx(float(row[key]), rel=1e-5), key
    frames = [t for t in tags["images"] if t.startswith("valid/")]
    assert len(frames) == 4  # the first validation batch
    image = events.Images(frames[0])
    assert [i.step for i in image] == [0, 1]
    assert (image[0].width, image[0].height) == (3 * 96, 64)  # image | truth | prediction


def test_missing_package_is_one_line_before_any_run_folder(camvid_tiny, tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    out = tmp_path / "runs"
    result = cli("train", *fast_args(camvid_tiny, out, "train.tensorboard=true"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "train.tensorboard" in lines[0] and "pip install 'camseg[tensorboard]'" in lines[0]
    assert not out.exists()
