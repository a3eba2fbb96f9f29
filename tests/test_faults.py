"""The fault suite: an adversarial user's bad inputs and the faults a long run meets.

Each test is one case: it asserts the exit code, the one-line message (naming the file or key
and what to do, no traceback) and that nothing earlier was lost or half-written.
Run them alone with ./scripts/faults.sh (pytest -m faults).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback
from fault_cases import CONFIG_FAULTS, DATA_FAULTS, broken_copy, paint_unknown_colour
from helpers import (
    REPO,
    TINY,
    fast_args,
    history,
    one_line_error,
    resume_and_check,
    small_copy,
    train_cmd,
    wait_rows,
)

import camseg.train.trainer
from camseg.core.runs import Run
from camseg.errors import Terminated

pytestmark = pytest.mark.faults


# ---- bad config -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONFIG_FAULTS, ids=lambda case: case.name)
def test_bad_config(case, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = case.write(tmp_path)
    sets = [a for item in case.overrides for a in ("--set", item)]
    named = () if case.overrides else (str(path),)  # a fault in the file names the file
    one_line_error(cli("train", "--config", path, *sets), *named, *case.needles)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == ([] if case.text is None else ["bad.yaml"])  # no runs/, no PWNED


def _command_cases(camvid_tiny: Path, camseq01_sample: Path, tmp: Path) -> dict[str, tuple]:
    tiny = ["--set", f"data.root={camvid_tiny}", "--set", "model.pretrained=false"]
    frame = str(next((camvid_tiny / "images").iterdir()))
    prepare = ["data", "prepare", str(camseq01_sample), "--out", "p"]
    return {
        "unknown preset": (["train", "--config", "hlaf.yaml"], ["hlaf.yaml", "half, tiny"]),
        "lr-find of a later stage without --from": (
            ["lr-find", "--config", "tiny.yaml", *tiny, "--stage", "1"],
            ["--stage 1", "--from"],
        ),
        "init_from that does not exist": (
            ["train", "--config", "full.yaml", *tiny],
            [f"model.init_from {tmp / 'runs' / 'half'}: no such run or file"],
        ),
        "evaluate with no finished run": (["evaluate"], ["no finished run under runs/"]),
        "predict with no finished run": (["predict", frame], ["no finished run under runs/"]),
        "prepare with a negative gap": (
            [*prepare, "--gap", "-1"],
            ["--gap must be 0 or more frames, got -1"],
        ),
        "prepare with a gap that leaves no train frame": (
            [*prepare, "--gap", "3"],
            ["--gap 3 leaves no train frame: 4 frames, 1 valid; use --gap 2 or less"],
        ),
        "prepare with a gap and a --valid list": (
            [*prepare, "--gap", "1", "--valid", "v.txt"],
            ["--gap applies to the automatic split only"],
        ),
        "predict on an unknown device": (
            ["predict", frame, "--model", "m.pth", "--device", "gpu"],
            ["--device 'gpu'"],
        ),
        "--weights with a model file": (
            ["evaluate", "--model", frame, "--weights", "best"],
            ["--weights best picks a file in a run folder", "leave --weights out"],
        ),
        "train on an unknown --device": (
            ["train", "--config", "tiny.yaml", *tiny, "--device", "gpu"],
            ["--set train.device: train.device = 'gpu'"],
        ),
    }


COMMAND_CASES = [
    "unknown preset",
    "--weights with a model file",
    "train on an unknown --device",
    "lr-find of a later stage without --from",
    "init_from that does not exist",
    "evaluate with no finished run",
    "predict with no finished run",
    "prepare with a negative gap",
    "prepare with a gap that leaves no train frame",
    "prepare with a gap and a --valid list",
    "predict on an unknown device",
]


@pytest.mark.parametrize("case", COMMAND_CASES)
def test_bad_command_input(case, camvid_tiny, camseq01_sample, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pth").write_bytes(b"")
    (tmp_path / "v.txt").write_text("0016E5_07997.png\n")
    args, needles = _command_cases(camvid_tiny, camseq01_sample, tmp_path)[case]
    one_line_error(cli(*args), *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth", "v.txt"]  # nothing made


@pytest.mark.slow
def test_size_not_divisible_by_32_trains(camvid_small, tmp_path, cli):
    """Decision: any size >= 32 is accepted; fastai's U-Net resizes decoder features to fit."""
    result = cli(
        "train",
        *fast_args(camvid_small, tmp_path, "data.size=[50,70]", "train.stages=[{epochs: 1}]"),
    )
    assert result.exit_code == 0, result.output
    from camseg.model.files import read_model_file

    [run] = tmp_path.iterdir()
    assert read_model_file(run / "model.pth").size == (50, 70)


