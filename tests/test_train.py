"""`camseg train` and `camseg lr-find` end to end on the real camvid_tiny (CPU, no downloads)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY, fast_args, history, resume_in_process, small_copy, written_dir

from camseg.config.load import load_config
from camseg.core.runs import create_run_dir
from camseg.errors import CamsegError
from camseg.model.files import read_model_file
from camseg.train.callbacks import HISTORY_COLUMNS


@pytest.mark.slow
def test_train_writes_every_file_of_the_run(trained_run):
    run = trained_run
    for name in (
        "config.yaml",
        "command.txt",
        "env.json",
        "history.csv",
        "summary.json",
        "model.pth",
        "plots/schedule.png",
        "plots/loss.png",
        "plots/results.png",
    ):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["size"] == [64, 96] and cfg["model"]["arch"] == "resnet18"
    assert Path(cfg["data"]["root"]).is_absolute()  # resumable from any folder
    assert "train --config" in (run / "command.txt").read_text()
    env = json.loads((run / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["fastai"]

    rows = history(run)
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [(r["stage_name"], r["epoch"]) for r in rows] == [("frozen", "0"), ("unfrozen", "0")]
    for r in rows:
        assert 0 <= float(r["acc_camvid"]) <= 1 and float(r["valid_loss"]) > 0

    summary = json.loads((run / "summary.json").read_text())
    best = max(float(r["acc_camvid"]) for r in rows)
    assert summary["best_acc_camvid"] == pytest.approx(best, abs=1e-5)
    assert summary["epochs"] == 2 and summary["images_per_second"] > 0
    assert summary["lrs"] == {"0": 3e-3, "1": "slice(7.5e-06, 0.00075)"}


@pytest.mark.slow
def test_per_class_iou_is_what_miou_averages(trained_run, camvid_tiny):
    codes = (camvid_tiny / "codes.txt").read_text().split()
    with (trained_run / "per_class_iou.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["stage", "epoch", *codes] and len(codes) == 32
        rows = list(reader)
    epochs = history(trained_run)
    assert [(r["stage"], r["epoch"]) for r in rows] == [(h["stage"], h["epoch"]) for h in epochs]
    for row, epoch in zip(rows, epochs, strict=True):
        assert row["Void"] == ""  # never scored
        scored = [float(row[c]) for c in codes if row[c] != ""]
        assert scored and all(0 <= v <= 1 for v in scored)
        # both rounded to 6 significant digits in their files
        assert sum(scored) / len(scored) == pytest.approx(float(epoch["miou"]), abs=2e-6)


@pytest.mark.slow
def test_model_pth_is_plain_data_and_rebuilds(trained_run, camvid_tiny):
    raw = torch.load(trained_run / "model.pth", weights_only=True)  # no pickled code inside
    assert raw["format"] == "camseg-model"
    mf = read_model_file(trained_run / "model.pth")
    assert mf.arch == "resnet18" and mf.size == (64, 96) and len(mf.codes) == 32
    assert mf.codes == (camvid_tiny / "codes.txt").read_text().split()
    model = mf.build().eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 32, 64, 96)


@pytest.mark.slow
def test_a_finished_run_keeps_weights_not_optimizer_state(trained_run, camvid_small, tmp_path, cli):
    # the default: model.pth (the last epoch), and the best epoch's weights where they differ
    run = trained_run
    assert not (run / "checkpoints" / "last.pth").exists()
    summary = json.loads((run / "summary.json").read_text())
    last = history(run)[-1]
    best_is_last = (
        summary["best_epoch"] == int(last["epoch"])
        and summary["best_stage"] == (last["stage_name"])
    )
    best = run / "checkpoints" / "best.pth"
    assert best.exists() != best_is_last
    if best.exists():
        weights = torch.load(best, weights_only=True)
        assert set(weights) == {"format", "version", "meta", "model"}  # no optimizer state
        assert weights["format"] == "camseg-model"
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    model = (run / "model.pth").stat().st_size
    assert size <= 2 * model + 10e6
    # train.keep_checkpoints: the resumable checkpoints stay
    result = cli("train", *fast_args(camvid_small, tmp_path, "train.keep_checkpoints=true"))
    assert result.exit_code == 0, result.output
    [kept] = tmp_path.iterdir()
    ckpt = torch.load(kept / "checkpoints" / "last.pth", weights_only=True)
    assert {"model", "opt", "state", "config", "meta"} <= set(ckpt)
    assert ckpt["state"]["stage"] == 1 and ckpt["state"]["epochs_done"] == 1
    assert torch.load(kept / "checkpoints" / "best.pth", weights_only=True)["opt"]


@pytest.mark.slow
def test_init_from_carries_weights(trained_run, camvid_tiny, tmp_path, cli):
    first_valid = float(history(trained_run)[-1]["valid_loss"])
    # a near-zero lr: the second run's first valid loss is the first run's, not a fresh model's
    result = cli(
        "train",
        *fast_args(
            camvid_tiny,
            tmp_path,
            f"model.init_from={trained_run}",
            "train.stages[0].lr=1e-9",
            "train.stages=[{epochs: 1, lr: 1.0e-9}]",
        ),
        "--name",
        "second",
    )
    assert result.exit_code == 0, result.output
    assert "\ntraining on " in result.stdout  # the device line, after the run folder's
    second_valid = float(history(tmp_path / "second")[0]["valid_loss"])
    assert second_valid == pytest.approx(first_valid, rel=0.1)
    assert abs(second_valid - first_valid) < 0.5 * abs(3.4657 - first_valid)  # ln(32): scratch


@pytest.mark.slow
def test_init_from_with_other_codes_names_both(trained_run, tiny_copy, tmp_path, cli):
    codes = tiny_copy / "codes.txt"
    codes.write_text(codes.read_text().replace("Animal", "Beast"))
    out = tmp_path / "runs"
    result = cli("train", *fast_args(tiny_copy, out, f"model.init_from={trained_run}"))
    assert result.exit_code == 2
    assert "trained on other classes" in result.stderr and "Beast" in result.stderr
    assert "Animal" in result.stderr
    assert not out.exists()  # no half-made run folder


@pytest.mark.slow
def test_pretrained_offline_names_both_ways_out(camvid_tiny, tmp_path, cli, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = cli("train", *fast_args(camvid_tiny, tmp_path / "runs", "model.pretrained=true"))
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "ImageNet weights for resnet18" in line
    assert "model.weights=PATH" in line and "model.pretrained=false" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_local_encoder_weights_file(camvid_tiny, tmp_path):
    from torchvision.models import resnet18

    from camseg.data import build_dataloaders, find_files
    from camseg.model.network import build_learner

    state = resnet18(weights=None).state_dict()
    weights = tmp_path / "r18.pth"
    torch.save(state, weights)
    cfg = load_config(
        TINY,
        [
            f"data.root={camvid_tiny}",
            "model.arch=resnet18",
            f"model.weights={weights}",
            "data.num_workers=0",
        ],
    )
    files = find_files(cfg.data)
    learn = build_learner(
        build_dataloaders(cfg.data, files),
        cfg.model,
        codes=files.codes,
        metrics=[],
        path=tmp_path,
        wd=None,
        moms=(0.95, 0.85, 0.95),
    )
    assert torch.equal(learn.model[0][0].weight, state["conv1.weight"])
    assert torch.equal(learn.model[0][4][0].conv1.weight, state["layer1.0.conv1.weight"])


def test_run_folders_never_clobber(tmp_path):
    first = create_run_dir(tmp_path, "half")
    (first / "model.pth").write_text("precious")
    assert create_run_dir(tmp_path, "half").name == "half-2"
    assert create_run_dir(tmp_path, "half").name == "half-3"
    assert (first / "model.pth").read_text() == "precious"


@pytest.mark.slow
def test_resume_after_kill_9_mid_stage(camvid_small, tmp_path):
    args = [*fast_args(camvid_small, tmp_path, "train.stages[0].epochs=3"), "--name", "r"]
    cmd = [sys.executable, "-m", "camseg", "train", *args, "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "r"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.csv").is_file() and len(history(run)) >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()}"
    time.sleep(1.5)  # well inside the second epoch of stage 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = history(run)
    assert len(before) in (1, 2)

    done = resume_in_process(run)
    assert done.exit_code == 0, done.output
    assert "training on " in done.stdout  # a resume prints the device line too
    rows = history(run)
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("0", "0"),
        ("0", "1"),
        ("0", "2"),
        ("1", "0"),
    ]
    assert rows[: len(before)] == before  # the history continues, nothing rewritten
    assert (run / "model.pth").is_file()
    assert not (run / "checkpoints" / "last.pth").exists()  # finished: nothing to resume


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestions(camvid_tiny, tmp_path, cli):
    result = cli(
        "lr-find",
        *fast_args(camvid_tiny, tmp_path),
        "--set",
        "train.lr_find_iters=30",
    )
    assert result.exit_code == 0, result.output
    [out] = tmp_path.iterdir()
    found = json.loads((out / "lr_find.json").read_text())
    assert set(found) == {"valley", "slide", "minimum", "steep"}
    assert all(v is None or 1e-8 < v < 10 for v in found.values())
    assert found["valley"] is not None
    assert (out / "lr_find.png").stat().st_size > 1000
    curve = (out / "lr_find.csv").read_text().splitlines()
    assert curve[0] == "lr,loss" and len(curve) > 20
    # no bar on a non-terminal: plain progress lines, the first iteration and the last
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("lr_find: iteration ")]
    assert lines[0].startswith("lr_find: iteration 1/30, smoothed loss ")
    assert lines[-1].startswith(f"lr_find: iteration {len(curve) - 1}/30, smoothed loss ")


def test_lr_find_suggestions_of_any_curve_are_computed_or_reported():
    from camseg.train.lrfind import suggest

    lrs = [1e-7 * 1.5**i for i in range(30)]
    smooth = [2.0 - 0.04 * i for i in range(20)] + [1.2 + 0.5 * i for i in range(10)]
    found = suggest(lrs, smooth, 30)
    assert all(v is not None and v > 0 for v in found.lrs.values()), found.missing
    assert found.lrs["minimum"] == pytest.approx(lrs[20] / 10)  # a tenth of the lowest loss's lr
    # 30 iterations that diverged after 20 (fastai's slide raised IndexError on this curve)
    short = suggest(lrs[:20], smooth[:20], 30)
    assert short.lrs["slide"] is None and "IndexError" in short.missing["slide"]
    assert short.lrs["valley"] is not None
    # the loss was NaN almost at once: nothing to suggest, each one says why
    nan = suggest(lrs, [1.0, 1.0, 1.0, 1.0, float("nan")] + [1.0] * 25, 30)
    assert set(nan.missing) == {"valley", "slide", "minimum", "steep"}
    assert all(v is None for v in nan.lrs.values())
    assert "usable points" in nan.missing["valley"]


def test_a_failed_lr_find_leaves_no_folder(camvid_tiny, tmp_path, cli, monkeypatch):
    from camseg.train.trainer import Trainer

    def fails(self, plot, on_iter=None):
        plot.parent.joinpath("half.png").write_bytes(b"")  # what a cut-short write leaves
        raise CamsegError("the loss became NaN")

    monkeypatch.setattr(Trainer, "find_lr", fails)
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=4)
    result = cli("lr-find", *fast_args(root, tmp_path / "runs"))
    assert result.exit_code == 2 and "the loss became NaN" in result.stderr
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.slow
def test_stage_lr_find_is_recorded(camvid_small, tmp_path, cli):
    result = cli(
        "train",
        *fast_args(
            camvid_small, tmp_path, "train.stages=[{epochs: 1, lr: find}]", "train.lr_find_iters=30"
        ),
    )
    assert result.exit_code == 0, result.output
    [run] = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert isinstance(summary["lrs"]["0"], float) and summary["lrs"]["0"] > 0
    assert (run / "plots" / "lr_find_stage-1.png").is_file()


@pytest.mark.slow
def test_two_process_gloo_run_makes_one_run_folder(camvid_small, tmp_path):
    """torchrun with 2 CPU processes: DistributedDataParallel over gloo, rank 0 writes."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "camseg",
        "train",
        *fast_args(camvid_small, tmp_path),
        "--name",
        "ddp",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    assert proc.stdout.count("run folder") == 1 and proc.stdout.count("best acc_camvid") == 1
    assert len(history(tmp_path / "ddp")) == 2
    assert json.loads((tmp_path / "ddp" / "env.json").read_text())["world_size"] == 2
    assert read_model_file(tmp_path / "ddp" / "model.pth").arch == "resnet18"


