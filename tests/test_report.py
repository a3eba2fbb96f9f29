"""report.html: every image it references exists, the predictions' legend is there, and a
headless browser renders it."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import TINY

from camseg.data.files import camvid_palette
from camseg.model.files import read_model_file

pytestmark = pytest.mark.slow  # every test reads trained_run (or a copy), which trains


def test_report_links_resolve_and_tables_are_there(run_copy, cli):
    assert cli("evaluate", "--run", run_copy).exit_code == 0
    page = (run_copy / "report.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert {"plots/schedule.png", "plots/loss.png", "plots/results.png"} <= set(sources)
    assert any(s.endswith("confusion.png") for s in sources)
    for src in sources:
        assert (run_copy / src).is_file(), src
    assert "unfrozen" in page and "acc_camvid" in page and "per class" in page


def test_report_puts_the_paper_beside_its_recipe_only(run_copy):
    from camseg.report.page import write_report

    page = write_report(run_copy).read_text()  # a tiny.yaml run
    assert "0.930656" not in page and "shown beside runs of half.yaml and full.yaml" in page
    assert "<h2>Schedule and losses</h2>" in page  # no lr finder plot, no heading for one
    command = run_copy / "command.txt"
    command.write_text(command.read_text().replace(str(TINY), "configs/half.yaml"))
    (run_copy.parent / "half-lr_find").mkdir()
    page = write_report(run_copy).read_text()
    assert "the paper's (Fig. 13)" in page
    assert "0.930656" in page  # the paper's Fig. 13 best epoch, from the cited copy
    assert "<a href='../half-lr_find/lr_find.png'>half-lr_find</a>" in page
    assert "Learning rate finder, schedule and losses" in page


def test_report_lists_every_evaluation_with_its_weights(run_copy, cli):
    weights = torch.load(run_copy / "model.pth", weights_only=True)
    (run_copy / "checkpoints").mkdir(exist_ok=True)
    torch.save(weights, run_copy / "checkpoints" / "best.pth")  # as if best != last
    for extra in ([], ["--weights", "best"]):
        result = cli("evaluate", "--run", run_copy, "--split", "train", *extra)
        assert result.exit_code == 0, result.output
    page = (run_copy / "report.html").read_text()
    rows = re.findall(r"<tr><td>(eval/[^<]+)</td><td>([^<]+)</td><td>([^<]*)</td>", page)
    assert [(m, w) for _, m, w in rows] == [("model.pth", "last"), ("best.pth", "best")]
    assert "The newest: " + rows[-1][0] in page


def test_report_shows_the_legend_of_the_predictions_figure(trained_run):
    with (trained_run / "plots" / "results_legend.csv").open() as f:
        legend = [(r["colour"], r["class"]) for r in csv.DictReader(f)]
    codes = read_model_file(trained_run / "model.pth").codes
    pal = camvid_palette(codes)
    assert legend and all(
        colour == "#{:02x}{:02x}{:02x}".format(*pal[codes.index(name)]) for colour, name in legend
    )
    page = (trained_run / "report.html").read_text()  # written at the end of training
    shown = re.findall(r"<span><i style='background:(#[0-9a-f]{6})'></i>([^<]+)</span>", page)
    assert shown == legend


def test_report_renders_in_headless_chromium(run_copy, cli, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    assert cli("evaluate", "--run", run_copy).exit_code == 0
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1300,2600",
            f"--user-data-dir={tmp_path / 'profile'}",
            Path(run_copy / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.stat().st_size > 20_000  # a real page with images, not a blank one
    assert "ERR_FILE_NOT_FOUND" not in proc.stderr