# ---- bad data ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", DATA_FAULTS, ids=lambda case: case.name)
def test_bad_data_stops_training_before_anything_is_written(case, request, tmp_path, cli):
    root = broken_copy(case, request.getfixturevalue(case.source), tmp_path / "data")
    out = tmp_path / "runs"
    one_line_error(cli("train", *fast_args(root, out, f"data.layout={case.layout}")), case.needle)
    assert not out.exists()


def test_unknown_colour_in_camseq01_label(camseq01_sample, tmp_path, cli):
    src = tmp_path / "src"
    shutil.copytree(camseq01_sample, src)
    needle = paint_unknown_colour(src)
    one_line_error(
        cli("data", "prepare", src, "--out", tmp_path / "out"), needle, "--unknown-as Void"
    )
    assert not (tmp_path / "out").exists()


# ---- bad model files --------------------------------------------------------------------


def test_run_folder_without_a_model(tmp_path, camvid_tiny, cli):
    one_line_error(cli("evaluate", "--run", tmp_path), "no model.pth")


@pytest.mark.slow
def test_model_from_another_camseg_version(trained_run, camvid_tiny, tmp_path, cli):
    obj = torch.load(trained_run / "model.pth", weights_only=True)
    obj["version"] = 99
    path = tmp_path / "model.pth"
    torch.save(obj, path)
    one_line_error(
        cli("evaluate", "--model", path, "--data", camvid_tiny), "file format version 99"
    )


@pytest.mark.slow
def test_truncated_model_file(trained_run, camvid_tiny, tmp_path, cli):
    data = (trained_run / "model.pth").read_bytes()
    path = tmp_path / "model.pth"
    path.write_bytes(data[: len(data) // 2])
    one_line_error(cli("evaluate", "--model", path, "--data", camvid_tiny), "cannot load")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_pickle_with_code_is_refused_not_run(trained_run, camvid_tiny, tmp_path, cli):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"format": "camseg-model", "version": 1, "payload": _Evil(marker)}, evil)
    code = "holds Python objects or code, not only tensors; camseg loads no such file"
    one_line_error(cli("evaluate", "--model", evil, "--data", camvid_tiny), code)
    one_line_error(cli("predict", camvid_tiny / "images", "--model", evil), code)
    one_line_error(
        cli("train", *fast_args(camvid_tiny, tmp_path / "runs", f"model.init_from={evil}")), code
    )
    run = shutil.copytree(trained_run, tmp_path / "run")
    for done in ("model.pth", "summary.json"):  # an interrupted run: resume reads last.pth
        (run / done).unlink()
    (run / "checkpoints").mkdir(exist_ok=True)
    shutil.copy(evil, run / "checkpoints" / "last.pth")
    one_line_error(cli("train", "--resume", run), "cannot read checkpoint")
    assert not marker.exists()


# ---- predict ----------------------------------------------------------------------------