@pytest.mark.slow
def test_bf16_and_no_last_cross_train_and_rebuild(camvid_tiny, tmp_path, cli):
    """The fast CPU options: convolutions run in bf16 while training (fp32 weights), the lighter
    decoder is recorded in model.pth, and evaluate reproduces the (fp32) validation metric."""
    from camseg.train.callbacks import BF16Autocast

    seen: list[torch.dtype] = []

    def spy(module, inputs, output):
        seen.append(output.dtype)

    import fastai.vision.learner as fvl

    real = fvl.create_unet_model

    def create(*args, **kwargs):
        model = real(*args, **kwargs)
        next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_hook(
            spy
        )
        return model

    fvl.create_unet_model = create
    try:
        args = fast_args(
            camvid_tiny,
            tmp_path,
            "train.bf16=true",
            "model.last_cross=false",
            "train.channels_last=true",
            "train.stages=[{epochs: 1, freeze: false, lr: 3e-3}]",
        )
        result = cli("train", *args, "--no-progress", "--name", "fast")
    finally:
        fvl.create_unet_model = real
    assert result.exit_code == 0, result.output
    n_train_batches = 85 // 8  # fastai drops the last partial training batch
    assert seen[:n_train_batches] == [torch.bfloat16] * n_train_batches
    assert set(seen[n_train_batches:]) == {torch.float32}  # validation in fp32
    run = tmp_path / "fast"
    mf = read_model_file(run / "model.pth")
    assert mf.last_cross is False
    assert all(p.dtype == torch.float32 for p in mf.state_dict.values() if p.is_floating_point())
    row = history(run)[-1]
    assert float(row["train_loss"]) < 10 and float(row["valid_loss"]) < 10
    result = cli("evaluate", "--run", run)
    assert result.exit_code == 0, result.output
    metrics = json.loads((written_dir(result.stdout) / "metrics.json").read_text())
    assert metrics["acc_camvid"] == pytest.approx(float(row["acc_camvid"]), abs=1e-5)
    assert BF16Autocast.order == 10


