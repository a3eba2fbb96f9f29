"""The CLI as a user meets it: exit codes, one-line errors, what each command prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_verb(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for verb in ("train", "lr-find", "evaluate", "predict", "config", "data"):
        assert verb in result.stdout


def test_version_names_camseg_and_its_libraries(cli):
    from importlib.metadata import version

    import torch
    import torchvision

    import camseg

    result = cli("--version")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    # torch's own version string: its build tag (+cpu, +cu130) tells a CPU-only install apart
    assert line.startswith(
        f"camseg {camseg.__version__} (torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, "
    )
    assert f"fastai {version('fastai')}" in line and "Python 3." in line


def test_paths_and_help_with_brackets_print_as_they_are(cli, tmp_path):
    """rich would read [old] in a path as a style tag and drop it; [video] in a help text too."""
    folder = tmp_path / "scenes[old]"
    result = cli("data", "synth", "--out", folder, "--n", "4", "--size", "32x32")
    assert result.exit_code == 0, result.output
    assert f"wrote 4 synthetic scenes to {folder}" in result.stdout
    result = cli("data", "check", "--root", folder)
    assert result.exit_code == 0, result.output
    assert f"{folder} (camvid): 4 images" in result.stdout
    assert "camseg[video]" in cli("predict", "--help").stdout


def test_python_dash_m_works():
    proc = subprocess.run(
        [sys.executable, "-m", "camseg", "config", "show", "--config", "configs/tiny.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["data"]["size"] == [96, 128]


def test_config_show_resolves_overrides(cli):
    result = cli(
        "config",
        "show",
        "--config",
        REPO / "configs/half.yaml",
        "--set",
        "data.batch_size=2",
        "--set",
        "train.stages[1].epochs=3",
    )
    assert result.exit_code == 0
    shown = yaml.safe_load(result.stdout)
    assert shown["data"]["batch_size"] == 2
    assert shown["train"]["stages"][1]["epochs"] == 3
    assert shown["train"]["stages"][0]["lr"] == "slice(0.001)"
    # a preset's paths are relative to the current folder, not to the installed package
    assert shown["data"]["root"] == str(Path.cwd() / "data" / "camvid")


def test_config_error_is_one_line_exit_2(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batchsize: 3\n")
    result = cli("config", "show", "--config", bad)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"camseg: error: {bad}: unknown key data.batchsize; did you mean data.batch_size?"
    ]
    assert "Traceback" not in result.output


def test_missing_config_file(cli, tmp_path):
    result = cli("config", "show", "--config", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "config file not found" in result.stderr and "nope.yaml" in result.stderr


def test_data_check_clean_and_reports_shares(cli, camvid_tiny):
    result = cli("data", "check", "--root", camvid_tiny)
    assert result.exit_code == 0, result.output
    assert "100 images, 85 train / 15 valid, 32 classes" in result.stdout
    assert "Road" in result.stdout and "dataset OK" in result.stdout


def test_data_check_lists_every_problem(cli, tiny_copy):
    (tiny_copy / "labels" / "0001TP_006750_P.png").unlink()
    img = tiny_copy / "images" / "0001TP_007500.png"
    img.write_bytes(img.read_bytes()[:200])
    result = cli("data", "check", "--root", tiny_copy)
    assert result.exit_code == 2
    assert "0001TP_006750.png: no label" in result.stderr
    assert "0001TP_007500.png: unreadable image" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_data_check_via_config(cli, camvid_tiny):
    result = cli(
        "data", "check", "--config", REPO / "configs/tiny.yaml", "--set", f"data.root={camvid_tiny}"
    )
    assert result.exit_code == 0, result.output


def test_prepare_then_check(cli, camseq01_sample, tmp_path):
    out = tmp_path / "camseq"
    result = cli("data", "prepare", camseq01_sample, "--out", out)
    assert result.exit_code == 0, result.output
    assert "3 frames (2 train / 1 valid)" in result.stdout  # one gap frame left out
    assert cli("data", "check", "--root", out).exit_code == 0
    again = cli("data", "prepare", camseq01_sample, "--out", out)
    assert again.exit_code == 2 and "not empty" in again.stderr


def test_synth_then_check(cli, tmp_path):
    out = tmp_path / "syn"
    assert cli("data", "synth", "--out", out, "--n", "10", "--size", "64x96").exit_code == 0
    assert cli("data", "check", "--root", out).exit_code == 0
    bad = cli("data", "synth", "--out", tmp_path / "x", "--size", "64by96")
    assert bad.exit_code == 2 and "expected HxW" in bad.stderr


def test_download_offline_is_one_clear_line(cli, tmp_path):
    result = cli("data", "download", "camseq01", "--out", tmp_path)
    assert result.exit_code == 2
    assert "cannot download http" in result.stderr and "by hand" in result.stderr
    tiny = cli("data", "download", "camvid-tiny", "--out", tmp_path)
    assert tiny.exit_code == 2 and "cannot download http" in tiny.stderr
    assert tiny.stdout == "" and tiny.stderr.count("\n") == 1  # no stray progress bar
    unknown = cli("data", "download", "voc", "--out", tmp_path)
    assert unknown.exit_code == 2 and "camvid, camvid-tiny or camseq01" in unknown.stderr


@pytest.mark.faults
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["evaluate", "--batch-size", "abc"], ["'--batch-size'", "evaluate --help)"]),
        (["evaluate", "--split", "nope"], ["'--split'", "'valid', 'train', 'all'"]),
        (["predict", "x.png", "--precision", "half"], ["'--precision'", "'auto'"]),
        (["data", "check", "--layout", "voc"], ["'--layout'", "'camvid'"]),
        (["trian"], ["No such command 'trian'", "Did you mean 'train'"]),
    ],
    ids=["not-an-int", "split", "precision", "layout", "unknown-command"],
)
def test_usage_errors_are_one_line(cli, args, needles):
    """A value typer itself rejects (a type, a choice, a command) is one line too, not a box."""
    result = cli(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camseg: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


_WITHOUT_TORCH = """
import sys
from camseg.cli import main
sys.argv = ["camseg", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
print("exit", code, "torch" in sys.modules, "fastai" in sys.modules)
"""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["train", "--set", "x=1"], "give either --config FILE"),
        (["train", "--config", "tiny.yaml", "--set", "data.root=nowhere"], "nowhere"),
        (["train", "--config", "tiny.yaml", "--set", "train.epochs=3"], "train.epochs"),
        (["train", "--resume", "."], "not a run folder"),
        (["lr-find", "--config", "tiny.yaml", "--set", "data.root=nowhere"], "nowhere"),
        (["predict", "missing.png", "--run", "run"], "missing.png: no such file"),
        (["predict", "x.png", "--run", "empty"], "no model.pth"),
        (["evaluate", "--run", "nope"], "nope: no such file or folder"),
        (["evaluate", "--run", "empty"], "no model.pth"),
        (["evaluate", "--run", "run", "--data", "nowhere"], "nowhere"),
    ],
)
def test_mistakes_are_answered_before_torch_is_imported(tmp_path, args, needle):
    """torch and fastai take 5-10 s to import: a mistake in the arguments, config or paths is
    answered without them."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.pth").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.png").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert needle in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[-1] == "exit 2 False False", proc.stdout + proc.stderr