@pytest.mark.slow
def test_output_folder_not_writable(trained_run, camvid_tiny, tmp_path, cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(
        cli(
            "predict",
            camvid_tiny / "images" / "0001TP_006750.png",
            "--run",
            trained_run,
            "--out",
            blocker / "sub",
        ),
        "cannot create the folder",
    )


@pytest.mark.slow
def test_input_equal_to_output(trained_run, camvid_tiny, tmp_path, cli):
    frame = tmp_path / "x.png"
    shutil.copy(camvid_tiny / "images" / "0001TP_006750.png", frame)
    shutil.copy(frame, tmp_path / "x_color.png")
    one_line_error(
        cli("predict", tmp_path, "--run", trained_run, "--out", tmp_path),
        "would overwrite an input",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "x_color.png"]


# ---- resources ----------------------------------------------------------------------------


@pytest.mark.slow  # refused only after the learner is built (4 s)
def test_cuda_requested_but_not_available(camvid_tiny, tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(
        cli("train", *fast_args(camvid_tiny, tmp_path, "train.device=cuda")),
        "train.device=cuda but CUDA is not available",
        "train.device=cpu",
    )
    one_line_error(
        cli("train", *fast_args(camvid_tiny, tmp_path, "train.fp16=true")),
        "train.fp16=true needs a CUDA device",
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # builds the learner (4 s) that the fake OOM stops
def test_cuda_out_of_memory(camvid_tiny, tmp_path, cli, monkeypatch):
    from fastai.learner import Learner

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Learner, "fit_one_cycle", oom)
    one_line_error(
        cli("train", *fast_args(camvid_tiny, tmp_path, "data.batch_size=8")),
        "CUDA out of memory at batch size 8",
        "--set data.batch_size=4",
    )


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    camvid_small, tmp_path, cli, monkeypatch
):
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's checkpoint
            raise OSError(28, "No space left on device", str(tmp_path / "last.pth"))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)  # what atomic_torch_save calls
    line = one_line_error(cli("train", *fast_args(camvid_small, tmp_path)), "No space left")
    assert "--resume" in line
    [run] = tmp_path.iterdir()
    ckpt = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["state"]["stage"] == 0 and ckpt["state"]["epochs_done"] == 1
    assert not list(run.joinpath("checkpoints").glob(".*.tmp"))


# ---- faults during a run ------------------------------------------------------------------


class _InjectNaN(Callback):
    """Test double: makes the loss NaN at one training step of one epoch."""

    order = -20

    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def after_loss(self) -> None:
        if self.training and (self.epoch, self.iter) == self.at:
            self.learn.loss = torch.tensor(float("nan"))


