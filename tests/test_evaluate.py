"""`camseg evaluate` on a model trained briefly on the real camvid_tiny."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import history

from camseg.data.prepare import prepare_camseq01


def test_evaluate_equals_the_training_metric(trained_run, cli):
    result = cli("evaluate", "--run", trained_run)
    assert result.exit_code == 0, result.output
    out = trained_run / "eval" / "camvid_tiny-valid"
    metrics = json.loads((out / "metrics.json").read_text())
    last = history(trained_run)[-1]
    # model.pth holds the last epoch's weights: same model, same data, same pixels
    assert metrics["acc_camvid"] == pytest.approx(float(last["acc_camvid"]), abs=1e-5)
    assert metrics["miou"] == pytest.approx(float(last["miou"]), abs=1e-5)
    assert {"acc_camvid", "pixel_acc", "miou", "per_class", "evaluated", "references"} <= set(
        metrics
    )
    assert [r["acc_camvid"] for r in metrics["references"]] == [0.9307, 0.9333, 0.9367]
    assert metrics["evaluated"]["n_images"] == 15 and metrics["evaluated"]["split"] == "valid"
    assert f"acc_camvid {metrics['acc_camvid']:.4f}" in result.stdout
    assert "0.9307" in result.stdout and "not comparable" in result.stdout

    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert len(rows) == 32 and rows[30]["class"] == "Void"
    # per-class IoU averaged over present non-Void classes is the reported mIoU
    present = [r for r in metrics["per_class"] if r["present"] and r["scored"]]
    assert sum(r["iou"] for r in present) / len(present) == pytest.approx(metrics["miou"])
    assert (out / "confusion.png").stat().st_size > 1000
    assert (trained_run / "report.html").is_file()

    again = cli("evaluate", "--run", trained_run)
    assert again.exit_code == 0
    assert (trained_run / "eval" / "camvid_tiny-valid-2" / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics  # earlier one untouched


def test_evaluate_train_split_and_tta(trained_run, cli):
    result = cli("evaluate", "--run", trained_run, "--split", "train", "--tta")
    assert result.exit_code == 0, result.output
    out = sorted((trained_run / "eval").glob("camvid_tiny-train*"))[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"]["n_images"] == 85 and metrics["evaluated"]["tta"]
    change = metrics["tta_change"]["acc_camvid"]
    assert change == pytest.approx(metrics["acc_camvid"] - metrics["without_tta"]["acc_camvid"])
    assert "TTA (flip) changed acc_camvid by" in result.stdout


def test_evaluate_native_size_on_prepared_camseq01(trained_run, camseq01_sample, tmp_path, cli):
    data = tmp_path / "camseq"
    prepare_camseq01(camseq01_sample, data, valid_fraction=0.5)
    model = trained_run / "model.pth"
    result = cli("evaluate", "--model", model, "--data", data, "--size", "native", "--split", "all")
    assert result.exit_code == 0, result.output
    metrics = json.loads(next((trained_run / "eval").glob("camseq-all*/metrics.json")).read_text())
    assert metrics["evaluated"]["size"] == "native" and metrics["evaluated"]["n_images"] == 4
    assert "bilinear" in metrics["evaluated"]["scoring"]
    assert 0 <= metrics["acc_camvid"] <= 1 and not math.isnan(metrics["miou"])


def test_evaluate_errors(trained_run, tiny_copy, cli):
    codes = tiny_copy / "codes.txt"
    codes.write_text(codes.read_text().replace("Animal", "Beast"))
    result = cli("evaluate", "--run", trained_run, "--data", tiny_copy)
    assert result.exit_code == 2 and "Beast" in result.stderr and "Animal" in result.stderr
    alone = cli("evaluate", "--model", trained_run / "model.pth", "--split", "nope")
    assert alone.exit_code == 2 and "--split" in alone.stderr
    nothing = cli("evaluate", "--run", tiny_copy)
    assert nothing.exit_code == 2 and "no model.pth" in nothing.stderr
