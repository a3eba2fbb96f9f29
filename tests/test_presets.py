"""The four commands exactly as users type them: presets by name from any folder, lr-find without
--config, evaluate and predict without --run, and all of it from a wheel installed without -e."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import REPO, small_copy

TINY_SETS = ["data.size=[64,96]", "model.arch=resnet18", "model.pretrained=false"]


def _sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def test_preset_by_name_from_any_folder(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("half.yaml", "half"):
        result = cli("config", "show", "--config", name)
        assert result.exit_code == 0, result.output
        shown = yaml.safe_load(result.stdout)
        assert shown["data"]["size"] == 0.5
        assert shown["data"]["root"] == str(tmp_path / "data" / "camvid")  # not site-packages
    full = yaml.safe_load(cli("config", "show", "--config", "full.yaml").stdout)
    assert full["model"]["init_from"] == str(tmp_path / "runs" / "half")


def test_a_file_of_that_name_wins_over_the_preset(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "half.yaml").write_text("data:\n  batch_size: 2  # mine\n")
    shown = yaml.safe_load(cli("config", "show", "--config", "half.yaml").stdout)
    assert shown["data"]["batch_size"] == 2 and shown["data"]["size"] == 1.0


def test_unknown_config_lists_the_presets(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("config", "show", "--config", "hlaf.yaml")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "hlaf.yaml" in line and "half" in line and "full" in line


def test_config_list_shows_every_preset_with_its_description(cli):
    result = cli("config", "list")
    assert result.exit_code == 0
    for preset in (
        "half.yaml",
        "full.yaml",
        "tiny.yaml",
        "tiny-scratch.yaml",
        "tiny-rare.yaml",
        "demo.yaml",
    ):
        assert preset in result.stdout
    assert "paper's first phase" in result.stdout


def test_the_configs_folder_is_the_packaged_presets():
    # one source: the top-level configs/ is the package's presets folder, not a copy
    assert (REPO / "configs").resolve() == (REPO / "camseg" / "config" / "presets").resolve()


@pytest.mark.slow
def test_lr_find_without_config_uses_half_yaml(cli, camvid_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = _sets(f"data.root={camvid_tiny}", *TINY_SETS, "train.lr_find_iters=30")
    result = cli("lr-find", *sets, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "half.yaml" in result.stderr
    [out] = (tmp_path / "runs").iterdir()
    assert (out / "lr_find.json").is_file()


def _fake_run(parent: Path, name: str, finished: bool, trained_run: Path) -> Path:
    run = parent / name
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    if not finished:
        (run / "model.pth").unlink()
    return run


@pytest.mark.slow
def test_evaluate_and_predict_default_to_the_newest_finished_run(
    cli, trained_run, camvid_tiny, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    newest = _fake_run(runs, "a-newest", True, trained_run)  # by finish time, not by name
    older = _fake_run(runs, "z-older", True, trained_run)
    _fake_run(runs, "zz-interrupted", False, trained_run)
    os.utime(older / "summary.json", (1_000_000, 1_000_000))
    result = cli("evaluate")
    assert result.exit_code == 0, result.output
    assert str(Path("runs") / "a-newest") in result.stderr
    assert list((newest / "eval").iterdir()) and not (older / "eval").exists()
    frame = next((camvid_tiny / "images").iterdir())
    result = cli("predict", str(frame), "--format", "index")
    assert result.exit_code == 0, result.output
    assert (newest / "predictions" / f"{frame.stem}_mask.png").is_file()


@pytest.mark.slow
def test_no_finished_run_is_one_clear_line(cli, trained_run, camvid_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_run(tmp_path / "runs", "interrupted", False, trained_run)
    frame = next((camvid_tiny / "images").iterdir())
    for args in (["evaluate"], ["predict", str(frame)]):
        result = cli(*args)
        assert result.exit_code == 2
        line = result.stderr.strip()
        assert "\n" not in line and "no finished run" in line and "--run" in line


def _wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "camseg", src / "camseg", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    return next((tmp_path / "dist").glob("camseg-*.whl"))


def test_the_wheel_holds_the_presets_and_resources(tmp_path):
    names = zipfile.ZipFile(_wheel(tmp_path)).namelist()
    for preset in ("half", "full", "tiny", "tiny-scratch", "tiny-rare", "demo"):
        assert f"camseg/config/presets/{preset}.yaml" in names
    for resource in ("codes.txt", "label_colors.txt", "paper_fig13.csv"):
        assert f"camseg/data/resources/{resource}" in names


@pytest.mark.slow
def test_the_four_commands_after_a_plain_wheel_install(camvid_tiny, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(_wheel(tmp_path))],
        check=True, capture_output=True,
    )  # fmt: skip
    work = tmp_path / "work"  # not the repository
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    camseg = [sys.executable, str(target / "bin" / "camseg")]

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*camseg, *args], cwd=work, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    where = subprocess.run(
        [sys.executable, "-c", "import camseg; print(camseg.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(target))  # the installed copy, not the checkout
    data = small_copy(camvid_tiny, tmp_path / "camvid_small")
    sets = _sets(f"data.root={data}", *TINY_SETS)
    epochs = _sets("train.stages[0].epochs=1", "train.stages[1].epochs=1")
    run("train", "--config", "half.yaml", *sets, *epochs, "--no-progress")
    run("lr-find", *sets, "--set", "train.lr_find_iters=30", "--no-progress")
    evaluated = run("evaluate")
    assert "runs/half" in evaluated.stderr and "acc_camvid" in evaluated.stdout
    [trained] = (p for p in (work / "runs").iterdir() if (p / "model.pth").is_file())
    shutil.copy(next((camvid_tiny / "images").iterdir()), work / "img.png")
    run("predict", "img.png")
    assert (trained / "predictions" / "img_mask.png").is_file()
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["epochs"] == 2