@pytest.mark.slow
def test_nan_loss_stops_the_stage_and_keeps_the_checkpoint(
    camvid_small, tmp_path, cli, monkeypatch
):
    real = camseg.train.trainer.build_learner

    def build(*args, **kwargs):
        learn = real(*args, **kwargs)
        learn.add_cb(_InjectNaN(epoch=1, step=3))
        return learn

    monkeypatch.setattr(camseg.train.trainer, "build_learner", build)
    args = fast_args(camvid_small, tmp_path, "train.stages[0].epochs=2")
    line = one_line_error(
        cli("train", *args, "--name", "nan"), "loss became NaN/inf at epoch 1 step 3"
    )
    assert "--resume" in line and "train.stages[0].lr=" in line
    run = tmp_path / "nan"
    assert [r["epoch"] for r in history(run)] == ["0"]  # the good epoch, and only it
    ckpt = torch.load(run / "checkpoints" / "last.pth", weights_only=True)
    assert ckpt["state"]["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())

    monkeypatch.undo()
    resumed = cli("train", "--resume", run, "--set", "train.stages[0].lr=1e-3")
    assert resumed.exit_code == 0, resumed.output
    assert [(r["stage"], r["epoch"]) for r in history(run)] == [("0", "0"), ("0", "1"), ("1", "0")]
    assert json.loads((run / "summary.json").read_text())["lrs"]["0"] == 1e-3


@pytest.mark.slow
def test_kill_9_between_stages(camvid_small, tmp_path):
    args = [*fast_args(camvid_small, tmp_path, "train.stages[1].epochs=2"), "--name", "k"]
    proc = subprocess.Popen(train_cmd(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = tmp_path / "k"
    wait_rows(run, proc, 1)  # stage 0 has one epoch: now it is between stages or in stage 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resume_and_check(run, [("0", "0"), ("1", "0"), ("1", "1")])


SLOW_WRITER = """
import os, sys, time, pathlib
real = os.replace
seen = {"n": 0}
def slow_replace(src, dst, *a, **k):
    if str(dst).endswith("last.pth"):
        seen["n"] += 1
        if seen["n"] == 2:  # inside the second checkpoint write: the temp file is complete
            pathlib.Path(os.environ["CAMSEG_TEST_MARK"]).touch()
            time.sleep(120)
    return real(src, dst, *a, **k)
os.replace = slow_replace
sys.argv = ["camseg", *sys.argv[1:]]
from camseg.cli import main
main()
"""


@pytest.mark.slow
def test_kill_9_inside_a_checkpoint_write(camvid_small, tmp_path):
    mark = tmp_path / "writing"
    args = [*fast_args(camvid_small, tmp_path / "runs", "train.stages[0].epochs=2"), "--name", "w"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, "train", *args, "--no-progress"],
        env={**os.environ, "CAMSEG_TEST_MARK": str(mark)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while not mark.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert mark.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() else "timeout"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    run = tmp_path / "runs" / "w"
    ckpt = torch.load(run / "checkpoints" / "last.pth", weights_only=True)  # the old one, whole
    assert ckpt["state"]["epochs_done"] == 1
    assert list(run.joinpath("checkpoints").glob(".last.pth.*.tmp"))  # the cut-short write
    resume_and_check(run, [("0", "0"), ("0", "1"), ("1", "0")])
    assert not list(run.joinpath("checkpoints").glob(".*.tmp"))


# SIGTERM from inside a write: CAMSEG_TEST_AT=checkpoint sends it as the last epoch's checkpoint
# starts to be written in the background (the write then takes a second), =finish as the run's
# final files (model.pth, plots, summary.json, report) are being written.
SIGNAL_IN_WRITE = """
import os, signal, sys, time
import camseg.train.callbacks, camseg.report.plots
at = os.environ["CAMSEG_TEST_AT"]
real_save, real_plot = camseg.train.callbacks.atomic_torch_save, camseg.report.plots.plot_run
calls = {"n": 0}
def save(path, obj):
    calls["n"] += 1
    if at == "checkpoint" and calls["n"] == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
    real_save(path, obj)
def plot(*a, **k):
    if at == "finish":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    real_plot(*a, **k)
camseg.train.callbacks.atomic_torch_save, camseg.report.plots.plot_run = save, plot
sys.argv = ["camseg", *sys.argv[1:]]
from camseg.cli import main
main()
"""


def _signal_in_write(at: str, root: Path, runs: Path) -> subprocess.CompletedProcess[str]:
    args = [*fast_args(root, runs, "model.pretrained=false"), "--name", "s", "--no-progress"]
    return subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_WRITE, "train", *args],
        env={**os.environ, "CAMSEG_TEST_AT": at},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_sigterm_while_the_last_checkpoint_is_written(camvid_tiny, tmp_path):
    """The stop waits for the background write: exit 143 with the resume command, the epoch the
    console printed in history.csv, a whole last.pth, no temporary file (the probe that found
    it: exit 134, a torn .last.pth.*.tmp and the epoch missing, 2 of 2 tries)."""
    root = small_copy(camvid_tiny, tmp_path / "data")
    done = _signal_in_write("checkpoint", root, tmp_path / "runs")
    run = tmp_path / "runs" / "s"
    assert done.returncode == 143, done.stderr[-2000:]
    assert f"training terminated (SIGTERM); resume with: camseg train --resume {run}" in done.stderr
    assert "Traceback" not in done.stderr and "terminate called" not in done.stderr
    assert [(r["stage"], r["epoch"]) for r in history(run)] == [("0", "0"), ("1", "0")]
    state = torch.load(run / "checkpoints" / "last.pth", weights_only=True)["state"]
    assert (state["stage"], state["epochs_done"]) == (1, 1)
    assert not list(run.rglob(".*.tmp"))
    resume_and_check(run, [("0", "0"), ("1", "0")])


@pytest.mark.slow
def test_sigterm_while_the_final_files_are_written(camvid_tiny, tmp_path):
    """A stop during model.pth, the plots and summary.json waits for them (a few seconds): the
    run is finished and says so, exit 143 (before: exit 143 without a resume command, and a run
    with model.pth but no summary.json)."""
    root = small_copy(camvid_tiny, tmp_path / "data")
    done = _signal_in_write("finish", root, tmp_path / "runs")
    run = tmp_path / "runs" / "s"
    assert done.returncode == 143, done.stderr[-2000:]
    assert f"its final files were completed first: {run}" in done.stderr
    assert "Traceback" not in done.stderr
    assert Run(run).finished and (run / "report.html").is_file()
    assert len(history(run)) == 2 and not list(run.rglob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_saves_and_prints_the_resume_command(camvid_small, tmp_path, sig, code, said):
    """Ctrl-C, and SIGTERM (what `kill` and batch schedulers send) the same way."""
    args = [*fast_args(camvid_small, tmp_path, "train.stages[0].epochs=3"), "--name", "c"]
    proc = subprocess.Popen(
        train_cmd(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal delivers it: in the full suite the child once ran on as if it
        # had inherited an ignored SIGINT (exit 0, no output), which a reset rules out.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    run = tmp_path / "c"
    wait_rows(run, proc, 1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, (stdout[-2000:], stderr[-2000:])
    assert f"training {said}; resume with: camseg train --resume {run}" in stderr
    assert "Traceback" not in stderr
    assert torch.load(run / "checkpoints" / "last.pth", weights_only=True)["state"]["epochs_done"]
    resume_and_check(run, [("0", "0"), ("0", "1"), ("0", "2"), ("1", "0")])


@pytest.mark.faults
@pytest.mark.parametrize(
    ("raised", "code", "said"),
    [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stop_signal_in_any_command_is_one_line(cli, monkeypatch, raised, code, said):
    """Outside training's own message: one line and the shell's code, not typer's bare 130."""

    def stopped(*args: object) -> None:
        raise raised

    monkeypatch.setattr("camseg.config.load.load_config", stopped)
    result = cli("config", "show", "--config", "tiny.yaml")
    assert result.exit_code == code, result.output
    assert result.stderr == f"camseg: {said}\n"


@pytest.mark.slow
def test_two_trainings_with_the_same_name_at_once(camvid_small, tmp_path):
    args = [*fast_args(camvid_small, tmp_path, "train.stages=[{epochs: 1}]"), "--name", "same"]
    # one thread each: two processes of two threads each on two cores wait for each other
    # (this test alone: 18.9 s with two threads each, 15.2 s with one)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            train_cmd(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    runs = sorted(tmp_path.iterdir())
    assert len(runs) == 2 and all(run.name.startswith("same") for run in runs)
    for run in runs:
        assert len(history(run)) == 1 and (run / "model.pth").is_file()
        assert (run / "command.txt").read_text().count("camseg train") == 1


# ---- security -----------------------------------------------------------------------------


def test_file_names_are_just_names(tiny_copy, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `touch PWNED` would land if a name were ever run
    evil = "$(touch PWNED); `touch PWNED`"
    for folder, suffix in (("images", ""), ("labels", "_P")):
        src = tiny_copy / folder / f"0001TP_006750{suffix}.png"
        src.rename(tiny_copy / folder / f"{evil}{suffix}.png")
    result = cli("data", "check", "--root", tiny_copy)
    assert result.exit_code == 0, result.output
    assert "100 images" in result.stdout
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow  # refused only after the learner is built (4 s)
def test_run_name_cannot_escape_the_output_folder(camvid_tiny, tmp_path, cli):
    one_line_error(
        cli("train", *fast_args(camvid_tiny, tmp_path / "runs"), "--name", "../x"),
        "not a plain folder name",
    )
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()


def test_config_paths_are_relative_to_the_config_file(camvid_tiny, tmp_path, monkeypatch):
    from camseg.config.load import load_config

    folder = tmp_path / "cfgs"
    folder.mkdir()
    (folder / "c.yaml").write_text("data:\n  root: ../data\noutput:\n  dir: ../out\n")
    monkeypatch.chdir(REPO)
    cfg = load_config(folder / "c.yaml")
    assert cfg.data.root.resolve() == (tmp_path / "data").resolve()
    assert cfg.output.dir.resolve() == (tmp_path / "out").resolve()
    assert TINY.is_file()
