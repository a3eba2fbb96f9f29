"""Fault cases of where camseg writes: read-only folders and full disks (one line, before the
expensive part where it can be known, nothing half-written), runs used by two processes at once
(the run lock), runs whose summary was cut short, and names that look like markup or emoji codes.

Marked `faults`: ./scripts/faults.sh runs them with tests/test_faults.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import fast_args, one_line_error, small_copy

from camseg.core.runs import Run, run_lock

pytestmark = pytest.mark.faults

FRAME = "0001TP_006750.png"


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """An empty folder that refuses writes: by its mode for a normal user; for root (whom modes
    do not stop) a read-only tmpfs mounted on it."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:  # a container without mount rights: nothing stops root
        pytest.skip(f"root without mount rights cannot have a read-only folder: {mounted.stderr!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _unfinished(run: Path) -> Path:
    """The run as one that is still training: no model.pth or summary.json; its weights in
    checkpoints/last.pth and best.pth."""
    (run / "checkpoints").mkdir(exist_ok=True)
    shutil.copy(run / "model.pth", run / "checkpoints" / "best.pth")
    os.replace(run / "model.pth", run / "checkpoints" / "last.pth")
    (run / "summary.json").unlink()
    return run


# ---- read-only folders and full disks -----------------------------------------------------


@pytest.mark.slow
def test_read_only_outputs_are_refused_before_the_work(
    read_only, trained_run, camvid_tiny, tmp_path, cli
):
    frame = camvid_tiny / "images" / FRAME
    one_line_error(
        cli("predict", frame, "--run", trained_run, "--out", read_only),
        f"--out {read_only}: cannot write there (Read-only file system)",
    )
    one_line_error(
        cli("evaluate", "--run", trained_run, "--out", read_only / "evals"),
        f"--out {read_only}: cannot write there",
    )
    model = shutil.copy(trained_run / "model.pth", tmp_path / "model.pth")
    pytest.importorskip("onnx")
    started = time.perf_counter()
    one_line_error(
        cli("export", "--model", model, "--out", read_only / "m.onnx"),
        f"--out {read_only}: cannot write there",
    )
    assert time.perf_counter() - started < 20  # refused before the graph is traced


@pytest.mark.slow
def test_evaluate_next_to_a_read_only_model_says_to_give_out(
    trained_run, camvid_tiny, tmp_path, cli
):
    folder = tmp_path / "shelf"
    folder.mkdir()
    shutil.copy(trained_run / "model.pth", folder / "model.pth")
    if os.geteuid() == 0:  # the folder as a read-only view of itself
        bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
        if bound.returncode != 0:
            pytest.skip(
                f"root without mount rights cannot have a read-only folder: {bound.stderr!r}"
            )
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        one_line_error(
            cli("evaluate", "--model", folder / "model.pth", "--data", camvid_tiny),
            f"evaluate writes its results to {folder}: cannot write there",
            "give --out FOLDER",
        )
        done = cli(
            "evaluate",
            *("--model", folder / "model.pth", "--data", camvid_tiny),
            *("--out", tmp_path / "evals"),
        )
        assert done.exit_code == 0, done.output
        assert len(list((tmp_path / "evals").glob("*/metrics.json"))) == 1
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=False)
        else:
            folder.chmod(0o755)


def test_read_only_data_cache_is_one_line(read_only, camvid_tiny, tmp_path, cli):
    root = small_copy(camvid_tiny, tmp_path / "data", n_valid=2, n_train=2)
    cache = f"data.cache={read_only / 'cache'}"
    args = fast_args(root, tmp_path / "runs", cache, "data.batch_size=2")
    one_line_error(
        cli("train", *args), f"data.cache {read_only / 'cache'}: cannot write", "data.cache=false"
    )


@pytest.mark.slow
def test_full_disk_while_predict_writes_is_one_line(trained_run, camvid_tiny, tmp_path, cli):
    from PIL import Image

    real = Image.Image.save

    modes: list[str] = []

    def full(self, fp, *args, **kwargs):
        # saved in turn: legend.png (RGB), the index mask (L), the overlay (RGB), the colours
        modes.append(self.mode)
        if self.mode == "RGB" and "L" in modes:  # the overlay, after the mask: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, fp, *args, **kwargs)

    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "save", full)
        result = cli("predict", camvid_tiny / "images" / FRAME, "--run", trained_run, "--out", out)
    line = one_line_error(result, "cannot write", "No space left on device")
    assert "what was written before is kept" in line
    # what was written before stays (the legend, the index mask); no .tmp of the overlay
    assert sorted(p.name for p in out.iterdir()) == [Path(FRAME).stem + "_mask.png", "legend.png"]