def _commands(group, path=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name)


def test_help_shows_flags_as_flags_and_arguments_by_name(cli):
    import typer

    from camseg.cli import app

    commands = list(_commands(typer.main.get_group(app)))
    assert ("predict",) in commands and ("data", "prepare") in commands
    for command in [(), ("data",), ("config",), *commands]:
        result = cli(*command, "--help")
        assert result.exit_code == 0, (command, result.output)
        assert "<bool>" not in result.output, command  # a flag takes no value
        assert "{" not in result.output.splitlines()[1], command
    assert re.search(r"predict \[OPTIONS\] INPUTS\.\.\. *\n", cli("predict", "--help").output)
    assert "--no-tta" in cli("evaluate", "--help").output
    assert "NAME-lr_find" in " ".join(cli("lr-find", "--help").output.split())


def test_quiet_verbose_and_completion(cli):
    import logging

    assert cli("config", "list").stdout
    for args in (("config", "list", "--quiet"), ("-q", "config", "list")):
        result = cli(*args)
        assert result.exit_code == 0 and result.stdout == "", args
    assert cli("config", "list").stdout  # quiet does not outlive its command
    assert cli("-v", "config", "list").exit_code == 0
    # -v: camseg's own debug messages, not matplotlib's or PIL's
    assert logging.getLogger("camseg").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("PIL.PngImagePlugin").getEffectiveLevel() >= logging.WARNING
    assert "--install-completion" in cli("--help").output


def test_export_json_is_one_document(tmp_path, cli, monkeypatch):
    import json

    import camseg.export
    from camseg.export import Export

    model = tmp_path / "model.pth"
    model.write_bytes(b"")

    def fake(source, out, int8):
        path = tmp_path / "model.onnx"
        path.write_bytes(b"x" * 10)
        return Export(path, (96, 128), 32, 1e-6, 2.0)

    monkeypatch.setattr(camseg.export, "export_onnx", fake)
    result = cli("export", "--model", model, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["path"] == str(tmp_path / "model.onnx") and doc["bytes"] == 10
    assert doc["size"] == [96, 128] and doc["classes"] == 32