def test_fp16_and_bf16_together_is_a_config_error(tmp_path):
    from camseg.errors import CamsegError

    with pytest.raises(CamsegError, match="fp16 and bf16"):
        load_config(None, ["train.fp16=true", "train.bf16=true"])


def test_checkpoint_writer_runs_one_write_at_a_time_and_reports_errors():
    import threading

    from camseg.train.checkpoint import CheckpointWriter

    writer, order, gate = CheckpointWriter(), [], threading.Event()

    def slow() -> None:
        gate.wait(5)
        order.append("first")

    writer.submit(slow)
    timer = threading.Timer(0.2, gate.set)
    timer.start()
    writer.submit(lambda: order.append("second"))  # waits for the first write
    writer.wait()
    assert order == ["first", "second"]

    def full() -> None:
        raise OSError(28, "No space left on device")

    writer.submit(full)
    with pytest.raises(OSError, match="No space"):
        writer.wait()
    writer.wait()  # reported once


@pytest.mark.slow  # builds a U-Net (2-4 s)
def test_checkpoint_is_a_snapshot_not_the_live_weights():
    """The checkpoint is written while the next epoch trains, so it must hold copies."""
    from fastai.learner import Learner
    from fastai.vision.learner import create_unet_model
    from torchvision.models import resnet18

    from camseg.train.checkpoint import RunState, checkpoint_dict

    model = create_unet_model(resnet18, 32, (64, 96), pretrained=False)
    learn = Learner(None, model, loss_func=torch.nn.CrossEntropyLoss())
    learn.create_opt()
    ckpt = checkpoint_dict(learn, RunState(), {}, {})
    name, param = next(iter(model.state_dict().items()))
    before = ckpt["model"][name].clone()
    with torch.no_grad():
        param.add_(1.0)
    assert torch.equal(ckpt["model"][name], before)


@pytest.mark.slow
def test_train_device_and_json(camvid_tiny, tmp_path, cli):
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=4)
    result = cli("train", *fast_args(root, tmp_path / "runs"), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds summary.json alone: no table, no lines
    run = Path(summary["run_dir"])
    assert summary == json.loads((run / "summary.json").read_text())
    assert load_config(run / "config.yaml").train.device == "cpu"
    assert "--set train.device=cpu" in (run / "command.txt").read_text()
    bad = cli("train", *fast_args(root, tmp_path / "runs"), "--device", "gpu")
    assert bad.exit_code == 2 and "train.device" in bad.stderr