@pytest.mark.slow
def test_full_disk_reported_by_torch_is_one_line(camvid_tiny, tmp_path, cli, monkeypatch):
    """torch's zip writer reports ENOSPC as a RuntimeError ("unexpected pos"): the same
    "cannot write ... resume with" line as an OSError, and the previous checkpoint whole."""
    import torch

    import camseg.core.atomic

    root = small_copy(camvid_tiny, tmp_path / "data")
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    class Usage:
        free = 4096

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(camseg.core.atomic.shutil, "disk_usage", lambda path: Usage)
    runs = tmp_path / "runs"
    line = one_line_error(cli("train", *fast_args(root, runs)), "No space left on device")
    [run] = runs.iterdir()
    assert f"cannot write {run / 'checkpoints' / 'last.pth'}" in line
    assert f"camseg train --resume {run}" in line
    assert torch.load(run / "checkpoints" / "last.pth", weights_only=True)["state"]["stage"] == 0
    assert not list(run.rglob(".*.tmp"))


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    from camseg.core.atomic import atomic_write_text

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f".summary.json.{pid}.k2j4h1.tmp"
    stale.write_text("{")
    other = tmp_path / f".summary.json.{os.getppid()}.a1b2c3.tmp"  # a live process's: kept
    other.write_text("{")
    atomic_write_text(tmp_path / "summary.json", "{}\n")
    assert not stale.exists() and other.exists()
    assert (tmp_path / "summary.json").read_text() == "{}\n"


# ---- runs used by two processes, runs cut short ------------------------------------------


@pytest.mark.slow
def test_a_run_being_trained_is_locked(run_copy, cli):
    run = _unfinished(run_copy)
    with run_lock(run):  # as a training process holds it
        assert Run(run).trained_by() == os.getpid()
        one_line_error(
            cli("train", "--resume", run),
            f"{run} is being trained by another process (pid {os.getpid()})",
        )
        scored = cli("evaluate", "--run", run)
        assert scored.exit_code == 0, scored.output
        assert f"{run} is being trained now (pid {os.getpid()}): using" in scored.stderr
    assert Run(run).trained_by() is None


def test_a_killed_trainer_does_not_leave_its_run_locked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from camseg.core.runs import run_lock\n"
            "with run_lock(__import__('pathlib').Path(sys.argv[1])): time.sleep(120)",
            str(run),
        ]
    )
    deadline = time.time() + 60
    while Run(run).trained_by() != holder.pid:
        assert time.time() < deadline and holder.poll() is None
        time.sleep(0.1)
    holder.kill()  # kill -9: the kernel drops the lock with the process
    holder.wait()
    assert Run(run).trained_by() is None
    with run_lock(run):
        pass


@pytest.mark.slow
def test_a_cut_short_summary_is_an_unfinished_run(run_copy, tmp_path, cli, monkeypatch):
    (run_copy / "summary.json").write_text('{"run_dir": "/x", "best_acc')  # a full disk's cut
    assert not Run(run_copy).finished
    runs = tmp_path / "here" / "runs"
    runs.mkdir(parents=True)
    shutil.move(run_copy, runs / "half")
    monkeypatch.chdir(tmp_path / "here")
    one_line_error(cli("evaluate"), "no finished run under runs")
    assert not (runs / "half" / "eval").exists()
    noted = cli("evaluate", "--run", runs / "half", "--split", "valid")
    assert noted.exit_code == 0, noted.output
    assert "has not finished training: using" in noted.stderr


@pytest.mark.slow
def test_export_of_an_unfinished_run_needs_out(run_copy, tmp_path, cli):
    pytest.importorskip("onnx")
    run = _unfinished(run_copy)
    refused = cli("export", "--run", run)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    note, error = refused.stderr.strip().splitlines()
    assert note == f"camseg: note: {run} has not finished training: using {run_last(run)}"
    assert error.startswith(f"camseg: error: {run} has not finished training")
    assert "give --out FILE" in error
    assert not list(run.glob("*.onnx"))
    done = cli("export", "--run", run, "--out", tmp_path / "now.onnx")
    assert done.exit_code == 0, done.output
    assert "has not finished training: using" in done.stderr


def run_last(run: Path) -> Path:
    return run / "checkpoints" / "last.pth"


# ---- names that look like codes -----------------------------------------------------------


@pytest.mark.slow
def test_names_print_as_they_are(trained_run, camvid_tiny, tmp_path, cli):
    """rich turned `:x:` into an emoji: run:x:1.png printed as run❌1.png, in messages too."""
    one_line_error(cli("predict", tmp_path / "run:x:1.png", "--run", trained_run), "run:x:1.png")
    named = tmp_path / "in" / "run:x:1.png"
    named.parent.mkdir()
    shutil.copy(camvid_tiny / "images" / FRAME, named)
    done = cli("predict", named, "--run", trained_run, "--out", tmp_path / "o", "--json")
    assert done.exit_code == 0, done.output
    [record] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert record["image"] == str(named)
    assert "❌" not in done.output
    assert (tmp_path / "o" / "run:x:1_mask.png").is_file()
